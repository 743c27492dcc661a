//! The Redis store against a real redis-server of its own.

use super::*;
use kiln_testkit::redis::RedisServer;

async fn node(redis: &RedisServer) -> Arc<RedisStore> {
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    RedisStore::connect(&url, "t", Duration::from_secs(3600), Clock::system())
        .await
        .expect("connect")
}

fn take(key: &str, amount: i64, limit: i64) -> BatchOp {
    BatchOp::Take {
        key: key.into(),
        amount,
        ttl: Duration::from_secs(60),
        limit,
        hold_at_most: MAX_GRANT,
    }
}

async fn counted(redis: &RedisServer, key: &str) -> i64 {
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let mut c = redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let v: Option<i64> = c.get(format!("t:kv:{key}")).await.expect("get");
    v.unwrap_or(0)
}

async fn took(store: &RedisStore, op: BatchOp) -> bool {
    match store.batch(&[op], Duration::ZERO).await.expect("batch")[..] {
        [BatchValue::Bool(b)] => b,
        ref other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_taking_at_once_spend_exactly_the_limit() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    // Both start together and let the other run between takes, so that a
    // busy machine does not let one spend everything before the other
    // begins.
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let spend = |s: Arc<RedisStore>| {
        let start = start.clone();
        async move {
            start.wait().await;
            let mut n = 0;
            while took(&s, take("day", 1, 5000)).await {
                n += 1;
                tokio::task::yield_now().await;
            }
            n
        }
    };
    let (from_a, from_b) = tokio::join!(
        tokio::spawn(spend(a.clone())),
        tokio::spawn(spend(b.clone()))
    );
    let (from_a, from_b) = (from_a.expect("a"), from_b.expect("b"));
    assert_eq!(from_a + from_b, 5000, "a {from_a}, b {from_b}");
    assert!(from_a > 0 && from_b > 0, "a {from_a}, b {from_b}");
    assert_eq!(counted(&redis, "day").await, 5000);
    // Most takes were answered from reserved units, not by Redis.
    assert!(!took(&a, take("day", 1, 5000)).await);
}

#[tokio::test]
async fn near_the_limit_every_unit_is_asked_for() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    for i in 0..5 {
        let store = if i % 2 == 0 { &a } else { &b };
        assert!(took(store, take("rate", 1, 5)).await, "take {i}");
        assert_eq!(counted(&redis, "rate").await, i + 1, "nothing held back");
    }
    assert!(!took(&a, take("rate", 1, 5)).await);
    assert!(!took(&b, take("rate", 1, 5)).await);
    // Nothing is held near a limit, so what is given back is in Redis
    // at once, for any node to take.
    let give = BatchOp::Give {
        key: "rate".into(),
        amount: 2,
    };
    assert!(took(&a, give).await);
    assert_eq!(counted(&redis, "rate").await, 3);
    assert!(took(&b, take("rate", 2, 5)).await);
    assert!(!took(&a, take("other", 6, 5)).await, "more than the limit");
    assert_eq!(
        counted(&redis, "other").await,
        0,
        "a refusal counts nothing"
    );
    assert!(took(&a, take("other", 0, 5)).await, "nothing always fits");
}

/// `batch_local` answers a batch entirely on this node, or does
/// nothing at all and leaves it to `batch`.
#[tokio::test]
async fn a_batch_is_answered_here_whole_or_not_at_all() {
    let redis = RedisServer::start();
    let a = node(&redis).await;
    let age = Duration::from_secs(1);
    let take_here = |key, amount| OpRef::Take {
        key,
        amount,
        ttl: Duration::from_secs(60),
        limit: 4000,
        hold_at_most: MAX_GRANT,
    };
    assert_eq!(
        a.batch_local(&[take_here("k", 1)], "p:", age),
        None,
        "nothing held"
    );
    // Units held ahead for p:k after a few takes through Redis.
    for _ in 0..8 {
        assert!(took(&a, take("p:k", 1, 4000)).await);
    }
    let (_, held) = a.held_ahead();
    assert!(held >= 2, "{held}");
    let in_redis = counted(&redis, "p:k").await;
    // One operation that needs Redis (an unread key, an increment, two
    // takes of one counter): nothing is spent.
    for ops in [
        vec![take_here("k", 1), OpRef::Get("unread")],
        vec![
            take_here("k", 1),
            OpRef::Incr("n", 1, Duration::from_secs(60)),
        ],
        vec![take_here("k", 1), take_here("k", 1)],
        vec![take_here("k", held + 1)],
    ] {
        assert_eq!(a.batch_local(&ops, "p:", age), None, "{ops:?}");
        assert_eq!(a.held_ahead().1, held, "{ops:?} spent nothing");
    }
    // Held units and a read kept a moment ago: answered here, spent.
    a.batch(&[BatchOp::Get("p:seen".into())], age)
        .await
        .expect("read");
    let answered = a.batch_local(&[take_here("k", 2), OpRef::Get("seen")], "p:", age);
    assert_eq!(
        answered,
        Some(vec![BatchValue::Bool(true), BatchValue::Bytes(None)])
    );
    assert_eq!(a.held_ahead().1, held - 2);
    assert_eq!(counted(&redis, "p:k").await, in_redis, "no round trip");
    // Without an age nothing read is answered here.
    assert_eq!(
        a.batch_local(&[OpRef::Get("seen")], "p:", Duration::ZERO),
        None
    );
}

