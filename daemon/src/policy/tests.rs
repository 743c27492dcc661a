//! The plugins, driven through the real Lua host on a real (embedded) store,
//! with table-driven cases at the rule boundaries; and the sandbox.

use super::decisions::{Decision, MessageInfo};
use super::lua_host::LuaHost;
use super::testing::Fixture;
use super::{Policy, PolicyError};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

fn message(
    recipients: &[&str],
    subject: &str,
    trigger: &'static str,
    now: i64,
) -> MessageInfo<'static> {
    MessageInfo {
        kind: "message",
        id: "m1".into(),
        account: "shop".into(),
        sender: "a@shop.test".into(),
        sender_domain: "shop.test".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        size: 2048,
        subject: subject.into(),
        subject_valid_utf8: true,
        trigger_type: trigger,
        scenario: String::new(),
        now,
        headers: super::decisions::HeaderView(std::sync::Arc::from(
            &b"Subject: hi\r\nX-Campaign: spring\r\n sale\r\nReceived: a\r\nReceived: b\r\n"[..],
        )),
    }
}

async fn check_limits(host: &LuaHost, m: MessageInfo<'_>) -> Decision {
    host.call::<_, Decision>("check_limits", &m)
        .await
        .expect("check_limits")
        // nil: no objection, as admission reads it.
        .unwrap_or_else(|| Decision {
            action: super::decisions::Action::Send,
            ..Decision::default()
        })
}

/// 2026-11-22T10:00:00Z
const NOW: i64 = 1_795_341_600_000;

/// Level before, the day's counters, and (level after, lower tomorrow,
/// blocked today).
type RepCase = (i64, [i64; 7], (i64, bool, bool));

#[tokio::test]
async fn reputation_rules_at_their_boundaries() {
    let f = Fixture::new();
    let host = f.host("return {}");
    // (level, sent, delivered, bounce, invalid, spam, complaint, open)
    //   -> (level after, lower tomorrow, blocked today)
    let cases: &[RepCase] = &[
        // Raise at exactly 70% of the level's limit, not at 69.9%.
        (3, [1400, 1400, 0, 0, 0, 0, 0], (4, false, false)),
        (3, [1398, 1398, 0, 0, 0, 0, 0], (3, false, false)),
        // Several levels in one day: 7,000 clean sends from level 1 reach
        // level 6 (70% of 10,000 = 7,000; 70% of 20,000 is not reached).
        (1, [7000, 7000, 0, 0, 0, 0, 0], (6, false, false)),
        // Rule A fails at exactly 5% invalid; rule B (opens > 50%) still raises.
        (1, [400, 380, 20, 20, 0, 0, 0], (1, false, false)),
        (1, [400, 380, 20, 20, 0, 0, 191], (2, false, false)),
        // Rule B needs opens above 50%, not at 50%.
        (1, [400, 370, 30, 20, 0, 0, 185], (1, false, false)),
        // Deliverability must be above 92% for rule A.
        (1, [400, 368, 32, 0, 0, 0, 0], (1, false, false)),
        (1, [400, 369, 31, 0, 0, 0, 0], (2, false, false)),
        // Lower only above 300 sent: 10% invalid at 300 does nothing, at 301 it lowers.
        (2, [300, 270, 30, 30, 0, 0, 0], (2, false, false)),
        (2, [301, 270, 30, 30, 0, 0, 0], (2, true, false)),
        // Each of the four bad-quality rules.
        (2, [1000, 905, 95, 91, 0, 0, 0], (2, true, false)),
        (2, [1000, 640, 360, 0, 0, 0, 0], (2, true, false)),
        (2, [1000, 949, 51, 0, 51, 0, 0], (2, true, false)),
        (2, [1000, 1000, 0, 0, 0, 6, 0], (2, true, false)),
        // Temporary block: invalid above 11% (11.01% blocks, 11% does not).
        (2, [10000, 8899, 1101, 1101, 0, 0, 0], (2, true, true)),
        (2, [10000, 8900, 1100, 1100, 0, 0, 0], (2, true, false)),
        // ... or spam bounces above 15%.
        (2, [1000, 849, 151, 0, 151, 0, 0], (2, true, true)),
        (2, [1000, 850, 150, 0, 150, 0, 0], (2, true, false)),
        // No outcome yet: no evidence, no change, however much was sent.
        (1, [7000, 0, 0, 0, 0, 0, 0], (1, false, false)),
        // Level 20 is the top.
        (20, [1000000, 1000000, 0, 0, 0, 0, 0], (20, false, false)),
    ];
    for (level, s, want) in cases {
        let code = format!(
            "local r = require('reputation')
             local st = {{ level = {level}, day = '2026-11-22', lower_tomorrow = false }}
             r.evaluate(st, {{ sent = {}, delivered = {}, bounce = {}, invalid = {}, spam = {},
                              complaint = {}, open = {} }})
             return {{ st.level, st.lower_tomorrow, st.blocked_day == st.day }}",
            s[0], s[1], s[2], s[3], s[4], s[5], s[6]
        );
        let got = host.eval(&code).await.expect("eval");
        assert_eq!(
            got,
            json!([want.0, want.1, want.2]),
            "level {level} with {s:?}"
        );
    }
    // The pending lowering happens on the next day, and the block ends.
    let got = host
        .eval(
            "local r = require('reputation')
             local st = { level = 4, day = '2026-11-21', lower_tomorrow = true, blocked_day = '2026-11-21' }
             r.roll_over(st, '2026-11-22')
             return { st.level, st.lower_tomorrow, st.blocked_day == nil }",
        )
        .await
        .expect("eval");
    assert_eq!(got, json!([3, false, true]));
}

