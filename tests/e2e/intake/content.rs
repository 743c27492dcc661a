//! The content filter sees the message, whichever door it came by.

use crate::clients::*;
use crate::harness::{Backend, env, submit_session};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;
use std::time::Duration;

const BANNED: &str = r#"
return { config = {
  limits = { rate_per_second = 1e9, account_daily_limit = 1e12, per_recipient_per_hour = 1e12 },
  reputation = { initial_level = 20 },
  warmup = { curve = { 1e12 } },
  content_filter = { banned_words = { "cheap pills" } },
} }
"#;

/// `banned_words` applies to every message's subject, text and HTML: SMTP
/// mail (the word quoted-printable in an HTML part), SendEmail with Simple
/// content, a template whose data brings the word, and a batch task's
/// recipients; mail without the word goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_words_are_found_in_every_message() {
    let e = env(Backend::Embedded, |o| {
        o.policy = BANNED.into();
        o.extra = "[platform]\nallow_simple = true\n".into();
    })
    .await;
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;

    // SMTP: the word in an HTML part, quoted-printable and split by a tag.
    let mut c = submit_session(e.kiln.smtp).await;
    let body = b"From: a@shop.test\r\nTo: r@dest.test\r\nSubject: offer\r\nMIME-Version: 1.0\r\n\
        Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
        <p>Get <b>CHEAP</b> pills=20today</p>\r\n";
    let r = c.send("a@shop.test", &["r@dest.test"], body).await.unwrap();
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text.contains("banned word"), "{r:?}");
    let clean = kiln_testkit::client::message("a@shop.test", "r@dest.test", "fine", 300);
    let r = c
        .send("a@shop.test", &["r@dest.test"], &clean)
        .await
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    c.quit().await;

    // SendEmail, Simple content.
    let simple = |text: &str| {
        json!({
            "FromEmailAddress": format!("news@{domain}"),
            "Destination": ["s@dest.test"],
            "Subject": "hello",
            "Simple": {"Text": B64.encode(text)},
        })
    };
    let (code, message) = sdk
        .err(&acme, "SendEmail", simple("Buy cheap pills here"))
        .await;
    assert_eq!(
        code, "InvalidParameterValue.EmailContentIsWrong",
        "{message}"
    );
    sdk.ok(&acme, "SendEmail", simple("A perfectly fine note"))
        .await;

    // A template reviewed clean, whose data brings the word.
    let mut p = send_params(domain, template, "t@dest.test");
    p["Template"]["TemplateData"] = json!("{\"name\":\"cheap pills\",\"code\":\"1\"}");
    let (code, _) = sdk.err(&acme, "SendEmail", p).await;
    assert_eq!(code, "InvalidParameterValue.EmailContentIsWrong");

    // A batch task: the recipient whose data brings the word is skipped.
    let list = sdk
        .ok(
            &acme,
            "CreateReceiver",
            json!({"ReceiversName": "l", "Desc": "d"}),
        )
        .await["ReceiverId"]
        .as_i64()
        .unwrap();
    sdk.ok(
        &acme,
        "CreateReceiverDetailWithData",
        json!({"ReceiverId": list, "Datas": [
            {"Email": "b1@dest.test", "TemplateData": "{\"name\":\"Ann\"}"},
            {"Email": "b2@dest.test", "TemplateData": "{\"name\":\"cheap pills\"}"},
        ]}),
    )
    .await;
    sdk.ok(
        &acme,
        "BatchSendEmail",
        json!({
            "FromEmailAddress": format!("news@{domain}"),
            "ReceiverId": list,
            "Subject": "Hello {{name}}",
            "TaskType": 1,
            "Template": {"TemplateID": template, "TemplateData": "{\"code\":\"C-1\"}"},
        }),
    )
    .await;
    assert!(
        crate::harness::wait_until(Duration::from_secs(30), || e
            .sink
            .messages()
            .iter()
            .any(|m| m.rcpt_to == ["b1@dest.test"]))
        .await
    );
    crate::harness::nothing_happens_for(Duration::from_secs(2), "a message with banned words")
        .await;
    let got: Vec<Vec<String>> = e.sink.messages().into_iter().map(|m| m.rcpt_to).collect();
    assert!(!got.iter().any(|r| r == &["b2@dest.test"]), "{got:?}");
    assert!(got.iter().any(|r| r == &["s@dest.test"]), "{got:?}");
    assert!(!got.iter().any(|r| r == &["t@dest.test"]), "{got:?}");
}
