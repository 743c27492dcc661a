//! One sandboxed Lua state with the `kiln` API, the plugins and the
//! operator's policy loaded, and the hook functions they define.
//!
//! The sandbox keeps the string, table, math, utf8 and coroutine libraries
//! and the safe part of the base library; there is no `io`, `os`, `debug`,
//! `package`, `load`, `loadfile`, `dofile` or `string.dump`. Modules come from
//! the plugin directory through our own `require`, read-only. Every call runs
//! under an instruction budget and a deadline (checked every 1,000
//! instructions once it has run 10 ms) and the state under a memory limit,
//! and the library functions whose C loops run as long as their arguments
//! say are bounded (`BOUNDED_BUILTINS`, `patterns`), so a runaway script
//! ends in an error instead of holding up the node.

use super::decisions::{HookAnswer, HookArg};
use super::lua_raw::ArgSlot;
use super::watchdog::{Budget, HOOK_EVERY, Watch};
use super::{HOOKS, PLUGINS, PolicyError, PolicySettings};
use crate::store::{BatchOp, Store};
use mlua::chunk::ChunkMode;
use mlua::{
    Function, HookTriggers, Lua, LuaOptions, LuaSerdeExt, StdLib, Table, Thread, Value, VmState,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Keys and sets that scripts touch live under this prefix in the store.
const NAMESPACE: &str = "lua:";

/// The default plugins, built in: used when the plugin directory has no file
/// of that name, so `kiln serve` works from any directory.
fn builtin_plugin(name: &str) -> Option<&'static str> {
    Some(match name {
        "limits" => include_str!("../../../plugins/limits.lua"),
        "reputation" => include_str!("../../../plugins/reputation.lua"),
        "warmup" => include_str!("../../../plugins/warmup.lua"),
        "content_filter" => include_str!("../../../plugins/content_filter.lua"),
        "bounces" => include_str!("../../../plugins/bounces.lua"),
        "egress" => include_str!("../../../plugins/egress.lua"),
        "callbacks" => include_str!("../../../plugins/callbacks.lua"),
        "callbacks/tencent" => include_str!("../../../plugins/callbacks/tencent.lua"),
        "callbacks/generic" => include_str!("../../../plugins/callbacks/generic.lua"),
        _ => return None,
    })
}

pub struct LuaHost {
    lua: Lua,
    /// The Lua thread every hook call runs on (a state runs one call at a
    /// time), and what stops a call that runs away on it.
    call_thread: std::sync::Mutex<Thread>,
    watch: Arc<Watch>,
    /// By position in `HOOKS`.
    hooks: Vec<Option<Function>>,
    /// The argument table each hook was last called with (see
    /// `HookArg::to_lua_in`), by position in `HOOKS`.
    args: std::sync::Mutex<Vec<Option<ArgSlot>>>,
    /// Hooks a plugin declared for some kinds of item only (`M.only`), e.g.
    /// template review: not called for other kinds, which saves a call per
    /// message. A hook the policy defines has no such restriction.
    only: HashMap<&'static str, Vec<String>>,
    max_instructions: i64,
    timeout: Duration,
}

fn lua_err(e: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::RuntimeError(e.to_string())
}

