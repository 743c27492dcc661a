//! `kiln explain`: a message deferred by a 4xx, then delivered, then
//! opened, told in that order with the replies and the node of each
//! attempt, on both stores (on Redis, the second attempt another node's).

use crate::clients::{ready_to_send, send_params};
use crate::harness::{BOTH, Backend, env, second_node, wait_state, wait_until};
use serde_json::Value;
use std::time::Duration;

fn explain(e: &crate::harness::Env, id: &str, json: bool) -> (bool, String) {
    let mut args = vec!["explain", id];
    if json {
        args.push("--json");
    }
    let out = e.kiln.command(&args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_then_delivered_then_opened_message_explains_in_order() {
    for backend in BOTH {
        let tracking = |o: &mut kiln_testkit::process::KilnOptions| {
            o.extra = "[tracking]\nbase_url = \"http://{http}\"\nsecret = \"explain-test-secret\"\n"
                .into()
        };
        let mut e = env(backend, tracking).await;
        let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;
        e.sink
            .set_rule("ann@dest.test", "451 4.3.0 Greylisted, try again later");
        let id = sdk
            .ok(
                &acme,
                "SendEmail",
                send_params(domain, template, "ann@dest.test"),
            )
            .await["MessageId"]
            .as_str()
            .unwrap()
            .to_string();
        wait_state(&e.kiln, &id, 0, "deferred", 20).await;
        e.sink.clear_rule("ann@dest.test");
        // On Redis the second attempt is another node's: node-a stops,
        // node-b retries (and node-a comes back for the rest).
        let b = (backend == Backend::Redis).then(|| second_node(&e, tracking));
        let retrying = match &b {
            Some(b) => {
                e.kiln.terminate();
                b
            }
            None => &e.kiln,
        };
        let out = retrying.command(&["queue", "retry-now", "domain:dest.test"]);
        assert!(out.status.success(), "{out:?}");
        wait_state(retrying, &id, 0, "delivered", 20).await;
        if b.is_some() {
            e.kiln.spawn();
        }

        // The recipient opens it: the pixel is fetched.
        let data = e.sink.messages()[0].data.clone();
        let msg = mail_parser::MessageParser::default().parse(&data).unwrap();
        let body = msg.body_html(0).unwrap().into_owned();
        let pixel = body
            .split('"')
            .find(|u| u.contains("/t/o/"))
            .unwrap_or_else(|| panic!("no pixel in {body}"));
        let r = reqwest::get(pixel).await.unwrap();
        assert!(r.status().is_success(), "{pixel}: {}", r.status());

        let opened = || {
            let (_, out) = explain(&e, &id, true);
            serde_json::from_str::<Value>(&out).ok().is_some_and(|v| {
                v["lines"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["what"] == "open")
            })
        };
        assert!(
            wait_until(Duration::from_secs(10), opened).await,
            "{backend:?}: {}",
            explain(&e, &id, true).1
        );
        let (ok, out) = explain(&e, &id, true);
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let lines = v["lines"].as_array().unwrap();
        let whats: Vec<&str> = lines.iter().map(|l| l["what"].as_str().unwrap()).collect();
        let pos = |what: &str, text: &str| {
            lines
                .iter()
                .position(|l| l["what"] == what && l["text"].as_str().unwrap().contains(text))
                .unwrap_or_else(|| {
                    panic!("{backend:?}: no {what} with {text:?} in {whats:?}\n{out}")
                })
        };
        let received = pos("received", "api 127.0.0.1 request");
        let dkim = pos("dkim", "signed for mail.acme.test");
        let filter = pos("content_filter", "");
        let first = pos("attempt", "451 4.3.0 Greylisted");
        let second = pos("attempt", "250");
        let open = pos("open", "");
        assert!(
            received < first && filter < first && dkim < first && first < second && second < open,
            "{backend:?}: out of order: {whats:?}"
        );
        let first_text = lines[first]["text"].as_str().unwrap();
        assert!(first_text.contains("deferred, next try at"), "{first_text}");
        assert!(first_text.starts_with("#1 to mx.dest.test"), "{first_text}");
        assert!(first_text.contains(" by node node-a"), "{first_text}");
        let second_text = lines[second]["text"].as_str().unwrap();
        assert!(
            second_text.starts_with("#2 ") && second_text.contains("→ delivered"),
            "{second_text}"
        );
        let second_node_name = if b.is_some() { "node-b" } else { "node-a" };
        assert!(
            second_text.contains(&format!(" by node {second_node_name}")),
            "{backend:?}: which node made it: {second_text}"
        );
        // For people: the same story as text, one line each.
        let (ok, text) = explain(&e, &id, false);
        assert!(ok);
        assert_eq!(text.trim_end().lines().count(), lines.len(), "{text}");
        assert!(text.contains("Greylisted"), "{text}");
        // An unknown message is named as such.
        let (ok, _) = explain(&e, "no-such-message", false);
        assert!(!ok);
    }
}
