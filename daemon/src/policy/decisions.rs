//! What hooks are given and what they may answer, as Rust types. Scripts see
//! the arguments as plain Lua tables (copies: changing them changes nothing;
//! a state refills its table of a per-message hook for the next message)
//! and answer with a table or nil; see `docs/lua-api.md`.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A hook's argument as a Lua table. Built field by field through Lua's C
/// API (see `lua_raw`): going through serde, or mlua's table API, costs
/// several times more, and hooks run on every message.
pub trait HookArg {
    fn to_lua(&self, lua: &mlua::Lua) -> mlua::Result<mlua::Value>;

    /// The bytes of text the argument carries, checked against
    /// `policy.max_input_kb` before a call.
    fn input_bytes(&self) -> usize;

    /// The argument in the table a Lua state keeps in `slot` from the last
    /// call of the same hook, refilled (made and kept first if the slot is
    /// empty or a script changed the table's keys). Arguments that are not
    /// made for every message are made afresh each time.
    fn to_lua_in(
        &self,
        lua: &mlua::Lua,
        slot: &mut Option<super::lua_raw::ArgSlot>,
    ) -> mlua::Result<mlua::Value> {
        let _ = slot;
        self.to_lua(lua)
    }
}

/// What a hook answers, read from the Lua value it returned (not nil).
pub trait HookAnswer: Sized {
    fn from_lua(lua: &mlua::Lua, value: mlua::Value) -> mlua::Result<Self>;

    /// Whether `hook` may answer this (read without error, but maybe not
    /// one of its verdicts).
    fn check_for(&self, hook: &str) -> Result<(), String> {
        let _ = hook;
        Ok(())
    }
}

/// Reads an answer through serde (mlua's deserializer): every answer but
/// the per-message [`Decision`], which has a faster path first.
pub fn from_lua_serde<R: serde::de::DeserializeOwned>(
    lua: &mlua::Lua,
    value: mlua::Value,
) -> mlua::Result<R> {
    let _ = lua;
    let options = mlua::serde::de::Options::new().deny_unsupported_types(false);
    let de = mlua::serde::Deserializer::new_with_options(value, options);
    // The error names the field that was wrong ("retry_at: invalid type").
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        match e.into_inner() {
            mlua::Error::DeserializeError(m) if path != "." => {
                mlua::Error::DeserializeError(format!("{path}: {m}"))
            }
            other => other,
        }
    })
}

/// `serde_answer!(Type, ...)`: the answer is read through serde.
#[macro_export]
macro_rules! serde_answer {
    ($($t:ty),*) => {$(
        impl $crate::policy::decisions::HookAnswer for $t {
            fn from_lua(lua: &mlua::Lua, value: mlua::Value) -> mlua::Result<Self> {
                $crate::policy::decisions::from_lua_serde(lua, value)
            }
        }
    )*};
}

/// `warmup_limit(id)`: today's cap for a sending identity (egress asks
/// it for warm-up sources; the limits plugin for domains).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupCap {
    pub cap: f64,
    /// Days since the identity's first.
    #[serde(default)]
    pub day: Option<f64>,
    /// What the cap holds back (a set of trigger types and scenarios).
    #[serde(default)]
    pub applies_to: Option<serde_json::Value>,
}

/// `warmup_limit`'s argument: whose cap, and when.
#[derive(Debug, Clone, Serialize)]
pub struct WarmupQuery {
    /// A sender domain, or a source and a provider (`ip-a/gmail`).
    pub identity: String,
    pub now: i64,
}

/// What `callback_format` answers: the request's body and headers.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Formatted {
    pub body: String,
    pub headers: std::collections::BTreeMap<String, String>,
}

serde_answer!(
    Formatted,
    WarmupCap,
    serde_json::Value,
    ReputationState,
    BounceClass,
    Egress,
    EgressPlan,
    Signal
);

impl HookAnswer for Decision {
    fn from_lua(lua: &mlua::Lua, value: mlua::Value) -> mlua::Result<Self> {
        // The usual shapes through the C API; anything else (and every
        // mistake, for its error message) through serde.
        match super::lua_raw::decision(lua, &value) {
            Some(d) => Ok(d),
            None => from_lua_serde(lua, value),
        }
    }

