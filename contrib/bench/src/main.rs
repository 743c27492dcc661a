//! Starts a DNS server, an SMTP sink and `kiln` (release build), injects N
//! messages of 2 KB over 20 parallel sessions (one connection per message,
//! like Postfix's smtp-source), waits until the sink has them all, and prints
//!
//! `kiln end_to_end_mps=<n> inject_mps=<n> cpu_us_per_msg=<n> n=<N> dkim=<on|off> store=<embedded|redis|redis-cluster> policy=<P> recipients=<one|distinct> metrics=<on|off>`
//!
//! Usage: kiln-bench [--n N] [--sessions S] [--dkim on|off] [--store embedded|redis|redis-cluster] [--kiln PATH]
//!                   [--source PATH-TO-smtp-source] [--policy default|off|FILE.lua] [--pairs K]
//!                   [--recipients one|distinct]
//!
//! With `--source`, Postfix's `smtp-source` generates the load (the tool the
//! reference figures in BENCHMARKS.md were taken with); without it, a built-in
//! client does the same thing.
//!
//! `--policy default` (the default) runs every default plugin, configured so
//! that the benchmark's volume from one fresh domain trips no limit; `off`
//! disables every plugin, so no hook runs; a path to a `.lua` file runs that
//! policy script instead (to measure what an installation's own policy costs).
//!
//! `--pairs K` runs the policy and `off` alternately K times (a fresh kiln
//! each run) and ends with what the policy costs:
//!
//! `kiln policy_cost pairs=K policy=<P> median_share=<x> q1_share=<x> q3_share=<x> min_share=<x> max_share=<x> share_of_means=<x> median_extra_cpu_us_per_msg=<n> store=<s> recipients=<one|distinct>`
//!
//! where a share is the policy run's end-to-end rate over the next off run's
//! (quartiles interpolated), and `share_of_means` the policy runs' mean rate
//! over the off runs' mean rate.
//!
//! `--recipients distinct` sends every message of the built-in load to a
//! recipient of its own (`r<i>@sink.test`) instead of all to one: each
//! message's recipient checks then find nothing this node has read before.

mod help;
mod measure;
mod peers;

use kiln_testkit::client::{SmtpClient, message};
use kiln_testkit::process::Kiln;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Args {
    n: usize,
    sessions: usize,
    dkim: bool,
    /// embedded, redis or redis-cluster.
    store: String,
    kiln: PathBuf,
    source: Option<PathBuf>,
    policy: Policy,
    /// With a policy other than off: run it and off alternately this many
    /// times and print what the policy costs.
    pairs: usize,
    /// Every message to its own recipient (built-in load only), rather than
    /// all to one as smtp-source sends them.
    distinct: bool,
    /// Metrics counted (`--metrics off`: `http.metrics = false`).
    metrics: bool,
}

#[derive(Clone, PartialEq)]
enum Policy {
    Default,
    Off,
    Script(PathBuf),
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::Default => f.write_str("default"),
            Policy::Off => f.write_str("off"),
            Policy::Script(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Args {
    fn recipients(&self) -> &'static str {
        if self.distinct { "distinct" } else { "one" }
    }
}

/// What one run measured.
struct Run {
    end_to_end_mps: f64,
    cpu_us_per_msg: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        n: 20_000,
        sessions: 20,
        dkim: false,
        store: "embedded".into(),
        kiln: PathBuf::from("target/release/kiln"),
        source: None,
        policy: Policy::Default,
        pairs: 0,
        distinct: false,
        metrics: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--n" => args.n = value.parse().map_err(|_| "--n: not a number")?,
            "--sessions" => {
                args.sessions = value.parse().map_err(|_| "--sessions: not a number")?
            }
            "--dkim" => args.dkim = value == "on",
            "--store" if ["embedded", "redis", "redis-cluster"].contains(&value.as_str()) => {
                args.store = value
            }
            "--kiln" => args.kiln = PathBuf::from(value),
            "--source" => args.source = Some(PathBuf::from(value)),
            "--policy" if value.ends_with(".lua") => args.policy = Policy::Script(value.into()),
            "--policy" if value == "off" => args.policy = Policy::Off,
            "--policy" if value == "default" => args.policy = Policy::Default,
            "--pairs" => args.pairs = value.parse().map_err(|_| "--pairs: not a number")?,
            "--metrics" => args.metrics = value != "off",
            "--recipients" if value == "one" => args.distinct = false,
            "--recipients" if value == "distinct" => args.distinct = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    help::or_exit(include_str!("main.rs"));
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kiln-bench: {e}");
            std::process::exit(2);
        }
    };
    if args.pairs == 0 || args.policy == Policy::Off {
        run(&args, &args.policy).await;
        return;
    }
    // The policy against none, alternately: this machine's speed drifts by
    // more than a policy costs, so single runs compare poorly.
    let mut shares = Vec::with_capacity(args.pairs);
    let mut extra_cpu = Vec::with_capacity(args.pairs);
    let (mut with_total, mut without_total) = (0.0, 0.0);
    for _ in 0..args.pairs {
        let with = run(&args, &args.policy).await;
        let without = run(&args, &Policy::Off).await;
        shares.push(with.end_to_end_mps / without.end_to_end_mps);
        extra_cpu.push(with.cpu_us_per_msg - without.cpu_us_per_msg);
        with_total += with.end_to_end_mps;
        without_total += without.end_to_end_mps;
    }
    shares.sort_by(f64::total_cmp);
    extra_cpu.sort_by(f64::total_cmp);
    println!(
        "kiln policy_cost pairs={} policy={} median_share={:.2} q1_share={:.2} q3_share={:.2} min_share={:.2} max_share={:.2} share_of_means={:.2} median_extra_cpu_us_per_msg={:.0} store={} recipients={}",
        args.pairs,
        args.policy,
        quantile(&shares, 0.5),
        quantile(&shares, 0.25),
        quantile(&shares, 0.75),
        shares[0],
        shares[shares.len() - 1],
        with_total / without_total,
        quantile(&extra_cpu, 0.5),
        args.store,
        args.recipients()
    );
}

