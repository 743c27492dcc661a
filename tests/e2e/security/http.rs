//! The HTTP listener held open: headers trickled, bodies stalled, bodies a
//! stranger declares huge, more connections than one client may have.

use crate::clients::{Creds, create_account, signed_headers};
use crate::harness::{Backend, Env, env};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The daemon's resident memory, in MB.
fn rss_mb(e: &Env) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", e.kiln.pid().unwrap())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap()
        / 1024
}

/// Reads until the server closes (or `limit` passes); what it said and when
/// it closed.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&got).into(),
                    Some(started.elapsed()),
                );
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), None),
        }
    }
}

/// The head of a signed SendEmail request whose body is `len` bytes, of
/// which `body` is the start.
fn signed_head(e: &Env, who: &Creds, body: &str, len: usize) -> String {
    let mut head = "POST / HTTP/1.1\r\n".to_string();
    let now = kiln::clock::system_now_ms() / 1000;
    for (name, value) in signed_headers(e.kiln.http, who, "SendEmail", body, now) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {len}\r\n\r\n"));
    head
}

/// Headers trickled a byte a second are cut at `http.header_timeout`; an
/// account's body stalled half-way is refused at its pace
/// (`http.body_rate_grace`, `http.min_body_rate`); a stranger's 40 bodies
/// of 5.9 MB, each short of its last byte, are never kept (memory stays
/// flat, a wrong SecretId is refused from the headers); a client past
/// `http.max_connections_per_ip` gets `503`; `/healthz` answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_cannot_be_held_open() {
    let e = env(Backend::Embedded, |o| {
        o.http = "header_timeout = 2\nbody_rate_grace = 2\nmin_body_rate = 4096\nbody_timeout = 20\nmax_connections_per_ip = 48\n".into();
    })
    .await;
    let acme = create_account(&e, "acme");

    // Incomplete headers, a byte a second.
    let mut slow = TcpStream::connect(e.kiln.http).await.unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: kiln\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if started.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
        until_closed(&mut slow, Duration::from_secs(5)).await;
        started.elapsed()
    });

    // An account's body, 1 KB of a declared 100 KB, then nothing.
    let mut stalled = TcpStream::connect(e.kiln.http).await.unwrap();
    let body = "{\"FromEmailAddress\": \"a@b.test\"".to_string() + &" ".repeat(1000);
    stalled
        .write_all(signed_head(&e, &acme, &body, 100_000).as_bytes())
        .await
        .unwrap();
    stalled.write_all(body.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (said, closed) = until_closed(&mut stalled, Duration::from_secs(15)).await;
    assert!(said.contains("came too slowly"), "{said}");
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(6)),
        "{closed:?} after {:?}",
        started.elapsed()
    );

    // A stranger: 40 bodies of 5.9 MB with a SecretId that does not exist.
    let before = rss_mb(&e);
    let stranger = Creds {
        id: "AKIDnobody".into(),
        key: "nothing".into(),
    };
    let mut held = Vec::new();
    for _ in 0..40 {
        let head = signed_head(&e, &stranger, "", 5_900_000);
        let http = e.kiln.http;
        held.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(http).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent + chunk.len() < 5_900_000 - 1 {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            let _ = s.write_all(&vec![b' '; 5_900_000 - 1 - sent]).await;
            s
        }));
    }
    let mut sockets = Vec::new();
    for h in held {
        sockets.push(h.await.unwrap());
    }
    let health = Instant::now();
    let r = reqwest::get(format!("http://{}/healthz", e.kiln.http))
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(
        health.elapsed() < Duration::from_secs(1),
        "{:?}",
        health.elapsed()
    );
    let after = rss_mb(&e);
    eprintln!("RSS with 40 strangers' 5.9 MB bodies held: {before} MB before, {after} MB after");
    assert!(
        after < before + 60,
        "RSS {before} MB before, {after} MB with 40 bodies held"
    );
    for s in &mut sockets {
        let (said, _) = until_closed(s, Duration::from_millis(200)).await;
        assert!(
            said.is_empty() || said.contains("SecretIdNotFound"),
            "{said}"
        );
    }

    // One client, more connections than it may hold.
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        let mut s = TcpStream::connect(e.kiln.http).await.unwrap();
        let (said, closed) = until_closed(&mut s, Duration::from_millis(100)).await;
        if closed.is_some() && said.starts_with("HTTP/1.1 503") {
            refused += 1;
        } else {
            open.push(s);
        }
    }
    assert!(
        refused >= 10,
        "{refused} refused of 60, with {} already held",
        sockets.len()
    );
    drop(open);
    drop(sockets);

    let took = trickle.await.unwrap();
    assert!(
        took < Duration::from_secs(5),
        "trickled headers held {took:?}"
    );
}
