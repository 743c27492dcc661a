//! Shared setup: one DNS server, one sink, one kiln per scenario.

use kiln_testkit::client::SmtpClient;
use kiln_testkit::dns::DnsServer;
use kiln_testkit::process::{Kiln, KilnOptions};
use kiln_testkit::redis::{RedisCluster, RedisServer, SentinelSet};
use kiln_testkit::sink::Sink;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    /// One redis-server.
    Redis,
    /// A Redis Cluster of three masters, each with a replica.
    RedisCluster,
    /// The master a Sentinel names, with two replicas.
    Sentinel,
}

impl Backend {
    /// Whether nodes share it (all but the embedded store).
    pub fn shared(self) -> bool {
        self != Backend::Embedded
    }
}

pub const BOTH: [Backend; 2] = [Backend::Embedded, Backend::Redis];

/// Every way nodes share a store: the suites of what nodes share (the
/// queue, takeover, shaping, queue control, callbacks) run on each.
pub const SHARED: [Backend; 3] = [Backend::Redis, Backend::RedisCluster, Backend::Sentinel];

/// The embedded store and every shared one.
pub const ALL: [Backend; 4] = [
    Backend::Embedded,
    Backend::Redis,
    Backend::RedisCluster,
    Backend::Sentinel,
];

/// The Redis a shared store runs on, kept alive with the test.
#[derive(Default)]
pub struct SharedRedis {
    pub cluster: Option<RedisCluster>,
    pub sentinel: Option<SentinelSet>,
}

impl SharedRedis {
    /// Starts what `backend` needs; the single server goes to `redis`.
    fn start(backend: Backend) -> (Option<RedisServer>, SharedRedis) {
        tokio::task::block_in_place(|| match backend {
            Backend::Embedded => (None, SharedRedis::default()),
            Backend::Redis => (Some(RedisServer::start()), SharedRedis::default()),
            Backend::RedisCluster => (
                None,
                SharedRedis {
                    cluster: Some(RedisCluster::start()),
                    sentinel: None,
                },
            ),
            Backend::Sentinel => (
                None,
                SharedRedis {
                    cluster: None,
                    sentinel: Some(SentinelSet::start()),
                },
            ),
        })
    }

    /// Points `opts` at the store (`redis` for a single server).
    pub fn configure(&self, redis: Option<&RedisServer>, opts: &mut KilnOptions) {
        if let Some(r) = redis {
            opts.redis_url = Some(r.url());
        }
        if let Some(c) = &self.cluster {
            opts.redis_url = Some(c.nodes[0].url());
            let seeds: Vec<String> = c.urls().iter().map(|u| format!("\"{u}\"")).collect();
            opts.store
                .push_str(&format!("redis_cluster = [{}]\n", seeds.join(", ")));
        }
        if let Some(s) = &self.sentinel {
            opts.redis_url = Some(s.master.url());
            opts.store.push_str(&format!(
                "redis_sentinels = [\"{}\"]\nredis_sentinel_master = \"{}\"\n",
                s.sentinel_url(),
                SentinelSet::MASTER
            ));
        }
    }
}

pub struct Env {
    pub dns: DnsServer,
    pub sink: Sink,
    pub kiln: Kiln,
    pub redis: Option<RedisServer>,
    pub shared: SharedRedis,
    pub dir: tempfile::TempDir,
}

pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kiln"))
}

/// DNS with `dest.test` → mx.dest.test → 127.0.0.1, a TLS sink, and kiln.
pub async fn env(backend: Backend, tweak: impl FnOnce(&mut KilnOptions)) -> Env {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), true, true).await;
    env_with_sink(backend, sink, |o, _| tweak(o)).await
}

/// What a node runs among: DNS with `dest.test` → mx.dest.test →
/// 127.0.0.1, a Redis of its own for `Backend::Redis`, a data directory,
/// and options for a node that delivers to `sink`.
pub struct Peers {
    pub dns: DnsServer,
    pub redis: Option<RedisServer>,
    pub shared: SharedRedis,
    pub dir: tempfile::TempDir,
    pub opts: KilnOptions,
}

pub async fn peers(backend: Backend, sink: &Sink) -> Peers {
    let dns = DnsServer::start().await;
    dns.add_mx("dest.test", 10, "mx.dest.test");
    dns.add_ip("mx.dest.test", "127.0.0.1".parse().unwrap());
    let (redis, shared) = SharedRedis::start(backend);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = KilnOptions::new(
        &dir.path().join("data"),
        &dns.nameserver(),
        sink.addr.port(),
    );
    shared.configure(redis.as_ref(), &mut opts);
    Peers {
        dns,
        redis,
        shared,
        dir,
        opts,
    }
}

/// Like [`env`] with a sink of the test's own; `tweak` also gets the data
/// directory's parent, for files the config points at.
pub async fn env_with_sink(
    backend: Backend,
    sink: Sink,
    tweak: impl FnOnce(&mut KilnOptions, &Path),
) -> Env {
    let Peers {
        dns,
        redis,
        shared,
        dir,
        mut opts,
    } = peers(backend, &sink).await;
    tweak(&mut opts, dir.path());
    let kiln = tokio::task::block_in_place(|| Kiln::start(binary(), &opts));
    Env {
        dns,
        sink,
        kiln,
        redis,
        shared,
        dir,
    }
}

