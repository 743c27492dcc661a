//! Two nodes on one shared store share one queue: one Redis, a Redis
//! Cluster, the master a Sentinel names.

use crate::harness::{Backend, env, second_node};
use crate::store::durability::{inject, subjects};
use kiln_testkit::process::KilnOptions;
use std::collections::HashMap;
use std::time::Duration;

/// Nodes that relay for loopback, whose leases end 3 s after a node dies
/// and whose retries come a second apart.
pub fn relaying_with_short_leases(o: &mut KilnOptions) {
    o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
    o.lease_time_secs = 3;
    o.queue = "retry_schedule = [1]".into();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_queue_and_take_over_a_dead_node_on_one_redis() {
    two_nodes_share_the_queue_and_take_over_a_dead_node(Backend::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_queue_and_take_over_a_dead_node_on_a_redis_cluster() {
    two_nodes_share_the_queue_and_take_over_a_dead_node(Backend::RedisCluster).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_queue_and_take_over_a_dead_node_on_sentinel() {
    two_nodes_share_the_queue_and_take_over_a_dead_node(Backend::Sentinel).await
}

async fn two_nodes_share_the_queue_and_take_over_a_dead_node(backend: Backend) {
    let setup = relaying_with_short_leases;
    let e = env(backend, setup).await;
    let mut b = second_node(&e, setup);

    // 1,000 messages split over both nodes: each delivered exactly once.
    let (ra, rb) = tokio::join!(
        inject(e.kiln.smtp, 500, 10, "a"),
        inject(b.smtp, 500, 10, "b")
    );
    let acked = ra.lock().unwrap().len() + rb.lock().unwrap().len();
    assert_eq!(acked, 1000);
    let all = e.sink.wait_count(1000, Duration::from_secs(60)).await;
    assert!(all, "only {} of 1000 delivered", e.sink.count());
    crate::harness::nothing_happens_for(Duration::from_secs(1), "a second delivery").await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for s in subjects(&e.sink) {
        *seen.entry(s).or_default() += 1;
    }
    assert_eq!(seen.len(), 1000);
    let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "delivered twice: {dupes:?}");

    // Node B leases work and dies with it: node A takes over after expiry.
    e.sink.set_rule("sink@dest.test", "451 4.3.0 Not yet");
    let before = e.sink.count();
    let tried = e.sink.rcpts_seen("sink@dest.test");
    let acked_b = inject(b.smtp, 300, 10, "dead").await;
    let acked_b: Vec<String> = acked_b.lock().unwrap().clone();
    assert_eq!(acked_b.len(), 300);
    // Attempts have started: leases are held.
    let attempted = || e.sink.rcpts_seen("sink@dest.test") > tried;
    assert!(crate::harness::wait_until(Duration::from_secs(10), attempted).await);
    b.kill9();
    e.sink.clear_rule("sink@dest.test");
    let done = e
        .sink
        .wait_count(before + 300, Duration::from_secs(60))
        .await;
    assert!(
        done,
        "node A delivered {} of node B's 300",
        e.sink.count() - before
    );
    let got: std::collections::HashSet<String> = subjects(&e.sink).into_iter().collect();
    for s in &acked_b {
        assert!(got.contains(s), "{s} lost with node B");
    }
}

/// An attempt that outlasts the lease keeps it: the other node does not take
/// the entry over and deliver it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_attempt_keeps_its_lease() {
    for backend in crate::harness::SHARED {
        a_long_attempt_keeps_its_lease_on(backend).await;
    }
}

async fn a_long_attempt_keeps_its_lease_on(backend: Backend) {
    let setup = |o: &mut KilnOptions| {
        o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
        o.lease_time_secs = 2;
    };
    let e = env(backend, setup).await;
    let _b = second_node(&e, setup);

    // The receiver takes three leases' time to answer RCPT. Had the lease
    // lapsed after two seconds, the other node would have begun its own
    // attempt (a second RCPT) while this one waited.
    e.sink.set_delay("slow@dest.test", Duration::from_secs(6));
    let id =
        crate::harness::submit_one(e.kiln.smtp, "a@shop.test", "slow@dest.test", "slow", 512).await;
    crate::harness::wait_state(&e.kiln, &id, 0, "delivered", 30).await;
    assert_eq!(e.sink.rcpts_seen("slow@dest.test"), 1, "attempted twice");
    assert_eq!(e.sink.count(), 1, "delivered more than once");
}
