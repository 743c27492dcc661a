//! Traffic shaping under load: N messages (100,000 by default) to five
//! simulated mailbox providers with different limits, sent from two source
//! addresses. Each provider is a receiver on its own loopback address that
//! counts, per sending address, connections open at once, messages per
//! connection, new connections and messages per second and minute, and
//! answers 421 to (and counts) anything over its limits. Prints
//!
//! `kiln shaping efficiency=<e> violations=<v> drain_s=<t> bound_s=<b> peak_rss_mb=<m> n=<N> store=<s>`
//!
//! where `bound_s` is the shortest drain the providers' limits allow (the
//! slowest provider's share of the mail at its rate, from both sources),
//! `drain_s` the time from the first message queued to the last one taken,
//! and `efficiency = bound_s / drain_s`.
//!
//! Kiln runs on the first core, the receivers and the load on the second
//! (as on separate hosts: a receiver starved of CPU by the sender would
//! stamp messages late and count bursts that never happened).
//!
//! Usage: kiln-shaping-bench [--n N] [--store embedded|redis] [--kiln PATH]

mod args;
mod help;
mod load;
mod measure;
mod peers;

use kiln_testkit::process::Kiln;
use kiln_testkit::provider::{Limits, Provider};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SOURCES: [&str; 2] = ["127.0.0.5", "127.0.0.6"];
/// Recipient domains each provider hosts.
const DOMAINS_PER_PROVIDER: usize = 20;
/// Recipients per injected message (the SMTP listener's default maximum).
const RECIPIENTS_PER_MESSAGE: usize = 50;

/// A simulated provider: Kiln's name for it (as in providers.toml), its
/// MX host (under the provider's real suffix), its address and limits.
struct Spec {
    name: &'static str,
    mx: &'static str,
    ip: &'static str,
    limits: Limits,
}

const fn limits(
    connections: usize,
    per_connection: usize,
    per_second: Option<usize>,
    per_minute: Option<usize>,
    new_per_minute: Option<usize>,
) -> Limits {
    Limits {
        connections: Some(connections),
        messages_per_connection: Some(per_connection),
        per_second,
        per_minute,
        new_connections_per_minute: new_per_minute,
    }
}

const PROVIDERS: [Spec; 5] = [
    Spec {
        name: "gmail",
        mx: "gmail-smtp-in.l.google.com",
        ip: "127.0.0.51",
        limits: limits(4, 100, Some(150), None, Some(600)),
    },
    Spec {
        name: "microsoft",
        mx: "bench-com.mail.protection.outlook.com",
        ip: "127.0.0.52",
        limits: limits(3, 50, Some(120), None, Some(600)),
    },
    Spec {
        name: "yahoo",
        mx: "mta5.am0.yahoodns.net",
        ip: "127.0.0.53",
        limits: limits(2, 50, None, Some(6000), Some(300)),
    },
    Spec {
        name: "qq",
        mx: "mx1.qq.com",
        ip: "127.0.0.54",
        limits: limits(2, 20, Some(80), None, Some(600)),
    },
    Spec {
        name: "netease",
        mx: "163mx01.mxmail.netease.com",
        ip: "127.0.0.55",
        limits: limits(2, 20, Some(50), None, Some(600)),
    },
];

/// Messages a second one source may send to a provider.
fn rate(l: &Limits) -> f64 {
    let mut r = f64::INFINITY;
    if let Some(s) = l.per_second {
        r = r.min(s as f64);
    }
    if let Some(m) = l.per_minute {
        r = r.min(m as f64 / 60.0);
    }
    if let (Some(c), Some(per)) = (l.new_connections_per_minute, l.messages_per_connection) {
        r = r.min(c as f64 / 60.0 * per as f64);
    }
    r
}

/// The same limits, as Kiln's policy gives them.
fn lua_limits(l: &Limits) -> String {
    let mut out = Vec::new();
    let fields = [
        ("connections", l.connections),
        ("messages_per_connection", l.messages_per_connection),
        ("per_second", l.per_second),
        ("per_minute", l.per_minute),
        ("new_connections_per_minute", l.new_connections_per_minute),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            out.push(format!("{k} = {v}"));
        }
    }
    out.join(", ")
}

fn policy() -> String {
    let providers: Vec<String> = PROVIDERS
        .iter()
        .map(|p| format!("{} = {{ {} }}", p.name, lua_limits(&p.limits)))
        .collect();
    format!(
        r#"return {{ config = {{
  limits = {{ rate_per_second = 1e9, account_daily_limit = 1e12, per_recipient_per_hour = 1e12 }},
  reputation = {{ initial_level = 20 }},
  warmup = {{ curve = {{ 1e12 }} }},
  egress = {{
    sources = {{ a = {{ address = "{}" }}, b = {{ address = "{}" }} }},
    pools = {{ default = {{ "a", "b" }} }},
    providers = {{ {} }},
  }},
}} }}"#,
        SOURCES[0],
        SOURCES[1],
        providers.join(", ")
    )
}