impl LuaHost {
    pub fn new(settings: &PolicySettings, store: Store) -> Result<LuaHost, PolicyError> {
        let load_err = |e: mlua::Error| PolicyError::Load(load_message(&e));
        let lua = Lua::new_with(
            StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE,
            // Every hook call runs in a coroutine (scripts may wait on the
            // store): reuse them rather than make one per call.
            LuaOptions::new().thread_pool_size(16),
        )
        .map_err(load_err)?;
        let memory_limit = memory_limit(settings);
        lua.set_memory_limit(memory_limit).map_err(load_err)?;
        // Hooks make short-lived tables and strings: the generational
        // collector handles those cheaply.
        lua.gc_set_mode(mlua::state::GcMode::Generational(
            mlua::state::GcGenParams::default(),
        ));
        // Loading runs scripts too, on the main thread: under the same
        // limits, counted from the start (the hook comes off afterwards).
        let budget = Arc::new(Budget::default());
        budget.arm(settings.max_instructions as i64, settings.timeout);
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY as u32),
            move |_, _| match budget.spend() {
                Some(reason) => Err(lua_err(reason.to_string_lossy())),
                None => Ok(VmState::Continue),
            },
        )
        .map_err(load_err)?;
        sandbox(&lua).map_err(load_err)?;
        super::patterns::install(&lua, memory_limit.saturating_mul(2), settings.timeout)
            .map_err(load_err)?;
        install_api(&lua, settings, store).map_err(load_err)?;
        install_require(&lua, settings.plugins_dir.clone()).map_err(load_err)?;

        let (hooks, only) = Self::load_hooks(&lua, settings)?;
        lua.remove_hook();
        // Made after the loading hook is off: a new Lua thread inherits it.
        let noop = lua.create_function(|_, ()| Ok(())).map_err(load_err)?;
        let call_thread = lua.create_thread(noop).map_err(load_err)?;
        let watch = Watch::new(call_thread.state());
        Ok(LuaHost {
            lua,
            call_thread: std::sync::Mutex::new(call_thread),
            watch,
            hooks,
            args: std::sync::Mutex::new(HOOKS.iter().map(|_| None).collect()),
            only,
            max_instructions: settings.max_instructions as i64,
            timeout: settings.timeout,
        })
    }

    /// Plugins first (unless the policy disables them), then the policy's
    /// own hooks over them; the result is also `kiln.hooks`, so one hook
    /// may call another (the limits plugin asks `warmup_limit`).
    #[allow(clippy::type_complexity)]
    fn load_hooks(
        lua: &Lua,
        settings: &PolicySettings,
    ) -> Result<(Vec<Option<Function>>, HashMap<&'static str, Vec<String>>), PolicyError> {
        let load_err = |e: mlua::Error| PolicyError::Load(load_message(&e));
        let policy: Table = match std::fs::read_to_string(&settings.script) {
            Ok(source) => lua
                .load(source)
                .set_name(format!("@{}", settings.script.display()))
                .set_mode(ChunkMode::Text)
                .eval::<Option<Table>>()
                .map_err(load_err)?
                .map_or_else(|| lua.create_table(), Ok)
                .map_err(load_err)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                lua.create_table().map_err(load_err)?
            }
            Err(e) => {
                return Err(PolicyError::Load(format!(
                    "{}: {e}",
                    settings.script.display()
                )));
            }
        };
        let script = settings.script.display().to_string();
        // What a policy script may hold: a misspelt part is no silent no-op.
        for pair in policy.pairs::<Value, Value>() {
            let (key, _) = pair.map_err(load_err)?;
            let known = matches!(&key, Value::String(k) if ["config", "disable", "hooks"].contains(&&*k.to_string_lossy()));
            if !known {
                return Err(PolicyError::Load(format!(
                    "{script}: {key:?} is not part of a policy (it returns a table of config, disable and hooks)"
                )));
            }
        }
        let kiln: Table = lua.globals().get("kiln").map_err(load_err)?;
        // Plugin settings from the policy, before any plugin loads.
        let config = match policy.get::<Option<Table>>("config").map_err(load_err)? {
            Some(t) => t,
            None => lua.create_table().map_err(load_err)?,
        };
        kiln.set("_config", config.clone()).map_err(load_err)?;

        let mut disabled = Vec::new();
        if let Some(list) = policy.get::<Option<Table>>("disable").map_err(load_err)? {
            for name in list.sequence_values::<String>() {
                let name = name.map_err(load_err)?;
                if !PLUGINS.contains(&name.as_str()) {
                    return Err(PolicyError::Load(format!(
                        "{}: disable: unknown plugin {name:?} (plugins: {})",
                        settings.script.display(),
                        PLUGINS.join(", ")
                    )));
                }
                disabled.push(name);
            }
        }
        let hooks_table = lua.create_table().map_err(load_err)?;
        kiln.set("hooks", hooks_table.clone()).map_err(load_err)?;
        let mut only: HashMap<&'static str, Vec<String>> = HashMap::new();
        let require: Function = lua.globals().get("require").map_err(load_err)?;
        for plugin in PLUGINS {
            if disabled.iter().any(|d| d == plugin) {
                continue;
            }
            let module: Table = require.call(*plugin).map_err(load_err)?;
            if let Some(hooks) = module.get::<Option<Table>>("hooks").map_err(load_err)? {
                for name in copy_hooks(&hooks, &hooks_table, &format!("plugin {plugin}"))? {
                    only.remove(name);
                }
            }
            if let Some(table) = module.get::<Option<Table>>("only").map_err(load_err)? {
                for pair in table.pairs::<String, Vec<String>>() {
                    let (hook, kinds) = pair.map_err(load_err)?;
                    if let Some(h) = HOOKS.iter().find(|h| **h == hook) {
                        only.insert(*h, kinds);
                    }
                }
            }
        }
        super::plugin_settings::check_plugins_named(lua, &config, &disabled, &script)
            .map_err(PolicyError::Load)?;
        if let Some(hooks) = policy.get::<Option<Table>>("hooks").map_err(load_err)? {
            for name in copy_hooks(&hooks, &hooks_table, &script)? {
                only.remove(name);
            }
        }
        let mut out = Vec::with_capacity(HOOKS.len());
        for hook in HOOKS {
            out.push(
                hooks_table
                    .get::<Option<Function>>(*hook)
                    .map_err(load_err)?,
            );
        }
        Ok((out, only))
    }

    /// Whether this state's scripts define each hook, by position in `HOOKS`.
    pub fn defined(&self) -> Vec<bool> {
        self.hooks.iter().map(Option::is_some).collect()
    }

    /// Hooks a plugin declared for some kinds of item only.
    pub fn kind_restrictions(&self) -> &HashMap<&'static str, Vec<String>> {
        &self.only
    }

    /// Calls `hook` with one argument; `Ok(None)` when no script defines it.
    pub async fn call<A, R>(&self, hook: &'static str, arg: &A) -> Result<Option<R>, PolicyError>
    where
        A: HookArg + ?Sized,
        R: HookAnswer,
    {
        match super::hook_index(hook) {
            Some(at) => self.call_at(at, hook, arg).await,
            None => Ok(None),
        }
    }

    /// `call` of the hook at `at` in `HOOKS` (its name is for errors).
    pub async fn call_at<A, R>(
        &self,
        at: usize,
        hook: &'static str,
        arg: &A,
    ) -> Result<Option<R>, PolicyError>
    where
        A: HookArg + ?Sized,
        R: HookAnswer,
    {
        let Some(Some(f)) = self.hooks.get(at) else {
            return Ok(None);
        };
        let script_err = |e: mlua::Error| PolicyError::Script {
            hook,
            message: first_line(&e.to_string()),
        };
        // Kiln builds the argument and reads the answer mostly through the C
        // API, inside one protected call, so the memory limit can stay on:
        // only the few values made through mlua (the header view) pay a
        // protected call for it, and a state at its limit fails here as its
        // script would.
        let arg = {
            let mut slots = self.args.lock().unwrap_or_else(|p| p.into_inner());
            match slots.get_mut(at) {
                Some(slot) => arg.to_lua_in(&self.lua, slot),
                None => arg.to_lua(&self.lua),
            }
        }
        .map_err(script_err)?;
        let value = match self.run(f, arg).await {
            Ok(v) => v,
            Err(Run::Script(e)) => {
                // A call that ran out of memory leaves its garbage: collect
                // it now, not at the next call's expense.
                if matches!(e, mlua::Error::MemoryError(_)) {
                    let _ = self.lua.gc_collect();
                }
                return Err(script_err(e));
            }
            Err(Run::Waited) => {
                return Err(PolicyError::Script {
                    hook,
                    message: "time limit exceeded (waiting on the store)".into(),
                });
            }
        };
        if value.is_nil() {
            return Ok(None);
        }
        // An answer not understood is a failure of the hook, reported at
        // the function that gave it.
        let bad = |e: String| {
            let info = f.info();
            let at = match (info.short_src, info.line_defined) {
                (Some(src), Some(line)) => format!("{src}:{line}: "),
                _ => String::new(),
            };
            PolicyError::Script {
                hook,
                message: format!("{at}bad return value: {e}"),
            }
        };
        let answer = R::from_lua(&self.lua, value).map_err(|e| bad(first_line(&e.to_string())))?;
        answer.check_for(hook).map_err(bad)?;
        Ok(Some(answer))
    }

    /// Runs `f(arg)` on the call thread, watched, under the call limits.
    async fn run(&self, f: &Function, arg: Value) -> Result<Value, Run> {
        let thread = {
            let mut kept = self.call_thread.lock().unwrap_or_else(|p| p.into_inner());
            // A thread a call left in error does not reset: a new one.
            if kept.reset(f.clone()).is_err() {
                *kept = self.lua.create_thread(f.clone()).map_err(Run::Script)?;
                self.watch.set_state(kept.state());
            }
            kept.clone()
        };
        let call = thread.into_async::<Value>(arg).map_err(Run::Script)?;
        // A hook that never waits (the embedded store answers at once) is
        // done at its first poll, under the watchdog's deadline: a timer for
        // it would cost more than many hooks do. Only a hook that waits gets
        // one.
        let mut running = std::pin::pin!(self.watch.run(call, self.max_instructions, self.timeout));
        match futures::poll!(running.as_mut()) {
            std::task::Poll::Ready(r) => r.map_err(Run::Script),
            std::task::Poll::Pending => {
                match tokio::time::timeout(self.timeout + Duration::from_millis(100), running).await
                {
                    Ok(r) => r.map_err(Run::Script),
                    Err(_) => Err(Run::Waited),
                }
            }
        }
    }
}