    fn check_for(&self, hook: &str) -> Result<(), String> {
        Decision::check_for(self, hook)
    }
}

/// `hook_arg!(Type { plain fields } userdata { fields that are userdata })`;
/// `hook_arg!(kept Type { ... } userdata { ... })` for the arguments of the
/// hooks that run on every message, whose table a state keeps and refills.
macro_rules! hook_arg {
    ($t:ty { $($f:ident),* $(,)? } $(userdata { $($u:ident),* })?) => {
        impl HookArg for $t {
            fn to_lua(&self, lua: &mlua::Lua) -> mlua::Result<mlua::Value> {
                hook_arg!(@fresh self, lua, { $($f),* } $({ $($u),* })?)
            }

            fn input_bytes(&self) -> usize {
                0 $(+ InputBytes::input_bytes(&self.$f))*
            }
        }
    };
    (kept $t:ty { $($f:ident),* $(,)? } userdata { $u:ident as [$($alias:ident),+] }) => {
        impl HookArg for $t {
            fn to_lua(&self, lua: &mlua::Lua) -> mlua::Result<mlua::Value> {
                use super::lua_raw::{FieldName, RawPush};
                // One object under each of its names.
                let shared = mlua::Value::UserData(lua.create_userdata(self.$u.clone())?);
                super::lua_raw::table(
                    lua,
                    &[$((
                        const { FieldName::new(concat!(stringify!($f), "\0")) },
                        &self.$f as &dyn RawPush,
                    )),*],
                    vec![$((
                        const { FieldName::new(concat!(stringify!($alias), "\0")) },
                        shared.clone(),
                    )),+],
                )
            }

            fn input_bytes(&self) -> usize {
                0 $(+ InputBytes::input_bytes(&self.$f))* + self.$u.input_bytes()
            }

            fn to_lua_in(
                &self,
                lua: &mlua::Lua,
                slot: &mut Option<super::lua_raw::ArgSlot>,
            ) -> mlua::Result<mlua::Value> {
                use super::lua_raw::{ArgSlot, FieldName, RawPush};
                const EXTRA: &[FieldName] = &[$(FieldName::new(concat!(stringify!($alias), "\0"))),+];
                if let Some(kept) = slot.as_ref() {
                    if let Some(ud) = &kept.userdata {
                        set_userdata(ud, &self.$u)?;
                    }
                    let fields: &[(FieldName, &dyn RawPush)] = &[$((
                        const { FieldName::new(concat!(stringify!($f), "\0")) },
                        &self.$f as &dyn RawPush,
                    )),*];
                    if let Some(value) = super::lua_raw::refill(lua, kept, fields, EXTRA)? {
                        return Ok(value);
                    }
                }
                let value = self.to_lua(lua)?;
                if let mlua::Value::Table(table) = &value {
                    let userdata = Some(table.raw_get::<mlua::AnyUserData>(
                        EXTRA.first().map_or("", FieldName::as_str),
                    )?);
                    *slot = Some(ArgSlot { table: table.clone(), userdata });
                }
                Ok(value)
            }
        }
    };
    (@fresh $self:ident, $lua:ident, { $($f:ident),* } $({ $($u:ident),* })?) => {{
        use super::lua_raw::{FieldName, RawPush};
        super::lua_raw::table(
            $lua,
            &[$((
                const { FieldName::new(concat!(stringify!($f), "\0")) },
                &$self.$f as &dyn RawPush,
            )),*],
            vec![$($((
                const { FieldName::new(concat!(stringify!($u), "\0")) },
                mlua::Value::UserData($lua.create_userdata($self.$u.clone())?),
            )),*)?],
        )
    }};
}

/// The text a field of a hook's argument carries (see
/// [`HookArg::input_bytes`]).
trait InputBytes {
    fn input_bytes(&self) -> usize;
}

impl InputBytes for str {
    fn input_bytes(&self) -> usize {
        self.len()
    }
}

impl InputBytes for String {
    fn input_bytes(&self) -> usize {
        self.len()
    }
}

