//! The default plugins, driven through the real Lua host on a real store,
//! with table-driven cases at the rule boundaries: reputation, warm-up,
//! limits, template review, bounces, callback formats, the examples.

use super::decisions::{Decision, MessageInfo};
use super::lua_host::LuaHost;
use super::testing::{Fixture, NOW, check_limits, message};

use serde_json::{Value, json};
use std::path::PathBuf;

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
    // Forgotten (deleted, or proven by another account): a new domain
    // again, with none of today's counts.
    let gone: Option<Value> = host
        .call("reputation", &event("forget", 0))
        .await
        .expect("forget");
    assert!(gone.is_none());
    let st: Value = host
        .call("reputation", &event("sent", 10))
        .await
        .expect("sent")
        .expect("state");
    assert_eq!(st["level"], 1, "{st}");
    let sent: Value = host
        .eval("return kiln.counter.get('rep:shop.test:' .. kiln.day(1795341600000) .. ':sent')")
        .await
        .expect("eval");
    assert_eq!(sent, json!(10), "counted afresh");
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

/// What a bad policy once wrote (a level as a string) is no "no limit":
/// the state is refused until an operator sets the domain again; an
/// operator's level and quota hold, and a policy's floor holds a domain
/// Kiln knows already.
#[tokio::test]
async fn reputation_state_is_repairable_and_never_fails_open() {
    let f = Fixture::new();
    let host = f.host("return {}");
    let q = |kind: &str| json!({"domain": "shop.test", "account": "shop", "kind": kind, "count": 0, "now": NOW});
    host.eval("kiln.kv.put('rep:shop.test:state', '{\"level\":\"eight\",\"day\":\"2026-11-22\"}')")
        .await
        .expect("damage");
    let err = host
        .call::<_, Value>("reputation", &q("query"))
        .await
        .expect_err("a damaged state is an error");
    assert!(
        err.to_string().contains("kiln domain reset shop.test"),
        "{err}"
    );
    // check_limits refuses (its hook fails), never accepts without a limit.
    let m = super::testing::message(&["a@dest.test"], "hi", "regular", NOW);
    let refused = host.call::<_, Decision>("check_limits", &m).await;
    assert!(refused.is_err(), "{refused:?}");
    // An operator sets it: level 8, then a quota of its own.
    let mut set = q("set");
    set["level"] = json!(8);
    let st: Value = host
        .call("reputation", &set)
        .await
        .expect("set")
        .expect("state");
    assert_eq!(
        (st["level"].clone(), st["daily_limit"].clone()),
        (json!(8), json!(60000))
    );
    let mut quota = q("set");
    quota["quota"] = json!(123456);
    let st: Value = host
        .call("reputation", &quota)
        .await
        .expect("set")
        .expect("state");
    assert_eq!(
        (st["level"].clone(), st["daily_limit"].clone()),
        (json!(8), json!(123456))
    );
    let sent = check_limits(&host, m).await;
    assert!(!sent.is_reject() && !sent.is_defer(), "{sent:?}");
    let mut bad = q("set");
    bad["level"] = json!(21);
    assert!(host.call::<_, Value>("reputation", &bad).await.is_err());
    // A policy's floor for a domain Kiln knows.
    let floored = f.host(
        "return { config = { reputation = { domains = { ['shop.test'] = { min_level = 12 } } } } }",
    );
    let st: Value = floored
        .call("reputation", &q("query"))
        .await
        .expect("q")
        .expect("state");
    assert_eq!(st["level"], 12, "{st}");
    assert_eq!(
        st["daily_limit"], 123456,
        "the operator's quota still holds: {st}"
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
    // A message is checked for the banned words only.
    let none: Option<Decision> = host
        .call(
            "content_filter",
            &json!({"kind": "message", "subject": "hello"}),
        )
        .await
        .expect("call");
    assert!(none.is_none());
    let banned: Decision = host
        .call(
            "content_filter",
            &json!({"kind": "message", "subject": "FREE MONEY inside"}),
        )
        .await
        .expect("call")
        .expect("a verdict");
    assert!(banned.is_reject(), "{banned:?}");
    assert_eq!(
        banned.code.as_deref(),
        Some("InvalidParameterValue.EmailContentIsWrong")
    );
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

/// A reply (code, enhanced code, text, stage) and the action it should
/// get: (rule, suspend seconds, factor, other_source, retry, bounce).
type SignalCase<'a> = (
    u16,
    &'a str,
    &'a str,
    &'a str,
    Option<(&'a str, Option<f64>, Option<f64>, bool, bool, bool)>,
);

/// The shipped throttling rules, as replies come from the providers, and
/// an operator's rules tried before them.
#[tokio::test]
async fn egress_signals_match_the_providers_replies() {
    let f = Fixture::new();
    let host = f.host(
        r#"return { config = { egress = { signals = {
             { name = "isp-block", code = 451, text = "listed", bounce = true },
           } } } }"#,
    );
    let signal = |code: u16, enhanced: &str, text: &str, stage: &str| {
        let host = &host;
        let info = json!({"code": code, "enhanced_code": enhanced, "text": text,
            "stage": stage, "provider": "p", "source": "s"});
        async move {
            host.call::<_, Value>("egress_signal", &info)
                .await
                .expect("egress_signal runs")
                .unwrap_or(Value::Null)
        }
    };
    // (reply) -> (rule, suspend seconds, factor, other_source, retry, bounce)
    let cases: &[SignalCase] = &[
        (
            421,
            "4.7.28",
            "Our system has detected an unusual rate of unsolicited mail",
            "rcpt",
            Some(("gmail-rate", Some(600.0), Some(0.5), false, false, false)),
        ),
        (
            421,
            "4.7.0",
            "Try again later, closing connection.",
            "mail",
            Some((
                "gmail-try-later",
                Some(60.0),
                Some(0.5),
                false,
                false,
                false,
            )),
        ),
        (
            421,
            "4.7.0",
            "[TSS04] Messages from 192.0.2.1 temporarily deferred",
            "rcpt",
            Some(("yahoo-tss04", Some(900.0), Some(0.5), false, false, false)),
        ),
        (
            451,
            "4.7.650",
            "The mail server [192.0.2.1] has been temporarily rate limited",
            "rcpt",
            Some((
                "microsoft-throttle",
                Some(300.0),
                Some(0.5),
                false,
                false,
                false,
            )),
        ),
        (
            550,
            "5.7.1",
            "Unfortunately, messages from [192.0.2.1] weren't sent. (S3150)",
            "rcpt",
            Some((
                "microsoft-s3150",
                Some(900.0),
                Some(0.5),
                false,
                true,
                false,
            )),
        ),
        (
            421,
            "",
            "too many connections from your IP",
            "connect",
            Some(("too-many-connections", None, Some(0.5), false, false, false)),
        ),
        (
            451,
            "4.7.1",
            "sender listed at example.org",
            "rcpt",
            Some(("isp-block", None, None, false, false, true)),
        ),
        // About the recipient, not the sender's pace: no signal.
        (550, "5.1.1", "user unknown", "rcpt", None),
        (452, "4.2.2", "mailbox full", "rcpt", None),
    ];
    for (code, enhanced, text, stage, want) in cases {
        let got = signal(*code, enhanced, text, stage).await;
        match want {
            None => assert_eq!(got, Value::Null, "{code} {enhanced} {text}"),
            Some((rule, suspend, factor, other, retry, bounce)) => {
                assert_eq!(got["rule"], *rule, "{code} {enhanced} {text}: {got}");
                assert_eq!(got["suspend_s"].as_f64(), *suspend, "{rule}: {got}");
                assert_eq!(got["factor"].as_f64(), *factor, "{rule}: {got}");
                assert_eq!(got["other_source"], *other, "{rule}");
                assert_eq!(got["retry"], *retry, "{rule}");
                assert_eq!(got["bounce"], *bounce, "{rule}");
            }
        }
    }
    // A rule that cannot mean anything fails the load, naming it.
    for (bad, says) in [
        (
            r#"{ name = "x", code = 421, retry = true, bounce = true }"#,
            "contradict",
        ),
        (r#"{ name = "x", suspend = "5m" }"#, "matches nothing"),
        (r#"{ name = "x", code = 421, factor = 2 }"#, "factor"),
        (
            r#"{ name = "x", code = 421, suspnd = "5m" }"#,
            "unknown field",
        ),
    ] {
        let policy = format!("return {{ config = {{ egress = {{ signals = {{ {bad} }} }} }} }}");
        let err = LuaHost::new(&f.settings(&policy), f.store.clone())
            .err()
            .unwrap_or_else(|| panic!("{bad} loaded"))
            .to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
}
