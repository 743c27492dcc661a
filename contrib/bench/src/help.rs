//! `--help` (or `-h`) for a benchmark: its own documentation, the comment
//! its source file starts with, then exit.

/// Prints the leading `//!` lines of `source` and exits, if `--help` or
/// `-h` was given.
pub fn or_exit(source: &str) {
    if !std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        return;
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in source.lines().take_while(|l| l.starts_with("//!")) {
        let text = line
            .trim_start_matches("//!")
            .strip_prefix(' ')
            .unwrap_or("");
        // A reader that stops early (`| head`) is no error.
        if writeln!(out, "{text}").is_err() {
            break;
        }
    }
    std::process::exit(0);
}
