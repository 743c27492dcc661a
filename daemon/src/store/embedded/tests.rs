//! Writes of the embedded store: read at once once acknowledged, and
//! durable across a restart.

use super::*;
use crate::queued::{RecipientState, RecipientStatus};

fn message(id: &str) -> NewMessage {
    crate::queued::test_message(id, &["ann@dest.test"], crate::clock::system_now_ms())
}

/// Reads come from the table as of the writer's last commit: a write
/// is visible to the next read once it has been acknowledged, however
/// many commits happen meanwhile, and never before.
#[tokio::test]
async fn an_acknowledged_write_is_read_at_once() {
    // Also by reads that accept kept answers: a commit drops those it
    // changed before it is acknowledged.
    for age in [Duration::ZERO, Duration::from_secs(60)] {
        acknowledged_writes_are_read_at_once(age).await;
    }
}

async fn acknowledged_writes_are_read_at_once(age: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(
        &dir.path().join("kiln.redb"),
        Duration::from_secs(600),
        Clock::system(),
    )
    .expect("store");
    let get = |key: &str| BatchOp::Get(key.to_string());
    let contains = |m: &str| BatchOp::Contains("block".into(), m.to_string());
    let read = || store.batch(&[get("k"), contains("a")], age).expect("batch");
    assert_eq!(read(), [BatchValue::Bytes(None), BatchValue::Bool(false)]);
    for round in 0..50u32 {
        let value = round.to_string().into_bytes();
        store.put("k", &value, None).await.expect("put");
        store.set_add("block", "a", None).await.expect("add");
        assert_eq!(
            read(),
            [
                BatchValue::Bytes(Some(value.clone())),
                BatchValue::Bool(true)
            ],
            "round {round}, age {age:?}"
        );
        assert_eq!(store.get("k").await.expect("get"), Some(value));
        assert!(store.set_remove("block", "a").await.expect("remove"));
        assert!(store.delete("k").await.expect("delete"));
        assert_eq!(
            read(),
            [BatchValue::Bytes(None), BatchValue::Bool(false)],
            "round {round}, age {age:?}"
        );
    }
    store.close();
}

/// An outcome and the writes that go with it are on disk together,
/// and a later write takes keys and set members away in one commit.
#[tokio::test]
async fn settle_carries_its_writes_and_they_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kiln.redb");
    let ttl = Duration::from_secs(600);
    let also = [
        Write::Put {
            key: "callback:e1".into(),
            value: b"{job}".to_vec(),
            ttl: Some(ttl),
        },
        Write::SetAdd {
            set: "due:1".into(),
            member: "e1".into(),
            ttl: Some(ttl),
        },
    ];
    {
        let store = EmbeddedStore::open(&path, ttl, Clock::system()).expect("open");
        store.enqueue(&message("m1"), &[]).await.expect("enqueue");
        let entry = store.lease(10).await.expect("lease").remove(0);
        let status = RecipientStatus {
            recipient: entry.recipient.clone(),
            state: RecipientState::Delivered,
            updated_at_ms: crate::clock::system_now_ms(),
            next_attempt_at_ms: None,
            attempts: Vec::new(),
            reason: None,
        };
        store
            .settle(&entry, Disposition::Final(status), &also)
            .await
            .expect("settle");
        store.close();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let store = EmbeddedStore::open(&path, ttl, Clock::system()).expect("reopen");
    let status = store.status("m1").await.expect("status").expect("m1");
    assert_eq!(status.recipients[0].state, RecipientState::Delivered);
    assert_eq!(
        store.get("callback:e1").await.expect("get"),
        Some(b"{job}".to_vec())
    );
    assert_eq!(store.set_members("due:1").await.expect("members"), ["e1"]);
    assert_eq!(store.queue_len(), 0);

    store
        .write(&[
            Write::Delete("callback:e1".into()),
            Write::SetRemove {
                set: "due:1".into(),
                member: "e1".into(),
            },
        ])
        .await
        .expect("write");
    assert_eq!(store.get("callback:e1").await.expect("get"), None);
    assert!(
        store
            .set_members("due:1")
            .await
            .expect("members")
            .is_empty()
    );
}

