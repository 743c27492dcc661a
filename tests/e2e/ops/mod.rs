//! Operations: the kiln command line, the metrics, queue control,
//! explain, the web console.

mod cli;
mod console;
mod domains;
mod explain;
mod metrics;
mod queue;
