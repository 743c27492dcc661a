//! Daemon lifecycle: open the store, bind listeners, start the queue
//! manager, tell systemd we are ready; SIGHUP reloads, SIGTERM drains.

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
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const BODY_CACHE_BYTES: usize = 256 * 1024 * 1024;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    Ok(match settings.store.backend {
        StoreBackend::Embedded => {
            let path = settings.store_path();
            Store::Embedded(
                EmbeddedStore::open(&path, settings.queue.status_retention)
                    .with_context(|| format!("opening embedded store {}", path.display()))?,
            )
        }
        StoreBackend::Redis => Store::Redis(
            RedisStore::connect(
                &settings.store.redis_url,
                &settings.store.redis_prefix,
                settings.queue.status_retention,
            )
            .await
            .with_context(|| format!("connecting to {}", settings.store.redis_url))?,
        ),
    })
}

fn tls_acceptor(settings: &Settings) -> anyhow::Result<TlsAcceptor> {
    let config = crate::tls::server_config(
        settings.smtp.tls_cert.as_deref(),
        settings.smtp.tls_key.as_deref(),
        &settings.server.data_dir,
        &settings.server.hostname,
    )
    .context("loading the SMTP TLS certificate")?;
    Ok(TlsAcceptor::from(config))
}

pub async fn run(settings: Settings, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    std::fs::create_dir_all(&settings.server.data_dir).with_context(|| {
        format!(
            "creating data directory {}",
            settings.server.data_dir.display()
        )
    })?;
    let store = open_store(&settings).await?;
    let shutdown = CancellationToken::new();
    let queue = QueueHandle::new(store.clone(), BODY_CACHE_BYTES);
    let signers = Arc::new(DkimSigners::new(
        store.clone(),
        settings.dkim.sign_headers.clone(),
    ));
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
    let resolver = MxResolver::new(&settings.dns.nameservers, settings.dns.timeout)?;
    let client_tls = crate::tls::client_configs(settings.delivery.tls_ca_file.as_deref())?;
    let delivery_stop = CancellationToken::new();
    let outcomes = crate::feedback::outcomes::OutcomeFeed::new(policy.clone());
    let outcomes_stop = CancellationToken::new();
    let outcomes_task = tokio::spawn(outcomes.clone().run(outcomes_stop.clone()));
    let time_zone = jiff::tz::TimeZone::get(&settings.policy.time_zone)
        .map_err(|e| anyhow::anyhow!("policy.time_zone: {e}"))?;
    let stats = crate::feedback::stats::DailyStats::new(store.clone(), time_zone.clone());
    let stats_task = tokio::spawn(stats.clone().run(outcomes_stop.clone()));

    let secret = signing_secret(&settings, &store).await?;
    let tracker = tracker(&settings, &secret);
    let verp = (!settings.platform.bounce_domain.is_empty()).then(|| {
        Arc::new(crate::feedback::verp::Verp::new(
            &secret,
            &settings.platform.bounce_domain,
        ))
    });
    let ses = crate::ses::Records {
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
    };
    let callbacks = crate::feedback::callbacks::Callbacks::new(
        ses.clone(),
        policy.clone(),
        settings.callbacks.clone(),
    );
    let events = crate::feedback::events::Events::new(callbacks.clone());
    let delivery = Delivery::new(
        settings.clone(),
        queue.clone(),
        policy.clone(),
        crate::egress::Feedback {
            outcomes: outcomes.clone(),
            stats: stats.clone(),
            events: events.clone(),
            verp: verp.clone(),
        },
        resolver,
        client_tls,
        delivery_stop.clone(),
    );
    let ctx = Arc::new(Services {
        settings: settings.clone(),
        accounts: RwLock::new(Arc::new(Accounts::from_settings(&settings.accounts))),
        tls: RwLock::new(Some(tls_acceptor(&settings)?)),
        store: store.clone(),
        signers: signers.clone(),
        queue: queue.clone(),
        policy: policy.clone(),
        outcomes: outcomes.clone(),
        stats: stats.clone(),
        tracker,
        verp,
        events: events.clone(),
        callbacks: callbacks.clone(),
        ses: ses.clone(),
        config_path: config_path.clone(),
        tracking_limiter: Default::default(),
        admin_token: Arc::from(
            crate::ops::admin_auth::ensure_token(&settings.server.data_dir)
                .context("making the admin token in the data directory")?,
        ),
    });
    let callbacks_stop = CancellationToken::new();
    let sending_task = tokio::spawn(callbacks.clone().send_due(callbacks_stop.clone()));

    let mut listeners = Vec::new();
    for l in &settings.smtp.listeners {
        let listener = Listener::bind(l)
            .await
            .with_context(|| format!("binding SMTP listener {}", l.address))?;
        tracing::info!(address = %listener.local_addr()?, tls = ?l.tls, "SMTP listening");
        listeners.push(listener);
    }
    let http = tokio::net::TcpListener::bind(settings.http.listen)
        .await
        .with_context(|| format!("binding HTTP listener {}", settings.http.listen))?;
    tracing::info!(address = %http.local_addr()?, "HTTP listening");
    tracing::info!(
        store = store.backend_name(),
        node = %settings.node_id(),
        queued = store.queue_len().await.unwrap_or(0),
        "kiln started"
    );

    let sessions = TaskTracker::new();
    let connections = smtp::ConnectionLimits::new(
        settings.smtp.max_connections,
        settings.smtp.max_connections_per_ip,
    );
    let mut accept_tasks = Vec::new();
    for listener in listeners {
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
    let http_task = tokio::spawn(async move {
        let app = crate::http::router(http_services)
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(http, app)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
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
    let manager_task = tokio::spawn(manager.run(delivery_stop.clone()));
    let tasks_task = tokio::spawn(crate::intake::batch::run(
        ctx.clone(),
        delivery_stop.clone(),
    ));

    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = reload(&ctx, config_path.as_deref()).await;
            }
        }
    }

    tracing::info!("shutting down: no new connections");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    for t in accept_tasks {
        let _ = t.await;
    }
    sessions.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("SMTP sessions still open after the grace period");
    }
    delivery_stop.cancel();
    let _ = manager_task.await;
    let _ = tasks_task.await;
    delivery.drain(SHUTDOWN_GRACE).await;
    // The last outcomes reach the reputation counters before the store closes.
    outcomes_stop.cancel();
    let _ = outcomes_task.await;
    let _ = stats_task.await;
    callbacks_stop.cancel();
    let _ = sending_task.await;
    let _ = http_task.await;
    match &store {
        Store::Embedded(s) => s.close(),
        Store::Redis(s) => s.close().await,
    }
    tracing::info!("stopped");
    Ok(())
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

