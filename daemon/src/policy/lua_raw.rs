//! Tables between Rust and Lua through Lua's C API, for what runs on every
//! message: a hook's argument and `kiln.batch`'s operations and answers.
//!
//! mlua's safe API takes its lock, makes a reference and (under a memory
//! limit) a protected call for every value it moves; here one protected call
//! (`Lua::exec_raw`) covers a whole table. Inside it only borrowed data is
//! touched and nothing is allocated on the Rust side before the last call
//! that can raise a Lua error (out of memory), so an error that unwinds
//! through it leaks nothing.

use crate::store::{BatchValue, OpRef};
use mlua::{Lua, Table, Value, ffi};
use std::ffi::c_int;
use std::time::Duration;

/// A Rust value Lua sees as a plain value (a string, a number, a boolean, a
/// list of strings).
pub trait RawPush {
    /// Pushes the value onto `state`'s stack (one slot; may raise a Lua
    /// memory error).
    ///
    /// # Safety
    /// `state` is the state `Lua::exec_raw` hands its function, with at
    /// least three free stack slots.
    unsafe fn push_onto(&self, state: *mut ffi::lua_State);

    /// Sets field `name` of the table at `table` to the value, without
    /// metamethods. A list refills the list table it finds there instead of
    /// making a new one (see [`refill`]).
    ///
    /// # Safety
    /// As `push_onto`; `table` is an absolute index.
    unsafe fn set_field(&self, state: *mut ffi::lua_State, table: c_int, name: &FieldName) {
        // SAFETY: the caller's contract (exec_raw's state, three free slots): a key and a value
        // pushed, both popped by rawset on `table`, an absolute index.
        unsafe {
            ffi::lua_pushstring(state, name.0.as_ptr().cast());
            self.push_onto(state);
            ffi::lua_rawset(state, table);
        }
    }
}

unsafe fn push_str(state: *mut ffi::lua_State, s: &str) {
    // SAFETY: `s` is borrowed for the call and Lua copies its bytes; one slot pushed, within
    // the caller's three.
    unsafe { ffi::lua_pushlstring(state, s.as_ptr().cast(), s.len()) };
}

impl RawPush for String {
    unsafe fn push_onto(&self, state: *mut ffi::lua_State) {
        // SAFETY: as `push_str`: the caller's state with free slots.
        unsafe { push_str(state, self) }
    }
}

impl RawPush for &str {
    unsafe fn push_onto(&self, state: *mut ffi::lua_State) {
        // SAFETY: as `push_str`: the caller's state with free slots.
        unsafe { push_str(state, self) }
    }
}

impl RawPush for std::borrow::Cow<'_, str> {
    unsafe fn push_onto(&self, state: *mut ffi::lua_State) {
        // SAFETY: as `push_str`: the caller's state with free slots.
        unsafe { push_str(state, self) }
    }
}

impl RawPush for std::borrow::Cow<'_, [String]> {
    unsafe fn push_onto(&self, state: *mut ffi::lua_State) {
        // SAFETY: the same contract as this function's, passed on.
        unsafe { self.as_ref().push_onto(state) }
    }
}

impl RawPush for Vec<String> {
    unsafe fn push_onto(&self, state: *mut ffi::lua_State) {
        // SAFETY: the same contract as this function's, passed on.
        unsafe { self.as_slice().push_onto(state) }
    }
}

impl RawPush for [String] {
    unsafe fn push_onto(&self, state: *mut ffi::lua_State) {
        // SAFETY: the table takes one slot and each string one more, popped by rawseti at once:
        // two of the caller's three slots at most.
        unsafe {
            ffi::lua_createtable(state, c_int::try_from(self.len()).unwrap_or(0), 0);
            for (i, s) in self.iter().enumerate() {
                push_str(state, s);
                ffi::lua_rawseti(state, -2, i as ffi::lua_Integer + 1);
            }
        }
    }