#[tokio::test]
async fn units_not_spent_go_back_when_idle_and_at_shutdown() {
    let redis = RedisServer::start();
    let a = node(&redis).await;
    // A counter new here is counted exactly; as it keeps being used,
    // grants go further ahead.
    assert!(took(&a, take("idle", 1, 4000)).await);
    assert_eq!(counted(&redis, "idle").await, 1, "nothing held at first");
    // 21 takes: grants of 1, 2, 3, 5, 9 and 17 units, 16 left.
    for _ in 1..21 {
        assert!(took(&a, take("idle", 1, 4000)).await);
    }
    let (_, held) = a.held_ahead();
    assert_eq!(held, 16, "a busy counter has units held ahead");
    assert_eq!(counted(&redis, "idle").await, 21 + held);
    let deadline = Instant::now() + IDLE_RETURN + Duration::from_secs(2);
    while counted(&redis, "idle").await != 21 {
        assert!(Instant::now() < deadline, "idle units did not go back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.held_ahead(), (0, 0));

    // `hold` caps what is held, however busy the counter.
    for _ in 0..20 {
        let small = BatchOp::Take {
            key: "small".into(),
            amount: 1,
            ttl: Duration::from_secs(60),
            limit: 1_000_000,
            hold_at_most: 2,
        };
        assert!(took(&a, small).await);
        assert!(a.held_ahead().1 <= 2, "{:?}", a.held_ahead());
    }

    // At a clean stop everything held goes back, a unit given back to
    // what is held too.
    for _ in 0..20 {
        assert!(took(&a, take("busy", 3, 1_000_000)).await);
    }
    let give = BatchOp::Give {
        key: "busy".into(),
        amount: 1,
    };
    assert!(took(&a, give).await);
    a.close().await;
    assert_eq!(counted(&redis, "busy").await, 59, "60 taken, 1 given back");
    assert_eq!(counted(&redis, "small").await, 20);
    assert_eq!(a.held_ahead(), (0, 0));
}

#[tokio::test]
async fn reads_of_bounded_age_see_this_nodes_writes_at_once() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let age = Duration::from_millis(300);
    let member = |m: &str| BatchOp::Contains("blocklist".into(), m.into());
    let read = |s: Arc<RedisStore>, m: &'static str, age: Duration| async move {
        s.batch(&[member(m)], age).await.expect("batch")[0].clone()
    };
    assert_eq!(read(a.clone(), "x@y", age).await, BatchValue::Bool(false));
    b.set_add("blocklist", "x@y", None).await.expect("add");
    // Another node's write: seen exactly at once, within `age` from a
    // copy read before it.
    assert_eq!(
        read(a.clone(), "x@y", Duration::ZERO).await,
        BatchValue::Bool(true)
    );
    assert_eq!(read(a.clone(), "x@y", age).await, BatchValue::Bool(false));
    tokio::time::sleep(age).await;
    assert_eq!(read(a.clone(), "x@y", age).await, BatchValue::Bool(true));
    // This node's own write is seen at once.
    assert_eq!(read(a.clone(), "z@y", age).await, BatchValue::Bool(false));
    a.set_add("blocklist", "z@y", None).await.expect("add");
    assert_eq!(read(a.clone(), "z@y", age).await, BatchValue::Bool(true));
    a.set_remove("blocklist", "z@y").await.expect("remove");
    assert_eq!(read(a.clone(), "z@y", age).await, BatchValue::Bool(false));
    let get = |s: Arc<RedisStore>| async move {
        s.batch(&[BatchOp::Get("k".into())], age)
            .await
            .expect("batch")[0]
            .clone()
    };
    assert_eq!(get(a.clone()).await, BatchValue::Bytes(None));
    a.put("k", b"v", None).await.expect("put");
    assert_eq!(get(a.clone()).await, BatchValue::Bytes(Some(b"v".to_vec())));
    // A top-up leaves this node a copy of the counter as it left it:
    // another writer's change shows only once that copy is too old.
    let topped = a.batch(&[take("n", 1, 4000)], age).await.expect("batch");
    assert_eq!(topped, [BatchValue::Bool(true)]);
    let count = |s: Arc<RedisStore>, age: Duration| async move {
        s.batch(&[BatchOp::Get("n".into())], age)
            .await
            .expect("batch")[0]
            .clone()
    };
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.port))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let _: () = c.set("t:kv:n", 7).await.expect("set");
    assert_eq!(
        count(a.clone(), age).await,
        BatchValue::Bytes(Some(b"1".to_vec()))
    );
    assert_eq!(
        count(a.clone(), Duration::ZERO).await,
        BatchValue::Bytes(Some(b"7".to_vec()))
    );
}

