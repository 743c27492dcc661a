//! Lua's pattern functions where they cannot hold up the node.
//!
//! `string.find`, `match`, `gmatch` and `gsub` run in C, one instruction
//! to the watchdog, and a pattern can backtrack for as long as its subject
//! allows: `n` to the power of its quantifiers plus one (`a*b` over a
//! million `a` is 10^12 steps). Hooks run on the async workers (a thread
//! per call would cost more than most hooks do), so the sandbox's versions
//! of these functions bound that cost first: a call whose bound is small
//! (nearly all: a pattern on a header, an address, a reply) runs as it is;
//! a larger one goes to a helper state on a thread of its own
//! (`offload`), with copies of its arguments, and the hook waits for the
//! answer asynchronously, up to its time limit. The helper runs Lua's own
//! functions, so the answers are Lua's. A `gsub` with a function
//! replacement asks the helper where the matches are (`string.find`
//! along gsub's walk) and calls the function here.

use super::offload::{Late, Pool};
use mlua::{Lua, Table, Value, Variadic};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Steps a call may take where it was made (about 10 ms of matching).
pub const INLINE_STEPS: f64 = 1e7;

/// Helpers that do the larger pattern calls, shared by every Lua state.
const HELPERS: usize = 4;

/// A bound on the steps `pattern` takes over a subject of `subject` bytes
/// (`plain`: `string.find`'s plain search, a naive scan in C).
pub fn cost(subject: usize, pattern: &[u8], plain: bool) -> f64 {
    let (n, m) = (subject as f64 + 1.0, pattern.len() as f64 + 1.0);
    if plain {
        return n * m;
    }
    let shape = shape(pattern);
    let exponent = shape.quantifiers + u32::from(!shape.anchored);
    // Without a quantifier, each start costs the pattern's length at most.
    let per_start = if shape.quantifiers == 0 { m } else { 1.0 };
    n.powi(exponent.min(64) as i32) * 2f64.powi(shape.optional.min(64) as i32) * per_start
}

/// What the bound needs to know of a pattern.
#[derive(Debug, Default, PartialEq, Eq)]
struct Shape {
    /// Starts with `^`.
    anchored: bool,
    /// Items that repeat (`*`, `+`, `-`), balances (`%b`) and back
    /// references: each can try every length.
    quantifiers: u32,
    /// Items with `?`: each tries two ways.
    optional: u32,
}

/// Reads a pattern as Lua's matcher does (a malformed one is read as far
/// as it goes: the call itself reports it).
fn shape(p: &[u8]) -> Shape {
    let mut s = Shape::default();
    let mut i = 0;
    if p.first() == Some(&b'^') {
        s.anchored = true;
        i = 1;
    }
    while i < p.len() {
        match p[i] {
            b'(' | b')' => {
                i += 1;
                continue;
            }
            b'%' => match p.get(i + 1) {
                None => break,
                Some(b'b') => {
                    s.quantifiers += 1;
                    i += 4;
                    continue;
                }
                Some(b'f') => {
                    i = set_end(p, i + 2);
                    continue;
                }
                Some(d) if d.is_ascii_digit() => {
                    s.quantifiers += 1;
                    i += 2;
                    continue;
                }
                Some(_) => i += 2,
            },
            b'[' => i = set_end(p, i),
            _ => i += 1,
        }
        match p.get(i) {
            Some(b'*' | b'+' | b'-') => {
                s.quantifiers += 1;
                i += 1;
            }
            Some(b'?') => {
                s.optional += 1;
                i += 1;
            }
            _ => {}
        }
    }
    s
}

/// The position after the set that starts at `i` (`[...]`), as Lua reads
/// it: a `]` right after `[` or `[^` is a member; `%` escapes.
fn set_end(p: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    if p.get(j) == Some(&b'^') {
        j += 1;
    }
    loop {
        let Some(&c) = p.get(j) else { return p.len() };
        j += 1;
        if c == b'%' {
            j += 1;
        }
        match p.get(j) {
            Some(b']') => return j + 1,
            None => return p.len(),
            _ => {}
        }
    }
}

/// A value copied between Lua states.
#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Nil,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(Vec<u8>),
    /// A table: its pairs (a `gsub` replacement table; lists of results).
    Table(Vec<(Arg, Arg)>),
    /// A value that cannot be copied (a function, a table in a table):
    /// `gsub` reports it as an invalid replacement if it is used.
    Opaque,
}

