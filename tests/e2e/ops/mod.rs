//! Operations: the kiln command line, the metrics, queue control, explain.

mod cli;
mod explain;
mod metrics;
mod queue;
