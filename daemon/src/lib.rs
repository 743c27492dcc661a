//! Kiln: a self-hosted email sending service.
//!
//! The source is a house of rooms, one per stage of a message's life, with
//! the plumbing below them; `docs/architecture.md` walks through it.
//! `house_tests` keeps this table naming every module, and no module
//! importing one that imports it back.
//!
//! # Layout
//!
//! | module | job |
//! |--------|-----|
//! | **`intake`** | **where mail comes in; every message takes one path to the queue** |
//! | `intake::smtp` | SMTP submission server: listeners, TLS, one task per session |
//! | `intake::smtp::session` | one session: reading commands, AUTH, accepting a message |
//! | `intake::smtp::session::verbs` | one handler per verb: EHLO, STARTTLS, MAIL, RCPT, DATA |
//! | `intake::smtp::parser` | SMTP command parsing, no I/O |
//! | `intake::smtp::auth_throttle` | password guessing over AUTH, slowed then stopped |
//! | `intake::api` | the Tencent Cloud SES API (2020-10-02) |
//! | `intake::api::tencent` | `POST /`: the envelope, signature check, dispatch, errors |
//! | `intake::api::body` | the request body, read up to its limit; an oversized one answered to a client still sending it |
//! | `intake::api::tc3` | TC3-HMAC-SHA256 request signatures |
//! | `intake::api::params` | an action's parameters, with errors that name them |
//! | `intake::api::ses` | the 36 actions, one module per resource: |
//! | `intake::api::ses::send` | SendEmail |
//! | `intake::api::ses::status` | GetSendEmailStatus, statistics, abuse reports |
//! | `intake::api::ses::identity` | sender domains |
//! | `intake::api::ses::address` | sender addresses |
//! | `intake::api::ses::template` | templates |
//! | `intake::api::ses::blocklist` | the hard-bounce blocklist |
//! | `intake::api::ses::unsubscribe` | per-address unsubscribe settings |
//! | `intake::api::ses::batch` | recipient lists and batch tasks |
//! | `intake::batch` | the batch-task runner: due tasks, one step at a time |
//! | `intake::compose` | the messages SendEmail and batch tasks build |
//! | `intake::submission` | `Submission`: a message handed over, from any door |
//! | `intake::admission` | checks, the policy's verdict, DKIM, queue, "accepted" |
//! | **`queue`** | **the one owner of queue state on this node** |
//! | `queue::manager` | leases ready entries as egress takes them |
//! | `queue::cache` | bodies accepted here, kept until their last attempt |
//! | `queue::outcome` | what an attempt's outcome means: next try or final |
//! | `queue::report` | the one path of every end of a delivery: decided, recorded, then heard |
//! | `queue::control` | the operator's suspensions and bounces, for every node |
//! | **`egress`** | **how mail leaves: providers, sources, shaping, the SMTP client** |
//! | `egress::mta_sts` | receiving domains' MTA-STS policies: found, fetched, kept, matched |
//! | `egress::tls_report` | TLS sessions counted per receiving domain and day; RFC 8460 reports |
//! | `egress::tls_report_send` | the day's TLS reports sent where `_smtp._tls` asks: POSTed, or mailed signed |
//! | `egress::dane` | DANE: TLSA records through a validating resolver, certificates checked against them |
//! | `egress::route` | a domain's MX hosts, resolved once and kept a while |
//! | `egress::plan` | sources, pools, providers and their limits, from the policy |
//! | `egress::line` | the jobs for one site from one source, bounded |
//! | `egress::connect` | a connection to a domain's MX hosts under its TLS policy (MTA-STS, DANE), each session counted |
//! | `egress::worker` | a line's worker: paced connections and messages |
//! | `egress::warmup` | IP warm-up: a source's daily cap per provider, overflow to warm sources |
//! | `egress::shaping` | limits per (provider, source), suspensions, backoff |
//! | `egress::return_path` | sender domains with a return-path domain of their own |
//! | `egress::report` | throttling signals; each attempt reported to the queue |
//! | `egress::client` | the SMTP client: one connection to one MX address |
//! | **`feedback`** | **what happens after an attempt, or after the recipient reads** |
//! | `feedback::events` | what happened, per message and recipient |
//! | `feedback::callbacks` | events POSTed to the customers' receivers |
//! | `feedback::listener` | what each recorded outcome sets off: event, statistics, reputation, metrics |
//! | `feedback::inbound_reports` | DSNs and complaints sent back to the VERP address |
//! | `feedback::recent` | this node's last refusals and failures, for the console |
//! | `feedback::trail` | each message's story after it was queued, for `kiln explain` |
//! | `feedback::endpoints` | the HTTP side: pixel, link and unsubscribe pages |
//! | `feedback::engagement` | what an open or a click records |
//! | **`ses`** | **the SES records: the product's data behind the API** |
//! | `ses::accounts` | API accounts made with `kiln account create` |
//! | `ses::config_accounts` | accounts and SMTP credentials from the config file |
//! | `ses::identities` | sender domains and their verification |
//! | `ses::dkim` | DKIM keys and signing |
//! | `ses::addresses` | sender addresses |
//! | `ses::templates` | templates |
//! | `ses::blocklists` | the hard-bounce blocklist and accounts' own lists |
//! | `ses::unsubscribe` | per-address unsubscribe settings |
//! | `ses::abuse` | complaint reports per sender domain |
//! | `ses::receivers` | recipient lists |
//! | `ses::tasks` | batch-task records |
//! | `ses::stats` | daily statistics per sender domain and mailbox provider |
//! | `ses::operators` | operator tokens, accepted by every node on a store |
//! | **`ops`** | **operating a node** |
//! | `ops::admin` | the endpoints the `kiln` subcommands use |
//! | `ops::admin_auth` | who may use them |
//! | `ops::cluster` | the nodes on one store (heartbeats) and the store's server |
//! | `ops::console` | the web console under /console: operator and account views |
//! | `ops::console::session` | console sign-in sessions, cookies, CSRF tokens |
//! | `ops::console::pages` | the console's HTML |
//! | `ops::console::chart` | line and bar charts as SVG |
//! | `ops::domains` | `kiln domain`: a sender domain's reputation shown and set |
//! | `ops::explain` | `kiln explain`: a message's whole story, in order |
//! | `ops::queue_control` | the queue steered: summary, list, suspend, resume, bounce, retry-now |
//! | `ops::scrape` | `GET /metrics` for Prometheus, to loopback and named networks |
//! | **`policy`** | **Lua decides, Rust does** |
//! | `policy::patterns` | Lua's pattern functions, bounded: large ones go to a helper |
//! | `policy::offload` | helpers on threads of their own; stuck ones abandoned |
//! | `policy::lua_host` | one sandboxed Lua state with the `kiln` API and plugins |
//! | `policy::lua_raw` | tables across the C API for the hot hooks |
//! | `policy::lua_data` | `kiln.data`: the data files plugins ship (TOML) |
//! | `policy::decisions` | what hooks are given and may answer, as types |
//! | `policy::hooks` | every hook declared once: name, argument, answer |
//! | `policy::plugin_settings` | plugin settings, declared and checked |
//! | `policy::watchdog` | stops runaway hook calls |
//! | `policy::time` | days as the policy counts them |
//! | `policy::outcome_feed` | the `reputation` hook's feed of outcomes, batched |
//! | **`store`** | **the one state interface: queue, records, counters** |
//! | `store::embedded` | one redb file for one node: |
//! | `store::embedded::queue` | messages, queue entries, leases |
//! | `store::embedded::counters` | counters, in memory and written behind |
//! | `store::embedded::records` | keys, sets and batches |
//! | `store::embedded::writer` | the writer thread and its group commit |
//! | `store::embedded::space` | free disk space, and the reserve kept for the queue |
//! | `store::wal` | the embedded store's write-ahead log |
//! | `store::redis` | shared by a cluster's nodes: |
//! | `store::redis::conn` | one server, or the master Sentinel names, followed across failovers |
//! | `store::redis::queue` | messages, queue entries, leases |
//! | `store::redis::records` | keys, sets, counters |
//! | `store::redis::batch` | batches answered here or in one script |
//! | `store::redis::scripts` | the server-side scripts |
//! | `store::reservations` | limited counters' units counted ahead |
//! | `store::read_cache` | what batches last read |
//! | `store::shaping` | egress pacing and connection slots, shared by nodes |
//! | `store::redis::shaping` | the same on Redis |
//! | **frame** | **above the rooms: what starts a node and routes its requests** |
//! | `server` | a node's life: start, drain (SIGTERM), reload on SIGHUP |
//! | `http` | the HTTP listener's routes, from the rooms that answer them |
//! | `http_serve` | the HTTP listener's connections: timeouts, limits |
//! | **plumbing** | **below the stages** |
//! | `services` | what every stage shares, built once by `server`; reload |
//! | `config` | settings: declarations, defaults, environment, checks |
//! | `config::load` | the file, then the environment |
//! | `config::problems` | what deserialising cannot tell |
//! | `clock` | Kiln's time: the system's, or a test's |
//! | `data_dir` | the data directory, private to the daemon's user |
//! | `metrics` | what every stage counts, in the Prometheus text format |
//! | `logging` | one log line per event, whatever a value holds |
//! | `queued` | what a queued message is: entries, attempts, status records |
//! | `event` | what happened to a message for one recipient: the callbacks' format |
//! | `rewrite` | the message side of the deliverability loop: |
//! | `rewrite::tracking` | open pixel and tracked links |
//! | `rewrite::unsubscribe` | unsubscribe footer and headers |
//! | `verp` | per-recipient return paths |
//! | `digest` | fingerprints of secrets the store only compares |
//! | `message` | reading a message's header, no I/O |
//! | `address` | mail addresses (RFC 5321, 6531) |
//! | `dns` | MX lookup: where mail for a domain goes |
//! | `line_io` | line-oriented buffered I/O over TCP or TLS |
//! | `tls` | certificates, server and client configs |
//! | `net` | CIDRs, domains of addresses, connection limits |
//! | `outbound_http` | HTTP to a tenant's URL: public addresses only, unless listed |
//! | `fuzzing` | what the fuzz targets run, and their corpora replayed in tests |
//!
//! # Pipeline
//!
//! ```text
//!  SMTP client ─▶ intake::smtp ─┐
//!  SES SDK ────▶ intake::api ───┼─▶ Submission ─▶ admission: checks, hooks
//!  batch task ─▶ intake::batch ─┘     (compose,    (content_filter, check_limits,
//!                                      rewrite)     select_egress), DKIM sign
//!                                                        ▼
//!                                 queue.submit ─▶ store.enqueue (fsync) ─▶ 250 / MessageId
//!                                                        │ wake
//!                                                        ▼
//!                       queue::manager ──lease──▶ egress (a line per destination)
//!                                                        │ dns: MX, egress::client: SMTP out
//!                                                        ▼
//!      queue::report: classify_bounce, decide, record with the event's callback job:
//!                    delivered / retry at T / bounced / expired (one commit)
//!                                                        │ then, through report::Listener
//!                                                        ▼
//!          feedback::listener: event log, stats, reputation feed (─▶ `reputation` hook)
//!          recipient ─▶ feedback::endpoints (open, click, unsubscribe) ─▶ engagement, events
//!          bounce/complaint ─▶ intake::smtp ─▶ feedback::inbound_reports ─▶ queue::report (DSN), events
//! ```

pub mod address;
pub mod clock;
pub mod config;
pub mod data_dir;
pub mod digest;
pub mod dns;
pub mod egress;
pub mod event;
pub mod feedback;
pub mod fuzzing;
pub mod http;
pub mod http_serve;
pub mod intake;
pub mod line_io;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod outbound_http;
pub mod policy;
pub mod queue;
pub mod queued;
pub mod rewrite;
pub mod server;
pub mod services;
pub mod ses;
pub mod store;
pub mod tls;
pub mod verp;

#[cfg(test)]
mod house_tests;