    unsafe fn set_field(&self, state: *mut ffi::lua_State, table: c_int, name: &FieldName) {
        // SAFETY: the caller's contract; the key, its copy and the old value take three slots,
        // and every path resets the stack to where it found it (plus the rawset's pops).
        unsafe {
            ffi::lua_pushstring(state, name.0.as_ptr().cast());
            let list = ffi::lua_gettop(state) + 1;
            ffi::lua_pushvalue(state, -1);
            if ffi::lua_rawget(state, table) == ffi::LUA_TTABLE && plain_list(state, list) {
                let old = ffi::lua_rawlen(state, list);
                for (i, s) in self.iter().enumerate() {
                    push_str(state, s);
                    ffi::lua_rawseti(state, list, i as ffi::lua_Integer + 1);
                }
                for i in self.len() + 1..=old {
                    ffi::lua_pushnil(state);
                    ffi::lua_rawseti(state, list, i as ffi::lua_Integer);
                }
                ffi::lua_settop(state, list - 2);
            } else {
                ffi::lua_settop(state, list - 1);
                self.push_onto(state);
                ffi::lua_rawset(state, table);
            }
        }
    }
}

/// Whether the table at `idx` (absolute) is a list and nothing else,
/// without a metatable: its length is its number of keys (a kept list a
/// script changed still refills exactly; an answer's list reads exactly).
unsafe fn plain_list(state: *mut ffi::lua_State, idx: c_int) -> bool {
    // SAFETY: `idx` is an absolute index of a table the caller holds; getmetatable pushes only
    // when it answers non-zero, and that one is popped.
    unsafe {
        if ffi::lua_getmetatable(state, idx) != 0 {
            ffi::lua_pop(state, 1);
            return false;
        }
        let n = ffi::lua_rawlen(state, idx);
        keys(state, idx) == n
    }
}

/// The number of keys of the table at `idx` (absolute).
unsafe fn keys(state: *mut ffi::lua_State, idx: c_int) -> usize {
    let mut n = 0usize;
    // SAFETY: `idx` is an absolute index of a table; lua_next leaves a key and a value, the
    // value is popped and the key handed back, so the stack ends where it began. Only keys
    // lua_next gave are passed back, so it never raises.
    unsafe {
        ffi::lua_pushnil(state);
        while ffi::lua_next(state, idx) != 0 {
            ffi::lua_pop(state, 1);
            n += 1;
        }
    }
    n
}

impl RawPush for bool {
    unsafe fn push_onto(&self, state: *mut ffi::lua_State) {
        // SAFETY: one slot pushed on the caller's state, which has room for it.
        unsafe { ffi::lua_pushboolean(state, c_int::from(*self)) };
    }
}

macro_rules! raw_integer {
    ($($t:ty),*) => {$(
        impl RawPush for $t {
            unsafe fn push_onto(&self, state: *mut ffi::lua_State) {
                // Sizes and times: far below i64::MAX.
                // SAFETY: one slot pushed on the caller's state, which has room for it.
                unsafe { ffi::lua_pushinteger(state, *self as ffi::lua_Integer) };
            }
        }
    )*};
}
raw_integer!(i64, u16, usize);

/// A field name with its terminating NUL, as the C API wants it.
pub struct FieldName(&'static str);

impl FieldName {
    /// `name` must end in "\0" (the `hook_arg!` macro makes them).
    pub const fn new(name: &'static str) -> FieldName {
        assert!(
            name.as_bytes()[name.len() - 1] == 0,
            "field name without NUL"
        );
        FieldName(name)
    }

    /// The name without its NUL.
    pub fn as_str(&self) -> &'static str {
        &self.0[..self.0.len() - 1]
    }
}

