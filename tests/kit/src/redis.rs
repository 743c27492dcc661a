//! A private `redis-server` on a free port, killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    /// Append-only file, synced on every write (`appendfsync always`).
    durable: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(crate::free_port())
    }

    /// A server on `port` (one a daemon was told of before it ran).
    pub fn start_on(port: u16) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = spawn(port, dir.path(), false);
        RedisServer {
            port,
            child,
            dir,
            durable: false,
        }
    }

    /// A server that keeps what it acknowledged across a crash, as
    /// README recommends: AOF with `appendfsync always`.
    pub fn durable() -> RedisServer {
        let port = crate::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = spawn(port, dir.path(), true);
        RedisServer {
            port,
            child,
            dir,
            durable: true,
        }
    }

    /// `kill -9`: gone at once, with whatever it had not written.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again on the same port and files (after [`Self::kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        self.child = spawn(self.port, self.dir.path(), self.durable);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

fn spawn(port: u16, dir: &std::path::Path, durable: bool) -> Child {
    spawn_with(port, dir, durable, &[])
}

fn spawn_with(port: u16, dir: &std::path::Path, durable: bool, extra: &[String]) -> Child {
    let persistence: &[&str] = if durable {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--appendonly", "no"]
    };
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(persistence)
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A master with two replicas and one Sentinel watching them under the name
/// [`SentinelSet::MASTER`] (quorum 1, a master down after a second): a
/// failover takes a few seconds, and leaves a replica behind the new
/// master. Killed on drop.
pub struct SentinelSet {
    pub master: RedisServer,
    pub replicas: Vec<RedisServer>,
    pub sentinel_port: u16,
    sentinel: Child,
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    pub const MASTER: &'static str = "kiln";

    pub fn start() -> SentinelSet {
        // The master sends its first copy to a replica at once (Redis waits
        // 5 s for more replicas by default).
        let master = server_with(&["--repl-diskless-sync-delay".into(), "0".into()]);
        let replicas = (0..2)
            .map(|_| {
                server_with(&[
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    master.port.to_string(),
                    "--repl-diskless-sync-delay".into(),
                    "0".into(),
                ])
            })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let sentinel_port = crate::free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {m} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {m} 1000\n\
                 sentinel failover-timeout {m} 5000\n",
                dir.path().display(),
                master.port,
                m = Self::MASTER,
            ),
        )
        .expect("sentinel.conf");
        let sentinel = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let set = SentinelSet {
            master,
            replicas,
            sentinel_port,
            sentinel,
            _dir: dir,
        };
        // Ready when the replicas have their first copy and the Sentinel
        // names the master and sees them.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = redis_cli(set.sentinel_port, &["SENTINEL", "replicas", Self::MASTER]);
            let ready = set.replicas.iter().all(|r| {
                seen.contains(&r.port.to_string())
                    && redis_cli(r.port, &["INFO", "replication"]).contains("master_link_status:up")
            });
            if ready && set.master_port() == Some(set.master.port) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinel did not see the master and its replicas"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        set
    }

    pub fn sentinel_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.sentinel_port)
    }

    /// The port of the master the Sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let out = redis_cli(
            self.sentinel_port,
            &["SENTINEL", "get-master-addr-by-name", Self::MASTER],
        );
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// Whether the Sentinel names one of the replicas the master now.
    pub fn promoted(&self) -> bool {
        self.master_port()
            .is_some_and(|p| self.replicas.iter().any(|r| r.port == p))
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
    }
}

/// A server on a free port with `extra` arguments.
fn server_with(extra: &[String]) -> RedisServer {
    let port = crate::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let child = spawn_with(port, dir.path(), false, extra);
    RedisServer {
        port,
        child,
        dir,
        durable: false,
    }
}

