//! kiln-queue-bench: what a large queue costs in memory. N recipients are
//! queued for a destination that takes none of them, so they all stay
//! queued and egress keeps trying; then one message to a healthy
//! destination (the sink) shows whether new mail still goes out while they
//! wait. How the dead destination's MX (on 127.0.0.77) fails is `--mx`:
//!
//! - `tarpit` (the default): accepts connections and never says a word;
//! - `refuse`: nothing listens, every connection is refused at once;
//! - `defer`: greets and answers every RCPT with `451 4.3.0`.
//!
//! Prints a last line
//!
//! `kiln queue_memory queued=<N> mx=<how> per_message=<R> rss_start_mb=<s> rss_mb=<m> growth_per_100k_mb=<g> peak_rss_mb=<p> enqueue_rps=<r> healthy_s=<t> store=<s>`
//!
//! where `rss_start_mb` is the daemon's resident memory before the load,
//! `rss_mb` once the queue is full and egress has been working on it for a
//! while, `growth_per_100k_mb` the difference per 100,000 queued
//! recipients, and `healthy_s` how long the healthy message took from its
//! 250 to the sink.
//!
//! Usage: kiln-queue-bench [--n N] [--store embedded|redis] [--kiln PATH]
//!                         [--mx tarpit|refuse|defer] [--per-message R]
//!
//! `--per-message` is how many recipients each queued message has (1,000
//! unless given).

mod args;
mod help;
mod load;
mod measure;
mod peers;

use kiln_testkit::client::{SmtpClient, message};
use kiln_testkit::process::Kiln;
use kiln_testkit::sink::Sink;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Where the dead destination's MX answers (or is refused).
const DEAD_IP: &str = "127.0.0.77";
/// How long egress works on the full queue before memory is read.
const SETTLE: Duration = Duration::from_secs(20);

/// How the dead destination's MX fails.
#[derive(Clone, Copy, PartialEq)]
enum Mx {
    Tarpit,
    Refuse,
    Defer,
}

impl Mx {
    fn name(self) -> &'static str {
        match self {
            Mx::Tarpit => "tarpit",
            Mx::Refuse => "refuse",
            Mx::Defer => "defer",
        }
    }
}

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
    let args = args::parse_with("kiln-queue-bench", 1_000_000, &["--mx", "--per-message"]);
    let mx = match args.own("--mx").unwrap_or("tarpit") {
        "tarpit" => Mx::Tarpit,
        "refuse" => Mx::Refuse,
        "defer" => Mx::Defer,
        other => {
            eprintln!("kiln-queue-bench: --mx {other}: tarpit, refuse or defer");
            std::process::exit(2)
        }
    };
    let per_message: usize = match args.own("--per-message").unwrap_or("1000").parse() {
        Ok(n) if n > 0 => n,
        _ => {
            eprintln!("kiln-queue-bench: --per-message: a number above 0");
            std::process::exit(2)
        }
    };
    let peers = peers::Peers::start(if args.redis { "redis" } else { "embedded" }).await;
    let port = peers.sink.addr.port();
    let dead = SocketAddr::new(DEAD_IP.parse().expect("ip"), port);
    // Kept until the end: the deferring MX stops when dropped.
    let _deferring = match mx {
        Mx::Tarpit => {
            tarpit(dead).await;
            None
        }
        Mx::Refuse => None,
        Mx::Defer => {
            let sink = Sink::start(dead, false, false).await;
            sink.set_rule("*", "451 4.3.0 try again later");
            Some(sink)
        }
    };
    peers.dns.add_mx("dead.test", 10, "mx.dead.test");
    peers
        .dns
        .add_ip("mx.dead.test", DEAD_IP.parse().expect("ip"));

    let mut opts = peers.options();
    opts.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
    opts.smtp = format!("max_recipients = {}", per_message.max(100));
    if let Ok(p) = std::env::var("KILN_QUEUE_BENCH_POLICY") {
        opts.policy = p;
    }
    let kiln = tokio::task::block_in_place(|| Kiln::start(&args.kiln, &opts));
    let rss_start_mb = measure::rss_kb(kiln.pid()) as f64 / 1024.0;

    let rcpts: Vec<String> = (0..args.n).map(|i| format!("u{i}@dead.test")).collect();
    let cpu_before = measure::cpu_seconds(kiln.pid());
    let start = Instant::now();
    load::inject(kiln.smtp, rcpts, 8, per_message).await;
    let inject_s = start.elapsed().as_secs_f64();
    let enqueue_rps = args.n as f64 / inject_s;
    eprintln!(
        "queued {} recipients in {inject_s:.1} s ({:.0} µs of CPU a recipient); RSS {} MB",
        args.n,
        (measure::cpu_seconds(kiln.pid()) - cpu_before) * 1e6 / args.n as f64,
        measure::rss_kb(kiln.pid()) / 1024
    );
    tokio::time::sleep(SETTLE).await;
    let rss_mb = measure::rss_kb(kiln.pid()) as f64 / 1024.0;
    let growth_per_100k_mb = (rss_mb - rss_start_mb) * 100_000.0 / args.n.max(1) as f64;

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
        "kiln queue_memory queued={} mx={} per_message={per_message} rss_start_mb={rss_start_mb:.0} rss_mb={rss_mb:.0} growth_per_100k_mb={growth_per_100k_mb:.1} peak_rss_mb={peak_mb} enqueue_rps={enqueue_rps:.0} healthy_s={healthy_s:.1} store={}",
        args.n,
        mx.name(),
        if args.redis { "redis" } else { "embedded" }
    );
    if !delivered {
        std::process::exit(1);
    }
}
