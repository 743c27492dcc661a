//! End-to-end tests: the real `kiln` binary against real peers — a DNS
//! server, SMTP sinks, `redis-server` — over loopback. Every scenario runs
//! on both store backends.
//!
//! Layout mirrors the daemon: `smtp_in` (submission rules), `delivery`
//! (MX, retries, bounces, DKIM), `durability` (kill -9), `cluster` (two
//! nodes on one Redis).

mod api;
mod cli;
mod cluster;
mod delivery;
mod durability;
mod events;
mod first_contact;
mod harness;
mod policy;
mod security;
mod smtp_in;
