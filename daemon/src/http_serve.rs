//! The HTTP listener's connections. Each request's headers must arrive
//! whole within `http.header_timeout` (an idle keep-alive connection is
//! closed after it too), and a client holds at most
//! `http.max_connections_per_ip` connections, all of them together
//! `http.max_connections`: past either, a connection is answered `503` and
//! closed. Before, 40 connections each sending all but the last byte of a
//! request held 267 MB for as long as they liked. HTTP/1.1 only, as the
//! SDKs speak it.

use crate::net::{ConnectionLimits, TooMany};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long requests under way may take to finish once the node stops.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `stop`, then lets requests under way
/// finish (for up to [`DRAIN`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stop: CancellationToken,
) {
    let slots = ConnectionLimits::new(limits.max_connections, limits.max_connections_per_ip);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let http = Arc::new({
        let mut b = hyper::server::conn::http1::Builder::new();
        // A connection's read buffer (its headers must fit): bodies stream
        // through it, so a slow reader of many connections holds little.
        b.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(64 << 10)
            .keep_alive(true);
        b
    });
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match slots.admit(peer.ip(), true) {
            Ok(slot) => slot,
            Err(why) => {
                tokio::spawn(turn_away(tcp, peer, why));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
            drop(slot);
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still under way at shutdown were cut off");
    }
}

/// A `503` for a connection over a limit, then the connection closed.
async fn turn_away(mut tcp: tokio::net::TcpStream, peer: SocketAddr, why: TooMany) {
    use tokio::io::AsyncWriteExt;
    let text = match why {
        TooMany::InAll => "too many connections",
        TooMany::FromClient => "too many connections from your address",
    };
    tracing::info!(%peer, reason = text, "HTTP connection turned away");
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(reply.as_bytes())).await;
    let _ = tcp.shutdown().await;
}
