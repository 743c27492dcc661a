//! The `kiln` command: run the daemon, check a config, ask a running daemon.

use clap::{Parser, Subcommand};
use kiln::config::Settings;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: a self-hosted email sending service"
)]
struct Cli {
    /// TOML configuration file; without it, `KILN_CONFIG`, then
    /// /etc/kiln/kiln.toml if it exists, then the defaults.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve,
    /// Validate a configuration file; exit 1 and name every problem.
    CheckConfig,
    /// Show a message's state and its delivery attempts (asks the daemon).
    Status { message_id: String },
    /// A message's whole story in order: how it came in, the policy's
    /// answers, DKIM, every attempt and its reply, what followed, opens,
    /// clicks, reports and callbacks (asks the daemon).
    Explain {
        message_id: String,
        /// Only this recipient's part.
        recipient: Option<String>,
        /// The story as JSON, for tools.
        #[arg(long)]
        json: bool,
    },
    /// Reload accounts, TLS certificate, DKIM keys and the policy scripts
    /// (asks the daemon; same as SIGHUP, but reports the outcome).
    Reload,
    /// The running policy: version, hooks defined, hook failures.
    Policy,
    /// Egress shaping per (provider, source): limits, connections allowed
    /// now, pace factor, suspensions, the last throttling signal.
    Egress,
    /// The Kiln nodes on this store and the store's server (asks the
    /// daemon).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// TLS reports (RFC 8460): what Kiln saw of receiving domains' TLS
    /// (asks the daemon).
    TlsReport {
        #[command(subcommand)]
        command: TlsReportCommand,
    },
    /// API accounts: each gets a SecretId and SecretKey for the SES API
    /// (asks the daemon).
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// DKIM keys (asks the daemon).
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// The queue: what is in it, and suspend, resume, bounce or retry a
    /// selection (`domain:D`, `sender_domain:D`, `provider:P`,
    /// `account:A`, `task:T`, `source:S`) on every node (asks the daemon).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// The web console (`http://<http.listen>/console`).
    Console {
        #[command(subcommand)]
        command: ConsoleCommand,
    },
    /// SMTP AUTH blocked after repeated failures (asks the daemon).
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// A sender domain's reputation: level, daily limit, today's counts.
    Domain {
        #[command(subcommand)]
        command: DomainCommand,
    },
}

#[derive(Subcommand)]
enum DomainCommand {
    /// Its level, daily limit (and whose quota), today's counts, owner.
    Show { domain: String },
    /// Put it at a level (1-20) now; the rules go on from there.
    SetLevel { domain: String, level: i64 },
    /// A daily limit of its own, instead of its level's (0: none).
    SetQuota { domain: String, quota: i64 },
    /// Forget its reputation: a new domain again.
    Reset { domain: String },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Counts by state, what operator suspensions hold, oldest age,
    /// grouped; and each suspension with the entries it holds.
    Summary {
        /// domain, sender_domain, provider, account, task, pool or state.
        #[arg(long, default_value = "domain")]
        by: String,
    },
    /// Queued recipients, a page at a time (`--cursor` from the last page).
    List {
        /// Only these, e.g. domain:example.com.
        select: Option<String>,
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// No attempt for the selection on any node until resumed.
    Suspend { select: String },
    /// Lift a suspension; what it held back is due at once.
    Resume { select: String },
    /// Bounce every queued recipient of the selection, once each, with a
    /// bounce event (and callback) giving the reason.
    Bounce {
        select: String,
        #[arg(long)]
        reason: String,
    },
    /// Make the selection due now.
    RetryNow { select: String },
    /// The suspensions and bounces in force.
    Controls,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Each node with its version, start, last heartbeat and the leases it
    /// holds; the store's server: version, role, replicas connected.
    Status,
}

#[derive(Subcommand)]
enum TlsReportCommand {
    /// The report DOMAIN would get for a day (today unless --day), in the
    /// RFC's JSON: its sessions by policy, failures by result type and MX.
    Show {
        domain: String,
        /// A UTC day, YYYY-MM-DD.
        #[arg(long)]
        day: Option<String>,
    },
    /// Sends the reports due now, today's so far included, to the domains
    /// that ask for them (`_smtp._tls`), and prints what became of each.
    Send,
}

#[derive(Subcommand)]
enum ConsoleCommand {
    /// Print the operator token the console's operator sign-in asks for
    /// (the daemon's admin token; run as the daemon's user).
    Token,
}

#[derive(Subcommand)]
enum AuthCommand {
    /// What is blocked now: client addresses (`ip:...`) and user names
    /// (`user:...`).
    Blocked,
    /// Lift a block and forget its failures, e.g. `ip:192.0.2.7` or
    /// `user:shop`.
    Unblock { subject: String },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account; prints its SecretId and SecretKey as JSON.
    Create { name: String },
    /// List the accounts (without their keys).
    List,
    /// Refuse the account's API requests and SMTP logins.
    Disable { name: String },
    /// Undo `disable`.
    Enable { name: String },
    /// Issue a new SecretId and SecretKey; the old ones stop working.
    RotateKey { name: String },
    /// Where the account's events are POSTed ("" to stop); with --address,
    /// one sender address's own URL. Prints the signing secret.
    Callback {
        name: String,
        url: String,
        #[arg(long)]
        address: Option<String>,
    },
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Print the DNS TXT record to publish for a domain's key.
    Show { domain: String },
    /// Generate a key for a domain (kept if it already has one).
    Create {
        domain: String,
        /// rsa (2048 bits) or ed25519; default from the config.
        #[arg(long)]
        algorithm: Option<String>,
        #[arg(long)]
        selector: Option<String>,
    },
}

/// Log lines wait in a buffer that a background thread writes out in
/// batches (`LogBuffer`), so a busy node makes about a hundred writes a
/// second instead of one or more per message. Nothing is dropped: a full
/// buffer makes callers wait. The guard writes what waits on drop; keep it
/// until the process exits.
fn init_logging(settings: &Settings) -> kiln::logging::LogBufferGuard {
    let mut filter = tracing_subscriber::EnvFilter::try_new(&settings.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The Redis client warns once per connection it retries, many times a
    // second in a failover; Kiln says once what happened. An operator's
    // level that names `redis` wins.
    if !settings.log.level.contains("redis")
        && let Ok(quiet) = "redis=error".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let (writer, guard) = match kiln::logging::LogBuffer::start(std::io::stderr()) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("kiln: cannot start the log's writer thread: {e}");
            std::process::exit(1);
        }
    };
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_writer(kiln::logging::OneLineWriters::new(writer, colours));
    if settings.log.format == kiln::config::LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    guard
}

