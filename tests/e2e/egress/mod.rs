//! Egress: delivery to the MX hosts DNS names.

pub mod delivery;
mod retries;
mod shaping;
