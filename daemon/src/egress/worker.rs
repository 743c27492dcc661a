//! A line's worker: takes the line's jobs one at a time over a connection
//! it keeps, within the limits of its (provider, source): it holds one of
//! the pair's connection slots while its connection is open, opens
//! connections and sends messages at their paced times, closes a
//! connection after the pair's messages per connection, and sends jobs
//! back to the queue while the pair is suspended or its next send time is
//! far away.

use super::client::{Connection, LOCAL, Reply};
use super::connect::DANE;
use super::line::{Job, Line, Running};
use super::mta_sts;
use super::shaping::{Effective, SendPermit, Shape, WAIT_AT_MOST};
use super::warmup::Counted;
use super::{Delivery, Ruling};
use crate::policy::decisions::Signal;
use crate::queue::outcome::Verdict;
use crate::queued::Attempt;
use crate::store::shaping::Paced;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a worker waits for one of its pair's connection slots before
/// its job goes back to the queue.
const SLOT_WAIT: Duration = Duration::from_secs(10);
/// How often a worker waiting for a slot asks again (other nodes' slots
/// are not announced here).
const SLOT_POLL: Duration = Duration::from_millis(200);

/// How late after its granted send time a message may still leave (µs):
/// the slack the pace leaves in a second's window (2 %), so any second
/// still holds no more than the limit.
const LATE_US: i64 = 20_000;
/// Fresh send times a message takes before it goes back to the queue.
const MAX_LATE_RETRIES: usize = 5;

/// Names each worker's connection slot.
static WORKERS: AtomicU64 = AtomicU64::new(0);

/// Why a connection could not be had.
pub(super) struct ConnectFailure {
    pub(super) verdict: Verdict,
    pub(super) text: String,
    pub(super) enhanced: Option<String>,
    /// The receiver's refusal (greeting, EHLO, STARTTLS), if it gave one.
    pub(super) reply: Option<Reply>,
    /// The source address could not be used: not the destination's doing.
    pub(super) source_broken: bool,
}

impl ConnectFailure {
    /// A failure to try again later that the destination did not answer
    /// (no reply of its own), with its enhanced status code.
    pub(super) fn temporary(text: String, enhanced: &str) -> ConnectFailure {
        ConnectFailure {
            verdict: Verdict::Temporary,
            text,
            enhanced: Some(enhanced.into()),
            reply: None,
            source_broken: false,
        }
    }
}

/// How an attempt ended for the worker.
enum Ended {
    /// The job's outcome is recorded.
    Settled,
    /// The line's source cannot connect: the job was not attempted.
    SourceBroken,
}

/// How long a source that could not connect is left out.
const SOURCE_REST_MS: i64 = 60_000;

/// A worker's connection and the slot that lets it be open.
struct Held<'a> {
    delivery: &'a Delivery,
    shape: &'a Shape,
    holder: String,
    conn: Option<Connection>,
    slot: bool,
    sent: u32,
    /// The TLS policy of the job being attempted (`MTA-STS ... id=...`),
    /// as `ensure_connection` found it.
    tls_policy: Option<String>,
    /// The domain whose TLS report last counted the connection.
    counted_for: String,
}

impl Held<'_> {
    /// Closes the connection (politely) and gives its slot back.
    async fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            c.quit().await;
        }
        self.drop_slot().await;
    }

    /// The connection is gone (lost or never made): the slot goes back.
    async fn drop_slot(&mut self) {
        self.conn = None;
        if self.slot {
            self.slot = false;
            self.delivery
                .shaper
                .give_connection(self.shape, &self.holder)
                .await;
        }
    }
}

/// Waits until `at_us` (µs of Kiln's time); never wakes early.
async fn sleep_until_us(delivery: &Delivery, at_us: i64) {
    let wait = at_us - delivery.shaper.now_ms() * 1000;
    if wait > 0 {
        tokio::time::sleep(Duration::from_micros(wait as u64)).await;
    }
}

