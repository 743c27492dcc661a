//! What a new operator meets, met the way they meet it: a config file
//! written by hand (sections given in part), the environment a deploy
//! script leaves, a policy script written from docs/lua-api.md with the
//! mistakes people make, the SDK and smtplib as peers.

use crate::clients::smtplib;
use crate::clients::{Sdk, create_account, send_params, verified_sender};
use crate::harness::{BOTH, Env, binary, queued, wait_state};
use kiln_testkit::client::message;
use kiln_testkit::dns::DnsServer;
use kiln_testkit::process::Kiln;
use kiln_testkit::sink::Sink;
use std::net::SocketAddr;
use std::time::Duration;

/// One message from a relay client (no AUTH) with smtplib: the reply that
/// decided it.
async fn relayed(
    smtp: SocketAddr,
    from: &str,
    to: &str,
    subject: &str,
) -> kiln_testkit::client::Reply {
    smtplib(smtp, "-", "", from, &[to], &message(from, to, subject, 256)).await
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], kiln_testkit::free_port()))
}

/// A config as README invites one: only what differs from the defaults,
/// `[dns]` with its nameservers and nothing else.
fn hand_written(
    dir: &std::path::Path,
    dns: &DnsServer,
    sink: &Sink,
    smtp: SocketAddr,
    http: SocketAddr,
) -> String {
    format!(
        r#"# kiln.toml
[server]
hostname = "kiln.test"
data_dir = "{data}"

[dns]
nameservers = ["{ns}"]

[delivery]
mx_port = {mx}

[http]
listen = "{http}"

[[smtp.listeners]]
address = "{smtp}"
relay_networks = ["127.0.0.0/8"]

[policy]
script = "{data}/policy.lua"
"#,
        data = dir.display(),
        ns = dns.nameserver(),
        mx = sink.addr.port(),
    )
}

/// `[dns]` given in part gets the default timeout, so
/// a sender domain verifies and mail is delivered; `KILN_BIN` and its kind
/// in the environment are not settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_written_config_and_a_deploy_scripts_environment() {
    let dns = DnsServer::start().await;
    dns.add_mx("dest.test", 10, "mx.dest.test");
    dns.add_ip("mx.dest.test", "127.0.0.1".parse().unwrap());
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (smtp, http) = (free_addr(), free_addr());
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("policy.lua"),
        "return { config = { limits = { rate_per_second = 1000 } } }",
    )
    .unwrap();
    let kiln = tokio::task::block_in_place(|| {
        Kiln::start_configured(
            binary(),
            &data,
            &hand_written(&data, &dns, &sink, smtp, http),
            smtp,
            http,
            &[
                ("KILN_BIN", "/usr/local/bin/kiln"),
                ("KILN_VERSION", "0.1.0"),
                ("KILN_HOME", "/opt/kiln"),
            ],
        )
    });
    let e = Env {
        dns,
        sink,
        kiln,
        redis: None,
        shared: Default::default(),
        dir,
    };
    // The DNS checks of a sender domain work: the lookups had time.
    let mut sdk = Sdk::start(e.kiln.http).await;
    let acme = create_account(&e, "acme");
    verified_sender(&e, &mut sdk, &acme, "mail.acme.test", 1).await;
    // And so does delivery (an MX lookup).
    let r = relayed(e.kiln.smtp, "a@kiln-relay.test", "r@dest.test", "hello").await;
    assert_eq!(r.code, 250, "{r:?}");
    wait_state(
        &e.kiln,
        &crate::harness::queued_id(&r.text),
        0,
        "delivered",
        20,
    )
    .await;

    // A setting from the environment that is wrong names the variable.
    let out = std::process::Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&e.kiln.config)
        .env("KILN_DELIVERY__MX_PORT", "twenty-five")
        .env("KILN_BIN", "/usr/local/bin/kiln")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("environment variable KILN_DELIVERY__MX_PORT"),
        "{err}"
    );
    assert!(
        !err.contains("kiln.toml"),
        "the file is not to blame: {err}"
    );
}

