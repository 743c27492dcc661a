//! One loaded version of the policy: its Lua states, each on a thread of
//! its own (`lua_thread`), and how a caller hands them work.
//!
//! A trip to a Lua thread costs two thread wakeups, several times what a
//! hook costs. So a caller with several hooks to ask about one item (the
//! admission of a message asks three) hands over one job that asks them
//! all on the same state ([`Engine::run`]); a hook nobody defined costs no
//! trip at all.

use super::decisions::{HookAnswer, HookArg};
use super::lua_host::LuaHost;
use super::lua_thread::Pool;
use super::{HOOKS, PolicyError, PolicySettings, hook_index};
use crate::store::Store;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long past its calls' time limits a caller waits for a job: the
/// watchdog stops a script at its deadline; what still runs this much
/// later is stuck where Lua cannot stop it.
const ABANDON_AFTER: Duration = Duration::from_millis(250);

pub struct Engine {
    pool: Arc<Pool>,
    pub version: u64,
    wants: Arc<Wants>,
    timeout: Duration,
}

/// Which hooks this version defines, and for what; known without a trip
/// to a Lua thread, so a hook nobody defined costs nothing.
struct Wants {
    /// By position in `HOOKS` (every state loads the same files).
    defined: Vec<bool>,
    /// The kinds of item a hook is for, when its plugin restricts them.
    only: Vec<Option<Vec<String>>>,
    /// The most text one call is handed, in bytes.
    max_input: usize,
}

impl Wants {
    fn at(&self, at: usize, kind: Option<&str>) -> bool {
        self.defined.get(at).is_some_and(|d| *d)
            && kind.is_none_or(|k| {
                self.only
                    .get(at)
                    .and_then(Option::as_ref)
                    .is_none_or(|kinds| kinds.iter().any(|x| x == k))
            })
    }
}

/// The hooks a job may call, on the state it runs on; what failed is kept
/// for the caller to log and count.
pub struct StateCalls<'h> {
    host: &'h LuaHost,
    wants: &'h Wants,
    runtime: &'h tokio::runtime::Handle,
    /// The hook running now, by position in `HOOKS`, for the error of a
    /// job its caller stopped waiting for.
    running: &'h AtomicUsize,
    failures: RefCell<Vec<PolicyError>>,
}

impl StateCalls<'_> {
    pub fn has_hook(&self, hook: &str) -> bool {
        hook_index(hook).is_some_and(|at| self.wants.at(at, None))
    }

    pub fn call<A, R>(&self, hook: &'static str, arg: &A) -> Result<Option<R>, PolicyError>
    where
        A: HookArg + ?Sized,
        R: HookAnswer,
    {
        self.call_for(hook, None, arg)
    }

    /// Calls `hook` for an item of `kind` (skipped when the hook's plugin
    /// handles other kinds only); `Ok(None)` when no script defines it or
    /// it answered nil.
    pub fn call_for<A, R>(
        &self,
        hook: &'static str,
        kind: Option<&str>,
        arg: &A,
    ) -> Result<Option<R>, PolicyError>
    where
        A: HookArg + ?Sized,
        R: HookAnswer,
    {
        let Some(at) = hook_index(hook).filter(|at| self.wants.at(*at, kind)) else {
            return Ok(None);
        };
        let size = arg.input_bytes();
        let result = if size > self.wants.max_input {
            Err(PolicyError::Script {
                hook,
                message: format!(
                    "its argument carries {size} bytes of text, over policy.max_input_kb ({} KB)",
                    self.wants.max_input / 1024
                ),
            })
        } else {
            self.running.store(at, Ordering::Relaxed);
            let started = std::time::Instant::now();
            // The hook may wait on the store: this thread drives it, with
            // the runtime's I/O and timers.
            let result = self.runtime.block_on(self.host.call_at(at, hook, arg));
            if let Some(m) = crate::metrics::get() {
                let label = crate::metrics::Hook { hook };
                m.hook_calls.get_or_create(&label).inc();
                crate::metrics::observe(&m.hook_seconds.get_or_create(&label), started.elapsed());
            }
            result
        };
        if let Err(e) = &result {
            self.failures.borrow_mut().push(e.clone());
        }
        result
    }
}

