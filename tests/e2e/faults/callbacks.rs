//! A callback receiver that hangs, then one that answers slowly: delivery
//! goes on at the same pace (callbacks are sent apart from delivery), and
//! once the receiver answers again every event arrives, once.

use crate::clients::{Creds, Sdk, ready_to_send, send_params};
use crate::harness::env;
use kiln_testkit::webhook::Webhook;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Sends `n` messages and answers how long until the sink had them all.
async fn batch(
    e: &crate::harness::Env,
    sdk: &mut Sdk,
    acme: &Creds,
    (domain, template): (&str, i64),
    first: usize,
    n: usize,
) -> f64 {
    let start = Instant::now();
    for i in first..first + n {
        sdk.ok(
            acme,
            "SendEmail",
            send_params(domain, template, &format!("r{i}@dest.test")),
        )
        .await;
    }
    assert!(
        e.sink.wait_count(first + n, Duration::from_secs(60)).await,
        "{} of {} delivered",
        e.sink.count(),
        first + n
    );
    start.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_or_slow_callback_receiver_does_not_slow_delivery() {
    const N: usize = 100;
    for backend in crate::harness::ALL {
        let hook = Webhook::start().await;
        let e = env(backend, |o| {
            o.callbacks.push_str("retry_base_ms = 200\ntimeout = 20\n")
        })
        .await;
        let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;
        crate::feedback::events::set_callback(&e, "acme", &hook.url("/cb"), None);

        let at_once = batch(&e, &mut sdk, &acme, (domain, template), 0, N).await;
        // The receiver hangs: the batch is measured once callbacks are
        // stuck on it.
        hook.answer_after(Some(Duration::from_secs(3600)));
        let stuck = batch(&e, &mut sdk, &acme, (domain, template), N, 1).await;
        assert!(
            crate::harness::wait_until(Duration::from_secs(15), || hook.waiting() > 0).await,
            "{backend:?}: no callback reached the hanging receiver"
        );
        let hanging = batch(&e, &mut sdk, &acme, (domain, template), N + 1, N).await;
        let held = hook.waiting();
        hook.answer_after(Some(Duration::from_secs(2)));
        let slow = batch(&e, &mut sdk, &acme, (domain, template), 2 * N + 1, N).await;
        let _ = stuck;
        eprintln!(
            "{backend:?}: {N} messages delivered in {at_once:.2} s with a receiver that answers, {hanging:.2} s while it hangs ({held} callbacks held), {slow:.2} s while it takes 2 s an answer"
        );
        for (what, took) in [("hanging", hanging), ("slow", slow)] {
            assert!(
                took <= at_once * 1.5 + 1.0,
                "{backend:?}: delivery slowed by a {what} receiver: {took:.2} s against {at_once:.2} s"
            );
        }

        // Answering again, the receiver gets every delivered event, once.
        hook.answer_after(None);
        let delivered = || {
            let mut ids = HashSet::new();
            for h in hook.hooks().iter().filter(|h| h.status < 300) {
                let v: serde_json::Value = serde_json::from_str(&h.body).unwrap_or_default();
                if v["event"] == "delivered" {
                    let id = h.header("x-kiln-event-id").unwrap_or_default().to_string();
                    ids.insert(id);
                }
            }
            ids.len()
        };
        assert!(
            crate::harness::wait_until(Duration::from_secs(120), || delivered() > 3 * N).await,
            "{backend:?}: {} of {} delivered events arrived",
            delivered(),
            3 * N + 1
        );
    }
}
