//! Operations: the kiln command line, the nodes of a cluster, the
//! metrics, queue control, explain, the web console.

mod cli;
mod cluster;
mod console;
mod domains;
mod explain;
mod metrics;
mod queue;
