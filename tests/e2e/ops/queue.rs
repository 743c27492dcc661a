//! `kiln queue`: a suspended domain gets no attempt (counted at the
//! receiver) on any node, across a restart, until resumed; an operator's
//! bounce makes each queued recipient final once, with one bounce event
//! and callback each.

use crate::clients::{ready_to_send, send_params};
use crate::harness::{BOTH, env, queued_id, second_node, submit_session};
use kiln_testkit::client::message;
use kiln_testkit::process::Kiln;
use kiln_testkit::webhook::Webhook;
use serde_json::Value;
use std::time::Duration;

fn run(kiln: &Kiln, args: &[&str]) -> Value {
    let out = kiln.command(args);
    assert!(
        out.status.success(),
        "kiln {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn submit(kiln: &Kiln, to: &str) -> String {
    let mut c = submit_session(kiln.smtp).await;
    let r = c
        .send(
            "a@shop.test",
            &[to],
            &message("a@shop.test", to, "held", 300),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    c.quit().await;
    queued_id(&r.text)
}

fn held_seen(sink: &kiln_testkit::sink::Sink) -> usize {
    (0..4)
        .map(|i| sink.rcpts_seen(&format!("h{i}@held.test")))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_domain_waits_on_every_node_and_across_a_restart() {
    for backend in crate::harness::ALL {
        let mut e = env(backend, |_| {}).await;
        e.dns.add_mx("held.test", 10, "mx.dest.test");
        let b = backend.shared().then(|| second_node(&e, |_| {}));
        let r = run(&e.kiln, &["queue", "suspend", "domain:held.test"]);
        assert_eq!(r["rule"]["select"]["value"], "held.test", "{r}");
        // The other node reads the rule within a second: its summary
        // lists it then.
        if let Some(b) = &b {
            let knows = || {
                run(b, &["queue", "summary"])["suspensions"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty())
            };
            assert!(crate::harness::wait_until(Duration::from_secs(10), knows).await);
        }

        for i in 0..4 {
            // Half through the second node, where there is one.
            let via = match (&b, i % 2) {
                (Some(b), 1) => b,
                _ => &e.kiln,
            };
            submit(via, &format!("h{i}@held.test")).await;
        }
        for i in 0..3 {
            submit(&e.kiln, &format!("d{i}@dest.test")).await;
        }
        assert!(
            e.sink.wait_count(3, Duration::from_secs(20)).await,
            "{backend:?}: the others are delivered"
        );
        crate::harness::nothing_happens_for(Duration::from_secs(2), "an attempt at held.test")
            .await;
        assert_eq!(
            held_seen(&e.sink),
            0,
            "{backend:?}: no attempt at held.test"
        );
        assert_eq!(e.sink.count(), 3);

        let summary = run(&e.kiln, &["queue", "summary", "--by", "domain"]);
        let held = summary["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["key"] == "held.test")
            .unwrap_or_else(|| panic!("{summary}"))
            .clone();
        assert_eq!(held["count"], 4, "{summary}");
        assert_eq!(held["waiting"], 4, "{summary}");
        let list = run(&e.kiln, &["queue", "list", "domain:held.test"]);
        assert_eq!(list["entries"].as_array().unwrap().len(), 4, "{list}");
        let controls = run(&e.kiln, &["queue", "controls"]);
        assert_eq!(controls["rules"].as_array().unwrap().len(), 1, "{controls}");

        // Restarted, still suspended.
        e.kiln.terminate();
        e.kiln.spawn();
        crate::harness::nothing_happens_for(Duration::from_secs(2), "an attempt after the restart")
            .await;
        assert_eq!(
            held_seen(&e.sink),
            0,
            "{backend:?}: suspended after a restart"
        );

        // A selection that is not suspended is named as such.
        let out = e.kiln.command(&["queue", "resume", "domain:other.test"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("NotSuspended"));
        let out = e.kiln.command(&["queue", "suspend", "colour:red"]);
        assert!(!out.status.success());

        let r = run(&e.kiln, &["queue", "resume", "domain:held.test"]);
        assert_eq!(r["due_now"], 4, "{backend:?}: {r}");
        assert!(
            e.sink.wait_count(7, Duration::from_secs(20)).await,
            "{backend:?}: resumed mail delivered ({} of 7)",
            e.sink.count()
        );
        for i in 0..4 {
            assert_eq!(e.sink.rcpts_seen(&format!("h{i}@held.test")), 1);
        }
        let log = e.kiln.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("queue control") && l.contains("suspend"))
            .unwrap_or_else(|| panic!("{backend:?}: the control is not logged"));
        assert!(line.contains("from 127.0.0.1"), "who asked: {line}");
        drop(b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_bounce_is_final_once_with_one_callback_each() {
    for backend in BOTH {
        let hook = Webhook::start().await;
        let e = env(backend, |o| {
            o.callbacks.push_str("retry_base_ms = 100\ntimeout = 2\n")
        })
        .await;
        let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;
        crate::feedback::events::set_callback(&e, "acme", &hook.url("/cb"), None);
        e.dns.add_mx("closed.test", 10, "mx.dest.test");
        let mut ids = Vec::new();
        for i in 0..3 {
            let to = format!("c{i}@closed.test");
            e.sink.set_rule(&to, "451 4.3.0 Mailbox busy, try later");
            let r = sdk
                .ok(&acme, "SendEmail", send_params(domain, template, &to))
                .await;
            ids.push(r["MessageId"].as_str().unwrap().to_string());
        }
        for id in &ids {
            crate::harness::wait_state(&e.kiln, id, 0, "deferred", 20).await;
        }
        let r = run(
            &e.kiln,
            &[
                "queue",
                "bounce",
                "domain:closed.test",
                "--reason",
                "the customer closed the domain",
            ],
        );
        assert_eq!(r["due_now"], 3, "{backend:?}: {r}");
        // Another bounce of the same selection finds nothing left.
        for id in &ids {
            let rec = crate::harness::wait_state(&e.kiln, id, 0, "bounced", 20).await;
            let last = rec["attempts"].as_array().unwrap().last().unwrap().clone();
            assert!(
                last["message"]
                    .as_str()
                    .unwrap()
                    .contains("the customer closed the domain"),
                "{rec}"
            );
        }
        let bounces = || {
            hook.hooks()
                .iter()
                .filter(|h| h.status < 300)
                .filter_map(|h| serde_json::from_str::<Value>(&h.body).ok())
                .filter(|v| v["event"] == "bounce")
                .map(|v| v["email"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        };
        assert!(
            crate::harness::wait_until(Duration::from_secs(20), || bounces().len() >= 3).await,
            "{backend:?}: {:?}",
            hook.hooks()
        );
        crate::harness::nothing_happens_for(Duration::from_secs(2), "a second bounce callback")
            .await;
        let mut got = bounces();
        got.sort();
        assert_eq!(
            got,
            ["c0@closed.test", "c1@closed.test", "c2@closed.test"],
            "{backend:?}: once each"
        );
        assert_eq!(e.sink.count(), 0);
        let r = run(
            &e.kiln,
            &["queue", "bounce", "domain:closed.test", "--reason", "again"],
        );
        assert_eq!(r["due_now"], 0, "{r}");
    }
}

/// The operator holds one customer's mail (`sender_domain:`) while the
/// others' mail to the same receivers goes; the summary says what the
/// suspension holds; `list --limit 1` answers one entry at a time and
/// its cursor goes through all of them once; the control is logged with
/// the system's name for the user when the environment names none (cron,
/// `env -i`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customers_mail_is_held_and_listed_a_page_at_a_time() {
    for backend in BOTH {
        let e = env(backend, |o| {
            o.extra = "[[accounts]]\nname = \"acme\"\nusername = \"acme\"\n\
                       password = \"acme-password\"\ndomains = [\"acme.test\"]\n"
                .into()
        })
        .await;
        let out = std::process::Command::new(e.kiln.binary())
            .args(["queue", "suspend", "sender_domain:ACME.test", "--config"])
            .arg(&e.kiln.config)
            .env_remove("USER")
            .env_remove("LOGNAME")
            .env_remove("SUDO_USER")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");

        let acme = async |to: &str| {
            let mut c =
                crate::harness::submit_session_as(e.kiln.smtp, "acme", "acme-password").await;
            let body = message("news@acme.test", to, "held", 300);
            let r = c.send("news@acme.test", &[to], &body).await.unwrap();
            assert_eq!(r.code, 250, "{r:?}");
            c.quit().await;
            queued_id(&r.text)
        };
        let mut held = Vec::new();
        for i in 0..3 {
            held.push(acme(&format!("c{i}@dest.test")).await);
        }
        for i in 0..2 {
            submit(&e.kiln, &format!("s{i}@dest.test")).await;
        }
        assert!(
            e.sink.wait_count(2, Duration::from_secs(20)).await,
            "{backend:?}: the other customer's mail goes"
        );
        crate::harness::nothing_happens_for(
            Duration::from_secs(2),
            "an attempt at acme.test's mail",
        )
        .await;
        let seen: usize = (0..3)
            .map(|i| e.sink.rcpts_seen(&format!("c{i}@dest.test")))
            .sum();
        assert_eq!(seen, 0, "{backend:?}: acme.test's mail waits");

        let summary = run(&e.kiln, &["queue", "summary", "--by", "sender_domain"]);
        let group = summary["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["key"] == "acme.test")
            .unwrap_or_else(|| panic!("{summary}"))
            .clone();
        assert_eq!(
            (group["count"].clone(), group["suspended"].clone()),
            (3.into(), 3.into()),
            "{summary}"
        );
        let suspension = &summary["suspensions"][0];
        assert_eq!(suspension["select"], "sender_domain:acme.test", "{summary}");
        assert_eq!(suspension["holds"], 3, "{summary}");

        // A page of one at a time: each entry once, then no cursor.
        let mut listed = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10 {
            let mut args = vec!["queue", "list", "sender_domain:acme.test", "--limit", "1"];
            if !cursor.is_empty() {
                args.extend(["--cursor", cursor.as_str()]);
            }
            let page = run(&e.kiln, &args);
            let entries = page["entries"].as_array().unwrap();
            assert!(entries.len() <= 1, "{backend:?}: --limit 1 answered {page}");
            listed.extend(
                entries
                    .iter()
                    .map(|x| x["message_id"].as_str().unwrap().to_string()),
            );
            match page["next"].as_str() {
                Some(next) => cursor = next.to_string(),
                None => break,
            }
        }
        listed.sort();
        held.sort();
        assert_eq!(listed, held, "{backend:?}: every held entry once");

        let r = run(&e.kiln, &["queue", "resume", "sender_domain:acme.test"]);
        assert_eq!(r["due_now"], 3, "{backend:?}: {r}");
        assert!(
            e.sink.wait_count(5, Duration::from_secs(20)).await,
            "{backend:?}: resumed mail delivered"
        );
        let whoami = std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap();
        let whoami = String::from_utf8_lossy(&whoami.stdout).trim().to_string();
        let log = e.kiln.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("queue control") && l.contains("suspend"))
            .unwrap_or_else(|| panic!("{backend:?}: the control is not logged"));
        assert!(
            line.contains(&format!("{whoami} from 127.0.0.1")) && !line.contains("unknown user"),
            "who asked: {line}"
        );
    }
}
