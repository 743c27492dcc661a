//! Debian's rspamd as a receiving filter: a private instance (its own
//! configuration, directories and port, the test's DNS server as its
//! resolver) that scores a message as a receiver would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Rspamd {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Rspamd {
    /// Starts rspamd with `nameserver` (`ip:port`) as its resolver; waits
    /// until it answers (it compiles its rules first: some seconds).
    pub fn start(nameserver: &str) -> Rspamd {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let config = dir.path().join("rspamd.conf");
        std::fs::create_dir_all(dir.path().join("override.d")).expect("override.d");
        std::fs::write(
            dir.path().join("override.d/options.inc"),
            format!(
                "dns {{ nameserver = [\"{nameserver}\"]; timeout = 2s; retransmits = 2; }}\n\
                 local_addrs = [];\n"
            ),
        )
        .expect("rspamd options");
        std::fs::write(
            &config,
            format!(
                r#".include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=10) "$LOCAL_CONFDIR/override.d/options.inc"
}}
logging {{ type = "file"; filename = "$LOGDIR/rspamd.log"; level = "info"; }}
worker "normal" {{
    bind_socket = "127.0.0.1:{port}";
    .include "$CONFDIR/worker-normal.inc"
}}
"#
            ),
        )
        .expect("rspamd config");
        let d = dir.path().display().to_string();
        let child = Command::new("rspamd")
            .args(["-f", "-u", "root", "-g", "root", "--insecure", "-c"])
            .arg(&config)
            .args(["--var", "CONFDIR=/etc/rspamd"])
            .args(["--var", &format!("LOCAL_CONFDIR={d}")])
            .args(["--var", &format!("DBDIR={d}")])
            .args(["--var", &format!("RUNDIR={d}")])
            .args(["--var", &format!("LOGDIR={d}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rspamd runs (apt-get install -y rspamd)");
        let mut r = Rspamd { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(90);
        while !r.answers() {
            assert!(
                Instant::now() < deadline,
                "rspamd did not answer in 90 s:\n{}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        r
    }

    fn answers(&mut self) -> bool {
        self.symbols(b"From: a@b.test\r\nSubject: up?\r\n\r\nyes\r\n")
            .contains("Symbol:")
    }

    /// What rspamd says of `message` (`rspamc symbols`): the symbols, one
    /// a line (`Symbol: R_DKIM_ALLOW (-0.20)[kiln.test:s=kiln]`).
    pub fn symbols(&self, message: &[u8]) -> String {
        let mut child = Command::new("rspamc")
            // As from an MTA on the Internet: rspamd checks no DKIM for
            // its local networks.
            .args([
                "-h",
                &format!("127.0.0.1:{}", self.port),
                "-i",
                "203.0.113.7",
                "symbols",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rspamc runs");
        use std::io::Write;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(message);
        }
        let out = child.wait_with_output().expect("rspamc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rspamd.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        // SIGTERM, so the main process stops its workers too.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
