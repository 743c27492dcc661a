//! What the fuzz targets in `fuzz/` run, one function per input class, and
//! the same functions the test `every_corpus_file_replays` (below) replays
//! every corpus file through on the stable toolchain, so a crash once found
//! stays a test.
//!
//! Each function takes arbitrary bytes, must never panic, and asserts what
//! must hold whatever the input: a parsed address reads back the same, a
//! DATA section ends in the same place however the bytes were split, an
//! intact log frame is replayed and a damaged one stops the replay where
//! it is damaged, a policy answer reads the same by both of its paths.

use crate::address::Mailbox;
use crate::intake::smtp::parser::{Command, parse_command, parse_mailbox};
use crate::line_io::{Data, DataReader, MAX_DATA_LINE, dot_stuff};
use crate::store::wal;
use bytes::BytesMut;

/// A fuzz target: takes any bytes, panics only on a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name of its file in `fuzz/fuzz_targets/` and its
/// corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("smtp_command", smtp_command),
    ("smtp_data", smtp_data),
    ("address", address),
    ("inbound_report", inbound_report),
    ("api_request", api_request),
    ("template", template),
    ("hook_answer", hook_answer),
    ("wal_replay", wal_replay),
    ("transport_policy", transport_policy),
];

/// Reads bytes off the front of the input to steer a target.
struct Steer<'a>(&'a [u8]);

impl<'a> Steer<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let head = self.bytes(8);
        b[..head.len()].copy_from_slice(head);
        u64::from_le_bytes(b)
    }
}

/// An address in canonical form reads back as itself: what Kiln keeps is
/// what it hands the next hop.
fn assert_canonical(address: &str, utf8: bool) {
    if address.is_empty() {
        return;
    }
    let again = crate::address::canonical(address, utf8);
    assert_eq!(again.as_deref(), Ok(address), "canonical form reparsed");
}

/// SMTP command lines, one per line of the input.
pub fn smtp_command(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        match parse_command(line) {
            Ok(Command::Mail { from, .. }) => assert_canonical(&from, true),
            Ok(Command::Rcpt { to }) => assert_canonical(&to, true),
            Ok(Command::Ehlo(host) | Command::Helo(host)) => {
                assert!(!host.is_empty() && !host.contains([' ', '\r', '\n']));
            }
            _ => {}
        }
        if let Ok(path) = parse_mailbox(line, true) {
            assert_canonical(&path, true);
        }
    }
}

