//! Egress: how mail leaves. A leased entry's domain is resolved to its MX
//! hosts (`route`), which name its provider or site (`plan`); a source is
//! chosen from the entry's pool; the entry joins the line of (site, source)
//! (`line`), whose workers (`worker`) keep connections open within the
//! limits of (provider, source) (`shaping`). What a reply means for the
//! recipient is the queue's to decide (`report`).
//!
//! A job holds one of `max_in_flight` attempt slots only while it is being
//! attempted, and a line holds a bounded number of jobs: what cannot go
//! soon goes back to the queue, due when it can. So a destination that is
//! slow, a tarpit or suspended never holds up the others, and mail that
//! must wait waits in the queue, not in memory.

pub mod client;
mod connect;
pub mod dane;
pub mod line;
pub mod mta_sts;
pub mod plan;
mod report;
mod return_path;
pub mod route;
pub mod shaping;
pub mod tls_report;
pub mod tls_report_send;
mod warmup;
mod worker;

use crate::config::Settings;
use crate::dns::RouteError;
use crate::policy::decisions::Limits;
use crate::queue::QueueHandle;
use crate::queue::outcome::Verdict;
use crate::queued::{Attempt, QueueEntry};
use crate::tls::ClientConfigs;
use line::{Job, Line, LineState};
use plan::{Plan, Source};
use route::Routes;
use shaping::Shaper;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// (site, source name).
type LineKey = (Arc<str>, Arc<str>);