/// The `q` quantile of sorted, non-empty `values`, interpolated between
/// neighbours (so the median of an even count is the mean of the middle two).
fn quantile(values: &[f64], q: f64) -> f64 {
    let at = q * (values.len() - 1) as f64;
    let (low, high) = (at.floor() as usize, at.ceil() as usize);
    let (a, b) = (values[low], values[high]);
    a + (b - a) * (at - low as f64)
}

/// One run: a fresh kiln (and peers) under `policy`; prints its line.
async fn run(args: &Args, policy: &Policy) -> Run {
    let peers = peers::Peers::start(&args.store).await;
    let sink = &peers.sink;
    let mut opts = peers.options();
    opts.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
    if !args.metrics {
        opts.http = "metrics = false".into();
    }
    match policy {
        Policy::Default => {}
        Policy::Off => {
            opts.policy = "return { disable = { 'reputation', 'warmup', 'limits', 'content_filter', 'bounces', 'egress' } }".into();
        }
        Policy::Script(path) => {
            opts.policy = std::fs::read_to_string(path).unwrap_or_else(|e| {
                eprintln!("kiln-bench: {}: {e}", path.display());
                std::process::exit(2);
            });
        }
    }
    let kiln = tokio::task::block_in_place(|| Kiln::start(&args.kiln, &opts));
    if args.dkim {
        let out = kiln.command(&["dkim", "create", "shop.test", "--algorithm", "rsa"]);
        assert!(out.status.success(), "dkim create failed");
    }

    let cpu_before = measure::cpu_seconds(kiln.pid());
    let start = Instant::now();
    let failed = match &args.source {
        Some(source) => inject_with_smtp_source(source, args, kiln.smtp),
        None => inject_builtin(args, kiln.smtp).await,
    };
    let inject_secs = start.elapsed().as_secs_f64();
    let accepted = args.n - failed;
    let deadline = Instant::now() + Duration::from_secs(600);
    while sink.count() < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let total_secs = start.elapsed().as_secs_f64();
    let kiln_cpu = measure::cpu_seconds(kiln.pid()) - cpu_before;
    let peak_rss_mb = measure::peak_rss_kb(kiln.pid()) / 1024;
    if sink.count() < accepted {
        eprintln!("kiln-bench: only {} of {accepted} delivered", sink.count());
        std::process::exit(1);
    }
    eprintln!(
        "policy {}, load {}: injected {accepted} in {inject_secs:.2}s ({} refused), delivered over {} connections, peak RSS {peak_rss_mb} MB",
        policy,
        if args.source.is_some() {
            "smtp-source"
        } else {
            "built-in"
        },
        args.n - accepted,
        sink.connections()
    );
    let measured = Run {
        end_to_end_mps: accepted as f64 / total_secs,
        cpu_us_per_msg: kiln_cpu * 1e6 / accepted.max(1) as f64,
    };
    println!(
        "kiln end_to_end_mps={:.0} inject_mps={:.0} cpu_us_per_msg={:.0} n={} dkim={} store={} policy={policy} recipients={} metrics={}",
        measured.end_to_end_mps,
        accepted as f64 / inject_secs,
        measured.cpu_us_per_msg,
        accepted,
        if args.dkim { "on" } else { "off" },
        args.store,
        args.recipients(),
        if args.metrics { "on" } else { "off" }
    );
    if let Some(r) = &peers.redis {
        println!(
            "kiln redis redis_commands_per_msg={:.1} redis_cpu_us_per_msg={:.0}",
            kiln_testkit::redis::commands_processed(r.port) as f64 / accepted.max(1) as f64,
            kiln_testkit::redis::cpu_seconds(r.port) * 1e6 / accepted.max(1) as f64
        );
    }
    if let Some(c) = &peers.cluster {
        // What the run left (status records, counters), master by master,
        // and what the masters did for it.
        let masters = c.masters();
        let keys: Vec<String> = c
            .keys_per_master()
            .iter()
            .map(|(_, n)| n.to_string())
            .collect();
        let commands: Vec<u64> = masters
            .iter()
            .map(|p| kiln_testkit::redis::commands_processed(*p))
            .collect();
        let cpu: f64 = masters
            .iter()
            .map(|p| kiln_testkit::redis::cpu_seconds(*p))
            .sum();
        let replicas_cpu: f64 = c
            .nodes
            .iter()
            .filter(|n| !masters.contains(&n.port))
            .map(|n| kiln_testkit::redis::cpu_seconds(n.port))
            .sum();
        println!(
            "kiln cluster keys_per_master={} redis_commands_per_master={} redis_commands_per_msg={:.1} redis_cpu_us_per_msg={:.0} replicas_cpu_us_per_msg={:.0}",
            keys.join("/"),
            commands
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("/"),
            commands.iter().sum::<u64>() as f64 / accepted.max(1) as f64,
            cpu * 1e6 / accepted.max(1) as f64,
            replicas_cpu * 1e6 / accepted.max(1) as f64
        );
    }
    // Stopped politely, so a profiler wrapping the daemon (`--kiln` a
    // script running valgrind or perf) writes what it counted.
    let mut kiln = kiln;
    kiln.terminate();
    measured
}

