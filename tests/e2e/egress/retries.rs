//! The queue's schedule in Kiln's time, on a node in the test's process
//! whose clock the test moves: the default retry schedule (1 m, 5 m,
//! 15 m, 30 m, 1 h, 2 h, then every 4 h) and the 72 h the queue keeps a
//! message, without waiting for either.

use crate::harness::{BOTH, submit_session};
use crate::node::node;
use kiln_testkit::client::message;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_schedule_until_the_queue_gives_up() {
    for backend in BOTH {
        let n = node(backend, |_| {}).await;
        n.sink
            .set_rule("later@dest.test", "451 4.3.0 Try again later");
        n.sink
            .set_rule("never@dest.test", "451 4.3.0 Try again later");
        let mut c = submit_session(n.smtp).await;
        let mut ids = Vec::new();
        for rcpt in ["later@dest.test", "never@dest.test"] {
            let r = c
                .send(
                    "a@shop.test",
                    &[rcpt],
                    &message("a@shop.test", rcpt, rcpt, 512),
                )
                .await
                .unwrap();
            assert_eq!(r.code, 250, "{r:?}");
            ids.push(crate::harness::queued_id(&r.text));
        }
        c.quit().await;
        let attempts = |r: &serde_json::Value| r["attempts"].as_array().map_or(0, |a| a.len());

        // The first retry is due a minute later: not a moment before.
        // Each step waits for both recipients, so that the other's
        // schedule is never skipped by the next jump.
        let rec = n.wait_for(&ids[0], 0, |r| r["state"] == "deferred").await;
        n.wait_for(&ids[1], 0, |r| r["state"] == "deferred").await;
        let received = n.status(&ids[0]).await.unwrap()["received_at_ms"]
            .as_i64()
            .unwrap();
        let next = rec["next_attempt_at_ms"].as_i64().unwrap();
        assert!((next - received - 60_000).abs() < 2_000, "{rec}");
        n.move_clock_to(next - 1_000);
        crate::harness::nothing_happens_for(
            Duration::from_millis(300),
            "an attempt before its time",
        )
        .await;
        assert_eq!(
            attempts(&n.status(&ids[0]).await.unwrap()["recipients"][0]),
            1,
            "{backend:?}: too early"
        );
        n.move_clock_to(next);
        let rec = n.wait_for(&ids[0], 0, |r| attempts(r) == 2).await;
        n.wait_for(&ids[1], 0, |r| attempts(r) == 2).await;
        // Then five minutes; it is delivered once the receiver takes it.
        let second = rec["next_attempt_at_ms"].as_i64().unwrap();
        assert!((second - next - 300_000).abs() < 2_000, "{rec}");
        n.sink.clear_rule("later@dest.test");
        n.move_clock_to(second);
        n.wait_for(&ids[0], 0, |r| r["state"] == "delivered").await;
        n.wait_for(&ids[1], 0, |r| attempts(r) == 3).await;

        // The other is tried on the schedule until 72 hours have passed,
        // then given up (a soft bounce).
        loop {
            let st = n.status(&ids[1]).await.unwrap();
            let rec = &st["recipients"][0];
            if rec["state"] == "expired" {
                break;
            }
            let tried = attempts(rec);
            let Some(next) = rec["next_attempt_at_ms"].as_i64() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            n.move_clock_to(next);
            n.wait_for(&ids[1], 0, |r| {
                attempts(r) > tried || r["state"] == "expired"
            })
            .await;
        }
        let st = n.status(&ids[1]).await.unwrap();
        let rec = &st["recipients"][0];
        let at: Vec<i64> = rec["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["at_ms"].as_i64().unwrap())
            .collect();
        let gaps: Vec<i64> = at.windows(2).map(|w| (w[1] - w[0]) / 1000).collect();
        assert!(
            at[at.len() - 1] - at[0] >= 72 * 3_600_000 - 60_000,
            "{backend:?}: gave up early: {rec}"
        );
        let start: Vec<i64> = gaps.iter().take(7).map(|g| (g + 30) / 60 * 60).collect();
        assert_eq!(
            start,
            [60, 300, 900, 1800, 3600, 7200, 14400],
            "{backend:?}: {gaps:?}"
        );
        // Every four hours after that; the last try may come sooner, at the deadline.
        let (last, middle) = gaps[7..].split_last().unwrap();
        assert!(middle.iter().all(|g| (g - 14_400).abs() <= 2), "{gaps:?}");
        assert!(*last <= 14_400 + 2, "{gaps:?}");
        assert_eq!(n.sink.count(), 1, "only the message that could go went");
        n.stop().await;
    }
}
