//! kiln-queue-bench: what a large queue costs in memory. N recipients are
//! queued for a destination whose MX accepts connections and never says a
//! word (a tarpit on 127.0.0.77), so they all stay queued; then one
//! message to a healthy destination (the sink) shows whether new mail
//! still goes out while they wait. Prints a last line
//!
//! `kiln queue_memory queued=<N> rss_mb=<m> peak_rss_mb=<p> enqueue_rps=<r> healthy_s=<t> store=<s>`
//!
//! where `rss_mb` is the daemon's resident memory once the queue is full
//! and egress has been working on it for a while, and `healthy_s` how long
//! the healthy message took from its 250 to the sink.
//!
//! Usage: kiln-queue-bench [--n N] [--store embedded|redis] [--kiln PATH]

mod args;
mod help;
mod load;
mod measure;
mod peers;

use kiln_testkit::client::{SmtpClient, message};
use kiln_testkit::process::Kiln;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Where the dead destination's MX answers (and never says a word).
const TARPIT_IP: &str = "127.0.0.77";
/// Recipients a message (the listener allows as many in the bench).
const PER_MESSAGE: usize = 1000;
/// How long egress works on the full queue before memory is read.
const SETTLE: Duration = Duration::from_secs(20);

/// Accepts connections on `addr` and holds them without a word.
async fn tarpit(addr: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("tarpit address (127.0.0.77 on loopback)");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
}

#[tokio::main]
async fn main() {
    help::or_exit(include_str!("queue.rs"));
    let args = args::parse("kiln-queue-bench", 1_000_000);
    let peers = peers::Peers::start(if args.redis { "redis" } else { "embedded" }).await;
    let port = peers.sink.addr.port();
    tarpit(SocketAddr::new(TARPIT_IP.parse().expect("ip"), port)).await;
    peers.dns.add_mx("dead.test", 10, "mx.dead.test");
    peers
        .dns
        .add_ip("mx.dead.test", TARPIT_IP.parse().expect("ip"));

    let mut opts = peers.options();
    opts.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
    opts.smtp = format!("max_recipients = {PER_MESSAGE}");
    if let Ok(p) = std::env::var("KILN_QUEUE_BENCH_POLICY") {
        opts.policy = p;
    }
    let kiln = tokio::task::block_in_place(|| Kiln::start(&args.kiln, &opts));

    let rcpts: Vec<String> = (0..args.n).map(|i| format!("u{i}@dead.test")).collect();
    let cpu_before = measure::cpu_seconds(kiln.pid());
    let start = Instant::now();
    load::inject(kiln.smtp, rcpts, 8, PER_MESSAGE).await;
    let inject_s = start.elapsed().as_secs_f64();
    let enqueue_rps = args.n as f64 / inject_s;
    eprintln!(
        "queued {} recipients in {inject_s:.1} s ({:.0} µs of CPU a recipient); RSS {} MB",
        args.n,
        (measure::cpu_seconds(kiln.pid()) - cpu_before) * 1e6 / args.n as f64,
        measure::rss_kb(kiln.pid()) / 1024
    );
    tokio::time::sleep(SETTLE).await;
    let rss_mb = measure::rss_kb(kiln.pid()) / 1024;

    // New mail for a healthy destination, while the rest waits.
    let mut c = SmtpClient::connect(kiln.smtp).await.expect("connect");
    c.cmd("EHLO bench.test").await.expect("EHLO");
    // From another sender domain: the queued mail has used up its own's
    // daily quota.
    let body = message("news@healthy.test", "ok@sink.test", "healthy", 1024);
    let r = c
        .send("news@healthy.test", &["ok@sink.test"], &body)
        .await
        .expect("send");
    assert_eq!(r.code, 250, "{r:?}");
    let sent = Instant::now();
    c.quit().await;
    let delivered = peers.sink.wait_count(1, Duration::from_secs(300)).await;
    let healthy_s = sent.elapsed().as_secs_f64();
    if !delivered {
        eprintln!("kiln-queue-bench: the healthy message was not delivered in 300 s");
    }
    let peak_mb = measure::peak_rss_kb(kiln.pid()) / 1024;
    println!(
        "kiln queue_memory queued={} rss_mb={rss_mb} peak_rss_mb={peak_mb} enqueue_rps={enqueue_rps:.0} healthy_s={healthy_s:.1} store={}",
        args.n,
        if args.redis { "redis" } else { "embedded" }
    );
    if !delivered {
        std::process::exit(1);
    }
}