pub struct Delivery {
    settings: Arc<Settings>,
    queue: QueueHandle,
    /// Shaping's and warm-up's counters, shared by the nodes.
    store: crate::store::Store,
    policy: Arc<crate::policy::Policy>,
    /// Return paths for account mail (bounces come back to Kiln).
    verp: Option<Arc<crate::verp::Verp>>,
    routes: Routes,
    /// Entries waiting for their domain to be resolved, by domain.
    resolving: Mutex<HashMap<String, Vec<Job>>>,
    plan: RwLock<Arc<Plan>>,
    plan_refreshing: AtomicBool,
    shaper: Shaper,
    tls: ClientConfigs,
    /// Receiving domains' MTA-STS policies (`delivery.mta_sts`).
    mta_sts: Option<mta_sts::MtaSts>,
    /// DANE's lookups, with `dns.dnssec = "resolver"`.
    dane: Option<dane::SecureDns>,
    lines: Mutex<HashMap<LineKey, Arc<Line>>>,
    /// Sources that could not connect, left out until the time given (ms).
    broken_sources: Mutex<HashMap<Arc<str>, i64>>,
    /// Warm-up sources' daily caps per provider.
    warmup: warmup::Warmup,
    /// Sender domains' own return-path domains.
    return_paths: return_path::ReturnPaths,
    /// Attempts running on this node (`max_in_flight`).
    attempts: Arc<Semaphore>,
    /// Names this node's connection slots in a cluster.
    node: String,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// The limits of `[delivery]`: where the plan gives none.
fn configured_limits(settings: &Settings) -> Limits {
    Limits {
        connections: Some(settings.delivery.max_connections_per_destination as u32),
        messages_per_connection: Some(settings.delivery.max_messages_per_connection as u32),
        ..Limits::default()
    }
}

/// What the operator's rules make of a job.
enum Ruling {
    Go(Job),
    /// Suspended: back to the queue, parked.
    Back(QueueEntry),
    /// Bounced by the operator (the queue records it).
    Taken,
}

/// Entries sent back until one time are spread over this long.
const PARK_SPREAD_MS: i64 = 1000;

impl Delivery {
    /// Egress with the policy's plan (`egress_plan`); a plan that does not
    /// make sense stops the start, naming what is wrong.
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        settings: Arc<Settings>,
        queue: QueueHandle,
        store: crate::store::Store,
        policy: Arc<crate::policy::Policy>,
        verp: Option<Arc<crate::verp::Verp>>,
        resolver: crate::dns::MxResolver,
        tls: ClientConfigs,
        shutdown: CancellationToken,
    ) -> Result<Arc<Delivery>, plan::PlanError> {
        let plan = read_plan(&settings, &policy).await?;
        let mta_sts = if settings.delivery.mta_sts {
            match mta_sts::MtaSts::new(
                Arc::new(resolver.clone()),
                tls.verified.clone(),
                store.clone(),
                &crate::outbound_http::Destinations::new(&settings.delivery.https_allow_networks),
            ) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(error = %e, "MTA-STS cannot fetch policies; delivering without it");
                    None
                }
            }
        } else {
            None
        };
        let dane = (settings.dns.dnssec == crate::config::Dnssec::Resolver)
            .then(|| dane::SecureDns::new(&settings.dns.nameservers, settings.dns.timeout));
        Ok(Arc::new(Delivery {
            mta_sts,
            dane,
            shaper: Shaper::new(store.clone()),
            queue,
            store,
            policy,
            verp,
            routes: Routes::new(resolver),
            resolving: Mutex::new(HashMap::new()),
            plan: RwLock::new(Arc::new(plan)),
            plan_refreshing: AtomicBool::new(false),
            tls,
            lines: Mutex::new(HashMap::new()),
            broken_sources: Mutex::new(HashMap::new()),
            warmup: warmup::Warmup::default(),
            return_paths: Default::default(),
            attempts: Arc::new(Semaphore::new(settings.delivery.max_in_flight)),
            node: uuid::Uuid::new_v4().simple().to_string(),
            settings,
            tracker: TaskTracker::new(),
            shutdown,
        }))
    }

    /// Queue entries this node holds at once, in lines or attempted.
    pub fn max_leased(&self) -> usize {
        self.settings.delivery.max_in_flight * 4
    }

    /// The plan in force. After a policy reload the new one is read in the
    /// background; one that does not make sense is logged and the old one
    /// stays.
    fn plan(self: &Arc<Self>) -> Arc<Plan> {
        let plan = self
            .plan
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        if plan.version != self.policy.version()
            && !self.plan_refreshing.swap(true, Ordering::AcqRel)
        {
            let this = self.clone();
            tokio::spawn(async move {
                let version = this.policy.version();
                let fresh = match read_plan(&this.settings, &this.policy).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "the reloaded policy's egress plan does not make sense; the previous plan stays");
                        let old = this.plan.read().map(|p| p.clone());
                        match old {
                            Ok(old) => Plan::keep(&old, version),
                            Err(_) => return,
                        }
                    }
                };
                if let Ok(mut p) = this.plan.write() {
                    *p = Arc::new(fresh);
                }
                this.plan_refreshing.store(false, Ordering::Release);
            });
        }
        plan
    }

    /// Jobs one line may hold, running or waiting: four per connection,
    /// or about a second's worth at the line's rate when that is more,
    /// never over half of what this node holds (a stalled destination
    /// keeps the four per connection).
    fn line_limit(&self, rate: f64, connections: usize) -> usize {
        (connections * 4).max((rate as usize).min(self.max_leased() / 2))
    }

    /// Leaves `source` out of every pool until `until_ms`.
    fn source_broken(&self, source: &Arc<str>, until_ms: i64) {
        self.broken_sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(source.clone(), until_ms);
    }

    /// Picks a source for `entry` from its pool, by weight, leaving out
    /// those that could not connect lately, warm-up sources over today's
    /// cap for the provider, and those whose mail goes elsewhere while
    /// they are suspended. None with the time one is back
    /// when all are out.
    fn choose_source(
        &self,
        plan: &Plan,
        entry: &QueueEntry,
        dest: &plan::Destination,
    ) -> Result<Arc<Source>, i64> {
        let provider = &dest.provider;
        if let Some(ip) = entry.source_ip {
            // A source the policy named by address for this message.
            return Ok(match plan.source_with_address(ip) {
                Some(s) => s.clone(),
                None => Arc::new(Source {
                    name: ip.to_string().into(),
                    address: Some(ip),
                    ehlo: self.settings.server.hostname.clone(),
                    warmup: false,
                }),
            });
        }
        let now = self.shaper.now_ms();
        let broken = self
            .broken_sources
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut usable: Vec<(&Arc<Source>, u32)> = Vec::new();
        let mut back_at = i64::MAX;
        for (source, weight) in plan.pool(&entry.pool) {
            if let Some(until) = self.queue.source_suspended_until(&source.name) {
                // Marked as the suspension's park time, so resuming finds it.
                back_at = back_at.min(until);
                continue;
            }
            if let Some(until) = broken.get(&source.name).filter(|u| **u > now) {
                back_at = back_at.min(*until);
                continue;
            }
            if source.warmup
                && let Some(until) = self.warmup.full_until(&source.name, provider, now)
            {
                back_at = back_at.min(until);
                continue;
            }
            let t = self
                .shaper
                .shape(
                    provider,
                    &source.name,
                    dest.limits,
                    dest.provider != dest.site,
                )
                .throttle_cached();
            if t.other_source && t.suspended(now) {
                back_at = back_at.min(t.suspended_until_ms);
            } else {
                usable.push((source, weight));
            }
        }
        let total: u32 = usable.iter().map(|(_, w)| *w).sum();
        if total == 0 {
            return Err(back_at);
        }
        let mut pick = rand::random_range(0..total);
        for (source, weight) in &usable {
            if pick < *weight {
                return Ok((*source).clone());
            }
            pick -= weight;
        }
        Err(back_at)
    }

    /// The job, if the operator's rules let it go on (`provider` and
    /// `source` as far as they are known): a held one comes back parked,
    /// a bounced one is the queue's to record.
    fn ruling(&self, job: Job, provider: Option<&str>, source: Option<&str>) -> Ruling {
        let Job { entry, _leased } = job;
        match self.queue.hold(entry, provider, source) {
            crate::queue::Hold::Go(entry) => Ruling::Go(Job { entry, _leased }),
            crate::queue::Hold::Parked(entry) => Ruling::Back(entry),
            crate::queue::Hold::Bounced => Ruling::Taken,
        }
    }

    /// Puts a job whose domain's MX hosts are known in its line, or sends
    /// it back (its `ready_at_ms` set to when it should be due).
    fn place(
        self: &Arc<Self>,
        job: Job,
        domain: &str,
        hosts: Arc<[crate::dns::MxHost]>,
    ) -> Option<QueueEntry> {
        let plan = self.plan();
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let dest = plan.destination(&names);
        let job = match self.ruling(job, Some(&dest.provider), None) {
            Ruling::Go(job) => job,
            Ruling::Back(entry) => return Some(entry),
            Ruling::Taken => return None,
        };
        let mut entry = job.entry;
        let source = match self.choose_source(&plan, &entry, &dest) {
            Ok(s) => s,
            Err(back_at) => {
                // Spread over a second, so they do not all come back at once.
                entry.ready_at_ms = if self.queue.is_park_time(back_at) {
                    back_at
                } else {
                    back_at + rand::random_range(0..PARK_SPREAD_MS)
                };
                return Some(entry);
            }
        };
        let shape = self.shaper.shape(
            &dest.provider,
            &source.name,
            dest.limits,
            dest.provider != dest.site,
        );
        let key = (dest.site.clone(), source.name.clone());
        let line = {
            let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            lines
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Line {
                        site: dest.site.clone(),
                        source: source.clone(),
                        shape: shape.clone(),
                        hosts: Mutex::new(hosts.clone()),
                        domain: Mutex::new(domain.to_string()),
                        state: Mutex::new(LineState::default()),
                        wake: Notify::new(),
                    })
                })
                .clone()
        };
        *line.hosts.lock().unwrap_or_else(|p| p.into_inner()) = hosts;
        let now = self.shaper.now_ms();
        let e = shaping::effective(&shape.limits(), &shape.throttle_cached(), now);
        let connections = e.connections as usize;
        let spawn = {
            let mut st = line.lock();
            let paced = e.message_interval_us.map(|i| 1e6 / i as f64);
            let rate = st.rate(connections, paced);
            if st.jobs.len() + st.taken >= self.line_limit(rate, connections) {
                entry.ready_at_ms = st.park_at(now, rate);
                return Some(entry);
            }
            st.jobs.push_back(Job {
                entry,
                _leased: job._leased,
            });
            if st.idle > 0 {
                line.wake.notify_one();
                false
            } else if st.workers < connections {
                st.workers += 1;
                true
            } else {
                false
            }
        };
        if spawn {
            let this = self.clone();
            self.tracker.spawn(async move { this.worker(line).await });
        }
        None
    }

    /// Resolves `domain` for the jobs waiting on it, then places them (or
    /// settles them, if the domain has no usable MX).
    async fn resolve_and_place(self: Arc<Self>, domain: String) {
        let route = self.routes.resolve(&domain).await;
        let jobs = self
            .resolving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&domain)
            .unwrap_or_default();
        self.place_all(jobs, &domain, route).await;
    }

    async fn place_all(self: &Arc<Self>, jobs: Vec<Job>, domain: &str, route: route::Route) {
        let mut back = Vec::new();
        match route {
            Ok(hosts) => {
                for job in jobs {
                    back.extend(self.place(job, domain, hosts.clone()));
                }
            }
            Err(e) => {
                for job in jobs {
                    self.unroutable(job, &e).await;
                }
            }
        }
        if !back.is_empty()
            && let Err(e) = self.queue.postpone(&back).await
        {
            // Their leases expire; another lease takes them then.
            tracing::error!(error = %e, "could not send entries back to the queue");
        }
    }

    /// An entry whose domain has no usable MX: bounced (it can never
    /// receive mail) or tried again later (DNS trouble).
    async fn unroutable(&self, job: Job, e: &RouteError) {
        let (verdict, text, enhanced) = match e {
            RouteError::Permanent { enhanced, text } => {
                (Verdict::Permanent, text.clone(), enhanced.to_string())
            }
            RouteError::Temporary(text) => (Verdict::Temporary, text.clone(), "4.4.3".into()),
        };
        let attempt = Attempt {
            at_ms: self.store.now_ms(),
            mx: None,
            ip: None,
            code: None,
            enhanced_code: Some(enhanced),
            message: text,
            tls: None,
            duration_ms: 0,
            source: None,
            shaping: None,
            outcome: None,
            node: None,
            tls_policy: None,
        };
        self.settle(&job.entry, verdict, attempt, None, None).await;
    }

    /// After shutdown: waits for running attempts, then gives queued but
    /// unstarted jobs back to the store.
    pub async fn drain(&self, grace: Duration) {
        let mut unstarted = Vec::new();
        {
            let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            for line in lines.values() {
                let mut st = line.lock();
                unstarted.extend(st.jobs.drain(..).map(|j| j.entry));
                line.wake.notify_waiters();
            }
            let mut resolving = self.resolving.lock().unwrap_or_else(|p| p.into_inner());
            for (_, jobs) in resolving.drain() {
                unstarted.extend(jobs.into_iter().map(|j| j.entry));
            }
        }
        if let Err(e) = self.queue.release(&unstarted).await {
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

    /// Every (provider, source) this node has sent to, its limits and what
    /// throttling signals did to it: the operator's view.
    pub async fn shaping_view(&self) -> Vec<serde_json::Value> {
        let now = self.shaper.now_ms();
        let mut out = Vec::new();
        for shape in self.shaper.shapes() {
            let t = self.shaper.throttle(&shape).await;
            let limits = shape.limits();
            let e = shaping::effective(&limits, &t, now);
            out.push(serde_json::json!({
                "provider": &*shape.provider,
                "source": &*shape.source,
                "limits": limits,
                "connections_now": e.connections,
                "factor": t.factor_at(now),
                "suspended_until_ms": (t.suspended(now)).then_some(t.suspended_until_ms),
                "other_source": t.other_source && t.suspended(now),
                "last_signal": t.last,
                "warmup_full_until_ms": self.warmup.full_until(&shape.source, &shape.provider, now),
            }));
        }
        out.sort_by(|a, b| {
            (a["provider"].as_str(), a["source"].as_str())
                .cmp(&(b["provider"].as_str(), b["source"].as_str()))
        });
        out
    }
}

impl crate::services::EgressView for Delivery {
    fn shaping(&self) -> futures::future::BoxFuture<'_, Vec<serde_json::Value>> {
        Box::pin(self.shaping_view())
    }

    fn provider_of<'a>(
        &'a self,
        domain: &'a str,
    ) -> futures::future::BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let hosts = match self.routes.cached(domain) {
                Some(route) => route.ok()?,
                None => self.routes.resolve(domain).await.ok()?,
            };
            let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
            let plan = self
                .plan
                .read()
                .map(|p| p.clone())
                .unwrap_or_else(|p| p.into_inner().clone());
            Some(plan.destination(&names).provider.to_string())
        })
    }

    fn set_gauges(&self) {
        let now = self.shaper.now_ms();
        let Some(m) = crate::metrics::get() else {
            return;
        };
        m.shaping_suspended.clear();
        m.shaping_factor.clear();
        for shape in self.shaper.shapes() {
            let t = shape.throttle_cached();
            let pair = crate::metrics::Pair {
                provider: shape.label.clone(),
                source: shape.source.to_string(),
            };
            // Sites share the `other` label: the strictest state shows.
            let suspended = m.shaping_suspended.get_or_create(&pair);
            suspended.set(suspended.get().max(i64::from(t.suspended(now))));
            let factor = m.shaping_factor.get_or_create(&pair);
            let f = t.factor_at(now);
            if factor.get() == 0.0 || f < factor.get() {
                factor.set(f);
            }
        }
        m.line_jobs.clear();
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        for line in lines.values() {
            let held = {
                let st = line.lock();
                st.jobs.len() + st.taken
            };
            m.line_jobs
                .get_or_create(&crate::metrics::Provider {
                    provider: line.shape.label.clone(),
                })
                .inc_by(held as i64);
        }
    }
}