#[tokio::test]
async fn reputation_hook_counts_events_in_the_store() {
    let f = Fixture::new();
    let host = f.host("return {}");
    let event = |kind: &str, count: i64| json!({"domain": "shop.test", "account": "shop", "kind": kind, "count": count, "now": NOW});
    let st: Value = host
        .call("reputation", &event("sent", 350))
        .await
        .expect("sent")
        .expect("state");
    assert_eq!(st["level"], 1, "sends alone are no evidence: {st}");
    let st: Value = host
        .call("reputation", &event("delivered", 350))
        .await
        .expect("delivered")
        .expect("state");
    assert_eq!(st["level"], 2, "{st}");
    assert_eq!(st["daily_limit"], 1000);
    let st: Value = host
        .call("reputation", &event("query", 0))
        .await
        .expect("query")
        .expect("state");
    assert_eq!(st["level"], 2, "the level is kept in the store: {st}");
    // A domain the policy knows starts at its own level.
    let host = f.host(
        "return { config = { reputation = { domains = { ['old.test'] = { level = 9 } } } } }",
    );
    let known =
        json!({"domain": "old.test", "account": "", "kind": "query", "count": 0, "now": NOW});
    let st: Value = host
        .call("reputation", &known)
        .await
        .expect("query")
        .expect("state");
    assert_eq!(
        (st["level"].clone(), st["daily_limit"].clone()),
        (json!(9), json!(80000))
    );
}

#[tokio::test]
async fn warmup_curve_doubles_after_its_last_step() {
    let f = Fixture::new();
    let host = f.host("return {}");
    let got = host
        .eval(
            "local w = require('warmup') local out = {}
             for n = 0, 8 do out[#out + 1] = w.cap(w.CURVE, n) end return out",
        )
        .await
        .expect("eval");
    assert_eq!(
        got,
        json!([200, 500, 1000, 2000, 5000, 10000, 20000, 40000, 80000])
    );
    // Per-identity curve and opt-out from the policy's config.
    let host = f.host(
        "return { config = { warmup = { identities = {
             ['fast.test'] = { curve = { 1000 } }, ['free.test'] = { disabled = true } } } } }",
    );
    let cap = |id: &'static str| {
        let host = &host;
        async move {
            host.call::<_, Value>("warmup_limit", &json!({"identity": id, "now": NOW}))
                .await
                .expect("warmup")
        }
    };
    assert_eq!(cap("fast.test").await.expect("cap")["cap"], 1000);
    assert_eq!(cap("new.test").await.expect("cap")["cap"], 200);
    assert!(cap("free.test").await.is_none());
}

