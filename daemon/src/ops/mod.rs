//! Operations: the admin endpoints the `kiln` subcommands use (`admin`,
//! `queue_control`, `explain`, `domains`, `cluster`), who may use them
//! (`admin_auth`), the metrics for Prometheus (`scrape`), and the web
//! console (`console`).

pub mod admin;
pub mod admin_auth;
pub mod cluster;
pub mod console;
pub mod domains;
pub mod explain;
pub mod queue_control;
pub mod scrape;
