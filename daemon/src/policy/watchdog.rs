//! Stops runaway hook calls without slowing down the calls that are not.
//!
//! Lua 5.4 runs every instruction through its hook dispatcher for as long
//! as a count hook is set: on the hooks that run for every message that was
//! a sixth of the policy's cost. So a call runs without one, and a watchdog
//! thread marks a call overdue once it has run for [`GRACE_MS`]. From then
//! on the call has the count hook, which stops it at its instruction budget
//! or its deadline, with the file and line it was at.
//!
//! The hook is set on the Lua thread that runs the call, by that OS thread:
//! when the call is next polled, or, if it is running (a loop), from a
//! signal handler that interrupts it there. That is how Lua's own `lua`
//! interpreter stops a script on Ctrl-C: `lua_sethook` is meant to be
//! called asynchronously from a signal handler on the thread that runs the
//! code, and a loop picks the hook up at its next jump. Coroutines a script
//! makes get the hook when they are made (see `watch_coroutine`): they
//! are rare, and the call's own hook cannot reach them.

/// Milliseconds on a monotonic clock of this process: a call's deadline
/// must not move when Kiln's clock does (a test clock's jump).
fn now_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}
use mlua::ffi;
use std::cell::Cell;
use std::ffi::CStr;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

/// How long a call runs unwatched. Hooks take microseconds; one that is
/// still running after this is slow enough that counting its instructions
/// costs nothing that matters.
pub const GRACE_MS: i64 = 10;

/// How often (in Lua instructions) a watched call checks its limits: often
/// enough to stop a runaway within a millisecond even when each of its
/// instructions is a long C call (a copy of a megabyte), and rarely enough
/// to cost an overdue call little.
pub const HOOK_EVERY: i32 = 1_000;

/// How often the watchdog looks, while calls run and while none does.
const TICK: Duration = Duration::from_millis(GRACE_MS as u64);
const IDLE_TICK: Duration = Duration::from_millis(100);

/// Interrupts a thread that runs an overdue call. Ignored by default, so a
/// late one (the call has ended) does nothing.
const SIGNAL: i32 = libc::SIGURG;

/// One Lua state's calls, as the watchdog sees them.
pub struct Watch {
    /// When the running call started (ms since the epoch); 0: none runs.
    started_ms: AtomicI64,
    /// The watchdog found the running call past its grace period.
    overdue: AtomicBool,
    /// The count hook is set on `state`.
    hooked: AtomicBool,
    /// The OS thread polling the call now (its kernel thread id); 0: none.
    thread: AtomicI32,
    /// The Lua thread the calls run on.
    state: AtomicPtr<ffi::lua_State>,
    budget: Budget,
}

/// What a call (or loading the scripts) may still run: instructions, and
/// until when.
pub struct Budget {
    instructions_left: AtomicI64,
    deadline_ms: AtomicI64,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            instructions_left: AtomicI64::new(i64::MAX),
            deadline_ms: AtomicI64::new(i64::MAX),
        }
    }
}

impl Budget {
    /// Sets the limits for what runs next.
    pub fn arm(&self, max_instructions: i64, timeout: Duration) {
        self.instructions_left
            .store(max_instructions, Ordering::Relaxed);
        self.deadline_ms
            .store(now_ms() + timeout.as_millis() as i64, Ordering::Relaxed);
    }

    /// Counts `HOOK_EVERY` instructions against the budget; the error a
    /// call ends with when it is over a limit.
    pub fn spend(&self) -> Option<&'static CStr> {
        let left = self
            .instructions_left
            .fetch_sub(HOOK_EVERY as i64, Ordering::Relaxed)
            - HOOK_EVERY as i64;
        if left < 0 {
            Some(c"instruction limit exceeded")
        } else if now_ms() > self.deadline_ms.load(Ordering::Relaxed) {
            Some(c"time limit exceeded")
        } else {
            None
        }
    }
}

thread_local! {
    /// The watch of the call this OS thread is polling, for the signal
    /// handler and the count hook (a plain cell: read in a signal handler).
    static CURRENT: Cell<*const Watch> = const { Cell::new(std::ptr::null()) };
    /// This thread's kernel id, once asked.
    static TID: Cell<i32> = const { Cell::new(0) };
}

/// This OS thread's kernel id. The watchdog signals by it with tgkill,
/// which reaches only this process's threads: a thread that has ended in
/// the meantime is no one (or another of ours, which ignores the signal).
fn this_thread() -> i32 {
    TID.with(|t| {
        if t.get() == 0 {
            // SAFETY: gettid has no preconditions.
            t.set(unsafe { libc::gettid() });
        }
        t.get()
    })
}