/// Feeds `input` to a DATA reader in reads of the given sizes (cycled);
/// the outcome and what is left after the data's end.
fn read_data(input: &[u8], max_size: usize, sizes: &[usize]) -> (Option<Data>, Vec<u8>) {
    let mut reader = DataReader::new(max_size);
    let mut buf = BytesMut::new();
    let mut rest = input;
    let mut i = 0;
    loop {
        if let Some(data) = reader.consume(&mut buf) {
            let mut left = buf.to_vec();
            left.extend_from_slice(rest);
            return (Some(data), left);
        }
        if rest.is_empty() {
            return (None, Vec::new());
        }
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        i += 1;
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

/// A DATA section: the same outcome, ending at the same byte, whether it
/// arrives at once or in pieces; a complete message has CRLF lines of at
/// most 998 octets, within the size limit, and dot-stuffed again it reads
/// back the same.
pub fn smtp_data(data: &[u8]) {
    let mut steer = Steer(data);
    let max_size = 16 + (steer.byte() as usize) * 64;
    let sizes: Vec<usize> = steer.bytes(4).iter().map(|b| *b as usize + 1).collect();
    let input = steer.0;
    let whole = read_data(input, max_size, &[input.len().max(1)]);
    let pieces = read_data(
        input,
        max_size,
        if sizes.is_empty() { &[1] } else { &sizes },
    );
    assert_eq!(whole, pieces, "outcome depends on how the bytes arrived");
    if input.len() <= 4096 {
        let bytewise = read_data(input, max_size, &[1]);
        assert_eq!(whole, bytewise, "outcome depends on how the bytes arrived");
    }
    if let (Some(Data::Complete(body)), _) = &whole {
        assert!(body.len() <= max_size);
        assert!(body.is_empty() || body.ends_with(b"\r\n"));
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let content = line.strip_suffix(b"\r").expect("every line ends in CRLF");
            assert!(!content.contains(&b'\r'), "a CR inside a line");
            assert!(content.len() <= MAX_DATA_LINE);
        }
        let again = read_data(&dot_stuff(body), body.len().max(1) + 2, &[7]);
        // dot_stuff ends an empty body with an empty line of its own.
        let expected = if body.is_empty() {
            b"\r\n".to_vec()
        } else {
            body.clone()
        };
        assert_eq!(again, (Some(Data::Complete(expected)), Vec::new()));
    }
}

/// An address: parsed, written in canonical form, parsed again the same.
pub fn address(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for utf8 in [false, true] {
        if let Ok(mailbox) = Mailbox::parse(&text, utf8) {
            let written = mailbox.to_string();
            assert_eq!(Mailbox::parse(&written, utf8), Ok(mailbox), "{written}");
        }
    }
    let _ = crate::address::valid_domain(&text);
    let _ = crate::net::domain_of(&text);
}

/// A DSN or complaint report as it comes back to the bounce domain.
pub fn inbound_report(data: &[u8]) {
    use crate::feedback::inbound_reports::{Report, read, smtp_reply};
    if let Report::Dsn(blocks) = read(data) {
        for block in blocks {
            let (code, text) = smtp_reply(&block.diagnostic);
            assert!(code < 1000);
            assert!(text.len() <= block.diagnostic.len());
        }
    }
}

/// An API request: the Authorization header (the input's first line), its
/// signature checked over the rest, which is also read as the action's
/// parameters, every field as every type.
pub fn api_request(data: &[u8]) {
    use crate::intake::api::params::Params;
    use crate::intake::api::tc3;
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let header = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();
    if let Ok(auth) = tc3::parse_authorization(&header) {
        let headers = |name: &str| Some(format!("{name}-value"));
        let req = tc3::Request {
            method: "POST",
            path: "/",
            query: "",
            header: &headers,
            payload: body,
        };
        let now = 1_790_000_000;
        for timestamp in [
            "1790000000",
            header.as_ref(),
            "-9223372036854775808",
            "99999999999999",
        ] {
            let verdict = tc3::verify(&auth, timestamp, now, "secret", &req);
            assert_ne!(verdict, Ok(()), "a fuzzed signature matched");
        }
    }
    let Ok(params) = Params::parse(body) else {
        return;
    };
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body) else {
        return;
    };
    let _ = params.only(&["Action", "FromEmailAddress"]);
    let _ = params.page(20, 100);
    for key in fields.keys() {
        let _ = params.str_opt(key);
        let _ = params.int_opt(key);
        let _ = params.bool_opt(key);
        let _ = params.strings(key);
        let _ = params.object_opt(key);
        if let Ok(objects) = params.objects(key) {
            for o in objects {
                let _ = o.page(10, 50);
                let _ = o.str("Name");
            }
        }
    }
}

/// A template and its data (after the first NUL): rendered as text and as
/// HTML, then given the unsubscribe footer and tracked links; every
/// tracked link's token verifies, and data cannot add markup.
pub fn template(data: &[u8]) {
    use crate::rewrite::{tracking::Tracker, unsubscribe};
    use crate::ses::templates::{render, variables};
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let text = String::from_utf8_lossy(&data[..split]);
    let values = data.get(split + 1..).unwrap_or_default();
    let values = match serde_json::from_slice::<serde_json::Value>(values) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => variables(&text)
            .into_iter()
            .map(|name| {
                let value = String::from_utf8_lossy(values).into_owned();
                (name, serde_json::Value::String(value))
            })
            .collect(),
    };
    let _ = render(&text, &values, false);
    // What the template review reads of it.
    let _ = crate::message::html_text(&text);
    let Ok(mut html) = render(&text, &values, true) else {
        return;
    };
    if !text.contains('<') {
        assert!(!html.contains('<'), "data added markup: {html}");
    }
    let tracker = Tracker::new(b"fuzz", "https://t.example/", Default::default());
    let mut plain = text.to_string();
    unsubscribe::add_footer(
        values.len() as u8 % 4,
        "https://t.example/u/x",
        &mut html,
        &mut plain,
    );
    let out = tracker.instrument(&html, "example.com", "m1", "r@example.net");
    if data.windows(9).any(|w| w == b"t.example") {
        return;
    }
    let base = "https://t.example/t/";
    for (i, _) in out.match_indices(base) {
        // After the base: "c/" (a link) or "o/" (the pixel), then the token.
        let token: String = out[i + base.len()..]
            .chars()
            .skip(2)
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        assert!(tracker.verify(&token).is_some(), "token {token} in {out}");
    }
}

