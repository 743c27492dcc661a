//! The `kiln` binary as a child process, with a config written for the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Kiln {
    pub smtp: SocketAddr,
    pub smtp_tls: SocketAddr,
    pub http: SocketAddr,
    pub config: PathBuf,
    /// The policy script the config points at (tests rewrite it and reload).
    pub policy: PathBuf,
    /// The data directory (its admin.token authorises admin requests).
    pub data_dir: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    log_level: String,
    /// More environment for the process (what a deploy script leaves).
    env: Vec<(String, String)>,
}

/// What a test changes from the defaults; the rest of the TOML is generated.
pub struct KilnOptions {
    pub data_dir: PathBuf,
    pub nameserver: String,
    pub mx_port: u16,
    /// `embedded` or a redis:// URL.
    pub redis_url: Option<String>,
    /// Extra TOML appended verbatim (sections of its own).
    pub extra: String,
    /// `queue.lease_time`, short where a test waits for a dead node's leases.
    pub lease_time_secs: u64,
    /// Extra settings for the [queue] section.
    pub queue: String,
    /// Extra settings for the [server] section.
    pub server: String,
    /// Extra settings for the [delivery] section.
    pub delivery: String,
    /// Extra settings for the [dns] section.
    pub dns: String,
    /// Environment variables the daemon starts with.
    pub env: Vec<(String, String)>,
    /// Extra settings for the first listener (e.g. relay networks).
    pub listener: String,
    /// Extra settings for the [smtp] section.
    pub smtp: String,
    /// Extra settings for the [http] section.
    pub http: String,
    /// Extra settings for the [store] section.
    pub store: String,
    /// The [callbacks] section: the tests' receivers listen on loopback,
    /// which callbacks reach only when listed.
    pub callbacks: String,
    pub node_id: String,
    /// The policy script (Lua) the daemon runs; by default the plugins with
    /// limits raised out of the way of tests that are not about limits.
    pub policy: String,
    /// `KILN_LOG__LEVEL`; tests log commands and replies, the benchmark
    /// logs what production logs.
    pub log_level: String,
}

/// The default plugins, configured so that volume never trips a limit.
pub const PERMISSIVE_POLICY: &str = r#"
return { config = {
  limits = { rate_per_second = 1e9, account_daily_limit = 1e12, per_recipient_per_hour = 1e12 },
  reputation = { initial_level = 20 },
  warmup = { curve = { 1e12 } },
} }
"#;

/// The plugin directory of this repository.
pub fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins")
}

impl KilnOptions {
    pub fn new(data_dir: &Path, nameserver: &str, mx_port: u16) -> KilnOptions {
        KilnOptions {
            data_dir: data_dir.to_path_buf(),
            nameserver: nameserver.to_string(),
            mx_port,
            redis_url: None,
            extra: String::new(),
            lease_time_secs: 30,
            queue: String::new(),
            server: String::new(),
            delivery: String::new(),
            dns: String::new(),
            env: Vec::new(),
            listener: String::new(),
            smtp: String::new(),
            http: String::new(),
            store: String::new(),
            callbacks: "allow_networks = [\"127.0.0.0/8\", \"::1/128\"]\n".into(),
            node_id: "node-a".into(),
            log_level: "info,kiln=debug".into(),
            policy: PERMISSIVE_POLICY.into(),
        }
    }

    /// Writes the config (listening on `smtp`, `smtp_tls` and `http`) and
    /// the policy script into the data directory; answers their paths.
    pub fn write_files(
        &self,
        smtp: SocketAddr,
        smtp_tls: SocketAddr,
        http: SocketAddr,
    ) -> (PathBuf, PathBuf) {
        let opts = self;
        std::fs::create_dir_all(&opts.data_dir).expect("data dir");
        let config = opts.data_dir.join(format!("kiln-{}.toml", opts.node_id));
        let policy = opts.data_dir.join(format!("policy-{}.lua", opts.node_id));
        std::fs::write(&policy, &opts.policy).expect("write policy");
        let store = match &opts.redis_url {
            Some(url) => format!("backend = \"redis\"\nredis_url = \"{url}\"\n"),
            None => "backend = \"embedded\"\n".to_string(),
        };
        let toml = format!(
            r#"[server]
hostname = "kiln.test"
node_id = "{node}"
data_dir = "{data}"
{server}

[store]
{store}
{store_extra}
[dns]
nameservers = ["{ns}"]
timeout = 2
{dns}

[delivery]
mx_port = {mx_port}
connect_timeout = 3
idle_timeout = 2
{https_allowed}{delivery}

[policy]
script = "{policy}"
plugins_dir = "{plugins}"

[queue]
lease_time = {lease_time}
{queue}

[http]
listen = "{http}"
{http_extra}

[callbacks]
{callbacks}

[smtp]
max_errors = 50
{smtp_extra}

[[smtp.listeners]]
address = "{smtp}"
tls = "starttls"
{listener}

[[smtp.listeners]]
address = "{smtp_tls}"
tls = "implicit"

[[accounts]]
name = "shop"
username = "shop"
password = "shop-password"
domains = ["shop.test"]
secret_id = "AKIDshop"
secret_key = "shop-secret-key"

{extra}
"#,
            node = opts.node_id,
            dns = opts.dns,
            data = opts.data_dir.display(),
            ns = opts.nameserver,
            mx_port = opts.mx_port,
            lease_time = opts.lease_time_secs,
            queue = opts.queue,
            server = opts.server,
            delivery = opts.delivery,
            // The test's policy hosts and report endpoints are on loopback
            // addresses; a test that sets the list plays the default.
            https_allowed = if opts.delivery.contains("https_allow_networks") {
                ""
            } else {
                "https_allow_networks = [\"127.0.0.0/8\"]\n"
            },
            policy = policy.display(),
            plugins = plugins_dir().display(),
            listener = opts.listener,
            smtp_extra = opts.smtp,
            http_extra = opts.http,
            store_extra = opts.store,
            callbacks = opts.callbacks,
            // `{http}` in the extra TOML: this instance's HTTP address.
            extra = opts.extra.replace("{http}", &http.to_string()),
        );
        std::fs::write(&config, toml).expect("write config");
        (config, policy)
    }
}

