//! One of two nodes on Redis killed with `kill -9` while it delivers: the
//! other finishes its work once the dead node's leases end; what was in
//! flight may go twice, nothing is lost.

use crate::harness::{Backend, env, second_node};
use crate::store::durability::{inject, subjects};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_delivery_leaves_its_work_to_the_other() {
    const N: usize = 400;
    let setup = crate::store::cluster::relaying_with_short_leases;
    let e = env(Backend::Redis, setup).await;
    let mut b = second_node(&e, setup);
    // Each RCPT answered after 200 ms: attempts are in flight when B dies.
    e.sink
        .set_delay("sink@dest.test", Duration::from_millis(200));
    let acked: Vec<String> = inject(b.smtp, N, 10, "mid").await.lock().unwrap().clone();
    assert_eq!(acked.len(), N);
    assert!(
        crate::harness::wait_until(Duration::from_secs(30), || e.sink.count() >= 50).await,
        "deliveries under way"
    );
    let at_kill = e.sink.count();
    b.kill9();
    let killed = Instant::now();
    let distinct = || {
        subjects(&e.sink)
            .into_iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    assert!(
        crate::harness::wait_until(Duration::from_secs(120), || distinct() >= N).await,
        "{} of {N} delivered after node B died",
        distinct()
    );
    let finished = killed.elapsed().as_secs_f64();
    crate::harness::nothing_happens_for(Duration::from_secs(2), "another copy").await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for s in subjects(&e.sink) {
        *seen.entry(s).or_default() += 1;
    }
    for s in &acked {
        assert!(seen.contains_key(s), "{s} lost with node B");
    }
    let twice: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "{at_kill} of {N} delivered when node B died; all {N} delivered {finished:.1} s later; {twice} delivered twice"
    );
    // At most what B had in flight: its connections to the site.
    assert!(twice <= 16, "{twice} delivered twice");
}
