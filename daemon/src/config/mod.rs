//! Settings: one struct per section, every key declared once with its
//! default (`load` reads them, `problems` checks them).
//!
//! Loaded with the `config` crate from an optional TOML file, then overridden by
//! environment variables `KILN_SECTION__KEY` (e.g. `KILN_DELIVERY__MX_PORT=2526`).

mod load;
mod problems;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Load {
        file: String,
        source: config::ConfigError,
    },
    #[error("environment variable {var}: {problem}")]
    Env { var: String, problem: String },
    #[error("{}", .problems.join("\n"))]
    Invalid { problems: Vec<String> },
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub smtp: SmtpSettings,
    pub http: HttpSettings,
    pub store: StoreSettings,
    pub dns: DnsSettings,
    pub delivery: DeliverySettings,
    pub queue: QueueSettings,
    pub dkim: DkimSettings,
    pub log: LogSettings,
    pub policy: PolicyConfig,
    pub platform: PlatformSettings,
    pub callbacks: CallbackSettings,
    pub tracking: TrackingSettings,
    pub accounts: Vec<AccountSettings>,
}

/// Open and click tracking in HTML parts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackingSettings {
    pub enabled: bool,
    /// Signs the tracking URLs; empty: a random secret kept in the store
    /// (shared by a cluster's nodes).
    pub secret: String,
    /// Where the public reaches Kiln's HTTP listener, e.g.
    /// `https://t.example.com`; empty: `http://<server.hostname>`.
    pub base_url: String,
    /// A base URL of its own per sender domain.
    pub hosts: std::collections::HashMap<String, String>,
    /// Tracking requests a client address may make per second.
    pub rate_per_ip: u32,
}

impl Default for TrackingSettings {
    fn default() -> Self {
        TrackingSettings {
            enabled: true,
            secret: String::new(),
            base_url: String::new(),
            hosts: Default::default(),
            rate_per_ip: 50,
        }
    }
}

/// Event callbacks (HTTP POSTs to the customers' receivers).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbackSettings {
    /// Per request.
    #[serde(with = "humantime_secs")]
    pub timeout: Duration,
    /// How long a callback is retried before it is dropped.
    #[serde(with = "humantime_secs")]
    pub max_age: Duration,
    /// Requests in flight on this node, all receivers together.
    pub concurrency: usize,
    /// The first retry's delay (ms); each next one doubles, up to 30 min.
    pub retry_base_ms: u64,
    /// Events per POST (a JSON array when more than one); 1 sends each
    /// event on its own.
    pub batch_max: usize,
    /// Internal networks (loopback, private, link-local ...) a callback
    /// may be sent to; none by default: callbacks go to public addresses.
    pub allow_networks: Vec<String>,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings {
            timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(24 * 3600),
            concurrency: 32,
            retry_base_ms: 10_000,
            batch_max: 1,
            allow_networks: Vec::new(),
        }
    }
}

/// The sending platform behind the API: what a sender domain must publish,
/// and the limits on what an account may create.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformSettings {
    /// The MX host a sender domain points at (bounces and replies come
    /// back to Kiln); empty means `server.hostname`.
    pub mx_host: String,
    /// The SPF record a sender domain includes; empty means
    /// `_spf.<server.hostname>`.
    pub spf_include: String,
    /// Sender domains per account.
    pub max_identities: usize,
    /// Sender addresses per account.
    pub max_addresses: usize,
    /// Templates per account.
    pub max_templates: usize,
    /// Whether SendEmail may carry its own content (`Simple`) instead of a
    /// template; the service it reproduces allows it only on request.
    pub allow_simple: bool,
    /// Largest TemplateData, in bytes.
    pub max_template_data: usize,
    /// The domain of the VERP return paths (its MX must be Kiln), where
    /// bounces and complaints come back; empty: mail leaves with the
    /// sender's own address and only synchronous bounces are seen.
    pub bounce_domain: String,
    /// With `bounce_domain` set: a verified sender domain that also
    /// publishes an MX and SPF record for `<label>.<domain>` (shown by
    /// CreateEmailIdentity and GetEmailIdentity) gets its return paths
    /// there, so SPF passes aligned with the From domain for DMARC.
    /// Empty: every return path is on `bounce_domain`.
    pub return_path_label: String,
}