#[tokio::test]
async fn limits_quota_rate_recipient_and_subject() {
    let f = Fixture::new();
    let host = f.host("return { config = { limits = { rate_per_second = 1000 } } }");
    let check = |m: MessageInfo<'static>| check_limits(&host, m);
    // Warm-up day 0 holds batch tasks to 200 (below level 1's 500): the
    // 201st waits for the next day.
    for i in 0..200 {
        let d = check(message(&[&format!("b{i}@x.test")], "hi", "batch", NOW)).await;
        assert_eq!(d.action, "send", "batch message {i}: {d:?}");
    }
    let d = check(message(&["b200@x.test"], "hi", "batch", NOW)).await;
    assert!(d.is_defer(), "{d:?}");
    assert_eq!(d.code.as_deref(), Some("FailedOperation.ExceedSendLimit"));
    assert!(
        d.message.as_deref().unwrap_or("").contains("warm-up"),
        "{d:?}"
    );
    assert_eq!(d.retry_at, Some(1_795_392_000_000), "next midnight UTC");
    // Trigger sends (SendEmail, SMTP) have the level's 500 alone: 300 more
    // today, counted with the batch mail.
    for i in 0..300 {
        let d = check(message(&[&format!("r{i}@x.test")], "hi", "regular", NOW)).await;
        assert_eq!(d.action, "send", "message {i}: {d:?}");
    }
    let d = check(message(&["r300@x.test"], "hi", "regular", NOW)).await;
    assert!(d.is_reject(), "{d:?}");
    assert_eq!(d.code.as_deref(), Some("FailedOperation.ExceedSendLimit"));
    assert!(
        d.message
            .as_deref()
            .unwrap_or("")
            .contains("reputation level 1"),
        "{d:?}"
    );
    assert!(d.smtp_reply("451 4.7.1").starts_with("451 4.7.1"), "{d:?}");
    // The next day the quota starts over (warm-up day 1: 500).
    let d = check(message(&["r202@x.test"], "hi", "regular", NOW + 86_400_000)).await;
    assert_eq!(d.action, "send", "{d:?}");

    // Warm-up for the scenarios an operator names too.
    let f = Fixture::new();
    let host = f.host(
        "return { config = { limits = { rate_per_second = 1000 },
                   warmup = { curve = { 2 }, applies_to = { 'batch', 'marketing' } } } }",
    );
    let marketing = |to: &str| {
        let mut m = message(&[to], "hi", "regular", NOW);
        m.scenario = "marketing".into();
        m
    };
    for to in ["m1@x.test", "m2@x.test"] {
        let d = check_limits(&host, marketing(to)).await;
        assert_eq!(d.action, "send", "{d:?}");
    }
    let d = check_limits(&host, marketing("m3@x.test")).await;
    assert!(d.is_reject(), "marketing is held to the curve: {d:?}");
    let d = check_limits(&host, message(&["t@x.test"], "hi", "regular", NOW)).await;
    assert_eq!(d.action, "send", "transactional mail is not: {d:?}");

    // One recipient: 10 per hour, the 11th is dropped.
    let f = Fixture::new();
    let host = f.host("return { config = { limits = { rate_per_second = 1000 } } }");
    let check = |m: MessageInfo<'static>| check_limits(&host, m);
    for i in 0..10 {
        let d = check(message(&["same@x.test"], "hi", "regular", NOW)).await;
        assert_eq!(d.action, "send", "message {i}");
    }
    let d = check(message(
        &["same@x.test", "other@x.test"],
        "hi",
        "regular",
        NOW,
    ))
    .await;
    assert_eq!(d.action, "send");
    assert_eq!(
        d.drop.get("same@x.test").map(String::as_str),
        Some("FailedOperation.FrequencyLimit")
    );
    assert!(!d.drop.contains_key("other@x.test"));
    // An hour later it may receive again.
    let d = check(message(&["same@x.test"], "hi", "regular", NOW + 3_600_000)).await;
    assert_eq!(d.action, "send", "{d:?}");

    // Subject: 998 characters (multi-byte) pass, 999 fail; bad UTF-8 fails.
    let d = check(message(&["s1@x.test"], &"é".repeat(998), "regular", NOW)).await;
    assert_eq!(d.action, "send", "{d:?}");
    let d = check(message(&["s2@x.test"], &"é".repeat(999), "regular", NOW)).await;
    assert!(d.is_reject());
    let mut m = message(&["s3@x.test"], "x", "regular", NOW);
    m.subject_valid_utf8 = false;
    assert!(check(m).await.is_reject());
    let mut m = message(&["s4@x.test"], "x", "regular", NOW);
    m.size = 4 * 1024 * 1024 + 1;
    assert_eq!(
        check(m).await.code.as_deref(),
        Some("FailedOperation.EmailContentToolarge")
    );

    // Blocklisted and unsubscribed recipients are dropped with their reason.
    f.store
        .set_add("lua:blocklist", "bad@x.test", None)
        .await
        .expect("blocklist");
    f.store
        .set_add("lua:unsubscribed:shop.test", "gone@x.test", None)
        .await
        .expect("unsubscribe");
    let d = check(message(
        &["bad@x.test", "gone@x.test", "ok@x.test"],
        "hi",
        "regular",
        NOW,
    ))
    .await;
    assert_eq!(d.action, "send");
    assert_eq!(d.drop["bad@x.test"], "FailedOperation.EmailAddrInBlacklist");
    assert_eq!(
        d.drop["gone@x.test"],
        "FailedOperation.ReceiverHasUnsubscribed"
    );
    let d = check(message(&["bad@x.test"], "hi", "regular", NOW)).await;
    assert_eq!(
        d.code.as_deref(),
        Some("FailedOperation.EmailAddrInBlacklist")
    );
}

