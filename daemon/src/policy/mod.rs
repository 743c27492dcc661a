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
pub mod hooks;
pub mod lua_data;
pub mod lua_host;
pub(crate) mod lua_raw;
mod offload;
pub mod outcome_feed;
mod patterns;
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
pub use hooks::{HOOKS, Hook, hook_index};
use lua_host::LuaHost;
pub use patterns::stuck as stuck_states;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

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
    /// The most of a message's decoded text, or of its HTML, a hook reads
    /// (`msg.body`), in KB.
    pub max_body_kb: usize,
}

/// One loaded version of the policy.
pub struct Engine {
    /// The states by slot; a slot is empty while its state runs a call.
    hosts: Mutex<Vec<Option<LuaHost>>>,
    /// Woken when a state goes back into `hosts`, if a call waits for one
    /// (`waiting`): most calls find a state free, and a wakeup of nobody
    /// would still write to a line every core shares.
    returned: Notify,
    waiting: AtomicUsize,
    pub version: u64,
    /// What every state of this version defines (they all load the same
    /// files), by position in `HOOKS`: known without taking a state out of
    /// the pool, so a hook nobody defined costs nothing and the answer holds
    /// under load.
    defined: Vec<bool>,
    /// The kinds of item a hook is for, when its plugin restricts them.
    only: Vec<Option<Vec<String>>>,
    /// The most text one call is handed, in bytes.
    max_input: usize,
    /// How long a call waits for a free state (they are all busy while
    /// their calls wait on the store or a pattern helper).
    timeout: Duration,
}

impl Engine {
    fn load(settings: &PolicySettings, store: &Store, version: u64) -> Result<Engine, PolicyError> {
        let mut hosts = Vec::with_capacity(settings.states);
        for _ in 0..settings.states.max(1) {
            hosts.push(LuaHost::new(settings, store.clone())?);
        }
        let (defined, only) = match hosts.first() {
            Some(h) => (h.defined(), h.kind_restrictions().clone()),
            None => Default::default(),
        };
        Ok(Engine {
            returned: Notify::new(),
            waiting: AtomicUsize::new(0),
            hosts: Mutex::new(hosts.into_iter().map(Some).collect()),
            version,
            defined,
            only: HOOKS.iter().map(|h| only.get(h).cloned()).collect(),
            max_input: settings.max_input_kb.saturating_mul(1024),
            timeout: settings.timeout,
        })
    }

    /// Whether the hook at `at` in `HOOKS` is defined, and for an item of
    /// `kind` if one is given (a plugin may declare a hook for some kinds
    /// of item only).
    fn wants_at(&self, at: usize, kind: Option<&str>) -> bool {
        self.defined.get(at).is_some_and(|d| *d)
            && kind.is_none_or(|k| {
                self.only
                    .get(at)
                    .and_then(Option::as_ref)
                    .is_none_or(|kinds| kinds.iter().any(|x| x == k))
            })
    }

    async fn call<A, R>(
        &self,
        hook: &'static str,
        at: usize,
        kind: Option<&str>,
        arg: &A,
    ) -> Result<Option<R>, PolicyError>
    where
        A: HookArg + ?Sized,
        R: HookAnswer,
    {
        if !self.wants_at(at, kind) {
            return Ok(None);
        }
        let size = arg.input_bytes();
        if size > self.max_input {
            return Err(PolicyError::Script {
                hook,
                message: format!(
                    "its argument carries {size} bytes of text, over policy.max_input_kb ({} KB)",
                    self.max_input / 1024
                ),
            });
        }
        let Ok((slot, host)) = tokio::time::timeout(self.timeout, self.take_host()).await else {
            return Err(PolicyError::Script {
                hook,
                message: "time limit exceeded waiting for a free Lua state".into(),
            });
        };
        // Gives the state back even if this future is dropped mid-call.
        let guard = HostGuard {
            host: Some(host),
            slot,
            engine: self,
        };
        let started = std::time::Instant::now();
        let answer = match &guard.host {
            Some(host) => host.call_at(at, hook, arg).await,
            None => Ok(None),
        };
        if let Some(m) = crate::metrics::get() {
            let label = crate::metrics::Hook { hook };
            m.hook_calls.get_or_create(&label).inc();
            crate::metrics::observe(&m.hook_seconds.get_or_create(&label), started.elapsed());
        }
        answer
    }

