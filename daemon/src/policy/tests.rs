//! The Lua host itself: the sandbox, limits on a call, reloads, what a
//! hook is given and how its answer is read, the pool of states.

use super::decisions::{Decision, MessageInfo};
use super::lua_host::LuaHost;
use super::testing::{Fixture, NOW, check_limits, message};
use super::{Policy, PolicyError};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn the_sandbox_has_no_way_out() {
    let f = Fixture::new();
    let host = f.host("return {}");
    let got = host
        .eval(
            "return { type(os), type(io), type(load), type(loadfile), type(dofile),
                      type(string.dump), type(debug), type(package) }",
        )
        .await
        .expect("eval");
    assert_eq!(
        got,
        json!(["nil", "nil", "nil", "nil", "nil", "nil", "nil", "nil"])
    );
    // Whatever a script passes as a TTL, nothing panics.
    let got = host
        .eval(
            "kiln.counter.incr('t1', 1, math.huge) kiln.kv.put('t2', 'x', 1e300)
             kiln.set.add('t3', 'm', 0/0)
             return { kiln.counter.get('t1'), kiln.kv.get('t2'), kiln.set.contains('t3', 'm') }",
        )
        .await
        .expect("eval");
    assert_eq!(got, json!([1, "x", true]));
    let err = host
        .eval("kiln.counter.incr('t4', 1, -5)")
        .await
        .expect_err("a negative ttl is an error");
    assert!(err.contains("ttl"), "{err}");
    for bad in ["../etc/passwd", "/etc/passwd", "a.b"] {
        let err = host
            .eval(&format!("return require('{bad}')"))
            .await
            .expect_err("must not load");
        assert!(err.contains("bad module name"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn runaway_and_failing_hooks_are_errors_with_file_and_line() {
    let f = Fixture::new();
    let host = f.host(
        "return { hooks = {
            on_connect = function(c) while true do end end,
            on_mail_from = function(t) local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(1000) end end,
            on_rcpt_to = function(t) error('no such thing') end,
            check_limits = function(m) return 42 end,
            select_egress = function(m) coroutine.wrap(function() while true do end end)() end,
            classify_bounce = function(b)
              local co = coroutine.create(function() for i = 1, 1e12 do end end)
              local ok, e = coroutine.resume(co)
              error(e, 0)
            end,
         } }",
    );
    let err = |r: Result<Option<Decision>, PolicyError>| match r {
        Err(PolicyError::Script { message, .. }) => message,
        other => panic!("expected a script error, got {other:?}"),
    };
    let started = std::time::Instant::now();
    let m = err(host.call("on_connect", &json!({})).await);
    assert!(m.contains("policy.lua:2: instruction limit"), "{m}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Coroutines a script makes are stopped too.
    let m = err(host.call("select_egress", &json!({})).await);
    assert!(m.contains("policy.lua:6: instruction limit"), "{m}");
    let m = err(host.call("classify_bounce", &json!({})).await);
    assert!(m.contains("policy.lua:8: instruction limit"), "{m}");
    // Scripts that loop at load time do not load.
    let looping = LuaHost::new(&f.settings("while true do end"), f.store.clone());
    match looping {
        Err(PolicyError::Load(e)) => assert!(e.contains("instruction limit"), "{e}"),
        Err(other) => panic!("expected a load error, got {other}"),
        Ok(_) => panic!("a looping policy loaded"),
    }
    let m = err(host.call("on_mail_from", &json!({})).await);
    assert!(m.contains("memory") || m.contains("limit"), "{m}");
    let m = err(host.call("on_rcpt_to", &json!({})).await);
    assert!(
        m.contains("policy.lua:4:") && m.contains("no such thing"),
        "{m}"
    );
    let m = err(host.call("check_limits", &json!({})).await);
    assert!(m.contains("bad return value"), "{m}");
    // The state is still usable after all that.
    assert_eq!(host.eval("return 1 + 1").await.expect("eval"), json!(2));
}

#[tokio::test]
async fn a_policy_that_fails_to_load_leaves_the_old_one_in_force() {
    let f = Fixture::new();
    let settings = f.settings("return { hooks = { on_connect = function(c) return { action = 'reject', message = 'v1' } end } }");
    let policy = Policy::load(settings.clone(), f.store.clone()).expect("load");
    let v1: Decision = policy
        .call_named("on_connect", &json!({}))
        .await
        .expect("call")
        .expect("decision");
    assert_eq!(v1.message.as_deref(), Some("v1"));
    for broken in [
        "return { hooks = { on_connect = function( } }",
        "return { hooks = { on_conect = function() end } }",
        "return { disable = { 'nope' } }",
        "error('boom')",
    ] {
        std::fs::write(&settings.script, broken).expect("write");
        let e = policy.reload().expect_err(broken);
        assert!(matches!(e, PolicyError::Load(_)), "{e}");
        let still: Decision = policy
            .call_named("on_connect", &json!({}))
            .await
            .expect("call")
            .expect("decision");
        assert_eq!(still.message.as_deref(), Some("v1"), "after {broken}");
    }
    std::fs::write(
        &settings.script,
        "return { hooks = { on_connect = function(c) return { action = 'reject', message = 'v2' } end } }",
    )
    .expect("write");
    let version = policy.reload().expect("reload");
    assert_eq!(version, policy.version());
    let v2: Decision = policy
        .call_named("on_connect", &json!({}))
        .await
        .expect("call")
        .expect("decision");
    assert_eq!(v2.message.as_deref(), Some("v2"));
    // Disabling a plugin removes its hooks; `false` switches one hook off.
    std::fs::write(
        &settings.script,
        "return { disable = { 'limits' }, hooks = { classify_bounce = false } }",
    )
    .expect("write");
    policy.reload().expect("reload");
    assert!(!policy.has_hook(super::hooks::CheckLimits));
    assert!(!policy.has_hook(super::hooks::ClassifyBounce));
    assert!(policy.has_hook(super::hooks::Reputation));
}

#[tokio::test]
async fn a_plugin_hook_for_templates_only_is_not_called_for_messages() {
    let f = Fixture::new();
    let policy = Policy::load(f.settings("return {}"), f.store.clone()).expect("load");
    let template =
        json!({"kind": "template", "type": "trigger", "subject": "s", "html": "", "text": ""});
    let reviewed: Option<Decision> = policy
        .current()
        .call_for(super::hooks::ContentFilter, Some("template"), &template)
        .await
        .expect("call");
    assert_eq!(reviewed.expect("reviewed").action, "accept");
    // The plugin's hook would crash on this message; it is never called.
    let skipped: Option<Decision> = policy
        .current()
        .call_for(super::hooks::ContentFilter, Some("message"), &json!(null))
        .await
        .expect("not called");
    assert!(skipped.is_none());
    // A policy's own content_filter sees messages.
    std::fs::write(
        f.dir.path().join("policy.lua"),
        "return { hooks = { content_filter = function(m) return { action = 'reject', reasons = { m.kind } } end } }",
    )
    .expect("write");
    policy.reload().expect("reload");
    let seen: Option<Decision> = policy
        .current()
        .call_for(
            super::hooks::ContentFilter,
            Some("message"),
            &json!({"kind": "message"}),
        )
        .await
        .expect("call");
    assert_eq!(seen.expect("decision").reasons, ["message"]);
}

#[tokio::test]
async fn hooks_read_headers_on_demand() {
    let f = Fixture::new();
    let host = f.host(
        "return { hooks = { check_limits = function(m)
            return { action = 'reject', message = m.headers:get('x-campaign') .. '|' ..
                     #m.headers:all('Received') .. '|' .. tostring(m.headers:get('Nope')) }
          end } }",
    );
    let d = check_limits(&host, message(&["a@x.test"], "hi", "regular", NOW)).await;
    assert_eq!(d.message.as_deref(), Some("spring sale|2|nil"));
}

/// Kiln lifts the memory limit while it builds a hook's argument and reads
/// a batch's ops and answers; the script itself is held to it before and
/// after, however often that happens.
#[tokio::test]
async fn the_memory_limit_holds_around_what_kiln_builds() {
    let f = Fixture::new();
    let host = f.host(
        "return { hooks = {
            check_limits = function(m)
              if m.kind == 'big' then return { n = #string.rep('x', 64 * 1024 * 1024) } end
              kiln.batch({ { 'get', 'k' }, { 'incr', 'c', 1, 60 } })
              return { n = #string.rep('x', 64 * 1024 * 1024) }
            end,
         } }",
    );
    for arg in [json!({ "kind": "big" }), json!({ "kind": "after-batch" })] {
        for _ in 0..3 {
            match host.call::<_, Value>("check_limits", &arg).await {
                Err(PolicyError::Script { message, .. }) => {
                    assert!(message.contains("memory"), "{message}")
                }
                other => panic!("64 MB under a 16 MB limit: {other:?}"),
            }
        }
    }
    // Allocations under the limit still work, and so does the state.
    assert_eq!(
        host.eval("return #string.rep('x', 1024 * 1024)")
            .await
            .expect("eval"),
        json!(1048576)
    );
}

/// `msg.body` decodes the message on demand: its text and HTML parts
/// (each cut at `max_body`), its attachments by name, type and size.
#[tokio::test]
async fn a_hook_reads_the_body_it_is_given() {
    let f = Fixture::new();
    let host = f.host(
        "return { hooks = { content_filter = function(m)
            local a = m.body:attachments()[1]
            return { action = 'accept', reasons = { m.body:text(), m.body:html(),
              a.name .. '|' .. a.type .. '|' .. a.size, m.headers:get('Subject') } }
          end } }",
    );
    let raw = b"From: a@shop.test\r\nSubject: sale\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"M\"\r\n\r\n\
        --M\r\nContent-Type: multipart/alternative; boundary=\"A\"\r\n\r\n\
        --A\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
        Cheap pills =E2=80=94 buy now, the offer ends today\r\n\
        --A\r\nContent-Type: text/html\r\n\r\n<p>Cheap <b>pills</b></p>\r\n--A--\r\n\
        --M\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"list.pdf\"\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--M--\r\n";
    let mut m = message(&["a@x.test"], "sale", "regular", NOW);
    m.kind = "message";
    m.headers = super::decisions::MessageView {
        headers: std::sync::Arc::from(crate::message::header_block(raw)),
        message: Some(std::sync::Arc::from(&raw[..])),
        max_body: 24,
    };
    let d: Decision = host
        .call("content_filter", &m)
        .await
        .expect("hook")
        .expect("answer");
    assert_eq!(
        d.reasons,
        [
            "Cheap pills — buy now,",
            "<p>Cheap <b>pills</b></p",
            "list.pdf|application/pdf|9",
            "sale",
        ]
    );
}