/// Warm-up is built into batch sending; a new domain's
/// SendEmail has its reputation level's quota (level 1: 500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_email_is_not_held_to_the_warm_up_curve() {
    for backend in BOTH {
        let e = crate::harness::env(backend, |o| {
            // The default plugins as shipped, with a short curve (so the
            // test need not send 200) and room for a fast client.
            o.policy = "return { config = { limits = { rate_per_second = 1000 }, warmup = { curve = { 3 } } } }".into();
        })
        .await;
        let mut sdk = Sdk::start(e.kiln.http).await;
        let acme = create_account(&e, "acme");
        verified_sender(&e, &mut sdk, &acme, "mail.acme.test", 1).await;
        let template = crate::clients::approved_template(&mut sdk, &acme).await;
        for i in 0..6 {
            let r = sdk
                .call(
                    &acme,
                    "SendEmail",
                    send_params("mail.acme.test", template, &format!("r{i}@dest.test")),
                )
                .await;
            assert_eq!(
                r["ok"], true,
                "{backend:?}: SendEmail {i} past a warm-up cap of 3: {r}"
            );
        }
        assert!(e.sink.wait_count(6, Duration::from_secs(30)).await);
    }
}

fn with_policy(policy: &'static str) -> impl FnOnce(&mut kiln_testkit::process::KilnOptions) {
    move |o| {
        o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
        o.policy = policy.into();
    }
}

/// An answer a policy author might write that Kiln does not
/// understand fails closed (451, counted, logged at the script's line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_kiln_does_not_understand_fails_closed() {
    let e = crate::harness::env(
        crate::harness::Backend::Embedded,
        with_policy(
            r#"return { hooks = {
  on_rcpt_to = function(tx)
    if tx.recipient:match("^blocked@") then return { action = "deny" } end
  end,
  check_limits = function(msg)
    if msg.subject == "caps" then return { action = "REJECT" } end
    return { action = "send" }
  end,
} }"#,
        ),
    )
    .await;
    let smtp = e.kiln.smtp;
    let r = relayed(smtp, "a@shop.test", "blocked@dest.test", "hi").await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text.contains("4.3.0"), "{r:?}");
    let r = relayed(smtp, "a@shop.test", "ok@dest.test", "caps").await;
    assert_eq!(r.code, 451, "{r:?}");
    let r = relayed(smtp, "a@shop.test", "ok@dest.test", "fine").await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(e.sink.wait_count(1, Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(e.sink.count(), 1, "nothing refused was delivered");
    assert_eq!(queued(&e.kiln).await, 0);
    let out = e.kiln.command(&["policy"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["errors"]["on_rcpt_to"], 1, "{info}");
    assert_eq!(info["errors"]["check_limits"], 1, "{info}");
    let log = e.kiln.log_text();
    assert!(
        log.contains("policy-node-a.lua:2: bad return value"),
        "{log}"
    );
    assert!(log.contains("unknown variant `deny`"), "{log}");
}

/// A misspelt plugin setting stops the load, naming file,
/// plugin and key: at start, at check-config and at reload (where the
/// running policy stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_plugin_setting_is_named() {
    let e = crate::harness::env(
        crate::harness::Backend::Embedded,
        with_policy("return { config = { limits = { rate_per_second = 1000 } } }"),
    )
    .await;
    std::fs::write(
        &e.kiln.policy,
        "return { config = { limits = { rate_per_secnd = 5 } } }",
    )
    .unwrap();
    for args in [&["check-config"][..], &["reload"][..]] {
        let out = e.kiln.command(args);
        assert!(!out.status.success(), "{args:?}");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(
                "policy-node-a.lua: config.limits.rate_per_secnd: plugin limits has no such setting"
            ),
            "{args:?}: {text}\n{}",
            e.kiln.log_text()
        );
    }
    // The running policy is the old one.
    let r = relayed(e.kiln.smtp, "a@shop.test", "r@dest.test", "still").await;
    assert_eq!(r.code, 250, "{r:?}");
    // A wrong type, at start.
    let mut e = e;
    e.kiln.terminate();
    std::fs::write(
        &e.kiln.policy,
        "return { config = { warmup = { curve = 200 } } }",
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["serve", "--config"])
        .arg(&e.kiln.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("config.warmup.curve: expected a list of numbers, got integer"),
        "{err}"
    );
}