/// `redis-cli -p PORT ARGS...`: its output, or "" when it could not run.
fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A Redis Cluster of three masters, each with a replica, made by
/// `redis-cli --cluster create` (slots split in three equal ranges); a
/// master down after a second (`cluster-node-timeout`), so a failover
/// takes a few seconds. Killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                server_with(&[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    // Beside the port, not port + 10000 (past 65535 for a
                    // high free port).
                    "--cluster-port".into(),
                    crate::free_port().to_string(),
                    "--cluster-node-timeout".into(),
                    "1000".into(),
                    "--cluster-replica-validity-factor".into(),
                    "0".into(),
                    "--repl-diskless-sync-delay".into(),
                    "0".into(),
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let made = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(
            made.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&made.stdout)
        );
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.settled() {
            assert!(Instant::now() < deadline, "the cluster did not settle");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// Every node says the cluster is ok, knows all six, and every
    /// replica has its first copy.
    pub fn settled(&self) -> bool {
        self.nodes.iter().all(|n| {
            let info = redis_cli(n.port, &["CLUSTER", "INFO"]);
            let repl = redis_cli(n.port, &["INFO", "replication"]);
            info.contains("cluster_state:ok")
                && info.contains("cluster_known_nodes:6")
                && (repl.contains("role:master") || repl.contains("master_link_status:up"))
        })
    }

    /// The seed list Kiln is given: every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The ports of the masters, as a live node sees them now.
    pub fn masters(&self) -> Vec<u16> {
        let Some(alive) = self.nodes.iter().find(|n| n.alive()) else {
            return Vec::new();
        };
        redis_cli(alive.port, &["CLUSTER", "NODES"])
            .lines()
            .filter(|l| {
                let flags = l.split(' ').nth(2).unwrap_or("");
                flags.contains("master") && !flags.contains("fail")
            })
            .filter_map(|l| {
                let addr = l.split(' ').nth(1)?;
                addr.split(['@', ','])
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// `DBSIZE` of each master now, by port.
    pub fn keys_per_master(&self) -> Vec<(u16, u64)> {
        self.masters()
            .into_iter()
            .map(|p| (p, redis_cli(p, &["DBSIZE"]).trim().parse().unwrap_or(0)))
            .collect()
    }

    pub fn node(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }
}

impl RedisServer {
    /// Whether it answers PING.
    pub fn alive(&self) -> bool {
        redis_cli(self.port, &["PING"]).contains("PONG")
    }
}

/// `redis-cli -p PORT ARGS...` for tests: its output.
pub fn redis_cli_at(port: u16, args: &[&str]) -> String {
    redis_cli(port, args)
}

/// Commands the server on `port` has run since it started
/// (`total_commands_processed`).
pub fn commands_processed(port: u16) -> u64 {
    redis_cli(port, &["INFO", "stats"])
        .lines()
        .find_map(|l| l.trim().strip_prefix("total_commands_processed:"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl RedisCluster {
    /// Moves `slots` slots from the master on `from` to the one on `to`
    /// (`redis-cli --cluster reshard`), keys and all; the tool's output.
    pub fn reshard(&self, from: u16, to: u16, slots: u32) -> String {
        let id = |port: u16| redis_cli(port, &["CLUSTER", "MYID"]).trim().to_string();
        let out = Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// CPU the server on `port` has used since it started, in seconds
/// (`used_cpu_user` + `used_cpu_sys`).
pub fn cpu_seconds(port: u16) -> f64 {
    redis_cli(port, &["INFO", "cpu"])
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            ["used_cpu_user", "used_cpu_sys"]
                .contains(&k)
                .then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

impl RedisCluster {
    /// The port of the master that serves `slot`, as a live node sees it.
    pub fn owner_of(&self, slot: u16) -> Option<u16> {
        let alive = self.nodes.iter().find(|n| n.alive())?;
        redis_cli(alive.port, &["CLUSTER", "NODES"])
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let serves = f.iter().skip(8).any(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
                });
                if !(f.get(2)?.contains("master") && serves) {
                    return None;
                }
                f.get(1)?.split(['@', ',']).next()?.rsplit(':').next()?.parse().ok()
            })
    }
}
