//! End-to-end tests: the real `kiln` binary against real peers — a DNS
//! server, SMTP sinks, `redis-server` — over loopback. Every scenario runs
//! on both store backends.
//!
//! Layout mirrors the daemon's rooms: `intake` (SMTP submission, the SES
//! API through the official SDK, isolation between accounts, batch tasks),
//! `egress` (MX, retries, bounces, DKIM, TLS), `feedback` (events,
//! callbacks, tracking, unsubscribes, reports that come back), `store`
//! (kill -9, two nodes on one Redis), `ops` (the command line, metrics,
//! queue control, explain, the console), `policy`, `faults` (a peer that
//! fails, and the recovery).
//! Across rooms: `security` (what an attacker tries) and `first_contact`
//! (what a new operator meets). `clients` holds the ordinary clients they
//! use (the SDK, smtplib), `harness` the environments.

mod clients;
mod egress;
mod faults;
mod feedback;
mod first_contact;
mod harness;
mod intake;
mod node;
mod ops;
mod policy;
mod security;
mod store;