/// How a call did not end in a value.
enum Run {
    Script(mlua::Error),
    /// It waited on the store past its deadline.
    Waited,
}

#[cfg(test)]
impl LuaHost {
    /// Runs a chunk under the same limits as a hook; for tests.
    pub async fn eval(&self, code: &str) -> Result<serde_json::Value, String> {
        let f = self
            .lua
            .load(code)
            .set_name("=test")
            .into_function()
            .map_err(|e| e.to_string())?;
        let v = match self.run(&f, Value::Nil).await {
            Ok(v) => v,
            Err(Run::Script(e)) => return Err(e.to_string()),
            Err(Run::Waited) => return Err("time limit exceeded (waiting)".into()),
        };
        self.lua.from_value(v).map_err(|e| e.to_string())
    }
}

/// What a script that did not load says: its first line (file, line and
/// message), without mlua's wrapping or Lua's traceback.
fn load_message(e: &mlua::Error) -> String {
    let text = match e {
        mlua::Error::CallbackError { cause, .. } => return load_message(cause),
        mlua::Error::RuntimeError(m) | mlua::Error::SyntaxError { message: m, .. } => m.clone(),
        other => other.to_string(),
    };
    first_line(text.strip_prefix("runtime error: ").unwrap_or(&text))
}

/// The error line with its file and line, without the traceback.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or(text).trim().to_string()
}