async fn read_plan(
    settings: &Settings,
    policy: &crate::policy::Policy,
) -> Result<Plan, plan::PlanError> {
    let version = policy.version();
    let answer = match policy
        .call(crate::policy::hooks::EgressPlan, &serde_json::json!({}))
        .await
    {
        Ok(a) => a,
        Err(e) => return Err(plan::PlanError::Hook(e.to_string())),
    };
    Plan::compile(
        answer,
        configured_limits(settings),
        settings.delivery.source_address,
        &settings.server.hostname,
        version,
    )
}

impl crate::queue::manager::Dispatch for Delivery {
    /// Puts a leased entry in its line. An entry that cannot go soon
    /// comes back, its `ready_at_ms` set to when it should be tried: the
    /// caller parks it in the queue. An entry whose domain is not resolved
    /// yet waits for that here, and is placed (or sent back) after.
    fn dispatch(
        self: Arc<Self>,
        entry: QueueEntry,
        leased: OwnedSemaphorePermit,
    ) -> Option<QueueEntry> {
        let domain = entry.domain().to_ascii_lowercase();
        let job = Job {
            entry,
            _leased: leased,
        };
        match self.routes.cached(&domain) {
            Some(Ok(hosts)) => self.place(job, &domain, hosts),
            Some(Err(e)) => {
                let this = self.clone();
                self.tracker
                    .spawn(async move { this.unroutable(job, &e).await });
                None
            }
            None => {
                let first = {
                    let mut resolving = self.resolving.lock().unwrap_or_else(|p| p.into_inner());
                    let waiting = resolving.entry(domain.clone()).or_default();
                    waiting.push(job);
                    waiting.len() == 1
                };
                if first {
                    let this = self.clone();
                    self.tracker
                        .spawn(async move { this.resolve_and_place(domain).await });
                }
                None
            }
        }
    }
}
