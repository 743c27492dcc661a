//! Egress, delivery: per-destination connection workers that send leased entries
//! and settle each outcome in the store.
//!
//! Each destination domain has a line of jobs and up to
//! `max_connections_per_destination` workers; a worker keeps its connection
//! for the next job (RSET between messages) until it idles out. A job holds
//! one of `max_in_flight` attempt slots only while it is being attempted,
//! and a destination's line holds a bounded number of jobs: what does not
//! fit is parked back in the queue, due when the line should have room.
//! So a destination that is slow or a tarpit never holds up the others.

pub mod client;

use crate::config::Settings;
use crate::dns::{MxResolver, RouteError};
use crate::net::domain_of;
use crate::policy::decisions::{BounceClass, BounceInfo};
use crate::queue::QueueHandle;
use crate::queue::outcome::Verdict;
use crate::store::{Attempt, QueueEntry, RecipientState};
use crate::tls::ClientConfigs;
use client::{ClientError, Connection, Reply, TlsMode};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Job {
    entry: QueueEntry,
    /// This node's hold on a leased entry (the manager's budget).
    _leased: OwnedSemaphorePermit,
}

/// Attempts finished recently, to pace what a full line parks.
const RATE_WINDOW: usize = 32;
/// A parked entry waits at least this long, at most [`PARK_MAX_MS`].
const PARK_MIN_MS: i64 = 100;
const PARK_MAX_MS: i64 = 300_000;
/// The rate assumed for a destination whose attempts do not finish (a
/// tarpit looks like this): attempts a second.
const STALLED_RATE: f64 = 0.2;
/// An attempt running this long means the destination is stalled.
const STALLED_AFTER: Duration = Duration::from_secs(5);
/// Attempts a second per connection assumed for a destination that has not
/// finished enough attempts to measure, and is not stalled.
const FRESH_RATE_PER_CONNECTION: f64 = 10.0;

#[derive(Default)]
struct DestState {
    jobs: VecDeque<Job>,
    workers: usize,
    idle: usize,
    /// When each job being attempted right now was taken from the line.
    running: Vec<Instant>,
    /// When the last few attempts ended.
    finished: VecDeque<Instant>,
    /// The due time handed to the last parked entry.
    park_cursor_ms: i64,
}

impl DestState {
    /// Attempts a second the destination takes: measured from the recent
    /// ones; assumed while there are too few.
    fn rate(&self, connections: usize) -> f64 {
        let recent = self.finished.front().filter(|_| self.finished.len() >= 2);
        if let Some(first) = recent
            && first.elapsed() < Duration::from_secs(60)
        {
            let n = self.finished.len() - 1;
            return (n as f64 / first.elapsed().as_secs_f64().max(0.001)).max(STALLED_RATE);
        }
        if self.running.iter().any(|t| t.elapsed() > STALLED_AFTER) {
            STALLED_RATE
        } else {
            connections as f64 * FRESH_RATE_PER_CONNECTION
        }
    }

    /// When a job that does not fit now should be due: after the ones
    /// already parked, at the pace the destination takes mail.
    fn park_at(&mut self, now_ms: i64, connections: usize) -> i64 {
        let step = (1000.0 / self.rate(connections)) as i64;
        let next = (self.park_cursor_ms.max(now_ms) + step)
            .clamp(now_ms + PARK_MIN_MS, now_ms + PARK_MAX_MS);
        self.park_cursor_ms = next;
        next
    }
}

/// Mail for one domain from one source address.
struct Destination {
    domain: String,
    source_ip: Option<std::net::IpAddr>,
    state: Mutex<DestState>,
    wake: Notify,
}

impl Destination {
    fn lock(&self) -> std::sync::MutexGuard<'_, DestState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A job a worker took from its line: counted in the line until its
/// attempt is over.
struct Running<'a>(&'a Destination);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        // The oldest attempt is the one to go: close enough for "is any
        // attempt stuck".
        if !st.running.is_empty() {
            st.running.remove(0);
        }
        if st.finished.len() == RATE_WINDOW {
            st.finished.pop_front();
        }
        st.finished.push_back(Instant::now());
    }
}

