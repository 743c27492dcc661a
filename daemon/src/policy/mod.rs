//! The policy engine: Lua decides, Rust does.
//!
//! A [`Policy`] holds the current [`Engine`]: a pool of sandboxed Lua states
//! ([`lua_host::LuaHost`]), each with the plugins and the operator's policy
//! script loaded, so hooks run in parallel on every core. A reload builds a
//! complete new engine first and swaps it in only if every state loaded;
//! calls already running finish on the engine they started with.
//!
//! A hook that fails (error, runaway loop, memory, bad return value) is
//! reported as [`PolicyError::Script`], logged with the script's file and
//! line, and counted; callers never lose a message over it: SMTP answers
//! 4xx, the queue retries later. See `docs/lua-api.md` for the hooks.

pub mod decisions;
mod engine;
pub mod lua_data;
pub mod lua_host;
pub(crate) mod lua_raw;
mod lua_thread;
pub mod plugin_settings;
pub mod time;
mod watchdog;

#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod plugin_tests;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use crate::store::Store;
use decisions::{HookAnswer, HookArg};
use engine::Engine;
pub use engine::StateCalls;
use lua_host::LuaHost;
pub use lua_thread::stuck as stuck_states;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Every hook a script may define.
pub const HOOKS: &[&str] = &[
    "on_connect",
    "on_mail_from",
    "on_rcpt_to",
    "content_filter",
    "check_limits",
    "warmup_limit",
    "reputation",
    "select_egress",
    "classify_bounce",
    "callback_format",
    "egress_plan",
    "egress_signal",
];

/// `hook`'s position in [`HOOKS`]: asked several times per message, so
/// one `match` (by length, then bytes) instead of a search.
pub fn hook_index(hook: &str) -> Option<usize> {
    Some(match hook {
        "on_connect" => 0,
        "on_mail_from" => 1,
        "on_rcpt_to" => 2,
        "content_filter" => 3,
        "check_limits" => 4,
        "warmup_limit" => 5,
        "reputation" => 6,
        "select_egress" => 7,
        "classify_bounce" => 8,
        "callback_format" => 9,
        "egress_plan" => 10,
        "egress_signal" => 11,
        _ => return None,
    })
}

/// The default plugins, in load order (later ones may use earlier ones).
pub const PLUGINS: &[&str] = &[
    "reputation",
    "warmup",
    "limits",
    "content_filter",
    "bounces",
    "egress",
    "callbacks",
];

#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    #[error("policy did not load: {0}")]
    Load(String),
    #[error("hook {hook} failed: {message}")]
    Script { hook: &'static str, message: String },
}

#[derive(Debug, Clone)]
pub struct PolicySettings {
    pub plugins_dir: PathBuf,
    pub script: PathBuf,
    pub time_zone: jiff::tz::TimeZone,
    pub states: usize,
    pub max_instructions: u64,
    pub max_memory_mb: usize,
    pub timeout: Duration,
    /// The most text (KB) a hook's argument may carry.
    pub max_input_kb: usize,
}

