//! Node lifecycle: `start` opens the store and starts every task on the
//! listeners it is given, with the clock it is given (a test runs nodes in
//! its own process this way); `Node::stop` drains; `run` is the daemon
//! around them (binds, tells systemd, SIGHUP reloads, SIGTERM drains).

use crate::clock::Clock;
use crate::config::{Settings, StoreBackend};
use crate::dns::MxResolver;
use crate::egress::Delivery;
use crate::intake::smtp::{self, Listener};
use crate::queue::{QueueHandle, manager::Manager};
use crate::services::Services;
use crate::ses::config_accounts::Accounts;
use crate::ses::dkim::DkimSigners;
use crate::store::{Store, embedded::EmbeddedStore, redis::RedisStore};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const BODY_CACHE_BYTES: usize = 256 * 1024 * 1024;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Redis unreachable at start is tried again after 1, 2, 4 ... seconds, at
/// most this far apart.
const REDIS_WAIT_AT_MOST: Duration = Duration::from_secs(8);

pub async fn open_store(settings: &Settings, clock: Clock) -> anyhow::Result<Store> {
    Ok(match settings.store.backend {
        StoreBackend::Embedded => {
            let path = settings.store_path();
            let store = EmbeddedStore::open(&path, settings.queue.status_retention, clock)
                .with_context(|| format!("opening embedded store {}", path.display()))?;
            store.set_min_free(settings.store.min_free_mb << 20);
            Store::Embedded(store)
        }
        StoreBackend::Redis => {
            // Redis down at start: wait for it (systemd hears nothing of
            // "ready" until then), rather than exit and be restarted.
            let target = settings.store.redis_target();
            let url = target.describe();
            let mut wait = Duration::from_secs(1);
            loop {
                match RedisStore::connect_to(
                    &target,
                    &settings.store.redis_prefix,
                    settings.store.redis_queue_shards,
                    Duration::from_millis(settings.store.redis_failover_timeout_ms),
                    settings.queue.status_retention,
                    clock.clone(),
                )
                .await
                {
                    Ok(s) => {
                        s.set_wait_replicas(
                            settings.store.redis_wait_replicas,
                            Duration::from_millis(settings.store.redis_wait_timeout_ms),
                        );
                        break Store::Redis(s);
                    }
                    Err(e) if e.is_unreachable() => {
                        tracing::warn!(redis = %url, error = %e, retry_in_s = wait.as_secs(), "Redis cannot be reached; not serving until it answers");
                        let _ = sd_notify::notify(
                            false,
                            &[sd_notify::NotifyState::Status(&format!(
                                "waiting for Redis at {url}: {e}"
                            ))],
                        );
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(REDIS_WAIT_AT_MOST);
                    }
                    Err(e) => return Err(e).with_context(|| format!("connecting to {url}")),
                }
            }
        }
    })
}

/// What a node listens on, bound before it starts: the daemon binds what
/// the settings name, a test binds port 0 and reads the ports.
pub struct Listeners {
    pub smtp: Vec<Listener>,
    pub http: tokio::net::TcpListener,
}

impl Listeners {
    /// Binds every listener the settings name.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Listeners> {
        let mut smtp = Vec::new();
        for l in &settings.smtp.listeners {
            let listener = Listener::bind(l)
                .await
                .with_context(|| format!("binding SMTP listener {}", l.address))?;
            smtp.push(listener);
        }
        let http = tokio::net::TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| format!("binding HTTP listener {}", settings.http.listen))?;
        Ok(Listeners { smtp, http })
    }
}

/// Where a node listens: on listeners bound beforehand (a test binds port
/// 0 and reads the ports), or where the settings say, bound once the node
/// is ready to serve (so a port that answers means a node that is up).
pub enum Listen {
    On(Listeners),
    AsConfigured,
}