impl Default for PlatformSettings {
    fn default() -> Self {
        PlatformSettings {
            mx_host: String::new(),
            spf_include: String::new(),
            max_identities: 10,
            max_addresses: 100,
            max_templates: 1000,
            allow_simple: false,
            max_template_data: 64 * 1024,
            bounce_domain: String::new(),
            return_path_label: "bounces".into(),
        }
    }
}

impl Settings {
    /// The address TLS reports come from (`delivery.tls_report_from`, else
    /// `tls-reports@` the server's hostname).
    pub fn tls_report_from(&self) -> String {
        if self.delivery.tls_report_from.is_empty() {
            format!("tls-reports@{}", self.server.hostname)
        } else {
            self.delivery.tls_report_from.clone()
        }
    }

    pub fn mx_host(&self) -> String {
        if self.platform.mx_host.is_empty() {
            self.server.hostname.clone()
        } else {
            self.platform.mx_host.clone()
        }
    }

    /// `<return_path_label>.<domain>`, when return paths may go there
    /// (a bounce domain is set and the label is not empty).
    pub fn return_path_domain(&self, domain: &str) -> Option<String> {
        let label = self.platform.return_path_label.trim();
        (!self.platform.bounce_domain.is_empty() && !label.is_empty()).then(|| {
            format!(
                "{}.{}",
                label.to_ascii_lowercase(),
                domain.to_ascii_lowercase()
            )
        })
    }

    pub fn spf_include(&self) -> String {
        if self.platform.spf_include.is_empty() {
            format!("_spf.{}", self.server.hostname)
        } else {
            self.platform.spf_include.clone()
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Where the default plugins are read from (built-in copies fill gaps).
    pub plugins_dir: PathBuf,
    /// The operator's policy script; absent means the plugins as they are.
    pub script: PathBuf,
    /// IANA time zone in which days (daily quotas, warm-up) are counted.
    pub time_zone: String,
    /// Lua states, i.e. hooks that can run at once.
    pub states: usize,
    /// Per hook call.
    pub max_instructions: u64,
    #[serde(with = "humantime_secs")]
    pub timeout: Duration,
    /// Per Lua state.
    pub max_memory_mb: usize,
    /// The most text (KB) one hook call is handed (a template under
    /// review: its HTML and text).
    pub max_input_kb: usize,
    /// The most of a message's decoded text, and of its HTML, that
    /// `content_filter` reads (`msg.body`), in KB.
    pub max_body_kb: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            plugins_dir: PathBuf::from("plugins"),
            script: PathBuf::from("scripts/policy.lua"),
            time_zone: "UTC".into(),
            states: std::thread::available_parallelism()
                .map(|n| n.get() * 4)
                .unwrap_or(8),
            max_instructions: 10_000_000,
            timeout: Duration::from_secs(2),
            max_memory_mb: 64,
            max_input_kb: 4096,
            max_body_kb: 1024,
        }
    }
}

impl PolicyConfig {
    pub fn to_settings(&self) -> Result<crate::policy::PolicySettings, String> {
        let time_zone = jiff::tz::TimeZone::get(&self.time_zone)
            .map_err(|e| format!("policy.time_zone: {:?}: {e}", self.time_zone))?;
        Ok(crate::policy::PolicySettings {
            plugins_dir: self.plugins_dir.clone(),
            script: self.script.clone(),
            time_zone,
            states: self.states,
            max_instructions: self.max_instructions,
            max_memory_mb: self.max_memory_mb,
            timeout: self.timeout,
            max_input_kb: self.max_input_kb,
            max_body_kb: self.max_body_kb,
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Name used in the SMTP greeting and in EHLO towards remote MXs.
    pub hostname: String,
    /// Identifies this node in queue leases (defaults to hostname + pid).
    pub node_id: String,
    /// Directory for the embedded store, generated TLS certificates, etc.
    pub data_dir: PathBuf,
    /// Lets `POST /admin/clock` move this process's clock forward: for
    /// tests of day boundaries. Never on in production.
    pub test_clock: bool,
}

/// A DKIM key's algorithm; the names are the config file's, the stored
/// keys' and the `k=` tag's.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    /// RSA, 2048 bits (1024 where a domain asks for it).
    Rsa,
    Ed25519,
}

impl DkimAlgorithm {
    pub const fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::Rsa => "rsa",
            DkimAlgorithm::Ed25519 => "ed25519",
        }
    }

