//! Work that Lua cannot interrupt, done on threads of its own.
//!
//! The watchdog stops a script at its next instruction, but a C function
//! such as `string.gsub` is one instruction: a pattern that backtracks over
//! a long string (`("a"):rep(1e6):gsub("a*b", "")`, `<[^>]*>` over a page of
//! unclosed `<`) runs for minutes inside it. Run on an async worker, two
//! such calls stopped every task of a 2-core node. So the sandbox sends
//! such work here (see `patterns`): a helper's thread does it, the hook
//! waits asynchronously, up to its deadline. Past it the hook fails, the
//! helper is abandoned — never given work again, its thread at the lowest
//! CPU priority — and a fresh one takes its place, up to [`MAX_STUCK`]
//! stuck at a time.

use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Notify;

/// Stuck helpers that may hold their threads at once; past this many,
/// work waits for the helpers left (and fails at its deadline).
pub const MAX_STUCK: usize = 8;

/// Helpers abandoned whose work has not ended yet, in this process.
static STUCK: AtomicUsize = AtomicUsize::new(0);

/// Abandoned helpers whose work is still running.
pub fn stuck() -> usize {
    STUCK.load(Ordering::Relaxed)
}

type Job<H> = Box<dyn FnOnce(&H) + Send>;

/// What a helper is doing, as its thread and its caller agree on it.
const FREE: u8 = 0;
const BUSY: u8 = 1;
/// Its caller stopped waiting and a replacement is being built.
const ABANDONED: u8 = 2;
/// Its caller stopped waiting; no replacement (too many stuck): its thread
/// builds one when the work ends.
const ABANDONED_UNREPLACED: u8 = 3;

/// Makes a helper (its thread calls it, for itself or a replacement).
pub type Build<H> = Arc<dyn Fn() -> Result<H, String> + Send + Sync>;

