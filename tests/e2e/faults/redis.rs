//! Redis unreachable when the daemon starts: it says so, keeps trying, and
//! does not serve (systemd is not told it is ready) until Redis answers;
//! then it serves and delivers.

use crate::harness::{binary, peers, queued_id, submit_session, wait_state};
use kiln_testkit::client::message;
use kiln_testkit::process::Kiln;
use kiln_testkit::redis::RedisServer;
use kiln_testkit::sink::Sink;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_is_waited_for_then_served() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), true, true).await;
    let p = peers(crate::harness::Backend::Embedded, &sink).await;
    let port = kiln_testkit::free_port();
    let mut opts = p.opts;
    opts.redis_url = Some(format!("redis://127.0.0.1:{port}/"));
    let mut kiln = tokio::task::block_in_place(|| Kiln::launch(binary(), &opts));

    // The client tries for about 6 s (its own retries) before it says so.
    let log_path = opts.data_dir.join(format!("kiln-{}.log", opts.node_id));
    let said = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("Redis cannot be reached; not serving until it answers")
    };
    assert!(
        crate::harness::wait_until(Duration::from_secs(30), said).await,
        "{}",
        kiln.log_text()
    );
    assert!(
        kiln.running(),
        "it waits, it does not exit:\n{}",
        kiln.log_text()
    );
    assert!(
        std::net::TcpStream::connect(kiln.smtp).is_err(),
        "not serving before its store answers"
    );
    let redis = RedisServer::start_on(port);
    let up = Instant::now();
    let ready = tokio::task::block_in_place(|| kiln.wait_ready(Duration::from_secs(30)));
    assert!(ready, "serving once Redis answers:\n{}", kiln.log_text());
    eprintln!(
        "serving {:.1} s after Redis answered",
        up.elapsed().as_secs_f64()
    );

    let mut c = submit_session(kiln.smtp).await;
    let r = c
        .send(
            "a@shop.test",
            &["ann@dest.test"],
            &message("a@shop.test", "ann@dest.test", "after", 300),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    c.quit().await;
    wait_state(&kiln, &queued_id(&r.text), 0, "delivered", 20).await;
    drop(kiln);
    drop(redis);
}