/// A new table with `fields` (pushed as plain values) and `extra` (values
/// mlua already made, e.g. userdata), in one protected call.
pub fn table(
    lua: &Lua,
    fields: &[(FieldName, &dyn RawPush)],
    extra: Vec<(FieldName, Value)>,
) -> mlua::Result<Value> {
    let (names, values): (Vec<FieldName>, Vec<Value>) = extra.into_iter().unzip();
    let size = c_int::try_from(fields.len() + names.len()).unwrap_or(0);
    // SAFETY: only the C API on the state exec_raw hands over; the extra
    // values are its arguments, at 1..=names.len().
    unsafe {
        lua.exec_raw::<Value>(mlua::MultiValue::from_vec(values), |state| {
            ffi::lua_createtable(state, 0, size);
            for (name, value) in fields {
                value.push_onto(state);
                ffi::lua_setfield(state, -2, name.0.as_ptr().cast());
            }
            for (i, name) in names.iter().enumerate() {
                ffi::lua_pushvalue(state, i as c_int + 1);
                ffi::lua_setfield(state, -2, name.0.as_ptr().cast());
            }
            // The table is the one result.
            ffi::lua_rotate(state, 1, 1);
            ffi::lua_settop(state, 1);
        })
    }
}

/// A hook's argument table kept by a Lua state from one call of the hook to
/// the next, with the userdata in it, if any (see [`refill`]).
pub struct ArgSlot {
    pub table: Table,
    pub userdata: Option<mlua::AnyUserData>,
}

/// Refills `slot`'s table with `fields` and `slot`'s userdata (already
/// updated by the caller) under each name of `extra`, and answers it; or
/// answers None, changing nothing, when a script has changed the table in a
/// way a refill would not undo (a key added or removed, a metatable), so
/// that the caller makes a new one.
///
/// A table per call is most of what a hook call costs on its own (making
/// it, its keys, collecting it): for the hooks that run on every message a
/// state keeps one and refills it.
pub fn refill(
    lua: &Lua,
    slot: &ArgSlot,
    fields: &[(FieldName, &dyn RawPush)],
    extra: &[FieldName],
) -> mlua::Result<Option<Value>> {
    let expected = fields.len() + extra.len();
    // SAFETY: only the C API on the state exec_raw hands over; the table is
    // its argument 1 and the userdata (or nil) argument 2. Nothing on the
    // Rust side is allocated inside.
    unsafe {
        lua.exec_raw::<Value>((slot.table.clone(), slot.userdata.clone()), |state| {
            let same = ffi::lua_getmetatable(state, 1) == 0 && keys(state, 1) == expected;
            if !same {
                ffi::lua_settop(state, 0);
                ffi::lua_pushnil(state);
                return;
            }
            for (name, value) in fields {
                value.set_field(state, 1, name);
            }
            for name in extra {
                ffi::lua_pushstring(state, name.0.as_ptr().cast());
                ffi::lua_pushvalue(state, 2);
                ffi::lua_rawset(state, 1);
            }
            ffi::lua_settop(state, 1);
        })
        .map(|v| (!v.is_nil()).then_some(v))
    }
}

/// The string at `idx`, if it is one (numbers are not converted: that would
/// allocate inside the protected call).
unsafe fn string_at<'a>(state: *mut ffi::lua_State, idx: c_int) -> Option<&'a [u8]> {
    // SAFETY: `idx` is a valid index on the caller's state; the bytes point into a Lua string
    // that stays on the stack (so alive, and never moved) for as long as the caller keeps it
    // there, which the lifetime leaves to the caller.
    unsafe {
        if ffi::lua_type(state, idx) != ffi::LUA_TSTRING {
            return None;
        }
        let mut len = 0usize;
        let ptr = ffi::lua_tolstring(state, idx, &mut len);
        (!ptr.is_null()).then(|| std::slice::from_raw_parts(ptr.cast::<u8>(), len))
    }
}

unsafe fn integer_at(state: *mut ffi::lua_State, idx: c_int) -> Option<i64> {
    // SAFETY: `idx` is a valid index; tointegerx only reads.
    unsafe {
        let mut ok = 0;
        let n = ffi::lua_tointegerx(state, idx, &mut ok);
        (ok != 0).then_some(n)
    }
}

