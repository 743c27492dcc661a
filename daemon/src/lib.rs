//! Kiln: a self-hosted email sending service.
//!
//! # Layout
//!
//! | module       | job |
//! |--------------|-----|
//! | `config`     | settings, defaults, validation |
//! | `server`     | lifecycle: start, reload (SIGHUP), drain (SIGTERM) |
//! | `smtp_in`    | submission server: sessions, AUTH, STARTTLS, DATA |
//! | `queue`      | the queue owner: submit, lease, body cache |
//! | `delivery`   | MX lookup, SMTP client, per-destination workers |
//! | `store`      | the one state interface; `embedded` (redb) and `redis` |
//! | `dkim`       | key generation, storage, signing |
//! | `api`        | HTTP: health and loopback admin endpoints |
//! | `line_io`, `tls`, `net`, `accounts` | shared plumbing |
//!
//! # Pipeline
//!
//! ```text
//!  client ──SMTP──▶ smtp_in ──(sign DKIM)──▶ store.enqueue (fsync) ──▶ 250
//!                                              │ wake
//!                                              ▼
//!                     queue::manager ──lease──▶ delivery (per destination)
//!                                                   │ MX lookup, SMTP out
//!                                                   ▼
//!                              store.settle: delivered / retry at T / bounced
//! ```

pub mod address;
pub mod clock;
pub mod config;
pub mod dns;
pub mod egress;
pub mod feedback;
pub mod http;
pub mod intake;
pub mod line_io;
pub mod message;
pub mod net;
pub mod ops;
pub mod policy;
pub mod queue;
pub mod server;
pub mod services;
pub mod ses;
pub mod store;
pub mod tls;

#[cfg(test)]
mod house_tests;