/// A running node: every task started, serving its listeners.
pub struct Node {
    pub ctx: Arc<Services>,
    shutdown: CancellationToken,
    delivery_stop: CancellationToken,
    outcomes_stop: CancellationToken,
    callbacks_stop: CancellationToken,
    sessions: TaskTracker,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
    manager_task: tokio::task::JoinHandle<()>,
    tasks_task: tokio::task::JoinHandle<()>,
    /// The daily TLS reports (RFC 8460).
    reports_task: tokio::task::JoinHandle<()>,
    /// The node's heartbeats (`kiln cluster status`), stopped apart: a node
    /// that is aborted leaves its last one to expire.
    heartbeat_stop: CancellationToken,
    heartbeat_task: tokio::task::JoinHandle<()>,
    outcomes_task: tokio::task::JoinHandle<()>,
    stats_task: tokio::task::JoinHandle<()>,
    sending_task: tokio::task::JoinHandle<()>,
    http_task: tokio::task::JoinHandle<()>,
    delivery: Arc<Delivery>,
}

/// The daemon: starts a node where the settings say, tells systemd it is
/// ready; SIGHUP reloads, SIGTERM (or SIGINT) drains and stops.
pub async fn run(settings: Settings, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let clock = if settings.server.test_clock {
        Clock::test()
    } else {
        Clock::system()
    };
    // The operator token exists before anyone can connect: a command run
    // as soon as the ports answer finds it.
    crate::data_dir::prepare(&settings.server.data_dir).with_context(|| {
        format!(
            "preparing the data directory {}",
            settings.server.data_dir.display()
        )
    })?;
    crate::ses::operators::ensure_token(&settings.server.data_dir)
        .context("making the admin token in the data directory")?;
    let node = start(settings, config_path.clone(), Listen::AsConfigured, clock).await?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = node.ctx.reload().await;
            }
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    node.stop().await;
    Ok(())
}