fn tracker(
    settings: &Settings,
    secret: &[u8],
) -> Option<Arc<crate::feedback::rewrite::tracking::Tracker>> {
    let t = &settings.tracking;
    if !t.enabled {
        return None;
    }
    let base = if t.base_url.is_empty() {
        format!("http://{}", settings.server.hostname)
    } else {
        t.base_url.clone()
    };
    Some(Arc::new(crate::feedback::rewrite::tracking::Tracker::new(
        secret,
        &base,
        t.hosts.clone(),
    )))
}

/// Re-reads what can change without a restart: accounts, the TLS
/// certificate, cached DKIM keys, the policy scripts. A bad file changes
/// nothing: the running configuration and policy stay in force. Returns the
/// policy version now running.
pub async fn reload(ctx: &Services, config_path: Option<&std::path::Path>) -> Result<u64, String> {
    let fail = |e: String| {
        tracing::error!(error = %e, "reload failed, keeping the running configuration");
        e
    };
    let settings = Settings::load(config_path).map_err(|e| fail(e.to_string()))?;
    let acceptor = tls_acceptor(&settings).map_err(|e| fail(format!("{e:#}")))?;
    let policy = ctx.policy.clone();
    // Loading runs the scripts' top level: off the async workers.
    let version = tokio::task::spawn_blocking(move || policy.reload())
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))?;
    if let Ok(mut a) = ctx.accounts.write() {
        *a = Arc::new(Accounts::from_settings(&settings.accounts));
    }
    if let Ok(mut t) = ctx.tls.write() {
        *t = Some(acceptor);
    }
    ctx.signers.clear();
    tracing::info!(
        accounts = settings.accounts.len(),
        policy_version = version,
        "configuration and policy reloaded"
    );
    Ok(version)
}
