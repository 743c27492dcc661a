//! Events and callbacks: delivered, bounce and dropped events reach a real
//! HTTP receiver in the Tencent format, signed; the sender address's URL
//! wins over the account's; a receiver that is down, answers 500, or a
//! daemon killed with callbacks pending loses no event and gets none twice.

use crate::api::{Creds, Sdk, ready_to_send};
use crate::harness::{BOTH, Backend, Env, env};
use kiln_testkit::webhook::{Hook, Webhook};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

fn body(h: &Hook) -> Value {
    serde_json::from_str(&h.body).unwrap_or_else(|_| panic!("callback body is JSON: {}", h.body))
}

/// Checks the signature the way a receiver would (HMAC-SHA256 over
/// "<timestamp>.<body>" with the account's callback secret).
fn assert_signed(h: &Hook, secret: &str) {
    use aws_lc_rs::hmac;
    let ts = h.header("x-kiln-timestamp").expect("timestamp header");
    let now = kiln::net::system_now_ms() / 1000;
    let age = now - ts.parse::<i64>().expect("numeric timestamp");
    assert!((0..300).contains(&age), "fresh timestamp: {ts}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, format!("{ts}.{}", h.body).as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        h.header("x-kiln-signature"),
        Some(format!("v1={hex}").as_str())
    );
    assert!(h.header("x-kiln-event-id").is_some_and(|id| !id.is_empty()));
}

/// Callback URL for the account (or one address); the signing secret.
fn set_callback(e: &Env, account: &str, url: &str, address: Option<&str>) -> String {
    let mut args = vec!["account", "callback", account, url];
    if let Some(a) = address {
        args.extend(["--address", a]);
    }
    let out = e.kiln.command(&args);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["CallbackSecret"].as_str().expect("secret").to_string()
}

/// The successful (2xx) callbacks, by event id: each must be there once.
fn delivered_once(hook: &Webhook) -> HashMap<String, Value> {
    let mut seen = HashMap::new();
    for h in hook.hooks().iter().filter(|h| h.status < 300) {
        let id = h.header("x-kiln-event-id").unwrap_or_default().to_string();
        assert!(
            seen.insert(id.clone(), body(h)).is_none(),
            "event {id} received twice"
        );
    }
    seen
}

async fn send(sdk: &mut Sdk, who: &Creds, domain: &str, template: i64, to: &[&str]) -> String {
    let r = sdk
        .ok(
            who,
            "SendEmail",
            json!({
                "FromEmailAddress": format!("news@{domain}"),
                "Destination": to,
                "Subject": "Hi {{name}}",
                "Template": {"TemplateID": template, "TemplateData": "{\"name\":\"A\",\"code\":\"1\"}"},
            }),
        )
        .await;
    r["MessageId"].as_str().unwrap().to_string()
}

