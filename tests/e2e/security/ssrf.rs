//! Requests steered at the node's own services (SSRF): callbacks to
//! internal addresses, names that resolve to them, a receiver that
//! redirects inward; a recipient's domain whose MTA-STS policy host or TLS
//! report endpoint is an internal address.

use crate::clients::{ready_to_send, send_params};
use crate::egress::tls_reports::{result_for, sent};
use crate::feedback::events::set_callback;
use crate::harness::{Backend, env};
use crate::harness::{submit_one, wait_state};
use kiln_testkit::https::{Page, StaticHttps};
use kiln_testkit::webhook::Webhook;
use std::net::{IpAddr, SocketAddr};
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

/// Whoever holds a recipient's domain names its MTA-STS policy host and
/// its TLS report endpoints. A tenant mailing `u@inside.test`, whose
/// `mta-sts.inside.test` and `reports.inside.test` resolve to 127.0.0.120
/// and whose report address is also the literal `https://127.0.0.120/`,
/// gets no request to that address: the policy is not fetched (the
/// message goes out as for a domain without one; the policy there would
/// have held it back), the report is not posted, and the log and the
/// report's result name the refusal and the setting that would allow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipients_domain_cannot_point_kiln_at_internal_https_hosts() {
    let inside = IpAddr::from([127, 0, 0, 120]);
    let names = ["mta-sts.inside.test", "reports.inside.test"];
    let (ca, cert) = kiln_testkit::tls::ca_signed_server_config_for(&names);
    let service = StaticHttps::start(SocketAddr::new(inside, 443), cert).await;
    service.serve(
        "mta-sts.inside.test",
        "/.well-known/mta-sts.txt",
        Page::text(
            200,
            "version: STSv1\r\nmode: enforce\r\nmx: *.elsewhere.test\r\nmax_age: 86400\r\n",
        ),
    );
    service.serve("reports.inside.test", "/r", Page::text(200, "thanks\n"));
    let e = env(Backend::Embedded, |o| {
        let bundle = o.data_dir.join("roots.pem");
        std::fs::create_dir_all(&o.data_dir).unwrap();
        std::fs::write(&bundle, &ca).unwrap();
        // The default: no internal network listed.
        o.delivery = format!(
            "https_allow_networks = []\ntls_ca_file = \"{}\"",
            bundle.display()
        );
    })
    .await;
    e.dns.add_mx("inside.test", 10, "mx.dest.test");
    e.dns
        .add_txt("_mta-sts.inside.test", "v=STSv1; id=20261206;");
    e.dns.add_txt(
        "_smtp._tls.inside.test",
        "v=TLSRPTv1; rua=https://reports.inside.test/r,https://127.0.0.120/r",
    );
    for name in names {
        e.dns.add_ip(name, inside);
    }

    let id = submit_one(e.kiln.smtp, "a@shop.test", "u@inside.test", "hi", 256).await;
    let rec = wait_state(&e.kiln, &id, 0, "delivered", 30).await;
    assert!(
        !rec["attempts"][0]["tls_policy"]
            .as_str()
            .unwrap_or_default()
            .contains("MTA-STS"),
        "{rec}"
    );
    assert!(
        crate::harness::wait_until(Duration::from_secs(10), || {
            let log = e.kiln.log_text();
            log.contains("mta-sts.inside.test (127.0.0.120) is an internal address")
                && log.contains("delivery.https_allow_networks")
        })
        .await,
        "{}",
        e.kiln.log_text()
    );

    let out = sent(&e.kiln.command(&["tls-report", "send"]));
    for url in ["https://reports.inside.test/r", "https://127.0.0.120/r"] {
        let result = result_for(&out, "inside.test", url);
        assert!(
            result.starts_with("not posted") && result.contains("is an internal address"),
            "{url}: {result}"
        );
    }
    for host in names.iter().copied().chain(["127.0.0.120"]) {
        assert_eq!(service.served(host), 0, "{host} was asked");
    }
}
