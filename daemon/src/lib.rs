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

pub mod accounts;
pub mod address;
pub mod admission;
pub mod api;
pub mod callbacks;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod events;
pub mod line_io;
pub mod net;
pub mod platform;
pub mod policy;
pub mod queue;
pub mod reports;
pub mod server;
pub mod smtp_in;
pub mod stats;
pub mod store;
pub mod tls;
pub mod tracking;
pub mod unsubscribe;
pub mod verp;
