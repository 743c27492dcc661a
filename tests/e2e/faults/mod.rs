//! Faults, end to end: what Kiln does when a peer fails, and how long it
//! takes to recover (docs/reliability.md has the figures).

mod callbacks;
mod clock;
mod disk;
mod dns;
mod node;
mod redis;
mod redis_cluster;
mod sentinel;
