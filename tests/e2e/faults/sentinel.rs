//! Kiln on the master Redis Sentinel names (two replicas), acknowledging
//! a message only once a replica has it too (`store.redis_wait_replicas =
//! 1`): mail queued on the master survives its `kill -9` on the replica the
//! Sentinel promotes, and Kiln follows the failover by itself — it
//! acknowledges and delivers again without a restart. With no replica
//! left, it acknowledges nothing that only the master has.

use crate::harness::{binary, peers, relay, wait_until};
use crate::store::durability::{received_all, subjects};
use kiln_testkit::process::Kiln;
use kiln_testkit::redis::SentinelSet;
use kiln_testkit::sink::Sink;
use std::time::{Duration, Instant};

/// Kiln on the master a Sentinel names (two replicas), acknowledging a
/// message once a replica has it (at most 1 s of waiting), relaying to a
/// sink; the Redis servers, the sink and the DNS server with it.
struct OnSentinel {
    set: SentinelSet,
    sink: Sink,
    kiln: Kiln,
    _peers: crate::harness::Peers,
}

async fn on_sentinel() -> OnSentinel {
    let set = tokio::task::block_in_place(SentinelSet::start);
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), true, true).await;
    let mut peers = peers(crate::harness::Backend::Embedded, &sink).await;
    let opts = &mut peers.opts;
    crate::store::cluster::relaying_with_short_leases(opts);
    // The Sentinels win over this (a master that may move).
    opts.redis_url = Some(set.master.url());
    opts.store = format!(
        "redis_sentinels = [\"{}\"]\nredis_sentinel_master = \"{}\"\n\
         redis_wait_replicas = 1\nredis_wait_timeout_ms = 1000\n",
        set.sentinel_url(),
        SentinelSet::MASTER
    );
    let kiln = tokio::task::block_in_place(|| Kiln::start(binary(), &peers.opts));
    OnSentinel {
        set,
        sink,
        kiln,
        _peers: peers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_is_followed_to_its_replica_and_the_queue_survives() {
    let OnSentinel {
        mut set,
        sink,
        mut kiln,
        _peers,
    } = on_sentinel().await;

    // Delivered through the master the Sentinel names.
    for i in 0..5 {
        let r = relay(kiln.smtp, "sink@dest.test", &format!("before-{i}")).await;
        assert_eq!(r.code, 250, "{r:?}\n{}", kiln.log_text());
    }
    assert!(
        sink.wait_count(5, Duration::from_secs(20)).await,
        "{}",
        kiln.log_text()
    );

    // Held in the queue (the receiver defers them), and on the replica.
    sink.set_rule("sink@dest.test", "451 4.3.0 try again later");
    let mut held = Vec::new();
    for i in 0..10 {
        let subject = format!("held-{i}");
        assert_eq!(relay(kiln.smtp, "sink@dest.test", &subject).await.code, 250);
        held.push(subject);
    }

    let old = set.master.port;
    tokio::task::block_in_place(|| set.master.kill9());
    let killed = Instant::now();
    let promoted = || set.promoted();
    assert!(
        wait_until(Duration::from_secs(30), promoted).await,
        "the Sentinel did not promote the replica"
    );
    eprintln!(
        "replica promoted {:.1} s after the master ({old}) was killed",
        killed.elapsed().as_secs_f64()
    );

    // Kiln acknowledges again, without a restart.
    let again = loop {
        let r = relay(kiln.smtp, "sink@dest.test", "after").await;
        if r.code == 250 {
            break killed.elapsed();
        }
        assert!(r.code / 100 == 4, "refused for good: {r:?}");
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "nothing acknowledged a minute after the failover:\n{}",
            kiln.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "acknowledging again {:.1} s after the master was killed",
        again.as_secs_f64()
    );
    assert!(kiln.running());

    // What was queued on the old master is delivered from the new one.
    sink.clear_rule("sink@dest.test");
    held.push("after".into());
    let all = || received_all(&sink, &held);
    assert!(
        wait_until(Duration::from_secs(60), all).await,
        "queued mail lost in the failover: got {:?}\n{}",
        subjects(&sink),
        kiln.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_replica_nothing_is_acknowledged_that_a_failover_would_lose() {
    let OnSentinel {
        mut set,
        sink,
        kiln,
        _peers,
    } = on_sentinel().await;
    assert_eq!(
        relay(kiln.smtp, "sink@dest.test", "replicated").await.code,
        250
    );

    tokio::task::block_in_place(|| {
        for r in &mut set.replicas {
            r.kill9();
        }
    });
    let asked = Instant::now();
    let r = relay(kiln.smtp, "sink@dest.test", "master only").await;
    let took = asked.elapsed();
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text.starts_with("451 4.3.0"), "{r:?}");
    // Refused after the wait for the replica (1 s), not at once.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // The log is written apart from the reply: looked at until it says so.
    let logged = || {
        kiln.log_text()
            .contains("of the 1 Redis replicas asked for have the write")
    };
    assert!(
        wait_until(Duration::from_secs(5), logged).await,
        "{}",
        kiln.log_text()
    );
    // Refused for now, yet the master took it: it may still be delivered
    // (at least once: the client's retry may make a second copy), never
    // acknowledged while only the master has it.
    assert!(sink.wait_count(1, Duration::from_secs(20)).await);
    crate::harness::nothing_happens_for(Duration::from_secs(1), "a second copy").await;
    let copies = subjects(&sink)
        .iter()
        .filter(|s| *s == "master only")
        .count();
    assert!(copies <= 1, "{copies} copies");
}
