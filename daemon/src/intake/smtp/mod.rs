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

/// Accepts connections until `shutdown`; sessions are tracked by `tracker`.
pub async fn serve(
    ctx: Arc<Services>,
    listener: Listener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    limits: Arc<crate::net::ConnectionLimits>,
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
            Err(too_many) => {
                let reply = match too_many {
                    crate::net::TooMany::InAll => {
                        "421 4.7.0 Too many connections, try again later\r\n"
                    }
                    crate::net::TooMany::FromClient => {
                        "421 4.7.0 Too many connections from your address, try again later\r\n"
                    }
                };
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
        // Boxed: a session's future is large, and tokio moves a task's
        // future several times while spawning and running it.
        tracker.spawn(Box::pin(async move {
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
        }));
    }
}
