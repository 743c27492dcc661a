//! Kiln on a Redis Cluster of three masters, each with a replica, a
//! message acknowledged only once its master's replica has it
//! (`store.redis_wait_replicas = 1`): a master `kill -9`ed while two Kiln
//! nodes take mail (SMTP, and SendEmail through Tencent's SDK) and
//! deliver. Its replica is promoted; mail whose shard
//! was on it waits (or is refused for now) until then, the rest flows on;
//! nothing acknowledged is lost, copies delivered twice are few and
//! counted. docs/reliability.md has the figures.

use crate::harness::{Backend, binary, peers, relay, wait_until};
use crate::store::durability::{received_all, subjects};
use kiln_testkit::process::{Kiln, KilnOptions};
use kiln_testkit::sink::Sink;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one sender saw: subjects acknowledged, refusals for now, and the
/// longest it waited for a 250 from the kill on.
#[derive(Default)]
struct Sent {
    acked: Vec<String>,
    refused: usize,
    longest_wait: Duration,
}

/// Sends one message after another to `smtp` until `stop`, each with a
/// subject of its own.
async fn keep_sending(
    smtp: std::net::SocketAddr,
    name: &'static str,
    stop: Arc<Mutex<bool>>,
    killed: Arc<Mutex<Option<Instant>>>,
) -> Sent {
    let mut sent = Sent::default();
    let mut waiting_since = Instant::now();
    for i in 0.. {
        if *stop.lock().unwrap() {
            break;
        }
        let subject = format!("{name}-{i}");
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            relay(smtp, "sink@dest.test", &subject),
        )
        .await;
        match r {
            Ok(r) if r.code == 250 => {
                if killed.lock().unwrap().is_some() {
                    sent.longest_wait = sent.longest_wait.max(waiting_since.elapsed());
                }
                sent.acked.push(subject);
                waiting_since = Instant::now();
            }
            Ok(r) => {
                assert_eq!(r.code / 100, 4, "refused for good: {r:?}");
                sent.refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => panic!("{name}: no answer in a minute"),
        }
    }
    sent
}