/// Copies hook functions; returns the names of the hooks it set or cleared.
fn copy_hooks(from: &Table, to: &Table, origin: &str) -> Result<Vec<&'static str>, PolicyError> {
    let mut names = Vec::new();
    for pair in from.pairs::<String, Value>() {
        let (name, value) = pair.map_err(|e| PolicyError::Load(load_message(&e)))?;
        let Some(known) = HOOKS.iter().find(|h| **h == name) else {
            return Err(PolicyError::Load(format!(
                "{origin}: hooks: unknown hook {name:?} (hooks: {})",
                HOOKS.join(", ")
            )));
        };
        names.push(*known);
        match value {
            // `false` switches a hook off, back to the built-in behaviour.
            Value::Boolean(false) => to.set(name, Value::Nil),
            Value::Function(_) => to.set(name, value),
            other => {
                return Err(PolicyError::Load(format!(
                    "{origin}: hooks.{name}: expected a function or false, got {}",
                    other.type_name()
                )));
            }
        }
        .map_err(|e| PolicyError::Load(e.to_string()))?;
    }
    Ok(names)
}

/// `coroutine.create` and `coroutine.wrap` that hand every new coroutine
/// to the function they are given (the watchdog's).
const WATCHED_COROUTINES: &str = r#"
local watch = ...
local create, resume, close = coroutine.create, coroutine.resume, coroutine.close
coroutine.create = function(f) return watch(create(f)) end
local function unwrap(co, ok, ...)
  if ok then return ... end
  local err = ...
  close(co)
  error(err, 0)