impl InputBytes for &str {
    fn input_bytes(&self) -> usize {
        self.len()
    }
}

impl InputBytes for Cow<'_, str> {
    fn input_bytes(&self) -> usize {
        self.len()
    }
}

impl InputBytes for Cow<'_, [String]> {
    fn input_bytes(&self) -> usize {
        self.iter().map(String::len).sum()
    }
}

impl InputBytes for Vec<String> {
    fn input_bytes(&self) -> usize {
        self.iter().map(String::len).sum()
    }
}

macro_rules! no_text {
    ($($t:ty),*) => {$(
        impl InputBytes for $t {
            fn input_bytes(&self) -> usize {
                0
            }
        }
    )*};
}
no_text!(bool, u16, i64, usize);

/// Puts `value` into a kept userdata of its type.
fn set_userdata<T: Clone + 'static>(ud: &mlua::AnyUserData, value: &T) -> mlua::Result<()> {
    *ud.borrow_mut::<T>()? = value.clone();
    Ok(())
}

/// Tests and tools pass JSON.
impl HookArg for serde_json::Value {
    fn input_bytes(&self) -> usize {
        fn bytes(v: &serde_json::Value) -> usize {
            match v {
                serde_json::Value::String(s) => s.len(),
                serde_json::Value::Array(a) => a.iter().map(bytes).sum(),
                serde_json::Value::Object(o) => o.iter().map(|(k, v)| k.len() + bytes(v)).sum(),
                _ => 8,
            }
        }
        bytes(self)
    }

    fn to_lua(&self, lua: &mlua::Lua) -> mlua::Result<mlua::Value> {
        use mlua::LuaSerdeExt;
        let options = mlua::serde::SerializeOptions::new()
            .serialize_none_to_null(false)
            .serialize_unit_to_null(false);
        lua.to_value_with(self, options)
    }
}

hook_arg!(ConnectInfo {
    ip,
    port,
    listener,
    tls
});
hook_arg!(TransactionInfo {
    ip,
    helo,
    tls,
    account,
    sender,
    sender_domain,
    recipient,
    recipients
});
hook_arg!(kept MessageInfo<'_> {
    kind,
    id,
    account,
    sender,
    sender_domain,
    recipients,
    size,
    subject,
    subject_valid_utf8,
    trigger_type,
    scenario,
    now
} userdata { headers as [headers, body] });
hook_arg!(WarmupQuery { identity, now });
hook_arg!(ReputationEvent {
    domain,
    account,
    kind,
    count,
    now
});
hook_arg!(BounceInfo {
    code,
    enhanced_code,
    text,
    recipient,
    sender_domain,
    mx,
    source
});
hook_arg!(SignalInfo {
    code,
    enhanced_code,
    text,
    stage,
    provider,
    source
});

/// `on_connect(conn)`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectInfo {
    pub ip: String,
    pub port: u16,
    pub listener: String,
    pub tls: bool,
}

/// `on_mail_from(tx)` and `on_rcpt_to(tx)`.
#[derive(Debug, Clone, Serialize)]
pub struct TransactionInfo {
    pub ip: String,
    pub helo: String,
    pub tls: bool,
    /// Authenticated account, or "" for a relay client.
    pub account: String,
    pub sender: String,
    pub sender_domain: String,
    /// The recipient being checked (on_rcpt_to), else "".
    pub recipient: String,
    /// Recipients accepted so far.
    pub recipients: Vec<String>,
}

/// A message as a hook reads it, on demand, as `msg.headers` and
/// `msg.body` (one object): `msg.headers:get("List-Id")` (first value or
/// nil), `msg.headers:all("Received")` (every value; values unfolded);
/// `msg.body:text()` and `msg.body:html()` (the decoded text and HTML
/// parts, each at most `policy.max_body_kb`), `msg.body:attachments()`
/// (`{ name, type, size }` each). The body is decoded only when asked,
/// and is there only for a hook that sees messages' content
/// (`content_filter`); elsewhere the body methods answer nothing.
#[derive(Debug, Clone, Default)]
pub struct MessageView {
    /// The header block.
    pub headers: std::sync::Arc<[u8]>,
    /// The whole message, when the body is the hook's to read.
    pub message: Option<std::sync::Arc<[u8]>>,
    /// The most of each decoded body a hook gets, in bytes.
    pub max_body: usize,
}