/// 20 sessions (by default), one connection per message; returns how many
/// messages were refused.
async fn inject_builtin(args: &Args, addr: std::net::SocketAddr) -> usize {
    let body = Arc::new(message("bench@shop.test", "rcpt@sink.test", "bench", 2048));
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.sessions {
        let (next, failed, body, n) = (next.clone(), failed.clone(), body.clone(), args.n);
        let distinct = args.distinct;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let rcpt = if distinct {
                    format!("r{i}@sink.test")
                } else {
                    "rcpt@sink.test".to_string()
                };
                let ok = async {
                    let mut c = SmtpClient::connect(addr).await.ok()?;
                    c.cmd("EHLO bench.test").await.ok()?;
                    let r = c
                        .send("bench@shop.test", &[rcpt.as_str()], &body)
                        .await
                        .ok()?;
                    c.quit().await;
                    (r.code == 250).then_some(())
                }
                .await;
                if ok.is_none() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    failed.load(Ordering::Relaxed)
}

/// Runs Postfix's smtp-source with the reference load. It gives up at the
/// first refused message, so a failure ends the benchmark.
fn inject_with_smtp_source(source: &Path, args: &Args, addr: std::net::SocketAddr) -> usize {
    let status = tokio::task::block_in_place(|| {
        std::process::Command::new(source)
            .args(["-s", &args.sessions.to_string()])
            .args(["-l", "2048", "-m", &args.n.to_string()])
            .args(["-f", "bench@shop.test", "-t", "rcpt@sink.test"])
            .args(["-M", "bench.test"])
            .arg(addr.to_string())
            .status()
    });
    match status {
        Ok(s) if s.success() => 0,
        Ok(s) => {
            eprintln!("kiln-bench: smtp-source exited with {s}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("kiln-bench: cannot run {}: {e}", source.display());
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_between_neighbours() {
        let v = [0.80, 0.90, 0.95, 1.00];
        assert!(
            (quantile(&v, 0.5) - 0.925).abs() < 1e-9,
            "mean of the middle two"
        );
        assert!((quantile(&v, 0.25) - 0.875).abs() < 1e-9);
        assert!((quantile(&v, 0.0) - 0.80).abs() < 1e-9);
        assert!((quantile(&v, 1.0) - 1.00).abs() < 1e-9);
        assert!((quantile(&[0.93], 0.5) - 0.93).abs() < 1e-9);
    }
}