pub struct Delivery {
    settings: Arc<Settings>,
    queue: QueueHandle,
    policy: Arc<crate::policy::Policy>,
    outcomes: Arc<crate::feedback::outcomes::OutcomeFeed>,
    stats: Arc<crate::feedback::stats::DailyStats>,
    events: crate::feedback::events::Events,
    verp: Option<Arc<crate::feedback::verp::Verp>>,
    resolver: MxResolver,
    tls: ClientConfigs,
    destinations: Mutex<HashMap<String, Arc<Destination>>>,
    /// Attempts running on this node (`max_in_flight`).
    attempts: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Where final outcomes go: reputation, the daily statistics, events.
pub struct Feedback {
    pub outcomes: Arc<crate::feedback::outcomes::OutcomeFeed>,
    pub stats: Arc<crate::feedback::stats::DailyStats>,
    pub events: crate::feedback::events::Events,
    /// Return paths for account mail (bounces come back to Kiln).
    pub verp: Option<Arc<crate::feedback::verp::Verp>>,
}

impl Delivery {
    pub fn new(
        settings: Arc<Settings>,
        queue: QueueHandle,
        policy: Arc<crate::policy::Policy>,
        feedback: Feedback,
        resolver: MxResolver,
        tls: ClientConfigs,
        shutdown: CancellationToken,
    ) -> Arc<Delivery> {
        Arc::new(Delivery {
            queue,
            policy,
            outcomes: feedback.outcomes,
            stats: feedback.stats,
            events: feedback.events,
            verp: feedback.verp,
            resolver,
            tls,
            destinations: Mutex::new(HashMap::new()),
            attempts: Arc::new(Semaphore::new(settings.delivery.max_in_flight)),
            settings,
            tracker: TaskTracker::new(),
            shutdown,
        })
    }

    /// Queue entries this node holds at once, in lines or attempted.
    pub fn max_leased(&self) -> usize {
        self.settings.delivery.max_in_flight * 4
    }

    /// Jobs one destination's line may hold, running or waiting: four per
    /// connection, or about a second's worth at the pace the destination
    /// takes mail when that is more, never over half of what this node
    /// holds (a stalled destination keeps the four per connection).
    fn line_limit(&self, st: &DestState) -> usize {
        let connections = self.settings.delivery.max_connections_per_destination;
        let second = st.rate(connections) as usize;
        (connections * 4).max(second.min(self.max_leased() / 2))
    }
}

impl crate::queue::manager::Dispatch for Delivery {
    /// Puts a leased entry in its destination's line. An entry the line
    /// has no room for comes back, its `ready_at_ms` set to when it should
    /// be tried: the caller parks it in the queue.
    fn dispatch(
        self: Arc<Self>,
        mut entry: QueueEntry,
        leased: OwnedSemaphorePermit,
    ) -> Option<QueueEntry> {
        let domain = entry.domain().to_ascii_lowercase();
        let source_ip = entry.source_ip;
        let key = match source_ip {
            Some(ip) => format!("{domain}|{ip}"),
            None => domain.clone(),
        };
        let dest = {
            let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key)
                .or_insert_with(|| {
                    Arc::new(Destination {
                        domain,
                        source_ip,
                        state: Mutex::new(DestState::default()),
                        wake: Notify::new(),
                    })
                })
                .clone()
        };
        let spawn = {
            let mut st = dest.lock();
            if st.jobs.len() + st.running.len() >= self.line_limit(&st) {
                let connections = self.settings.delivery.max_connections_per_destination;
                entry.ready_at_ms = st.park_at(self.queue.store.now_ms(), connections);
                return Some(entry);
            }
            st.jobs.push_back(Job {
                entry,
                _leased: leased,
            });
            if st.idle > 0 {
                dest.wake.notify_one();
                false
            } else if st.workers < self.settings.delivery.max_connections_per_destination {
                st.workers += 1;
                true
            } else {
                false
            }
        };
        if spawn {
            let this = self.clone();
            self.tracker.spawn(async move { this.worker(dest).await });
        }
        None
    }
}

