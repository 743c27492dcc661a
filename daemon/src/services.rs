//! What every stage shares, built once by `server`: settings, the store,
//! the policy and its reputation feed, the queue's handle, the SES records
//! (statistics and operator tokens among them), DKIM signers, accounts from
//! the config file and the TLS certificates (what a reload replaces,
//! behind locks). It lives below the stages and imports none of them:
//! what a stage offers the others (egress's shaping, feedback's events)
//! is a trait here, implemented by the stage.

use crate::config::Settings;
use crate::event::Event;
use crate::net::RateLimiter;
use crate::policy::Policy;
use crate::policy::outcome_feed::OutcomeFeed;
use crate::queue::QueueHandle;
use crate::rewrite::tracking::Tracker;
use crate::ses::Records;
use crate::ses::config_accounts::Accounts;
use crate::ses::dkim::DkimSigners;
use crate::ses::operators::OperatorTokens;
use crate::ses::stats::DailyStats;
use crate::store::Store;
use crate::verp::Verp;
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;

pub struct Services {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub policy: Arc<Policy>,
    pub queue: QueueHandle,
    /// Events and their callbacks (feedback).
    pub feedback: Arc<dyn FeedbackView>,
    /// The reputation hook's feed of outcomes.
    pub outcomes: Arc<OutcomeFeed>,
    pub stats: Arc<DailyStats>,
    /// Open and click tracking (None when `tracking.enabled` is off).
    pub tracker: Option<Arc<Tracker>>,
    /// VERP return paths (None without `platform.bounce_domain`).
    pub verp: Option<Arc<Verp>>,
    pub signers: Arc<DkimSigners>,
    /// The SES records: accounts, sender domains, templates, lists ...
    pub ses: Records,
    pub accounts: RwLock<Arc<Accounts>>,
    pub tls: RwLock<Option<TlsAcceptor>>,
    /// The HTTP listener's TLS (`http.tls_cert`), if it speaks HTTPS.
    pub http_tls: RwLock<Option<TlsAcceptor>>,
    /// The config file, read again on reload.
    pub config_path: Option<PathBuf>,
    /// Tracking and unsubscribe requests per client address.
    pub tracking_limiter: RateLimiter,
    /// The operator token every admin request shows.
    pub admin_tokens: Arc<OperatorTokens>,
    /// Egress as the operator sees it (shaping state per provider and
    /// source), without the stages importing egress.
    pub egress: Arc<dyn EgressView>,
    /// Sends receiving domains their TLS reports (None when it cannot).
    pub tls_reports: Option<Arc<dyn TlsReportsView>>,
}

/// What the TLS report sender offers the operator.
pub trait TlsReportsView: Send + Sync {
    /// Sends the reports due now, today's so far included; what became
    /// of each address.
    fn send_now<'a>(&'a self, ctx: &'a Services) -> BoxFuture<'a, serde_json::Value>;
}

/// What egress shows the operator.
pub trait EgressView: Send + Sync {
    /// Every (provider, source) this node has sent to: its limits, what
    /// throttling signals did to it, its warm-up state.
    fn shaping(&self) -> BoxFuture<'_, Vec<serde_json::Value>>;
    /// Sets the metrics read at scrape time: shaping state per (provider,
    /// source), queue entries held in lines per provider.
    fn set_gauges(&self);
    /// The provider (or site: its MX hosts) a domain's mail goes to, its
    /// MX looked up if need be; None when it has no usable MX.
    fn provider_of<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Option<String>>;
}

/// What feedback offers the other stages.
pub trait FeedbackView: Send + Sync {
    /// Logs the event and files its callback and trail step; durable when
    /// it returns.
    fn emit(&self, e: Event) -> BoxFuture<'_, ()>;
    /// Callback URLs are looked up afresh (a receiver changed).
    fn forget_routes(&self);
}

impl Services {
    /// Re-reads what can change without a restart: accounts, the TLS
    /// certificate, cached DKIM keys, the policy scripts. A bad file changes
    /// nothing: the running configuration and policy stay in force. Returns the
    /// policy version now running.
    pub async fn reload(&self) -> Result<u64, String> {
        let config_path = self.config_path.as_deref();
        let fail = |e: String| {
            tracing::error!(error = %e, "reload failed, keeping the running configuration");
            e
        };
        let settings = Settings::load(config_path).map_err(|e| fail(e.to_string()))?;
        let acceptor = crate::tls::smtp_acceptor(&settings).map_err(|e| fail(format!("{e:#}")))?;
        let http_acceptor =
            crate::tls::http_acceptor(&settings).map_err(|e| fail(format!("{e:#}")))?;
        let policy = self.policy.clone();
        // Loading runs the scripts' top level: off the async workers.
        let version = tokio::task::spawn_blocking(move || policy.reload())
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
        if let Ok(mut a) = self.accounts.write() {
            *a = Arc::new(Accounts::from_settings(&settings.accounts));
        }
        if let Ok(mut t) = self.tls.write() {
            *t = Some(acceptor);
        }
        if let Ok(mut t) = self.http_tls.write() {
            *t = http_acceptor;
        }
        self.signers.clear();
        tracing::info!(
            accounts = settings.accounts.len(),
            policy_version = version,
            "configuration and policy reloaded"
        );
        Ok(version)
    }

    pub fn accounts(&self) -> Arc<Accounts> {
        self.accounts
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn http_tls(&self) -> Option<TlsAcceptor> {
        self.http_tls
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}
