//! Real peers for Kiln's end-to-end tests and benchmarks.
//!
//! | module    | peer |
//! |-----------|------|
//! | `dns`     | an authoritative DNS server on a free UDP/TCP port (hickory-proto) |
//! | `sink`    | an SMTP server that records messages and answers per recipient |
//! | `client`  | an SMTP submission client (STARTTLS, AUTH PLAIN) |
//! | `redis`   | a private `redis-server` on a free port |
//! | `process` | the `kiln` binary with a generated config |
//! | `webhook` | an HTTP receiver for event callbacks |
//! | `rspamd`  | Debian's rspamd, scoring what a receiver gets |

pub mod client;
pub mod dns;
pub mod https;
pub mod process;
pub mod provider;
pub mod redis;
pub mod rspamd;
pub mod sink;
pub mod tls;
pub mod webhook;

/// A TCP port nobody listens on right now.
///
/// Taken below Linux's ephemeral range (32768 and up), so that no client
/// socket of a busy test run gets it between this answer and the server's
/// bind; each process walks the range from its own starting point.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7_919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0))
            % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port on loopback between {LOW} and {}", LOW + SPAN)
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