impl Delivery {
    /// After shutdown: waits for running attempts, then gives queued but
    /// unstarted jobs back to the store.
    pub async fn drain(&self, grace: Duration) {
        let mut unstarted = Vec::new();
        {
            let map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
            for dest in map.values() {
                let mut st = dest.lock();
                unstarted.extend(st.jobs.drain(..).map(|j| j.entry));
                dest.wake.notify_waiters();
            }
        }
        if let Err(e) = self.queue.store.release(&unstarted).await {
            tracing::error!(error = %e, "could not release queued entries");
        }
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("deliveries still running at shutdown; their leases will expire");
        }
    }

    /// The next job of the line, counted as running until the guard goes.
    async fn next_job<'d>(&self, dest: &'d Destination) -> Option<(Job, Running<'d>)> {
        let idle_timeout = self.settings.delivery.idle_timeout;
        let mut waited = false;
        loop {
            {
                let mut st = dest.lock();
                if self.shutdown.is_cancelled() {
                    st.workers -= 1;
                    return None;
                }
                if let Some(job) = st.jobs.pop_front() {
                    st.running.push(Instant::now());
                    return Some((job, Running(dest)));
                }
                if waited {
                    st.workers -= 1;
                    return None;
                }
                st.idle += 1;
            }
            tokio::select! {
                _ = dest.wake.notified() => {}
                _ = tokio::time::sleep(idle_timeout) => waited = true,
                _ = self.shutdown.cancelled() => {}
            }
            dest.lock().idle -= 1;
        }
    }

    async fn worker(self: Arc<Self>, dest: Arc<Destination>) {
        let mut conn: Option<Connection> = None;
        let mut sent = 0usize;
        while let Some((job, _running)) = self.next_job(&dest).await {
            // The attempt slot, held only while this job is attempted.
            let Ok(_attempt) = self.attempts.clone().acquire_owned().await else {
                break;
            };
            let entry = job.entry.clone();
            let started = Instant::now();
            let mut attempt = Attempt {
                at_ms: self.queue.store.now_ms(),
                mx: None,
                ip: None,
                code: None,
                enhanced_code: None,
                message: String::new(),
                tls: None,
                duration_ms: 0,
            };
            let body = match self.queue.body(&entry.msg_id).await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    attempt.message = "message body missing from the store".into();
                    self.settle(&entry, Verdict::Permanent, attempt).await;
                    continue;
                }
                Err(e) => {
                    attempt.message = format!("store: {e}");
                    self.settle(&entry, Verdict::Temporary, attempt).await;
                    continue;
                }
            };
            let require_tls = entry.require_tls
                || self
                    .settings
                    .delivery
                    .require_tls_domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(&dest.domain));
            if conn
                .as_ref()
                .is_some_and(|c| require_tls && !c.verified_tls)
                && let Some(c) = conn.take()
            {
                c.quit().await;
            }
            if conn.is_none() {
                match self
                    .connect(&dest.domain, dest.source_ip, require_tls)
                    .await
                {
                    Ok(c) => {
                        conn = Some(c);
                        sent = 0;
                    }
                    Err((verdict, text, enhanced)) => {
                        attempt.message = text;
                        attempt.enhanced_code = enhanced;
                        attempt.duration_ms = started.elapsed().as_millis() as u64;
                        self.settle(&entry, verdict, attempt).await;
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            attempt.mx = Some(c.mx.clone());
            attempt.ip = Some(c.ip.to_string());
            attempt.tls = c.tls_version.clone();
            let return_path = self.return_path(&entry);
            let verdict = match c
                .send(&return_path, &entry.recipient, &body, entry.require_tls)
                .await
            {
                Ok(reply) => {
                    let verdict = verdict_for(&reply);
                    record_reply(&mut attempt, &reply);
                    verdict
                }
                Err(e) => {
                    conn = None;
                    attempt.message = format!("connection lost: {e}");
                    Verdict::Temporary
                }
            };
            attempt.duration_ms = started.elapsed().as_millis() as u64;
            sent += 1;
            // A connection that could not carry a REQUIRETLS message is
            // closed, so the retry asks a fresh session what it offers.
            let unfit = attempt.enhanced_code.as_deref() == Some("4.7.30");
            if (unfit || sent >= self.settings.delivery.max_messages_per_connection)
                && let Some(c) = conn.take()
            {
                c.quit().await;
            }
            self.settle(&entry, verdict, attempt).await;
            drop(job);
        }
        if let Some(c) = conn {
            c.quit().await;
        }
    }

    /// Tries each MX in order, each of its addresses, until one answers.
    async fn connect(
        &self,
        domain: &str,
        source_ip: Option<std::net::IpAddr>,
        require_tls: bool,
    ) -> Result<Connection, (Verdict, String, Option<String>)> {
        let source = source_ip.or(self.settings.delivery.source_address);
        let hosts = match self.resolver.route(domain).await {
            Ok(h) => h,
            Err(RouteError::Permanent { enhanced, text }) => {
                return Err((Verdict::Permanent, text, Some(enhanced.to_string())));
            }
            Err(RouteError::Temporary(text)) => {
                return Err((Verdict::Temporary, text, Some("4.4.3".into())));
            }
        };
        let d = &self.settings.delivery;
        let mode = if require_tls {
            TlsMode::Required
        } else {
            TlsMode::Opportunistic
        };
        let helo = &self.settings.server.hostname;
        let mut errors = Vec::new();
        for host in hosts.iter() {
            for ip in host.addrs.iter().take(4) {
                let addr = SocketAddr::new(*ip, d.mx_port);
                let opened = Connection::open(
                    &host.name,
                    addr,
                    source,
                    helo,
                    mode,
                    &self.tls,
                    d.connect_timeout,
                )
                .await;
                let opened = match opened {
                    Err(ClientError::Tls(e)) if mode == TlsMode::Opportunistic => {
                        tracing::info!(mx = %host.name, %addr, error = %e, "STARTTLS failed, retrying in plain text");
                        Connection::open(
                            &host.name,
                            addr,
                            source,
                            helo,
                            TlsMode::Disabled,
                            &self.tls,
                            d.connect_timeout,
                        )
                        .await
                    }
                    other => other,
                };
                match opened {
                    Ok(c) => return Ok(c),
                    Err(ClientError::Rejected(reply))
                        if reply.is_permanent() && hosts.len() == 1 =>
                    {
                        return Err((
                            Verdict::Permanent,
                            format!("{} ({}) refused the connection: {reply}", host.name, addr),
                            reply.enhanced.clone(),
                        ));
                    }
                    Err(e) => {
                        tracing::debug!(mx = %host.name, %addr, error = %e, "MX unreachable");
                        errors.push(format!("{} ({addr}): {e}", host.name));
                    }
                }
            }
        }
        Err((
            Verdict::Temporary,
            format!(
                "no MX of {domain} accepted a connection: {}",
                errors.join("; ")
            ),
            Some("4.4.1".into()),
        ))
    }

    /// Asks `classify_bounce` about a refusal the MX replied with; its
    /// answer may turn a retry into a bounce or the other way round. If the
    /// hook fails, the recipient is retried later: a script error never
    /// bounces mail.
    async fn classify(
        &self,
        entry: &QueueEntry,
        verdict: Verdict,
        attempt: &mut Attempt,
    ) -> (Verdict, Option<BounceClass>) {
        // Only replies are classified; DNS and connection failures are ours.
        if verdict == Verdict::Delivered || attempt.code.is_none() {
            return (verdict, None);
        }
        let info = BounceInfo {
            code: attempt.code.unwrap_or(0),
            enhanced_code: attempt.enhanced_code.clone().unwrap_or_default(),
            text: attempt.message.clone(),
            recipient: entry.recipient.clone(),
            sender_domain: domain_of(&entry.sender),
            mx: attempt.mx.clone().unwrap_or_default(),
            source: "smtp",
        };
        match self
            .policy
            .call::<_, BounceClass>("classify_bounce", &info)
            .await
        {
            Ok(Some(class)) => {
                let verdict = match class.retry {
                    Some(true) => Verdict::Temporary,
                    Some(false) => Verdict::Permanent,
                    None => verdict,
                };
                (verdict, Some(class))
            }
            Ok(None) => (verdict, None),
            Err(e) => {
                attempt.message =
                    format!("{} (bounce classification failed: {e})", attempt.message);
                (Verdict::Temporary, None)
            }
        }
    }

    /// Tells the `reputation` hook (through the outcome feed) and the daily
    /// statistics about a final outcome.
    fn report_outcome(
        &self,
        entry: &QueueEntry,
        state: RecipientState,
        class: Option<&BounceClass>,
    ) {
        let domain = domain_of(&entry.sender);
        match state {
            RecipientState::Delivered => {
                self.outcomes.record(&domain, "delivered");
                self.stats.record(&domain, &entry.recipient, "delivered", 1);
            }
            RecipientState::Bounced | RecipientState::Expired => {
                self.outcomes.record(&domain, "bounce");
                self.stats.record(&domain, &entry.recipient, "bounce", 1);
                if class.is_some_and(|c| c.invalid_address) {
                    self.outcomes.record(&domain, "invalid");
                }
                if class.is_some_and(|c| c.class == "spam") {
                    self.outcomes.record(&domain, "spam");
                }
            }
            _ => {}
        }
    }

    /// The envelope sender for a copy: a VERP return path for an account's
    /// mail with a sender (null senders and relayed mail keep theirs).
    fn return_path(&self, entry: &QueueEntry) -> String {
        match &self.verp {
            Some(v) if !entry.account.is_empty() && !entry.sender.is_empty() => {
                v.address(&entry.msg_id, entry.rcpt_idx)
            }
            _ => entry.sender.clone(),
        }
    }

    /// The event for an attempt's outcome (delivered, deferred, bounce).
    fn event_for(
        now: i64,
        entry: &QueueEntry,
        state: RecipientState,
        class: Option<&BounceClass>,
        attempt: &Attempt,
    ) -> Option<crate::feedback::events::Event> {
        let (kind, bounce_type) = match state {
            RecipientState::Delivered => ("delivered", ""),
            RecipientState::Deferred => ("deferred", ""),
            RecipientState::Bounced if class.is_some_and(|c| c.class != "hard") => {
                ("bounce", "soft")
            }
            RecipientState::Bounced => ("bounce", "hard"),
            RecipientState::Expired => ("bounce", "soft"),
            RecipientState::Queued | RecipientState::Dropped => return None,
        };
        let mut e = crate::feedback::events::Event::new(
            now,
            kind,
            &entry.msg_id,
            &entry.recipient,
            &entry.sender,
            &entry.account,
        );
        e.bounce_type = bounce_type.to_string();
        e.sent_at = entry.received_at_ms;
        e.template_id = entry.template_id.clone();
        e.task_id = entry.task_id.clone();
        e.reason = match (attempt.code, &attempt.enhanced_code) {
            (Some(c), Some(x)) => format!("{c} {x} {}", attempt.message),
            (Some(c), None) => format!("{c} {}", attempt.message),
            _ => attempt.message.clone(),
        };
        if state == RecipientState::Expired {
            e.reason = format!("gave up after the queue's maximum age: {}", e.reason);
        }
        Some(e)
    }

    /// Reports an attempt to the queue, which decides what it means; then
    /// its event, the statistics and the reputation feed hear of it.
    async fn settle(&self, entry: &QueueEntry, verdict: Verdict, mut attempt: Attempt) {
        let (verdict, class) = self.classify(entry, verdict, &mut attempt).await;
        let decision = self.queue.decide(entry, verdict);
        let state = decision.state;
        tracing::info!(
            msg_id = %entry.msg_id,
            recipient = %entry.recipient,
            mx = attempt.mx.as_deref().unwrap_or("-"),
            ip = attempt.ip.as_deref().unwrap_or("-"),
            code = attempt.code.unwrap_or(0),
            enhanced_code = attempt.enhanced_code.as_deref().unwrap_or("-"),
            tls = attempt.tls.as_deref().unwrap_or("none"),
            attempt = entry.attempts + 1,
            elapsed_ms = attempt.duration_ms,
            outcome = ?state,
            reply = %attempt.message,
            "delivery attempt"
        );
        if let Some(c) = &class {
            tracing::debug!(msg_id = %entry.msg_id, class = %c.class, "bounce classified");
        }
        let event = Self::event_for(
            self.queue.store.now_ms(),
            entry,
            state,
            class.as_ref(),
            &attempt,
        );
        self.report_outcome(entry, state, class.as_ref());
        let also = match &event {
            Some(e) => self.events.writes_for(e).await,
            None => Vec::new(),
        };
        // After the status is durable: the event reports what the store says.
        if self
            .queue
            .settle(entry, decision, attempt, &also)
            .await
            .is_ok()
            && let Some(event) = &event
        {
            crate::feedback::events::Events::log(event);
        }
    }
}