/// A hook's argument, built through the C API, has every field with its
/// Lua type; and it is the script's own copy.
#[tokio::test]
async fn a_hook_argument_has_every_field() {
    let f = Fixture::new();
    let host = f.host(
        "return { hooks = { check_limits = function(m)
            local r = {}
            for k, v in pairs(m) do r[#r + 1] = k .. '=' .. type(v) end
            table.sort(r)
            m.recipients[1] = 'changed'
            return { action = 'send', reasons = r, code = m.id .. '|' .. m.recipients[2] ..
              '|' .. m.size .. '|' .. tostring(m.subject_valid_utf8) .. '|' .. m.now ..
              '|' .. m.headers:get('Subject') }
          end } }",
    );
    let m = message(&["a@x.test", "b@x.test"], "hi", "regular", NOW);
    let d = check_limits(&host, m).await;
    assert_eq!(
        d.reasons,
        [
            "account=string",
            "body=userdata",
            "headers=userdata",
            "id=string",
            "kind=string",
            "now=number",
            "recipients=table",
            "scenario=string",
            "sender=string",
            "sender_domain=string",
            "size=number",
            "subject=string",
            "subject_valid_utf8=boolean",
            "trigger_type=string",
        ]
    );
    assert_eq!(
        d.code.as_deref(),
        Some(format!("m1|b@x.test|2048|true|{NOW}|hi").as_str())
    );
}