/// Sends one SendEmail after another through the SDK until `stop`, each
/// with a subject of its own: a MessageId is an acknowledgement, an
/// internal error or "service not available" a refusal for now; anything
/// else fails the test.
async fn keep_calling_the_api(
    mut sdk: crate::clients::Sdk,
    who: crate::clients::Creds,
    template: i64,
    stop: Arc<Mutex<bool>>,
    killed: Arc<Mutex<Option<Instant>>>,
) -> Sent {
    let mut sent = Sent::default();
    let mut waiting_since = Instant::now();
    for i in 0.. {
        if *stop.lock().unwrap() {
            break;
        }
        let subject = format!("api-{i}");
        let mut params = crate::clients::send_params("mail.acme.test", template, "sink@dest.test");
        params["Subject"] = subject.clone().into();
        let r = sdk.call(&who, "SendEmail", params).await;
        if r["ok"] == true {
            if killed.lock().unwrap().is_some() {
                sent.longest_wait = sent.longest_wait.max(waiting_since.elapsed());
            }
            sent.acked.push(subject);
            waiting_since = Instant::now();
        } else {
            let code = r["code"].as_str().unwrap_or_default();
            // The store, or the policy reading it, unavailable for now.
            assert!(
                code.starts_with("InternalError") || code == "FailedOperation.ServiceNotAvailable",
                "refused for good: {r}"
            );
            sent.refused += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    sent
}

/// Two Kiln nodes on a fresh cluster, each message acknowledged once its
/// master's replica has it; the peers (the cluster among them) with them.
async fn two_nodes_on_a_cluster(sink: &Sink) -> (crate::harness::Peers, Kiln, Kiln) {
    let mut p = peers(Backend::RedisCluster, sink).await;
    let tune = |o: &mut KilnOptions| {
        crate::store::cluster::relaying_with_short_leases(o);
        o.store
            .push_str("redis_wait_replicas = 1\nredis_wait_timeout_ms = 2000\n");
    };
    tune(&mut p.opts);
    let a = tokio::task::block_in_place(|| Kiln::start(binary(), &p.opts));
    let mut opts_b = KilnOptions::new(
        &p.dir.path().join("node-b"),
        &p.dns.nameserver(),
        sink.addr.port(),
    );
    p.shared.configure(None, &mut opts_b);
    tune(&mut opts_b);
    opts_b.node_id = "node-b".into();
    let b = tokio::task::block_in_place(|| Kiln::start(binary(), &opts_b));
    (p, a, b)
}

/// Everything in `acked` delivered (a minute at most), and how many were
/// delivered twice; on failure, the queue as node `a` sees it.
async fn all_delivered(sink: &Sink, acked: &[String], a: &Kiln) -> usize {
    let all = || received_all(sink, acked);
    let ok = wait_until(Duration::from_secs(60), all).await;
    if !ok {
        for args in [
            &["queue", "list", "--limit", "50"][..],
            &["queue", "summary"],
            &["cluster", "status"],
        ] {
            eprintln!(
                "kiln {args:?}: {}",
                String::from_utf8_lossy(&a.command(args).stdout)
            );
        }
    }
    assert!(
        ok,
        "acknowledged and lost: {:?}",
        acked
            .iter()
            .filter(|s| !subjects(sink).contains(s))
            .collect::<Vec<_>>(),
    );
    crate::harness::nothing_happens_for(Duration::from_secs(2), "a late second copy").await;
    let mut copies: HashMap<String, usize> = HashMap::new();
    for s in subjects(sink) {
        *copies.entry(s).or_default() += 1;
    }
    copies.values().filter(|n| **n > 1).count()
}

/// Stops the senders; what they sent between them.
async fn stop_senders(stop: &Mutex<bool>, senders: Vec<tokio::task::JoinHandle<Sent>>) -> Sent {
    *stop.lock().unwrap() = true;
    let mut all = Sent::default();
    for s in senders {
        let s = s.await.expect("sender");
        all.acked.extend(s.acked);
        all.refused += s.refused;
        all.longest_wait = all.longest_wait.max(s.longest_wait);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_loses_nothing_acknowledged() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), true, true).await;
    let (mut p, mut a, mut b) = two_nodes_on_a_cluster(&sink).await;

    let stop = Arc::new(Mutex::new(false));
    let killed: Arc<Mutex<Option<Instant>>> = Arc::default();
    // An account with a verified sender domain and a template, for the
    // SDK's calls to node b.
    let mut sdk = crate::clients::Sdk::start(b.http).await;
    let out = a.command(&["account", "create", "acme"]);
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("account");
    let acme = crate::clients::Creds {
        id: created["SecretId"].as_str().unwrap().to_string(),
        key: created["SecretKey"].as_str().unwrap().to_string(),
    };
    crate::clients::verified_sender_in(&p.dns, &mut sdk, &acme, "mail.acme.test", 0).await;
    let template = crate::clients::approved_template(&mut sdk, &acme).await;
    let senders = [
        tokio::spawn(keep_sending(a.smtp, "a", stop.clone(), killed.clone())),
        tokio::spawn(keep_sending(b.smtp, "b", stop.clone(), killed.clone())),
        tokio::spawn(keep_calling_the_api(
            sdk,
            acme,
            template,
            stop.clone(),
            killed.clone(),
        )),
    ];
    tokio::time::sleep(Duration::from_secs(3)).await;

    let cluster = p.shared.cluster.as_mut().expect("a cluster");
    let master = cluster.masters()[0];
    tokio::task::block_in_place(|| cluster.node(master).kill9());
    *killed.lock().unwrap() = Some(Instant::now());
    let at = Instant::now();
    let promoted = || {
        let masters = cluster.masters();
        masters.len() == 3 && !masters.contains(&master)
    };
    assert!(
        wait_until(Duration::from_secs(30), promoted).await,
        "no replica promoted"
    );
    let promoted_after = at.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let Sent {
        acked,
        refused,
        longest_wait: longest,
    } = stop_senders(&stop, senders.into()).await;
    let by_api = acked.iter().filter(|s| s.starts_with("api-")).count();
    assert!(a.running() && b.running(), "a node exited");
    // Each node saw the failover, and said so once.
    for node in [&a, &b] {
        let failovers = crate::harness::metric_of(node, "kiln_store_failovers_total", "").await;
        assert!(failovers >= 1.0, "{failovers} failovers counted");
        let warned = node
            .log_text()
            .matches("the Redis Cluster's masters changed")
            .count();
        assert!(
            (1..=2).contains(&warned),
            "warned {warned} times:\n{}",
            node.log_text()
        );
    }
    let twice = all_delivered(&sink, &acked, &a).await;
    eprintln!(
        "master {master} killed: replica promoted after {:.1} s; {} acknowledged ({by_api} by the API), \
         0 lost; {refused} refused for now; longest wait for an acknowledgement {:.1} s; {twice} delivered twice",
        promoted_after.as_secs_f64(),
        acked.len(),
        longest.as_secs_f64()
    );
    assert!(acked.len() >= 20, "only {} acknowledged", acked.len());
    assert!(by_api >= 5, "only {by_api} acknowledged by the API");
    // At least once: a copy whose outcome the dead master took with it is
    // sent again, never many.
    assert!(
        twice * 20 <= acked.len(),
        "{twice} of {} delivered twice",
        acked.len()
    );
}

/// A third of a master's slots moved to another (`redis-cli --cluster
/// reshard`, keys and all) while two nodes take mail: the client follows
/// `MOVED` and `ASK`, a script whose keys are half moved (`TRYAGAIN`) is
/// tried again; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_moved_under_load_lose_nothing() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), true, true).await;
    let (p, mut a, mut b) = two_nodes_on_a_cluster(&sink).await;
    let stop = Arc::new(Mutex::new(false));
    let none: Arc<Mutex<Option<Instant>>> = Arc::default();
    let senders = vec![
        tokio::spawn(keep_sending(a.smtp, "a", stop.clone(), none.clone())),
        tokio::spawn(keep_sending(b.smtp, "b", stop.clone(), none.clone())),
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cluster = p.shared.cluster.as_ref().expect("a cluster");
    let masters = cluster.masters();
    let (from, to) = (masters[0], masters[1]);
    let before = cluster.keys_per_master();
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| cluster.reshard(from, to, 2000));
    let took = started.elapsed();
    assert!(out.contains("Moving slot"), "{out}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = stop_senders(&stop, senders).await;
    assert!(a.running() && b.running(), "a node exited");
    let twice = all_delivered(&sink, &sent.acked, &a).await;
    eprintln!(
        "2,000 slots moved from {from} to {to} in {:.1} s (keys per master before {before:?}, after {:?}); \
         {} acknowledged, 0 lost; {} refused for now; {twice} delivered twice",
        took.as_secs_f64(),
        cluster.keys_per_master(),
        sent.acked.len(),
        sent.refused
    );
    assert!(
        sent.acked.len() >= 20,
        "only {} acknowledged",
        sent.acked.len()
    );
    assert!(twice * 20 <= sent.acked.len(), "{twice} delivered twice");
}

/// A cluster where no master serves one slot, as an operator may leave it
/// mid-repair: the daemon says so, naming the state and the slots, and
/// waits; it serves once the slot is assigned again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_missing_a_slot_is_waited_for_and_named() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), true, true).await;
    let mut p = peers(Backend::RedisCluster, &sink).await;
    crate::store::cluster::relaying_with_short_leases(&mut p.opts);
    let cluster = p.shared.cluster.as_ref().expect("a cluster");
    let owner = cluster.owner_of(100).expect("the owner of slot 100");
    let removed = kiln_testkit::redis::redis_cli_at(owner, &["CLUSTER", "DELSLOTS", "100"]);
    assert!(removed.contains("OK"), "{removed}");
    let mut kiln = tokio::task::block_in_place(|| Kiln::launch(binary(), &p.opts));
    let said = || {
        kiln.log_text()
            .contains("the Redis Cluster is down: cluster_state:fail")
    };
    assert!(
        wait_until(Duration::from_secs(30), said).await,
        "{}",
        kiln.log_text()
    );
    let log = kiln.log_text();
    assert!(log.contains("16383 of 16384 slots assigned"), "{log}");
    assert!(log.contains("store.redis_cluster = "), "{log}");
    assert!(kiln.running(), "it waits, it does not exit:\n{log}");
    assert!(
        std::net::TcpStream::connect(kiln.smtp).is_err(),
        "not serving"
    );

    kiln_testkit::redis::redis_cli_at(owner, &["CLUSTER", "ADDSLOTS", "100"]);
    let back = Instant::now();
    let ready = tokio::task::block_in_place(|| kiln.wait_ready(Duration::from_secs(30)));
    assert!(
        ready,
        "serving once every slot is served:\n{}",
        kiln.log_text()
    );
    eprintln!(
        "serving {:.1} s after the slot was assigned again",
        back.elapsed().as_secs_f64()
    );
    let r = relay(kiln.smtp, "sink@dest.test", "whole again").await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(sink.wait_count(1, Duration::from_secs(20)).await);
}