    /// `rsa` or `ed25519`, as a request names it.
    pub fn parse(text: &str) -> Option<DkimAlgorithm> {
        match text {
            "rsa" => Some(DkimAlgorithm::Rsa),
            "ed25519" => Some(DkimAlgorithm::Ed25519),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event, for people.
    Human,
    /// One JSON object per line, for a log collector.
    Json,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// Plain text, STARTTLS offered.
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plain text, no STARTTLS offered.
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    pub address: SocketAddr,
    #[serde(default = "default_listener_tls")]
    pub tls: ListenerTls,
    /// A trusted listener allows AUTH on a connection without TLS.
    #[serde(default)]
    pub trusted: bool,
    /// Client networks (CIDR) allowed to relay without AUTH, like Postfix's mynetworks.
    #[serde(default)]
    pub relay_networks: Vec<String>,
}

fn default_listener_tls() -> ListenerTls {
    ListenerTls::Starttls
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpSettings {
    pub listeners: Vec<ListenerSettings>,
    /// PEM certificate chain and key; a self-signed pair is generated when unset.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_line_length: usize,
    pub max_connections: usize,
    /// Sessions one client may hold at once (an IPv6 client: its /64);
    /// clients in a listener's relay networks are not limited one by one.
    pub max_connections_per_ip: usize,
    #[serde(with = "humantime_secs")]
    pub command_timeout: Duration,
    /// The longest a DATA section may take, however fast it arrives.
    #[serde(with = "humantime_secs")]
    pub data_timeout: Duration,
    /// After this long in DATA, the client must have sent at least
    /// `min_data_rate` bytes a second on average, or it is cut off.
    #[serde(with = "humantime_secs")]
    pub data_rate_grace: Duration,
    /// Bytes a second; 0 turns the rate check off.
    pub min_data_rate: u64,
    /// Errors a client may make before it is disconnected.
    pub max_errors: usize,
    /// AUTH failures from one client address (an IPv6 client: its /64)
    /// within `auth_failure_window` before AUTH from it is refused.
    pub auth_max_failures_per_ip: u64,
    /// AUTH failures for one user name, from anywhere, within the window
    /// before AUTH as that user is refused.
    pub auth_max_failures_per_user: u64,
    #[serde(with = "humantime_secs")]
    pub auth_failure_window: Duration,
    /// Whether a recipient may be an address literal (`x@[192.0.2.1]`).
    pub address_literals: bool,
    /// Networks (CIDR) a literal may name even though they are internal
    /// (loopback, private, link-local ...); others are always refused.
    pub literal_networks: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    /// Count metrics and answer `GET /metrics` (false: nothing counted).
    pub metrics: bool,
    /// Networks (CIDR) besides loopback whose clients may read
    /// `GET /metrics`, e.g. the Prometheus server's.
    pub metrics_networks: Vec<String>,
    /// Connections open at once, all clients together, and from one
    /// client (an IPv6 client: its /64); past them a connection gets `503`.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// HTTPS: the certificate chain and key (PEM), both or neither; read
    /// again on reload. Without them the listener speaks plain HTTP (for a
    /// proxy in front that terminates TLS).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A request's headers must arrive whole within this (an idle
    /// keep-alive connection is closed after it too).
    #[serde(with = "humantime_secs")]
    pub header_timeout: Duration,
    /// A request's body must arrive within `body_timeout`, and after
    /// `body_rate_grace` at `min_body_rate` bytes a second on average.
    #[serde(with = "humantime_secs")]
    pub body_timeout: Duration,
    #[serde(with = "humantime_secs")]
    pub body_rate_grace: Duration,
    pub min_body_rate: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Embedded,
    Redis,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    /// Embedded store file; relative paths are under `server.data_dir`.
    pub path: PathBuf,
    /// One Redis server (unless `redis_cluster` or `redis_sentinels` is
    /// set).
    pub redis_url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:7000/`, ...): the
    /// store is that cluster, its queue sharded over the masters.
    pub redis_cluster: Vec<String>,
    /// Queue shards, fixed by the first node that uses the store; 0: one
    /// on a single Redis or Sentinel's master, 24 on a Redis Cluster.
    pub redis_queue_shards: u16,
    /// Redis Sentinels (`redis://host:26379/`, ...): the store is the
    /// master they name `redis_sentinel_master`, followed across failovers.
    pub redis_sentinels: Vec<String>,
    pub redis_sentinel_master: String,
    /// Redis replicas that must have a new message before it is
    /// acknowledged (`WAIT`); 0: the master's word is enough.
    pub redis_wait_replicas: u32,
    /// How long to wait for them, in milliseconds; past it the message is
    /// refused for now (SMTP 451 4.3.0, the API's internal error).
    pub redis_wait_timeout_ms: u64,
    /// How long a command is tried again through a Redis Cluster's or
    /// Sentinel's failover before its caller hears the error (and a
    /// client a temporary failure), in milliseconds.
    pub redis_failover_timeout_ms: u64,
    /// Key prefix (hash tag) shared by all nodes of one cluster.
    pub redis_prefix: String,
    /// Embedded store: new messages are refused (SMTP 452 4.3.1) while
    /// its disk has less free than this, kept for settling what is queued;
    /// 0 turns the check off.
    pub min_free_mb: u64,
}

impl StoreSettings {
    /// The Redis the settings name: the cluster when `redis_cluster` is
    /// set, the Sentinels' master when `redis_sentinels` is, else
    /// `redis_url`.
    pub fn redis_target(&self) -> crate::store::redis::RedisTarget {
        use crate::store::redis::RedisTarget;
        if !self.redis_cluster.is_empty() {
            RedisTarget::Cluster(self.redis_cluster.clone())
        } else if self.redis_sentinels.is_empty() {
            RedisTarget::Url(self.redis_url.clone())
        } else {
            RedisTarget::Sentinel {
                sentinels: self.redis_sentinels.clone(),
                master: self.redis_sentinel_master.clone(),
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSettings {
    /// `ip:port` of recursive resolvers; empty uses the system's resolv.conf.
    pub nameservers: Vec<String>,
    #[serde(with = "humantime_secs")]
    pub timeout: Duration,
    /// `resolver`: trust the AD flag of the resolvers above (they must
    /// validate DNSSEC), and with it apply DANE (RFC 7672); `off`: no DANE.
    pub dnssec: Dnssec,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dnssec {
    #[default]
    Off,
    Resolver,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    pub mx_port: u16,
    /// Simultaneous connections to one destination domain. Its line holds
    /// four entries per connection, or about a second's worth at the pace
    /// it takes mail; the rest wait in the queue.
    pub max_connections_per_destination: usize,
    /// Delivery attempts running at once on this node, all destinations
    /// together. The node holds up to four times as many queue entries in
    /// destinations' lines; an entry waiting in a line holds no attempt.
    pub max_in_flight: usize,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    #[serde(with = "humantime_secs")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_secs")]
    pub idle_timeout: Duration,
    /// Destination domains that must be reached over verified TLS.
    pub require_tls_domains: Vec<String>,
    /// Extra PEM CA bundle trusted when verifying remote certificates.
    #[serde(alias = "tls_roots")]
    pub tls_ca_file: Option<PathBuf>,
    /// Honour receiving domains' MTA-STS policies (RFC 8461): in `enforce`
    /// mode, mail goes only to the MX hosts the policy names, over TLS
    /// verified for them, or waits.
    pub mta_sts: bool,
    /// Send receiving domains that ask for them (`_smtp._tls`) the day's
    /// TLS reports (RFC 8460).
    pub tls_reports: bool,
    /// The address TLS reports come from; its domain signs them (DKIM).
    /// Empty: `tls-reports@` the server's hostname.
    pub tls_report_from: String,
    /// Internal networks (loopback, private, link-local ...) where the
    /// HTTPS hosts a receiving domain names, its MTA-STS policy host and
    /// its TLS report endpoint, may be; none by default: those are asked
    /// at public addresses only.
    pub https_allow_networks: Vec<String>,
    /// Source address for outgoing connections.
    pub source_address: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Delays between attempts, in seconds; the last one repeats.
    pub retry_schedule: Vec<u64>,
    /// Give up this long after the message was accepted.
    #[serde(with = "humantime_secs")]
    pub max_age: Duration,
    /// How long a node owns a leased message before others may take it over.
    #[serde(with = "humantime_secs")]
    pub lease_time: Duration,
    /// How long a delivery status record is kept after the last change.
    #[serde(with = "humantime_secs")]
    pub status_retention: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DkimSettings {
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    pub sign_headers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info,kiln=debug`.
    pub level: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSettings {
    pub name: String,
    pub username: String,
    pub password: String,
    /// Sender domains this account may use; empty allows any.
    #[serde(default)]
    pub domains: Vec<String>,
    /// API credentials (TC3-HMAC-SHA256), as the Tencent Cloud SDKs use.
    #[serde(default)]
    pub secret_id: Option<String>,
    #[serde(default)]
    pub secret_key: Option<String>,
    /// Where the account's events are POSTed, and the secret they are
    /// signed with.
    #[serde(default)]
    pub callback_url: Option<String>,
    #[serde(default)]
    pub callback_secret: Option<String>,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            dnssec: Dnssec::Off,
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            hostname: "localhost".into(),
            node_id: String::new(),
            data_dir: PathBuf::from("./data"),
            test_clock: false,
        }
    }
}

impl Default for SmtpSettings {
    fn default() -> Self {
        SmtpSettings {
            listeners: vec![ListenerSettings {
                address: SocketAddr::from(([127, 0, 0, 1], 2525)),
                tls: ListenerTls::Starttls,
                trusted: false,
                relay_networks: Vec::new(),
            }],
            tls_cert: None,
            tls_key: None,
            max_message_size: 4 * 1024 * 1024,
            max_recipients: 50,
            max_line_length: 1000,
            max_connections: 1000,
            max_connections_per_ip: 20,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            data_rate_grace: Duration::from_secs(30),
            min_data_rate: 1024,
            max_errors: 10,
            auth_max_failures_per_ip: 10,
            auth_max_failures_per_user: 20,
            auth_failure_window: Duration::from_secs(900),
            address_literals: false,
            literal_networks: Vec::new(),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics: true,
            metrics_networks: Vec::new(),
            max_connections: 1024,
            max_connections_per_ip: 64,
            tls_cert: None,
            tls_key: None,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(120),
            body_rate_grace: Duration::from_secs(10),
            min_body_rate: 4096,
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            backend: StoreBackend::Embedded,
            path: PathBuf::from("kiln.redb"),
            redis_url: "redis://127.0.0.1:6379/".into(),
            redis_cluster: Vec::new(),
            redis_queue_shards: 0,
            redis_sentinels: Vec::new(),
            redis_sentinel_master: String::new(),
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: 1000,
            redis_failover_timeout_ms: 15_000,
            redis_prefix: "kiln".into(),
            min_free_mb: crate::store::embedded::space::DEFAULT_RESERVE >> 20,
        }
    }
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            mx_port: 25,
            max_connections_per_destination: 16,
            max_in_flight: 512,
            max_messages_per_connection: 1000,
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(5),
            require_tls_domains: Vec::new(),
            tls_ca_file: None,
            mta_sts: true,
            tls_reports: true,
            tls_report_from: String::new(),
            https_allow_networks: Vec::new(),
            source_address: None,
        }
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            retry_schedule: vec![60, 300, 900, 1800, 3600, 7200, 14400],
            max_age: Duration::from_secs(72 * 3600),
            lease_time: Duration::from_secs(300),
            status_retention: Duration::from_secs(30 * 86400),
        }
    }
}

impl Default for DkimSettings {
    fn default() -> Self {
        DkimSettings {
            selector: "kiln".into(),
            algorithm: DkimAlgorithm::Rsa,
            sign_headers: [
                "From",
                "To",
                "Cc",
                "Subject",
                "Date",
                "Message-ID",
                "Reply-To",
                "MIME-Version",
                "Content-Type",
                "Content-Transfer-Encoding",
                "List-Unsubscribe",
                "List-Unsubscribe-Post",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

impl Settings {
    /// The largest message the API or a batch task may build: content up
    /// to `smtp.max_message_size` (the product's 4 MB, attachments
    /// included), base64-encoded, plus its headers and MIME structure.
    pub fn max_built_message_size(&self) -> usize {
        self.smtp.max_message_size.div_ceil(3) * 4 + 256 * 1024
    }

    /// The largest API request body: such a message's content as JSON
    /// carries it (base64), with its template data and the rest.
    pub fn max_api_request_size(&self) -> usize {
        self.max_built_message_size() + self.platform.max_template_data
    }

    pub fn store_path(&self) -> PathBuf {
        if self.store.path.is_absolute() {
            self.store.path.clone()
        } else {
            self.server.data_dir.join(&self.store.path)
        }
    }

    pub fn node_id(&self) -> String {
        if self.server.node_id.is_empty() {
            format!("{}-{}", self.server.hostname, std::process::id())
        } else {
            self.server.node_id.clone()
        }
    }
}

/// Durations in config files are seconds (a number).
mod humantime_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        if !(0.0..=1e9).contains(&secs) {
            return Err(serde::de::Error::custom("duration out of range"));
        }
        Ok(Duration::from_secs_f64(secs))
    }
}
