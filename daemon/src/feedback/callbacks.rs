//! Callbacks: events POSTed to the account's callback URL (or the sender
//! address's, which wins), in the format the `callback_format` hook makes
//! (by default the Tencent Cloud SES notification) when the callback is
//! first sent.
//!
//! Durable and shared: each callback is a job in the store, filed in a
//! 5-second bucket of when it is due (in the same commit as the delivery
//! outcome it reports), so any node may send it and a restart loses none.
//! A job is sent under a store lock, retried with exponential
//! backoff (`callbacks.retry_base_ms`, 10 s, doubling, at most 30 min apart) for `callbacks.max_age`
//! (24 h), then dropped with an error in the log. Each POST is signed:
//! `X-Kiln-Timestamp` (Unix seconds) and `X-Kiln-Signature: v1=<hex
//! HMAC-SHA256(secret, timestamp + "." + body)>` with the account's callback
//! secret, plus `X-Kiln-Event-Id`, so receivers can refuse forgeries and
//! replays. With `callbacks.batch_max` above 1, due events for one receiver
//! go several to a POST, as a JSON array (`X-Kiln-Event-Id` then lists
//! their ids, comma-separated). Sending runs apart from delivery, a few requests per receiver
//! at a time: a slow or dead receiver delays only its own callbacks.

use crate::config::CallbackSettings;
use crate::event::Event;
use crate::outbound_http::Destinations;
use crate::policy::Policy;
use crate::policy::decisions::Formatted;
use crate::ses::Records;
use crate::store::{BatchOp, BatchValue, Write};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const BUCKET_MS: i64 = 5_000;
const ROUTE_TTL: Duration = Duration::from_secs(10);
/// Requests in flight to one receiver (scheme, host and port).
const PER_RECEIVER: usize = 4;
/// Jobs read from a due list at a time.
const CHUNK: usize = 256;
/// Chunks being sent at once: bounds the jobs held in memory (a backlog
/// for a dead receiver is not read all at once).
const CHUNKS_AT_ONCE: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    /// The event's id: one job per event.
    id: String,
    url: String,
    secret: String,
    /// The event, until it is formatted (when first sent).
    #[serde(default)]
    event: Option<Event>,
    /// The event's message and kind, for the message's trail.
    #[serde(default)]
    message_id: String,
    #[serde(default)]
    kind: String,
    body: String,
    headers: BTreeMap<String, String>,
    created_at_ms: i64,
    attempts: u32,
    next_at_ms: i64,
}

/// (account, sender address).
type RouteKey = (String, String);

#[derive(Clone)]
struct Route {
    url: String,
    secret: String,
}

fn bucket_key(bucket: i64) -> String {
    format!("callbacks:due:{bucket}")
}

fn job_key(id: &str) -> String {
    format!("callback:{id}")
}

fn lock_key(id: &str) -> String {
    format!("callback-lock:{id}")
}