/// `kiln.batch` reads every operation before it runs any: a bad one is an
/// error that names it, and nothing in the batch happened.
#[tokio::test]
async fn batch_operations_are_checked_before_any_runs() {
    let f = Fixture::new();
    let host = f.host("return {}");
    let got = host
        .eval(
            "kiln.set.add('s', 'm')
             local r = kiln.batch({ { 'get', 'k' }, { 'incr', 'c', 2, 60 }, { 'contains', 's', 'm' },
                                    { 'contains', 's', 'x' }, { 'incr', 'c' , nil, 60 }, { 'get', 'c' } })
             return { tostring(r[1]), r[2], r[3], r[4], r[5], r[6] }",
        )
        .await
        .expect("eval");
    assert_eq!(got, json!(["nil", 2, true, false, 3, "3"]));
    let got = host
        .eval(
            "local r = kiln.batch({ { 'take', 't', 2, 60, 3 }, { 'take', 't', 2, 60, 3 },
                                    { 'give', 't', 1 }, { 'take', 't', 2, 60, math.huge },
                                    { 'get', 't' } }, 1000)
             return { r[1], r[2], r[3], r[4], r[5] }",
        )
        .await
        .expect("eval");
    assert_eq!(got, json!([true, false, true, true, "3"]));
    for (ops, want) in [
        (
            "{ { 'take', 't', 1, 60 } }",
            "take: the limit must be a number",
        ),
        (
            "{ { 'take', 't', -1, 60, 5 } }",
            "take: the amount must be a whole number, 0 or more",
        ),
        ("{ { 'take', 't', 1, 0, 5 } }", "take needs a ttl > 0"),
        (
            "{ { 'take', 't', 1, 60, 5, -1 } }",
            "take: what a node may hold must be a whole number, 0 or more",
        ),
        (
            "{ { 'give', 't', 0.5 } }",
            "give: the amount must be a whole number, 0 or more",
        ),
        (
            "{ { 'get', 't' } }, -1",
            "batch: the age of an answer must be from 0 to 60000 milliseconds",
        ),
        ("{ 'x' }", "batch: operation 1 is not a table"),
        (
            "{ { 'incr', 'c', 1, 60 }, { 'nope', 'k' } }",
            "batch: operation 2: unknown operation \"nope\"",
        ),
        (
            "{ { 'incr', 'c', 1.5, 60 } }",
            "the amount must be an integer",
        ),
        ("{ { 'incr', 'c', 1 } }", "incr needs a ttl > 0"),
        ("{ { 'incr', 'c', 1, -1 } }", "incr needs a ttl > 0"),
        ("{ { 'get', 5 } }", "the key must be a string"),
        ("{ { 'contains', 's' } }", "the member must be a string"),
    ] {
        let err = host
            .eval(&format!("return kiln.batch({ops})"))
            .await
            .expect_err(ops);
        assert!(err.contains(want), "{ops}: {err}");
    }
    let after = host
        .eval("return kiln.counter.get('c')")
        .await
        .expect("eval");
    assert_eq!(after, json!(3), "no operation of a failed batch ran");
}

