//! Callbacks: events POSTed to the account's callback URL (or the sender
//! address's, which wins), in the format the `callback_format` hook makes
//! (by default the Tencent Cloud SES notification) when the callback is
//! first sent.
//!
//! Durable and shared: each callback is a job in the store, filed in a
//! 5-second bucket of when it is due, so any node may send it and a restart
//! loses none. A job is sent under a store lock, retried with exponential
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
use crate::events::Event;
use crate::platform::Platform;
use crate::policy::Policy;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const BUCKET_MS: i64 = 5_000;
const ROUTE_TTL: Duration = Duration::from_secs(10);
/// Requests in flight to one receiver (scheme, host and port).
const PER_RECEIVER: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    id: String,
    event_id: String,
    url: String,
    secret: String,
    /// The event, until it is formatted (when first sent).
    #[serde(default)]
    event: Option<Event>,
    body: String,
    headers: BTreeMap<String, String>,
    created_at_ms: i64,
    attempts: u32,
    next_at_ms: i64,
}

/// What `callback_format` answers.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Formatted {
    body: String,
    headers: BTreeMap<String, String>,
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

pub struct Callbacks {
    platform: Platform,
    policy: Arc<Policy>,
    settings: CallbackSettings,
    http: reqwest::Client,
    routes: Mutex<HashMap<RouteKey, (Instant, Option<Route>)>>,
    receivers: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: Arc<Semaphore>,
}

