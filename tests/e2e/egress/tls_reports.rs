//! TLS reports sent as RFC 8460 asks: a receiving domain that publishes
//! `_smtp._tls` gets the day's report, gzipped JSON, POSTed to its
//! `https:` address (a real HTTPS server with a certificate from a private
//! CA Kiln trusts through `delivery.tls_ca_file` or the platform's store)
//! and mailed to its `mailto:` one, DKIM-signed for the reporting domain
//! (checked by mail-auth against the test's DNS);
//! a domain that publishes nothing gets nothing; once a day has ended its
//! report is sent once, whoever asks again. On both stores.

use crate::egress::delivery::verify_dkim;
use crate::harness::{BOTH, Backend, env_with_sink, move_clock, submit_one, wait_state};
use kiln_testkit::https::{Page, StaticHttps};
use kiln_testkit::sink::Sink;
use mail_auth::DkimResult;
use mail_parser::MimeHeaders;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

fn gunzip(bytes: &[u8]) -> Value {
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut json).expect("gzip");
    serde_json::from_slice(&json).expect("the report is JSON")
}

pub(crate) fn sent(out: &std::process::Output) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["sent"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn result_for<'a>(sent: &'a [Value], domain: &str, to: &str) -> &'a str {
    sent.iter()
        .find(|s| s["domain"] == domain && s["to"] == to)
        .and_then(|s| s["result"].as_str())
        .unwrap_or_else(|| panic!("nothing for {domain} {to}: {sent:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_that_asks_gets_its_report_by_https_and_by_signed_mail() {
    // Each store with a report endpoint of its own on port 443.
    for (backend, endpoint_at) in BOTH.into_iter().zip([100, 101]) {
        reports_on(backend, endpoint_at).await;
    }
}

async fn reports_on(backend: Backend, endpoint_at: u8) {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), true, true).await;
    let (reports_ca, reports_cert) = kiln_testkit::tls::ca_signed_server_config("reports.test");
    let endpoint = StaticHttps::start(
        SocketAddr::new(IpAddr::from([127, 0, 0, endpoint_at]), 443),
        reports_cert,
    )
    .await;
    endpoint.serve(
        "reports.test",
        "/v1/tlsrpt",
        Page {
            status: 200,
            content_type: "text/plain".into(),
            body: "thanks\n".into(),
        },
    );
    let e = env_with_sink(backend, sink, |o, dir| {
        let bundle = dir.join("roots.pem");
        std::fs::write(&bundle, &reports_ca).unwrap();
        o.server = "test_clock = true".into();
        // The private CA named in the settings, or added to the platform's
        // store (which SSL_CERT_FILE stands for).
        match backend {
            Backend::Embedded => o.delivery = format!("tls_ca_file = \"{}\"", bundle.display()),
            _ => o
                .env
                .push(("SSL_CERT_FILE".into(), bundle.display().to_string())),
        }
    })
    .await;
    e.dns.add_txt(
        "_smtp._tls.dest.test",
        "v=TLSRPTv1; rua=https://reports.test/v1/tlsrpt,mailto:tlsrpt@reports.test",
    );
    e.dns
        .add_ip("reports.test", IpAddr::from([127, 0, 0, endpoint_at]));
    e.dns.add_mx("reports.test", 10, "mx.dest.test");
    e.dns.add_mx("quiet.test", 10, "mx.dest.test");
    // The reporting domain's key: the server's hostname's.
    let key = e.kiln.command(&["dkim", "create", "kiln.test"]);
    let key: Value = serde_json::from_slice(&key.stdout).expect("dkim create");
    e.dns
        .add_txt("kiln._domainkey.kiln.test", key["txt"].as_str().unwrap());

    for to in ["a@dest.test", "b@dest.test", "c@quiet.test"] {
        let id = submit_one(e.kiln.smtp, "news@shop.test", to, "hello", 512).await;
        wait_state(&e.kiln, &id, 0, "delivered", 30).await;
    }

    // Today's so far, on the operator's word.
    let out = sent(&e.kiln.command(&["tls-report", "send"]));
    assert_eq!(
        result_for(&out, "dest.test", "https://reports.test/v1/tlsrpt"),
        "posted 200"
    );
    let queued = result_for(&out, "dest.test", "mailto:tlsrpt@reports.test");
    assert!(queued.starts_with("queued "), "{out:?}");
    assert!(
        result_for(&out, "quiet.test", "").contains("no _smtp._tls record"),
        "{out:?}"
    );

    // POSTed: the RFC's content type, the JSON gzipped.
    let posted = endpoint.posted.lock().unwrap().clone();
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0].content_type, "application/tlsrpt+gzip");
    let report = gunzip(&posted[0].body);
    let policy = &report["policies"][0];
    assert_eq!(policy["policy"]["policy-domain"], "dest.test", "{report}");
    assert_eq!(
        policy["policy"]["policy-type"], "no-policy-found",
        "{report}"
    );
    // Two messages, on one connection or two.
    assert!(
        policy["summary"]["total-successful-session-count"].as_u64() >= Some(1),
        "{report}"
    );
    assert_eq!(policy["summary"]["total-failure-session-count"], 0);
    assert_eq!(report["organization-name"], "kiln.test");

    // Mailed: a tlsrpt report, signed for the reporting domain, the same
    // JSON attached.
    let mut mail = None;
    for _ in 0..100 {
        mail = e
            .sink
            .messages()
            .into_iter()
            .find(|m| m.rcpt_to == ["tlsrpt@reports.test"]);
        if mail.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mail = mail.expect("the report mail reached the domain's MX");
    assert_eq!(mail.mail_from, "tls-reports@kiln.test");
    let results = verify_dkim(e.dns.addr, &mail.data).await;
    assert_eq!(results, vec![DkimResult::Pass]);
    let parsed = mail_parser::MessageParser::default()
        .parse(&mail.data)
        .expect("parsable");
    assert!(
        parsed.subject().is_some_and(
            |s| s.starts_with("Report Domain: dest.test Submitter: kiln.test Report-ID: <")
        ),
        "{:?}",
        parsed.subject()
    );
    let ct = parsed.content_type().expect("content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
    let dkim = parsed.header_raw("DKIM-Signature").unwrap_or_default();
    assert!(dkim.contains("d=kiln.test"), "{dkim}");
    let attached = gunzip(parsed.attachment(0).expect("attachment").contents());
    assert_eq!(attached["report-id"], report["report-id"]);

    // Once the day has ended, its report goes out once: asked again, the
    // claim in the store holds.
    move_clock(&e, 86_400_000).await;
    let out = sent(&e.kiln.command(&["tls-report", "send"]));
    assert_eq!(
        result_for(&out, "dest.test", "https://reports.test/v1/tlsrpt"),
        "posted 200"
    );
    let out = sent(&e.kiln.command(&["tls-report", "send"]));
    assert!(
        out.iter().all(|s| s["domain"] != "dest.test"),
        "sent twice: {out:?}"
    );
    assert_eq!(endpoint.posted.lock().unwrap().len(), 2);
}
