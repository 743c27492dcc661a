//! What a DKIM signature costs Kiln, beside what the signature itself costs
//! OpenSSL on the same machine, in one run: `openssl speed` signs with an
//! RSA-2048 key (and Ed25519), then Kiln signs N messages of 2 KB as
//! admission does (`DkimSigners::sign`: the message's headers read and
//! canonicalised, its body hashed, the signature made and the header
//! written), on one thread, timed by that thread's CPU clock. Prints
//!
//! `kiln dkim algorithm=<rsa-2048|ed25519> kiln_us_per_msg=<k> openssl_us_per_sig=<o> ratio=<k/o> n=<N>`
//!
//! Usage: kiln-dkim-bench [--n N] [--openssl PATH] [--seconds S]
//!
//! `--seconds` is how long each `openssl speed` runs (3 unless given).
//! Without an `openssl` program the ratio is left out.

mod help;

use kiln::config::DkimAlgorithm;
use kiln::ses::dkim::{DkimKey, DkimSigners};
use kiln::store::Store;
use kiln_testkit::client::message;
use std::process::Command;
use std::time::Duration;

// The allocator `kiln serve` runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    n: usize,
    openssl: String,
    seconds: u32,
}

fn parse_args() -> Args {
    let mut args = Args {
        n: 2000,
        openssl: "openssl".into(),
        seconds: 3,
    };
    let mut it = std::env::args().skip(1);
    let fail = |e: String| -> ! {
        eprintln!("kiln-dkim-bench: {e}");
        std::process::exit(2)
    };
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            fail(format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--n" => {
                args.n = value
                    .parse()
                    .unwrap_or_else(|_| fail("--n: a number".into()))
            }
            "--openssl" => args.openssl = value,
            "--seconds" => {
                args.seconds = value
                    .parse()
                    .unwrap_or_else(|_| fail("--seconds: a number".into()))
            }
            other => fail(format!("unknown flag {other}")),
        }
    }
    args
}

/// This thread's CPU time so far, in seconds.
fn thread_cpu() -> f64 {
    // /proc/thread-self/stat counts in clock ticks (10 ms): too coarse for
    // a signature; schedstat counts nanoseconds on the CPU.
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ns| ns / 1e9)
        .unwrap_or(0.0)
}

/// µs per signature by `openssl speed` for `what` (`rsa2048`, `ed25519`),
/// read from its machine-readable report (`-mr`).
fn openssl_us(openssl: &str, what: &str, seconds: u32) -> Option<f64> {
    let out = Command::new(openssl)
        .args(["speed", "-mr", "-seconds", &seconds.to_string(), what])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // OpenSSL 3 writes signatures a second: `+F2:<i>:<bits>:<sign/s>:<verify/s>`
    // for RSA, `+F6:<i>:<bits>:<name>:<sign/s>:<verify/s>` for EdDSA.
    text.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            let at = match *fields.first()? {
                "+F2" => 3,
                "+F6" => 4,
                _ => return None,
            };
            fields.get(at)?.parse::<f64>().ok()
        })
        .filter(|rate| *rate > 0.0)
        .map(|rate| 1e6 / rate)
        .reduce(f64::min)
}

async fn kiln_us(signers: &DkimSigners, n: usize, body: &[u8]) -> f64 {
    // Warm the cache of signers (the key is read from the store once).
    signers.sign("shop.test", body).await.expect("sign");
    let before = thread_cpu();
    for _ in 0..n {
        let header = signers.sign("shop.test", body).await.expect("sign");
        assert!(header.is_some_and(|h| h.starts_with("DKIM-Signature:")));
    }
    (thread_cpu() - before) * 1e6 / n as f64
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    help::or_exit(include_str!("dkim.rs"));
    let args = parse_args();
    let dir = tempfile::tempdir().expect("temp dir");
    let body = message("news@shop.test", "someone@example.test", "bench", 2048);
    for (algorithm, name, openssl_name) in [
        (DkimAlgorithm::Rsa, "rsa-2048", "rsa2048"),
        (DkimAlgorithm::Ed25519, "ed25519", "ed25519"),
    ] {
        let store = Store::Embedded(
            kiln::store::embedded::EmbeddedStore::open(
                &dir.path().join(format!("{name}.redb")),
                Duration::from_secs(86400),
                kiln::clock::Clock::system(),
            )
            .expect("embedded store"),
        );
        let key = DkimKey::generate("shop.test", "kiln", algorithm).expect("key");
        store
            .put(
                &kiln::ses::dkim::store_key("shop.test"),
                &serde_json::to_vec(&key).expect("json"),
                None,
            )
            .await
            .expect("store the key");
        let signers = DkimSigners::new(
            store,
            kiln::config::DkimSettings::default().sign_headers.clone(),
        );
        let kiln = kiln_us(&signers, args.n, &body).await;
        let openssl = openssl_us(&args.openssl, openssl_name, args.seconds);
        match openssl {
            Some(o) => println!(
                "kiln dkim algorithm={name} kiln_us_per_msg={kiln:.1} openssl_us_per_sig={o:.1} ratio={:.3} n={}",
                kiln / o,
                args.n
            ),
            None => println!(
                "kiln dkim algorithm={name} kiln_us_per_msg={kiln:.1} n={}",
                args.n
            ),
        }
    }
}
