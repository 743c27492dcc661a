//! MTA-STS as receiving domains publish it (a TXT record in the test's DNS
//! server, the policy on an HTTPS host with a certificate from a private CA
//! Kiln is told to trust), against MX hosts that keep or break the
//! promise: mail for an `enforce` domain goes only to an MX the policy
//! names, over TLS verified for it, or waits; a `testing` policy changes
//! nothing.

use crate::harness::{Backend, env_with_sink, submit_one, wait_state};
use kiln_testkit::https::{Page, StaticHttps};
use kiln_testkit::sink::Sink;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// `id`, `mode` and MX patterns of each receiving domain's policy.
const POLICIES: &[(&str, &str, &[&str])] = &[
    ("good.test", "enforce", &["mx.good.test"]),
    ("wrongcert.test", "enforce", &["mx.wrongcert.test"]),
    ("unlisted.test", "enforce", &["*.elsewhere.test"]),
    ("notls.test", "enforce", &["mx.notls.test"]),
    ("testing.test", "testing", &["mx.testing.test"]),
    // Not a policy: no mode RFC 8461 knows.
    ("malformed.test", "sometimes", &["mx.malformed.test"]),
];

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforce_policy_is_kept_and_a_testing_one_changes_nothing() {
    // Three MX servers on one port: a certificate for mx.good.test, one
    // for another name, and no STARTTLS at all.
    let (good_ca, good_cert) = kiln_testkit::tls::ca_signed_server_config("mx.good.test");
    let (other_ca, other_cert) =
        kiln_testkit::tls::ca_signed_server_config("mx.somewhere-else.test");
    let good = Sink::start_with(SocketAddr::new(ip(41), 0), Some(good_cert), true).await;
    let port = good.addr.port();
    let wrong = Sink::start_with(SocketAddr::new(ip(42), port), Some(other_cert), true).await;
    let plain = Sink::start_with(SocketAddr::new(ip(43), port), None, true).await;

    // The policy host, at the address every mta-sts.DOMAIN resolves to.
    let hosts: Vec<String> = POLICIES
        .iter()
        .map(|(d, ..)| format!("mta-sts.{d}"))
        .collect();
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let (policy_ca, policy_cert) = kiln_testkit::tls::ca_signed_server_config_for(&names);
    let policy_host = StaticHttps::start(SocketAddr::new(ip(40), 443), policy_cert).await;

    let e = env_with_sink(Backend::Embedded, good, |o, dir| {
        let bundle = dir.join("roots.pem");
        std::fs::write(&bundle, format!("{good_ca}{other_ca}{policy_ca}")).unwrap();
        o.queue = "retry_schedule = [1]".into();
        o.delivery = format!("tls_ca_file = \"{}\"", bundle.display());
    })
    .await;
    for (domain, mode, mx) in POLICIES {
        e.dns
            .add_txt(&format!("_mta-sts.{domain}"), "v=STSv1; id=20261206T1;");
        e.dns.add_ip(&format!("mta-sts.{domain}"), ip(40));
        let mut body = format!("version: STSv1\r\nmode: {mode}\r\n");
        for m in *mx {
            body.push_str(&format!("mx: {m}\r\n"));
        }
        body.push_str("max_age: 86400\r\n");
        policy_host.serve(
            &format!("mta-sts.{domain}"),
            "/.well-known/mta-sts.txt",
            Page {
                status: 200,
                content_type: "text/plain; charset=utf-8".into(),
                body,
            },
        );
    }
    for (domain, mx, at) in [
        ("good.test", "mx.good.test", 41),
        ("wrongcert.test", "mx.wrongcert.test", 42),
        ("unlisted.test", "mx.unlisted.test", 41),
        ("notls.test", "mx.notls.test", 43),
        ("testing.test", "mx.testing.test", 42),
        ("malformed.test", "mx.malformed.test", 42),
    ] {
        e.dns.add_mx(domain, 10, mx);
        e.dns.add_ip(mx, ip(at));
    }

    let send = |to: &'static str| submit_one(e.kiln.smtp, "a@shop.test", to, to, 512);
    let good_id = send("u@good.test").await;
    let wrong_id = send("u@wrongcert.test").await;
    let unlisted_id = send("u@unlisted.test").await;
    let plain_id = send("u@notls.test").await;
    let testing_id = send("u@testing.test").await;
    let malformed_id = send("u@malformed.test").await;

    // Kept: verified TLS to the MX the policy names.
    let rec = wait_state(&e.kiln, &good_id, 0, "delivered", 30).await;
    assert!(rec["attempts"][0]["tls"].is_string(), "{rec}");
    assert_eq!(
        rec["attempts"][0]["tls_policy"], "MTA-STS enforce id=20261206T1",
        "{rec}"
    );
    // Broken, each way, under enforce: deferred, the reason naming the
    // policy; nothing sent to the MX instead.
    for (id, says) in [
        (&wrong_id, "MTA-STS enforce id=20261206T1"),
        (
            &unlisted_id,
            "names none of its MX hosts (mx.unlisted.test)",
        ),
        (&plain_id, "MTA-STS enforce id=20261206T1"),
    ] {
        let rec = wait_state(&e.kiln, id, 0, "deferred", 30).await;
        let why = rec["attempts"][0]["message"].as_str().unwrap_or_default();
        assert!(why.contains(says), "{why}\n{rec}");
        assert_eq!(rec["attempts"][0]["enhanced_code"], "4.7.5", "{rec}");
    }
    assert!(
        plain.rcpts_seen("u@notls.test") == 0 && wrong.rcpts_seen("u@wrongcert.test") == 0,
        "a recipient was given to an MX the policy did not allow"
    );
    let why = wait_state(&e.kiln, &plain_id, 0, "deferred", 30).await["attempts"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("STARTTLS"), "{why}");
    // Testing: delivered as without a policy, to the MX with the wrong
    // certificate.
    let rec = wait_state(&e.kiln, &testing_id, 0, "delivered", 30).await;
    assert_eq!(
        rec["attempts"][0]["tls_policy"], "MTA-STS testing id=20261206T1",
        "{rec}"
    );
    assert_eq!(wrong.rcpts_seen("u@testing.test"), 1);
    // ... yet its report shows the certificate the policy would refuse.
    let shown = e.kiln.command(&["tls-report", "show", "testing.test"]);
    let report: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
    assert_eq!(
        report["policies"][0]["failure-details"][0]["result-type"], "certificate-host-mismatch",
        "{report}"
    );
    // A policy file that does not parse is no policy: delivered as
    // without one.
    let rec = wait_state(&e.kiln, &malformed_id, 0, "delivered", 30).await;
    assert!(rec["attempts"][0]["tls_policy"].is_null(), "{rec}");
    assert_eq!(wrong.rcpts_seen("u@malformed.test"), 1);
    // ... and its report says the policy was invalid.
    let shown = e.kiln.command(&["tls-report", "show", "malformed.test"]);
    let report: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
    assert_eq!(
        report["policies"][0]["policy"]["policy-type"], "sts",
        "{report}"
    );
    assert_eq!(
        report["policies"][0]["failure-details"][0]["result-type"], "sts-policy-invalid",
        "{report}"
    );
    // Each session counted by policy and by RFC 8460's result type.
    for (result, at_least) in [
        ("success", 1.0),
        // The enforce domain's MX and the testing one's.
        ("certificate-host-mismatch", 2.0),
        ("starttls-not-supported", 1.0),
    ] {
        let label = format!("policy=\"mta-sts\",result=\"{result}\"");
        let n = crate::harness::metric(&e, "kiln_tls_sessions_total", &label).await;
        assert!(n >= at_least, "{result}: {n}");
    }
    // The day's TLS report for the domain whose MX showed another name's
    // certificate, as RFC 8460 gives it.
    let shown = e.kiln.command(&["tls-report", "show", "wrongcert.test"]);
    let report: serde_json::Value = serde_json::from_slice(&shown.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&shown.stderr)));
    let policy = &report["policies"][0];
    assert_eq!(policy["policy"]["policy-type"], "sts", "{report}");
    assert_eq!(
        policy["policy"]["policy-domain"], "wrongcert.test",
        "{report}"
    );
    assert_eq!(
        policy["policy"]["policy-string"][1], "mode: enforce",
        "{report}"
    );
    assert_eq!(
        policy["summary"]["total-successful-session-count"], 0,
        "{report}"
    );
    let failure = &policy["failure-details"][0];
    assert_eq!(
        failure["result-type"], "certificate-host-mismatch",
        "{report}"
    );
    assert_eq!(
        failure["receiving-mx-hostname"], "mx.wrongcert.test",
        "{report}"
    );
    assert!(
        failure["failed-session-count"].as_u64() >= Some(1),
        "{report}"
    );
    assert!(
        report["report-id"]
            .as_str()
            .is_some_and(|r| r.ends_with("_wrongcert.test@kiln.test")),
        "{report}"
    );
    let shown = e.kiln.command(&["tls-report", "show", "good.test"]);
    let report: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
    assert!(
        report["policies"][0]["summary"]["total-successful-session-count"].as_u64() >= Some(1),
        "{report}"
    );
    let explained = e.kiln.command(&["explain", &wrong_id]);
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(
        text.contains("under MTA-STS enforce id=20261206T1"),
        "{text}"
    );

    // Each policy was fetched once, and is kept: a policy host gone does
    // not undo it (the domain's next mail still waits).
    for (domain, ..) in POLICIES {
        assert_eq!(
            policy_host.served(&format!("mta-sts.{domain}")),
            1,
            "{domain}"
        );
    }
    drop(policy_host);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = send("v@wrongcert.test").await;
    let rec = wait_state(&e.kiln, &again, 0, "deferred", 30).await;
    assert!(
        rec["attempts"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("MTA-STS enforce"),
        "{rec}"
    );
}