impl MessageView {
    /// A view of the header block only.
    pub fn headers(block: &[u8]) -> MessageView {
        MessageView {
            headers: std::sync::Arc::from(block),
            message: None,
            max_body: 0,
        }
    }

    fn input_bytes(&self) -> usize {
        self.headers.len()
    }

    fn parsed(&self) -> Option<mail_parser::Message<'_>> {
        mail_parser::MessageParser::default().parse(self.message.as_deref()?)
    }
}

/// `parts`' decoded text, joined, at most `max` bytes (cut at a character).
fn bounded_text<'a>(
    parts: impl Iterator<Item = &'a mail_parser::MessagePart<'a>>,
    max: usize,
) -> String {
    let mut out = String::new();
    for part in parts {
        if let Some(text) = part.text_contents() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(text);
        }
        if out.len() >= max {
            break;
        }
    }
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

impl mlua::UserData for MessageView {
    fn add_methods<M: mlua::UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |_, this, name: String| {
            Ok(crate::message::header_values(&this.headers, &name)
                .into_iter()
                .next())
        });
        methods.add_method("all", |_, this, name: String| {
            Ok(crate::message::header_values(&this.headers, &name))
        });
        methods.add_method("text", |_, this, ()| {
            Ok(this.parsed().map(|m| {
                let parts = m.text_body.iter().filter_map(|i| m.parts.get(*i as usize));
                let plain = parts.filter(|p| !p.is_text_html());
                bounded_text(plain, this.max_body)
            }))
        });
        methods.add_method("html", |_, this, ()| {
            Ok(this.parsed().map(|m| {
                let parts = m.html_body.iter().filter_map(|i| m.parts.get(*i as usize));
                let html = parts.filter(|p| p.is_text_html());
                bounded_text(html, this.max_body)
            }))
        });
        methods.add_method("attachments", |lua, this, ()| {
            use mail_parser::MimeHeaders;
            let list = lua.create_table()?;
            if let Some(m) = this.parsed() {
                for a in m.attachments() {
                    let t = lua.create_table()?;
                    t.set("name", a.attachment_name().unwrap_or_default())?;
                    let kind = a.content_type().map(|c| match c.subtype() {
                        Some(sub) => format!("{}/{sub}", c.ctype()),
                        None => c.ctype().to_string(),
                    });
                    t.set("type", kind.unwrap_or_default())?;
                    t.set("size", a.len())?;
                    list.push(t)?;
                }
            }
            Ok(list)
        });
    }
}

/// `check_limits(msg)` and `content_filter(msg)` for a message. It borrows
/// what admission holds: it is made for every message.
#[derive(Debug, Clone)]
pub struct MessageInfo<'a> {
    pub kind: &'static str,
    pub id: Cow<'a, str>,
    pub account: Cow<'a, str>,
    pub sender: Cow<'a, str>,
    pub sender_domain: Cow<'a, str>,
    pub recipients: Cow<'a, [String]>,
    pub size: usize,
    pub subject: String,
    pub subject_valid_utf8: bool,
    /// "regular" (API SendEmail, SMTP) or "batch" (batch tasks).
    pub trigger_type: &'static str,
    /// Scenario: transactional, notification or marketing (from the
    /// template or the X-Kiln-Scenario header), or "".
    pub scenario: String,
    pub now: i64,
    /// `msg.headers` and `msg.body`.
    pub headers: MessageView,
}

/// `reputation(event)`: one delivery outcome or engagement event, or a
/// question (`kind = "query"`).
#[derive(Debug, Clone, Serialize)]
pub struct ReputationEvent {
    pub domain: String,
    pub account: String,
    pub kind: String,
    pub count: i64,
    pub now: i64,
}

/// What `reputation` answers.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ReputationState {
    pub level: i64,
    pub daily_limit: i64,
    pub blocked: bool,
    pub lower_tomorrow: bool,
}