/// Pacing and slots count for every node: two stores on one Redis share
/// one next free send time and one set of slots.
#[tokio::test]
async fn pacing_and_slots_are_shared_by_the_nodes() {
    use crate::store::shaping::Paced;
    let redis = kiln_testkit::redis::RedisServer::start();
    let clock = Clock::test();
    let url = redis.url();
    let connect = || RedisStore::connect(&url, "kiln", Duration::from_secs(600), clock.clone());
    let (a, b) = (
        crate::store::Store::Redis(connect().await.expect("a")),
        crate::store::Store::Redis(connect().await.expect("b")),
    );
    // Ten seconds apart: the test's own time does not matter.
    let Paced::Granted(first) = a.pace("p", 10_000_000, 2, 0).await.expect("pace") else {
        panic!("the first send time is now");
    };
    // b's next is after a's two.
    assert_eq!(
        b.pace("p", 10_000_000, 1, 50_000_000).await.expect("pace"),
        Paced::Granted(first + 20_000_000)
    );
    assert_eq!(
        a.pace("p", 10_000_000, 1, 1_000_000).await.expect("pace"),
        Paced::NotBefore(first + 30_000_000)
    );
    assert!(a.slot_take("c", "a1", 2).await.expect("take"));
    assert!(b.slot_take("c", "b1", 2).await.expect("take"));
    assert!(!b.slot_take("c", "b2", 2).await.expect("take"));
    a.slot_give("c", "a1").await.expect("give");
    assert!(b.slot_take("c", "b2", 2).await.expect("take"));
}

fn message(id: &str, recipients: usize) -> NewMessage {
    let to: Vec<String> = (0..recipients).map(|i| format!("r{i}@dest.test")).collect();
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    crate::queued::test_message(id, &to, crate::clock::system_now_ms())
}

/// Equal parts of the slots get equal numbers of shards: as many shards on
/// each master of a cluster whose masters hold equal ranges. One shard is
/// the layout of a store made before shards (`{prefix}`).
#[test]
fn shard_tags_spread_evenly_over_the_slots() {
    assert_eq!(shard_tags("kiln", 1), vec!["{kiln}".to_string()]);
    let tags = shard_tags("kiln", DEFAULT_CLUSTER_SHARDS);
    assert_eq!(tags.len(), 24);
    for masters in [2u16, 3, 4, 6] {
        let mut per = vec![0; masters as usize];
        for t in &tags {
            let slot = conn::slot_of(t.as_bytes());
            // As `redis-cli --cluster create` splits the slots.
            per[(u32::from(slot) * u32::from(masters) / 16384) as usize] += 1;
        }
        assert!(
            per.iter().all(|n| *n == 24 / masters),
            "{masters} masters: {per:?}"
        );
    }
    // The tags are what Redis hashes: `{...}` first in every key.
    assert!(
        tags.iter()
            .all(|t| t.starts_with("{kiln:q") && t.ends_with('}'))
    );
    assert_eq!(
        conn::slot_of(b"{user1000}.following"),
        conn::slot_of(b"{user1000}.followers")
    );
    // Redis's own example: "123456789" is slot 12739.
    assert_eq!(conn::slot_of(b"123456789"), 12739);
}

/// A store made before shards, and any on one Redis, keeps its queue under
/// `{prefix}`: nothing to migrate.
#[tokio::test]
async fn one_redis_keeps_the_queue_under_one_tag() {
    let redis = RedisServer::start();
    let store = node(&redis).await;
    assert_eq!(store.shard_count(), 1);
    store
        .enqueue(&message("m1", 2), &[])
        .await
        .expect("enqueue");
    let url = redis.url();
    let mut c = redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let ready: u64 = c.zcard("{t}:q:ready").await.expect("zcard");
    assert_eq!(ready, 2);
    let shards: String = c.get("{t}:q:shards").await.expect("get");
    assert_eq!(shards, "1");
}

