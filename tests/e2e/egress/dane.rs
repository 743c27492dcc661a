//! DANE (RFC 7672) with `dns.dnssec = "resolver"`: the test's DNS server
//! plays the validating resolver (the AD flag on the names it calls
//! secure, SERVFAIL on one whose signature fails). A DANE-EE record
//! admits a self-signed certificate no root vouches for; a DANE-TA record
//! admits the chain of the CA it names; a certificate the records do not
//! match, or TLSA that cannot be looked up, keeps the mail back; records
//! none of which SMTP may use ask for TLS, unchecked; records the resolver
//! does not vouch for change nothing; with DNSSEC off, DANE is not
//! applied at all. On both stores.

use crate::harness::{BOTH, Backend, env_with_sink, submit_one, wait_state};
use aws_lc_rs::digest;
use kiln_testkit::sink::Sink;
use std::net::{IpAddr, SocketAddr};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn sha256(b: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, b).as_ref().to_vec()
}

/// A certificate's SubjectPublicKeyInfo.
fn spki(cert: &[u8]) -> Vec<u8> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).expect("certificate");
    c.tbs_certificate.subject_pki.raw.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_records_decide_which_certificates_mail_may_go_to() {
    for (backend, base) in BOTH.into_iter().zip([50, 80]) {
        dane_on(backend, base).await;
    }
}

