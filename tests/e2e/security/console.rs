//! The web console and the data directory as an attacker meets them, with
//! curl and a raw Redis client: sessions that outlive their credentials,
//! sign-in from another site, guessing, what the store and its files give
//! away, the headers a page is served with.

use crate::clients::create_account;
use crate::harness::{Backend, env};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// curl, with a cookie jar in `jar`: the status, the headers and the body.
fn curl(jar: &std::path::Path, args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "-", "-b"])
        .arg(jar)
        .arg("-c")
        .arg(jar)
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn sign_in(http: std::net::SocketAddr, jar: &std::path::Path, form: &[&str]) -> (u16, String) {
    let mut args = vec![format!("http://{http}/console/login")];
    for f in form {
        args.push("--data-urlencode".into());
        args.push(f.to_string());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, head, _) = curl(jar, &refs);
    (status, head)
}

fn console(http: std::net::SocketAddr, jar: &std::path::Path) -> (u16, String, String) {
    curl(jar, &[&format!("http://{http}/console")])
}

/// An account's console session ends when its keys are rotated or it is
/// disabled, and the operator's when its token is no longer the one in
/// force; the store holds no usable session id (on Redis, read with a
/// plain client: the key is a hash of the cookie, not the cookie).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_session_ends_with_its_credentials() {
    let e = env(Backend::Redis, |_| {}).await;
    let acme = create_account(&e, "acme");
    let jar = e.dir.path().join("jar");
    let id_field = format!("secret_id={}", acme.id);
    let key_field = format!("secret_key={}", acme.key);
    let (status, head) = sign_in(e.kiln.http, &jar, &[&id_field, &key_field]);
    assert_eq!(status, 303, "{head}");
    let (_, _, page) = console(e.kiln.http, &jar);
    assert!(page.contains("acme"), "{page}");
    let cookie = std::fs::read_to_string(&jar).unwrap();
    let id = cookie
        .lines()
        .find(|l| l.contains("kiln_console"))
        .and_then(|l| l.split('\t').next_back())
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{cookie}");
    let redis = e.redis.as_ref().unwrap();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*console:session:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        !keys[0].contains(&id),
        "the store names the session by its cookie: {keys:?}"
    );

    // The keys rotated: the session is over.
    let out = e.kiln.command(&["account", "rotate-key", "acme"]);
    assert!(out.status.success(), "{out:?}");
    let (_, _, page) = console(e.kiln.http, &jar);
    assert!(
        page.contains("secret_key") && !page.contains("Sign out"),
        "{page}"
    );

    // With the new keys, then disabled: over again.
    let new: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id_field = format!("secret_id={}", new["SecretId"].as_str().unwrap());
    let key_field = format!("secret_key={}", new["SecretKey"].as_str().unwrap());
    assert_eq!(sign_in(e.kiln.http, &jar, &[&id_field, &key_field]).0, 303);
    assert!(console(e.kiln.http, &jar).2.contains("Sign out"));
    let out = e.kiln.command(&["account", "disable", "acme"]);
    assert!(out.status.success(), "{out:?}");
    let (_, _, page) = console(e.kiln.http, &jar);
    assert!(!page.contains("Sign out"), "{page}");
    assert!(e.kiln.log_text().contains("console session ended"));
}

/// Sign-in from another site's page (login CSRF) is refused with no
/// session made; guessing is slowed, then refused from that address even
/// with the right token, until the operator lifts the block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_refuses_other_sites_and_guessing() {
    let e = env(Backend::Embedded, |_| {}).await;
    let jar = e.dir.path().join("jar");
    let token = e.kiln.admin_token();
    let token_field = format!("token={token}");
    let login = format!("http://{}/console/login", e.kiln.http);
    for header in [
        "Origin: https://attacker.example",
        "Sec-Fetch-Site: cross-site",
    ] {
        let (status, head, _) = curl(
            &jar,
            &[&login, "-H", header, "--data-urlencode", &token_field],
        );
        assert_eq!(status, 403, "{header}: {head}");
        assert!(!head.contains("set-cookie"), "{head}");
    }
    let own = format!("Origin: http://{}", e.kiln.http);
    let (status, head, _) = curl(
        &jar,
        &[&login, "-H", &own, "--data-urlencode", &token_field],
    );
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("set-cookie: kiln_console="), "{head}");
    // Every console page says how it may be read.
    let (_, head, _) = console(e.kiln.http, &jar);
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head.contains("referrer-policy: no-referrer"), "{head}");

    // Thirty wrong tokens at once from 127.0.0.1.
    let started = std::time::Instant::now();
    let guesses: Vec<_> = (0..30)
        .map(|n| {
            let (http, jar) = (e.kiln.http, e.dir.path().join(format!("jar{n}")));
            tokio::task::spawn_blocking(move || {
                sign_in(http, &jar, &[&format!("token=wrong{n}")]).0
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for g in guesses {
        statuses.push(g.await.unwrap());
    }
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(refused >= 15, "{statuses:?} after {:?}", started.elapsed());
    // Blocked now: the right token too, from this address.
    let fresh = e.dir.path().join("fresh");
    assert_eq!(sign_in(e.kiln.http, &fresh, &[&token_field]).0, 429);
    let out = e.kiln.command(&["auth", "unblock", "ip:127.0.0.1"]);
    assert!(out.status.success(), "{out:?}");
    let out = e
        .kiln
        .command(&["auth", "unblock", "user:console:operator"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sign_in(e.kiln.http, &fresh, &[&token_field]).0, 303);
}

/// A data directory left readable (a start by hand under umask 022, files
/// 0644 in a 0755 directory) is made private at the next start, with a
/// warning; the files the store makes are 0600 whatever the umask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_to_the_daemon() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("data");
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::write(dir.join("stale.wal"), b"").unwrap();
    for (p, m) in [
        (dir.join("stale.wal"), 0o644),
        (dir.join("tls"), 0o755),
        (dir.clone(), 0o755),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    // The daemon inherits this process's umask.
    // SAFETY: sets this process's file-creation mask.
    let before = unsafe { libc::umask(0o022) };
    let e = env(Backend::Embedded, |o| o.data_dir = dir.clone()).await;
    unsafe { libc::umask(before) };
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("tls")), 0o700);
    assert_eq!(mode(&dir.join("stale.wal")), 0o600);
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("kiln.") || name == "admin.token" {
            assert_eq!(mode(&path) & 0o077, 0, "{name} is {:o}", mode(&path));
            seen += 1;
        }
    }
    assert!(seen >= 3, "the store's files and the token");
    assert!(
        e.kiln
            .log_text()
            .contains("made private to the daemon's user")
    );
}
