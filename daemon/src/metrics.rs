//! The node's metrics, in the Prometheus (OpenMetrics) text format: what
//! every stage counts as it works, kept in one registry per process (a
//! node is a process). `ops::scrape` serves them on `GET /metrics` and
//! sets the gauges read at scrape time.
//!
//! Label values come from bounded sets only: doors, reasons, results,
//! hook names, the providers and sources of the egress plan (a destination
//! that is no named provider counts as `other`), API actions Kiln knows
//! (any other name counts as `unknown`). No message id or address is ever
//! a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Door {
    /// smtp | api | batch
    pub door: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refused {
    pub door: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsSession {
    /// mta-sts | none
    pub policy: &'static str,
    /// success | plaintext | an RFC 8460 result type
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptResult {
    /// delivered | deferred | bounced | expired
    pub result: &'static str,
    pub provider: String,
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Provider {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Pair {
    pub provider: String,
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalRule {
    pub provider: String,
    pub source: String,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BounceClass {
    /// hard | soft, and the class `classify_bounce` named.
    pub bounce_type: &'static str,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventType {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallbackResult {
    /// sent | failed (a try that did not reach the receiver) | dropped
    /// (given up)
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Hook {
    pub hook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOp {
    /// embedded | redis
    pub store: &'static str,
    /// enqueue | settle
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Tls {
    /// yes | no: whether the session used STARTTLS (or implicit TLS).
    pub tls: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequest {
    pub action: &'static str,
    /// The SES error code, or "ok".
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Algorithm {
    pub algorithm: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueState {
    /// due (ready now) | waiting (due later) | leased (being attempted)
    pub state: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn short_latency() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn batch_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

pub struct Metrics {
    registry: Registry,
    pub accepted: Family<Door, Counter>,
    pub recipients_queued: Family<Door, Counter>,
    pub refused: Family<Refused, Counter>,
    pub attempts: Family<AttemptResult, Counter>,
    pub attempt_seconds: Family<Provider, Histogram, fn() -> Histogram>,
    pub shaping_signals: Family<SignalRule, Counter>,
    pub bounces: Family<BounceClass, Counter>,
    pub events: Family<EventType, Counter>,
    pub callbacks: Family<CallbackResult, Counter>,
    pub callback_seconds: Histogram,
    pub hook_calls: Family<Hook, Counter>,
    pub hook_errors: Family<Hook, Counter>,
    pub hook_seconds: Family<Hook, Histogram, fn() -> Histogram>,
    pub store_seconds: Family<StoreOp, Histogram, fn() -> Histogram>,
    pub commit_messages: Histogram,
    pub tls_sessions: Family<TlsSession, Counter>,
    pub store_failovers: Counter,
    pub store_errors: Counter,
    pub smtp_sessions: Family<Tls, Counter>,
    pub api_requests: Family<ApiRequest, Counter>,
    pub dkim_signatures: Family<Algorithm, Counter>,
    // Set when scraped.
    pub queue_entries: Family<QueueState, Gauge>,
    pub line_jobs: Family<Provider, Gauge>,
    pub shaping_suspended: Family<Pair, Gauge>,
    pub shaping_factor: Family<Pair, FloatGauge>,
    pub callbacks_pending: Gauge,
    pub callback_oldest_seconds: FloatGauge,
    pub policy_states_stuck: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("kiln"),
            accepted: Family::default(),
            recipients_queued: Family::default(),
            refused: Family::default(),
            attempts: Family::default(),
            attempt_seconds: Family::new_with_constructor(latency),
            shaping_signals: Family::default(),
            bounces: Family::default(),
            events: Family::default(),
            callbacks: Family::default(),
            callback_seconds: latency(),
            hook_calls: Family::default(),
            hook_errors: Family::default(),
            hook_seconds: Family::new_with_constructor(short_latency),
            store_seconds: Family::new_with_constructor(short_latency),
            commit_messages: batch_sizes(),
            tls_sessions: Family::default(),
            store_failovers: Counter::default(),
            store_errors: Counter::default(),
            smtp_sessions: Family::default(),
            api_requests: Family::default(),
            dkim_signatures: Family::default(),
            queue_entries: Family::default(),
            line_jobs: Family::default(),
            shaping_suspended: Family::default(),
            shaping_factor: Family::default(),
            callbacks_pending: Gauge::default(),
            callback_oldest_seconds: FloatGauge::default(),
            policy_states_stuck: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "messages_accepted",
            "Messages accepted into the queue, by door (smtp, api, batch)",
            m.accepted.clone(),
        );
        r.register(
            "recipients_queued",
            "Recipients queued for delivery, by door",
            m.recipients_queued.clone(),
        );
        r.register(
            "messages_refused",
            "Messages refused at admission, by door and reason",
            m.refused.clone(),
        );
        r.register(
            "delivery_attempts",
            "Delivery attempts by result (delivered, deferred, bounced, expired), provider and source",
            m.attempts.clone(),
        );
        r.register_with_unit(
            "delivery_attempt_duration",
            "How long delivery attempts took, by provider",
            Unit::Seconds,
            m.attempt_seconds.clone(),
        );
        r.register(
            "shaping_signals",
            "Throttling signals acted on, by provider, source and the rule that matched",
            m.shaping_signals.clone(),
        );
        r.register(
            "bounces",
            "Recipients bounced, by type (hard, soft) and class",
            m.bounces.clone(),
        );
        r.register("events", "Events recorded, by type", m.events.clone());
        r.register(
            "callbacks",
            "Callback deliveries by result (sent, failed, dropped)",
            m.callbacks.clone(),
        );
        r.register_with_unit(
            "callback_duration",
            "How long callback requests took",
            Unit::Seconds,
            m.callback_seconds.clone(),
        );
        r.register(
            "policy_hook_calls",
            "Policy hook calls, by hook",
            m.hook_calls.clone(),
        );
        r.register(
            "policy_hook_errors",
            "Policy hook calls that failed (error, timeout, bad answer), by hook",
            m.hook_errors.clone(),
        );
        r.register(
            "policy_states_stuck",
            "Lua states abandoned in a call that ran past its deadline and has not ended",
            m.policy_states_stuck.clone(),
        );
        r.register_with_unit(
            "policy_hook_duration",
            "How long policy hook calls took, by hook",
            Unit::Seconds,
            m.hook_seconds.clone(),
        );
        r.register_with_unit(
            "store_write_duration",
            "How long durable queue writes took (until committed), by store and operation",
            Unit::Seconds,
            m.store_seconds.clone(),
        );
        r.register(
            "store_commit_writes",
            "Writes in each group commit of the embedded store",
            m.commit_messages.clone(),
        );
        r.register(
            "tls_sessions",
            "Connections to MX hosts by the TLS policy that applied and how TLS went (RFC 8460's result types)",
            m.tls_sessions.clone(),
        );
        r.register(
            "store_failovers",
            "Redis failovers this node followed: another master named by Sentinel, a cluster master replaced",
            m.store_failovers.clone(),
        );
        r.register(
            "store_errors",
            "Redis commands that failed after the client's own retries",
            m.store_errors.clone(),
        );
        r.register(
            "smtp_sessions",
            "SMTP sessions ended, by whether they used TLS",
            m.smtp_sessions.clone(),
        );
        r.register(
            "api_requests",
            "API requests by action and result code",
            m.api_requests.clone(),
        );
        r.register(
            "dkim_signatures",
            "DKIM signatures made, by algorithm",
            m.dkim_signatures.clone(),
        );
        r.register(
            "queue_entries",
            "Recipients in the queue, by state",
            m.queue_entries.clone(),
        );
        r.register(
            "egress_line_jobs",
            "Queue entries held by this node's delivery lines, by provider",
            m.line_jobs.clone(),
        );
        r.register(
            "shaping_suspended",
            "1 while a (provider, source) is suspended by a throttling signal",
            m.shaping_suspended.clone(),
        );
        r.register(
            "shaping_rate_factor",
            "The pace factor of a (provider, source): 1 unless a throttling signal cut it",
            m.shaping_factor.clone(),
        );
        r.register(
            "callbacks_pending",
            "Callback deliveries waiting to be sent",
            m.callbacks_pending.clone(),
        );
        r.register_with_unit(
            "callbacks_oldest_pending_age",
            "Age of the oldest callback delivery waiting",
            Unit::Seconds,
            m.callback_oldest_seconds.clone(),
        );
        m
    }

    /// Everything, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
static OFF: AtomicBool = AtomicBool::new(false);

/// The process's metrics; None when they are turned off (`http.metrics =
/// false`: nothing is counted).
pub fn get() -> Option<&'static Metrics> {
    (!OFF.load(Ordering::Relaxed)).then(|| &*METRICS)
}

/// Turns counting on or off for the process (at start).
pub fn set_enabled(on: bool) {
    OFF.store(!on, Ordering::Relaxed);
}

/// The label of a provider: its name when the egress plan names it, else
/// `other` (a site's name is its MX host set: unbounded).
pub fn provider_label(provider: &str, named: bool) -> String {
    if named {
        provider.to_string()
    } else {
        "other".to_string()
    }
}

/// A bounce class `classify_bounce` named, as a label: a short lower-case
/// word, else `other` (the operator's script decides it, not the network).
pub fn class_label(class: &str) -> String {
    let word = !class.is_empty()
        && class.len() <= 24
        && class
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if word {
        class.to_string()
    } else {
        "other".to_string()
    }
}

pub fn observe(h: &Histogram, d: Duration) {
    h.observe(d.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        assert!(get().is_some(), "counted unless turned off");
        m.accepted.get_or_create(&Door { door: "smtp" }).inc();
        observe(
            &m.attempt_seconds.get_or_create(&Provider {
                provider: "gmail".into(),
            }),
            Duration::from_millis(3),
        );
        let text = m.render();
        assert!(text.contains("kiln_messages_accepted_total{door=\"smtp\"} 1"));
        assert!(text.contains("# TYPE kiln_delivery_attempt_duration_seconds histogram"));
        assert!(
            text.contains("kiln_delivery_attempt_duration_seconds_count{provider=\"gmail\"} 1")
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