impl Engine {
    pub fn load(
        settings: &PolicySettings,
        store: &Store,
        version: u64,
    ) -> Result<Engine, PolicyError> {
        let mut hosts = Vec::with_capacity(settings.states);
        for _ in 0..settings.states.max(1) {
            hosts.push(LuaHost::new(settings, store.clone())?);
        }
        let (defined, only) = match hosts.first() {
            Some(h) => (h.defined(), h.kind_restrictions().clone()),
            None => Default::default(),
        };
        Ok(Engine {
            pool: Pool::start(hosts, settings, store, version)?,
            version,
            wants: Arc::new(Wants {
                defined,
                only: HOOKS.iter().map(|h| only.get(h).cloned()).collect(),
                max_input: settings.max_input_kb.saturating_mul(1024),
            }),
            timeout: settings.timeout,
        })
    }

    /// Whether `hook` is defined, and for an item of `kind` if one is given
    /// (a plugin may declare a hook for some kinds of item only).
    pub fn wants(&self, hook: &str, kind: Option<&str>) -> bool {
        hook_index(hook).is_some_and(|at| self.wants.at(at, kind))
    }

    /// One hook call, on a free state's thread.
    pub async fn call<A, R>(
        &self,
        hook: &'static str,
        kind: Option<&str>,
        arg: &A,
    ) -> (Result<Option<R>, PolicyError>, Vec<PolicyError>)
    where
        A: HookArg + ?Sized,
        R: HookAnswer + Send + 'static,
    {
        if !self.wants(hook, kind) {
            return (Ok(None), Vec::new());
        }
        let arg = arg.to_owned_arg();
        let kind = kind.map(str::to_string);
        match self
            .run(1, hook, move |calls| {
                calls.call_for(hook, kind.as_deref(), &arg)
            })
            .await
        {
            (Ok(answer), failures) => (answer, failures),
            (Err(e), failures) => (Err(e), failures),
        }
    }

    /// Runs `job` on a free state's thread and waits for it, up to `calls`
    /// calls' time limits (waiting for a free state included). Past that
    /// the job's state is abandoned. Answers the job's result and every
    /// failure of a hook it called (the stuck one included). `first` names
    /// the hook a failure is put down to before any has started.
    pub async fn run<T: Send + 'static>(
        &self,
        calls: u32,
        first: &'static str,
        job: impl FnOnce(&StateCalls<'_>) -> T + Send + 'static,
    ) -> (Result<T, PolicyError>, Vec<PolicyError>) {
        let limit = self.timeout.saturating_mul(calls.max(1)) + ABANDON_AFTER;
        let deadline = tokio::time::Instant::now() + limit;
        let Ok(thread) = tokio::time::timeout_at(deadline, self.pool.take()).await else {
            let e = PolicyError::Script {
                hook: first,
                message: "time limit exceeded waiting for a free Lua state".into(),
            };
            return (Err(e.clone()), vec![e]);
        };
        let running = Arc::new(AtomicUsize::new(usize::MAX));
        let (wants, in_job, runtime) = (
            self.wants.clone(),
            running.clone(),
            tokio::runtime::Handle::current(),
        );
        let answer = thread.run(move |host| {
            let calls = StateCalls {
                host,
                wants: &wants,
                runtime: &runtime,
                running: &in_job,
                failures: RefCell::new(Vec::new()),
            };
            let out = job(&calls);
            (out, calls.failures.into_inner())
        });
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok((out, failures))) => (Ok(out), failures),
            Ok(Err(_)) => {
                let e = PolicyError::Script {
                    hook: first,
                    message: "its Lua thread ended".into(),
                };
                (Err(e.clone()), vec![e])
            }
            Err(_) => {
                self.pool.abandon(&thread);
                let hook = HOOKS
                    .get(running.load(Ordering::Relaxed))
                    .copied()
                    .unwrap_or(first);
                let e = PolicyError::Script {
                    hook,
                    message: format!(
                        "time limit exceeded: no answer after {} ms; the Lua state was abandoned",
                        limit.as_millis()
                    ),
                };
                (Err(e.clone()), vec![e])
            }
        }
    }
}