/// What `check_limits` answered for `m` (the scripts below answer what
/// they saw).
async fn seen_by(host: &LuaHost, id: &str, m: MessageInfo<'static>) -> Value {
    let m = MessageInfo {
        id: id.to_string().into(),
        ..m
    };
    host.call::<_, Value>("check_limits", &m)
        .await
        .expect("check_limits")
        .expect("answer")
}

/// A script that reports what it saw of its argument, then changes the
/// argument as a careless script might: `change` is Lua run on `msg`.
fn reporting_policy(change: &str) -> String {
    format!(
        r#"
        local last = nil
        return {{ disable = {{ "limits" }}, hooks = {{ check_limits = function(msg)
          local seen = {{ same_table = last == msg, id = msg.id, subject = msg.subject,
                         size = msg.size, mark = msg.mark, meta = getmetatable(msg) ~= nil,
                         recipients = table.concat(msg.recipients, ","), count = #msg.recipients,
                         campaign = msg.headers:get("X-Campaign") }}
          last = msg
          {change}
          return seen
        end }} }}
        "#
    )
}

/// A state keeps a per-message hook's argument table and refills it: the
/// next message sees its own fields only, whatever a script did to the
/// table (a key added, a list changed, a metatable), and its own headers.
#[tokio::test]
async fn a_kept_argument_table_shows_each_message_as_it_is() {
    let f = Fixture::new();
    let winter =
        || super::decisions::MessageView::headers(b"Subject: two\r\nX-Campaign: winter\r\n");

    // The script adds a key: the next message gets a table of its own.
    let host = f.host(&reporting_policy(
        r#"msg.mark = "left over"; table.insert(msg.recipients, "extra@x.test")"#,
    ));
    let first = message(&["a@x.test", "b@x.test", "c@x.test"], "one", "regular", NOW);
    let seen = seen_by(&host, "m1", first).await;
    assert_eq!(seen["same_table"], false);
    assert_eq!(seen["recipients"], "a@x.test,b@x.test,c@x.test");
    let mut second = message(&["d@x.test"], "two", "regular", NOW);
    second.size = 10;
    second.headers = winter();
    let seen = seen_by(&host, "m2", second).await;
    assert_eq!(seen["same_table"], false, "{seen}");
    assert_eq!(seen["mark"], Value::Null, "{seen}");
    assert_eq!(seen["id"], "m2");
    assert_eq!(seen["size"], 10);
    assert_eq!(seen["recipients"], "d@x.test");
    assert_eq!(seen["count"], 1);
    assert_eq!(seen["campaign"], "winter");

    // A script that only changes values and the list: the table is kept,
    // refilled; the list is exactly the new message's. A metatable (set
    // on m2) makes the next message get a new, plain table.
    let host = f.host(&reporting_policy(
        r#"msg.subject = "changed"; msg.recipients[1] = "changed@x.test"
           if msg.id == "m2" then setmetatable(msg, { __index = function() return 1 end }) end"#,
    ));
    let m1 = message(&["a@x.test", "b@x.test", "c@x.test"], "one", "regular", NOW);
    seen_by(&host, "m1", m1).await;
    let mut m2 = message(&["d@x.test"], "two", "regular", NOW);
    m2.headers = winter();
    let seen = seen_by(&host, "m2", m2).await;
    assert_eq!(seen["same_table"], true, "{seen}");
    assert_eq!(seen["subject"], "two");
    assert_eq!(seen["recipients"], "d@x.test");
    assert_eq!(seen["count"], 1);
    assert_eq!(seen["campaign"], "winter");
    let m3 = message(&["e@x.test", "f@x.test"], "three", "regular", NOW);
    let seen = seen_by(&host, "m3", m3).await;
    assert_eq!(seen["same_table"], false, "{seen}");
    assert_eq!(seen["meta"], false);
    assert_eq!(seen["id"], "m3");
    assert_eq!(seen["recipients"], "e@x.test,f@x.test");
    assert_eq!(seen["campaign"], "spring sale");
}

