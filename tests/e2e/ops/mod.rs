//! Operations: the kiln command line, the metrics.

mod cli;
mod metrics;
