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

pub mod client;
pub mod dns;
pub mod process;
pub mod provider;
pub mod redis;
pub mod sink;
pub mod tls;
pub mod webhook;

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
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
