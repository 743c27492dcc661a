//! The embedded store's disk fills: new messages are refused (SMTP `452
//! 4.3.1`, the API `ResourceInsufficient`) while free space is below the
//! reserve (`store.min_free_mb`), what was queued before is still attempted
//! and settled in the reserve, nothing refused is queued, and intake
//! resumes by itself when space returns.
//!
//! The disk is a 256 MB tmpfs mounted over the data directory, so this
//! test must run as root (as CI does).

use crate::clients::{ready_to_send, send_params};
use crate::harness::{Backend, Env, binary, peers, relay};
use crate::store::durability::{received_all, subjects};
use kiln_testkit::process::Kiln;
use kiln_testkit::sink::Sink;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A tmpfs of `size_mb` over `dir`, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size_mb: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount(8)");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and must run as root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir.to_path_buf())
    }

    fn free_bytes(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df's figure")
    }

    /// Writes a file that leaves `left` bytes free.
    fn fill_leaving(&self, left: u64) -> PathBuf {
        let ballast = self.0.join("ballast");
        let mut f = std::fs::File::create(&ballast).unwrap();
        let mut todo = self.free_bytes().saturating_sub(left);
        let chunk = vec![0xa5u8; 1 << 20];
        while todo > 0 {
            let n = todo.min(chunk.len() as u64) as usize;
            match f.write_all(&chunk[..n]) {
                Ok(()) => todo -= n as u64,
                // Kiln wrote meanwhile: the disk is as full as asked.
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("writing the ballast: {e}"),
            }
        }
        let _ = f.sync_all();
        ballast
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A node on the embedded store, its data directory on a 256 MB disk of
/// its own, a reserve of 48 MB, relaying for loopback, retrying after 1 s.
async fn on_a_small_disk() -> (Env, SmallDisk) {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), true, true).await;
    let p = peers(Backend::Embedded, &sink).await;
    let disk = SmallDisk::mount(&p.opts.data_dir, 256);
    let mut opts = p.opts;
    opts.store = "min_free_mb = 48".into();
    opts.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
    opts.queue = "retry_schedule = [1]".into();
    let kiln = tokio::task::block_in_place(|| Kiln::start(binary(), &opts));
    let e = Env {
        dns: p.dns,
        sink,
        kiln,
        redis: None,
        shared: Default::default(),
        dir: p.dir,
    };
    (e, disk)
}