/// `classify_bounce(reply)`.
#[derive(Debug, Clone, Serialize)]
pub struct BounceInfo {
    pub code: u16,
    pub enhanced_code: String,
    pub text: String,
    pub recipient: String,
    pub sender_domain: String,
    pub mx: String,
    /// "smtp" (a reply during delivery) or "dsn" (a report that came back).
    pub source: &'static str,
}

/// What `classify_bounce` answers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct BounceClass {
    /// hard, soft, spam, quota, policy, other
    pub class: String,
    /// Retry (true) or give up (false); the reply code decides when absent.
    pub retry: Option<bool>,
    /// Add the recipient to the installation-wide blocklist.
    pub blocklist: bool,
    /// Counts as an invalid address for the reputation rules.
    pub invalid_address: bool,
}

/// `select_egress(msg)` answers a pool and optionally a source address.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Egress {
    pub pool: String,
    pub source_ip: Option<String>,
}

/// `egress_plan()`: how mail leaves, read once per policy load. Limits
/// apply per (provider, source address); a provider is the recipient
/// domains whose MX hosts end in one of its `mx` suffixes; any other
/// destination is a site with the `defaults`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressPlan {
    pub defaults: Limits,
    pub providers: Vec<ProviderPlan>,
    pub sources: Vec<SourcePlan>,
    pub pools: BTreeMap<String, Vec<PoolMember>>,
}

