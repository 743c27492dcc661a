//! What the policy costs per message, on its own: admission's policy step
//! (`content_filter`, `check_limits`, `select_egress`, as `kiln serve` runs
//! them) for N messages from concurrent tasks on a real store, without the
//! SMTP, queue and delivery work around it, so the figure moves only with
//! the policy and not with the machine's network and disk noise.
//!
//! Prints
//!
//! `kiln-policy calls_per_s=<n> cpu_us_per_msg=<n> n=<N> policy=<default|off|FILE> store=<embedded|redis>`
//!
//! Usage: kiln-policy-bench [--n N] [--tasks T] [--policy default|off|FILE.lua]
//!                          [--store embedded|redis]
//!
//! `cpu_us_per_msg` is this process's CPU time (every thread: the Lua
//! states, the store's writer) over N; with `--store redis` the server's own
//! CPU is not in it.

mod help;
mod measure;

use kiln::intake::admission::{Submission, apply_policy};
use kiln::policy::{Policy, PolicySettings};
use kiln::store::Store;
use kiln_testkit::client::message;
use kiln_testkit::process::{PERMISSIVE_POLICY, plugins_dir};
use kiln_testkit::redis::RedisServer;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// The allocator `kiln serve` runs with: the policy allocates per message.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const OFF: &str = "return { disable = { 'reputation', 'warmup', 'limits', 'content_filter', 'bounces', 'egress' } }";

struct Args {
    n: usize,
    tasks: usize,
    policy: String,
    redis: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        n: 100_000,
        tasks: 20,
        policy: "default".into(),
        redis: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--n" => args.n = number(&value)?,
            "--tasks" => args.tasks = number(&value)?.max(1),
            "--policy" => args.policy = value,
            "--store" => args.redis = value == "redis",
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn main() {
    help::or_exit(include_str!("policy.rs"));
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kiln-policy-bench: {e}");
            std::process::exit(2);
        }
    };
    let script = match args.policy.as_str() {
        "default" => PERMISSIVE_POLICY.to_string(),
        "off" => OFF.to_string(),
        path => std::fs::read_to_string(path).unwrap_or_else(|e| {
            eprintln!("kiln-policy-bench: {path}: {e}");
            std::process::exit(2);
        }),
    };
    let redis = args.redis.then(RedisServer::start);
    // As `kiln serve` runs it: one worker thread per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(&args, &script, redis.as_ref()));
}

async fn run(args: &Args, script: &str, redis: Option<&RedisServer>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let retention = Duration::from_secs(86400);
    let store = match redis {
        Some(r) => Store::Redis(
            kiln::store::redis::RedisStore::connect(
                &r.url(),
                "kiln",
                retention,
                kiln::clock::Clock::system(),
            )
            .await
            .expect("redis store"),
        ),
        None => Store::Embedded(
            kiln::store::embedded::EmbeddedStore::open(
                &dir.path().join("kiln.redb"),
                retention,
                kiln::clock::Clock::system(),
            )
            .expect("embedded store"),
        ),
    };
    let script_path = dir.path().join("policy.lua");
    std::fs::write(&script_path, script).expect("write policy script");
    // The daemon's defaults (kiln::config::PolicyConfig), but for the files.
    let defaults = kiln::config::PolicyConfig::default();
    let settings = PolicySettings {
        plugins_dir: plugins_dir(),
        script: script_path,
        time_zone: jiff::tz::TimeZone::UTC,
        states: defaults.states,
        max_instructions: defaults.max_instructions,
        max_memory_mb: defaults.max_memory_mb,
        timeout: defaults.timeout,
        max_input_kb: defaults.max_input_kb,
        max_body_kb: defaults.max_body_kb,
    };
    let policy = Arc::new(Policy::load(settings, store.clone()).expect("policy loads"));
    let body = message("bench@shop.test", "rcpt@sink.test", "bench", 2048);

    let next = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let cpu_before = measure::cpu_seconds(Some(std::process::id()));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.tasks);
    for _ in 0..args.tasks {
        let (policy, next, refused, body) =
            (policy.clone(), next.clone(), refused.clone(), body.clone());
        let n = args.n;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                // What admission hands the policy: a fresh copy of the message.
                let submission = Submission {
                    id: format!("bench{i}"),
                    account: String::new(),
                    sender: "bench@shop.test".into(),
                    sender_domain: "shop.test".into(),
                    recipients: vec!["rcpt@sink.test".into()],
                    message: body.clone(),
                    now: kiln::clock::system_now_ms(),
                    trigger_type: kiln::intake::submission::TriggerType::Regular,
                    require_tls: false,
                    door: kiln::intake::submission::Door::Smtp,
                    origin: "bench".into(),
                    template_id: String::new(),
                    task_id: String::new(),
                };
                if apply_policy(&policy, &submission).await.is_err() {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("bench task");
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = measure::cpu_seconds(Some(std::process::id())) - cpu_before;
    eprintln!(
        "peak RSS {} MB",
        measure::peak_rss_kb(Some(std::process::id())) / 1024
    );
    let refused = refused.load(Ordering::Relaxed);
    if refused > 0 {
        eprintln!(
            "kiln-policy-bench: the policy refused {refused} of {} messages",
            args.n
        );
        std::process::exit(1);
    }
    if let Store::Embedded(s) = &store {
        s.close();
    }
    println!(
        "kiln-policy calls_per_s={:.0} cpu_us_per_msg={:.1} n={} policy={} store={}",
        args.n as f64 / secs,
        cpu * 1e6 / args.n as f64,
        args.n,
        args.policy,
        if redis.is_some() { "redis" } else { "embedded" }
    );
}
