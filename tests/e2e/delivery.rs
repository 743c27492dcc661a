//! Delivery: DKIM-signed mail reaches the MX that DNS names; MX fallback;
//! retries after 4xx; bounces after 5xx, missing domains and null MX.

use crate::harness::{BOTH, env, queued_id, submit_one, submit_session, wait_state};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use kiln_testkit::client::message;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters};
use std::time::Duration;

async fn verify_dkim(nameserver: std::net::SocketAddr, data: &[u8]) -> Vec<DkimResult> {
    let mut udp = ConnectionConfig::udp();
    udp.port = nameserver.port();
    let config = ResolverConfig::from_parts(
        None,
        Vec::new(),
        vec![NameServerConfig::new(nameserver.ip(), true, vec![udp])],
    );
    let auth = MessageAuthenticator::new(config, ResolverOpts::default()).unwrap();
    let msg = AuthenticatedMessage::parse(data).expect("parsable message");
    auth.verify_dkim(Parameters::new(&msg))
        .await
        .into_iter()
        .map(|o| o.result().clone())
        .collect()
}

/// The text of a recipient record's first attempt (remote reply or local reason).
fn first_reply(rec: &serde_json::Value) -> &str {
    rec["attempts"][0]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_mail_reaches_the_mx_dns_names() {
    for (backend, algorithm) in BOTH.into_iter().zip(["rsa", "ed25519"]) {
        let e = env(backend, |_| {}).await;
        let out = e
            .kiln
            .command(&["dkim", "create", "shop.test", "--algorithm", algorithm]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(key["dns_name"], "kiln._domainkey.shop.test");
        let txt = key["txt"].as_str().unwrap();
        assert!(
            txt.starts_with(&format!("v=DKIM1; k={algorithm}; p=")),
            "{txt}"
        );
        let show = e.kiln.command(&["dkim", "show", "shop.test"]);
        assert!(show.status.success());
        assert!(String::from_utf8_lossy(&show.stdout).contains(txt));
        e.dns.add_txt("kiln._domainkey.shop.test", txt);

        let id = submit_one(
            e.kiln.smtp,
            "news@shop.test",
            "alice@dest.test",
            "Hello",
            2048,
        )
        .await;

        let rec = wait_state(&e.kiln, &id, 0, "delivered", 20).await;
        let attempt = &rec["attempts"][0];
        assert_eq!(attempt["mx"], "mx.dest.test");
        assert_eq!(attempt["ip"], "127.0.0.1");
        assert_eq!(attempt["code"], 250);
        assert!(
            attempt["tls"].as_str().unwrap_or("").starts_with("TLS"),
            "{attempt}"
        );

        let got = e.sink.messages();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].mail_from, "news@shop.test");
        assert_eq!(got[0].rcpt_to, vec!["alice@dest.test".to_string()]);
        assert!(got[0].tls, "delivery must use STARTTLS when offered");
        let results = verify_dkim(e.dns.addr, &got[0].data).await;
        assert_eq!(results, vec![DkimResult::Pass], "{backend:?}/{algorithm}");

        // A tampered copy fails: the check above can tell.
        let tampered =
            String::from_utf8_lossy(&got[0].data).replace("Subject: Hello", "Subject: Hellp");
        let results = verify_dkim(e.dns.addr, tampered.as_bytes()).await;
        assert!(!results.contains(&DkimResult::Pass), "{results:?}");

        // `kiln status` shows the same record.
        let out = e.kiln.command(&["status", &id]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"delivered\""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_retry_and_bounces() {
    for backend in BOTH {
        let e = env(backend, |o| o.queue = "retry_schedule = [1]".into()).await;
        // Two MXs: the preferred one has nothing listening.
        e.dns.add_mx("two.test", 10, "down.two.test");
        e.dns.add_mx("two.test", 20, "up.two.test");
        e.dns.add_ip("down.two.test", "127.0.0.2".parse().unwrap());
        e.dns.add_ip("up.two.test", "127.0.0.1".parse().unwrap());
        // A domain with a TXT record but no MX and no address.
        e.dns.add_txt("nomail.test", "v=spf1 -all");
        e.dns.add_null_mx("null.test");
        e.sink
            .set_rule("later@dest.test", "451 4.3.0 Try again later");
        e.sink
            .set_rule("gone@dest.test", "550 5.1.1 No such user here");

        let mut c = submit_session(e.kiln.smtp).await;
        let mut ids = Vec::new();
        for rcpt in [
            "bob@two.test",
            "later@dest.test",
            "gone@dest.test",
            "x@nomail.test",
            "y@null.test",
            "z@nxdomain.test",
        ] {
            let body = message("a@shop.test", rcpt, rcpt, 1024);
            let r = c.send("a@shop.test", &[rcpt], &body).await.unwrap();
            assert_eq!(r.code, 250, "{rcpt}: {r:?}");
            ids.push(queued_id(&r.text));
        }
        c.quit().await;

        let rec = wait_state(&e.kiln, &ids[0], 0, "delivered", 30).await;
        assert_eq!(rec["attempts"][0]["mx"], "up.two.test", "{rec}");

        let rec = wait_state(&e.kiln, &ids[1], 0, "deferred", 30).await;
        assert_eq!(rec["attempts"][0]["code"], 451);
        assert!(rec["next_attempt_at_ms"].is_number());
        e.sink.clear_rule("later@dest.test");
        let rec = wait_state(&e.kiln, &ids[1], 0, "delivered", 30).await;
        assert!(rec["attempts"].as_array().unwrap().len() >= 2, "{rec}");

        let rec = wait_state(&e.kiln, &ids[2], 0, "bounced", 30).await;
        assert_eq!(rec["attempts"][0]["code"], 550);
        assert_eq!(rec["attempts"][0]["enhanced_code"], "5.1.1");
        assert!(first_reply(&rec).contains("No such user"));

        let rec = wait_state(&e.kiln, &ids[3], 0, "bounced", 30).await;
        assert!(first_reply(&rec).contains("no MX and no A/AAAA"), "{rec}");
        let rec = wait_state(&e.kiln, &ids[4], 0, "bounced", 30).await;
        assert_eq!(rec["attempts"][0]["enhanced_code"], "5.1.10", "{rec}");
        let rec = wait_state(&e.kiln, &ids[5], 0, "bounced", 30).await;
        assert!(first_reply(&rec).contains("does not exist"), "{rec}");

        // Exactly the two deliverable messages arrived.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rcpts: Vec<String> = e
            .sink
            .messages()
            .iter()
            .flat_map(|m| m.rcpt_to.clone())
            .collect();
        assert_eq!(rcpts.len(), 2, "{rcpts:?}");
        assert!(rcpts.contains(&"bob@two.test".to_string()));
        assert!(rcpts.contains(&"later@dest.test".to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_keeps_the_queue() {
    for backend in BOTH {
        let mut e = env(backend, |o| o.queue = "retry_schedule = [3600]".into()).await;
        e.sink
            .set_rule("slow@dest.test", "451 4.3.0 Try again later");
        let id = submit_one(e.kiln.smtp, "a@shop.test", "slow@dest.test", "kept", 1024).await;
        wait_state(&e.kiln, &id, 0, "deferred", 20).await;
        let status = tokio::task::block_in_place(|| e.kiln.terminate()).unwrap();
        assert!(
            status.success(),
            "SIGTERM must exit 0: {status:?}\n{}",
            e.kiln.log_text()
        );
        tokio::task::block_in_place(|| e.kiln.spawn());
        let rec = wait_state(&e.kiln, &id, 0, "deferred", 20).await;
        assert_eq!(
            rec["attempts"].as_array().unwrap().len(),
            1,
            "not retried early: {rec}"
        );
    }
}
