//! What both benchmarks run against: a DNS server that sends `sink.test` to
//! an SMTP sink on loopback, a private redis-server or Redis Cluster (three
//! masters, each with a replica) if asked for, and the options for a
//! `kiln` on a fresh data directory.

use kiln_testkit::dns::DnsServer;
use kiln_testkit::process::KilnOptions;
use kiln_testkit::redis::{RedisCluster, RedisServer};
use kiln_testkit::sink::Sink;

pub struct Peers {
    pub dns: DnsServer,
    pub sink: Sink,
    pub redis: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
    pub dir: tempfile::TempDir,
}

impl Peers {
    /// `store`: embedded, redis or redis-cluster.
    pub async fn start(store: &str) -> Peers {
        let dns = DnsServer::start().await;
        dns.add_mx("sink.test", 10, "mx.sink.test");
        dns.add_ip("mx.sink.test", "127.0.0.1".parse().expect("ip"));
        Peers {
            dns,
            sink: Sink::start("127.0.0.1:0".parse().expect("addr"), false, false).await,
            redis: (store == "redis").then(RedisServer::start),
            cluster: (store == "redis-cluster").then(RedisCluster::start),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// kiln's options: this DNS, this sink as every MX, the chosen store,
    /// logging at the production level.
    pub fn options(&self) -> KilnOptions {
        let mut opts = KilnOptions::new(
            &self.dir.path().join("data"),
            &self.dns.nameserver(),
            self.sink.addr.port(),
        );
        opts.redis_url = self.redis.as_ref().map(|r| r.url());
        if let Some(c) = &self.cluster {
            opts.redis_url = Some(c.nodes[0].url());
            let seeds: Vec<String> = c.urls().iter().map(|u| format!("\"{u}\"")).collect();
            opts.store = format!("redis_cluster = [{}]\n", seeds.join(", "));
        }
        opts.log_level = "info".into();
        opts
    }
}
