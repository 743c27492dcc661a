//! A node in the test's own process: `kiln::server::start` on listeners
//! bound to port 0, with a test clock the test moves. What takes hours in
//! Kiln's time (retries, the queue's maximum age, a day's quota) takes
//! milliseconds here, and nothing sleeps for it.
//!
//! The clock jumps (`move_clock_to`) rather than running under
//! `tokio::time::pause`: a paused runtime that is idle while it waits for a
//! real peer (Redis, the sink) would skip ahead to its next timer and fire
//! timeouts the peers never caused.

use crate::harness::{Backend, Peers, peers};
use kiln::clock::Clock;
use kiln::server::{Listen, Listeners};
use kiln::services::Services;
use kiln_testkit::dns::DnsServer;
use kiln_testkit::process::KilnOptions;
use kiln_testkit::redis::RedisServer;
use kiln_testkit::sink::Sink;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct Node {
    pub node: Option<kiln::server::Node>,
    pub ctx: Arc<Services>,
    pub clock: Clock,
    pub smtp: SocketAddr,
    pub sink: Sink,
    /// The node's resolver: tests add the records they need.
    pub dns: DnsServer,
    // Held for the node's lifetime: its Redis, its data.
    _redis: Option<RedisServer>,
    _shared: crate::harness::SharedRedis,
    _dir: tempfile::TempDir,
}

/// DNS with `dest.test` → mx.dest.test → 127.0.0.1, a TLS sink, and a node
/// set up as the child-process tests' (`KilnOptions`), changed by `tweak`.
pub async fn node(backend: Backend, tweak: impl FnOnce(&mut KilnOptions)) -> Node {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), true, true).await;
    let Peers {
        dns,
        redis,
        dir,
        mut opts,
        shared,
    } = peers(backend, &sink).await;
    tweak(&mut opts);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (config, _policy) = opts.write_files(any, any, any);
    let settings = kiln::config::Settings::load_with(Some(&config), Vec::new()).expect("config");
    let listeners = Listeners::bind(&settings).await.expect("bind");
    let smtp = listeners.smtp[0].local_addr().unwrap();
    let clock = Clock::test();
    let node = kiln::server::start(settings, Some(config), Listen::On(listeners), clock.clone())
        .await
        .expect("node starts");
    Node {
        ctx: node.ctx.clone(),
        node: Some(node),
        clock,
        smtp,
        sink,
        dns,
        _redis: redis,
        _shared: shared,
        _dir: dir,
    }
}

impl Node {
    /// The status record of a message, as `kiln status` shows it.
    pub async fn status(&self, id: &str) -> Option<Value> {
        let status = self.ctx.store.status(id).await.ok()??;
        serde_json::to_value(status).ok()
    }

    /// Waits (real time) until recipient `idx` of `id` matches `done`.
    pub async fn wait_for(&self, id: &str, idx: usize, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.status(id).await;
            if let Some(r) = st.as_ref().and_then(|s| s["recipients"].get(idx))
                && done(r)
            {
                return r.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "message {id} recipient {idx} never got there: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Moves Kiln's clock to `at_ms` (never back).
    pub fn move_clock_to(&self, at_ms: i64) {
        let by = (at_ms - self.clock.now_ms()).max(0) as u64;
        self.clock
            .advance(Duration::from_millis(by))
            .expect("a test clock");
    }

    pub async fn stop(mut self) {
        if let Some(n) = self.node.take() {
            n.stop().await;
        }
    }
}
