//! The one path every end of a delivery takes, on a real store and the
//! default policy: each outcome is decided, written with what its listener
//! asked for in the same commit, and heard only once it is recorded; what
//! changes nothing is heard by no one.

use super::QueueHandle;
use super::control::{Action, Rule, Selector};
use super::outcome::Verdict;
use super::report::{Cause, Listener, Outcome, Report, Returned, ReturnedAs};
use crate::config::QueueSettings;
use crate::queued::{Attempt, RecipientState};
use crate::store::{Store, Write, embedded::EmbeddedStore};
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Files a key with each outcome (the test then finds it in the store,
/// written in the outcome's commit) and notes what it hears.
struct Recorder {
    heard: Mutex<Vec<Heard>>,
}

/// What the recorder heard of an outcome.
#[derive(Debug, Clone)]
struct Heard {
    key: String,
    state: RecipientState,
    cause: Cause,
    reason: String,
    senders: bool,
    bounce_type: Option<&'static str>,
    classified: bool,
}

fn key(o: &Outcome<'_>) -> String {
    format!(
        "heard:{}:{}:{:?}",
        o.entry.msg_id, o.entry.rcpt_idx, o.state
    )
}

impl Listener for Recorder {
    fn writes_for<'a>(&'a self, o: &'a Outcome<'_>) -> Option<BoxFuture<'a, Vec<Write>>> {
        let write = Write::Put {
            key: key(o),
            value: o.reason.clone().into_bytes(),
            ttl: None,
        };
        Some(Box::pin(async move { vec![write] }))
    }

    fn recorded(&self, o: &Outcome<'_>) {
        self.heard.lock().expect("lock").push(Heard {
            key: key(o),
            state: o.state,
            cause: o.cause.clone(),
            reason: o.reason.clone(),
            senders: o.is_the_senders(),
            bounce_type: o.bounce_type(),
            classified: o.class.is_some(),
        });
    }
}

use crate::queued::test_message as message;

fn attempt(at_ms: i64, code: u16, enhanced: &str, text: &str) -> Attempt {
    Attempt {
        at_ms,
        mx: Some("mx.dest.test".into()),
        ip: None,
        code: Some(code),
        enhanced_code: Some(enhanced.into()),
        message: text.into(),
        tls: None,
        duration_ms: 3,
        source: None,
        shaping: None,
        outcome: None,
        node: None,
        tls_policy: None,
    }
}

