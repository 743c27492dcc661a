//! Egress: delivery to the MX hosts DNS names.

mod dane;
pub mod delivery;
mod mta_sts;
mod retries;
mod shaping;
pub mod tls_reports;