unsafe fn number_at(state: *mut ffi::lua_State, idx: c_int) -> Option<f64> {
    // SAFETY: `idx` is a valid index; tonumberx only reads.
    unsafe {
        let mut ok = 0;
        let n = ffi::lua_tonumberx(state, idx, &mut ok);
        (ok != 0).then_some(n)
    }
}

/// `kiln.batch`'s operations: `{ {"get", key}, {"contains", set, member},
/// {"incr", key, by, ttl_secs}, {"take", key, amount, ttl_secs, limit[, hold]},
/// {"give", key, amount} }`, borrowing their keys from the script's
/// strings; `ttl` turns a script's seconds into a TTL (None: not a valid
/// one).
///
/// The keys stay valid for as long as `ops` is borrowed: the script's
/// strings live in its operation tables, which nothing can change while
/// Kiln runs the batch (the state runs one call at a time, and the call is
/// in `kiln.batch`), and Lua never moves a string.
pub fn batch_op_refs<'t>(
    lua: &Lua,
    ops: &'t Table,
    ttl: impl Fn(Option<f64>) -> Option<Duration>,
) -> mlua::Result<Vec<OpRef<'t>>> {
    let mut out: Vec<OpRef<'t>> = Vec::new();
    let mut problem: Option<String> = None;
    // SAFETY: reads only (rawlen, rawgeti, type, tolstring on strings,
    // tointegerx, tonumberx): none of them raises an error, so nothing
    // below is skipped by a longjmp. At most seven values are pushed at
    // once. The strings read outlive the call: see above.
    unsafe {
        lua.exec_raw::<()>(ops, |state| {
            let n = ffi::lua_rawlen(state, 1);
            out.reserve(n);
            for i in 1..=n {
                ffi::lua_rawgeti(state, 1, i as ffi::lua_Integer);
                if ffi::lua_type(state, -1) != ffi::LUA_TTABLE {
                    problem = Some(format!("batch: operation {i} is not a table"));
                    break;
                }
                let op = read_op(state, &ttl);
                ffi::lua_settop(state, 1);
                match op {
                    Ok(op) => out.push(op),
                    Err(e) => {
                        problem = Some(format!("batch: operation {i}: {e}"));
                        break;
                    }
                }
            }
            ffi::lua_settop(state, 0);
        })?;
    }
    match problem {
        Some(p) => Err(mlua::Error::RuntimeError(p)),
        None => Ok(out),
    }
}