/// Where a helper's next job waits for its thread: one at a time (a
/// helper has one caller), handed over with a park and an unpark.
struct Mailbox<H> {
    job: Mutex<Option<Job<H>>>,
    /// The pool let go of the helper: no job will come.
    closed: std::sync::atomic::AtomicBool,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl<H> Mailbox<H> {
    fn new() -> Mailbox<H> {
        Mailbox {
            job: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
        }
    }

    fn put(&self, job: Job<H>) {
        *self.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(job);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// The next job; None once closed. On the helper's own thread.
    fn take(&self) -> Option<Job<H>> {
        let _ = self.thread.set(std::thread::current());
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

/// One helper's thread: where its work goes, and what it is doing.
pub struct Worker<H> {
    slot: usize,
    jobs: Arc<Mailbox<H>>,
    phase: Arc<AtomicU8>,
    /// The thread's kernel id, once it runs.
    tid: Arc<AtomicI32>,
}

impl<H> Clone for Worker<H> {
    fn clone(&self) -> Self {
        Worker {
            slot: self.slot,
            jobs: self.jobs.clone(),
            phase: self.phase.clone(),
            tid: self.tid.clone(),
        }
    }
}

/// Helpers, each on a thread of its own.
pub struct Pool<H> {
    slots: Mutex<Slots<H>>,
    /// Woken when a helper comes free, if someone waits (`waiting`).
    returned: Notify,
    waiting: AtomicUsize,
    build: Build<H>,
    name: &'static str,
}

struct Slots<H> {
    threads: Vec<Option<Worker<H>>>,
    /// Slots whose helper is free; the last one given back last.
    free: Vec<usize>,
}

impl<H: Send + 'static> Pool<H> {
    /// A pool of `size` helpers made by `build`, each started on a thread
    /// named `name`.
    pub fn start(size: usize, build: Build<H>, name: &'static str) -> Result<Arc<Pool<H>>, String> {
        let pool = Arc::new(Pool {
            slots: Mutex::new(Slots {
                threads: Vec::with_capacity(size),
                free: Vec::with_capacity(size),
            }),
            returned: Notify::new(),
            waiting: AtomicUsize::new(0),
            build: build.clone(),
            name,
        });
        for slot in 0..size.max(1) {
            let helper = build()?;
            let worker = spawn(helper, slot, Arc::downgrade(&pool), name)
                .map_err(|e| format!("a helper thread did not start: {e}"))?;
            pool.lock().threads.push(Some(worker));
            pool.give_back(slot);
        }
        Ok(pool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots<H>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free helper, waiting for one while all are busy.
    async fn take(&self) -> Worker<H> {
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let notified = self.returned.notified();
            {
                let mut slots = self.lock();
                while let Some(slot) = slots.free.pop() {
                    if let Some(Some(w)) = slots.threads.get(slot) {
                        w.phase.store(BUSY, Ordering::SeqCst);
                        return w.clone();
                    }
                }
                // Counted under the lock: a helper given back after this
                // look sees it and wakes us.
                if waiting.is_none() {
                    waiting = Some(Waiting::start(&self.waiting));
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

    /// Runs `job` on a free helper and waits for its answer, up to
    /// `deadline` (waiting for a free helper included). Past it, the
    /// helper is abandoned, and so it is if this future is dropped first.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
        job: impl FnOnce(&H) -> T + Send + 'static,
    ) -> Result<T, Late> {
        let worker = tokio::time::timeout_at(deadline, self.take())
            .await
            .map_err(|_| Late::NoHelper)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        worker.jobs.put(Box::new(move |helper: &H| {
            let _ = tx.send(job(helper));
        }));
        // Gives up on the helper if this future goes before the answer.
        let mut watching = Watching {
            pool: self,
            worker: Some(worker),
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => {
                watching.worker = None;
                Ok(answer)
            }
            Ok(Err(_)) => {
                watching.worker = None;
                Err(Late::Gone)
            }
            Err(_) => Err(Late::Stuck),
        }
    }

    /// Gives up on the work `worker` is doing. False if it ended first
    /// (the helper went back to the pool as usual).
    fn abandon(self: &Arc<Self>, worker: &Worker<H>) -> bool {
        let replace = STUCK.fetch_add(1, Ordering::SeqCst) < MAX_STUCK;
        let phase = if replace {
            ABANDONED
        } else {
            ABANDONED_UNREPLACED
        };
        if worker
            .phase
            .compare_exchange(BUSY, phase, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            STUCK.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        // What it still runs, it runs behind every other thread of the
        // node: a stuck helper costs the node its idle time only.
        let tid = worker.tid.load(Ordering::SeqCst);
        if tid != 0 {
            // SAFETY: a plain system call on a thread of this process.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) };
        }
        if let Some(t) = self.lock().threads.get_mut(worker.slot) {
            *t = None;
        }
        tracing::error!(
            target: "kiln::policy",
            helper = self.name,
            stuck = STUCK.load(Ordering::Relaxed),
            replaced = replace,
            "work Lua cannot interrupt ran past its deadline; its helper is abandoned"
        );
        if replace {
            let (pool, slot, name) = (Arc::downgrade(self), worker.slot, self.name);
            let built = std::thread::Builder::new()
                .name(format!("{name}-build"))
                .spawn(move || rebuild(pool, slot));
            if let Err(e) = built {
                tracing::error!(target: "kiln::policy", error = %e, "no thread to build a helper on");
            }
        }
        true
    }
}

/// One caller counted as waiting for a free slot (of a pool of Lua
/// states or of helpers), for as long as it lives: the pool wakes a
/// waiter only when there is one.
pub(super) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub(super) fn start(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why work handed to a helper gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// No helper came free before the deadline.
    NoHelper,
    /// The helper was still at it at the deadline: abandoned.
    Stuck,
    /// The helper's thread ended without an answer.
    Gone,
}

/// The helper a `run` waits for, abandoned if the wait ends without an
/// answer (its deadline, or its caller dropped).
struct Watching<'a, H: Send + 'static> {
    pool: &'a Arc<Pool<H>>,
    worker: Option<Worker<H>>,
}

impl<H: Send + 'static> Drop for Watching<'_, H> {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            self.pool.abandon(&w);
        }
    }
}

impl<H> Drop for Pool<H> {
    fn drop(&mut self) {
        for w in self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .threads
            .iter()
            .flatten()
        {
            w.jobs.close();
        }
    }
}

/// Starts `helper` on a thread of its own, for `slot` of `pool`.
fn spawn<H: Send + 'static>(
    helper: H,
    slot: usize,
    pool: Weak<Pool<H>>,
    name: &'static str,
) -> std::io::Result<Worker<H>> {
    let jobs = Arc::new(Mailbox::new());
    let phase = Arc::new(AtomicU8::new(FREE));
    let tid = Arc::new(AtomicI32::new(0));
    let (mine, my_jobs, my_tid) = (phase.clone(), jobs.clone(), tid.clone());
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            my_tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
            serve(helper, &my_jobs, slot, &mine, pool)
        })?;
    Ok(Worker {
        slot,
        jobs,
        phase,
        tid,
    })
}

/// A helper's thread: one job at a time, given back to the pool after
/// each, until the pool is gone or the helper is abandoned.
fn serve<H: Send + 'static>(
    helper: H,
    jobs: &Mailbox<H>,
    slot: usize,
    phase: &AtomicU8,
    pool: Weak<Pool<H>>,
) {
    while let Some(job) = jobs.take() {
        job(&helper);
        match phase.compare_exchange(BUSY, FREE, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => match pool.upgrade() {
                Some(p) => p.give_back(slot),
                None => return,
            },
            Err(was) => {
                STUCK.fetch_sub(1, Ordering::SeqCst);
                drop(helper);
                if was == ABANDONED_UNREPLACED {
                    rebuild(pool, slot);
                }
                return;
            }
        }
    }
}

/// Builds a fresh helper for `slot` of `pool` (if the pool is still in
/// use) and starts it there.
fn rebuild<H: Send + 'static>(pool: Weak<Pool<H>>, slot: usize) {
    let Some(p) = pool.upgrade() else { return };
    let (build, name) = (p.build.clone(), p.name);
    drop(p);
    let helper = match build() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(target: "kiln::policy", helper = name, error = %e, "a helper to replace an abandoned one was not made");
            return;
        }
    };
    match spawn(helper, slot, pool.clone(), name) {
        Ok(worker) => {
            if let Some(p) = pool.upgrade() {
                if let Some(t) = p.lock().threads.get_mut(slot) {
                    *t = Some(worker);
                }
                p.give_back(slot);
            }
        }
        Err(e) => {
            tracing::error!(target: "kiln::policy", error = %e, "a helper thread did not start")
        }
    }
}