/// Takes a job out of a bucket's due list.
fn unfiled(bucket: i64, id: &str) -> Write {
    Write::SetRemove {
        set: bucket_key(bucket),
        member: id.to_string(),
    }
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// The delay before retry number `attempts`: `base` doubling, at most 30 min.
fn backoff(base_ms: u64, attempts: u32) -> Duration {
    let ms = base_ms
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(1_800_000);
    // ±10 % so that many failed jobs do not come back at once.
    let jitter = rand::random_range(0.9..1.1);
    Duration::from_millis((ms as f64 * jitter) as u64)
}

/// The setting that lists the internal networks callbacks may go to.
pub const ALLOW_SETTING: &str = "callbacks.allow_networks";

pub struct Callbacks {
    ses: Records,
    policy: Arc<Policy>,
    settings: CallbackSettings,
    http: reqwest::Client,
    /// Where callbacks may go (see `outbound_http`).
    destinations: Destinations,
    routes: Mutex<HashMap<RouteKey, (Instant, Option<Route>)>>,
    receivers: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: Semaphore,
    /// Jobs this node is reading or sending now.
    working: Mutex<HashSet<String>>,
    chunks: Arc<Semaphore>,
    /// How long a message's trail is kept.
    trail_retention: Duration,
}

impl Callbacks {
    pub fn new(
        ses: Records,
        policy: Arc<Policy>,
        settings: CallbackSettings,
        trail_retention: Duration,
    ) -> Arc<Callbacks> {
        let destinations = Destinations::new(&settings.allow_networks);
        let builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(PER_RECEIVER)
            .user_agent(concat!("Kiln/", env!("CARGO_PKG_VERSION"), " (callbacks)"));
        let http = destinations
            .client(builder, ALLOW_SETTING)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "the callback HTTP client could not be built; callbacks fail until restarted");
                reqwest::Client::new()
            });
        Arc::new(Callbacks {
            destinations,
            in_flight: Semaphore::new(settings.concurrency.max(1)),
            working: Mutex::new(HashSet::new()),
            chunks: Arc::new(Semaphore::new(CHUNKS_AT_ONCE)),
            ses,
            policy,
            settings,
            http,
            routes: Mutex::new(HashMap::new()),
            receivers: Mutex::new(HashMap::new()),
            trail_retention,
        })
    }

    /// Forgets the routes this node has looked up (after a URL changed
    /// here; other nodes see the change within `ROUTE_TTL`).
    pub fn forget_routes(&self) {
        if let Ok(mut r) = self.routes.lock() {
            r.clear();
        }
    }

    /// Where an event of this account and sender goes: the sender
    /// address's URL, else the account's; signed with the account's secret.
    async fn route(&self, account: &str, from: &str) -> Option<Route> {
        let key = (account.to_string(), from.to_ascii_lowercase());
        if let Some((at, route)) = self.routes.lock().ok()?.get(&key).cloned()
            && at.elapsed() < ROUTE_TTL
        {
            return route;
        }
        let route = self.look_up_route(account, from).await;
        if let Ok(mut r) = self.routes.lock() {
            if r.len() > 10_000 {
                r.clear();
            }
            r.insert(key, (Instant::now(), route.clone()));
        }
        route
    }

    async fn look_up_route(&self, account: &str, from: &str) -> Option<Route> {
        let p = &self.ses;
        let (account_url, secret) = match p.account(account).await.ok().flatten() {
            Some(a) => (a.callback_url, a.callback_secret),
            None => {
                let a = p.settings.accounts.iter().find(|a| a.name == account)?;
                (a.callback_url.clone(), a.callback_secret.clone())
            }
        };
        let address_url = p
            .address(account, from)
            .await
            .ok()
            .flatten()
            .and_then(|a| a.callback_url);
        let url = address_url.or(account_url).filter(|u| !u.is_empty())?;
        Some(Route {
            url,
            secret: secret.unwrap_or_default(),
        })
    }

    /// The store changes that file one event's callback (none when it has
    /// nowhere to go): written with the outcome they report where there is
    /// one, so the callback is durable exactly when the outcome is.
    pub async fn writes_for(&self, e: &Event) -> Vec<Write> {
        let Some(route) = self.route(&e.account, &e.from).await else {
            return Vec::new();
        };
        // Formatted when it is sent, off the path that raised it.
        let now = self.ses.store.now_ms();
        let job = Job {
            id: e.event_id.clone(),
            url: route.url,
            secret: route.secret,
            event: Some(e.clone()),
            message_id: e.message_id.clone(),
            kind: e.event.as_str().to_string(),
            body: String::new(),
            headers: BTreeMap::new(),
            created_at_ms: now,
            attempts: 0,
            next_at_ms: now,
        };
        self.filing(&job, None)
    }

    /// Body and headers from the `callback_format` hook; on error or nil,
    /// the event as plain JSON (it still goes out).
    async fn format(&self, job: &mut Job) {
        let Some(e) = job.event.take() else { return };
        let arg = serde_json::to_value(&e).unwrap_or_default();
        let plain = || Formatted {
            body: arg.to_string(),
            headers: BTreeMap::from([("Content-Type".into(), "application/json".into())]),
        };
        let formatted = match self
            .policy
            .call(crate::policy::hooks::CallbackFormat, &arg)
            .await
        {
            Ok(Some(f)) if !f.body.is_empty() => f,
            Ok(_) => plain(),
            Err(err) => {
                tracing::error!(event_id = %e.event_id, error = %err, "callback_format failed; sending the event as JSON");
                plain()
            }
        };
        job.body = formatted.body;
        job.headers = formatted.headers;
    }

    fn keep_for(&self) -> Duration {
        self.settings.max_age + Duration::from_secs(3600)
    }

    /// Stores the job and files it under its due bucket (and out of `from`).
    fn filing(&self, job: &Job, from: Option<i64>) -> Vec<Write> {
        let ttl = Some(self.keep_for());
        let bucket = job.next_at_ms.div_euclid(BUCKET_MS);
        let mut writes = vec![
            Write::Put {
                key: job_key(&job.id),
                value: crate::store::encode(job),
                ttl,
            },
            Write::SetAdd {
                set: bucket_key(bucket),
                member: job.id.clone(),
                ttl,
            },
        ];
        if let Some(old) = from.filter(|b| *b != bucket) {
            writes.push(unfiled(old, &job.id));
        }
        writes
    }

    fn receiver_slots(&self, url: &str) -> Arc<Semaphore> {
        let origin = reqwest::Url::parse(url)
            .map(|u| {
                format!(
                    "{}://{}:{}",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.port_or_known_default().unwrap_or(0)
                )
            })
            .unwrap_or_else(|_| url.to_string());
        let mut r = self.receivers.lock().unwrap_or_else(|p| p.into_inner());
        r.entry(origin)
            .or_insert_with(|| Arc::new(Semaphore::new(PER_RECEIVER)))
            .clone()
    }

    /// Sends due callbacks until `stop`.
    pub async fn send_due(self: Arc<Self>, stop: CancellationToken) {
        let store = self.ses.store.clone();
        let mut cursor =
            (self.ses.store.now_ms() - self.keep_for().as_millis() as i64).div_euclid(BUCKET_MS);
        let tasks = tokio_util::task::TaskTracker::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let now_bucket = self.ses.store.now_ms().div_euclid(BUCKET_MS);
            let mut all_empty_so_far = true;
            let mut b = cursor;
            // Due jobs seen this pass, and the oldest bucket holding one.
            let (mut due, mut oldest) = (0usize, None);
            while b <= now_bucket && !stop.is_cancelled() {
                let ids = match store.set_members(&bucket_key(b)).await {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::warn!(error = %e, "callbacks: cannot read the due list");
                        break;
                    }
                };
                if ids.is_empty() {
                    if all_empty_so_far {
                        cursor = b + 1;
                    }
                } else {
                    all_empty_so_far = false;
                    due += ids.len();
                    oldest.get_or_insert(b);
                    // Jobs this node is already on are not read again.
                    let fresh: Vec<String> = {
                        let mut working = self.working();
                        ids.into_iter()
                            .filter(|id| working.insert(id.clone()))
                            .collect()
                    };
                    for (n, chunk) in fresh.chunks(CHUNK).enumerate() {
                        let permit = tokio::select! {
                            _ = stop.cancelled() => None,
                            p = self.chunks.clone().acquire_owned() => p.ok(),
                        };
                        let Some(permit) = permit else {
                            // Not started: the next pass takes these up.
                            let mut working = self.working();
                            for id in fresh.iter().skip(n * CHUNK) {
                                working.remove(id);
                            }
                            break;
                        };
                        let (this, chunk) = (self.clone(), chunk.to_vec());
                        tasks.spawn(async move {
                            this.send_chunk(b, &chunk).await;
                            let mut working = this.working();
                            for id in &chunk {
                                working.remove(id);
                            }
                            drop(permit);
                        });
                    }
                }
                b += 1;
            }
            // Never past the current bucket: jobs filed now land there.
            cursor = cursor.min(now_bucket);
            if let Some(m) = crate::metrics::get() {
                m.callbacks_pending.set(due as i64);
                m.callback_oldest_seconds.set(oldest.map_or(0.0, |b| {
                    ((self.ses.store.now_ms() - b * BUCKET_MS).max(0)) as f64 / 1000.0
                }));
            }
        }
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
    }

    fn working(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.working.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the jobs among `ids` (of `bucket`) and sends the due ones: one
    /// POST each, or, with `callbacks.batch_max` > 1, several to a POST,
    /// grouped by receiver (and secret) in the order filed. Receivers are
    /// served side by side; each takes its own request slots.
    async fn send_chunk(&self, bucket: i64, ids: &[String]) {
        let (jobs, stale) = match self.read_due(bucket, ids).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "callbacks not read; they will be tried again");
                return;
            }
        };
        if let Err(e) = self.ses.store.write(&stale).await {
            tracing::warn!(error = %e, "stale callback entries not cleared");
        }
        let mut groups: Vec<Vec<Job>> = Vec::new();
        for job in jobs {
            match groups.iter_mut().find(|g| {
                g.len() < self.settings.batch_max.max(1)
                    && g[0].url == job.url
                    && g[0].secret == job.secret
            }) {
                Some(g) => g.push(job),
                None => groups.push(vec![job]),
            }
        }
        futures::future::join_all(groups.into_iter().map(|g| self.send_group(bucket, g))).await;
    }

    /// The due jobs among `ids`, and the changes that clear away entries
    /// that are stale (sent, moved on to a later bucket) or unreadable.
    async fn read_due(
        &self,
        bucket: i64,
        ids: &[String],
    ) -> crate::store::Result<(Vec<Job>, Vec<Write>)> {
        let ops: Vec<BatchOp> = ids.iter().map(|id| BatchOp::Get(job_key(id))).collect();
        let values = self.ses.store.batch(&ops).await?;
        let now = self.ses.store.now_ms();
        let (mut jobs, mut stale) = (Vec::new(), Vec::new());
        for (id, value) in ids.iter().zip(values) {
            let BatchValue::Bytes(Some(raw)) = value else {
                stale.push(unfiled(bucket, id));
                continue;
            };
            let Ok(job) = serde_json::from_slice::<Job>(&raw) else {
                tracing::error!(callback = %id, "unreadable callback job dropped");
                stale.push(Write::Delete(job_key(id)));
                stale.push(unfiled(bucket, id));
                continue;
            };
            if job.next_at_ms.div_euclid(BUCKET_MS) != bucket {
                stale.push(unfiled(bucket, id));
            } else if job.next_at_ms <= now {
                jobs.push(job);
            }
        }
        Ok((jobs, stale))
    }

    /// One POST for `group` (read earlier), once a request slot for its
    /// receiver is free: the jobs are then locked and read again, since
    /// another node may have sent them meanwhile. The lock is held for one
    /// request at most, so a node that dies holding it delays the jobs by
    /// that much, no more.
    async fn send_group(&self, bucket: i64, group: Vec<Job>) {
        let Some(first) = group.first() else { return };
        let receiver = self.receiver_slots(&first.url);
        let Ok(_receiver_slot) = receiver.acquire().await else {
            return;
        };
        let Ok(_slot) = self.in_flight.acquire().await else {
            return;
        };
        let store = &self.ses.store;
        let lock_ttl = self.settings.timeout + Duration::from_secs(5);
        let ops: Vec<BatchOp> = group
            .iter()
            .flat_map(|j| {
                [
                    BatchOp::Incr(lock_key(&j.id), 1, lock_ttl),
                    BatchOp::Get(job_key(&j.id)),
                ]
            })
            .collect();
        let values = match store.batch(&ops).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "callbacks not locked; they will be tried again");
                return;
            }
        };
        let mut jobs = Vec::new();
        let mut writes = Vec::new();
        for (job, pair) in group.into_iter().zip(values.chunks(2)) {
            let (BatchValue::Int(lock), BatchValue::Bytes(raw)) = (&pair[0], &pair[1]) else {
                continue;
            };
            if *lock != 1 {
                continue; // another node (or this one) has it
            }
            let still_due = raw
                .as_deref()
                .and_then(|r| serde_json::from_slice::<Job>(r).ok())
                .is_some_and(|now| now.next_at_ms == job.next_at_ms);
            if still_due {
                jobs.push(job);
            } else {
                writes.push(Write::Delete(lock_key(&job.id)));
            }
        }
        for job in &mut jobs {
            self.format(job).await;
        }
        let started = std::time::Instant::now();
        let outcome = self.post(&jobs).await;
        if let Some(m) = crate::metrics::get()
            && !jobs.is_empty()
        {
            crate::metrics::observe(&m.callback_seconds, started.elapsed());
        }
        for job in jobs {
            writes.extend(self.finish(bucket, job, &outcome));
        }
        if let Err(e) = store.write(&writes).await {
            tracing::warn!(error = %e, "callback bookkeeping failed; they will be tried again");
        }
    }

    /// Done (2xx): the job goes, its lock is left to expire so no node takes
    /// it again meanwhile. Failed: again later, unlocked, or given up after
    /// `max_age`.
    fn finish(&self, bucket: i64, mut job: Job, outcome: &Result<(), String>) -> Vec<Write> {
        let gone = |job: &Job| vec![Write::Delete(job_key(&job.id)), unfiled(bucket, &job.id)];
        let count = |result: &'static str| {
            if let Some(m) = crate::metrics::get() {
                m.callbacks
                    .get_or_create(&crate::metrics::CallbackResult { result })
                    .inc();
            }
        };
        // How it ended, for the message's trail (a failure that is tried
        // again is not a step: the receiver may fail for days).
        let trail = |job: &Job, text: String| -> Option<Write> {
            let step = crate::feedback::trail::Step {
                at_ms: self.ses.store.now_ms(),
                what: "callback".into(),
                recipient: String::new(),
                text,
            };
            (!job.message_id.is_empty())
                .then(|| crate::feedback::trail::add(&job.message_id, &step, self.trail_retention))
        };
        let why = match outcome {
            Ok(()) => {
                count("sent");
                let mut writes = gone(&job);
                writes.extend(trail(
                    &job,
                    format!(
                        "{} event {} sent to {} (try {})",
                        job.kind,
                        job.id,
                        job.url,
                        job.attempts + 1
                    ),
                ));
                tracing::debug!(callback = %job.id, url = %job.url, attempts = job.attempts + 1, "callback delivered");
                return writes;
            }
            Err(why) => why,
        };
        job.attempts += 1;
        let now = self.ses.store.now_ms();
        let mut writes = vec![Write::Delete(lock_key(&job.id))];
        if now - job.created_at_ms >= self.settings.max_age.as_millis() as i64 {
            tracing::error!(callback = %job.id, url = %job.url, attempts = job.attempts, error = %why, "callback given up");
            count("dropped");
            writes.extend(gone(&job));
            writes.extend(trail(
                &job,
                format!(
                    "{} event {} to {} given up after {} tries: {why}",
                    job.kind, job.id, job.url, job.attempts
                ),
            ));
        } else {
            job.next_at_ms =
                now + backoff(self.settings.retry_base_ms, job.attempts).as_millis() as i64;
            tracing::info!(callback = %job.id, url = %job.url, attempts = job.attempts, error = %why, retry_in_ms = job.next_at_ms - now, "callback failed; will retry");
            count("failed");
            writes.extend(self.filing(&job, Some(bucket)));
        }
        writes
    }

    /// One POST: a job's body, or several as a JSON array.
    async fn post(&self, jobs: &[Job]) -> Result<(), String> {
        let Some(first) = jobs.first() else {
            return Ok(());
        };
        let (body, event_ids) = if jobs.len() == 1 {
            (first.body.clone(), first.id.clone())
        } else {
            let bodies: Vec<&str> = jobs.iter().map(|j| j.body.as_str()).collect();
            let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
            (format!("[{}]", bodies.join(",")), ids.join(","))
        };
        // A name is checked as it is resolved (the client's resolver); an
        // address is not resolved, so it is checked here.
        self.destinations
            .check_url(&first.url, ALLOW_SETTING)
            .map_err(|e| e.to_string())?;
        let timestamp = crate::clock::system_now_ms() / 1000;
        let mut req = self.http.post(&first.url);
        for (name, value) in &first.headers {
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("x-kiln-") || lower == "content-length" || lower == "host" {
                continue;
            }
            req = req.header(name, value);
        }
        let resp = req
            .header("X-Kiln-Timestamp", timestamp.to_string())
            .header(
                "X-Kiln-Signature",
                signature(&first.secret, timestamp, body.as_bytes()),
            )
            .header("X-Kiln-Event-Id", event_ids)
            .body(body)
            .send()
            .await
            .map_err(|e| crate::outbound_http::error_chain(&e))?;
        if resp.status().is_success() {
            Ok(())
        } else if resp.status().is_redirection() {
            Err(format!(
                "HTTP {} (redirects are not followed)",
                resp.status()
            ))
        } else {
            Err(format!("HTTP {}", resp.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_timestamp_and_body() {
        // Python: hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()
        let s = signature("key", 1_700_000_000, b"{}");
        assert_eq!(
            s,
            "v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert_ne!(s, signature("key", 1_700_000_001, b"{}"));
        assert_ne!(s, signature("other", 1_700_000_000, b"{}"));
        assert_ne!(s, signature("key", 1_700_000_000, b"{ }"));
    }

    #[test]
    fn backoff_grows_and_stops_at_half_an_hour() {
        assert!(backoff(10_000, 1) <= Duration::from_secs(11));
        assert!(backoff(10_000, 3) >= Duration::from_secs(36));
        assert!(backoff(10_000, 30) <= Duration::from_secs(1980));
    }
}
