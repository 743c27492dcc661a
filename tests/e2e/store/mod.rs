//! The store: what survives kill -9, and a cluster on one Redis.

pub mod cluster;
pub mod durability;