/// Kiln (and its Redis) on the first core, the receivers (and the rest of
/// this process, DNS, the injector) on the second: a receiver starved of
/// CPU by the sender it measures would stamp messages late and see bursts
/// that were never sent. Without `taskset`, everything shares both cores.
fn pin_cores(kiln: Option<u32>, redis: Option<u32>) {
    let pin = |cpu: &str, pid: u32| {
        std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", cpu, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let pinned = kiln.is_some_and(|k| pin("0", k))
        && redis.is_none_or(|r| pin("0", r))
        && pin("1", std::process::id());
    if !pinned {
        eprintln!("kiln-shaping-bench: could not pin cores (taskset); sharing both");
    }
}

#[tokio::main]
async fn main() {
    help::or_exit(include_str!("shaping.rs"));
    let args = args::parse("kiln-shaping-bench", 100_000);
    let peers = peers::Peers::start(if args.redis { "redis" } else { "embedded" }).await;
    let port = peers.sink.addr.port();
    // Each provider gets a share of the mail in proportion to its rate, so
    // every one would drain together at its limits.
    let total_rate: f64 = PROVIDERS.iter().map(|p| rate(&p.limits)).sum();
    let mut providers = Vec::new();
    let mut rcpts = Vec::with_capacity(args.n);
    let mut bound_s: f64 = 0.0;
    let mut left = args.n;
    for (i, spec) in PROVIDERS.iter().enumerate() {
        let addr = SocketAddr::new(spec.ip.parse().expect("ip"), port);
        providers.push(Provider::start(spec.name, addr, spec.limits).await);
        peers.dns.add_ip(spec.mx, spec.ip.parse().expect("ip"));
        let share = if i + 1 == PROVIDERS.len() {
            left
        } else {
            (args.n as f64 * rate(&spec.limits) / total_rate).round() as usize
        };
        left -= share;
        bound_s = bound_s.max(share as f64 / (rate(&spec.limits) * SOURCES.len() as f64));
        for d in 0..DOMAINS_PER_PROVIDER {
            peers
                .dns
                .add_mx(&format!("{}{d}.bench", spec.name), 10, spec.mx);
        }
        for r in 0..share {
            rcpts.push(format!(
                "u{r}@{}{}.bench",
                spec.name,
                r % DOMAINS_PER_PROVIDER
            ));
        }
    }
    // Mixed, as a real list is.
    rcpts.sort_by_key(|r| {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(r, &mut h);
        std::hash::Hasher::finish(&h)
    });

    let mut opts = peers.options();
    opts.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
    opts.policy = policy();
    let kiln = tokio::task::block_in_place(|| Kiln::start(&args.kiln, &opts));
    pin_cores(kiln.pid(), peers.redis.as_ref().map(|r| r.pid()));
    let cpu_before = measure::cpu_seconds(kiln.pid());
    let start = Instant::now();
    load::inject(kiln.smtp, rcpts, 4, RECIPIENTS_PER_MESSAGE).await;
    let inject_s = start.elapsed().as_secs_f64();
    let delivered = || providers.iter().map(Provider::delivered).sum::<usize>();
    let deadline = start + Duration::from_secs_f64(bound_s * 3.0 + 120.0);
    let mut peak_rss_kb = 0;
    let mut report_at = start + Duration::from_secs(5);
    while delivered() < args.n && Instant::now() < deadline {
        peak_rss_kb = peak_rss_kb.max(measure::peak_rss_kb(kiln.pid()));
        if Instant::now() >= report_at {
            report_at += Duration::from_secs(5);
            let counts: Vec<String> = providers
                .iter()
                .map(|p| format!("{} {}", p.name, p.delivered()))
                .collect();
            eprintln!(
                "{:>4.0} s: {}",
                start.elapsed().as_secs_f64(),
                counts.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_s = start.elapsed().as_secs_f64();
    peak_rss_kb = peak_rss_kb.max(measure::peak_rss_kb(kiln.pid()));
    let mut violations = 0;
    for p in &providers {
        let v = p.violations();
        let peers = p.peers();
        let most_open = peers.values().map(|r| r.peak_open).max().unwrap_or(0);
        eprintln!(
            "{}: delivered {}, breaches {}, from {} addresses, at most {most_open} open{}",
            p.name,
            p.delivered(),
            v.len(),
            peers.len(),
            v.first().map(|v| format!(", e.g. {v}")).unwrap_or_default()
        );
        violations += v.len();
    }
    if delivered() < args.n {
        eprintln!(
            "kiln-shaping-bench: only {} of {} delivered",
            delivered(),
            args.n
        );
        std::process::exit(1);
    }
    let cpu_s = measure::cpu_seconds(kiln.pid()) - cpu_before;
    eprintln!(
        "queued {} recipients in {inject_s:.1} s; kiln used {:.0} µs of CPU a recipient",
        args.n,
        cpu_s * 1e6 / args.n as f64
    );
    println!(
        "kiln shaping efficiency={:.3} violations={violations} drain_s={drain_s:.1} bound_s={bound_s:.1} peak_rss_mb={:.0} n={} store={}",
        bound_s / drain_s,
        peak_rss_kb as f64 / 1024.0,
        args.n,
        if args.redis { "redis" } else { "embedded" }
    );
}