/// Relays `n` messages to later@dest.test, which answers 451 until told
/// otherwise, and waits until each was tried once; their subjects.
async fn held_in_queue(e: &Env, tag: &str, n: usize) -> Vec<String> {
    e.sink
        .set_rule("later@dest.test", "451 4.3.0 try again later");
    let tried = e.sink.rcpts_seen("later@dest.test");
    let mut acked = Vec::new();
    for i in 0..n {
        let subject = format!("{tag}-{i}");
        assert_eq!(
            relay(e.kiln.smtp, "later@dest.test", &subject).await.code,
            250
        );
        acked.push(subject);
    }
    let seen = || e.sink.rcpts_seen("later@dest.test") >= tried + n;
    assert!(crate::harness::wait_until(Duration::from_secs(10), seen).await);
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_mail_keeps_the_queue_and_recovers() {
    let (e, disk) = on_a_small_disk().await;
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 0).await;

    // Queued before the disk fills, and held there by a 451.
    e.sink
        .set_rule("later@dest.test", "451 4.3.0 try again later");
    let mut acked = Vec::new();
    for i in 0..3 {
        let subject = format!("before-{i}");
        assert_eq!(
            relay(e.kiln.smtp, "later@dest.test", &subject).await.code,
            250
        );
        acked.push(subject);
    }
    assert!(
        crate::harness::wait_until(Duration::from_secs(10), || e
            .sink
            .rcpts_seen("later@dest.test")
            >= 3)
        .await
    );

    let ballast = disk.fill_leaving(16 << 20);
    // Kiln trusts a reading of the free space for a moment: what it takes
    // until then is queued (and must be delivered), the first refusal ends it.
    let filled = Instant::now();
    let (r, refused) = loop {
        let subject = format!("refused-{}", acked.len());
        let r = relay(e.kiln.smtp, "sink@dest.test", &subject).await;
        if r.code != 250 {
            break (r, subject);
        }
        acked.push(subject);
        assert!(filled.elapsed() < Duration::from_secs(10), "never refused");
    };
    assert_eq!(r.code, 452, "{r:?}");
    assert!(r.text.starts_with("452 4.3.1 "), "{r:?}");
    let (code, why) = sdk
        .err(
            &acme,
            "SendEmail",
            send_params(domain, template, "ann@dest.test"),
        )
        .await;
    assert_eq!(code, "ResourceInsufficient", "{why}");

    // What was queued is still attempted and settled, in the reserve.
    e.sink.clear_rule("later@dest.test");
    let held = || received_all(&e.sink, &acked);
    assert!(
        crate::harness::wait_until(Duration::from_secs(30), held).await,
        "queued mail not delivered while the disk is full:\n{}",
        e.kiln.log_text()
    );
    let free_while_full = disk.free_bytes() >> 20;

    std::fs::remove_file(&ballast).unwrap();
    let freed = Instant::now();
    let recovered = loop {
        let r = relay(e.kiln.smtp, "sink@dest.test", "after").await;
        if r.code == 250 {
            break freed.elapsed();
        }
        assert_eq!(r.code, 452, "{r:?}");
        assert!(freed.elapsed() < Duration::from_secs(10), "still refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ok = sdk
        .ok(
            &acme,
            "SendEmail",
            send_params(domain, template, "ann@dest.test"),
        )
        .await;
    assert!(ok["MessageId"].is_string(), "{ok}");
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || {
            let got = subjects(&e.sink);
            got.iter().any(|s| s == "after") && e.sink.rcpts_seen("ann@dest.test") >= 1
        })
        .await
    );
    let got = subjects(&e.sink);
    assert!(!got.contains(&refused), "a refused message was sent");
    assert_eq!(
        e.sink.rcpts_seen("ann@dest.test"),
        1,
        "the refused API call queued nothing"
    );
    eprintln!(
        "refused below the reserve with {free_while_full} MB free; 3 queued messages delivered \
         meanwhile; new mail accepted {:.2} s after space returned",
        recovered.as_secs_f64()
    );
    drop(e);
    drop(disk);
}

/// Past the reserve (something else took the last bytes), the store cannot
/// record what its attempts did: the node stops (exit status 74) rather
/// than deliver the same messages again and again, and started again once
/// there is space (as systemd's `Restart=on-failure` does) it replays its
/// log: every acknowledged message is delivered, the ones whose delivery
/// could not be recorded once more at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_reserve_the_node_stops_and_loses_nothing_when_started_again() {
    let (mut e, disk) = on_a_small_disk().await;
    let acked = held_in_queue(&e, "held", 5).await;
    let ballast = disk.fill_leaving(0);
    e.sink.clear_rule("later@dest.test");
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = e.kiln.exited() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "still running with a full disk:\n{}",
            e.kiln.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stopped_after = stopped.elapsed();
    assert_eq!(status.code(), Some(74), "{status:?}");
    let delivered_before_stop = subjects(&e.sink).len();

    std::fs::remove_file(&ballast).unwrap();
    tokio::task::block_in_place(|| e.kiln.spawn());
    let got_all = || received_all(&e.sink, &acked);
    assert!(
        crate::harness::wait_until(Duration::from_secs(30), got_all).await,
        "not every acknowledged message delivered after the restart:\n{}",
        e.kiln.log_text()
    );
    crate::harness::nothing_happens_for(Duration::from_secs(2), "another copy").await;
    let got = subjects(&e.sink);
    let twice = got.len() - acked.len();
    eprintln!(
        "stopped {:.2} s after the disk filled (exit 74), {delivered_before_stop} of {} delivered \
         by then; after the restart all delivered, {twice} twice",
        stopped_after.as_secs_f64(),
        acked.len()
    );
    assert!(twice <= acked.len(), "{got:?}");
    let r = relay(e.kiln.smtp, "sink@dest.test", "after-restart").await;
    assert_eq!(r.code, 250, "{r:?}");
    drop(e);
    drop(disk);
}