/// On a Redis Cluster of three masters: the queue spreads over them, every
/// step works with its keys in many slots (a message's entries and status
/// in its shard, counters and sets elsewhere), and reads of the whole
/// queue see every shard.
#[tokio::test]
async fn the_queue_spreads_over_a_clusters_masters() {
    let cluster = kiln_testkit::redis::RedisCluster::start();
    let target = RedisTarget::Cluster(cluster.urls());
    let connect = || {
        RedisStore::connect_to(
            &target,
            "kiln",
            0,
            super::DEFAULT_FAILOVER_TIMEOUT,
            Duration::from_secs(600),
            Clock::system(),
        )
    };
    let (a, b) = (connect().await.expect("a"), connect().await.expect("b"));
    assert_eq!(a.shard_count(), 24);
    // Every message waits for a replica of its master.
    a.set_wait_replicas(1, Duration::from_secs(5));
    let messages = 600;
    for i in 0..messages {
        let also = [
            Write::Put {
                key: format!("job:{i}"),
                value: b"j".to_vec(),
                ttl: None,
            },
            Write::SetAdd {
                set: "bucket".into(),
                member: format!("job:{i}"),
                ttl: None,
            },
        ];
        a.enqueue(&message(&format!("m{i}"), 2), &also)
            .await
            .expect("enqueue");
    }
    assert_eq!(b.queue_len().await.expect("len"), 2 * messages);
    let counts = b.queue_counts().await.expect("counts");
    assert_eq!((counts.due, counts.leased), (2 * messages, 0));
    assert_eq!(
        b.set_members("bucket").await.expect("members").len(),
        messages as usize
    );
    // Keys per master within 25 % of each other.
    let keys = cluster.keys_per_master();
    assert_eq!(keys.len(), 3);
    let (least, most) = (
        keys.iter().map(|(_, n)| *n).min().unwrap_or(0),
        keys.iter().map(|(_, n)| *n).max().unwrap_or(0),
    );
    assert!(
        most as f64 <= least as f64 * 1.25,
        "keys per master: {keys:?}"
    );
    // The console's pages walk every shard.
    let (mut seen, mut cursor) = (0, None);
    loop {
        let page = b.scan_queue(cursor.as_deref(), 100).await.expect("scan");
        seen += page.entries.len();
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, 2 * messages as usize);
    // Two nodes lease everything between them, each entry once, every
    // shard served.
    let lease = Duration::from_secs(60);
    let mut leased = HashSet::new();
    let mut shards = HashSet::new();
    for round in 0..1000 {
        let node = if round % 2 == 0 { &a } else { &b };
        for e in node.lease(7, lease).await.expect("lease") {
            shards.insert(node.shard_of(&e.msg_id));
            assert!(leased.insert(e.key()), "{} leased twice", e.key());
            let status = crate::queued::RecipientStatus {
                recipient: e.recipient.clone(),
                state: crate::queued::RecipientState::Delivered,
                updated_at_ms: 0,
                next_attempt_at_ms: None,
                attempts: Vec::new(),
                reason: None,
            };
            let done = [Write::Put {
                key: format!("event:{}", e.key()),
                value: b"e".to_vec(),
                ttl: None,
            }];
            node.settle(&e, Disposition::Final(status), &done)
                .await
                .expect("settle");
        }
        if leased.len() == 2 * messages as usize {
            break;
        }
    }
    assert_eq!(leased.len(), 2 * messages as usize);
    assert_eq!(shards.len(), 24);
    assert_eq!(a.queue_len().await.expect("len"), 0);
    assert_eq!(a.next_ready_ms().await.expect("next"), None);
    assert_eq!(
        a.get("event:m599/1").await.expect("get"),
        Some(b"e".to_vec())
    );
    // A message delivered to all its recipients leaves its body behind no
    // more; its status stays.
    assert_eq!(a.body("m7").await.expect("body"), None);
    assert_eq!(
        a.status("m7")
            .await
            .expect("status")
            .map(|s| s.recipients.len()),
        Some(2)
    );
    // A batch over many slots, answered in its order.
    let ops: Vec<BatchOp> = (0..20)
        .map(|i| BatchOp::Incr(format!("c{i}"), i, Duration::from_secs(60)))
        .chain((0..20).map(|i| BatchOp::Get(format!("c{i}"))))
        .collect();
    let got = a.batch(&ops, Duration::ZERO).await.expect("batch");
    for i in 0..20 {
        assert_eq!(got[i as usize], BatchValue::Int(i));
        assert_eq!(
            got[20 + i as usize],
            BatchValue::Bytes(Some(i.to_string().into_bytes()))
        );
    }
    let info = a.server_info().await.expect("info");
    assert!(
        info.contains(&("cluster_state".into(), "ok".into())),
        "{info:?}"
    );
    assert_eq!(
        info.iter()
            .filter(|(k, _)| k.starts_with("master "))
            .count(),
        3,
        "{info:?}"
    );
}