/// Loads the policy once against a scratch store, to report script errors
/// (with file and line) without touching the running daemon or its store.
pub async fn check(settings: &PolicySettings) -> Result<(), PolicyError> {
    let dir = std::env::temp_dir().join(format!("kiln-check-{}", std::process::id()));
    let result = async {
        let store = crate::store::embedded::EmbeddedStore::open(
            &dir.join("scratch.redb"),
            Duration::from_secs(60),
            crate::clock::Clock::system(),
        )
        .map_err(|e| PolicyError::Load(format!("scratch store: {e}")))?;
        let loaded = LuaHost::new(settings, Store::Embedded(store.clone())).map(|_| ());
        store.close();
        loaded
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

pub struct Policy {
    settings: PolicySettings,
    store: Store,
    current: RwLock<Arc<Engine>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    reloads: AtomicU64,
}

impl Policy {
    /// Kiln's time, as the store the policy runs on keeps it.
    pub fn now_ms(&self) -> i64 {
        self.store.now_ms()
    }

    pub fn load(settings: PolicySettings, store: Store) -> Result<Policy, PolicyError> {
        let engine = Engine::load(&settings, &store, 1)?;
        Ok(Policy {
            settings,
            store,
            current: RwLock::new(Arc::new(engine)),
            errors: Mutex::new(BTreeMap::new()),
            reloads: AtomicU64::new(1),
        })
    }

    fn engine(&self) -> Arc<Engine> {
        self.current
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Loads the scripts again; on failure the running policy stays.
    /// Blocking (it runs the scripts' top level): call from a blocking task.
    pub fn reload(&self) -> Result<u64, PolicyError> {
        let version = self.reloads.fetch_add(1, Ordering::Relaxed) + 1;
        let engine = Engine::load(&self.settings, &self.store, version)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(engine);
        Ok(version)
    }

    /// The zone days are counted in (`policy.time_zone`).
    pub fn time_zone(&self) -> &jiff::tz::TimeZone {
        &self.settings.time_zone
    }

    pub fn version(&self) -> u64 {
        self.engine().version
    }

    pub fn has_hook(&self, hook: &str) -> bool {
        self.engine().wants(hook, None)
    }

    /// The policy in force now, held for several calls (a message's hooks
    /// run on one version, and the current one is looked up once).
    pub fn current(&self) -> Current<'_> {
        Current {
            policy: self,
            engine: self.engine(),
        }
    }

    /// Calls a hook; `Ok(None)` when no script defines it or it returned
    /// nil. Errors are logged and counted here, once.
    pub async fn call<A, R>(&self, hook: &'static str, arg: &A) -> Result<Option<R>, PolicyError>
    where
        A: HookArg + ?Sized,
        R: HookAnswer + Send + 'static,
    {
        self.current().call_for(hook, None, arg).await
    }

    fn count_error(&self, hook: &'static str, e: &PolicyError) {
        tracing::error!(target: "kiln::policy", hook, error = %e, "policy hook failed");
        if let Some(m) = crate::metrics::get() {
            m.hook_errors
                .get_or_create(&crate::metrics::Hook { hook })
                .inc();
        }
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(hook)
            .or_default() += 1;
    }

    /// Hook failures since start, per hook.
    pub fn error_counts(&self) -> BTreeMap<&'static str, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// One version of the policy, held across a few calls: see
/// [`Policy::current`].
pub struct Current<'a> {
    policy: &'a Policy,
    engine: Arc<Engine>,
}

impl Current<'_> {
    pub fn has_hook(&self, hook: &str) -> bool {
        self.engine.wants(hook, None)
    }

    pub async fn call<A, R>(&self, hook: &'static str, arg: &A) -> Result<Option<R>, PolicyError>
    where
        A: HookArg + ?Sized,
        R: HookAnswer + Send + 'static,
    {
        self.call_for(hook, None, arg).await
    }

    /// Like `call`, for an item of a kind (e.g. `content_filter` on a
    /// "message"): skipped when the hook's plugin only handles other kinds.
    pub async fn call_for<A, R>(
        &self,
        hook: &'static str,
        kind: Option<&str>,
        arg: &A,
    ) -> Result<Option<R>, PolicyError>
    where
        A: HookArg + ?Sized,
        R: HookAnswer + Send + 'static,
    {
        let (result, failures) = self.engine.call(hook, kind, arg).await;
        self.count_errors(&failures);
        result
    }

    /// Runs `job` on one Lua state: several hooks asked about one item for
    /// one trip to a Lua thread (see `engine`). `calls` is the most hooks
    /// it calls (its time limit is theirs together), `first` the one a
    /// failure is put down to before any has started. An `Err` is the job
    /// itself failing (stuck, or no state free in time); a hook that failed
    /// inside it answered its `Err` to the job. Either way each failure is
    /// logged and counted once, here.
    pub async fn run<T: Send + 'static>(
        &self,
        calls: u32,
        first: &'static str,
        job: impl FnOnce(&StateCalls<'_>) -> T + Send + 'static,
    ) -> Result<T, PolicyError> {
        let (result, failures) = self.engine.run(calls, first, job).await;
        self.count_errors(&failures);
        result
    }

    fn count_errors(&self, failures: &[PolicyError]) {
        for e in failures {
            let hook = match e {
                PolicyError::Script { hook, .. } => hook,
                PolicyError::Load(_) => "(load)",
            };
            self.policy.count_error(hook, e);
        }
    }
}
