//! A simulated mailbox provider: an SMTP receiver on its own address that
//! holds each sending address to limits, the way the big providers do, and
//! measures on its own side what each sender did. A sender over a limit is
//! answered `421` and the breach is counted as a violation; nothing is
//! read from the sender's own counters.
//!
//! It can also be told to throttle: every RCPT is answered with a reply of
//! the test's choosing (Gmail's `421 4.7.28 ...`), and the attempts made
//! meanwhile are counted with their times.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What one sending address may do. `None` is no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub connections: Option<usize>,
    pub messages_per_connection: Option<usize>,
    pub per_second: Option<usize>,
    pub per_minute: Option<usize>,
    pub new_connections_per_minute: Option<usize>,
}

/// What one sending address did, as this receiver saw it.
#[derive(Debug, Clone, Default)]
pub struct PeerReport {
    pub connections: usize,
    /// Connections open at once, at most.
    pub peak_open: usize,
    /// Messages on one connection, at most.
    pub peak_per_connection: usize,
    /// Messages accepted.
    pub messages: usize,
    /// Times messages were accepted (their MAIL command).
    pub times: Vec<Instant>,
}

#[derive(Default)]
struct Peer {
    open: usize,
    report: PeerReport,
    connects: Vec<Instant>,
}

#[derive(Default)]
struct State {
    limits: Limits,
    peers: Mutex<HashMap<IpAddr, Peer>>,
    violations: Mutex<Vec<String>>,
    /// Every RCPT is answered with this while it is set.
    throttle: Mutex<Option<String>>,
    /// When each throttled RCPT came.
    throttled: Mutex<Vec<Instant>>,
    recipients: Mutex<Vec<String>>,
}

