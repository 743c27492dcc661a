//! MTA-STS as receiving domains publish it (a TXT record in the test's DNS
//! server, the policy on an HTTPS host with a certificate from a private CA
//! Kiln is told to trust), against MX hosts that keep or break the
//! promise: mail for an `enforce` domain goes only to an MX the policy
//! names, over TLS verified for it (a good certificate, not another
//! name's, an expired or a self-signed one), or waits; a `testing` policy
//! changes nothing but the report; a policy that cannot be had (404, a
//! redirect, a file that does not parse) is no policy; a kept policy holds
//! while its host is down; a changed id is fetched again. On both stores.

use crate::harness::{BOTH, Backend, Env, env_with_sink, submit_one, wait_state};
use kiln_testkit::https::{Page, StaticHttps};
use kiln_testkit::sink::Sink;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A policy's mode and MX patterns.
type PolicyFile = (&'static str, &'static [&'static str]);

/// Each receiving domain: its policy (None: the host does not serve one),
/// and which MX server (by address offset) its MX host is.
const DOMAINS: &[(&str, Option<PolicyFile>, u8)] = &[
    ("good.test", Some(("enforce", &["mx.good.test"])), 1),
    (
        "wrongcert.test",
        Some(("enforce", &["mx.wrongcert.test"])),
        2,
    ),
    ("unlisted.test", Some(("enforce", &["*.elsewhere.test"])), 1),
    ("notls.test", Some(("enforce", &["mx.notls.test"])), 3),
    ("expired.test", Some(("enforce", &["mx.expired.test"])), 4),
    (
        "selfsigned.test",
        Some(("enforce", &["mx.selfsigned.test"])),
        5,
    ),
    ("testing.test", Some(("testing", &["mx.testing.test"])), 2),
    // Not a policy: no mode RFC 8461 knows.
    (
        "malformed.test",
        Some(("sometimes", &["mx.malformed.test"])),
        2,
    ),
    // The policy host answers 404, or redirects.
    ("notfound.test", None, 1),
    ("redirect.test", None, 1),
];

const ID1: &str = "20261206T1";
const ID2: &str = "20261206T2";

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn policy_file(mode: &str, mx: &[&str]) -> Page {
    let mut body = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        body.push_str(&format!("mx: {m}\r\n"));
    }
    body.push_str("max_age: 86400\r\n");
    Page {
        status: 200,
        content_type: "text/plain; charset=utf-8".into(),
        body,
    }
}

/// The day's TLS report for `domain`, as `kiln tls-report show` prints it.
fn report(e: &Env, domain: &str) -> Value {
    let shown = e.kiln.command(&["tls-report", "show", domain]);
    serde_json::from_slice(&shown.stdout).unwrap_or_default()
}

/// The first failure type `domain`'s report gives, and its policy type.
fn first_failure(e: &Env, domain: &str) -> (String, String) {
    let r = report(e, domain);
    let p = &r["policies"][0];
    (
        p["failure-details"][0]["result-type"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        p["policy"]["policy-type"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforce_policy_is_kept_and_a_testing_one_changes_nothing() {
    // Each store on addresses of its own: the policy host holds port 443.
    for (backend, base) in BOTH.into_iter().zip([40, 70]) {
        policies_on(backend, base).await;
    }
}

async fn policies_on(backend: Backend, base: u8) {
    // MX servers on one port: a certificate for mx.good.test, one for
    // another name, no STARTTLS at all, an expired one, a self-signed one.
    let (good_ca, good_cert) = kiln_testkit::tls::ca_signed_server_config("mx.good.test");
    let (other_ca, other_cert) =
        kiln_testkit::tls::ca_signed_server_config("mx.somewhere-else.test");
    let (expired_ca, expired_cert) =
        kiln_testkit::tls::ca_signed_expired_server_config("mx.expired.test");
    let self_signed = kiln_testkit::tls::server_config("mx.selfsigned.test");
    let good = Sink::start_with(SocketAddr::new(ip(base + 1), 0), Some(good_cert), true).await;
    let port = good.addr.port();
    let at = |n: u8| SocketAddr::new(ip(base + n), port);
    let wrong = Sink::start_with(at(2), Some(other_cert), true).await;
    let _plain = Sink::start_with(at(3), None, true).await;
    let expired = Sink::start_with(at(4), Some(expired_cert), true).await;
    let selfsigned = Sink::start_with(at(5), Some(self_signed), true).await;

    // The policy host, at the address every mta-sts.DOMAIN resolves to.
    let hosts: Vec<String> = DOMAINS
        .iter()
        .map(|(d, ..)| format!("mta-sts.{d}"))
        .collect();
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let (policy_ca, policy_cert) = kiln_testkit::tls::ca_signed_server_config_for(&names);
    let policy_addr = SocketAddr::new(ip(base), 443);
    let policy_host = StaticHttps::start(policy_addr, policy_cert.clone()).await;

    let e = env_with_sink(backend, good, |o, dir| {
        let bundle = dir.join("roots.pem");
        std::fs::write(
            &bundle,
            format!("{good_ca}{other_ca}{expired_ca}{policy_ca}"),
        )
        .unwrap();
        o.queue = "retry_schedule = [1]".into();
        o.delivery = format!("tls_ca_file = \"{}\"", bundle.display());
    })
    .await;
    for (domain, policy, mx_at) in DOMAINS {
        e.dns.add_txt(
            &format!("_mta-sts.{domain}"),
            &format!("v=STSv1; id={ID1};"),
        );
        e.dns.add_ip(&format!("mta-sts.{domain}"), ip(base));
        let host = format!("mta-sts.{domain}");
        match (domain, policy) {
            (_, Some((mode, mx))) => {
                policy_host.serve(&host, "/.well-known/mta-sts.txt", policy_file(mode, mx))
            }
            (&"redirect.test", None) => policy_host.serve(
                &host,
                "/.well-known/mta-sts.txt",
                Page::redirect("https://mta-sts.good.test/.well-known/mta-sts.txt"),
            ),
            _ => {}
        }
        let mx = format!("mx.{domain}");
        e.dns.add_mx(domain, 10, &mx);
        e.dns.add_ip(&mx, ip(base + mx_at));
    }

    let smtp = e.kiln.smtp;
    let send = |to: String| async move { submit_one(smtp, "a@shop.test", &to, &to, 512).await };
    let mut ids = std::collections::HashMap::new();
    for (domain, ..) in DOMAINS {
        ids.insert(*domain, send(format!("u@{domain}")).await);
    }

    // Kept: verified TLS to the MX the policy names.
    let rec = wait_state(&e.kiln, &ids["good.test"], 0, "delivered", 30).await;
    assert!(rec["attempts"][0]["tls"].is_string(), "{rec}");
    assert_eq!(
        rec["attempts"][0]["tls_policy"],
        format!("MTA-STS enforce id={ID1}"),
        "{rec}"
    );
    // Broken, each way, under enforce: deferred, the reason naming the
    // policy and what broke it; nothing sent to the MX instead.
    for (domain, says, result) in [
        (
            "wrongcert.test",
            "MTA-STS enforce id=",
            "certificate-host-mismatch",
        ),
        (
            "unlisted.test",
            "names none of its MX hosts (mx.unlisted.test)",
            "",
        ),
        ("notls.test", "STARTTLS", "starttls-not-supported"),
        ("expired.test", "MTA-STS enforce id=", "certificate-expired"),
        (
            "selfsigned.test",
            "MTA-STS enforce id=",
            "certificate-not-trusted",
        ),
    ] {
        let rec = wait_state(&e.kiln, &ids[domain], 0, "deferred", 30).await;
        let why = rec["attempts"][0]["message"].as_str().unwrap_or_default();
        assert!(why.contains(says), "{domain}: {why}\n{rec}");
        assert_eq!(rec["attempts"][0]["enhanced_code"], "4.7.5", "{rec}");
        if !result.is_empty() {
            assert_eq!(
                first_failure(&e, domain),
                (result.to_string(), "sts".to_string()),
                "{domain}"
            );
        }
    }
    assert_eq!(wrong.rcpts_seen("u@wrongcert.test"), 0);
    assert_eq!(expired.rcpts_seen("u@expired.test"), 0);
    assert_eq!(selfsigned.rcpts_seen("u@selfsigned.test"), 0);
    // Testing: delivered as without a policy, to the MX with the wrong
    // certificate, yet its report shows the certificate the policy would
    // refuse.
    let rec = wait_state(&e.kiln, &ids["testing.test"], 0, "delivered", 30).await;
    assert_eq!(
        rec["attempts"][0]["tls_policy"],
        format!("MTA-STS testing id={ID1}"),
        "{rec}"
    );
    assert_eq!(wrong.rcpts_seen("u@testing.test"), 1);
    assert_eq!(
        first_failure(&e, "testing.test").0,
        "certificate-host-mismatch"
    );
    // No policy to be had: delivered as without one, and reported.
    for (domain, result) in [
        ("malformed.test", "sts-policy-invalid"),
        ("notfound.test", "sts-policy-fetch-error"),
        ("redirect.test", "sts-policy-fetch-error"),
    ] {
        let rec = wait_state(&e.kiln, &ids[domain], 0, "delivered", 30).await;
        assert!(rec["attempts"][0]["tls_policy"].is_null(), "{rec}");
        assert_eq!(
            first_failure(&e, domain),
            (result.to_string(), "sts".to_string()),
            "{domain}"
        );
    }
    // Each session counted by policy and by RFC 8460's result type.
    for (result, at_least) in [
        ("success", 1.0),
        // The enforce domain's MX and the testing one's.
        ("certificate-host-mismatch", 2.0),
        ("starttls-not-supported", 1.0),
        ("certificate-expired", 1.0),
    ] {
        let label = format!("policy=\"mta-sts\",result=\"{result}\"");
        let n = crate::harness::metric(&e, "kiln_tls_sessions_total", &label).await;
        assert!(n >= at_least, "{result}: {n}");
    }
    // The report as RFC 8460 gives it.
    let r = report(&e, "wrongcert.test");
    let policy = &r["policies"][0];
    assert_eq!(policy["policy"]["policy-domain"], "wrongcert.test", "{r}");
    assert_eq!(policy["policy"]["policy-string"][1], "mode: enforce", "{r}");
    assert_eq!(
        policy["summary"]["total-successful-session-count"], 0,
        "{r}"
    );
    let failure = &policy["failure-details"][0];
    assert_eq!(failure["receiving-mx-hostname"], "mx.wrongcert.test", "{r}");
    assert!(failure["failed-session-count"].as_u64() >= Some(1), "{r}");
    assert!(
        r["report-id"]
            .as_str()
            .is_some_and(|id| id.ends_with("_wrongcert.test@kiln.test")),
        "{r}"
    );
    let explained = e.kiln.command(&["explain", &ids["wrongcert.test"]]);
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(
        text.contains(&format!("under MTA-STS enforce id={ID1}")),
        "{text}"
    );
    // Each policy was fetched once.
    for (domain, ..) in DOMAINS {
        assert_eq!(
            policy_host.served(&format!("mta-sts.{domain}")),
            1,
            "{domain}"
        );
    }

    // The policy host goes down, and two domains publish a new id. Once
    // what this node remembers has expired: the kept policy still holds
    // for the domain whose new policy cannot be fetched ...
    drop(policy_host);
    for domain in ["wrongcert.test", "good.test"] {
        e.dns.remove(&format!("_mta-sts.{domain}"));
        e.dns.add_txt(
            &format!("_mta-sts.{domain}"),
            &format!("v=STSv1; id={ID2};"),
        );
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    let again = send("v@wrongcert.test".into()).await;
    let rec = wait_state(&e.kiln, &again, 0, "deferred", 30).await;
    let why = rec["attempts"][0]["message"].as_str().unwrap_or_default();
    assert!(why.contains(&format!("MTA-STS enforce id={ID1}")), "{why}");
    assert_eq!(wrong.rcpts_seen("v@wrongcert.test"), 0);
    // ... and the other's new policy is fetched from the host back up.
    let policy_host = StaticHttps::start(policy_addr, policy_cert).await;
    policy_host.serve(
        "mta-sts.good.test",
        "/.well-known/mta-sts.txt",
        policy_file("testing", &["mx.good.test"]),
    );
    let again = send("v@good.test".into()).await;
    let rec = wait_state(&e.kiln, &again, 0, "delivered", 30).await;
    assert_eq!(
        rec["attempts"][0]["tls_policy"],
        format!("MTA-STS testing id={ID2}"),
        "{rec}"
    );
    assert_eq!(policy_host.served("mta-sts.good.test"), 1);
}