/// Where the settings come from, as the daemon and every subcommand find
/// them: `--config`, then `KILN_CONFIG`, then /etc/kiln/kiln.toml if it
/// exists, then none (the defaults).
fn config_file(given: Option<PathBuf>) -> Option<PathBuf> {
    given
        .or_else(|| {
            std::env::var_os("KILN_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| {
            let system = PathBuf::from(SYSTEM_CONFIG);
            system.is_file().then_some(system)
        })
}

/// Prints a line of output; a reader that stopped early (`kiln ... |
/// head`) ends the command quietly instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// Which settings this run uses (said when the daemon cannot be asked).
static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The configuration file a packaged install keeps.
const SYSTEM_CONFIG: &str = "/etc/kiln/kiln.toml";

/// Which settings a subcommand used, for its error messages.
fn settings_source(file: Option<&std::path::Path>) -> String {
    match file {
        Some(f) => format!("settings from {}", f.display()),
        None => "default settings: no --config, KILN_CONFIG or /etc/kiln/kiln.toml".into(),
    }
}

fn main() -> ExitCode {
    purge_freed_memory_at_once();
    let mut cli = Cli::parse();
    cli.config = config_file(cli.config.take());
    let _ = SOURCE.set(settings_source(cli.config.as_deref()));
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::CheckConfig => check_config(&settings, cli.config.as_deref()),
        Command::Serve => serve(settings, cli.config),
        Command::Reload => admin(&settings, "POST", "/admin/reload"),
        Command::Policy => admin(&settings, "GET", "/admin/policy"),
        Command::Egress => admin(&settings, "GET", "/admin/egress"),
        Command::Cluster {
            command: ClusterCommand::Status,
        } => admin(&settings, "GET", "/admin/cluster"),
        Command::TlsReport {
            command: TlsReportCommand::Show { domain, day },
        } => {
            let day = day.map(|d| format!("?day={d}")).unwrap_or_default();
            admin(
                &settings,
                "GET",
                &format!("/admin/tls-report/{domain}{day}"),
            )
        }
        Command::TlsReport {
            command: TlsReportCommand::Send,
        } => admin(&settings, "POST", "/admin/tls-reports/send"),
        Command::Explain {
            message_id,
            recipient,
            json,
        } => {
            let mut path = format!("/admin/explain/{}", encode_query(&message_id));
            if let Some(r) = recipient {
                path.push_str(&format!("?recipient={}", encode_query(&r)));
            }
            if json {
                admin(&settings, "GET", &path)
            } else {
                admin_text(&settings, &path, "text")
            }
        }
        Command::Status { message_id } => {
            admin(&settings, "GET", &format!("/admin/messages/{message_id}"))
        }
        Command::Account { command } => account(&settings, command),
        Command::Queue { command } => queue(&settings, command),
        Command::Console {
            command: ConsoleCommand::Token,
        } => console_token(&settings),
        Command::Domain { command } => domain(&settings, command),
        Command::Auth { command } => match command {
            AuthCommand::Blocked => admin(&settings, "GET", "/admin/auth/blocked"),
            AuthCommand::Unblock { subject } => admin(
                &settings,
                "POST",
                &format!("/admin/auth/unblock?subject={}", encode_query(&subject)),
            ),
        },
        Command::Dkim { command } => dkim(&settings, command),
    }
}