#[tokio::test]
async fn every_end_of_a_delivery_is_decided_recorded_then_heard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = crate::clock::Clock::test();
    let store = Store::Embedded(
        EmbeddedStore::open(
            &dir.path().join("kiln.redb"),
            Duration::from_secs(600),
            clock.clone(),
        )
        .expect("store"),
    );
    let fixture = crate::policy::testing::Fixture::new();
    let policy = Arc::new(
        crate::policy::Policy::load(fixture.settings("return {}"), store.clone())
            .expect("the default policy"),
    );
    let recorder = Arc::new(Recorder {
        heard: Mutex::new(Vec::new()),
    });
    let queue = QueueHandle::new(
        store.clone(),
        1 << 20,
        &QueueSettings::default(),
        policy,
        recorder.clone(),
        "node-a".into(),
    );
    let heard = |n: usize| recorder.heard.lock().expect("lock")[n].clone();
    let count = || recorder.heard.lock().expect("lock").len();
    let in_store = |h: Heard| {
        let store = store.clone();
        async move { store.get(&h.key).await.expect("get").is_some() }
    };
    let recorded_message = || {
        let store = store.clone();
        async move { store.status("m1").await.expect("status").expect("known") }
    };
    let status = |idx: usize| {
        let message = recorded_message();
        async move { message.await.recipients[idx].clone() }
    };
    let now = store.now_ms();
    let lease = Duration::from_secs(60);

    // Admission: the dropped recipient is written with the message and
    // heard once it is.
    let mut m1 = message("m1", &["ann@dest.test", "bob@dest.test"], now);
    m1.dropped.insert(1, "blocklisted".into());
    queue.submit(&m1).await.expect("submit");
    assert_eq!(count(), 1);
    let dropped = heard(0);
    assert_eq!(
        (dropped.state, &dropped.cause, dropped.reason.as_str()),
        (RecipientState::Dropped, &Cause::Dropped, "blocklisted")
    );
    assert!(in_store(dropped.clone()).await, "written with the message");
    assert_eq!(status(1).await.state, RecipientState::Dropped);

    // An attempt refused for now: deferred a minute, its attempt recorded
    // by this node with what followed.
    let entry = store.lease(10, lease).await.expect("lease").remove(0);
    let at = store.now_ms();
    queue
        .report(
            &entry,
            Report::Attempt {
                verdict: Verdict::Temporary,
                attempt: attempt(at, 451, "4.7.1", "try later"),
                signal: None,
                provider: Some("dest".into()),
            },
        )
        .await;
    let deferred = heard(1);
    assert_eq!(deferred.state, RecipientState::Deferred);
    assert_eq!(deferred.reason, "451 4.7.1 try later");
    assert!(deferred.senders);
    assert!(in_store(deferred.clone()).await);
    let r = status(0).await;
    assert_eq!((r.state, r.attempts.len()), (RecipientState::Deferred, 1));
    assert_eq!(r.attempts[0].node.as_deref(), Some("node-a"));
    assert!(
        r.attempts[0]
            .outcome
            .as_deref()
            .is_some_and(|o| o.starts_with("deferred, next try at")),
        "{:?}",
        r.attempts[0].outcome
    );
    let next = r.next_attempt_at_ms.expect("due again") - at;
    assert!((60_000..61_000).contains(&next), "{next}");

    // A DSN while the recipient is still queued changes nothing.
    let dsn = || Returned {
        msg_id: "m1".into(),
        rcpt_idx: 0,
        code: 550,
        status: "5.1.1".into(),
        detail: "<ann@dest.test>: user unknown".into(),
        reply: "550 5.1.1 <ann@dest.test>: user unknown".into(),
        remote_mta: "mx.dest.test".into(),
    };
    assert_eq!(
        queue
            .report_returned(&recorded_message().await, dsn())
            .await
            .expect("dsn"),
        ReturnedAs::StillQueued
    );
    assert_eq!(count(), 2, "nothing heard");

    // Delivered at the next try: the entry leaves the queue.
    clock.advance(Duration::from_secs(60)).expect("test clock");
    let entry = store.lease(10, lease).await.expect("lease").remove(0);
    assert_eq!(entry.attempts, 1);
    queue
        .report(
            &entry,
            Report::Attempt {
                verdict: Verdict::Delivered,
                attempt: attempt(store.now_ms(), 250, "2.0.0", "ok"),
                signal: None,
                provider: Some("dest".into()),
            },
        )
        .await;
    assert_eq!(heard(2).state, RecipientState::Delivered);
    assert_eq!(store.queue_len().await.expect("len"), 0);

    // The DSN that comes back after delivery bounces it after all, through
    // `classify_bounce` (the default plugin: 5.1.1 is hard).
    assert_eq!(
        queue
            .report_returned(&recorded_message().await, dsn())
            .await
            .expect("dsn"),
        ReturnedAs::Bounce
    );
    let bounced = heard(3);
    assert_eq!(
        (bounced.state, &bounced.cause),
        (RecipientState::Bounced, &Cause::Returned)
    );
    assert_eq!(bounced.bounce_type, Some("hard"));
    assert_eq!(
        bounced.reason,
        "5.1.1 550 5.1.1 <ann@dest.test>: user unknown"
    );
    assert!(bounced.classified, "classified");
    assert!(in_store(bounced).await);
    let r = status(0).await;
    assert_eq!((r.state, r.attempts.len()), (RecipientState::Bounced, 3));
    // Told again, it changes nothing.
    assert_eq!(
        queue
            .report_returned(&recorded_message().await, dsn())
            .await
            .expect("dsn"),
        ReturnedAs::AlreadyBounced
    );
    assert_eq!(count(), 4);

    // An operator's bounce: final, not the sender's doing.
    queue
        .submit(&message("m2", &["cy@other.test"], store.now_ms()))
        .await
        .expect("submit");
    let entry = store.lease(10, lease).await.expect("lease").remove(0);
    let rule = Rule {
        select: Selector::parse("domain:other.test").expect("selector"),
        action: Action::Bounce {
            reason: "customer left".into(),
        },
        by: "ops from 127.0.0.1".into(),
        at_ms: store.now_ms(),
    };
    queue.report(&entry, Report::Operator(rule)).await;
    let by_operator = heard(4);
    assert_eq!(by_operator.state, RecipientState::Bounced);
    assert!(matches!(by_operator.cause, Cause::Operator { .. }));
    assert!(!by_operator.senders);
    assert!(by_operator.reason.contains("customer left"));
    assert_eq!(store.queue_len().await.expect("len"), 0);
}