impl Arg {
    fn from_lua(v: &Value, depth: u8) -> mlua::Result<Arg> {
        Ok(match v {
            Value::Nil => Arg::Nil,
            Value::Boolean(b) => Arg::Bool(*b),
            Value::Integer(i) => Arg::Int(*i),
            Value::Number(n) => Arg::Num(*n),
            Value::String(s) => Arg::Str(s.as_bytes().to_vec()),
            Value::Table(t) if depth > 0 => {
                let mut pairs = Vec::new();
                for pair in t.clone().pairs::<Value, Value>() {
                    let (k, v) = pair?;
                    pairs.push((Arg::from_lua(&k, depth - 1)?, Arg::from_lua(&v, depth - 1)?));
                }
                Arg::Table(pairs)
            }
            _ => Arg::Opaque,
        })
    }

    fn to_lua(&self, lua: &Lua) -> mlua::Result<Value> {
        Ok(match self {
            Arg::Nil => Value::Nil,
            Arg::Bool(b) => Value::Boolean(*b),
            Arg::Int(i) => Value::Integer(*i),
            Arg::Num(n) => Value::Number(*n),
            Arg::Str(s) => Value::String(lua.create_string(s)?),
            Arg::Table(pairs) => {
                let t = lua.create_table_with_capacity(0, pairs.len())?;
                for (k, v) in pairs {
                    t.raw_set(k.to_lua(lua)?, v.to_lua(lua)?)?;
                }
                Value::Table(t)
            }
            Arg::Opaque => Value::Table(lua.create_table()?),
        })
    }
}

/// The ops a helper state runs, each with Lua's own function; every
/// answer is a packed list (`n` set) or a list of them.
const HELPER_OPS: &str = r#"
local find, match, gmatch, gsub, pack = string.find, string.match, string.gmatch, string.gsub, table.pack
return {
  find = function(s, p, init, plain) return pack(find(s, p, init, plain)) end,
  match = function(s, p, init) return pack(match(s, p, init)) end,
  gmatch = function(s, p, init)
    local out, it = {}, gmatch(s, p, init)
    while true do
      local r = pack(it())
      if r[1] == nil then break end
      out[#out + 1] = r
    end
    return out
  end,
  gsub = function(s, p, repl, n) return pack(gsub(s, p, repl, n)) end,
  -- Where gsub would replace, as find answers (start, end, captures):
  -- gsub's walk, with find's search from each place it goes on from.
  spans = function(s, p, n)
    local out, src, last, anchor = {}, 1, nil, p:sub(1, 1) == "^"
    n = n or math.huge
    while #out < n do
      local r = pack(find(s, p, src))
      if r[1] == nil then break end
      local a, e = r[1], r[2] + 1
      if e == last and a == last then
        -- An empty match where the last one ended: gsub steps past it.
        src = a + 1
      else
        out[#out + 1] = r
        src, last = e, e
      end
      if anchor or src > #s + 1 then break end
    end
    return out
  end,
}
"#;

/// A bare Lua state (strings, tables) that runs [`HELPER_OPS`].
pub struct Helper {
    lua: Lua,
    ops: Table,
}

impl Helper {
    fn new(max_memory: usize) -> Result<Helper, String> {
        let lua = Lua::new_with(
            mlua::StdLib::STRING | mlua::StdLib::TABLE | mlua::StdLib::MATH,
            mlua::LuaOptions::new(),
        )
        .map_err(|e| e.to_string())?;
        lua.set_memory_limit(max_memory)
            .map_err(|e| e.to_string())?;
        let ops: Table = lua
            .load(HELPER_OPS)
            .set_name("=kiln.patterns")
            .eval()
            .map_err(|e| e.to_string())?;
        Ok(Helper { lua, ops })
    }

    fn call(&self, op: &str, args: &[Arg]) -> Result<Arg, String> {
        let run = || -> mlua::Result<Arg> {
            let f: mlua::Function = self.ops.get(op)?;
            let args = args
                .iter()
                .map(|a| a.to_lua(&self.lua))
                .collect::<mlua::Result<Variadic<Value>>>()?;
            let out: Value = f.call(args)?;
            Arg::from_lua(&out, 3)
        };
        let answer = run().map_err(|e| first_line(&message(&e)));
        // What the call made is not kept for the next.
        let _ = self.lua.gc_collect();
        answer
    }
}

/// What a Lua error says, without mlua's wrapping.
fn message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::CallbackError { cause, .. } => message(cause),
        other => other.to_string(),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

/// The helpers, made with the first policy that needs them.
fn helpers(max_memory: usize) -> Result<Arc<Pool<Helper>>, String> {
    static POOL: OnceLock<Result<Arc<Pool<Helper>>, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let build: super::offload::Build<Helper> = Arc::new(move || Helper::new(max_memory));
        Pool::start(HELPERS, build, "kiln-lua-helper")
    })
    .clone()
}