fn verdict_for(reply: &Reply) -> Verdict {
    if reply.is_positive() {
        Verdict::Delivered
    } else if reply.is_permanent() {
        Verdict::Permanent
    } else {
        Verdict::Temporary
    }
}

fn record_reply(attempt: &mut Attempt, reply: &Reply) {
    attempt.code = Some(reply.code);
    attempt.enhanced_code = reply.enhanced.clone();
    attempt.message = reply.text.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_line_parks_at_the_pace_of_its_destination() {
        let now = 1_000_000;
        // Fresh: ten a second per connection, so 16 connections: 6 ms apart.
        let mut fresh = DestState::default();
        let first = fresh.park_at(now, 16);
        assert_eq!(first, now + PARK_MIN_MS);
        assert_eq!(fresh.park_at(now, 16), first + 6);
        // Stalled (an attempt running for longer than STALLED_AFTER): five
        // seconds apart, never past PARK_MAX_MS.
        let mut stalled = DestState::default();
        stalled
            .running
            .push(Instant::now() - STALLED_AFTER - Duration::from_secs(1));
        assert_eq!(stalled.park_at(now, 16), now + 5_000);
        assert_eq!(stalled.park_at(now, 16), now + 10_000);
        for _ in 0..100 {
            stalled.park_at(now, 16);
        }
        assert_eq!(stalled.park_at(now, 16), now + PARK_MAX_MS);
        // Measured: 32 attempts in about a second, so about 31 a second.
        let mut measured = DestState::default();
        let start = Instant::now() - Duration::from_secs(1);
        for i in 0..RATE_WINDOW {
            measured
                .finished
                .push_back(start + Duration::from_millis(i as u64 * 1000 / 32));
        }
        let rate = measured.rate(16);
        assert!((25.0..35.0).contains(&rate), "{rate}");
    }
}