/// Rows the expiry index holds for status records.
fn status_index_rows(store: &EmbeddedStore) -> usize {
    let read = store.db.begin_read().expect("read");
    let table = read.open_table(EXPIRES).expect("expires");
    table
        .iter()
        .expect("iter")
        .filter(|r| r.as_ref().is_ok_and(|(k, _)| k.value()[8] == TAG_STATUS))
        .count()
}

/// A message's status records leave with it after the retention: the
/// message's own record and its recipients' together, under one row of
/// the expiry index (not one per record and rewrite), and a recipient's
/// record rewritten later at its own later time.
#[tokio::test]
async fn status_records_expire_with_their_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::test();
    let retention = Duration::from_secs(3600);
    let store =
        EmbeddedStore::open(&dir.path().join("kiln.redb"), retention, clock.clone()).expect("open");
    let now = clock.now_ms();
    let msg = crate::queued::test_message("m1", &["a@d.test", "b@d.test", "c@d.test"], now);
    store.enqueue(&msg, &[]).await.expect("enqueue");
    assert_eq!(status_index_rows(&store), 1, "one row for the message");
    let entries = store.lease(10).await.expect("lease");
    assert_eq!(entries.len(), 3);
    let status = |e: &QueueEntry| RecipientStatus {
        recipient: e.recipient.clone(),
        state: RecipientState::Delivered,
        updated_at_ms: clock.now_ms(),
        next_attempt_at_ms: None,
        attempts: Vec::new(),
        reason: None,
    };
    store
        .settle(&entries[0], Disposition::Final(status(&entries[0])), &[])
        .await
        .expect("settle");
    // Half the retention later the others settle: their records outlive
    // the message's.
    clock.advance(retention / 2).expect("test clock");
    for e in &entries[1..] {
        store
            .settle(e, Disposition::Final(status(e)), &[])
            .await
            .expect("settle");
    }
    assert_eq!(status_index_rows(&store), 1, "rewrites add no rows");
    let sweep = || async { store.submit(Op::Sweep).await.expect("sweep") };

    clock
        .advance(retention / 2 + Duration::from_secs(1))
        .expect("test clock");
    sweep().await;
    assert!(store.status("m1").await.expect("status").is_none());
    let left = |store: &EmbeddedStore| {
        let read = store.db.begin_read().expect("read");
        let table = read.open_table(STATUS).expect("status");
        table
            .range("m1/".."m10")
            .expect("range")
            .map(|r| r.expect("row").0.value().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(left(&store), ["m1/1", "m1/2"], "the later records stay");
    assert_eq!(status_index_rows(&store), 1, "due again when they expire");

    clock.advance(retention / 2).expect("test clock");
    sweep().await;
    assert!(left(&store).is_empty());
    assert_eq!(status_index_rows(&store), 0);
}

/// A recipient's record written after its message's record has gone (a
/// delivery report arriving after the retention) still expires.
#[tokio::test]
async fn a_record_outliving_its_message_still_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::test();
    let retention = Duration::from_secs(3600);
    let store =
        EmbeddedStore::open(&dir.path().join("kiln.redb"), retention, clock.clone()).expect("open");
    let status = RecipientStatus {
        recipient: "a@d.test".into(),
        state: RecipientState::Bounced,
        updated_at_ms: clock.now_ms(),
        next_attempt_at_ms: None,
        attempts: Vec::new(),
        reason: None,
    };
    store
        .record_status("gone", 0, &status, &[])
        .await
        .expect("record");
    assert_eq!(status_index_rows(&store), 1);
    clock
        .advance(retention + Duration::from_secs(1))
        .expect("test clock");
    store.submit(Op::Sweep).await.expect("sweep");
    let read = store.db.begin_read().expect("read");
    let table = read.open_table(STATUS).expect("status");
    assert!(table.get("gone/0").expect("get").is_none());
}