    /// A free Lua state, waiting for one if all are busy (on Redis a call
    /// holds its state while it waits on the store).
    ///
    /// A thread takes the state it used last when it is free: that state's
    /// memory is still in this core's caches, which in a busy daemon saves
    /// more than the call costs on its own.
    async fn take_host(&self) -> (usize, LuaHost) {
        // Counted while this call waits, also if it is dropped waiting.
        let mut waiting: Option<offload::Waiting<'_>> = None;
        loop {
            let notified = self.returned.notified();
            {
                let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
                let mine = LAST_SLOT.with(Cell::get);
                let slot = match hosts.get(mine) {
                    Some(Some(_)) => Some(mine),
                    _ => hosts.iter().position(Option::is_some),
                };
                if let Some(h) = slot.and_then(|at| Some((at, hosts.get_mut(at)?.take()?))) {
                    LAST_SLOT.with(|s| s.set(h.0));
                    return h;
                }
                // Counted under the lock: a state given back after this
                // look sees it and wakes us.
                if waiting.is_none() {
                    waiting = Some(offload::Waiting::start(&self.waiting));
                }
            }
            notified.await;
        }
    }
}

thread_local! {
    /// The slot of the Lua state this thread ran its last call on.
    static LAST_SLOT: Cell<usize> = const { Cell::new(0) };
}

struct HostGuard<'a> {
    host: Option<LuaHost>,
    slot: usize,
    engine: &'a Engine,
}

impl Drop for HostGuard<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.host.take() {
            if let Some(slot) = self
                .engine
                .hosts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(self.slot)
            {
                *slot = Some(h);
            }
            if self.engine.waiting.load(Ordering::SeqCst) > 0 {
                self.engine.returned.notify_one();
            }
        }
    }
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

    /// Whether a script defines `hook`.
    pub fn has_hook<H: Hook>(&self, _hook: H) -> bool {
        self.engine().wants_at(H::INDEX, None)
    }

    /// The hooks the scripts in force define, by name.
    pub fn defined_hooks(&self) -> Vec<&'static str> {
        let engine = self.engine();
        HOOKS
            .iter()
            .enumerate()
            .filter(|(at, _)| engine.wants_at(*at, None))
            .map(|(_, name)| *name)
            .collect()
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
    pub async fn call<H: Hook>(
        &self,
        hook: H,
        arg: &H::Arg<'_>,
    ) -> Result<Option<H::Answer>, PolicyError> {
        self.current().call_for(hook, None, arg).await
    }

    /// A hook by its name, with any argument and answer: for tests that
    /// hand a hook what a script might be given.
    #[cfg(test)]
    pub(crate) async fn call_named<A, R>(
        &self,
        hook: &'static str,
        arg: &A,
    ) -> Result<Option<R>, PolicyError>
    where
        A: HookArg + ?Sized,
        R: HookAnswer,
    {
        let at = hook_index(hook).expect("a hook that exists");
        self.current().call_at(hook, at, None, arg).await
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
    pub fn has_hook<H: Hook>(&self, _hook: H) -> bool {
        self.engine.wants_at(H::INDEX, None)
    }

    /// Whether `hook` is defined for an item of `kind`.
    pub fn has_hook_for<H: Hook>(&self, _hook: H, kind: &str) -> bool {
        self.engine.wants_at(H::INDEX, Some(kind))
    }

    /// The most of a message's decoded body a hook reads, in bytes.
    pub fn max_body(&self) -> usize {
        self.policy.settings.max_body_kb.saturating_mul(1024)
    }

    pub async fn call<H: Hook>(
        &self,
        hook: H,
        arg: &H::Arg<'_>,
    ) -> Result<Option<H::Answer>, PolicyError> {
        self.call_for(hook, None, arg).await
    }

    /// Like `call`, for an item of a kind (e.g. `content_filter` on a
    /// "message"): skipped when the hook's plugin only handles other kinds.
    pub async fn call_for<H: Hook>(
        &self,
        _hook: H,
        kind: Option<&str>,
        arg: &H::Arg<'_>,
    ) -> Result<Option<H::Answer>, PolicyError> {
        self.call_at(H::NAME, H::INDEX, kind, arg).await
    }

    async fn call_at<A, R>(
        &self,
        hook: &'static str,
        at: usize,
        kind: Option<&str>,
        arg: &A,
    ) -> Result<Option<R>, PolicyError>
    where
        A: HookArg + ?Sized,
        R: HookAnswer,
    {
        let result = self.engine.call(hook, at, kind, arg).await;
        if let Err(e) = &result {
            self.policy.count_error(hook, e);
        }
        result
    }
}