/// Field names the hooks' answers have, so generated tables hit them.
const ANSWER_FIELDS: &[&str] = &[
    "action",
    "code",
    "smtp",
    "message",
    "retry_at",
    "reasons",
    "drop",
    "cap",
    "day",
    "applies_to",
    "class",
    "invalid_address",
    "rule",
    "suspend_s",
    "factor",
    "recover_s",
    "other_source",
    "retry",
    "bounce",
    "sources",
    "pools",
    "providers",
    "defaults",
    "name",
    "address",
    "ehlo",
    "warmup",
    "weight",
    "pool",
    "source",
    "accept",
    "reject",
    "defer",
    "send",
    "level",
    "connections",
    "per_second",
    "per_minute",
    "per_hour",
    "match",
];

/// A Lua value built from the input: nil, booleans, integers, floats (NaN
/// and infinities too), strings (not always UTF-8), tables (nested, with a
/// metatable sometimes) and functions.
fn lua_value(lua: &mlua::Lua, steer: &mut Steer<'_>, depth: u32) -> mlua::Value {
    use mlua::Value;
    let tag = steer.byte();
    let string = |steer: &mut Steer<'_>, tag: u8| -> mlua::Value {
        let bytes = if tag & 0x80 != 0 {
            let i = steer.byte() as usize % ANSWER_FIELDS.len();
            ANSWER_FIELDS[i].as_bytes()
        } else {
            let n = steer.byte() as usize % 24;
            steer.bytes(n)
        };
        lua.create_string(bytes).map_or(Value::Nil, Value::String)
    };
    match tag % 10 {
        0 => Value::Nil,
        1 => Value::Boolean(tag & 0x10 != 0),
        2 => Value::Integer(steer.u64() as i64),
        3 => Value::Number(f64::from_bits(steer.u64())),
        4 | 5 => string(steer, tag),
        6..=8 if depth < 4 => {
            let Ok(table) = lua.create_table() else {
                return Value::Nil;
            };
            let n = steer.byte() % 8;
            for i in 0..n {
                let key_tag = steer.byte();
                let key = if key_tag.is_multiple_of(3) {
                    Value::Integer(i64::from(i) + 1)
                } else {
                    string(steer, key_tag | (0x80 * u8::from(key_tag % 3 == 1)))
                };
                let value = lua_value(lua, steer, depth + 1);
                let _ = table.raw_set(key, value);
            }
            if tag % 10 == 8
                && let Ok(meta) = lua.create_table()
            {
                let _ = table.set_metatable(Some(meta));
            }
            Value::Table(table)
        }
        _ => lua
            .create_function(|_, ()| Ok(()))
            .map_or(Value::Nil, Value::Function),
    }
}

