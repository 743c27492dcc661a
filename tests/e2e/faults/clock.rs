//! The clock jumps: forward a day, then back an hour across midnight, as a
//! system clock stepped by an operator or NTP does (the test clock moves
//! Kiln's wall time; its timers, like the kernel's monotonic ones, do not
//! jump). What Kiln does is what docs/reliability.md says: quotas and
//! warm-up count the day the clock shows, queue times are wall-clock times
//! (a jump forward makes retries due, one back postpones them by as much,
//! nothing is lost or bounced for it), and delivery goes on at its pace.

use crate::clients::{ready_to_send, send_params};
use crate::harness::{BOTH, Backend, Env, env, move_clock, relay, wait_until};
use crate::store::durability::subjects;
use std::time::Duration;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// Warm-up of three messages on a domain's first day and ten the day after,
/// for SendEmail too; nothing else limits.
const THREE_THEN_TEN: &str = r#"
return { config = {
  limits = { rate_per_second = 1e9, account_daily_limit = 1e12, per_recipient_per_hour = 1e12 },
  reputation = { initial_level = 20 },
  warmup = { curve = { 3, 10 }, applies_to = { "regular", "trigger", "batch" } },
} }
"#;

/// Relays a message to `to` and waits until the sink has seen it tried.
async fn relayed_and_tried(e: &Env, to: &str, subject: &str) {
    let tried = e.sink.rcpts_seen(to);
    assert_eq!(relay(e.kiln.smtp, to, subject).await.code, 250);
    let seen = || e.sink.rcpts_seen(to) > tried;
    assert!(
        wait_until(Duration::from_secs(10), seen).await,
        "{subject} not tried"
    );
}

/// How many of `subject` the sink has.
fn copies(e: &Env, subject: &str) -> usize {
    subjects(&e.sink).iter().filter(|s| *s == subject).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_jumps_a_day_forward_and_an_hour_back() {
    for backend in BOTH {
        clock_jumps(backend).await;
    }
}

async fn clock_jumps(backend: Backend) {
    let e = env(backend, |o| {
        o.policy = THREE_THEN_TEN.into();
        o.server = "test_clock = true".into();
        o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
        o.queue = "retry_schedule = [600]".into();
    })
    .await;
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 0).await;
    // Day one at 00:30 UTC.
    let now = move_clock(&e, 0).await;
    let day_one = now - now.rem_euclid(DAY) + DAY;
    move_clock(&e, day_one + HOUR / 2 - now).await;

    let send = |to: &'static str| send_params(domain, template, to);
    for to in ["a@dest.test", "b@dest.test", "c@dest.test"] {
        sdk.ok(&acme, "SendEmail", send(to)).await;
    }
    let (code, why) = sdk.err(&acme, "SendEmail", send("d@dest.test")).await;
    assert_eq!(
        code, "FailedOperation.ExceedSendLimit",
        "{backend:?}: {why}"
    );

    // Deferred on day one, its retry due in 10 minutes.
    e.sink
        .set_rule("later@dest.test", "451 4.3.0 try again later");
    relayed_and_tried(&e, "later@dest.test", "deferred").await;
    e.sink.clear_rule("later@dest.test");

    // An attempt in flight (its RCPT answered after 3 s) when the clock
    // jumps a day forward: delivered once.
    e.sink.set_delay("slow@dest.test", Duration::from_secs(3));
    relayed_and_tried(&e, "slow@dest.test", "in-flight").await;
    move_clock(&e, DAY).await;

    // Day two, 00:30: the retry is due, the warm-up allows ten.
    assert!(
        wait_until(Duration::from_secs(15), || copies(&e, "deferred") == 1).await,
        "{backend:?}: the retry did not come when the clock passed it:\n{}",
        e.kiln.log_text()
    );
    for i in 0..4 {
        sdk.ok(
            &acme,
            "SendEmail",
            send(["d@dest.test", "e@dest.test", "f@dest.test", "g@dest.test"][i]),
        )
        .await;
    }
    e.sink
        .set_rule("later@dest.test", "451 4.3.0 try again later");
    relayed_and_tried(&e, "later@dest.test", "deferred-2").await;
    e.sink.clear_rule("later@dest.test");

    // Back an hour: day one again, 23:30, its three sent.
    move_clock(&e, -HOUR).await;
    let (code, why) = sdk.err(&acme, "SendEmail", send("h@dest.test")).await;
    assert_eq!(
        code, "FailedOperation.ExceedSendLimit",
        "{backend:?}: day one's cap again: {why}"
    );
    // Mail goes on at its pace: nothing waits for the hour to come back.
    let back = tokio::time::Instant::now();
    assert_eq!(
        relay(e.kiln.smtp, "sink@dest.test", "after-back")
            .await
            .code,
        250
    );
    assert!(
        wait_until(Duration::from_secs(10), || copies(&e, "after-back") == 1).await,
        "{backend:?}: delivery stalled after the clock went back:\n{}",
        e.kiln.log_text()
    );
    let after_back = back.elapsed();
    // The retry due at 00:40 waits for the clock to get there again; it
    // stays queued, neither lost nor bounced.
    crate::harness::nothing_happens_for(Duration::from_secs(2), "the retry before its time").await;
    assert_eq!(copies(&e, "deferred-2"), 0, "{backend:?}");
    move_clock(&e, HOUR + 11 * 60_000).await;
    assert!(
        wait_until(Duration::from_secs(15), || copies(&e, "deferred-2") == 1).await,
        "{backend:?}: the retry was lost after the clock went back:\n{}",
        e.kiln.log_text()
    );
    crate::harness::nothing_happens_for(Duration::from_secs(2), "a second copy").await;
    assert_eq!(
        copies(&e, "in-flight"),
        1,
        "{backend:?}: in flight during the jump"
    );
    assert_eq!(copies(&e, "deferred"), 1, "{backend:?}");
    assert_eq!(e.sink.rcpts_seen("a@dest.test"), 1, "{backend:?}");
    eprintln!(
        "{backend:?}: day one's cap (3) held, day two's (10) after the jump forward, day one's \
         again after the jump back; retry due after the forward jump delivered; the one \
         postponed by the jump back delivered when its time came again; a new message \
         delivered {:.2} s after the jump back; the attempt in flight during the jump \
         delivered once",
        after_back.as_secs_f64()
    );
}