/// `kiln check-config`: the settings (already read) and the policy scripts.
fn check_config(settings: &Settings, config: Option<&std::path::Path>) -> ExitCode {
    // The policy scripts are part of the configuration.
    let checked = settings
        .policy
        .to_settings()
        .map_err(|e| e.to_string())
        .and_then(|ps| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(kiln::policy::check(&ps))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = checked {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    say!(
        "{}: ok",
        config
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(defaults)".into())
    );
    ExitCode::SUCCESS
}

/// `kiln serve`: the daemon, until SIGTERM.
fn serve(settings: Settings, config: Option<PathBuf>) -> ExitCode {
    let _log_guard = init_logging(&settings);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kiln: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(kiln::server::run(settings, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("kiln: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn account(settings: &Settings, command: AccountCommand) -> ExitCode {
    match command {
        AccountCommand::Create { name } => {
            admin(settings, "POST", &format!("/admin/accounts/{name}"))
        }
        AccountCommand::List => admin(settings, "GET", "/admin/accounts"),
        AccountCommand::Disable { name } => {
            admin(settings, "POST", &format!("/admin/accounts/{name}/disable"))
        }
        AccountCommand::Enable { name } => {
            admin(settings, "POST", &format!("/admin/accounts/{name}/enable"))
        }
        AccountCommand::Callback { name, url, address } => {
            let mut query = format!("url={}", encode_query(&url));
            if let Some(a) = address {
                query.push_str(&format!("&address={}", encode_query(&a)));
            }
            admin(
                settings,
                "POST",
                &format!("/admin/accounts/{name}/callback?{query}"),
            )
        }
        AccountCommand::RotateKey { name } => admin(
            settings,
            "POST",
            &format!("/admin/accounts/{name}/rotate-key"),
        ),
    }
}

fn queue(settings: &Settings, command: QueueCommand) -> ExitCode {
    let control = |action: &str, select: &str, extra: String| {
        admin(
            settings,
            "POST",
            &format!(
                "/admin/queue/{action}?select={}{extra}",
                encode_query(select)
            ),
        )
    };
    match command {
        QueueCommand::Summary { by } => admin(
            settings,
            "GET",
            &format!("/admin/queue/summary?by={}", encode_query(&by)),
        ),
        QueueCommand::List {
            select,
            cursor,
            limit,
        } => admin(
            settings,
            "GET",
            &format!(
                "/admin/queue/list?select={}&cursor={}&limit={limit}",
                encode_query(&select.unwrap_or_default()),
                encode_query(&cursor.unwrap_or_default())
            ),
        ),
        QueueCommand::Suspend { select } => control("suspend", &select, String::new()),
        QueueCommand::Resume { select } => control("resume", &select, String::new()),
        QueueCommand::Bounce { select, reason } => control(
            "bounce",
            &select,
            format!("&reason={}", encode_query(&reason)),
        ),
        QueueCommand::RetryNow { select } => control("retry-now", &select, String::new()),
        QueueCommand::Controls => admin(settings, "GET", "/admin/queue/controls"),
    }
}

fn console_token(settings: &Settings) -> ExitCode {
    match kiln::ses::operators::read_token(&settings.server.data_dir) {
        Ok(token) => {
            say!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "kiln: cannot read the operator token {}: {e} (run kiln as the daemon's user, after the daemon's first start)",
                kiln::ses::operators::token_path(&settings.server.data_dir).display()
            );
            ExitCode::from(1)
        }
    }
}

fn domain(settings: &Settings, command: DomainCommand) -> ExitCode {
    match command {
        DomainCommand::Show { domain } => admin(
            settings,
            "GET",
            &format!("/admin/domains/{}", encode_query(&domain)),
        ),
        DomainCommand::SetLevel { domain, level } => admin(
            settings,
            "POST",
            &format!(
                "/admin/domains/{}/set-level?level={level}",
                encode_query(&domain)
            ),
        ),
        DomainCommand::SetQuota { domain, quota } => admin(
            settings,
            "POST",
            &format!(
                "/admin/domains/{}/set-quota?quota={quota}",
                encode_query(&domain)
            ),
        ),
        DomainCommand::Reset { domain } => admin(
            settings,
            "POST",
            &format!("/admin/domains/{}/reset", encode_query(&domain)),
        ),
    }
}

fn dkim(settings: &Settings, command: DkimCommand) -> ExitCode {
    match command {
        DkimCommand::Show { domain } => admin(settings, "GET", &format!("/admin/dkim/{domain}")),
        DkimCommand::Create {
            domain,
            algorithm,
            selector,
        } => {
            let mut query = Vec::new();
            if let Some(a) = algorithm {
                query.push(format!("algorithm={a}"));
            }
            if let Some(s) = selector {
                query.push(format!("selector={s}"));
            }
            admin(
                settings,
                "POST",
                &format!("/admin/dkim/{domain}?{}", query.join("&")),
            )
        }
    }
}

/// Who runs this command, for the daemon's log of control actions.
fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| user_of_uid())
}

/// This process's user as the system names it (no USER in the
/// environment: cron, systemd, `env -i`), else its uid.
fn user_of_uid() -> String {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() }.to_string();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Percent-encodes a query value.
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Calls the running daemon's loopback admin endpoint and prints the JSON.
fn admin(settings: &Settings, method: &str, path: &str) -> ExitCode {
    match call_admin(settings, method, path) {
        Ok((ok, body)) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(body);
            say!("{pretty}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("kiln: {e}");
            ExitCode::from(1)
        }
    }
}

/// Like [`admin`] for a GET whose answer has a text for people in
/// `field`: prints that text (an error as JSON, on stderr).
fn admin_text(settings: &Settings, path: &str, field: &str) -> ExitCode {
    match call_admin(settings, "GET", path) {
        Ok((true, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            match v[field].as_str() {
                Some(text) => {
                    say!("{text}");
                    ExitCode::SUCCESS
                }
                None => {
                    say!("{body}");
                    ExitCode::SUCCESS
                }
            }
        }
        Ok((false, body)) => {
            eprintln!("{body}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("kiln: {e}");
            ExitCode::from(1)
        }
    }
}

/// One request to the daemon's admin endpoint with the operator token:
/// whether it succeeded, and the body.
fn call_admin(settings: &Settings, method: &str, path: &str) -> Result<(bool, String), String> {
    let mut addr = settings.http.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}{path}");
    let data_dir = &settings.server.data_dir;
    let source = SOURCE.get().map(String::as_str).unwrap_or_default();
    let token = kiln::ses::operators::read_token(data_dir).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            "run kiln as the daemon's user"
        } else {
            "is this the daemon's data directory? give its config with --config or KILN_CONFIG"
        };
        format!(
            "cannot read the admin token {}: {e} ({source}; {hint})",
            kiln::ses::operators::token_path(data_dir).display(),
        )
    })?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                let client = reqwest::Client::new();
                let req = if method == "POST" {
                    client.post(&url)
                } else {
                    client.get(&url)
                };
                let resp = req
                    .bearer_auth(&token)
                    .header("X-Kiln-Operator", operator())
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "cannot reach the daemon at {url} ({source}; is it running, and listening there? give its config with --config or KILN_CONFIG): {e}"
                        )
                    })?;
                let ok = resp.status().is_success();
                let body = resp.text().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((ok, body))
            })
        })
}

// Many small short-lived allocations per message (parsing, JSON, Lua):
// mimalloc serves them with less contention than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the bindings name no constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed goes back to the system at once, not after mimalloc's
/// default second (and then only once the freeing thread allocates
/// again): a queue that drains gives its memory back, and a node's RSS
/// follows what it holds. `MIMALLOC_PURGE_DELAY` in the environment wins.
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a number mimalloc reads on its next purge; any value
        // is valid for this option.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reads an option's number.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // (Run without MIMALLOC_PURGE_DELAY in the environment.)
        assert_eq!(get(), 1000, "mimalloc's documented default purge delay");
        purge_freed_memory_at_once();
        assert_eq!(get(), 0);
    }
}