/// A policy hook's answer, as every hook reads it: a decision reads the same
/// through the fast C-API path as through serde, a refusal's SMTP reply is
/// one line, a plan compiles or is refused with an error.
pub fn hook_answer(data: &[u8]) {
    use crate::policy::decisions::{
        BounceClass, Decision, Egress, EgressPlan, HookAnswer, Limits, ReputationState, Signal,
        WarmupCap, from_lua_serde,
    };
    let lua = mlua::Lua::new();
    let mut steer = Steer(data);
    let value = lua_value(&lua, &mut steer, 0);
    if let Some(fast) = crate::policy::lua_raw::decision(&lua, &value) {
        let slow = from_lua_serde::<Decision>(&lua, value.clone());
        let slow = slow.expect("the fast path read what serde refuses");
        assert_eq!(
            format!("{fast:?}"),
            format!("{slow:?}"),
            "two readings differ"
        );
    }
    if let Ok(d) = Decision::from_lua(&lua, value.clone()) {
        for hook in ["content_filter", "check_limits", "select_egress", "other"] {
            let _ = d.check_for(hook);
        }
        let reply = d.smtp_reply("554 5.7.1");
        assert!(!reply.contains(['\r', '\n']), "reply of more than one line");
        assert!(matches!(reply.as_bytes().first(), Some(b'4' | b'5')));
    }
    let _ = WarmupCap::from_lua(&lua, value.clone());
    let _ = ReputationState::from_lua(&lua, value.clone());
    let _ = BounceClass::from_lua(&lua, value.clone());
    let _ = Egress::from_lua(&lua, value.clone());
    if let Ok(signal) = Signal::from_lua(&lua, value.clone()) {
        let _ = signal.check_for("signal");
    }
    if let Ok(plan) = EgressPlan::from_lua(&lua, value) {
        let _ = crate::egress::plan::Plan::compile(Some(plan), Limits::default(), None, "fuzz", 1);
    }
}

/// Changes generated from the input, grouped into frames.
fn frames_of(steer: &mut Steer<'_>) -> Vec<Vec<wal::Change>> {
    use wal::{Change, TableId};
    let tables = [
        TableId::Messages,
        TableId::Queue,
        TableId::Pending,
        TableId::Status,
        TableId::Kv,
        TableId::Expires,
    ];
    let mut frames = Vec::new();
    for _ in 0..steer.byte() % 6 {
        let mut changes = Vec::new();
        for _ in 0..=steer.byte() % 4 {
            let tag = steer.byte();
            let table = tables[tag as usize % tables.len()];
            let key = steer.bytes(tag as usize % 9).to_vec();
            changes.push(if tag & 0x80 != 0 {
                Change::Remove { table, key }
            } else {
                let n = steer.byte() as usize % 40;
                let value = steer.bytes(n).to_vec();
                Change::Put { table, key, value }
            });
        }
        frames.push(changes);
    }
    frames
}

fn payload_of(changes: &[wal::Change]) -> Vec<u8> {
    let mut payload = Vec::new();
    for c in changes {
        match c {
            wal::Change::Put { table, key, value } => {
                wal::record_put(&mut payload, *table, key, value)
            }
            wal::Change::Remove { table, key } => wal::record_remove(&mut payload, *table, key),
        }
    }
    payload
}

/// The write-ahead log replayed at start: arbitrary bytes never crash it;
/// a log of generated frames, torn or with one byte changed, replays
/// exactly the frames before the damage.
pub fn wal_replay(data: &[u8]) {
    if let Some(replay) = wal::replay(data) {
        assert!(replay.used + 16 <= data.len());
    }
    let mut steer = Steer(data);
    let generation = u64::from(steer.byte()) + 1;
    let damage = steer.u64();
    let frames = frames_of(&mut steer);
    let mut log = wal::header(generation).to_vec();
    let mut ends = Vec::new();
    for changes in &frames {
        log.extend_from_slice(&wal::frame(generation, &payload_of(changes)));
        ends.push(log.len());
    }
    // What the rest of a preallocated file holds: zeros, or a stale frame
    // of the generation before.
    if damage & 1 == 0 {
        log.extend_from_slice(&[0u8; 32]);
    } else {
        log.extend_from_slice(&wal::frame(generation - 1, &payload_of(&frames.concat())));
    }
    let intact = |k: usize| frames[..k].concat();
    let full = wal::replay(&log).expect("a log with a header");
    assert_eq!(full.changes, intact(frames.len()));
    if log.len() <= 16 {
        return;
    }
    let at = 16 + (damage >> 8) as usize % (log.len() - 16);
    // The frames wholly before the damaged byte survive, no more.
    let survive = ends.iter().filter(|end| **end <= at).count();
    let mut torn = log[..at].to_vec();
    assert_eq!(
        wal::replay(&torn).map(|r| r.changes),
        Some(intact(survive)),
        "torn at {at}"
    );
    torn = log.clone();
    torn[at] ^= (damage >> 1) as u8 | 1;
    let replayed = wal::replay(&torn).map(|r| r.changes);
    if at < *ends.last().unwrap_or(&16) {
        assert_eq!(replayed, Some(intact(survive)), "byte {at} changed");
    }
}