impl Kiln {
    /// A daemon on fresh ports with its files written, not started.
    fn prepared(binary: &Path, opts: &KilnOptions) -> Kiln {
        let free_addr = || SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let (smtp, smtp_tls, http) = (free_addr(), free_addr(), free_addr());
        let (config, policy) = opts.write_files(smtp, smtp_tls, http);
        Kiln {
            smtp,
            smtp_tls,
            http,
            config,
            policy,
            data_dir: opts.data_dir.clone(),
            binary: binary.to_path_buf(),
            child: None,
            log: opts.data_dir.join(format!("kiln-{}.log", opts.node_id)),
            log_level: opts.log_level.clone(),
            env: opts.env.clone(),
        }
    }

    /// Starts the daemon without waiting for its ports (one that waits for
    /// a peer before it serves); [`Kiln::wait_ready`] waits.
    pub fn launch(binary: &Path, opts: &KilnOptions) -> Kiln {
        let mut kiln = Kiln::prepared(binary, opts);
        kiln.child = Some(kiln.command_spawn());
        kiln
    }

    /// How the process ended, once it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits until the daemon answers on its ports (at most `timeout`).
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(self.smtp).is_ok()
                && std::net::TcpStream::connect(self.http).is_ok()
            {
                return true;
            }
            if !self.running() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    pub fn start(binary: &Path, opts: &KilnOptions) -> Kiln {
        let mut tries = 0;
        loop {
            let mut kiln = Kiln::prepared(binary, opts);
            match kiln.try_spawn() {
                Ok(()) => return kiln,
                // Another process took a port between the test's choice
                // and the daemon's bind: other ports, then.
                Err(log) if log.contains("Address already in use") && tries < 5 => tries += 1,
                Err(log) => panic!("kiln did not start:\n{log}"),
            }
        }
    }

    /// A daemon on a config file written by the test as an operator would
    /// (`toml`, kept in `data_dir/kiln.toml`), listening where it says
    /// (`smtp`, `http`), with `env` in its environment.
    pub fn start_configured(
        binary: &Path,
        data_dir: &Path,
        toml: &str,
        smtp: SocketAddr,
        http: SocketAddr,
        env: &[(&str, &str)],
    ) -> Kiln {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let config = data_dir.join("kiln.toml");
        std::fs::write(&config, toml).expect("write config");
        let mut kiln = Kiln {
            smtp,
            smtp_tls: smtp,
            http,
            config,
            policy: data_dir.join("policy.lua"),
            data_dir: data_dir.to_path_buf(),
            binary: binary.to_path_buf(),
            child: None,
            log: data_dir.join("kiln.log"),
            log_level: "info,kiln=debug".into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        kiln.spawn();
        kiln
    }

    /// (Re)starts the process on the same config and waits for its ports.
    pub fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("kiln did not start:\n{log}");
        }
    }

    /// The daemon's process, its log appended to the log file.
    fn command_spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        Command::new(&self.binary)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("KILN_LOG__LEVEL", &self.log_level)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kiln")
    }

    /// Starts the process and waits for its ports; on failure, the log.
    fn try_spawn(&mut self) -> Result<(), String> {
        self.child = Some(self.command_spawn());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = std::net::TcpStream::connect(self.smtp).is_ok()
                && std::net::TcpStream::connect(self.http).is_ok();
            if up {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("kiln exited with {status}:\n{}", self.log_text()));
            }
            if Instant::now() >= deadline {
                return Err(format!("kiln did not start in 30 s:\n{}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The operator token the daemon made in its data directory.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("the daemon made its admin token")
            .trim()
            .to_string()
    }

    /// A GET of an admin endpoint, with the operator token.
    pub async fn admin_get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.admin(reqwest::Method::GET, path).await
    }

    /// A POST to an admin endpoint, with the operator token.
    pub async fn admin_post(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.admin(reqwest::Method::POST, path).await
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::Result<reqwest::Response> {
        reqwest::Client::new()
            .request(method, format!("http://{}{path}", self.http))
            .bearer_auth(self.admin_token())
            .send()
            .await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a `kiln` subcommand against this instance's config.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.binary)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run kiln")
    }

    /// Like [`Self::command`], without blocking the runtime: for a command
    /// run while the test's other tasks keep going.
    pub async fn command_async(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(&self.binary)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .await
            .expect("run kiln")
    }

    /// The kiln binary, for a command run otherwise than [`Self::command`]
    /// does (another environment, another directory).
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for Kiln {
    fn drop(&mut self) {
        self.kill9();
    }
}
