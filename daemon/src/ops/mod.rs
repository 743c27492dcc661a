//! Operations: the admin endpoints the `kiln` subcommands use (`admin`,
//! `queue_control`, `explain`), who may use them (`admin_auth`), and the metrics for
//! Prometheus (`scrape`), and the web console (`console`).

pub mod admin;
pub mod admin_auth;
pub mod console;
pub mod domains;
pub mod explain;
pub mod queue_control;
pub mod scrape;
