//! The Tencent-compatible API, called with the official Python SDK
//! (tencentcloud-sdk-python-ses, installed by .ci/run).

use crate::harness::{Backend, env};
use serde_json::Value;

/// One action through the SDK; its one-line JSON outcome.
fn sdk_call(http: std::net::SocketAddr, id: &str, key: &str, action: &str) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/sdk_call.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(http.to_string())
        .args([id, key, action])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "sdk_call.py printed no outcome (is tencentcloud-sdk-python-ses installed?):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_authenticates_and_gets_tencent_errors() {
    let e = env(Backend::Embedded, |_| {}).await;
    let http = e.kiln.http;
    let call = |id: &'static str, key: &'static str, action: &'static str| {
        tokio::task::spawn_blocking(move || sdk_call(http, id, key, action))
    };
    // Signed with the account's key: authenticated; the action is a real
    // SES action that this Kiln does not implement yet.
    let r = call("AKIDshop", "shop-secret-key", "ListEmailIdentities")
        .await
        .unwrap();
    assert_eq!(r["code"], "UnsupportedOperation", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap_or("")
            .contains("account shop authenticated"),
        "{r}"
    );
    // Wrong key, unknown SecretId, unknown action.
    let r = call("AKIDshop", "wrong-key", "ListEmailIdentities")
        .await
        .unwrap();
    assert_eq!(r["code"], "AuthFailure.SignatureFailure", "{r}");
    let r = call("AKIDnobody", "shop-secret-key", "ListEmailIdentities")
        .await
        .unwrap();
    assert_eq!(r["code"], "AuthFailure.SecretIdNotFound", "{r}");
    let r = call("AKIDshop", "shop-secret-key", "NoSuchAction")
        .await
        .unwrap();
    assert_eq!(r["code"], "InvalidAction", "{r}");
}