async fn events_of(hook: &Webhook, n: usize) -> Vec<Value> {
    assert!(
        hook.wait_count(n, Duration::from_secs(30)).await,
        "{} callbacks, wanted {n}: {:?}",
        hook.hooks().len(),
        hook.hooks()
    );
    hook.hooks().iter().map(body).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_callback_url_signed_in_the_tencent_format() {
    for backend in BOTH {
        scenario(backend).await;
    }
}

async fn scenario(backend: Backend) {
    let mut hook = Webhook::start().await;
    let e = env(backend, |o| {
        o.extra = "[callbacks]\nretry_base_ms = 100\ntimeout = 2\n".into()
    })
    .await;
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;
    let secret = set_callback(&e, "acme", &hook.url("/account"), None);

    // delivered
    let id = send(&mut sdk, &acme, domain, template, &["ann@dest.test"]).await;
    let got = events_of(&hook, 1).await;
    let ev = &got[0];
    assert_eq!(ev["event"], "delivered", "{ev}");
    assert_eq!(ev["eventid"], 1);
    assert_eq!(ev["email"], "ann@dest.test");
    assert_eq!(ev["messageId"], id);
    assert_eq!(ev["username"], "acme");
    assert_eq!(ev["from"], format!("news@{domain}"));
    assert_eq!(ev["fromDomain"], domain);
    assert_eq!(ev["templateId"], template);
    assert!(ev["timestamp"].as_i64().unwrap() >= ev["sentTimestamp"].as_i64().unwrap());
    let first = &hook.hooks()[0];
    assert_eq!(first.path, "/account");
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_signed(first, &secret);

    // bounce (hard), then dropped: the address is blocklisted now.
    e.sink.set_rule("gone@dest.test", "550 5.1.1 No such user");
    send(&mut sdk, &acme, domain, template, &["gone@dest.test"]).await;
    let got = events_of(&hook, 2).await;
    assert_eq!(
        (got[1]["event"].as_str(), got[1]["eventid"].as_i64()),
        (Some("bounce"), Some(4)),
        "{}",
        got[1]
    );
    assert_eq!(got[1]["bounceType"], "hard");
    assert!(
        got[1]["reason"].as_str().unwrap().contains("5.1.1"),
        "{}",
        got[1]
    );
    send(
        &mut sdk,
        &acme,
        domain,
        template,
        &["gone@dest.test", "bob@dest.test"],
    )
    .await;
    let got = events_of(&hook, 4).await;
    let dropped = got
        .iter()
        .find(|v| v["event"] == "dropped")
        .expect("dropped event");
    assert_eq!(dropped["eventid"], 3);
    assert_eq!(dropped["email"], "gone@dest.test");
    assert_eq!(dropped["reason"], "FailedOperation.EmailAddrInBlacklist");
    assert!(
        got.iter()
            .any(|v| v["event"] == "delivered" && v["email"] == "bob@dest.test")
    );

    // The sender address's own URL wins over the account's.
    set_callback(
        &e,
        "acme",
        &hook.url("/address"),
        Some(&format!("news@{domain}")),
    );
    send(&mut sdk, &acme, domain, template, &["cy@dest.test"]).await;
    events_of(&hook, 5).await;
    assert_eq!(hook.hooks()[4].path, "/address");
    assert_signed(&hook.hooks()[4], &secret);

    // A receiver that is down, then answers 500, then is back: every event
    // arrives, once.
    hook.go_down();
    send(&mut sdk, &acme, domain, template, &["d1@dest.test"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hook.answer(500);
    hook.resume().await;
    send(&mut sdk, &acme, domain, template, &["d2@dest.test"]).await;
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || hook
            .hooks()
            .iter()
            .filter(|h| h.status == 500)
            .count()
            >= 2)
        .await,
        "retries while the receiver fails"
    );
    hook.answer(200);
    assert!(
        crate::harness::wait_until(Duration::from_secs(60), || delivered_once(&hook).len() >= 7)
            .await,
        "{:?}",
        hook.hooks()
    );

    // Callbacks queued when the daemon dies are sent after it restarts.
    hook.go_down();
    let failures = |e: &Env| {
        e.kiln
            .log_text()
            .matches("callback failed; will retry")
            .count()
    };
    let before = failures(&e);
    send(&mut sdk, &acme, domain, template, &["k1@dest.test"]).await;
    let mut e = e;
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || failures(&e) > before).await,
        "the callback was tried while the receiver was down"
    );
    e.kiln.kill9();
    e.kiln.spawn();
    hook.resume().await;
    if !crate::harness::wait_until(Duration::from_secs(60), || delivered_once(&hook).len() >= 8)
        .await
    {
        let log = e.kiln.log_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("callback") || l.contains("kiln started"))
            .collect();
        panic!(
            "k1's event never arrived after the restart:\n{}",
            lines.join("\n")
        );
    }
    let all = delivered_once(&hook);
    assert_eq!(all.len(), 8, "{all:?}");
    assert!(
        all.values()
            .any(|v| v["email"] == "k1@dest.test" && v["event"] == "delivered")
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(delivered_once(&hook).len(), 8, "nothing arrives twice");
}