#[tokio::test]
async fn limits_account_rate_per_second() {
    let f = Fixture::new();
    let host = f.host("return { config = { limits = { rate_per_second = 3 } } }");
    let mut actions = Vec::new();
    for i in 0..4 {
        let d = check_limits(
            &host,
            message(&[&format!("r{i}@x.test")], "hi", "regular", NOW),
        )
        .await;
        actions.push(d.code.unwrap_or_else(|| d.action.as_str().to_string()));
    }
    assert_eq!(
        actions,
        ["send", "send", "send", "FailedOperation.FrequencyLimit"]
    );
}

#[tokio::test]
async fn template_review_reports_every_reason() {
    let f = Fixture::new();
    let host = f.host(
        "return { config = { content_filter = { banned_words = { 'free money' },
                   flag_url_hosts = { 'bad.example' } } } }",
    );
    let review = |t: Value| {
        let host = &host;
        async move {
            host.call::<_, Decision>("content_filter", &t)
                .await
                .expect("call")
                .expect("decision")
        }
    };
    let words = |n: usize| vec!["word"; n].join(" ");
    let t = |kind: &str, html: String| json!({"kind": "template", "type": kind, "subject": "s", "html": html, "text": ""});
    assert_eq!(review(t("marketing", words(150))).await.action, "accept");
    let d = review(t("marketing", words(149))).await;
    assert!(d.is_reject() && d.reasons.len() == 1, "{d:?}");
    assert_eq!(review(t("notification", words(50))).await.action, "accept");
    assert!(review(t("notification", words(49))).await.is_reject());
    assert_eq!(review(t("trigger", String::new())).await.action, "accept");
    // 1 variable per 5 words is the most.
    let ok = format!(
        "{} {{{{a}}}} {{{{b}}}} {{{{c}}}} {{{{d}}}} {{{{e}}}} {{{{f}}}} {{{{g}}}} {{{{h}}}} {{{{i}}}} {{{{j}}}}",
        words(50)
    );
    assert_eq!(review(t("notification", ok)).await.action, "accept");
    let too_many = format!(
        "{} {{{{k}}}}",
        words(50).replace("word word word word word", "word word word word word {{x}}")
    );
    assert!(review(t("notification", too_many)).await.is_reject());
    let d = review(t("trigger", "{{a}} {{b}}".into())).await;
    assert!(
        d.reasons.iter().any(|r| r.contains("only variables")),
        "{d:?}"
    );
    let d = review(t("trigger", "<img src=a.png><img src=b.png>".into())).await;
    assert!(d.reasons.iter().any(|r| r.contains("only images")), "{d:?}");
    let images = "<img src=x.png>".repeat(51);
    let d = review(t("trigger", format!("{} {images}", words(10)))).await;
    assert!(
        d.reasons.iter().any(|r| r.contains("too many images")),
        "{d:?}"
    );
    // Everything at once: every reason comes back.
    let d = review(t(
        "marketing",
        "Free money at <a href=\"https://bad.example/x\">here</a> <img src=a.png>".into(),
    ))
    .await;
    assert!(d.reasons.len() >= 3, "{d:?}");
    assert!(d.reasons.iter().any(|r| r.contains("banned word")), "{d:?}");
    assert!(d.reasons.iter().any(|r| r.contains("bad.example")), "{d:?}");
    assert!(
        d.reasons.iter().any(|r| r.contains("too few words")),
        "{d:?}"
    );
    // Messages are not templates: the default plugin leaves them alone.
    let none: Option<Decision> = host
        .call("content_filter", &json!({"kind": "message"}))
        .await
        .expect("call");
    assert!(none.is_none());
}