#[derive(Clone)]
pub struct Provider {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Provider {
    pub async fn start(name: &str, addr: SocketAddr, limits: Limits) -> Provider {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("provider {name} binds {addr}: {e}"));
        let addr = listener.local_addr().expect("provider addr");
        let state = Arc::new(State {
            limits,
            ..State::default()
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let st = st.clone();
                tokio::spawn(async move { session(&st, tcp, peer.ip()).await });
            }
        });
        Provider {
            name: name.to_string(),
            addr,
            state,
        }
    }

    /// Answers every RCPT with `reply` (a whole reply line), or normally
    /// again with `None`.
    pub fn throttle(&self, reply: Option<&str>) {
        *lock(&self.state.throttle) = reply.map(str::to_string);
    }

    /// Throttled RCPTs seen at or after `since`.
    pub fn throttled_since(&self, since: Instant) -> usize {
        lock(&self.state.throttled)
            .iter()
            .filter(|t| **t >= since)
            .count()
    }

    pub fn throttled(&self) -> usize {
        lock(&self.state.throttled).len()
    }

    pub fn delivered(&self) -> usize {
        lock(&self.state.recipients).len()
    }

    pub fn recipients(&self) -> Vec<String> {
        lock(&self.state.recipients).clone()
    }

    /// Every limit breach seen, described.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.state.violations).clone()
    }

    pub fn peers(&self) -> HashMap<IpAddr, PeerReport> {
        lock(&self.state.peers)
            .iter()
            .map(|(ip, p)| (*ip, p.report.clone()))
            .collect()
    }

    /// Messages accepted from any address in `[from, to)`.
    pub fn accepted_between(&self, from: Instant, to: Instant) -> usize {
        lock(&self.state.peers)
            .values()
            .flat_map(|p| p.report.times.iter())
            .filter(|t| **t >= from && **t < to)
            .count()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn within(times: &[Instant], now: Instant, window: Duration) -> usize {
    times
        .iter()
        .rev()
        .take_while(|t| now.duration_since(**t) < window)
        .count()
}

/// Counts a connection from `peer`; the refusal when it is over a limit.
fn open(st: &State, peer: IpAddr) -> Option<String> {
    let now = Instant::now();
    let mut peers = lock(&st.peers);
    let p = peers.entry(peer).or_default();
    p.connects.push(now);
    p.report.connections += 1;
    let mut refusal = None;
    if let Some(max) = st.limits.connections
        && p.open + 1 > max
    {
        refusal = Some(format!(
            "{peer}: connection {} open at once (limit {max})",
            p.open + 1
        ));
    }
    if let Some(max) = st.limits.new_connections_per_minute {
        let n = within(&p.connects, now, Duration::from_secs(60));
        if n > max {
            refusal = Some(format!(
                "{peer}: {n} new connections in a minute (limit {max})"
            ));
        }
    }
    if refusal.is_none() {
        p.open += 1;
        p.report.peak_open = p.report.peak_open.max(p.open);
    }
    refusal
}

/// A MAIL command from `peer`, its `nth` on this connection: the refusal
/// when it is over a limit, else it is counted.
fn message(st: &State, peer: IpAddr, nth: usize) -> Option<String> {
    let now = Instant::now();
    let mut peers = lock(&st.peers);
    let p = peers.entry(peer).or_default();
    let l = st.limits;
    if let Some(max) = l.messages_per_connection
        && nth > max
    {
        return Some(format!(
            "{peer}: message {nth} on one connection (limit {max})"
        ));
    }
    for (limit, window, what) in [
        (l.per_second, Duration::from_secs(1), "second"),
        (l.per_minute, Duration::from_secs(60), "minute"),
    ] {
        if let Some(max) = limit {
            let n = within(&p.report.times, now, window) + 1;
            if n > max {
                return Some(format!("{peer}: {n} messages in a {what} (limit {max})"));
            }
        }
    }
    p.report.times.push(now);
    p.report.messages += 1;
    p.report.peak_per_connection = p.report.peak_per_connection.max(nth);
    None
}

fn close(st: &State, peer: IpAddr) {
    if let Some(p) = lock(&st.peers).get_mut(&peer) {
        p.open = p.open.saturating_sub(1);
    }
}

async fn session(st: &State, tcp: TcpStream, peer: IpAddr) {
    let mut conn = BufReader::new(tcp);
    if let Some(v) = open(st, peer) {
        lock(&st.violations).push(v);
        let _ = conn
            .get_mut()
            .write_all(b"421 4.7.0 sim: too many connections from your address\r\n")
            .await;
        return;
    }
    let mut counted = true;
    let _ = talk(st, &mut conn, peer, &mut counted).await;
    if counted {
        close(st, peer);
    }
}

/// One session. A connection stops counting as open when this side says
/// goodbye (221, or a 421 that closes it), before the words leave: the
/// sender may open the next one as soon as it reads them. `counted` says
/// whether it still counts.
async fn talk(
    st: &State,
    conn: &mut BufReader<TcpStream>,
    peer: IpAddr,
    counted: &mut bool,
) -> std::io::Result<()> {
    conn.get_mut().write_all(b"220 sim ESMTP\r\n").await?;
    let mut line = String::new();
    let mut messages = 0;
    let mut mail_ok = false;
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            "250-sim\r\n250-PIPELINING\r\n250 8BITMIME".into()
        } else if upper.starts_with("MAIL FROM:") {
            messages += 1;
            rcpts.clear();
            match message(st, peer, messages) {
                Some(v) => {
                    lock(&st.violations).push(v);
                    mail_ok = false;
                    "421 4.7.0 sim: too many messages from your address".into()
                }
                None => {
                    mail_ok = true;
                    "250 2.1.0 ok".into()
                }
            }
        } else if upper.starts_with("RCPT TO:") {
            let throttle = lock(&st.throttle).clone();
            if let Some(reply) = throttle {
                lock(&st.throttled).push(Instant::now());
                reply
            } else if mail_ok {
                let rcpt = cmd[8..].trim().trim_start_matches('<');
                rcpts.push(rcpt.split('>').next().unwrap_or_default().to_string());
                "250 2.1.5 ok".into()
            } else {
                "503 5.5.1 MAIL first".into()
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                conn.get_mut().write_all(b"354 go\r\n").await?;
                loop {
                    line.clear();
                    if conn.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                }
                lock(&st.recipients).append(&mut rcpts);
                "250 2.0.0 queued".into()
            }
        } else if upper == "RSET" || upper == "NOOP" {
            rcpts.clear();
            "250 2.0.0 ok".into()
        } else if upper == "QUIT" {
            close(st, peer);
            *counted = false;
            conn.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "500 5.5.2 what".into()
        };
        let over = reply.starts_with("421");
        if over {
            close(st, peer);
            *counted = false;
        }
        conn.get_mut().write_all(reply.as_bytes()).await?;
        conn.get_mut().write_all(b"\r\n").await?;
        if over {
            // As the providers do: 421 closes the connection.
            return Ok(());
        }
    }
}
