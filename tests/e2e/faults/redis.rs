//! Redis unreachable when the daemon starts: it says so, keeps trying, and
//! does not serve (systemd is not told it is ready) until Redis answers;
//! then it serves and delivers.

use crate::harness::{binary, peers, queued_id, submit_session, wait_state};
use kiln_testkit::client::message;
use kiln_testkit::process::Kiln;
use kiln_testkit::redis::RedisServer;
use kiln_testkit::sink::Sink;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_is_waited_for_then_served() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), true, true).await;
    let p = peers(crate::harness::Backend::Embedded, &sink).await;
    let port = kiln_testkit::free_port();
    let mut opts = p.opts;
    opts.redis_url = Some(format!("redis://127.0.0.1:{port}/"));
    let mut kiln = tokio::task::block_in_place(|| Kiln::launch(binary(), &opts));

    // The client tries for about 6 s (its own retries) before it says so.
    let log_path = opts.data_dir.join(format!("kiln-{}.log", opts.node_id));
    let said = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("Redis cannot be reached; not serving until it answers")
    };
    assert!(
        crate::harness::wait_until(Duration::from_secs(30), said).await,
        "{}",
        kiln.log_text()
    );
    assert!(
        kiln.running(),
        "it waits, it does not exit:\n{}",
        kiln.log_text()
    );
    assert!(
        std::net::TcpStream::connect(kiln.smtp).is_err(),
        "not serving before its store answers"
    );
    let redis = RedisServer::start_on(port);
    let up = Instant::now();
    let ready = tokio::task::block_in_place(|| kiln.wait_ready(Duration::from_secs(30)));
    assert!(ready, "serving once Redis answers:\n{}", kiln.log_text());
    eprintln!(
        "serving {:.1} s after Redis answered",
        up.elapsed().as_secs_f64()
    );

    let mut c = submit_session(kiln.smtp).await;
    let r = c
        .send(
            "a@shop.test",
            &["ann@dest.test"],
            &message("a@shop.test", "ann@dest.test", "after", 300),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    c.quit().await;
    wait_state(&kiln, &queued_id(&r.text), 0, "delivered", 20).await;
    drop(kiln);
    drop(redis);
}

/// What the injecting clients saw: the subjects acknowledged with a 250,
/// refusals, and when each 250 came.
#[derive(Default)]
struct Injected {
    acked: Vec<(String, Instant)>,
    refused: usize,
    /// Each refusal's reply (code and enhanced code), or how it failed.
    replies: std::collections::BTreeMap<String, usize>,
}