/// A second node on the same Redis, DNS and sink, set up by `tweak`.
pub fn second_node(e: &Env, tweak: impl FnOnce(&mut KilnOptions)) -> Kiln {
    let mut opts = KilnOptions::new(
        &e.dir.path().join("node-b"),
        &e.dns.nameserver(),
        e.sink.addr.port(),
    );
    e.shared.configure(e.redis.as_ref(), &mut opts);
    opts.node_id = "node-b".into();
    tweak(&mut opts);
    tokio::task::block_in_place(|| Kiln::start(binary(), &opts))
}

/// An authenticated submission session (STARTTLS, AUTH PLAIN).
pub async fn submit_session(addr: SocketAddr) -> SmtpClient {
    submit_session_as(addr, "shop", "shop-password").await
}

/// Like [`submit_session`], signed in as another account.
pub async fn submit_session_as(addr: SocketAddr, user: &str, password: &str) -> SmtpClient {
    let mut c = SmtpClient::connect(addr).await.unwrap();
    assert_eq!(c.greeting.code, 220);
    assert_eq!(c.cmd("EHLO client.test").await.unwrap().code, 250);
    assert_eq!(c.starttls().await.unwrap().code, 220);
    let ehlo = c.cmd("EHLO client.test").await.unwrap();
    assert!(ehlo.text.contains("AUTH PLAIN LOGIN"), "{}", ehlo.text);
    let auth = c.auth_plain(user, password).await.unwrap();
    assert_eq!(auth.code, 235, "{}", auth.text);
    c
}

/// Submits one message in its own authenticated session; returns its id.
pub async fn submit_one(
    addr: SocketAddr,
    from: &str,
    to: &str,
    subject: &str,
    size: usize,
) -> String {
    let mut c = submit_session(addr).await;
    let body = kiln_testkit::client::message(from, to, subject, size);
    let r = c.send(from, &[to], &body).await.unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    c.quit().await;
    queued_id(&r.text)
}

pub fn queued_id(reply_text: &str) -> String {
    reply_text
        .rsplit("queued as ")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub async fn status(kiln: &Kiln, id: &str) -> Option<Value> {
    let resp = kiln
        .admin_get(&format!("/admin/messages/{id}"))
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// Waits until recipient `idx` of message `id` is in `state`; returns its record.
pub async fn wait_state(kiln: &Kiln, id: &str, idx: usize, state: &str, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let st = status(kiln, id).await;
        if let Some(r) = st.as_ref().and_then(|s| s["recipients"].get(idx))
            && r["state"] == state
        {
            return r.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message {id} recipient {idx} never reached {state}: {st:?}\n{}",
            kiln.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn queued(kiln: &Kiln) -> u64 {
    let v: Value = reqwest::get(format!("http://{}/healthz", kiln.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["queued"].as_u64().unwrap()
}

/// Waits until `check` holds (polled every 50 ms); false on timeout.
pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    kiln_testkit::wait_for(timeout, || {
        let ok = check();
        async move { ok }
    })
    .await
}

/// The sum of the series of a metric (`kiln_callbacks_total`) whose labels
/// hold `label` (`result="failed"`; "" for all) in `GET /metrics`.
pub async fn metric(e: &Env, name: &str, label: &str) -> f64 {
    metric_of(&e.kiln, name, label).await
}

/// Like [`metric`], of any node.
pub async fn metric_of(kiln: &Kiln, name: &str, label: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", kiln.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `metric(e, name, label)` reaches `at_least`.
pub async fn wait_for_metric(e: &Env, name: &str, label: &str, at_least: f64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if metric(e, name, label).await >= at_least {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fixed wait, for a test that shows something does *not* happen (a
/// second delivery, an attempt while suspended, a callback too many):
/// there is no event to wait for, so `what` is given this long to happen.
/// Every other wait waits for its event.
pub async fn nothing_happens_for(time: Duration, what: &str) {
    eprintln!("giving {what} {time:?} to happen (it must not)");
    tokio::time::sleep(time).await;
}

/// One message relayed from load@shop.test (the listener must relay for
/// loopback), in a session of its own; the reply to its DATA.
pub async fn relay(addr: SocketAddr, to: &str, subject: &str) -> kiln_testkit::client::Reply {
    let mut c = SmtpClient::connect(addr).await.unwrap();
    c.cmd("EHLO load.test").await.unwrap();
    let body = kiln_testkit::client::message("load@shop.test", to, subject, 4096);
    let r = c.send("load@shop.test", &[to], &body).await.unwrap();
    c.quit().await;
    r
}

/// Moves a test clock (`server.test_clock = true`) by `ms`, forward or
/// back; Kiln's time afterwards.
pub async fn move_clock(e: &Env, ms: i64) -> i64 {
    let r = e
        .kiln
        .admin_post(&format!("/admin/clock?ms={ms}"))
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let v: Value = r.json().await.unwrap();
    v["now_ms"].as_i64().unwrap()
}
