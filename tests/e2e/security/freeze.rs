//! A tenant, or a policy hook, that tries to stop the whole daemon: work
//! that Lua cannot interrupt, RCPT lists built to be slow.

use crate::clients::{Sdk, create_account};
use crate::harness::{Backend, Env, env};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kiln_testkit::client::SmtpClient;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The default plugins, and a hook that backtracks inside one C call
/// (`gsub`, which the watchdog cannot interrupt) for senders `stuck@`.
const STUCK_POLICY: &str = r#"
return {
  config = {
    limits = { rate_per_second = 1e9, account_daily_limit = 1e12, per_recipient_per_hour = 1e12 },
    reputation = { initial_level = 20 },
    warmup = { curve = { 1e12 } },
  },
  hooks = {
    on_mail_from = function(tx)
      if tx.sender:sub(1, 6) == "stuck@" then string.rep("a", 1e6):gsub("a*b", "") end
    end,
  },
}
"#;

/// How long the SMTP greeting and `/healthz` take to answer, now.
async fn answer_times(e: &Env) -> (Duration, Duration) {
    let started = Instant::now();
    let banner = tokio::time::timeout(Duration::from_secs(10), SmtpClient::connect(e.kiln.smtp))
        .await
        .expect("a greeting within 10 s")
        .expect("connects");
    assert_eq!(banner.greeting.code, 220);
    let greeting = started.elapsed();
    banner.quit().await;
    let started = Instant::now();
    let health = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::get(format!("http://{}/healthz", e.kiln.http)),
    )
    .await
    .expect("/healthz within 10 s")
    .expect("/healthz answers");
    assert!(health.status().is_success());
    (greeting, started.elapsed())
}

/// Two tenants' templates of 100,000 `<` (the review's patterns were
/// quadratic on unclosed tags: about 70 s of one core each) and two SMTP
/// sessions whose `on_mail_from` is stuck in `gsub` for hours, all at once,
/// on a 2-core node: the greeting and `/healthz` keep answering within a
/// second, the stuck calls are failures at their deadline (`451`), the
/// templates are reviewed at once, and mail still flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_hook_or_a_hostile_template_does_not_freeze_the_daemon() {
    let e = env(Backend::Embedded, |o| {
        o.policy = STUCK_POLICY.into();
        o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
    })
    .await;
    let (idle_banner, idle_health) = answer_times(&e).await;
    let mut attacks = Vec::new();
    for tenant in ["t1", "t2"] {
        let who = create_account(&e, tenant);
        let mut sdk = Sdk::start(e.kiln.http).await;
        attacks.push(tokio::spawn(async move {
            let html = "<".repeat(100_000);
            let started = Instant::now();
            let r = sdk
                .call(
                    &who,
                    "CreateEmailTemplate",
                    json!({"TemplateName": "lt", "TemplateContent": {"Html": B64.encode(html), "Text": B64.encode("x")}}),
                )
                .await;
            let ok = if r["ok"] == true { "ok" } else { "failed" };
            (format!("template {ok}: {r}"), started.elapsed())
        }));
    }
    for n in 0..2 {
        let smtp = e.kiln.smtp;
        attacks.push(tokio::spawn(async move {
            let mut c = SmtpClient::connect(smtp).await.unwrap();
            c.cmd("EHLO stuck.test").await.unwrap();
            let started = Instant::now();
            let r = c
                .cmd(&format!("MAIL FROM:<stuck@x{n}.test>"))
                .await
                .unwrap();
            (format!("mail: {} {}", r.code, r.text), started.elapsed())
        }));
    }
    // While they run: every answer within a second.
    let mut slowest = (Duration::ZERO, Duration::ZERO);
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        let (banner, health) = answer_times(&e).await;
        slowest = (slowest.0.max(banner), slowest.1.max(health));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        slowest.0 < Duration::from_secs(1) && slowest.1 < Duration::from_secs(1),
        "greeting {:?}, /healthz {:?} at worst (idle: {idle_banner:?}, {idle_health:?})\n{}",
        slowest.0,
        slowest.1,
        e.kiln.log_text()
    );
    for attack in attacks {
        let (what, took) = attack.await.unwrap();
        if what.starts_with("mail:") {
            // The hook's 2 s limit and the quarter second a stuck call is
            // given beyond it.
            assert!(
                what.contains("451 4.3.0 Policy temporarily unavailable"),
                "{what}"
            );
            assert!(took < Duration::from_secs(4), "{what} after {took:?}");
        } else {
            assert!(what.starts_with("template ok"), "{what}");
            assert!(took < Duration::from_secs(2), "{what} after {took:?}");
        }
    }
    let policy: Value = e
        .kiln
        .admin_get("/admin/policy")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(policy["errors"]["on_mail_from"], 2, "{policy}");
    assert_eq!(policy["stuck_states"], 2, "{policy}");
    let log = e.kiln.log_text();
    assert!(log.contains("its helper is abandoned"), "{log}");
    // Mail still flows (the stuck patterns hold helpers, not the node).
    let r = crate::harness::relay(e.kiln.smtp, "after@dest.test", "after the attack").await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(e.sink.wait_count(1, Duration::from_secs(20)).await);
}
