//! Lua states on OS threads of their own, so that no hook runs on an async
//! worker.
//!
//! The watchdog stops a runaway script at its next instruction, but not a C
//! function that runs long on its own (`string.gsub` with a pattern that
//! backtracks over a long string): run on a Tokio worker, two such calls
//! stopped every task of a 2-core node, `/healthz` and the SMTP banner
//! included. Here a call runs on its state's thread and the caller waits
//! for it asynchronously, up to the call's deadline. Past it the caller
//! stops waiting, the call counts as failed, and the state is abandoned:
//! it is never given another call. A replacement is built at once, up to
//! [`MAX_STUCK`] stuck states at a time; an abandoned state whose call ends
//! after all is thrown away, and its thread builds a fresh state to take
//! its place if none was built for it.

use super::lua_host::LuaHost;
use super::{PolicyError, PolicySettings};
use crate::store::Store;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Notify;

/// Stuck states that may hold their threads at once. Each holds at most
/// `policy.max_memory_mb`; past this many, calls wait for the states that
/// are left (and fail at their deadline if none comes free).
pub const MAX_STUCK: usize = 8;

/// States abandoned whose calls have not ended yet, in this process.
static STUCK: AtomicUsize = AtomicUsize::new(0);

/// Abandoned states whose calls are still running.
pub fn stuck() -> usize {
    STUCK.load(Ordering::Relaxed)
}

type Job = Box<dyn FnOnce(&LuaHost) + Send>;

/// What a state is doing, as its thread and its caller agree on it.
const FREE: u8 = 0;
const BUSY: u8 = 1;
/// Its caller stopped waiting and a replacement is being built.
const ABANDONED: u8 = 2;
/// Its caller stopped waiting; no replacement (too many stuck): its thread
/// builds one when the call ends.
const ABANDONED_UNREPLACED: u8 = 3;

/// One state's thread: where its calls go, and what it is doing.
#[derive(Clone)]
pub struct LuaThread {
    slot: usize,
    jobs: Arc<Mailbox>,
    phase: Arc<AtomicU8>,
    /// The thread's kernel id, once it runs.
    tid: Arc<AtomicI32>,
}

/// The states of one loaded policy version, by slot. The pool holds the
/// only lasting way to reach a state's thread: when the pool goes (a
/// reload retired it), the threads' queues close and they end.
pub struct Pool {
    slots: Mutex<Slots>,
    /// Woken when a state comes free, if a call waits (`waiting`).
    returned: Notify,
    waiting: AtomicUsize,
    settings: PolicySettings,
    store: Store,
    version: u64,
}

struct Slots {
    threads: Vec<Option<LuaThread>>,
    /// Slots whose state is free; the last one given back last.
    free: Vec<usize>,
}

impl Pool {
    /// A pool of the states given, each started on a thread of its own.
    pub fn start(
        hosts: Vec<LuaHost>,
        settings: &PolicySettings,
        store: &Store,
        version: u64,
    ) -> Result<Arc<Pool>, PolicyError> {
        let pool = Arc::new(Pool {
            slots: Mutex::new(Slots {
                threads: Vec::with_capacity(hosts.len()),
                free: Vec::with_capacity(hosts.len()),
            }),
            returned: Notify::new(),
            waiting: AtomicUsize::new(0),
            settings: settings.clone(),
            store: store.clone(),
            version,
        });
        for (slot, host) in hosts.into_iter().enumerate() {
            let thread = spawn(host, slot, Arc::downgrade(&pool))
                .map_err(|e| PolicyError::Load(format!("a Lua thread did not start: {e}")))?;
            pool.lock().threads.push(Some(thread));
            pool.give_back(slot);
        }
        Ok(pool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free state, waiting for one while all are busy.
    pub async fn take(&self) -> LuaThread {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let notified = self.returned.notified();
            {
                let mut slots = self.lock();
                // The state used last first: its memory is the likeliest
                // to be in a cache still.
                while let Some(slot) = slots.free.pop() {
                    if let Some(Some(t)) = slots.threads.get(slot) {
                        t.phase.store(BUSY, Ordering::SeqCst);
                        return t.clone();
                    }
                }
                // Counted under the lock: a state given back after this
                // look sees it and wakes us.
                if waiting.is_none() {
                    self.waiting.fetch_add(1, Ordering::SeqCst);
                    waiting = Some(Waiting(&self.waiting));
                }
            }
            notified.await;
        }
    }

    fn give_back(&self, slot: usize) {
        self.lock().free.push(slot);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.returned.notify_one();
        }
    }

