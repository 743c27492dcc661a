//! SMTP submission server: listeners, TLS, and one task per session.
//!
//! A session only writes: it makes the message durable through the store,
//! tells the queue manager, and answers 250. It never delivers.

pub mod auth_throttle;
pub mod parser;
pub mod session;

use crate::config::{ListenerSettings, ListenerTls};
use crate::line_io::{LineIo, Stream};
use crate::net::Cidr;
use crate::services::Services;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One bound listener and its policy.
pub struct Listener {
    pub socket: TcpListener,
    pub settings: ListenerSettings,
    relay_networks: Vec<Cidr>,
}

impl Listener {
    pub async fn bind(settings: &ListenerSettings) -> std::io::Result<Listener> {
        let socket = TcpListener::bind(settings.address).await?;
        Ok(Listener {
            socket,
            settings: settings.clone(),
            relay_networks: settings
                .relay_networks
                .iter()
                .filter_map(|n| Cidr::parse(n))
                .collect(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// How many sessions may run: in all (`smtp.max_connections`), and per
/// client (`smtp.max_connections_per_ip`, an IPv6 client per /64; a relay
/// network's clients are not limited one by one). Shared by all listeners.
pub struct ConnectionLimits {
    total: Arc<tokio::sync::Semaphore>,
    per_client: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    max_per_client: usize,
}

/// A session's place; given back when dropped.
pub struct ConnectionSlot {
    _total: tokio::sync::OwnedSemaphorePermit,
    client: Option<(Arc<ConnectionLimits>, String)>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some((limits, client)) = self.client.take() {
            let mut map = limits.per_client.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&client);
                }
            }
        }
    }
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            total: Arc::new(tokio::sync::Semaphore::new(max_total)),
            per_client: Default::default(),
            max_per_client,
        })
    }

    /// A slot for a new session from `ip`, or the reply that turns it away.
    fn admit(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
        counted: bool,
    ) -> Result<ConnectionSlot, &'static str> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| "421 4.7.0 Too many connections, try again later\r\n")?;
        if !counted {
            return Ok(ConnectionSlot {
                _total: total,
                client: None,
            });
        }
        let client = crate::net::client_net(ip);
        let mut map = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(client.clone()).or_insert(0);
        if *n >= self.max_per_client {
            return Err("421 4.7.0 Too many connections from your address, try again later\r\n");
        }
        *n += 1;
        Ok(ConnectionSlot {
            _total: total,
            client: Some((self.clone(), client)),
        })
    }
}

/// Accepts connections until `shutdown`; sessions are tracked by `tracker`.
pub async fn serve(
    ctx: Arc<Services>,
    listener: Listener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    limits: Arc<ConnectionLimits>,
) {
    let listener = Arc::new(listener);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.socket.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let relay_allowed = listener
            .relay_networks
            .iter()
            .any(|n| n.contains(peer.ip()));
        let permit = match limits.admit(peer.ip(), !relay_allowed) {
            Ok(p) => p,
            Err(reply) => {
                tracing::info!(%peer, reply = reply.trim_end(), "connection turned away");
                tracker.spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut tcp = tcp;
                    let _ = tcp.write_all(reply.as_bytes()).await;
                });
                continue;
            }
        };
        let ctx = ctx.clone();
        let listener = listener.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let stream: Stream = match listener.settings.tls {
                ListenerTls::Implicit => {
                    let Some(acceptor) = ctx.tls() else { return };
                    match acceptor.accept(tcp).await {
                        Ok(tls) => Either::Right(tokio_rustls::TlsStream::Server(tls)),
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    }
                }
                _ => Either::Left(tcp),
            };
            let session =
                session::Session::new(ctx, &listener.settings, peer, relay_allowed, shutdown);
            session.run(LineIo::new(stream)).await;
        });
    }
}