end
coroutine.wrap = function(f)
  local co = coroutine.create(f)
  return function(...) return unwrap(co, resume(co, ...)) end
end
"#;

/// The library functions whose C loops run as long as their arguments say,
/// bounded: the watchdog cannot stop a C function, and hooks run on the
/// async workers. (`string.rep("", 2^60)` copied nothing 2^60 times;
/// `table.move` walks every index it is given; `table.sort` sorts in C;
/// a `__gc` finalizer runs with the count hook off.) The pattern functions
/// are bounded in `patterns`.
const BOUNDED_BUILTINS: &str = r#"
local rep, move, sort, setmt, tointeger = string.rep, table.move, table.sort, setmetatable, math.tointeger
local MOVE_MAX, SORT_MAX = 1 << 24, 1 << 21
string.rep = function(s, n, sep)
  if s == "" and (sep == nil or sep == "") and tointeger(n) then return "" end
  return rep(s, n, sep)
end
table.move = function(a1, f, e, t, a2)
  if type(f) == "number" and type(e) == "number" and e - f >= MOVE_MAX then
    error("table.move: more than " .. MOVE_MAX .. " elements", 2)
  end
  return move(a1, f, e, t, a2)
end
table.sort = function(t, comp)
  if type(t) == "table" and #t > SORT_MAX then
    error("table.sort: more than " .. SORT_MAX .. " elements", 2)
  end
  return sort(t, comp)
end
setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("setmetatable: __gc finalizers are not available to policy scripts", 2)
  end
  return setmt(t, mt)
end
"#;

fn sandbox(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    for name in ["dofile", "loadfile", "load", "collectgarbage", "require"] {
        g.set(name, Value::Nil)?;
    }
    let string: Table = g.get("string")?;
    string.set("dump", Value::Nil)?;
    // Coroutines a script makes carry the count hook for their whole life:
    // the watchdog stops runaway calls through the call's own Lua thread,
    // which does not reach into them (see `watchdog`).
    let watch = lua.create_function(|_, co: Thread| {
        // SAFETY: a coroutine just made by `coroutine.create`, not running.
        unsafe { super::watchdog::watch_coroutine(co.state()) };
        Ok(co)
    })?;
    lua.load(WATCHED_COROUTINES)
        .set_name("=sandbox")
        .call::<()>(watch)?;
    lua.load(BOUNDED_BUILTINS).set_name("=sandbox").exec()?;
    // `print` goes to the log like kiln.log.info.
    g.set(
        "print",
        lua.create_function(|lua, args: mlua::Variadic<Value>| {
            let text: Vec<String> = args
                .iter()
                .map(|v| v.to_string().unwrap_or_else(|_| "?".into()))
                .collect();
            tracing::info!(target: "kiln::policy", script = %caller(lua), "{}", text.join("\t"));
            Ok(())
        })?,
    )?;
    Ok(())
}

/// `file:line` of the Lua code that called into Rust.
fn caller(lua: &Lua) -> String {
    lua.inspect_stack(1, |d| {
        let src = d.source();
        format!(
            "{}:{}",
            src.short_src.as_deref().unwrap_or("?"),
            d.current_line().unwrap_or(0)
        )
    })
    .unwrap_or_default()
}

/// `require(name)`: a module from the plugin directory (or the built-in
/// copy), run once per state and cached. Names are plain words and slashes:
/// no way out of the directory.
fn install_require(lua: &Lua, dir: PathBuf) -> mlua::Result<()> {
    let cache = lua.create_table()?;
    let require = lua.create_function(move |lua, name: String| {
        if let Some(m) = cache.get::<Option<Value>>(name.as_str())? {
            return Ok(m);
        }
        let valid = !name.is_empty()
            && name
                .split('/')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !valid {
            return Err(lua_err(format!("require: bad module name {name:?}")));
        }
        let path: PathBuf = dir.join(format!("{name}.lua"));
        let (source, chunk_name) = match std::fs::read_to_string(&path) {
            Ok(s) => (s, format!("@{}", path.display())),
            Err(_) => match builtin_plugin(&name) {
                Some(s) => (s.to_string(), format!("@plugins/{name}.lua (built in)")),
                None => {
                    return Err(lua_err(format!(
                        "require: no module {name:?} in {}",
                        dir.display()
                    )));
                }
            },
        };
        let value: Value = lua
            .load(source)
            .set_name(chunk_name)
            .set_mode(ChunkMode::Text)
            .eval()?;
        let value = if value.is_nil() {
            Value::Boolean(true)
        } else {
            value
        };
        cache.set(name.as_str(), value.clone())?;
        Ok(value)
    })?;
    lua.globals().set("require", require)
}

