//! The HTTP listener's connections. Each request's headers must arrive
//! whole within `http.header_timeout` (an idle keep-alive connection is
//! closed after it too), and a client holds at most
//! `http.max_connections_per_ip` connections, all of them together
//! `http.max_connections`: past either, a connection is answered `503` and
//! closed. Before, 40 connections each sending all but the last byte of a
//! request held 267 MB for as long as they liked. HTTP/1.1 only, as the
//! SDKs speak it. With `http.tls_cert` set it speaks HTTPS (the handshake
//! within the header timeout too; a request over TLS is marked
//! `X-Forwarded-Proto: https`, as a proxy in front would mark it), and
//! plain HTTP to this host only (from 127.0.0.1 or ::1: the `kiln`
//! command, a proxy here, a scrape); anyone else's plain request gets
//! `400` naming HTTPS.

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

/// The listener's TLS as it is now (a reload may change it), if any.
pub type TlsSource = Arc<dyn Fn() -> Option<tokio_rustls::TlsAcceptor> + Send + Sync>;

/// Serves `app` on `listener` until `stop`, then lets requests under way
/// finish (for up to [`DRAIN`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: TlsSource,
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
        let (app, http, watcher) = (app.clone(), http.clone(), graceful.watcher());
        let (acceptor, wait) = (tls(), limits.header_timeout);
        tokio::spawn(async move {
            let over_tls = match &acceptor {
                None => false,
                Some(_) => match starts_tls(&tcp, wait).await {
                    Some(true) => true,
                    Some(false) if from_this_host(peer.ip()) => false,
                    Some(false) => return refuse_plain(tcp).await,
                    None => return,
                },
            };
            let ended = match (acceptor, over_tls) {
                (Some(acceptor), true) => {
                    let stream = match tokio::time::timeout(wait, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        _ => return tracing::debug!(%peer, "HTTPS handshake failed or timed out"),
                    };
                    let service = service(app, peer, true);
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                _ => {
                    let service = service(app, peer, false);
                    watcher
                        .watch(http.serve_connection(TokioIo::new(tcp), service))
                        .await
                }
            };
            if let Err(e) = ended {
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

/// The router for one connection's requests: the client's address as
/// `ConnectInfo`, and `X-Forwarded-Proto: https` over TLS.
fn service(
    app: Router,
    peer: SocketAddr,
    https: bool,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if https {
            req.headers_mut().insert(
                "x-forwarded-proto",
                hyper::header::HeaderValue::from_static("https"),
            );
        }
        app.clone().oneshot(req)
    })
}

/// A client on this host as local clients connect by default (127.0.0.1,
/// ::1): the `kiln` command, a proxy here, a scrape.
fn from_this_host(ip: std::net::IpAddr) -> bool {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        std::net::IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST,
    }
}

/// Whether the client's first byte opens a TLS handshake; None if nothing
/// came within `wait`.
async fn starts_tls(tcp: &tokio::net::TcpStream, wait: Duration) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(wait, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == 0x16),
        _ => None,
    }
}

/// A plain request to the HTTPS listener from elsewhere: `400`, closed.
async fn refuse_plain(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let text = "this listener speaks HTTPS: use https://";
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(reply.as_bytes())).await;
    let _ = tcp.shutdown().await;
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
