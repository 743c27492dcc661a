//! An HTTP receiver for Kiln's event callbacks: records every POST (headers
//! and body), answers a chosen status, and can go down and come back on the
//! same port.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

#[derive(Debug, Clone)]
pub struct Hook {
    pub path: String,
    /// What the receiver answered.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Hook {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    hooks: Mutex<Vec<Hook>>,
    status: Mutex<u16>,
    /// How long a POST waits before it is answered (and recorded).
    delay: Mutex<Option<std::time::Duration>>,
    /// POSTs received and not answered yet.
    waiting: std::sync::atomic::AtomicUsize,
    /// Where POSTs are redirected (307 with this Location), if anywhere.
    redirect: Mutex<Option<String>>,
}

pub struct Webhook {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

/// A page a tracked link may lead to: GETs are recorded too.
async fn page(
    State(s): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> &'static str {
    s.hooks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Hook {
            path: uri.path().to_string(),
            status: 200,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body: String::new(),
        });
    "<html><body>landing page</body></html>"
}

async fn receive(
    State(s): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let redirect = s.redirect.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let status = record(&s, uri, headers, body).await;
    match redirect {
        Some(to) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(axum::http::header::LOCATION, to)],
        )
            .into_response(),
        None => status.into_response(),
    }
}

async fn record(s: &Shared, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let delay = *s.delay.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = delay {
        use std::sync::atomic::Ordering;
        s.waiting.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(d).await;
        s.waiting.fetch_sub(1, Ordering::SeqCst);
    }
    let status = *s.status.lock().unwrap_or_else(|p| p.into_inner());
    s.hooks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Hook {
            path: uri.path().to_string(),
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}

impl Webhook {
    pub async fn start() -> Webhook {
        Webhook::start_at("127.0.0.1".parse().expect("addr")).await
    }

    /// A receiver on `ip` (another loopback address: another host).
    pub async fn start_at(ip: std::net::IpAddr) -> Webhook {
        let shared = Arc::new(Shared {
            status: Mutex::new(200),
            ..Shared::default()
        });
        let mut hook = Webhook {
            addr: SocketAddr::new(ip, 0),
            shared,
            stop: None,
        };
        hook.listen().await;
        hook
    }

    async fn listen(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind webhook");
        self.addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let app = axum::Router::new()
            .route("/", post(receive))
            .route("/{*path}", post(receive).get(page))
            .with_state(self.shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        self.stop = Some(tx);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops listening (connections are refused) until [`Webhook::resume`].
    pub fn go_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        for _ in 0..50 {
            if tokio::net::TcpListener::bind(self.addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.listen().await;
    }

    /// The status later POSTs get (they are recorded either way).
    pub fn answer(&self, status: u16) {
        *self.shared.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// Later POSTs are answered `307 Temporary Redirect` to `location`
    /// (recorded all the same).
    pub fn redirect_to(&self, location: &str) {
        *self
            .shared
            .redirect
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(location.into());
    }

    /// Later POSTs are answered only after `delay` (None: at once); a
    /// long one is a receiver that hangs.
    pub fn answer_after(&self, delay: Option<std::time::Duration>) {
        *self.shared.delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// POSTs held unanswered right now.
    pub fn waiting(&self) -> usize {
        self.shared
            .waiting
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The POSTs (callbacks) only.
    pub fn posts(&self) -> Vec<Hook> {
        self.hooks()
            .into_iter()
            .filter(|h| !h.body.is_empty())
            .collect()
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.shared
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until `n` POSTs were recorded.
    pub async fn wait_count(&self, n: usize, timeout: std::time::Duration) -> bool {
        crate::wait_for(timeout, || async { self.hooks().len() >= n }).await
    }
}
