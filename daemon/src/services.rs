//! What every stage shares, built once by `server`: settings, the store,
//! the policy, the queue's handle, events and callbacks, the SES records,
//! DKIM signers, accounts from the config file and the TLS certificate (the
//! two a reload may replace, behind locks). It lives below the stages: a
//! stage takes what it needs from here, never another stage's context.

use crate::config::Settings;
use crate::feedback::callbacks::Callbacks;
use crate::feedback::endpoints::RateLimiter;
use crate::feedback::events::Events;
use crate::feedback::outcomes::OutcomeFeed;
use crate::feedback::rewrite::tracking::Tracker;
use crate::feedback::stats::DailyStats;
use crate::feedback::verp::Verp;
use crate::policy::Policy;
use crate::queue::QueueHandle;
use crate::ses::Records;
use crate::ses::config_accounts::Accounts;
use crate::ses::dkim::DkimSigners;
use crate::store::Store;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;

pub struct Services {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub policy: Arc<Policy>,
    pub queue: QueueHandle,
    pub events: Events,
    pub callbacks: Arc<Callbacks>,
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
    pub admin_tokens: Arc<crate::ops::admin_auth::OperatorTokens>,
    /// Egress as the operator sees it (shaping state per provider and
    /// source), without the stages importing egress.
    pub egress: Arc<dyn EgressView>,
}

/// What egress shows the operator.
pub trait EgressView: Send + Sync {
    /// Every (provider, source) this node has sent to: its limits, what
    /// throttling signals did to it, its warm-up state.
    fn shaping(&self) -> futures_like::BoxFuture<'_, Vec<serde_json::Value>>;
    /// Sets the metrics read at scrape time: shaping state per (provider,
    /// source), queue entries held in lines per provider.
    fn set_gauges(&self);
    /// The provider (or site: its MX hosts) a domain's mail goes to, its
    /// MX looked up if need be; None when it has no usable MX.
    fn provider_of<'a>(&'a self, domain: &'a str) -> futures_like::BoxFuture<'a, Option<String>>;
}

/// A boxed future, without a crate for one type.
pub mod futures_like {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

impl Services {
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
