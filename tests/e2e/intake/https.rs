//! The HTTP listener over TLS: the SDK's default protocol, curl, the
//! console's cookie, plain HTTP from this host only.

use crate::clients::{Sdk, create_account};
use crate::harness::{Backend, env};
use serde_json::json;
use std::process::Command;

/// With `http.tls_cert` and `http.tls_key`, the SDK (HTTPS, its default)
/// and curl (`--cacert`) talk to Kiln over TLS; the `kiln` command still
/// reaches it in plain HTTP from this host; a plain request from another
/// address gets `400` naming HTTPS; the console's cookie is Secure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_console_speak_https() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) =
        kiln_testkit::tls::ca_signed_files(certs.path(), &["localhost", "127.0.0.1"]);
    let e = env(Backend::Embedded, |o| {
        o.http = format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        );
        o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
    })
    .await;
    // The kiln command, on this host, in plain HTTP.
    let acme = create_account(&e, "acme");
    let port = e.kiln.http.port();
    let mut sdk = Sdk::start_with(&format!("localhost:{port}"), "https", Some(&ca)).await;
    let listed = sdk.ok(&acme, "ListEmailIdentities", json!({})).await;
    assert_eq!(listed["Total"], 0, "{listed}");
    // curl over TLS, checking the certificate.
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&ca)
        .arg(format!("https://localhost:{port}/healthz"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"status\":\"ok\""),
        "{out:?}"
    );
    // The console over TLS: its cookie only goes back over TLS.
    let token = e.kiln.admin_token();
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&ca)
        .args(["--data-urlencode", &format!("token={token}")])
        .arg(format!("https://localhost:{port}/console/login"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.contains("set-cookie: kiln_console=") && head.contains("; secure"),
        "{head}"
    );
    // Plain HTTP from another address: refused, naming HTTPS.
    let plain = tokio::net::TcpSocket::new_v4().unwrap();
    plain.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = plain.connect(e.kiln.http).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("HTTPS"),
        "{answer}"
    );
}