/// The sandbox's pattern functions, over Lua's own (the chunk gets the
/// bound, the offload and the spans pattern).
const BOUNDED: &str = r#"
local cost, offload, limit = ...
local find, match, gmatch, gsub = string.find, string.match, string.gmatch, string.gsub
local concat, unpack, mtype = table.concat, table.unpack, math.type
local function big(s, p, plain)
  return type(s) == "string" and type(p) == "string" and cost(#s, p, plain and true or false) > limit
end
string.find = function(s, p, init, plain)
  if big(s, p, plain) then return offload("find", s, p, init, plain) end
  return find(s, p, init, plain)
end
string.match = function(s, p, init)
  if big(s, p) then return offload("match", s, p, init) end
  return match(s, p, init)
end
string.gmatch = function(s, p, init)
  if not big(s, p) then return gmatch(s, p, init) end
  local all, i = offload("gmatch", s, p, init), 0
  return function()
    i = i + 1
    local r = all[i]
    if r then return unpack(r, 1, r.n) end
  end
end
string.gsub = function(s, p, repl, n)
  if not big(s, p) then return gsub(s, p, repl, n) end
  if type(repl) ~= "function" then return offload("gsub", s, p, repl, n) end
  local spans = offload("spans", s, p, n)
  local out, last = {}, 1
  for i = 1, #spans do
    local r = spans[i]
    local a, b = r[1], r[2] + 1
    local whole = s:sub(a, b - 1)
    local v
    if r.n > 2 then v = repl(unpack(r, 3, r.n)) else v = repl(whole) end
    out[#out + 1] = s:sub(last, a - 1)
    if not v then
      out[#out + 1] = whole
    elseif type(v) == "string" or mtype(v) then
      out[#out + 1] = tostring(v)
    else
      error("invalid replacement value (a " .. type(v) .. ")", 2)
    end
    last = b
  end
  out[#out + 1] = s:sub(last)
  return concat(out), #spans
end
"#;

/// Puts the bounded pattern functions into the state's `string` library.
/// `timeout` is how long a call may wait for a helper's answer.
pub fn install(lua: &Lua, max_memory: usize, timeout: Duration) -> mlua::Result<()> {
    install_with(lua, max_memory, timeout, INLINE_STEPS)
}

/// [`install`] with another bound on what runs where it was called (the
/// tests send everything to a helper with 0).
pub fn install_with(
    lua: &Lua,
    max_memory: usize,
    timeout: Duration,
    limit: f64,
) -> mlua::Result<()> {
    let cost_fn = lua.create_function(|_, (len, p, plain): (usize, mlua::LuaString, bool)| {
        Ok(cost(len, &p.as_bytes(), plain))
    })?;
    let offload_fn = lua.create_async_function(move |lua, args: Variadic<Value>| async move {
        let mut it = args.iter();
        let op = match it.next() {
            Some(Value::String(s)) => s.to_string_lossy(),
            _ => return Err(mlua::Error::RuntimeError("offload: no op".into())),
        };
        let copied = it
            .map(|v| Arg::from_lua(v, 1))
            .collect::<mlua::Result<Vec<Arg>>>()?;
        let pool = helpers(max_memory).map_err(mlua::Error::RuntimeError)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let job_op = op.clone();
        let answer = pool
            .run(deadline, move |h: &Helper| h.call(&job_op, &copied))
            .await;
        let answer = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(message)) => return Err(mlua::Error::RuntimeError(message)),
            Err(Late::Stuck) => {
                return Err(mlua::Error::RuntimeError(format!(
                    "string.{op}: the pattern ran past the time limit ({} ms) and was abandoned",
                    timeout.as_millis()
                )));
            }
            Err(Late::NoHelper) => {
                return Err(mlua::Error::RuntimeError(format!(
                    "string.{op}: no pattern helper came free within the time limit"
                )));
            }
            Err(Late::Gone) => {
                return Err(mlua::Error::RuntimeError(format!(
                    "string.{op}: the pattern helper ended"
                )));
            }
        };
        let value = answer.to_lua(&lua)?;
        // find, match and gsub answer their values; gmatch and spans a list.
        if matches!(op.as_str(), "gmatch" | "spans") {
            return Ok(Variadic::from_iter([value]));
        }
        let Value::Table(t) = value else {
            return Ok(Variadic::new());
        };
        let n: i64 = t.raw_get("n").unwrap_or(0);
        (1..=n).map(|i| t.raw_get::<Value>(i)).collect()
    })?;
    lua.load(BOUNDED)
        .set_name("=sandbox")
        .call::<()>((cost_fn, offload_fn, limit))
}

/// Abandoned helpers whose pattern is still running.
pub fn stuck() -> usize {
    super::offload::stuck()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_follows_the_quantifiers() {
        assert_eq!(cost(10, b"abc", true), 11.0 * 4.0);
        // One quantifier over a million: offloaded; an anchored one is not.
        assert!(cost(1_000_000, b"a*b", false) > INLINE_STEPS);
        assert!(cost(1_000, b"%s+", false) <= INLINE_STEPS);
        assert!(cost(100, b"^%s*(.-)%s*$", false) <= INLINE_STEPS);
        assert!(cost(1_000, b"^%s*(.-)%s*$", false) > INLINE_STEPS);
        assert_eq!(
            shape(b"^[%]a-]*%b()x?%1$"),
            Shape {
                anchored: true,
                quantifiers: 3,
                optional: 1
            }
        );
        // `]` first in a set is a member.
        assert_eq!(shape(b"[]]+").quantifiers, 1);
    }

    /// Lua's own functions and the offloaded ones (everything sent to a
    /// helper) answer alike, on anchors, empty matches, position captures,
    /// balances, frontiers, back references, each kind of replacement and
    /// a replacement count, and fail alike on a bad pattern.
    #[tokio::test]
    async fn offloaded_calls_answer_as_lua_does() {
        let lua = Lua::new();
        lua.load("own = { find = string.find, match = string.match, gmatch = string.gmatch, gsub = string.gsub }")
            .exec()
            .expect("own");
        install_with(&lua, 64 << 20, Duration::from_secs(5), 0.0).expect("install");
        let mismatches: Vec<String> = lua
            .load(
                r#"
local function show(...)
  local t = table.pack(...)
  for i = 1, t.n do t[i] = tostring(t[i]) end
  return table.concat(t, "|", 1, t.n)
end
local function all(gm, s, p)
  local out = {}
  for a, b, c in gm(s, p) do out[#out + 1] = show(a, b, c) end
  return table.concat(out, ";")
end
local cases = {
  {"hello world from lua", "%w+"}, {"  trim me  ", "^%s*(.-)%s*$"}, {"a,b,,c", "([^,]*)"},
  {"abc", ""}, {"x=1, y=22", "(%w+)=(%d+)"}, {"THE (quick) (fox)", "%b()"}, {"hello", "()ll()"},
  {"aaa", "a-"}, {"one two", "^(%w+)"}, {"f(a)(b)", "%((%w)%)"}, {"end.", "%.$"},
  {"THE (quick) fox", "%f[%a]%a+"}, {"abab cdcd", "(%a%a)%1"}, {"a$b", "%$"}, {"[x]", "[]x[]+"},
}
local repls = { "<%1>", "[%0]", { hello = "HI", one = 1, a = false }, string.upper,
  function() return nil end, function(x) return #x end }
local bad = {}
for _, c in ipairs(cases) do
  local s, p = c[1], c[2]
  local function same(what, a, b) if a ~= b then bad[#bad + 1] = what .. " " .. s .. " ~ " .. p .. ": " .. a .. " vs " .. b end end
  same("find", show(own.find(s, p)), show(string.find(s, p)))
  same("find3", show(own.find(s, p, 3)), show(string.find(s, p, 3)))
  same("match", show(own.match(s, p)), show(string.match(s, p)))
  same("gmatch", all(own.gmatch, s, p), all(string.gmatch, s, p))
  for i, r in ipairs(repls) do
    local ok1, a1, n1 = pcall(own.gsub, s, p, r)
    local ok2, a2, n2 = pcall(string.gsub, s, p, r)
    same("gsub" .. i, show(ok1, a1, n1), show(ok2, a2, n2))
    same("gsub1-" .. i, show(pcall(own.gsub, s, p, r, 1)), show(pcall(string.gsub, s, p, r, 1)))
  end
end
local ok1, e1 = pcall(own.find, "abc", "%")
local ok2, e2 = pcall(string.find, "abc", "%")
if ok1 ~= ok2 or not tostring(e2):find("malformed pattern", 1, true) then bad[#bad + 1] = "error: " .. tostring(e2) end
return bad
"#,
            )
            .call_async(())
            .await
            .expect("runs");
        assert!(mismatches.is_empty(), "{mismatches:#?}");
    }
}