#[tokio::test]
async fn bounces_are_classified_and_bad_mailboxes_blocklisted() {
    let f = Fixture::new();
    let host = f.host("return {}");
    let cases: &[(u16, &str, &str, &str, bool)] = &[
        (550, "5.1.1", "No such user here", "hard", true),
        (550, "", "User unknown", "hard", true),
        (552, "5.2.2", "Mailbox full", "quota", false),
        (554, "5.7.1", "Message refused as spam", "spam", false),
        (550, "5.7.1", "Sender not authorized", "policy", false),
        (451, "4.3.0", "Try again later", "soft", false),
        (554, "5.3.0", "Other problem", "other", false),
    ];
    for (i, (code, enhanced, text, class, blocklisted)) in cases.iter().enumerate() {
        let rcpt = format!("r{i}@x.test");
        let b: Value = host
            .call(
                "classify_bounce",
                &json!({"code": code, "enhanced_code": enhanced, "text": text,
                        "recipient": rcpt, "sender_domain": "shop.test", "mx": "mx", "source": "smtp"}),
            )
            .await
            .expect("call")
            .expect("class");
        assert_eq!(b["class"], *class, "{code} {enhanced} {text}");
        let listed = f
            .store
            .set_contains("lua:blocklist", &rcpt)
            .await
            .expect("set");
        assert_eq!(listed, *blocklisted, "{code} {enhanced} {text}");
    }
}

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
        .call("on_connect", &json!({}))
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
            .call("on_connect", &json!({}))
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
        .call("on_connect", &json!({}))
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
    assert!(!policy.has_hook("check_limits"));
    assert!(!policy.has_hook("classify_bounce"));
    assert!(policy.has_hook("reputation"));
}

#[tokio::test]
async fn a_plugin_hook_for_templates_only_is_not_called_for_messages() {
    let f = Fixture::new();
    let policy = Policy::load(f.settings("return {}"), f.store.clone()).expect("load");
    let template =
        json!({"kind": "template", "type": "trigger", "subject": "s", "html": "", "text": ""});
    let reviewed: Option<Decision> = policy
        .current()
        .call_for("content_filter", Some("template"), &template)
        .await
        .expect("call");
    assert_eq!(reviewed.expect("reviewed").action, "accept");
    // The plugin's hook would crash on this message; it is never called.
    let skipped: Option<Decision> = policy
        .current()
        .call_for("content_filter", Some("message"), &json!(null))
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
            "content_filter",
            Some("message"),
            &json!({"kind": "message"}),
        )
        .await
        .expect("call");
    assert_eq!(seen.expect("decision").reasons, ["message"]);
}