impl Delivery {
    /// The next job of the line, counted as running until the guard goes.
    async fn next_job<'l>(&self, line: &'l Line) -> Option<(Job, Running<'l>)> {
        let idle_timeout = self.settings.delivery.idle_timeout;
        let mut waited = false;
        loop {
            {
                let mut st = line.lock();
                if self.shutdown.is_cancelled() {
                    st.workers -= 1;
                    return None;
                }
                if let Some(job) = st.jobs.pop_front() {
                    return Some((job, Running::taken(line, &mut st)));
                }
                if waited {
                    st.workers -= 1;
                    return None;
                }
                st.idle += 1;
            }
            tokio::select! {
                _ = line.wake.notified() => {}
                _ = tokio::time::sleep(idle_timeout) => waited = true,
                _ = self.shutdown.cancelled() => {}
            }
            line.lock().idle -= 1;
        }
    }

    /// Sends `job` back to the queue due at `at_ms`, with the jobs still
    /// waiting in the line when `whole_line` (the pair is suspended: none
    /// of them can go), spaced `step_ms` apart so they do not all come
    /// back at once.
    async fn send_back(&self, line: &Line, job: Job, at_ms: i64, step_ms: i64, whole_line: bool) {
        let mut jobs = vec![job];
        if whole_line {
            jobs.extend(line.lock().jobs.drain(..));
        }
        let entries: Vec<_> = jobs
            .into_iter()
            .map(|j| {
                let mut e = j.entry;
                e.ready_at_ms = line.shape.park_at(at_ms, step_ms);
                e
            })
            .collect();
        if let Err(e) = self.queue.postpone(&entries).await {
            // Their leases expire; another lease takes them then.
            tracing::error!(error = %e, "could not send entries back to the queue");
        }
    }

    /// Takes one of the pair's connection slots, waiting for one while
    /// they are all in use (at most `SLOT_WAIT`).
    async fn wait_for_slot(&self, shape: &Shape, holder: &str, e: &Effective) -> bool {
        let deadline = Instant::now() + SLOT_WAIT;
        loop {
            let freed = shape.freed.notified();
            match self.shaper.take_connection(shape, holder, e).await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "taking a connection slot failed");
                    return false;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep(SLOT_POLL) => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    pub(super) async fn worker(self: Arc<Self>, line: Arc<Line>) {
        let shape = line.shape.clone();
        let mut held = Held {
            delivery: &self,
            shape: &shape,
            holder: format!("{}:{}", self.node, WORKERS.fetch_add(1, Ordering::Relaxed)),
            conn: None,
            slot: false,
            sent: 0,
            tls_policy: None,
            counted_for: String::new(),
        };
        while let Some((job, mut running)) = self.next_job(&line).await {
            // An operator's rule made since the job was placed.
            let job = match self.ruling(job, Some(&shape.provider), Some(&line.source.name)) {
                Ruling::Go(job) => job,
                Ruling::Back(entry) => {
                    drop(running);
                    if let Err(e) = self.queue.postpone(&[entry]).await {
                        tracing::error!(error = %e, "could not send an entry back to the queue");
                    }
                    continue;
                }
                Ruling::Taken => {
                    drop(running);
                    continue;
                }
            };
            let now = self.shaper.now_ms();
            let throttle = self.shaper.throttle(&shape).await;
            let e = super::shaping::effective(&shape.limits(), &throttle, now);
            let step_ms = e.message_interval_us.map_or(20, |i| (i / 1000).max(1));
            if throttle.suspended(now) {
                held.close().await;
                drop(running);
                let until = throttle.suspended_until_ms;
                self.send_back(&line, job, until, step_ms, true).await;
                continue;
            }
            if held.conn.is_none() && !held.slot {
                if !self.wait_for_slot(&shape, &held.holder, &e).await {
                    drop(running);
                    self.send_back(&line, job, now + 1_000, step_ms, false)
                        .await;
                    continue;
                }
                held.slot = true;
                match self.shaper.connect_time(&shape, &e).await {
                    Ok(None) => {}
                    Ok(Some(Paced::Granted(at))) => sleep_until_us(&self, at).await,
                    Ok(Some(Paced::NotBefore(at))) => {
                        held.drop_slot().await;
                        drop(running);
                        let at_ms = at / 1000 - WAIT_AT_MOST.as_millis() as i64 / 2;
                        self.send_back(&line, job, at_ms, step_ms, false).await;
                        continue;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "pacing a connection failed");
                        held.drop_slot().await;
                        drop(running);
                        self.send_back(&line, job, now + 1_000, step_ms, false)
                            .await;
                        continue;
                    }
                }
            }
            // Connected before the message's send time is taken, so the
            // time is kept: a receiver counting messages sees them spaced.
            running.attempting();
            match self.ensure_connection(&line, &mut held, &job, &e).await {
                Ok(()) => {}
                Err(Ended::Settled) => {
                    shape.finished_attempt();
                    continue;
                }
                Err(Ended::SourceBroken) => {
                    // Its mail goes back to be placed on another source.
                    self.source_broken(&line.source.name, now + SOURCE_REST_MS);
                    drop(running);
                    self.send_back(&line, job, now + 100, step_ms, true).await;
                    continue;
                }
            }
            // The attempt slot, held only while this job is attempted, and
            // the body: all ready before the send time, which is then kept.
            let Ok(_attempt) = self.attempts.clone().acquire_owned().await else {
                break;
            };
            let Some(body) = self.load_body(&line, &job).await else {
                shape.finished_attempt();
                continue;
            };
            if line.source.warmup
                && let Counted::Full = self.warmup_count(&line.source.name, &shape.provider).await
            {
                // Over today's cap: the line's mail is placed again, on
                // the pool's other sources or due tomorrow.
                drop(running);
                self.send_back(&line, job, now + 100, step_ms, true).await;
                continue;
            }
            let return_path = self.return_path(&job.entry).await;
            let (permit, back) = self.send_time(&shape, &e, now).await;
            if let Some(at_ms) = back {
                drop(running);
                self.send_back(&line, job, at_ms, step_ms, false).await;
                continue;
            }
            self.attempt(&line, &mut held, &job, &e, (&body, &return_path), permit)
                .await;
            shape.finished_attempt();
            drop(running);
            drop(job);
        }
        held.close().await;
    }

    /// Waits for the message's send time: granted by the store (the pace,
    /// shared by the nodes), then this node's window ([`Shape::space`]).
    /// A message leaves at most [`LATE_US`] after the time it was granted:
    /// a later one takes a fresh time, so the nodes' messages stay spaced
    /// at the pace even when one of them was held up. Answers the permit
    /// to send, or when to send the job back to the queue instead.
    async fn send_time<'s>(
        &self,
        shape: &'s Shape,
        e: &Effective,
        now_ms: i64,
    ) -> (Option<SendPermit<'s>>, Option<i64>) {
        for _ in 0..MAX_LATE_RETRIES {
            let granted = match self.shaper.message_time(shape, e).await {
                Ok(None) => None,
                Ok(Some(Paced::Granted(at))) => {
                    sleep_until_us(self, at).await;
                    Some(at)
                }
                Ok(Some(Paced::NotBefore(at))) => {
                    return (None, Some(at / 1000 - WAIT_AT_MOST.as_millis() as i64 / 2));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "pacing a message failed");
                    return (None, Some(now_ms + 1_000));
                }
            };
            let Some(window) = e.window else {
                return (None, None);
            };
            let permit = shape.space(window).await;
            if let Some(at) = granted
                && self.shaper.now_ms() * 1000 - at > LATE_US
            {
                tracing::debug!(
                    target: "kiln::shaping",
                    provider = %shape.provider,
                    source = %shape.source,
                    late_ms = self.shaper.now_ms() - at / 1000,
                    "send time passed; taking a fresh one"
                );
                permit.cancel();
                continue;
            }
            return (Some(permit), None);
        }
        // Held up again and again (a machine this busy): later, then.
        (None, Some(now_ms + 1_000))
    }

    fn new_attempt(&self, line: &Line) -> Attempt {
        Attempt {
            at_ms: self.store.now_ms(),
            mx: None,
            ip: None,
            code: None,
            enhanced_code: None,
            message: String::new(),
            tls: None,
            duration_ms: 0,
            source: Some(line.source.name.to_string()),
            shaping: None,
            outcome: None,
            node: None,
            tls_policy: None,
        }
    }

    /// A connection fit for `job` (REQUIRETLS: a verified one), opened if
    /// there is none. A connection that cannot be had settles the job
    /// (the attempt's outcome), unless the source was at fault.
    async fn ensure_connection(
        &self,
        line: &Line,
        held: &mut Held<'_>,
        job: &Job,
        e: &Effective,
    ) -> Result<(), Ended> {
        let entry = &job.entry;
        let domain = entry.domain();
        let policy = self.sts_policy(domain).await;
        held.tls_policy = policy.as_ref().map(|p| p.describe());
        let sts = policy.clone().filter(|p| p.mode == mta_sts::Mode::Enforce);
        let require_tls = entry.require_tls
            || sts.is_some()
            || self
                .settings
                .delivery
                .require_tls_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain));
        // A connection opened for another domain of the site may not suit
        // this one: unverified, or to an MX its MTA-STS policy leaves out.
        if held.conn.as_ref().is_some_and(|c| {
            (require_tls && !c.verified_tls) || sts.as_ref().is_some_and(|p| !p.permits(&c.mx))
        }) && let Some(c) = held.conn.take()
        {
            c.quit().await;
        }
        // Under DNSSEC, another domain's connection that DANE did not
        // check is not trusted for this one: its MX records may ask more.
        if self.dane.is_some()
            && held
                .conn
                .as_ref()
                .is_some_and(|c| !c.dane && !held.counted_for.eq_ignore_ascii_case(domain))
            && let Some(c) = held.conn.take()
        {
            c.quit().await;
        }
        if let Some(c) = held.conn.as_ref() {
            if c.dane {
                held.tls_policy = Some(DANE.into());
            }
            // The session carries this domain's mail too: its report
            // counts it.
            if !held.counted_for.eq_ignore_ascii_case(domain) {
                self.count_tls_session(domain, &c.mx, policy.as_deref(), c.dane, Ok(c));
                held.counted_for = domain.to_string();
            }
            return Ok(());
        }
        if !held.slot {
            // The connection was closed (REQUIRETLS): its slot stays ours.
            held.slot = self
                .shaper
                .take_connection(&line.shape, &held.holder, e)
                .await
                .unwrap_or(false);
        }
        let started = Instant::now();
        let mut attempt = self.new_attempt(line);
        attempt.tls_policy = held.tls_policy.clone();
        match self
            .connect(line, domain, require_tls, policy.as_deref())
            .await
        {
            Ok(c) => {
                if c.dane {
                    held.tls_policy = Some(DANE.into());
                }
                held.conn = Some(c);
                held.sent = 0;
                held.counted_for = domain.to_string();
                Ok(())
            }
            Err(f) if f.source_broken => {
                held.drop_slot().await;
                tracing::warn!(target: "kiln::shaping", source = %line.source.name, error = %f.text, "source unusable; its mail goes to the pool's other sources");
                Err(Ended::SourceBroken)
            }
            Err(f) => {
                held.drop_slot().await;
                attempt.message = f.text;
                attempt.enhanced_code = f.enhanced;
                attempt.duration_ms = started.elapsed().as_millis() as u64;
                let signal = match &f.reply {
                    Some(r) => {
                        attempt.code = Some(r.code);
                        self.signal_for(&line.shape, r, "connect").await
                    }
                    None => None,
                };
                self.settle(
                    entry,
                    f.verdict,
                    attempt,
                    signal.as_ref(),
                    Some(line.shape.label.as_str()),
                )
                .await;
                Err(Ended::Settled)
            }
        }
    }

    /// The message of `job`, or None when it cannot be read (the job is
    /// settled: retried, or bounced when the body is gone).
    async fn load_body(&self, line: &Line, job: &Job) -> Option<std::sync::Arc<[u8]>> {
        let mut attempt = self.new_attempt(line);
        let (verdict, message) = match self.queue.body(&job.entry.msg_id).await {
            Ok(Some(b)) => return Some(b),
            Ok(None) => (
                Verdict::Permanent,
                "message body missing from the store".to_string(),
            ),
            Err(err) => (Verdict::Temporary, format!("store: {err}")),
        };
        attempt.message = message;
        self.settle(
            &job.entry,
            verdict,
            attempt,
            None,
            Some(line.shape.label.as_str()),
        )
        .await;
        None
    }

    /// One attempt of `job` over the held connection.
    async fn attempt(
        &self,
        line: &Line,
        held: &mut Held<'_>,
        job: &Job,
        e: &Effective,
        (body, return_path): (&[u8], &str),
        permit: Option<SendPermit<'_>>,
    ) {
        let entry = &job.entry;
        let started = Instant::now();
        let mut attempt = self.new_attempt(line);
        let Some(c) = held.conn.as_mut() else {
            return;
        };
        attempt.mx = Some(c.mx.clone());
        attempt.ip = Some(c.ip.to_string());
        attempt.tls = c.tls_version.clone();
        attempt.tls_policy = held.tls_policy.clone();
        let (verdict, signal) = match c
            .send(
                return_path,
                &entry.recipient,
                body,
                entry.require_tls,
                || drop(permit),
            )
            .await
        {
            Ok((reply, stage)) => {
                attempt.code = Some(reply.code);
                attempt.enhanced_code = reply.enhanced.clone();
                attempt.message = reply.text.clone();
                let signal = if stage == LOCAL {
                    None
                } else {
                    self.signal_for(&line.shape, &reply, stage).await
                };
                (verdict_for(&reply), signal)
            }
            Err(err) => {
                held.drop_slot().await;
                attempt.message = format!("connection lost: {err}");
                (Verdict::Temporary, None)
            }
        };
        attempt.duration_ms = started.elapsed().as_millis() as u64;
        held.sent += 1;
        // A connection that could not carry a REQUIRETLS message is
        // closed, so the retry asks a fresh session what it offers; one
        // that sent its share, or whose pair was just throttled, too.
        let unfit = attempt.enhanced_code.as_deref() == Some("4.7.30");
        let closed = held.conn.as_ref().is_some_and(|c| c.closed);
        if closed {
            held.conn = None;
            held.drop_slot().await;
        } else if unfit || signal.is_some() || held.sent >= e.messages_per_connection {
            held.close().await;
        }
        self.settle(
            entry,
            verdict,
            attempt,
            signal.as_ref(),
            Some(line.shape.label.as_str()),
        )
        .await;
    }

    async fn signal_for(
        &self,
        shape: &Shape,
        reply: &Reply,
        stage: &'static str,
    ) -> Option<Signal> {
        self.throttling_signal(
            shape,
            reply.code,
            reply.enhanced.as_deref(),
            &reply.text,
            stage,
        )
        .await
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