/// `kiln.<name>([ms])`: a calendar computation in the policy's zone, on
/// the given instant or now.
fn zone_fn<R: mlua::IntoLua + 'static>(
    lua: &Lua,
    tz: &jiff::tz::TimeZone,
    clock: &crate::clock::Clock,
    f: fn(&jiff::tz::TimeZone, i64) -> Result<R, jiff::Error>,
) -> mlua::Result<Function> {
    let (tz, clock) = (tz.clone(), clock.clone());
    lua.create_function(move |_, ms: Option<i64>| {
        f(&tz, ms.unwrap_or_else(|| clock.now_ms())).map_err(lua_err)
    })
}

/// A script's key or set name in the store: under the scripts' own prefix
/// (`kiln.batch` hands the prefix to the store with borrowed keys instead).
pub fn ns(key: &str) -> String {
    crate::store::prefixed(NAMESPACE, key)
}

/// `kiln.batch`'s second argument: how old, in milliseconds, an answer to a
/// read may be (none: exact).
fn read_age(ms: Option<f64>) -> mlua::Result<Duration> {
    let most = crate::store::read_cache::MAX_AGE.as_millis() as f64;
    match ms {
        None => Ok(Duration::ZERO),
        Some(ms) if (0.0..=most).contains(&ms) => Ok(Duration::from_micros((ms * 1000.0) as u64)),
        Some(_) => Err(mlua::Error::RuntimeError(format!(
            "batch: the age of an answer must be from 0 to {most} milliseconds"
        ))),
    }
}

/// `kiln.batch`'s arguments: its operations, and how old an answer to a
/// read may be.
fn batch_args<'t>(
    lua: &Lua,
    ops: &'t Table,
    age: Option<f64>,
) -> mlua::Result<(Vec<crate::store::OpRef<'t>>, Duration)> {
    let age = read_age(age)?;
    Ok((super::lua_raw::batch_op_refs(lua, ops, ttl)?, age))
}

fn memory_limit(settings: &PolicySettings) -> usize {
    settings.max_memory_mb.saturating_mul(1024 * 1024).max(1)
}

/// An async Lua function over the store; `f` gets its own store handle.
fn store_fn<A, R, F, Fut>(lua: &Lua, store: &Store, f: F) -> mlua::Result<Function>
where
    A: mlua::FromLuaMulti + mlua::MaybeSend + 'static,
    R: mlua::IntoLuaMulti + 'static,
    F: Fn(Lua, Store, A) -> Fut + mlua::MaybeSend + 'static,
    Fut: std::future::Future<Output = mlua::Result<R>> + mlua::MaybeSend + 'static,
{
    let store = store.clone();
    lua.create_async_function(move |lua, args: A| f(lua, store.clone(), args))
}

/// A script's TTL in seconds: positive and finite, at most ten years
/// (anything a script passes must not be able to overflow a deadline).
fn ttl(secs: Option<f64>) -> Option<Duration> {
    const MAX: f64 = 10.0 * 365.0 * 86_400.0;
    secs.filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s.min(MAX)).ok())
}

fn install_api(lua: &Lua, settings: &PolicySettings, store: Store) -> mlua::Result<()> {
    let kiln = lua.create_table()?;
    install_time(lua, &kiln, settings, &store)?;
    install_text(lua, &kiln)?;
    super::plugin_settings::install(lua, &kiln, settings.script.display().to_string())?;
    super::lua_data::install(lua, &kiln, settings.plugins_dir.clone())?;
    kiln.set(
        "config",
        lua.create_function(|lua, name: String| {
            let kiln: Table = lua.globals().get("kiln")?;
            let all: Table = kiln.get("_config")?;
            match all.get::<Option<Table>>(name)? {
                Some(t) => Ok(t),
                None => lua.create_table(),
            }
        })?,
    )?;
    install_store(lua, &kiln, store)?;
    lua.globals().set("kiln", kiln)
}

