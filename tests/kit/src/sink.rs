//! An SMTP sink: accepts mail on loopback, records it, and answers each
//! recipient as the test says (250 by default, or a 4xx/5xx reply line).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
    /// What followed the path in MAIL FROM (e.g. "REQUIRETLS").
    pub mail_params: String,
    /// The address the connection came from.
    pub peer: std::net::IpAddr,
}

#[derive(Default)]
pub struct SinkState {
    /// Recipient → RCPT reply line (e.g. "550 5.1.1 No such user").
    rules: Mutex<HashMap<String, String>>,
    messages: Mutex<Vec<Received>>,
    count: AtomicUsize,
    connections: AtomicUsize,
    keep_data: bool,
    /// Recipient → how long to wait before answering its RCPT.
    delays: Mutex<HashMap<String, std::time::Duration>>,
    /// Recipient → RCPT commands seen for it (attempts begun, answered or not).
    rcpt_seen: Mutex<HashMap<String, usize>>,
    /// Offer REQUIRETLS (RFC 8689) on TLS sessions.
    requiretls: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<SinkState>,
}

impl Sink {
    /// Listens on `addr` (port 0 for a free one); STARTTLS offered when `tls`.
    pub async fn start(addr: SocketAddr, tls: bool, keep_data: bool) -> Sink {
        let config = tls.then(|| crate::tls::server_config("mx.test"));
        Sink::start_with(addr, config, keep_data).await
    }

    /// Like `start`, offering STARTTLS with the given certificate.
    pub async fn start_with(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        keep_data: bool,
    ) -> Sink {
        let listener = TcpListener::bind(addr).await.expect("sink bind");
        let addr = listener.local_addr().expect("sink addr");
        let state = Arc::new(SinkState {
            keep_data,
            ..SinkState::default()
        });
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                st.connections.fetch_add(1, Ordering::Relaxed);
                let st = st.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut conn = BufReader::new(tcp);
                    if let Some(Upgrade) =
                        session(&st, &mut conn, acceptor.is_some(), false, peer.ip()).await
                        && let Some(acceptor) = acceptor
                        && let Ok(tls) = acceptor.accept(conn.into_inner()).await
                    {
                        let mut conn = BufReader::new(tls);
                        let _ = session(&st, &mut conn, false, true, peer.ip()).await;
                    }
                });
            }
        });
        Sink { addr, state }
    }

    /// Answers RCPT TO `recipient` with `reply` instead of accepting it
    /// (`*`: every recipient without a rule of its own).
    pub fn set_rule(&self, recipient: &str, reply: &str) {
        self.state
            .rules
            .lock()
            .expect("rules")
            .insert(recipient.to_string(), reply.to_string());
    }

    /// Waits until the sink holds at least `n` recipients' deliveries.
    pub async fn wait_count(&self, n: usize, timeout: std::time::Duration) -> bool {
        crate::wait_for(timeout, || async move { self.count() >= n }).await
    }

    /// A slow receiver: RCPT for `recipient` is answered after `delay`.
    pub fn set_delay(&self, recipient: &str, delay: std::time::Duration) {
        self.state
            .delays
            .lock()
            .expect("delays")
            .insert(recipient.to_string(), delay);
    }

    pub fn offer_requiretls(&self, offer: bool) {
        self.state.requiretls.store(offer, Ordering::Relaxed);
    }

    pub fn clear_rule(&self, recipient: &str) {
        self.state.rules.lock().expect("rules").remove(recipient);
    }

    /// Deliveries accepted (one per accepted recipient).
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::Relaxed)
    }

    /// RCPT commands seen for `recipient`, counted before they are answered.
    pub fn rcpts_seen(&self, recipient: &str) -> usize {
        let seen = self.state.rcpt_seen.lock().expect("rcpt_seen");
        seen.get(recipient).copied().unwrap_or(0)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state.messages.lock().expect("messages").clone()
    }
}

