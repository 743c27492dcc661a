//! `kill -9` during injection loses no message that got a 250.

use crate::harness::{BOTH, env};
use kiln_testkit::client::{SmtpClient, message};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Injects `n` messages over `sessions` connections (relay allowed from
/// loopback on this listener); returns the subjects that got a 250.
pub async fn inject(
    addr: std::net::SocketAddr,
    n: usize,
    sessions: usize,
    tag: &str,
) -> Arc<Mutex<Vec<String>>> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let (acked, next, tag) = (acked.clone(), next.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let subject = format!("{tag}-{i}");
                let Ok(mut c) = SmtpClient::connect(addr).await else {
                    return;
                };
                if c.cmd("EHLO load.test").await.is_err() {
                    return;
                }
                let body = message("load@shop.test", "sink@dest.test", &subject, 2048);
                match c.send("load@shop.test", &["sink@dest.test"], &body).await {
                    Ok(r) if r.code == 250 => acked.lock().unwrap().push(subject),
                    Ok(_) => {}
                    Err(_) => return,
                }
                c.quit().await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    acked
}

/// Whether the sink has received every one of `subjects`.
pub fn received_all(sink: &kiln_testkit::sink::Sink, wanted: &[String]) -> bool {
    let got: std::collections::HashSet<String> = subjects(sink).into_iter().collect();
    wanted.iter().all(|s| got.contains(s))
}

pub fn subjects(sink: &kiln_testkit::sink::Sink) -> Vec<String> {
    sink.messages()
        .iter()
        .filter_map(|m| {
            String::from_utf8_lossy(&m.data)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(|s| s.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_injection_loses_nothing_acknowledged() {
    for backend in BOTH {
        let mut e = env(backend, |o| {
            o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
            o.queue = "retry_schedule = [1]".into();
        })
        .await;
        let addr = e.kiln.smtp;
        let injection = tokio::spawn(inject(addr, 1000, 10, "k9"));
        // Let part of the load through, then kill -9.
        let sink = e.sink.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while sink.count() < 200 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        e.kiln.kill9();
        let acked = injection.await.unwrap();
        let acked: Vec<String> = acked.lock().unwrap().clone();
        assert!(
            acked.len() >= 200 && acked.len() < 1000,
            "{backend:?}: kill landed at {}",
            acked.len()
        );

        tokio::task::block_in_place(|| e.kiln.spawn());
        // Finish the injection on the restarted daemon.
        let rest = inject(addr, 200, 10, "after").await;
        let rest: Vec<String> = rest.lock().unwrap().clone();
        assert_eq!(rest.len(), 200);

        let wanted: HashSet<String> = acked.iter().chain(rest.iter()).cloned().collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let got: HashSet<String> = subjects(&e.sink).into_iter().collect();
            let missing: Vec<&String> = wanted.difference(&got).collect();
            if missing.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let log = e.kiln.log_text();
                panic!(
                    "{backend:?}: {} acknowledged messages never delivered, e.g. {:?}\nlog:\n{}",
                    missing.len(),
                    &missing[..missing.len().min(5)],
                    &log[log.len().saturating_sub(6000)..]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if matches!(backend, crate::harness::Backend::Embedded) {
            // Under steady load the kill always lands between checkpoints, so
            // the messages recovered above came back through the log replay.
            assert!(
                e.kiln.log_text().contains("replaying the write-ahead log"),
                "the restart did not replay the write-ahead log"
            );
        }
    }
}
