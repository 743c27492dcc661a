//! Operations: the kiln command line, the metrics, queue control.

mod cli;
mod metrics;
mod queue;
