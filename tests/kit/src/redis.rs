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