/// What receiving domains publish for transport security, steered by the
/// first byte: an MTA-STS policy file (one that parses reads back the same
/// when written out again), a `_mta-sts` or `_smtp._tls` TXT record (the
/// report addresses kept are `mailto:` or `https:` only), or a TLSA
/// record and a certificate to check against it (a record whose data is
/// the certificate itself, `x 0 0`, matches it).
pub fn transport_policy(data: &[u8]) {
    use crate::egress::{dane, mta_sts, tls_report_send};
    let mut s = Steer(data);
    match s.byte() % 3 {
        0 => {
            let text = String::from_utf8_lossy(s.0);
            if let Ok((mode, mx, max_age)) = mta_sts::parse_policy(&text) {
                let mut again = format!("version: STSv1\nmode: {}\n", mode.as_str());
                for m in &mx {
                    again.push_str(&format!("mx: {m}\n"));
                }
                again.push_str(&format!("max_age: {max_age}\n"));
                assert_eq!(
                    mta_sts::parse_policy(&again).ok(),
                    Some((mode, mx.clone(), max_age)),
                    "a policy written out again"
                );
                for m in &mx {
                    let _ = mta_sts::mx_matches(m, m.trim_start_matches("*."));
                }
            }
        }
        1 => {
            let text = String::from_utf8_lossy(s.0);
            let _ = mta_sts::txt_id(&text);
            if let Some(rua) = tls_report_send::parse_rua(&text) {
                assert!(rua.iter().all(|u| {
                    let u = u.to_ascii_lowercase();
                    u.starts_with("mailto:") || u.starts_with("https://")
                }));
            }
        }
        _ => {
            let (usage, selector, matching) = (s.byte(), s.byte(), s.byte());
            let len = usize::from(s.byte());
            let record = s.bytes(len).to_vec();
            let cert = s.0;
            let _ = dane::certificate_matches(usage, selector, matching, &record, cert);
            assert!(
                dane::certificate_matches(3, 0, 0, cert, cert),
                "a certificate is its own full-certificate record"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every file of every target's corpus (`fuzz/corpus/<target>`) and
    /// every input that once crashed one (`fuzz/regressions/<target>`).
    #[test]
    fn every_corpus_file_replays() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut failed = Vec::new();
        for (name, target) in super::TARGETS {
            let mut seeds = 0;
            for dir in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.expect("corpus directory entry").path();
                    let input = std::fs::read(&path).expect("corpus file");
                    if std::panic::catch_unwind(|| target(&input)).is_err() {
                        failed.push(path.display().to_string());
                    }
                    seeds += usize::from(dir == "corpus");
                }
            }
            assert!(seeds > 0, "fuzz/corpus/{name} has no seeds");
        }
        for entry in std::fs::read_dir(root.join("corpus")).expect("fuzz/corpus") {
            let name = entry.expect("entry").file_name();
            let name = name.to_string_lossy();
            assert!(
                super::TARGETS.iter().any(|(t, _)| *t == name),
                "fuzz/corpus/{name} is no target's"
            );
        }
        assert!(failed.is_empty(), "inputs that fail: {failed:#?}");
    }

    #[test]
    fn every_target_takes_empty_and_short_input() {
        for (name, target) in super::TARGETS {
            for input in [&b""[..], b"\0", b"\n", b"\xff\xff\xff\xff"] {
                let run = std::panic::catch_unwind(|| target(input));
                assert!(run.is_ok(), "{name} on {input:?}");
            }
        }
    }
}