/// Clients submitting one message per session, without pause, until `stop`.
fn keep_injecting(
    addr: std::net::SocketAddr,
    sessions: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (
    std::sync::Arc<std::sync::Mutex<Injected>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    use kiln_testkit::client::SmtpClient;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Injected::default()));
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let tasks = (0..sessions)
        .map(|_| {
            let (seen, next, stop) = (seen.clone(), next.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let subject = format!("r-{}", next.fetch_add(1, Ordering::Relaxed));
                    let body = message("load@shop.test", "sink@dest.test", &subject, 1024);
                    let sent = async {
                        let mut c = SmtpClient::connect(addr).await.ok()?;
                        c.cmd("EHLO load.test").await.ok()?;
                        let r = c
                            .send("load@shop.test", &["sink@dest.test"], &body)
                            .await
                            .ok()?;
                        c.quit().await;
                        Some(r)
                    };
                    let outcome = tokio::time::timeout(Duration::from_secs(10), sent).await;
                    match outcome {
                        Ok(Some(r)) if r.code == 250 => {
                            seen.lock().unwrap().acked.push((subject, Instant::now()))
                        }
                        other => {
                            let reply = match other {
                                Ok(Some(r)) => {
                                    let enhanced = r.text.split_whitespace().next().unwrap_or("");
                                    format!("{} {enhanced}", r.code)
                                }
                                Ok(None) => "connection failed".to_string(),
                                Err(_) => "no answer in 10 s".to_string(),
                            };
                            {
                                let mut seen = seen.lock().unwrap();
                                seen.refused += 1;
                                *seen.replies.entry(reply).or_default() += 1;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .collect();
    (seen, tasks)
}

/// Redis (AOF, `appendfsync always`) killed with `kill -9` while messages
/// are injected and delivered, and started again 3 s later: while it is
/// down submissions are refused with a 4xx, never acknowledged; every
/// acknowledged message is delivered; duplicates are bounded by what was
/// being delivered when it died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_loses_nothing_acknowledged() {
    use crate::store::durability::subjects;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), true, true).await;
    let p = peers(crate::harness::Backend::Embedded, &sink).await;
    let mut redis = RedisServer::durable();
    let mut opts = p.opts;
    opts.redis_url = Some(redis.url());
    crate::store::cluster::relaying_with_short_leases(&mut opts);
    let kiln = tokio::task::block_in_place(|| Kiln::start(binary(), &opts));
    // Deliveries take a while, so some are in flight when Redis dies.
    sink.set_delay("sink@dest.test", Duration::from_millis(50));

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (seen, tasks) = keep_injecting(kiln.smtp, 8, stop.clone());
    // Under load: a few hundred acknowledged, some of them in flight.
    let loaded = || seen.lock().unwrap().acked.len() >= 200;
    assert!(crate::harness::wait_until(Duration::from_secs(30), loaded).await);
    let before = seen.lock().unwrap().acked.len();
    let delivered_before = sink.count();
    tokio::task::block_in_place(|| redis.kill9());
    let killed = Instant::now();
    crate::harness::nothing_happens_for(Duration::from_secs(2), "an acknowledgement without Redis")
        .await;
    let acked_while_down = seen
        .lock()
        .unwrap()
        .acked
        .iter()
        .filter(|(_, at)| *at > killed + Duration::from_millis(500))
        .count();
    tokio::task::block_in_place(|| redis.restart());
    let restarted = Instant::now();
    // Service is back when a message is acknowledged again.
    let back = loop {
        let latest = seen.lock().unwrap().acked.last().map(|(_, at)| *at);
        if let Some(at) = latest.filter(|at| *at > restarted) {
            break at - restarted;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "nothing acknowledged 60 s after Redis came back:\n{}",
            kiln.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Load goes on for a while after Redis is back.
    let again = seen.lock().unwrap().acked.len() + 100;
    let loaded = || seen.lock().unwrap().acked.len() >= again;
    assert!(crate::harness::wait_until(Duration::from_secs(30), loaded).await);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let (acked, refused, replies) = {
        let s = seen.lock().unwrap();
        let acked: Vec<String> = s.acked.iter().map(|(s, _)| s.clone()).collect();
        (acked, s.refused, s.replies.clone())
    };
    // A 5xx would make the client give the message up.
    for reply in replies.keys() {
        assert!(!reply.starts_with('5'), "refused for good: {replies:?}");
    }
    assert!(before > 0, "injecting before the kill");
    assert_eq!(acked_while_down, 0, "acknowledged while Redis was down");

    let all_delivered = || crate::store::durability::received_all(&sink, &acked);
    let waited = Instant::now();
    assert!(
        crate::harness::wait_until(Duration::from_secs(120), all_delivered).await,
        "not every acknowledged message delivered:\n{}",
        kiln.log_text()
    );
    let drained = waited.elapsed().as_secs_f64();
    crate::harness::nothing_happens_for(Duration::from_secs(2), "another copy").await;
    let mut copies: HashMap<String, usize> = HashMap::new();
    for s in subjects(&sink) {
        *copies.entry(s).or_default() += 1;
    }
    let twice: usize = copies.values().map(|n| n - 1).sum();
    eprintln!(
        "{} acknowledged ({before} before the kill, {delivered_before} delivered by then), \
         {refused} refused while Redis was down or starting ({replies:?}); service back {:.2} s after \
         Redis restarted; all delivered {drained:.1} s after injection stopped; {twice} delivered twice",
        acked.len(),
        back.as_secs_f64()
    );
    // At most the attempts in flight when Redis died: one per connection
    // to the site (16 by default).
    assert!(twice <= 16, "{twice} delivered twice");
    drop(kiln);
}