/// Shaping limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub connections: Option<u32>,
    pub messages_per_connection: Option<u32>,
    pub per_second: Option<f64>,
    pub per_minute: Option<f64>,
    pub per_hour: Option<f64>,
    pub new_connections_per_minute: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderPlan {
    pub name: String,
    /// MX host name suffixes ("google.com" takes aspmx.l.google.com).
    pub mx: Vec<String>,
    #[serde(flatten)]
    pub limits: Limits,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePlan {
    pub name: String,
    /// The local address connections are made from (none: the system's).
    pub address: Option<String>,
    /// The EHLO name it introduces itself with (none: server.hostname).
    pub ehlo: Option<String>,
    /// Its daily volume per provider follows the `warmup_limit` curve.
    #[serde(default)]
    pub warmup: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolMember {
    /// A source's name, or an address (a source of its own).
    pub source: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `egress_signal(reply)`: a refusal, asked about whether it says "slow
/// down".
#[derive(Debug, Clone, Serialize)]
pub struct SignalInfo {
    pub code: u16,
    pub enhanced_code: String,
    pub text: String,
    /// connect | mail | rcpt | data
    pub stage: &'static str,
    pub provider: String,
    pub source: String,
}

/// What `egress_signal` answers for a reply that is a throttling signal:
/// what to do to the (provider, source) that sent it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Signal {
    /// The rule that matched, for the log, the shaping record and status.
    pub rule: String,
    /// No attempt on that (provider, source) for this long.
    pub suspend_s: Option<f64>,
    /// Cut its rate and connections to this share, then climb back.
    pub factor: Option<f64>,
    /// How long each step back up waits without a new signal.
    pub recover_s: Option<f64>,
    /// Its mail goes to the pool's other sources while it is suspended.
    pub other_source: bool,
    /// A 5xx that is a throttle: retried, not bounced.
    pub retry: bool,
    /// A 4xx that means the mail can never go (a listing that names the
    /// message): the recipient bounces.
    pub bounce: bool,
}

/// A hook's verdict, from a closed set: an answer Kiln does not understand
/// is a hook failure, never an accept. Which hook may answer which is
/// checked by [`Decision::check_for`] (docs/lua-api.md, "Verdicts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// on_connect, on_mail_from, on_rcpt_to, content_filter: go on.
    Accept,
    /// check_limits: queue the message (to the recipients not dropped).
    Send,
    Reject,
    Defer,
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        Some(match text {
            "accept" => Action::Accept,
            "send" => Action::Send,
            "reject" => Action::Reject,
            "defer" => Action::Defer,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Send => "send",
            Action::Reject => "reject",
            Action::Defer => "defer",
        }
    }
}

impl PartialEq<&str> for Action {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The common answer of the accept/reject hooks and of `check_limits` and
/// `content_filter`. Every field but `action` may be left out; a field not
/// listed here is a mistake (a misspelling), not ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub action: Action,
    /// API error code (e.g. FailedOperation.ExceedSendLimit).
    #[serde(default)]
    pub code: Option<String>,
    /// SMTP reply line, e.g. "550 5.7.1 Not from here".
    #[serde(default)]
    pub smtp: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// defer: when to try again (ms since the epoch).
    #[serde(default)]
    pub retry_at: Option<i64>,
    /// content_filter: every reason, not just the first.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// check_limits: recipients dropped, with the reason code.
    #[serde(default)]
    pub drop: BTreeMap<String, String>,
}

impl Default for Decision {
    /// What no answer (nil) means: go on.
    fn default() -> Self {
        Decision {
            action: Action::Accept,
            code: None,
            smtp: None,
            message: None,
            retry_at: None,
            reasons: Vec::new(),
            drop: BTreeMap::new(),
        }
    }
}

impl Decision {
    pub fn is_reject(&self) -> bool {
        self.action == Action::Reject
    }

    pub fn is_defer(&self) -> bool {
        self.action == Action::Defer
    }

    /// Whether `hook` may answer this: its verdicts, and the fields that
    /// mean something for it.
    pub fn check_for(&self, hook: &str) -> Result<(), String> {
        let (verdicts, fields): (&[Action], &[&str]) = match hook {
            "check_limits" => (
                &[Action::Send, Action::Reject, Action::Defer],
                &["drop", "retry_at", "reasons"],
            ),
            "content_filter" => (
                &[Action::Accept, Action::Reject, Action::Defer],
                &["reasons", "retry_at"],
            ),
            _ => (&[Action::Accept, Action::Reject, Action::Defer], &[]),
        };
        if !verdicts.contains(&self.action) {
            let allowed: Vec<&str> = verdicts.iter().map(|v| v.as_str()).collect();
            return Err(format!(
                "{hook} does not answer action = {:?} (it answers {})",
                self.action.as_str(),
                allowed.join(", ")
            ));
        }
        let given = [
            ("drop", !self.drop.is_empty()),
            ("retry_at", self.retry_at.is_some()),
            ("reasons", !self.reasons.is_empty()),
        ];
        if let Some((field, _)) = given.iter().find(|(f, set)| *set && !fields.contains(f)) {
            return Err(format!("{hook} does not answer {field}"));
        }
        if self.retry_at.is_some() && self.action != Action::Defer {
            return Err("retry_at goes with action = \"defer\" only".into());
        }
        Ok(())
    }

    /// The SMTP reply for a refusal: the script's own line if it is a valid
    /// 4xx/5xx reply, else one built from `fallback` and the message.
    pub fn smtp_reply(&self, fallback: &str) -> String {
        if let Some(line) = &self.smtp {
            let code_ok = line.len() >= 3
                && line.as_bytes()[..3].iter().all(u8::is_ascii_digit)
                && matches!(line.as_bytes()[0], b'4' | b'5')
                && (line.len() == 3 || line.as_bytes()[3] == b' ');
            if code_ok && !line.contains(['\r', '\n']) {
                return line.clone();
            }
        }
        let text = self
            .message
            .clone()
            .or_else(|| self.code.clone())
            .unwrap_or_else(|| "Refused by policy".into());
        format!("{fallback} {}", text.replace(['\r', '\n'], " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_reply_uses_only_well_formed_script_lines() {
        let d = Decision {
            smtp: Some("550 5.7.1 Not from here".into()),
            ..Decision::default()
        };
        assert_eq!(d.smtp_reply("554 5.7.1"), "550 5.7.1 Not from here");
        for bad in ["250 ok", "55x nope", "550\r\nRSET", "hello"] {
            let d = Decision {
                smtp: Some(bad.into()),
                message: Some("blocked".into()),
                ..Decision::default()
            };
            assert_eq!(d.smtp_reply("554 5.7.1"), "554 5.7.1 blocked", "{bad}");
        }
    }
}
