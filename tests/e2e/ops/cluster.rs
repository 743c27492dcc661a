//! `kiln cluster status`: the Kiln nodes on one store by their heartbeats
//! — one that stops cleanly leaves the list at once, one killed drops out
//! when its last heartbeat expires — and what Redis says of itself.

use crate::harness::{Backend, env, second_node, wait_until};
use kiln_testkit::process::Kiln;
use serde_json::Value;
use std::time::{Duration, Instant};

fn status(kiln: &Kiln) -> Value {
    let out = kiln.command(&["cluster", "status"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn node_ids(s: &Value) -> Vec<String> {
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_on_one_store_and_their_server() {
    let e = env(Backend::Embedded, |_| {}).await;
    let s = status(&e.kiln);
    assert_eq!(s["store"], "embedded", "{s}");
    assert_eq!(node_ids(&s), ["node-a"], "{s}");
    assert_eq!(s["nodes"][0]["this"], true, "{s}");
    assert_eq!(s["nodes"][0]["version"], env!("CARGO_PKG_VERSION"), "{s}");
    assert!(s["server"].is_null(), "{s}");
    drop(e);

    let e = env(Backend::Redis, |_| {}).await;
    let mut b = second_node(&e, |_| {});
    let both = || node_ids(&status(&e.kiln)) == ["node-a", "node-b"];
    assert!(wait_until(Duration::from_secs(10), both).await);
    let s = status(&e.kiln);
    assert_eq!(s["server"]["role"], "master", "{s}");
    assert_eq!(s["server"]["connected_slaves"], "0", "{s}");
    assert!(
        s["server"]["redis_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{s}"
    );
    let b_seen = &s["nodes"][1];
    assert_eq!(b_seen["this"], false, "{s}");
    assert!(b_seen["last_heartbeat_s"].as_f64().unwrap() < 6.0, "{s}");
    assert!(b_seen["leases_held"].is_u64(), "{s}");

    // Stopped cleanly: gone at once.
    b.terminate();
    let only_a = || node_ids(&status(&e.kiln)) == ["node-a"];
    assert!(
        wait_until(Duration::from_secs(3), only_a).await,
        "{}",
        status(&e.kiln)
    );

    // Killed: listed until its last heartbeat expires (15 s), then gone.
    b.spawn();
    assert!(wait_until(Duration::from_secs(10), both).await);
    b.kill9();
    let killed = Instant::now();
    assert_eq!(node_ids(&status(&e.kiln)), ["node-a", "node-b"]);
    assert!(
        wait_until(Duration::from_secs(30), only_a).await,
        "{}",
        status(&e.kiln)
    );
    let gone = killed.elapsed();
    assert!(gone <= Duration::from_secs(20), "{gone:?}");
}