impl Callbacks {
    pub fn new(
        platform: Platform,
        policy: Arc<Policy>,
        settings: CallbackSettings,
    ) -> Arc<Callbacks> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(PER_RECEIVER)
            .user_agent(concat!("Kiln/", env!("CARGO_PKG_VERSION"), " (callbacks)"))
            .build()
            .unwrap_or_default();
        Arc::new(Callbacks {
            in_flight: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            platform,
            policy,
            settings,
            http,
            routes: Mutex::new(HashMap::new()),
            receivers: Mutex::new(HashMap::new()),
        })
    }

    /// Forgets the routes this node has looked up (after a URL changed
    /// here; other nodes see the change within [`ROUTE_TTL`]).
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
        let p = &self.platform;
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

    /// Formats and files one event's callback, if it has somewhere to go.
    pub async fn file(&self, e: Event) {
        let Some(route) = self.route(&e.account, &e.from).await else {
            return;
        };
        // Formatted when it is sent, off the path that raised it.
        let now = crate::net::now_ms();
        let job = Job {
            id: e.event_id.clone(),
            event_id: e.event_id.clone(),
            url: route.url,
            secret: route.secret,
            event: Some(e),
            body: String::new(),
            headers: BTreeMap::new(),
            created_at_ms: now,
            attempts: 0,
            next_at_ms: now,
        };
        if let Err(err) = self.save(&job, None).await {
            tracing::error!(event_id = %job.event_id, error = %err, "callback not queued");
        }
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
            .call::<_, Formatted>("callback_format", &arg)
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
    async fn save(&self, job: &Job, from: Option<i64>) -> crate::store::Result<()> {
        let store = &self.platform.store;
        let ttl = Some(self.keep_for());
        store
            .put(&job_key(&job.id), &crate::store::encode(job), ttl)
            .await?;
        let bucket = job.next_at_ms.div_euclid(BUCKET_MS);
        store.set_add(&bucket_key(bucket), &job.id, ttl).await?;
        if let Some(old) = from.filter(|b| *b != bucket) {
            store.set_remove(&bucket_key(old), &job.id).await?;
        }
        Ok(())
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
        let store = self.platform.store.clone();
        let mut cursor =
            (crate::net::now_ms() - self.keep_for().as_millis() as i64).div_euclid(BUCKET_MS);
        let tasks = tokio_util::task::TaskTracker::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let now_bucket = crate::net::now_ms().div_euclid(BUCKET_MS);
            let mut all_empty_so_far = true;
            let mut b = cursor;
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
                    for group in ids.chunks(self.settings.batch_max.max(1)) {
                        let Ok(slot) = self.in_flight.clone().acquire_owned().await else {
                            break;
                        };
                        let (this, group) = (self.clone(), group.to_vec());
                        tasks.spawn(async move {
                            this.attempt(b, &group).await;
                            drop(slot);
                        });
                    }
                }
                b += 1;
            }
            // Never past the current bucket: jobs filed now land there.
            cursor = cursor.min(now_bucket);
        }
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
    }

    /// The store lock for one job (held for one request at most: a node
    /// that dies holding it delays the job by this much, no more).
    async fn lock(&self, id: &str) -> bool {
        let lock_ttl = self.settings.timeout + Duration::from_secs(5);
        matches!(
            self.platform
                .store
                .incr(&format!("callback-lock:{id}"), 1, lock_ttl)
                .await,
            Ok(1)
        )
    }

    async fn unlock(&self, id: &str) {
        let _ = self
            .platform
            .store
            .delete(&format!("callback-lock:{id}"))
            .await;
    }

    /// Sends the due jobs among `ids` (of `bucket`): one POST each, or,
    /// with `callbacks.batch_max` > 1, one POST per receiver with a JSON
    /// array of their bodies.
    async fn attempt(&self, bucket: i64, ids: &[String]) {
        let mut locked = Vec::new();
        let mut jobs = Vec::new();
        for id in ids {
            if !self.lock(id).await {
                continue; // another node (or this one) has it
            }
            locked.push(id.clone());
            match self.load_due(bucket, id).await {
                Ok(Some(mut job)) => {
                    self.format(&mut job).await;
                    jobs.push(job);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(callback = %id, error = %e, "callback not read; it will be tried again")
                }
            }
        }
        // One request per receiver (and secret), in the order filed.
        let mut done = Vec::new();
        let mut groups: Vec<Vec<Job>> = Vec::new();
        for job in jobs {
            match groups
                .iter_mut()
                .find(|g| g[0].url == job.url && g[0].secret == job.secret)
            {
                Some(g) => g.push(job),
                None => groups.push(vec![job]),
            }
        }
        for group in groups {
            let slots = self.receiver_slots(&group[0].url);
            let outcome = {
                let _slot = slots.acquire().await;
                self.post(&group).await
            };
            for job in group {
                let id = job.id.clone();
                match self.finish(bucket, job, outcome.clone()).await {
                    // Sent and gone: its lock may simply expire.
                    Ok(()) if outcome.is_ok() => done.push(id),
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(callback = %id, error = %e, "callback bookkeeping failed; it will be tried again");
                    }
                }
            }
        }
        for id in locked.iter().filter(|id| !done.contains(id)) {
            self.unlock(id).await;
        }
    }

    /// The job if it is due in this bucket; stale or unreadable entries
    /// are cleared away.
    async fn load_due(&self, bucket: i64, id: &str) -> crate::store::Result<Option<Job>> {
        let store = &self.platform.store;
        let Some(raw) = store.get(&job_key(id)).await? else {
            store.set_remove(&bucket_key(bucket), id).await?;
            return Ok(None);
        };
        let Ok(job) = serde_json::from_slice::<Job>(&raw) else {
            tracing::error!(callback = %id, "unreadable callback job dropped");
            store.delete(&job_key(id)).await?;
            store.set_remove(&bucket_key(bucket), id).await?;
            return Ok(None);
        };
        if job.next_at_ms.div_euclid(BUCKET_MS) != bucket {
            // Moved on by an earlier attempt; this entry is stale.
            store.set_remove(&bucket_key(bucket), id).await?;
            return Ok(None);
        }
        Ok((job.next_at_ms <= crate::net::now_ms()).then_some(job))
    }

    /// Done (2xx), or again later, or given up after `max_age`.
    async fn finish(
        &self,
        bucket: i64,
        mut job: Job,
        outcome: Result<(), String>,
    ) -> crate::store::Result<()> {
        let store = &self.platform.store;
        match outcome {
            Ok(()) => {
                tracing::debug!(callback = %job.id, url = %job.url, attempts = job.attempts + 1, "callback delivered");
                store.delete(&job_key(&job.id)).await?;
                store.set_remove(&bucket_key(bucket), &job.id).await?;
            }
            Err(why) => {
                job.attempts += 1;
                let now = crate::net::now_ms();
                if now - job.created_at_ms >= self.settings.max_age.as_millis() as i64 {
                    tracing::error!(callback = %job.id, url = %job.url, attempts = job.attempts, error = %why, "callback given up");
                    store.delete(&job_key(&job.id)).await?;
                    store.set_remove(&bucket_key(bucket), &job.id).await?;
                } else {
                    job.next_at_ms =
                        now + backoff(self.settings.retry_base_ms, job.attempts).as_millis() as i64;
                    tracing::info!(callback = %job.id, url = %job.url, attempts = job.attempts, error = %why, retry_in_ms = job.next_at_ms - now, "callback failed; will retry");
                    self.save(&job, Some(bucket)).await?;
                }
            }
        }
        Ok(())
    }

    /// One POST: a job's body, or several as a JSON array.
    async fn post(&self, jobs: &[Job]) -> Result<(), String> {
        let Some(first) = jobs.first() else {
            return Ok(());
        };
        let (body, event_ids) = if jobs.len() == 1 {
            (first.body.clone(), first.event_id.clone())
        } else {
            let bodies: Vec<&str> = jobs.iter().map(|j| j.body.as_str()).collect();
            let ids: Vec<&str> = jobs.iter().map(|j| j.event_id.as_str()).collect();
            (format!("[{}]", bodies.join(",")), ids.join(","))
        };
        let timestamp = crate::net::system_now_ms() / 1000;
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
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
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