/// A message whose recipients do not all fit today's quota, but whose
/// recipients that may receive it do, is sent to those: the quota counts
/// what is sent, not what was asked for.
#[tokio::test]
async fn a_quota_counts_the_recipients_sent_not_those_dropped() {
    for f in [Fixture::new(), Fixture::redis().await] {
        let host = f.host(
            "return { config = { warmup = { curve = { 2 }, applies_to = { 'regular' } },
                       reputation = { initial_level = 20 } } }",
        );
        f.store
            .set_add("lua:blocklist", "bad@x.test", None)
            .await
            .expect("blocklist");
        let d = check_limits(&host, message(&["a@x.test"], "hi", "regular", NOW)).await;
        assert_eq!(d.action, "send", "{d:?}");
        let d = check_limits(
            &host,
            message(&["bad@x.test", "b@x.test"], "hi", "regular", NOW),
        )
        .await;
        assert_eq!(d.action, "send", "{d:?}");
        assert_eq!(
            d.drop.get("bad@x.test").map(String::as_str),
            Some("FailedOperation.EmailAddrInBlacklist")
        );
        assert!(!d.drop.contains_key("b@x.test"), "{d:?}");
        // Two sent: the quota of 2 is full.
        let d = check_limits(&host, message(&["c@x.test"], "hi", "regular", NOW)).await;
        assert_eq!(
            d.code.as_deref(),
            Some("FailedOperation.ExceedSendLimit"),
            "{d:?}"
        );
    }
}

#[tokio::test]
async fn sending_stops_at_the_blocklisted_share() {
    // On Redis too: units a node counts ahead of use must not hide the
    // share (they are part of the day's count it divides by).
    for f in [Fixture::new(), Fixture::redis().await] {
        stops_at_the_blocklisted_share(f).await;
    }
}

async fn stops_at_the_blocklisted_share(f: Fixture) {
    let host = f.host(
        "return { config = { limits = { stop_min_sent = 10 },
                   warmup = { curve = { 1e9 } }, reputation = { initial_level = 20 } } }",
    );
    f.store
        .set_add("lua:blocklist", "bad@x.test", None)
        .await
        .expect("blocklist");
    for i in 0..10 {
        let d = check_limits(
            &host,
            message(&[&format!("r{i}@x.test")], "hi", "regular", NOW),
        )
        .await;
        assert_eq!(d.action, "send");
    }
    // 1 of 11 (9%) to a blocklisted address: at or above 8%, sending stops.
    let d = check_limits(&host, message(&["bad@x.test"], "hi", "regular", NOW)).await;
    assert_eq!(
        d.code.as_deref(),
        Some("FailedOperation.EmailAddrInBlacklist")
    );
    let d = check_limits(&host, message(&["ok@x.test"], "hi", "regular", NOW)).await;
    assert_eq!(
        d.code.as_deref(),
        Some("FailedOperation.HighRejectionRate"),
        "{d:?}"
    );
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

async fn format(host: &LuaHost, e: Value) -> Value {
    let out: Value = host
        .call("callback_format", &e)
        .await
        .expect("call")
        .expect("formatted");
    assert_eq!(out["headers"]["Content-Type"], "application/json", "{out}");
    serde_json::from_str::<Value>(out["body"].as_str().expect("body")).expect("JSON body")
}

#[tokio::test]
async fn callback_formats_follow_the_tencent_notification_or_stay_generic() {
    let f = Fixture::new();
    let event = |kind: &str| {
        json!({"event": kind, "event_id": "e1", "message_id": "m1", "recipient": "ann@dest.test",
               "from": "news@shop.test", "from_domain": "shop.test", "account": "shop",
               "template_id": "4711", "task_id": "", "subject": "", "link": "https://x.test/a",
               "user_agent": "UA", "ip": "", "reason": "550 5.1.1 gone", "bounce_type": "hard",
               "at": 1_700_000_001_500i64, "sent_at": 1_700_000_000_900i64})
    };
    let tencent = f.host("return {}");
    let ids = [
        ("delivered", 1),
        ("deferred", 2),
        ("dropped", 3),
        ("bounce", 4),
        ("open", 5),
        ("click", 6),
        ("spamreport", 7),
        ("unsubscribe", 8),
    ];
    for (kind, id) in ids {
        let body = format(&tencent, event(kind)).await;
        assert_eq!(body["eventid"], id, "{kind}: {body}");
        assert_eq!(body["event"], kind);
    }
    let body = format(&tencent, event("bounce")).await;
    assert_eq!(body["email"], "ann@dest.test");
    assert_eq!(body["messageId"], "m1");
    assert_eq!(body["username"], "shop");
    assert_eq!(body["fromDomain"], "shop.test");
    assert_eq!(body["templateId"], 4711);
    assert_eq!(body["bounceType"], "hard");
    assert_eq!(body["useragent"], "UA");
    assert_eq!(body["timestamp"], 1_700_000_001);
    assert_eq!(body["sentTimestamp"], 1_700_000_000);

    let generic = f.host("return { config = { callbacks = { format = 'generic' } } }");
    let body = format(&generic, event("click")).await;
    assert_eq!(body, event("click"), "every field, as given");

    let err = LuaHost::new(
        &f.settings("return { config = { callbacks = { format = 'xml' } } }"),
        f.store.clone(),
    )
    .err()
    .expect("an unknown format does not load");
    assert!(err.to_string().contains("unknown format"), "{err}");
}