/// `kiln.now`, `kiln.day` and the other days as the policy counts them.
fn install_time(
    lua: &Lua,
    kiln: &Table,
    settings: &PolicySettings,
    store: &Store,
) -> mlua::Result<()> {
    let tz = settings.time_zone.clone();
    let clock = store.clock().clone();
    let now_clock = clock.clone();
    kiln.set(
        "now",
        lua.create_function(move |_, ()| Ok(now_clock.now_ms()))?,
    )?;
    kiln.set("day", zone_fn(lua, &tz, &clock, super::time::day)?)?;
    kiln.set(
        "day_start",
        zone_fn(lua, &tz, &clock, super::time::day_start)?,
    )?;
    kiln.set(
        "next_day_start",
        zone_fn(lua, &tz, &clock, super::time::next_day_start)?,
    )?;
    kiln.set(
        "days_between",
        lua.create_function(|_, (a, b): (String, String)| {
            super::time::days_between(&a, &b).map_err(lua_err)
        })?,
    )?;
    Ok(())
}

/// `kiln.log`, `kiln.json`, `kiln.html_text`.
fn install_text(lua: &Lua, kiln: &Table) -> mlua::Result<()> {
    let log = lua.create_table()?;
    for level in ["debug", "info", "warn", "error"] {
        log.set(
            level,
            lua.create_function(move |lua, text: String| {
                let script = caller(lua);
                match level {
                    "debug" => tracing::debug!(target: "kiln::policy", %script, "{text}"),
                    "info" => tracing::info!(target: "kiln::policy", %script, "{text}"),
                    "warn" => tracing::warn!(target: "kiln::policy", %script, "{text}"),
                    _ => tracing::error!(target: "kiln::policy", %script, "{text}"),
                }
                Ok(())
            })?,
        )?;
    }
    kiln.set("log", log)?;

    let json = lua.create_table()?;
    json.set(
        "encode",
        lua.create_function(|lua, v: Value| {
            let j: serde_json::Value = lua.from_value(v)?;
            serde_json::to_string(&j).map_err(lua_err)
        })?,
    )?;
    json.set(
        "decode",
        lua.create_function(|lua, s: String| {
            let j: serde_json::Value = serde_json::from_str(&s).map_err(lua_err)?;
            lua.to_value(&j)
        })?,
    )?;
    kiln.set("json", json)?;
    // Lua patterns backtrack (`<[^>]*>` over an unclosed tag is quadratic,
    // inside one C call the watchdog cannot stop): HTML is read here, in
    // one linear pass.
    kiln.set(
        "html_text",
        lua.create_function(|_, html: mlua::LuaString| {
            Ok(crate::message::html_text(&html.to_string_lossy()))
        })?,
    )?;
    Ok(())
}