    /// Gives up on the call `thread` runs (past its deadline). False if
    /// the call ended first: the state went back to the pool as usual.
    pub fn abandon(self: &Arc<Self>, thread: &LuaThread) -> bool {
        let replace = STUCK.fetch_add(1, Ordering::SeqCst) < MAX_STUCK;
        let phase = if replace {
            ABANDONED
        } else {
            ABANDONED_UNREPLACED
        };
        if thread
            .phase
            .compare_exchange(BUSY, phase, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            STUCK.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        // What it still runs, it runs behind every other thread of the
        // node: a stuck call costs the node its idle time only.
        let tid = thread.tid.load(Ordering::SeqCst);
        if tid != 0 {
            // SAFETY: a plain system call on a thread of this process.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) };
        }
        // The pool's way to the thread goes: it gets no more calls, and
        // ends when this one does.
        if let Some(t) = self.lock().threads.get_mut(thread.slot) {
            *t = None;
        }
        tracing::error!(
            target: "kiln::policy",
            stuck = STUCK.load(Ordering::Relaxed),
            replaced = replace,
            "a hook call ran past its deadline where Lua cannot stop it; its Lua state is abandoned"
        );
        if replace {
            let (pool, slot) = (Arc::downgrade(self), thread.slot);
            let built = std::thread::Builder::new()
                .name("kiln-lua-build".into())
                .spawn(move || rebuild(pool, slot));
            if let Err(e) = built {
                tracing::error!(target: "kiln::policy", error = %e, "no thread to build a Lua state on");
            }
        }
        true
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // A retired version's threads end (a call under way finishes first).
        for t in self.lock().threads.iter().flatten() {
            t.jobs.close();
        }
    }
}

impl LuaThread {
    /// Runs `job` on this state's thread; its answer comes on the receiver
    /// (closed without one if the thread has gone). The state goes back to
    /// its pool by itself when the job ends.
    pub fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&LuaHost) -> T + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |host| {
            let _ = tx.send(job(host));
        });
        self.jobs.put(job);
        rx
    }
}

/// Where a state's next job waits for its thread: one job at a time (a
/// state has one caller), handed over with a park and an unpark, the
/// cheapest wakeup there is.
#[derive(Default)]
struct Mailbox {
    job: std::sync::Mutex<Option<Job>>,
    /// The pool let go of the thread: no job will come.
    closed: std::sync::atomic::AtomicBool,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// The thread's end of its mailbox: closes it when the pool's handles go.
struct MailboxEnd(Arc<Mailbox>);

impl Mailbox {
    fn put(&self, job: Job) {
        *self.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(job);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Called on the thread that takes the jobs, before it takes any.
    fn bind(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    /// The next job; None once closed.
    fn take(&self) -> Option<Job> {
        loop {
            if let Some(job) = self.job.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Some(job);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            std::thread::park();
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Starts `host` on a thread of its own, for `slot` of `pool`.
fn spawn(host: LuaHost, slot: usize, pool: Weak<Pool>) -> std::io::Result<LuaThread> {
    let jobs = Arc::new(Mailbox::default());
    let queue = MailboxEnd(jobs.clone());
    let phase = Arc::new(AtomicU8::new(FREE));
    let tid = Arc::new(AtomicI32::new(0));
    let (mine, my_tid) = (phase.clone(), tid.clone());
    std::thread::Builder::new()
        .name("kiln-lua".into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            my_tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
            serve(host, queue, slot, mine, pool)
        })?;
    Ok(LuaThread {
        slot,
        jobs,
        phase,
        tid,
    })
}

/// A state's thread: one call at a time, given back to the pool after
/// each, until the pool is gone or the state is abandoned.
fn serve(host: LuaHost, queue: MailboxEnd, slot: usize, phase: Arc<AtomicU8>, pool: Weak<Pool>) {
    queue.0.bind();
    while let Some(job) = queue.0.take() {
        job(&host);
        match phase.compare_exchange(BUSY, FREE, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => match pool.upgrade() {
                Some(p) => p.give_back(slot),
                None => return,
            },
            Err(was) => {
                STUCK.fetch_sub(1, Ordering::SeqCst);
                drop(host);
                if was == ABANDONED_UNREPLACED {
                    rebuild(pool, slot);
                }
                return;
            }
        }
    }
}

/// Builds a fresh state for `slot` of `pool` (if the pool is still in
/// use) and starts it there.
fn rebuild(pool: Weak<Pool>, slot: usize) {
    let Some(p) = pool.upgrade() else { return };
    let (settings, store, version) = (p.settings.clone(), p.store.clone(), p.version);
    // Not held while the scripts load: a reload may retire the pool.
    drop(p);
    let host = match LuaHost::new(&settings, store) {
        Ok(host) => host,
        Err(e) => {
            tracing::error!(
                target: "kiln::policy", version, error = %e,
                "a Lua state to replace an abandoned one did not load"
            );
            return;
        }
    };
    match spawn(host, slot, pool.clone()) {
        Ok(thread) => {
            if let Some(p) = pool.upgrade() {
                if let Some(t) = p.lock().threads.get_mut(slot) {
                    *t = Some(thread);
                }
                p.give_back(slot);
            }
        }
        Err(e) => tracing::error!(target: "kiln::policy", error = %e, "a Lua thread did not start"),
    }
}
