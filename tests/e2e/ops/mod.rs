//! Operations: the kiln command line.

mod cli;