struct Upgrade;

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    st: &SinkState,
    conn: &mut BufReader<S>,
    offer_tls: bool,
    tls: bool,
    peer: std::net::IpAddr,
) -> Option<Upgrade> {
    if !tls
        && conn
            .get_mut()
            .write_all(b"220 sink.test ESMTP\r\n")
            .await
            .is_err()
    {
        return None;
    }
    let mut from = String::new();
    let mut mail_params = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut line = String::new();
    loop {
        if conn.buffer().is_empty() && !out.is_empty() {
            if send(conn, &out).await.is_err() {
                return None;
            }
            out.clear();
        }
        line.clear();
        match conn.read_line(&mut line).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            out.extend_from_slice(b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n");
            if offer_tls {
                out.extend_from_slice(b"250-STARTTLS\r\n");
            }
            if tls && st.requiretls.load(Ordering::Relaxed) {
                out.extend_from_slice(b"250-REQUIRETLS\r\n");
            }
            out.extend_from_slice(b"250 SIZE 10485760\r\n");
        } else if upper.starts_with("HELO") {
            out.extend_from_slice(b"250 sink.test\r\n");
        } else if upper == "STARTTLS" && offer_tls {
            out.extend_from_slice(b"220 2.0.0 go ahead\r\n");
            let _ = send(conn, &out).await;
            return Some(Upgrade);
        } else if upper.starts_with("MAIL FROM:") {
            from = angle(&cmd[10..]);
            mail_params = cmd
                .rsplit_once('>')
                .map(|(_, p)| p.trim().to_string())
                .unwrap_or_default();
            rcpts.clear();
            out.extend_from_slice(b"250 2.1.0 ok\r\n");
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = angle(&cmd[8..]);
            if let Ok(mut seen) = st.rcpt_seen.lock() {
                *seen.entry(rcpt.clone()).or_default() += 1;
            }
            let delay = st.delays.lock().ok().and_then(|d| d.get(&rcpt).copied());
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let rule = st
                .rules
                .lock()
                .ok()
                .and_then(|r| r.get(&rcpt).or_else(|| r.get("*")).cloned());
            match rule {
                Some(reply) => out.extend_from_slice(format!("{reply}\r\n").as_bytes()),
                None => {
                    rcpts.push(rcpt);
                    out.extend_from_slice(b"250 2.1.5 ok\r\n");
                }
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                out.extend_from_slice(b"554 5.5.1 no valid recipients\r\n");
                continue;
            }
            out.extend_from_slice(b"354 go\r\n");
            if send(conn, &out).await.is_err() {
                return None;
            }
            out.clear();
            let mut data = Vec::new();
            loop {
                line.clear();
                match conn.read_line(&mut line).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                let l = line.strip_prefix('.').unwrap_or(&line);
                if st.keep_data {
                    data.extend_from_slice(l.as_bytes());
                }
            }
            st.count.fetch_add(rcpts.len(), Ordering::Relaxed);
            if st.keep_data {
                st.messages.lock().expect("messages").push(Received {
                    mail_from: from.clone(),
                    rcpt_to: std::mem::take(&mut rcpts),
                    data,
                    tls,
                    mail_params: mail_params.clone(),
                    peer,
                });
            }
            rcpts.clear();
            out.extend_from_slice(b"250 2.0.0 queued\r\n");
        } else if upper == "RSET" {
            rcpts.clear();
            out.extend_from_slice(b"250 2.0.0 ok\r\n");
        } else if upper == "QUIT" {
            out.extend_from_slice(b"221 2.0.0 bye\r\n");
            let _ = send(conn, &out).await;
            return None;
        } else if upper == "NOOP" {
            out.extend_from_slice(b"250 2.0.0 ok\r\n");
        } else {
            out.extend_from_slice(b"500 5.5.2 what\r\n");
        }
    }
}

fn angle(arg: &str) -> String {
    let arg = arg.trim();
    let inner = arg
        .strip_prefix('<')
        .and_then(|a| a.split_once('>').map(|(a, _)| a))
        .unwrap_or(arg);
    inner.to_string()
}

/// Writes and flushes (TLS holds data back until flushed).
async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    bytes: &[u8],
) -> std::io::Result<()> {
    conn.get_mut().write_all(bytes).await?;
    conn.get_mut().flush().await
}