/// One operation: the table on top of the stack. Its elements are pushed
/// above it until the caller resets the stack; the strings they are stay
/// alive in the table.
unsafe fn read_op<'t>(
    state: *mut ffi::lua_State,
    ttl: &impl Fn(Option<f64>) -> Option<Duration>,
) -> Result<OpRef<'t>, String> {
    // SAFETY: the operation's table is on top (checked by the caller) and the caller resets the
    // stack after; at most seven slots are used, within LUA_MINSTACK (20). The strings read
    // stay in the operation's table, which outlives `'t`.
    unsafe {
        let op = ffi::lua_gettop(state);
        ffi::lua_rawgeti(state, op, 1);
        ffi::lua_rawgeti(state, op, 2);
        let kind = string_at(state, op + 1).unwrap_or_default();
        // Only the elements this kind of operation has.
        let elements = match kind {
            b"get" => 2,
            b"contains" | b"give" => 3,
            b"incr" => 4,
            _ => 6,
        };
        for at in 3..=elements {
            ffi::lua_rawgeti(state, op, at);
        }
        for _ in elements..6 {
            ffi::lua_pushnil(state);
        }
        let (name, third, fourth, fifth, sixth) = (op + 2, op + 3, op + 4, op + 5, op + 6);
        let name: &'t str = string_at(state, name)
            .and_then(|k| std::str::from_utf8(k).ok())
            .ok_or("the key must be a string")?;
        match kind {
            b"get" => Ok(OpRef::Get(name)),
            b"contains" => {
                let member: &'t str = string_at(state, third)
                    .and_then(|m| std::str::from_utf8(m).ok())
                    .ok_or("contains: the member must be a string")?;
                Ok(OpRef::Contains(name, member))
            }
            b"incr" => {
                let by = match ffi::lua_type(state, third) {
                    ffi::LUA_TNIL => Some(1),
                    _ => integer_at(state, third),
                };
                Ok(OpRef::Incr(
                    name,
                    by.ok_or("incr: the amount must be an integer")?,
                    ttl(number_at(state, fourth)).ok_or("incr needs a ttl > 0")?,
                ))
            }
            b"take" => Ok(OpRef::Take {
                key: name,
                amount: integer_at(state, third)
                    .filter(|n| *n >= 0)
                    .ok_or("take: the amount must be a whole number, 0 or more")?,
                ttl: ttl(number_at(state, fourth)).ok_or("take needs a ttl > 0")?,
                // math.huge (no limit) and 1e9 (a float) are limits too.
                limit: number_at(state, fifth)
                    .filter(|l| !l.is_nan())
                    .map(|l| l as i64)
                    .ok_or("take: the limit must be a number")?,
                hold_at_most: match ffi::lua_type(state, sixth) {
                    ffi::LUA_TNIL => i64::MAX,
                    _ => integer_at(state, sixth)
                        .filter(|n| *n >= 0)
                        .ok_or("take: what a node may hold must be a whole number, 0 or more")?,
                },
            }),
            b"give" => Ok(OpRef::Give {
                key: name,
                amount: integer_at(state, third)
                    .filter(|n| *n >= 0)
                    .ok_or("give: the amount must be a whole number, 0 or more")?,
            }),
            other => Err(format!(
                "unknown operation {:?}",
                String::from_utf8_lossy(other)
            )),
        }
    }
}

/// `kiln.batch`'s answers, in the order of its operations (nil for a
/// missing key).
pub fn batch_answers(lua: &Lua, values: &[BatchValue]) -> mlua::Result<Table> {
    let size = c_int::try_from(values.len()).unwrap_or(0);
    // SAFETY: only the C API on the state exec_raw hands over; `values` is
    // borrowed, so an out-of-memory error leaks nothing.
    unsafe {
        lua.exec_raw::<Table>((), |state| {
            ffi::lua_createtable(state, size, 0);
            for (i, v) in values.iter().enumerate() {
                match v {
                    BatchValue::Bytes(Some(b)) => {
                        ffi::lua_pushlstring(state, b.as_ptr().cast(), b.len());
                    }
                    BatchValue::Bytes(None) => ffi::lua_pushnil(state),
                    BatchValue::Bool(b) => ffi::lua_pushboolean(state, c_int::from(*b)),
                    BatchValue::Int(n) => ffi::lua_pushinteger(state, *n),
                }
                ffi::lua_rawseti(state, -2, i as ffi::lua_Integer + 1);
            }
        })
    }
}

/// A `Decision` from a plain table of its fields (`action`, `code`, `smtp`,
/// `message`: strings; `retry_at`: an integer; `reasons`: a list of strings;
/// `drop`: strings by string), as the default plugins answer on every
/// message. None for anything else (a metatable, a field of another type),
/// which serde then reads or explains.
pub fn decision(lua: &Lua, value: &Value) -> Option<super::decisions::Decision> {
    if !value.is_table() {
        return None;
    }
    let mut out = None;
    // SAFETY: reads only (lua_next over keys it gave, type checks,
    // tolstring on strings, tointegerx, rawgeti, rawlen): none raises an
    // error, so the Strings made here are never skipped by a longjmp.
    let read = unsafe {
        lua.exec_raw::<()>(value, |state| {
            if ffi::lua_getmetatable(state, 1) != 0 {
                return;
            }
            out = read_decision(state);
            ffi::lua_settop(state, 0);
        })
    };
    read.ok().and(out)
}