/// Starts a node with `clock` as its time: opens the store, loads the
/// policy, starts the queue manager, delivery, callbacks and the batch-task
/// runner, and serves SMTP and HTTP where `listen` says.
pub async fn start(
    settings: Settings,
    config_path: Option<PathBuf>,
    listen: Listen,
    clock: Clock,
) -> anyhow::Result<Node> {
    let settings = Arc::new(settings);
    crate::metrics::set_enabled(settings.http.metrics);
    crate::data_dir::prepare(&settings.server.data_dir).with_context(|| {
        format!(
            "preparing the data directory {}",
            settings.server.data_dir.display()
        )
    })?;
    let store = open_store(&settings, clock).await?;
    let shutdown = CancellationToken::new();
    let signers = Arc::new(DkimSigners::new(
        store.clone(),
        settings.dkim.sign_headers.clone(),
    ));
    let policy = load_policy(&settings, &store)?;
    let resolver = MxResolver::new(&settings.dns.nameservers, settings.dns.timeout)?;
    let client_tls = crate::tls::client_configs(settings.delivery.tls_ca_file.as_deref())?;
    let delivery_stop = CancellationToken::new();
    let outcomes = crate::policy::outcome_feed::OutcomeFeed::new(policy.clone());
    let outcomes_stop = CancellationToken::new();
    let outcomes_task = tokio::spawn(outcomes.clone().run(outcomes_stop.clone()));
    let time_zone = jiff::tz::TimeZone::get(&settings.policy.time_zone)
        .map_err(|e| anyhow::anyhow!("policy.time_zone: {e}"))?;
    let stats = crate::ses::stats::DailyStats::new(store.clone(), time_zone.clone());
    let stats_task = tokio::spawn(stats.clone().run(outcomes_stop.clone()));

    let (tracker, verp) = signed_addresses(&settings, &store).await?;
    let ses = records(&settings, &store, &policy, time_zone)?;
    let callbacks = crate::feedback::callbacks::Callbacks::new(
        ses.clone(),
        policy.clone(),
        settings.callbacks.clone(),
        settings.queue.status_retention,
    );
    let events = crate::feedback::events::Events::new(
        callbacks.clone(),
        store.clone(),
        settings.queue.status_retention,
    );
    let queue = QueueHandle::new(
        store.clone(),
        BODY_CACHE_BYTES,
        &settings.queue,
        policy.clone(),
        Arc::new(crate::feedback::listener::OutcomeListener {
            events: events.clone(),
            stats: stats.clone(),
            outcomes: outcomes.clone(),
        }),
        settings.node_id(),
    );
    let tls_reports = match crate::egress::tls_report_send::TlsReportSender::new(
        Arc::new(resolver.clone()),
        &client_tls.verified,
        crate::outbound_http::Destinations::new(&settings.delivery.https_allow_networks),
    ) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            tracing::error!(error = %e, "TLS reports cannot be posted; none will be sent");
            None
        }
    };
    let delivery = Delivery::new(
        settings.clone(),
        queue.clone(),
        store.clone(),
        policy.clone(),
        verp.clone(),
        resolver,
        client_tls,
        delivery_stop.clone(),
    )
    .await?;
    let ctx = Arc::new(Services {
        settings: settings.clone(),
        accounts: RwLock::new(Arc::new(Accounts::from_settings(&settings.accounts))),
        tls: RwLock::new(Some(crate::tls::smtp_acceptor(&settings)?)),
        http_tls: RwLock::new(crate::tls::http_acceptor(&settings)?),
        store: store.clone(),
        signers: signers.clone(),
        queue: queue.clone(),
        policy: policy.clone(),
        outcomes: outcomes.clone(),
        stats: stats.clone(),
        tracker,
        verp,
        feedback: Arc::new(events.clone()),
        ses: ses.clone(),
        config_path: config_path.clone(),
        tracking_limiter: Default::default(),
        egress: delivery.clone(),
        admin_tokens: operator_tokens(&settings, &store).await?,
        tls_reports: tls_reports
            .clone()
            .map(|s| s as Arc<dyn crate::services::TlsReportsView>),
    });
    let callbacks_stop = CancellationToken::new();
    let sending_task = tokio::spawn(callbacks.clone().send_due(callbacks_stop.clone()));

    let (sessions, accept_tasks, http_task) = serve(&ctx, listen, &shutdown).await?;
    let manager_task = start_queue(&settings, &queue, &delivery, &delivery_stop).await;
    let tasks_task = tokio::spawn(crate::intake::batch::run(
        ctx.clone(),
        delivery_stop.clone(),
    ));
    let reports_task = tokio::spawn({
        let (ctx, stop) = (ctx.clone(), delivery_stop.clone());
        async move {
            if let Some(sender) = tls_reports.filter(|_| ctx.settings.delivery.tls_reports) {
                sender.run(ctx, stop).await;
            }
        }
    });
    let heartbeat_stop = CancellationToken::new();
    let heartbeat_task = tokio::spawn(crate::ops::cluster::heartbeats(
        ctx.clone(),
        heartbeat_stop.clone(),
    ));

    Ok(Node {
        ctx,
        shutdown,
        delivery_stop,
        outcomes_stop,
        callbacks_stop,
        sessions,
        accept_tasks,
        manager_task,
        tasks_task,
        reports_task,
        heartbeat_stop,
        heartbeat_task,
        outcomes_task,
        stats_task,
        sending_task,
        http_task,
        delivery,
    })
}

