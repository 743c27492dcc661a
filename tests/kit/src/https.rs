//! A small HTTPS server that serves fixed files by host name (an MTA-STS
//! policy host, say) and keeps what is POSTed to it (a TLS report
//! endpoint): HTTP/1.1, one request per connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a path answers: status, Content-Type, body.
#[derive(Clone)]
pub struct Page {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Page {
    /// `body` as `text/plain`, with `status`.
    pub fn text(status: u16, body: &str) -> Page {
        Page {
            status,
            content_type: "text/plain".into(),
            body: body.into(),
        }
    }

    /// A redirect to `to` (its `Location`).
    pub fn redirect(to: &str) -> Page {
        Page {
            status: 301,
            content_type: format!("text/plain\r\nLocation: {to}"),
            body: String::new(),
        }
    }
}

/// A request's body, as POSTed.
#[derive(Clone, Debug)]
pub struct Posted {
    pub host: String,
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Stops listening when dropped (a host gone down).
pub struct StaticHttps {
    pub addr: SocketAddr,
    listening: tokio::task::JoinHandle<()>,
    /// Bodies POSTed, in order.
    pub posted: Arc<Mutex<Vec<Posted>>>,
    /// (host, path) → page.
    pages: Arc<Mutex<HashMap<(String, String), Page>>>,
    /// Requests served, as "host path".
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl StaticHttps {
    pub async fn start(addr: SocketAddr, tls: Arc<rustls::ServerConfig>) -> StaticHttps {
        let listener = TcpListener::bind(addr).await.expect("https bind");
        let addr = listener.local_addr().expect("https addr");
        let pages: Arc<Mutex<HashMap<(String, String), Page>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let posted: Arc<Mutex<Vec<Posted>>> = Arc::default();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let (p, r, b) = (pages.clone(), requests.clone(), posted.clone());
        let listening = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, pages, requests, posted) =
                    (acceptor.clone(), p.clone(), r.clone(), b.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = head
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map_or(head.len(), |at| at + 4);
                    let mut body = head.split_off(end);
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                            })
                            .unwrap_or_default()
                    };
                    let length: usize = header("content-length").parse().unwrap_or(0);
                    while body.len() < length.min(1 << 20) {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => body.extend_from_slice(&buf[..n]),
                        }
                    }
                    let path = head
                        .lines()
                        .next()
                        .and_then(|l| l.split_whitespace().nth(1))
                        .unwrap_or("/")
                        .to_string();
                    let host = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("host").then(|| v.trim().to_string())
                        })
                        .unwrap_or_default();
                    let host = host.split(':').next().unwrap_or("").to_ascii_lowercase();
                    requests.lock().unwrap().push(format!("{host} {path}"));
                    if head.starts_with("POST ") {
                        posted.lock().unwrap().push(Posted {
                            host: host.clone(),
                            path: path.clone(),
                            content_type: header("content-type"),
                            body,
                        });
                    }
                    let page = pages.lock().unwrap().get(&(host, path)).cloned();
                    let page = page.unwrap_or(Page {
                        status: 404,
                        content_type: "text/plain".into(),
                        body: "not found\n".into(),
                    });
                    let response = format!(
                        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                        page.status,
                        page.content_type,
                        page.body.len(),
                        page.body
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        StaticHttps {
            addr,
            listening,
            posted,
            pages,
            requests,
        }
    }

    /// `https://HOST/PATH` answers `page` from now on.
    pub fn serve(&self, host: &str, path: &str, page: Page) {
        self.pages
            .lock()
            .unwrap()
            .insert((host.to_ascii_lowercase(), path.to_string()), page);
    }

    /// Requests served so far for `host`.
    pub fn served(&self, host: &str) -> usize {
        let prefix = format!("{} ", host.to_ascii_lowercase());
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with(&prefix))
            .count()
    }
}

impl Drop for StaticHttps {
    fn drop(&mut self) {
        self.listening.abort();
    }
}
