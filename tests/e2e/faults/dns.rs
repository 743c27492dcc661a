//! The DNS server stops answering: mail waits (deferred, never bounced),
//! a verified sender domain stays verified and its check says it could not
//! look up; once DNS answers again both recover.

use crate::clients::ready_to_send;
use crate::harness::{BOTH, env, queued_id, submit_session, wait_state};
use kiln_testkit::client::message;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_dns_server_defers_mail_and_both_recover() {
    for backend in BOTH {
        let e = env(backend, |_| {}).await;
        let (mut sdk, acme, domain, _) = ready_to_send(&e, 1).await;
        e.dns.add_mx("late.test", 10, "mx.dest.test");

        e.dns.set_silent(true);
        let mut c = submit_session(e.kiln.smtp).await;
        let r = c
            .send(
                "a@shop.test",
                &["ann@late.test"],
                &message("a@shop.test", "ann@late.test", "dns", 300),
            )
            .await
            .unwrap();
        assert_eq!(r.code, 250, "{r:?}");
        c.quit().await;
        let id = queued_id(&r.text);
        let rec = wait_state(&e.kiln, &id, 0, "deferred", 30).await;
        let attempt = &rec["attempts"][0];
        assert_eq!(attempt["enhanced_code"], "4.4.3", "{rec}");

        // The sender domain's check cannot tell: it stays verified.
        let checked = sdk
            .ok(&acme, "GetEmailIdentity", json!({"EmailIdentity": domain}))
            .await;
        assert_eq!(checked["VerifiedForSendingStatus"], true, "{checked}");
        assert!(
            checked["Attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["CurrentValue"]
                    .as_str()
                    .unwrap()
                    .starts_with("could not look up")),
            "{checked}"
        );

        e.dns.set_silent(false);
        let back = Instant::now();
        let delivered = loop {
            let out = e.kiln.command(&["queue", "retry-now", "domain:late.test"]);
            assert!(out.status.success(), "{out:?}");
            let st = crate::harness::status(&e.kiln, &id).await.unwrap();
            let state = st["recipients"][0]["state"].clone();
            if state == "delivered" {
                break true;
            }
            assert_ne!(state, "bounced", "{backend:?}: never bounced: {st}");
            if back.elapsed() > Duration::from_secs(60) {
                break false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        assert!(delivered, "{backend:?}: delivered once DNS answers");
        eprintln!(
            "{backend:?}: delivered {:.1} s after DNS answered again",
            back.elapsed().as_secs_f64()
        );
        assert_eq!(e.sink.rcpts_seen("ann@late.test"), 1);
        let checked = sdk
            .ok(&acme, "GetEmailIdentity", json!({"EmailIdentity": domain}))
            .await;
        assert_eq!(checked["VerifiedForSendingStatus"], true, "{checked}");
    }
}