#[test]
fn hook_index_is_the_position_in_hooks() {
    for (i, hook) in super::HOOKS.iter().enumerate() {
        assert_eq!(super::hook_index(hook), Some(i), "{hook}");
    }
    assert_eq!(super::hook_index("no_such_hook"), None);
}

/// Calls that wait on the store hold their Lua state meanwhile: with one
/// state, forty of them at once still all finish, each in turn.
#[tokio::test]
async fn calls_wait_for_a_free_state() {
    let f = Fixture::new();
    let mut settings = f.settings(
        "return { hooks = { on_connect = function(c)
           kiln.kv.put('seen:' .. c.n, 'x')
           return { action = 'accept', message = kiln.kv.get('seen:' .. c.n) }
         end } }",
    );
    settings.states = 1;
    let policy = std::sync::Arc::new(Policy::load(settings, f.store.clone()).expect("load"));
    let calls = (0..40).map(|n| {
        let policy = policy.clone();
        tokio::spawn(async move {
            policy
                .call_named::<_, Decision>("on_connect", &json!({ "n": n }))
                .await
        })
    });
    for call in futures::future::join_all(calls).await {
        let d = call.expect("task").expect("hook").expect("decision");
        assert_eq!(d.message.as_deref(), Some("x"));
    }
}

/// A hook stuck where the watchdog cannot stop it (`gsub` backtracking
/// over a long string, one C call) does not hold up the thread it was
/// called on: the pattern goes to a helper, the hook waits for it
/// asynchronously and fails at its time limit, the helper is abandoned and
/// replaced, and other hooks answer meanwhile, on a runtime with one
/// worker thread.
#[tokio::test]
async fn a_call_stuck_in_a_c_function_does_not_hold_its_thread() {
    let f = Fixture::new();
    let mut settings = f.settings(
        "return { hooks = {
           on_connect = function(c) return string.rep('a', c.n):gsub('a*b', '') end,
           on_mail_from = function(t) return { action = 'accept', message = 'quick' } end,
         } }",
    );
    settings.states = 4;
    settings.timeout = Duration::from_millis(300);
    let policy = std::sync::Arc::new(Policy::load(settings, f.store.clone()).expect("load"));
    let stuck_before = super::stuck_states();
    let started = std::time::Instant::now();
    let stuck = (0..3).map(|_| {
        let policy = policy.clone();
        tokio::spawn(async move {
            policy
                .call_named::<_, Decision>("on_connect", &json!({ "n": 200_000 }))
                .await
        })
    });
    let stuck: Vec<_> = stuck.collect();
    // Meanwhile this runtime's one worker is free: another hook answers.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let quick = tokio::time::timeout(
        Duration::from_millis(100),
        policy.call_named::<_, Decision>("on_mail_from", &json!({})),
    )
    .await
    .expect("answered while the patterns run")
    .expect("hook")
    .expect("decision");
    assert_eq!(quick.message.as_deref(), Some("quick"));
    for call in futures::future::join_all(stuck).await {
        match call.expect("task") {
            Err(PolicyError::Script { message, .. }) => assert!(
                message.contains("ran past the time limit") && message.contains("abandoned"),
                "{message}"
            ),
            other => panic!("a stuck call answered: {other:?}"),
        }
    }
    // All done by the time limit, not by the gsubs.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(policy.error_counts().get("on_connect"), Some(&3));
    assert!(super::stuck_states() >= stuck_before + 3);
    // The helpers were replaced: patterns still run.
    let again: Value = f
        .host("return {}")
        .eval("return (string.rep('ab', 100000):gsub('b+', 'c')):sub(1, 6)")
        .await
        .expect("a pattern after the stuck ones");
    assert_eq!(again, json!("acacac"));
}

