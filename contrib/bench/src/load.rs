//! The load the benchmarks put on Kiln: messages over SMTP sessions.

use kiln_testkit::client::{SmtpClient, message};
use std::net::SocketAddr;

/// Sends one message to each `per_message` recipients of `rcpts`, over
/// `sessions` relay sessions at once; every message must be accepted.
pub async fn inject(addr: SocketAddr, rcpts: Vec<String>, sessions: usize, per_message: usize) {
    let chunks: Vec<Vec<String>> = rcpts
        .chunks(per_message.max(1))
        .map(<[String]>::to_vec)
        .collect();
    let per = chunks.len().div_ceil(sessions.max(1));
    let mut tasks = Vec::new();
    for share in chunks.chunks(per.max(1)).map(<[Vec<String>]>::to_vec) {
        tasks.push(tokio::spawn(async move {
            let mut c = SmtpClient::connect(addr).await.expect("connect to kiln");
            c.cmd("EHLO bench.test").await.expect("EHLO");
            for to in share {
                let to: Vec<&str> = to.iter().map(String::as_str).collect();
                let body = message("bench@shop.test", to[0], "bench", 2048);
                let r = c.send("bench@shop.test", &to, &body).await.expect("send");
                assert_eq!(r.code, 250, "kiln refused a message: {r:?}");
            }
            c.quit().await;
        }));
    }
    for t in tasks {
        t.await.expect("injection task");
    }
}