impl Watch {
    /// A watch for calls that run on `state` (a Lua thread kept alive by
    /// the caller for as long as the watch is used).
    pub fn new(state: *mut ffi::lua_State) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            started_ms: AtomicI64::new(0),
            overdue: AtomicBool::new(false),
            hooked: AtomicBool::new(false),
            thread: AtomicI32::new(0),
            state: AtomicPtr::new(state),
            budget: Budget::default(),
        });
        watchdog().register(&watch);
        watch
    }

    /// The calls run on another Lua thread from now on.
    pub fn set_state(&self, state: *mut ffi::lua_State) {
        self.state.store(state, Ordering::SeqCst);
    }

    /// Runs `call` (a hook call on this watch's Lua thread) watched, with
    /// these limits.
    pub fn run<F: Future>(
        self: &Arc<Self>,
        call: F,
        max_instructions: i64,
        timeout: Duration,
    ) -> Watched<F> {
        self.budget.arm(max_instructions, timeout);
        self.overdue.store(false, Ordering::SeqCst);
        self.started_ms.store(now_ms(), Ordering::SeqCst);
        Watched {
            watch: self.clone(),
            call,
        }
    }

    /// Sets the count hook on the call's Lua thread. Only on the OS thread
    /// that runs the call (while it polls it, or in the signal handler
    /// that interrupted it).
    fn hook(&self) {
        if !self.hooked.swap(true, Ordering::SeqCst) {
            // SAFETY: the state lives as long as the watch is used (see
            // `new`); this OS thread is the one running it.
            unsafe {
                ffi::lua_sethook(
                    self.state.load(Ordering::SeqCst),
                    Some(count_hook),
                    ffi::LUA_MASKCOUNT,
                    HOOK_EVERY,
                );
            }
        }
    }

    /// The call ended (or was dropped): late signals do nothing, and the
    /// Lua thread runs the next call without the hook.
    fn end(&self) {
        self.started_ms.store(0, Ordering::SeqCst);
        self.overdue.store(false, Ordering::SeqCst);
        if self.hooked.swap(false, Ordering::SeqCst) {
            // SAFETY: as in `hook`; the call is over.
            unsafe { ffi::lua_sethook(self.state.load(Ordering::SeqCst), None, 0, 0) };
        }
    }
}

/// A watched hook call: see [`Watch::run`].
pub struct Watched<F> {
    watch: Arc<Watch>,
    call: F,
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `call` is never moved out of the pinned Watched.
        let this = unsafe { self.get_unchecked_mut() };
        let watch: &Watch = &this.watch;
        let outer = CURRENT.with(|c| c.replace(watch));
        watch.thread.store(this_thread(), Ordering::SeqCst);
        if watch.overdue.load(Ordering::SeqCst) {
            watch.hook();
        }
        // SAFETY: pinned projection of a field that is never moved.
        let result = unsafe { Pin::new_unchecked(&mut this.call) }.poll(cx);
        watch.thread.store(0, Ordering::SeqCst);
        CURRENT.with(|c| c.set(outer));
        result
    }
}

impl<F> Drop for Watched<F> {
    fn drop(&mut self) {
        self.watch.end();
    }
}

/// Lua's count hook on a watched call: stops it over a limit, with the
/// script's file and line.
unsafe extern "C-unwind" fn count_hook(state: *mut ffi::lua_State, _: *mut ffi::lua_Debug) {
    let watch = CURRENT.with(|c| c.get());
    if watch.is_null() {
        return;
    }
    // SAFETY: CURRENT points at the watch of the call being polled on this
    // thread, which outlives the poll.
    let Some(reason) = (unsafe { &*watch }).budget.spend() else {
        return;
    };
    // SAFETY: raising a Lua error from a hook is allowed; nothing on this
    // Rust frame needs dropping. The reason is a static C string.
    unsafe {
        // Level 0 in a hook: the function that was running.
        ffi::luaL_where(state, 0);
        ffi::lua_pushstring(state, reason.as_ptr());
        ffi::lua_concat(state, 2);
        ffi::lua_error(state);
    }
}

/// Gives a coroutine a script made the count hook for its whole life.
///
/// # Safety
/// `co` is a Lua thread that is not running (just made), of a state whose
/// calls are watched.
pub unsafe fn watch_coroutine(co: *mut ffi::lua_State) {
    // SAFETY: the caller's contract: `co` is not running, so setting its
    // hook races with nothing.
    unsafe { ffi::lua_sethook(co, Some(count_hook), ffi::LUA_MASKCOUNT, HOOK_EVERY) };
}

/// The signal handler: hooks the overdue call this thread is running.
extern "C" fn on_signal(_: libc::c_int) {
    let watch = CURRENT.with(|c| c.get());
    if watch.is_null() {
        return;
    }
    // SAFETY: as in `count_hook`.
    let watch = unsafe { &*watch };
    if watch.overdue.load(Ordering::SeqCst) {
        watch.hook();
    }
}

struct Watchdog {
    watches: Mutex<Vec<Weak<Watch>>>,
}

fn watchdog() -> &'static Watchdog {
    static DOG: OnceLock<Watchdog> = OnceLock::new();
    DOG.get_or_init(|| {
        // SAFETY: installs a handler that only reads a thread-local cell
        // and atomics, and calls lua_sethook, which Lua allows in one.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(SIGNAL, &action, std::ptr::null_mut()) != 0 {
                tracing::error!(
                    "policy watchdog: no signal handler; a runaway loop is stopped only between polls"
                );
            }
        }
        let spawned = std::thread::Builder::new()
            .name("kiln-lua-watch".into())
            .spawn(|| watchdog().run());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "policy watchdog did not start");
        }
        Watchdog {
            watches: Mutex::new(Vec::new()),
        }
    })
}

impl Watchdog {
    fn register(&self, watch: &Arc<Watch>) {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches.retain(|w| w.strong_count() > 0);
        watches.push(Arc::downgrade(watch));
    }

    fn run(&self) {
        let mut tick = IDLE_TICK;
        loop {
            std::thread::sleep(tick);
            let now = now_ms();
            let mut running = false;
            let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
            for watch in watches.iter().filter_map(Weak::upgrade) {
                let started = watch.started_ms.load(Ordering::SeqCst);
                if started == 0 {
                    continue;
                }
                running = true;
                if now - started < GRACE_MS {
                    continue;
                }
                watch.overdue.store(true, Ordering::SeqCst);
                // Until the hook is set: signal the thread running the
                // call, if one is (else its next poll sets it).
                let thread = watch.thread.load(Ordering::SeqCst);
                if thread != 0 && !watch.hooked.load(Ordering::SeqCst) {
                    // SAFETY: a plain system call; see `this_thread`.
                    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), thread, SIGNAL) };
                }
            }
            tick = if running { TICK } else { IDLE_TICK };
        }
    }
}