/// `kiln.counter`, `kiln.kv`, `kiln.set` and `kiln.batch`: the store.
fn install_store(lua: &Lua, kiln: &Table, store: Store) -> mlua::Result<()> {
    let counter = lua.create_table()?;
    counter.set(
        "incr",
        store_fn(
            lua,
            &store,
            |_, s, (key, by, secs): (String, Option<i64>, f64)| async move {
                let ttl =
                    ttl(Some(secs)).ok_or_else(|| lua_err("counter.incr: ttl must be > 0"))?;
                s.incr(&ns(&key), by.unwrap_or(1), ttl)
                    .await
                    .map_err(lua_err)
            },
        )?,
    )?;
    counter.set(
        "get",
        store_fn(lua, &store, |_, s, key: String| async move {
            let raw = s.get(&ns(&key)).await.map_err(lua_err)?;
            Ok(raw
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|t| t.trim().parse::<i64>().ok())
                .unwrap_or(0))
        })?,
    )?;
    kiln.set("counter", counter)?;

    let kv = lua.create_table()?;
    kv.set(
        "get",
        store_fn(lua, &store, |lua, s, key: String| async move {
            match s.get(&ns(&key)).await.map_err(lua_err)? {
                Some(b) => Ok(Value::String(lua.create_string(&b)?)),
                None => Ok(Value::Nil),
            }
        })?,
    )?;
    kv.set(
        "put",
        store_fn(
            lua,
            &store,
            |_, s, (key, value, secs): (String, mlua::LuaString, Option<f64>)| {
                let value = value.as_bytes().to_vec();
                async move { s.put(&ns(&key), &value, ttl(secs)).await.map_err(lua_err) }
            },
        )?,
    )?;
    kv.set(
        "put_if_absent",
        store_fn(
            lua,
            &store,
            |_, s, (key, value): (String, mlua::LuaString)| {
                let value = value.as_bytes().to_vec();
                async move { s.put_if_absent(&ns(&key), &value).await.map_err(lua_err) }
            },
        )?,
    )?;
    kv.set(
        "delete",
        store_fn(lua, &store, |_, s, key: String| async move {
            s.delete(&ns(&key)).await.map_err(lua_err)
        })?,
    )?;
    kiln.set("kv", kv)?;

    let set = lua.create_table()?;
    set.set(
        "add",
        store_fn(
            lua,
            &store,
            |_, s, (name, member, secs): (String, String, Option<f64>)| async move {
                s.set_add(&ns(&name), &member, ttl(secs))
                    .await
                    .map_err(lua_err)
            },
        )?,
    )?;
    set.set(
        "contains",
        store_fn(
            lua,
            &store,
            |_, s, (name, member): (String, String)| async move {
                s.set_contains(&ns(&name), &member).await.map_err(lua_err)
            },
        )?,
    )?;
    set.set(
        "remove",
        store_fn(
            lua,
            &store,
            |_, s, (name, member): (String, String)| async move {
                s.set_remove(&ns(&name), &member).await.map_err(lua_err)
            },
        )?,
    )?;
    kiln.set("set", set)?;

    install_batch(lua, kiln, store)
}

/// `kiln.batch`: several store operations in one round trip.
fn install_batch(lua: &Lua, kiln: &Table, store: Store) -> mlua::Result<()> {
    // The embedded store answers a batch without waiting (counters live in
    // memory, reads are local): a plain function saves the coroutine
    // round trip of an async one on every message.
    let batch = match &store {
        Store::Embedded(embedded) => {
            let embedded = embedded.clone();
            lua.create_function(move |lua, (ops, age): (Table, Option<f64>)| {
                let (ops, age) = batch_args(lua, &ops, age)?;
                let values = embedded
                    .batch_refs(ops.into_iter(), NAMESPACE, age)
                    .map_err(lua_err)?;
                super::lua_raw::batch_answers(lua, &values)
            })?
        }
        Store::Redis(redis) => {
            // Most batches are answered on this node: a plain function
            // tries that, doing nothing if it cannot, and only then the
            // async one that may ask Redis.
            let here = redis.clone();
            let local = lua.create_function(move |lua, (ops, age): (Table, Option<f64>)| {
                let (refs, age) = batch_args(lua, &ops, age)?;
                match here.batch_local(&refs, NAMESPACE, age) {
                    Some(values) => super::lua_raw::batch_answers(lua, &values).map(Value::Table),
                    None => Ok(Value::Nil),
                }
            })?;
            let remote = store_fn(
                lua,
                &store,
                |lua, s, (ops, age): (Table, Option<f64>)| async move {
                    let (refs, age) = batch_args(&lua, &ops, age)?;
                    let ops: Vec<BatchOp> = refs
                        .into_iter()
                        .map(|op| BatchOp::from_ref(op, NAMESPACE))
                        .collect();
                    let values = s.batch_within(&ops, age).await.map_err(lua_err)?;
                    super::lua_raw::batch_answers(&lua, &values)
                },
            )?;
            lua.load(
                "local here, anywhere = ...
                 return function(ops, age) return here(ops, age) or anywhere(ops, age) end",
            )
            .set_name("=kiln.batch")
            .call::<Function>((local, remote))?
        }
    };
    kiln.set("batch", batch)?;
    Ok(())
}