/// The library functions whose C loops run as long as their arguments
/// say answer at once: `string.rep` of nothing, `table.move` and
/// `table.sort` past their bounds, a `__gc` finalizer (it would run with
/// the watchdog off).
#[tokio::test]
async fn library_loops_are_bounded() {
    let f = Fixture::new();
    let host = f.host("return {}");
    let started = std::time::Instant::now();
    let got = host
        .eval("return { #string.rep('', 1 << 60), #string.rep('ab', 3, ','), select(2, pcall(string.rep, '', 'x')) ~= nil }")
        .await
        .expect("eval");
    assert_eq!(got, json!([0, 8, true]));
    for (code, says) in [
        ("table.move({}, 1, 1e12, 1, {})", "table.move: more than"),
        (
            "table.sort(setmetatable({}, { __len = function() return 1 << 40 end }))",
            "table.sort: more than",
        ),
        (
            "setmetatable({}, { __gc = function() while true do end end })",
            "__gc",
        ),
    ] {
        let err = host.eval(code).await.expect_err(code);
        assert!(err.contains(says), "{code}: {err}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let sorted = host
        .eval("local t = { 3, 1, 2 } table.sort(t) return table.move(t, 1, 3, 1, {})")
        .await
        .expect("eval");
    assert_eq!(sorted, json!([1, 2, 3]));
}

/// A hook's argument is bounded: past `policy.max_input_kb` the call is a
/// failure of the hook, and the script never sees it.
#[tokio::test]
async fn a_hook_argument_past_the_input_limit_is_refused() {
    let f = Fixture::new();
    let mut settings = f.settings(
        "return { hooks = { on_connect = function(c) return { action = 'accept' } end } }",
    );
    settings.max_input_kb = 64;
    let policy = Policy::load(settings, f.store.clone()).expect("load");
    let small = policy
        .call_named::<_, Decision>("on_connect", &json!({ "html": "x".repeat(60_000) }))
        .await;
    assert!(matches!(small, Ok(Some(_))), "{small:?}");
    match policy
        .call_named::<_, Decision>("on_connect", &json!({ "html": "x".repeat(70_000) }))
        .await
    {
        Err(PolicyError::Script { message, .. }) => {
            assert!(message.contains("max_input_kb"), "{message}")
        }
        other => panic!("an oversized argument went through: {other:?}"),
    }
}

/// The fast reader of answers takes a `reasons` list only when it is a
/// plain list (its sequence and nothing else, no metatable), and leaves
/// any other table to serde; either way the hook's answer reads the same.
#[tokio::test]
async fn answer_lists_are_read_fast_only_when_plain() {
    let lua = mlua::Lua::new();
    let answer = |reasons: &str| -> mlua::Value {
        lua.load(format!(
            "local r = {reasons}; return {{ action = 'reject', reasons = r }}"
        ))
        .eval()
        .expect("answer")
    };
    let plain = super::lua_raw::decision(&lua, &answer(r#"{ "too short", "banned word" }"#));
    assert_eq!(
        plain.map(|d| d.reasons),
        Some(vec!["too short".to_string(), "banned word".to_string()])
    );
    for other in [
        r#"{ "too short", "banned word", note = "x" }"#,
        r#"setmetatable({ "too short" }, {})"#,
        r#"{ "too short", 7 }"#,
    ] {
        assert!(
            super::lua_raw::decision(&lua, &answer(other)).is_none(),
            "{other}"
        );
    }

    let f = Fixture::new();
    let host = f.host(
        r#"return { hooks = { check_limits = function(m)
             local reasons = { "too short", "banned word" }
             if m.id == "extra" then reasons.note = "x" end
             if m.id == "meta" then setmetatable(reasons, {}) end
             return { action = "reject", reasons = reasons }
           end } }"#,
    );
    for id in ["plain", "extra", "meta"] {
        let mut m = message(&["a@x.test"], "hi", "regular", NOW);
        m.id = id.into();
        let d = check_limits(&host, m).await;
        assert_eq!(d.reasons, ["too short", "banned word"], "{id}");
    }
}