/// Serves SMTP and HTTP on `listen` until `shutdown`: the SMTP sessions'
/// tracker, the accept tasks and the HTTP task.
async fn serve(
    ctx: &Arc<Services>,
    listen: Listen,
    shutdown: &CancellationToken,
) -> anyhow::Result<(
    TaskTracker,
    Vec<tokio::task::JoinHandle<()>>,
    tokio::task::JoinHandle<()>,
)> {
    let settings = &ctx.settings;
    let store = &ctx.store;
    let listeners = match listen {
        Listen::On(l) => l,
        Listen::AsConfigured => Listeners::bind(settings).await?,
    };
    for l in &listeners.smtp {
        tracing::info!(address = %l.local_addr()?, tls = ?l.settings.tls, "SMTP listening");
    }
    let http = listeners.http;
    tracing::info!(address = %http.local_addr()?, "HTTP listening");
    tracing::info!(
        store = store.backend_name(),
        node = %settings.node_id(),
        queued = store.queue_len().await.unwrap_or(0),
        "kiln started"
    );

    let sessions = TaskTracker::new();
    let connections = crate::net::ConnectionLimits::new(
        settings.smtp.max_connections,
        settings.smtp.max_connections_per_ip,
    );
    let mut accept_tasks = Vec::new();
    for listener in listeners.smtp {
        accept_tasks.push(tokio::spawn(smtp::serve(
            ctx.clone(),
            listener,
            shutdown.clone(),
            sessions.clone(),
            connections.clone(),
        )));
    }
    let http_stop = shutdown.clone();
    let http_services = ctx.clone();
    let http_limits = crate::http_serve::HttpLimits {
        max_connections: settings.http.max_connections,
        max_connections_per_ip: settings.http.max_connections_per_ip,
        header_timeout: settings.http.header_timeout,
    };
    let http_task = tokio::spawn(async move {
        let tls_source = http_services.clone();
        let tls: crate::http_serve::TlsSource = Arc::new(move || tls_source.http_tls());
        let app = crate::http::router(http_services);
        crate::http_serve::serve(http, app, http_limits, tls, http_stop).await;
    });
    Ok((sessions, accept_tasks, http_task))
}

/// Tracking links and VERP return paths, both signed with the
/// installation's secret (None when not configured).
async fn signed_addresses(
    settings: &Settings,
    store: &Store,
) -> anyhow::Result<(
    Option<Arc<crate::rewrite::tracking::Tracker>>,
    Option<Arc<crate::verp::Verp>>,
)> {
    let secret = signing_secret(settings, store).await?;
    let tracker = tracker(settings, &secret);
    let verp = (!settings.platform.bounce_domain.is_empty()).then(|| {
        Arc::new(crate::verp::Verp::new(
            &secret,
            &settings.platform.bounce_domain,
            &settings.platform.return_path_label,
        ))
    });
    Ok((tracker, verp))
}

/// This node's operator token, filed for the nodes on `store`.
async fn operator_tokens(
    settings: &Settings,
    store: &Store,
) -> anyhow::Result<Arc<crate::ses::operators::OperatorTokens>> {
    let token = crate::ses::operators::ensure_token(&settings.server.data_dir)
        .context("making the admin token in the data directory")?;
    let tokens = crate::ses::operators::OperatorTokens::new(token, store.clone())
        .await
        .context("filing the operator token in the store")?;
    Ok(Arc::new(tokens))
}

/// Starts the queue: the operator's rules read (in force before the first
/// lease: a suspension survives a restart) and kept fresh, then the
/// manager handing work to `delivery`.
async fn start_queue(
    settings: &Settings,
    queue: &QueueHandle,
    delivery: &Arc<Delivery>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    if let Err(e) = queue.controls().refresh().await {
        tracing::warn!(error = %e, "queue controls could not be read; reading them again every second");
    }
    tokio::spawn(queue.controls().clone().run(stop.clone()));
    let manager = Manager {
        queue: queue.clone(),
        delivery: delivery.clone(),
        max_leased: delivery.max_leased(),
        lease_time: settings.queue.lease_time,
        poll: match settings.store.backend {
            StoreBackend::Embedded => Duration::from_secs(1),
            StoreBackend::Redis => Duration::from_millis(200),
        },
    };
    tokio::spawn(manager.run(stop.clone()))
}

