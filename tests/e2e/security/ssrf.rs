//! Callbacks steered at the node's own services (SSRF): internal
//! addresses, names that resolve to them, a receiver that redirects inward.

use crate::clients::{ready_to_send, send_params};
use crate::feedback::events::set_callback;
use crate::harness::{Backend, env};
use kiln_testkit::webhook::Webhook;
use std::time::Duration;

/// An internal service on 127.0.0.1 never sees a request: a callback URL
/// naming a loopback, link-local or metadata address is refused when it is
/// set; `localhost` is refused when it resolves; a receiver on a listed
/// network (127.0.0.2, `callbacks.allow_networks`) gets its callbacks, but
/// its `307` into 127.0.0.1 is not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_never_reach_internal_services() {
    let internal = Webhook::start().await;
    let outside = Webhook::start_at("127.0.0.2".parse().unwrap()).await;
    outside.redirect_to(&internal.url("/internal/admin"));
    let e = env(Backend::Embedded, |o| {
        o.callbacks = "allow_networks = [\"127.0.0.2/32\"]\nretry_base_ms = 200\n".into();
    })
    .await;
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;
    let port = internal.addr.port();
    for url in [
        internal.url("/x"),
        format!("http://[::1]:{port}/x"),
        format!("http://2130706433:{port}/x"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        let out = e.kiln.command(&["account", "callback", "acme", &url]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{url}: {said}");
        assert!(
            said.contains("InvalidParameterValue.CallbackUrl") && said.contains("internal address"),
            "{url}: {said}"
        );
    }

    // A name that resolves inside: refused as the request is made.
    set_callback(&e, "acme", &format!("http://localhost:{port}/events"), None);
    sdk.ok(
        &acme,
        "SendEmail",
        send_params(domain, template, "a@dest.test"),
    )
    .await;
    assert!(e.sink.wait_count(1, Duration::from_secs(20)).await);
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || e
            .kiln
            .log_text()
            .contains("is an internal address"))
        .await,
        "{}",
        e.kiln.log_text()
    );

    // The listed receiver gets its callback; its redirect goes nowhere.
    set_callback(&e, "acme", &outside.url("/events"), None);
    sdk.ok(
        &acme,
        "SendEmail",
        send_params(domain, template, "b@dest.test"),
    )
    .await;
    assert!(
        outside.wait_count(2, Duration::from_secs(20)).await,
        "{:?}",
        outside.hooks()
    );
    assert!(
        crate::harness::wait_until(Duration::from_secs(10), || e
            .kiln
            .log_text()
            .contains("redirects are not followed"))
        .await
    );
    crate::harness::nothing_happens_for(
        Duration::from_secs(1),
        "a request to the internal service",
    )
    .await;
    assert!(internal.hooks().is_empty(), "{:?}", internal.hooks());
}