fn example(name: &str) -> String {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../scripts/examples/{name}.lua"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn the_example_policies_load_and_do_what_they_say() {
    let f = Fixture::new();

    let host = f.host(&example("warmup_curve"));
    let cap = |id: &'static str| {
        let host = &host;
        async move {
            let v: Value = host
                .call("warmup_limit", &json!({"identity": id, "now": NOW}))
                .await
                .expect("call")
                .expect("cap");
            v["cap"].as_i64()
        }
    };
    assert_eq!(cap("news.new.example").await, Some(50));
    assert_eq!(cap("mail.established.example").await, Some(2000));
    assert_eq!(cap("other.example").await, Some(200), "the default curve");

    let host = f.host(&example("provider_rule"));
    let tx = |rcpt: &str| json!({"recipient": rcpt, "sender_domain": "shop.test"});
    for _ in 0..500 {
        let d: Option<Decision> = host
            .call("on_rcpt_to", &tx("a@gmail.com"))
            .await
            .expect("call");
        assert!(d.is_none());
    }
    let d: Decision = host
        .call("on_rcpt_to", &tx("b@gmail.com"))
        .await
        .expect("call")
        .expect("the 501st is held back");
    assert!(d.is_defer(), "{d:?}");
    assert!(
        d.smtp_reply("451 4.7.1")
            .starts_with("451 4.7.1 Hourly volume")
    );
    let other: Option<Decision> = host
        .call("on_rcpt_to", &tx("c@outlook.com"))
        .await
        .expect("call");
    assert!(other.is_none(), "other providers are not held back");

    let host = f.host(&example("slack_callbacks"));
    let out: Value = host
        .call(
            "callback_format",
            &json!({"event": "bounce", "event_id": "e1", "from": "news@shop.test",
                    "recipient": "ann@dest.test", "reason": "550 5.1.1 gone"}),
        )
        .await
        .expect("call")
        .expect("formatted");
    let body: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body["text"],
        "⛔ bounce: news@shop.test → ann@dest.test (550 5.1.1 gone)"
    );

    let host = f.host(&example("strict_content"));
    let words = vec!["word"; 60].join(" ");
    let d: Decision = host
        .call(
            "content_filter",
            &json!({"kind": "template", "type": "notification", "subject": "s",
                    "html": format!("<p>{words} https://bit.ly/x</p>"), "text": ""}),
        )
        .await
        .expect("call")
        .expect("review");
    assert!(d.is_reject());
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("too few words") && r.contains("80")),
        "{:?}",
        d.reasons
    );
    assert!(
        d.reasons.iter().any(|r| r.contains("bit.ly")),
        "{:?}",
        d.reasons
    );
    let mut loud = message(&["a@dest.test"], "BUY THIS TODAY", "regular", NOW);
    let d: Decision = host
        .call("content_filter", &loud)
        .await
        .expect("call")
        .expect("refused");
    assert!(d.is_reject(), "{d:?}");
    loud.subject = "Your order".into();
    let d: Option<Decision> = host.call("content_filter", &loud).await.expect("call");
    assert!(d.is_none());
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
    let winter = || {
        super::decisions::HeaderView(std::sync::Arc::from(
            &b"Subject: two\r\nX-Campaign: winter\r\n"[..],
        ))
    };

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
                .call::<_, Decision>("on_connect", &json!({ "n": n }))
                .await
        })
    });
    for call in futures::future::join_all(calls).await {
        let d = call.expect("task").expect("hook").expect("decision");
        assert_eq!(d.message.as_deref(), Some("x"));
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