async fn dane_on(backend: Backend, base: u8) {
    // Three MX servers on one port: a self-signed certificate, another
    // one, and a chain from a private CA for mx.ta.test.
    let (ee_tls, ee_cert) = kiln_testkit::tls::self_signed_with_cert("mx.ee.test");
    let (other_tls, _) = kiln_testkit::tls::self_signed_with_cert("mx.eebad.test");
    let (ca_der, ta_tls) = kiln_testkit::tls::ca_signed_with_ca_der("mx.ta.test");
    let ee = Sink::start_with(SocketAddr::new(ip(base + 1), 0), Some(ee_tls), true).await;
    let port = ee.addr.port();
    let other = Sink::start_with(SocketAddr::new(ip(base + 2), port), Some(other_tls), true).await;
    let ta = Sink::start_with(SocketAddr::new(ip(base + 3), port), Some(ta_tls), true).await;

    let e = env_with_sink(backend, ee, |o, _| {
        o.queue = "retry_schedule = [1]".into();
        o.dns = "dnssec = \"resolver\"".into();
    })
    .await;
    let ee_record = sha256(&spki(&ee_cert));
    for (domain, at, tlsa) in [
        ("ee.test", 1, Some((3, 1, 1, ee_record.clone()))),
        ("eebad.test", 2, Some((3, 1, 1, ee_record.clone()))),
        ("ta.test", 3, Some((2, 0, 1, sha256(&ca_der)))),
        // PKIX-EE: not for SMTP (RFC 7672 3.1.3).
        ("unusable.test", 2, Some((1, 1, 1, ee_record.clone()))),
        ("unvouched.test", 2, Some((3, 1, 1, ee_record.clone()))),
        ("failing.test", 1, None),
    ] {
        let mx = format!("mx.{domain}");
        e.dns.add_mx(domain, 10, &mx);
        e.dns.add_ip(&mx, ip(base + at));
        e.dns.set_secure(domain);
        e.dns.set_secure(&mx);
        let tlsa_name = format!("_{port}._tcp.{mx}");
        if let Some((usage, selector, matching, data)) = tlsa {
            e.dns.add_tlsa(&tlsa_name, usage, selector, matching, data);
        }
        match domain {
            "unvouched.test" => {}
            "failing.test" => e.dns.set_failing(&tlsa_name),
            _ => e.dns.set_secure(&tlsa_name),
        }
    }

    let send = |to: &'static str| submit_one(e.kiln.smtp, "a@shop.test", to, to, 512);
    let ee_id = send("u@ee.test").await;
    let bad_id = send("u@eebad.test").await;
    let ta_id = send("u@ta.test").await;
    let unvouched_id = send("u@unvouched.test").await;
    let failing_id = send("u@failing.test").await;
    let unusable_id = send("u@unusable.test").await;

    // DANE-EE: a certificate no root vouches for, matched by its key.
    let rec = wait_state(&e.kiln, &ee_id, 0, "delivered", 30).await;
    assert_eq!(rec["attempts"][0]["tls_policy"], "DANE", "{rec}");
    // DANE-TA: the chain of the CA the record names, for the MX's name.
    let rec = wait_state(&e.kiln, &ta_id, 0, "delivered", 30).await;
    assert_eq!(rec["attempts"][0]["tls_policy"], "DANE", "{rec}");
    assert_eq!(ta.rcpts_seen("u@ta.test"), 1);
    // A certificate the records do not match: held back, the reason
    // naming DANE, nothing given to that MX.
    let rec = wait_state(&e.kiln, &bad_id, 0, "deferred", 30).await;
    let why = rec["attempts"][0]["message"].as_str().unwrap_or_default();
    assert!(why.contains("TLSA") && why.contains("DANE"), "{why}");
    assert_eq!(rec["attempts"][0]["enhanced_code"], "4.7.5", "{rec}");
    assert_eq!(other.rcpts_seen("u@eebad.test"), 0);
    // TLSA that cannot be looked up (bogus): held back, not sent without.
    let rec = wait_state(&e.kiln, &failing_id, 0, "deferred", 30).await;
    let why = rec["attempts"][0]["message"].as_str().unwrap_or_default();
    assert!(why.contains("DNSSEC bogus or lookup failed"), "{why}");
    assert_eq!(rec["attempts"][0]["enhanced_code"], "4.7.5", "{rec}");
    let shown = e.kiln.command(&["tls-report", "show", "failing.test"]);
    let report: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
    assert_eq!(
        report["policies"][0]["failure-details"][0]["result-type"], "dnssec-invalid",
        "{report}"
    );
    // Secure records SMTP may not use: TLS, its certificate unchecked.
    let rec = wait_state(&e.kiln, &unusable_id, 0, "delivered", 30).await;
    assert_eq!(rec["attempts"][0]["tls_policy"], "DANE", "{rec}");
    assert!(rec["attempts"][0]["tls"].is_string(), "{rec}");
    // Records the resolver does not vouch for are no DANE.
    let rec = wait_state(&e.kiln, &unvouched_id, 0, "delivered", 30).await;
    assert!(rec["attempts"][0]["tls_policy"].is_null(), "{rec}");
    assert_eq!(other.rcpts_seen("u@unvouched.test"), 1);

    // Counted by policy, and in the domains' TLS reports as `tlsa`.
    let n = crate::harness::metric(
        &e,
        "kiln_tls_sessions_total",
        "policy=\"dane\",result=\"success\"",
    )
    .await;
    assert!(n >= 2.0, "{n}");
    let shown = e.kiln.command(&["tls-report", "show", "eebad.test"]);
    let report: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
    let policy = &report["policies"][0];
    assert_eq!(policy["policy"]["policy-type"], "tlsa", "{report}");
    assert!(
        policy["summary"]["total-failure-session-count"].as_u64() >= Some(1),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dnssec_off_tlsa_records_are_not_applied() {
    let (tls, _) = kiln_testkit::tls::self_signed_with_cert("mx.eebad.test");
    let sink = Sink::start_with(SocketAddr::new(ip(54), 0), Some(tls), true).await;
    let port = sink.addr.port();
    let e = env_with_sink(Backend::Embedded, sink, |_, _| {}).await;
    e.dns.add_mx("eebad.test", 10, "mx.eebad.test");
    e.dns.add_ip("mx.eebad.test", ip(54));
    let tlsa = format!("_{port}._tcp.mx.eebad.test");
    e.dns.add_tlsa(&tlsa, 3, 1, 1, vec![0; 32]);
    for name in ["eebad.test", "mx.eebad.test", tlsa.as_str()] {
        e.dns.set_secure(name);
    }
    let id = submit_one(e.kiln.smtp, "a@shop.test", "u@eebad.test", "x", 512).await;
    let rec = wait_state(&e.kiln, &id, 0, "delivered", 30).await;
    assert!(rec["attempts"][0]["tls_policy"].is_null(), "{rec}");
}