/// The SES records, on `store`.
fn records(
    settings: &Arc<Settings>,
    store: &Store,
    policy: &Arc<crate::policy::Policy>,
    time_zone: jiff::tz::TimeZone,
) -> anyhow::Result<crate::ses::Records> {
    Ok(crate::ses::Records {
        store: store.clone(),
        settings: settings.clone(),
        // Uncached: a record just published must be seen at once.
        resolver: Arc::new(MxResolver::new_uncached(
            &settings.dns.nameservers,
            settings.dns.timeout,
        )?),
        policy: policy.clone(),
        time_zone,
        uploads: Default::default(),
    })
}

/// The policy scripts, loaded and checked.
fn load_policy(settings: &Settings, store: &Store) -> anyhow::Result<Arc<crate::policy::Policy>> {
    let policy_settings = settings
        .policy
        .to_settings()
        .map_err(|e| anyhow::anyhow!(e))?;
    let policy = Arc::new(
        crate::policy::Policy::load(policy_settings, store.clone())
            .context("loading the policy scripts")?,
    );
    tracing::info!(
        script = %settings.policy.script.display(),
        script_found = settings.policy.script.exists(),
        plugins = %settings.policy.plugins_dir.display(),
        plugins_found = settings.policy.plugins_dir.is_dir(),
        "policy loaded (a missing script or plugin file means the built-in defaults)"
    );
    Ok(policy)
}

impl Node {
    /// Stops accepting, lets sessions finish (within a grace period),
    /// finishes running attempts and gives the rest back to the queue,
    /// sends what is due, and closes the store.
    pub async fn stop(self) {
        tracing::info!("shutting down: no new connections");
        self.shutdown.cancel();
        for t in self.accept_tasks {
            let _ = t.await;
        }
        self.sessions.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("SMTP sessions still open after the grace period");
        }
        self.delivery_stop.cancel();
        let _ = self.manager_task.await;
        let _ = self.tasks_task.await;
        let _ = self.reports_task.await;
        self.heartbeat_stop.cancel();
        let _ = self.heartbeat_task.await;
        self.delivery.drain(SHUTDOWN_GRACE).await;
        self.ctx.queue.drain().await;
        // The last outcomes reach the reputation counters before the store closes.
        self.outcomes_stop.cancel();
        let _ = self.outcomes_task.await;
        let _ = self.stats_task.await;
        self.callbacks_stop.cancel();
        let _ = self.sending_task.await;
        let _ = self.http_task.await;
        match &self.ctx.store {
            Store::Embedded(s) => s.close(),
            Store::Redis(s) => s.close().await,
        }
        tracing::info!("stopped");
    }

    /// Stops at once, as `kill -9` would: every task aborted, nothing
    /// given back or flushed (leases expire; other nodes take over).
    pub fn abort(self) {
        self.shutdown.cancel();
        self.delivery_stop.cancel();
        for t in self.accept_tasks {
            t.abort();
        }
        for t in [
            self.manager_task,
            self.tasks_task,
            self.reports_task,
            self.heartbeat_task,
            self.outcomes_task,
            self.stats_task,
            self.sending_task,
            self.http_task,
        ] {
            t.abort();
        }
    }
}

/// The secret that signs tracking URLs and return paths: the configured
/// one, or one kept in the store (made once, shared by a cluster's nodes).
async fn signing_secret(settings: &Settings, store: &Store) -> anyhow::Result<Vec<u8>> {
    if !settings.tracking.secret.is_empty() {
        return Ok(settings.tracking.secret.as_bytes().to_vec());
    }
    let key = "tracking:secret";
    store
        .put_if_absent(key, crate::ses::random_token(48).as_bytes())
        .await?;
    store
        .get(key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("signing secret vanished from the store"))
}

fn tracker(settings: &Settings, secret: &[u8]) -> Option<Arc<crate::rewrite::tracking::Tracker>> {
    let t = &settings.tracking;
    if !t.enabled {
        return None;
    }
    let base = if t.base_url.is_empty() {
        format!("http://{}", settings.server.hostname)
    } else {
        t.base_url.clone()
    };
    Some(Arc::new(crate::rewrite::tracking::Tracker::new(
        secret,
        &base,
        t.hosts.clone(),
    )))
}
