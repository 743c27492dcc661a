//! The report intake (DSN and ARF to VERP return paths) as an attacker
//! uses it: one genuine return path, replayed.

use crate::clients::ready_to_send;
use crate::feedback::events::{arf, body, dsn, mail_report, set_callback};
use crate::harness::{Backend, env, queued_id};
use kiln_testkit::client::{SmtpClient, message};
use kiln_testkit::webhook::Webhook;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A recipient of one message replays its complaint: 3,000 RCPTs of the
/// return path in one transaction, then the same report in 30 more. One
/// complaint counts: one abuse report, one `spamreport` callback; the
/// repeated RCPTs are refused and the session closed after `max_errors`;
/// a repeated DSN or delay notice changes nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_replayed_counts_once() {
    let hook = Webhook::start().await;
    let e = env(Backend::Embedded, |o| {
        o.extra = "[platform]\nbounce_domain = \"bounces.kiln.test\"\n".into()
    })
    .await;
    e.dns
        .add_txt("_spf.kiln.test", "v=spf1 ip4:127.0.0.0/8 -all");
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;
    set_callback(&e, "acme", &hook.url("/events"), None);
    let sent = sdk
        .ok(
            &acme,
            "SendEmail",
            crate::clients::send_params(domain, template, "bob@dest.test"),
        )
        .await;
    let id = sent["MessageId"].as_str().unwrap().to_string();
    assert!(e.sink.wait_count(1, Duration::from_secs(20)).await);
    let return_path = e.sink.messages()[0].mail_from.clone();
    assert!(
        return_path.starts_with(&format!("b-{id}-0-")),
        "{return_path}"
    );

    // 3,000 RCPTs of it, pipelined, in one transaction.
    let stream = tokio::net::TcpStream::connect(e.kiln.smtp).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    lines.next_line().await.unwrap();
    let mut batch = String::from("EHLO mx.dest.test\r\nMAIL FROM:<>\r\n");
    for _ in 0..3000 {
        batch.push_str(&format!("RCPT TO:<{return_path}>\r\n"));
    }
    let started = Instant::now();
    // The server may close before it has read everything.
    let _ = write.write_all(batch.as_bytes()).await;
    let mut replies = Vec::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
    {
        if !line.starts_with("250-") {
            replies.push(line);
        }
    }
    let took = started.elapsed();
    let accepted = replies
        .iter()
        .filter(|r| r.starts_with("250 2.1.5"))
        .count();
    let duplicate = replies
        .iter()
        .filter(|r| r.contains("Duplicate recipient"))
        .count();
    assert_eq!(accepted, 1, "{replies:?}");
    // Each a session error: closed after `smtp.max_errors` (50 here).
    assert_eq!(duplicate, 50, "{replies:?}");
    assert!(
        replies.last().unwrap().starts_with("421 4.7.0"),
        "{replies:?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");

    // The report itself, 30 times over.
    for _ in 0..30 {
        let r = mail_report(&e, &return_path, &arf(&return_path, "bob@dest.test")).await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    // And a DSN, twice, for the same recipient: the first makes a bounce of
    // the delivered message, the second nothing.
    for _ in 0..2 {
        let r = mail_report(&e, &return_path, &dsn(&return_path, "bob@dest.test")).await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    let events = |hook: &Webhook| -> Vec<Value> { hook.posts().iter().map(body).collect() };
    let count = |kind: &str| events(&hook).iter().filter(|v| v["event"] == kind).count();
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || count("spamreport") >= 1
            && count("bounce") >= 1)
        .await
    );
    // Callbacks go out within a second or two.
    crate::harness::nothing_happens_for(Duration::from_secs(2), "a replayed report's callback")
        .await;
    assert_eq!(
        (count("spamreport"), count("bounce")),
        (1, 1),
        "{:?}",
        events(&hook)
    );
    let today = crate::clients::today();
    let abuse = sdk
        .ok(
            &acme,
            "GetAbuseReport",
            json!({"StartTime": today, "EndTime": today}),
        )
        .await;
    assert_eq!(abuse["TotalCount"], 1, "{abuse}");
    let log = e.kiln.log_text();
    assert_eq!(log.matches("duplicate complaint").count(), 29, "{log}");
    assert!(log.contains("bounce already known"), "{log}");
}

/// `bounces.` is the label of senders' own return-path domains, but
/// `bounces.example.org` is also somebody's ordinary domain: its mail is
/// relayed like any other, and only a genuine return path there is taken
/// as a report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_bounces_domain_gets_its_mail() {
    let e = env(Backend::Embedded, |o| {
        o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
        o.extra = "[platform]\nbounce_domain = \"bounces.kiln.test\"\n".into();
    })
    .await;
    e.dns.add_mx("bounces.example.org", 10, "mx.dest.test");
    let mut c = SmtpClient::connect(e.kiln.smtp).await.unwrap();
    c.cmd("EHLO load.test").await.unwrap();
    let body = message(
        "load@shop.test",
        "alice@bounces.example.org",
        "for alice",
        512,
    );
    let r = c
        .send("load@shop.test", &["alice@bounces.example.org"], &body)
        .await
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    c.quit().await;
    let id = queued_id(&r.text);
    assert!(e.sink.wait_count(1, Duration::from_secs(20)).await, "{id}");
    assert_eq!(e.sink.messages()[0].rcpt_to, ["alice@bounces.example.org"]);
    // Kiln's own bounce domain still refuses what is not a return path.
    let r = mail_report(&e, "alice@bounces.kiln.test", "Subject: x\r\n\r\nx\r\n").await;
    assert_eq!(r.code, 550, "{r:?}");
}