/// The string at `idx` as an owned String (None: not a UTF-8 string).
unsafe fn owned_at(state: *mut ffi::lua_State, idx: c_int) -> Option<String> {
    // SAFETY: `idx` is a valid index; the bytes are copied before the caller can pop the
    // string.
    unsafe { string_at(state, idx) }
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_owned)
}

unsafe fn read_decision(state: *mut ffi::lua_State) -> Option<super::decisions::Decision> {
    let mut d = super::decisions::Decision::default();
    let mut action = false;
    // SAFETY: the table is at 1 (checked by the caller); lua_next gets only keys it gave back,
    // and the stack is reset to 2 after each pair, so it never grows past three.
    unsafe {
        ffi::lua_pushnil(state);
        while ffi::lua_next(state, 1) != 0 {
            // Key at 2, value at 3.
            let ok = match string_at(state, 2) {
                Some(b"action") => string_at(state, 3)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(super::decisions::Action::parse)
                    .map(|v| {
                        d.action = v;
                        action = true;
                    }),
                Some(b"code") => owned_at(state, 3).map(|v| d.code = Some(v)),
                Some(b"smtp") => owned_at(state, 3).map(|v| d.smtp = Some(v)),
                Some(b"message") => owned_at(state, 3).map(|v| d.message = Some(v)),
                Some(b"retry_at") => (ffi::lua_type(state, 3) == ffi::LUA_TNUMBER)
                    .then(|| integer_at(state, 3))
                    .flatten()
                    .map(|v| d.retry_at = Some(v)),
                Some(b"reasons") => string_list(state, 3).map(|v| d.reasons = v),
                Some(b"drop") => string_map(state, 3).map(|v| d.drop = v),
                // Anything else goes to serde, for its error message.
                Some(_) | None => None,
            };
            ffi::lua_settop(state, 2);
            ok?;
        }
    }
    // Without an action: serde says what is missing.
    action.then_some(d)
}

/// A table at `idx` holding only strings at 1..n.
unsafe fn string_list(state: *mut ffi::lua_State, idx: c_int) -> Option<Vec<String>> {
    // SAFETY: `idx` holds a value (its type is checked first); each element is pushed and
    // popped at once, so the stack stays at `top` + 1 at most.
    unsafe {
        // Nothing but the sequence (serde would see a map otherwise).
        if ffi::lua_type(state, idx) != ffi::LUA_TTABLE || !plain_list(state, idx) {
            return None;
        }
        let n = ffi::lua_rawlen(state, idx);
        let mut out: Vec<String> = Vec::with_capacity(n);
        let top = ffi::lua_gettop(state);
        for i in 1..=n {
            ffi::lua_rawgeti(state, idx, i as ffi::lua_Integer);
            let item: Option<String> = owned_at(state, top + 1);
            ffi::lua_settop(state, top);
            out.push(item?);
        }
        Some(out)
    }
}

/// A table at `idx` of string keys to string values.
unsafe fn string_map(
    state: *mut ffi::lua_State,
    idx: c_int,
) -> Option<std::collections::BTreeMap<String, String>> {
    // SAFETY: `idx` holds a value (its type is checked first); lua_next's key is kept and its
    // value popped each turn, so the stack stays within `top` + 2.
    unsafe {
        if ffi::lua_type(state, idx) != ffi::LUA_TTABLE || ffi::lua_getmetatable(state, idx) != 0 {
            return None;
        }
        let top = ffi::lua_gettop(state);
        let mut out = std::collections::BTreeMap::new();
        ffi::lua_pushnil(state);
        while ffi::lua_next(state, idx) != 0 {
            let pair = owned_at(state, top + 1).zip(owned_at(state, top + 2));
            ffi::lua_settop(state, top + 1);
            let (k, v) = pair?;
            out.insert(k, v);
        }
        Some(out)
    }
}
