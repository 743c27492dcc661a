//! Delivery: DKIM-signed mail reaches the MX that DNS names; MX fallback;
//! retries after 4xx; bounces after 5xx, missing domains and null MX;
//! required TLS (per domain or per message with REQUIRETLS) is verified and
//! never downgraded.

use crate::harness::{BOTH, env, env_with_sink, queued_id, submit_one, submit_session, wait_state};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use kiln_testkit::client::message;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters};
use std::time::Duration;

pub(crate) async fn verify_dkim(nameserver: std::net::SocketAddr, data: &[u8]) -> Vec<DkimResult> {
    let auth = authenticator(nameserver);
    let msg = AuthenticatedMessage::parse(data).expect("parsable message");
    auth.verify_dkim(Parameters::new(&msg))
        .await
        .into_iter()
        .map(|o| o.result().clone())
        .collect()
}

/// mail-auth asking the test's DNS server.
fn authenticator(nameserver: std::net::SocketAddr) -> MessageAuthenticator {
    let mut udp = ConnectionConfig::udp();
    udp.port = nameserver.port();
    let config = ResolverConfig::from_parts(
        None,
        Vec::new(),
        vec![NameServerConfig::new(nameserver.ip(), true, vec![udp])],
    );
    MessageAuthenticator::new(config, ResolverOpts::default()).unwrap()
}

/// SPF for `mail_from` as seen from `ip`, and DMARC for the message with
/// that SPF result alone (no DKIM): whether the return path aligns.
pub(crate) async fn verify_spf_and_dmarc(
    nameserver: std::net::SocketAddr,
    ip: std::net::IpAddr,
    mail_from: &str,
    data: &[u8],
) -> (mail_auth::SpfResult, mail_auth::DmarcResult) {
    let auth = authenticator(nameserver);
    let msg = AuthenticatedMessage::parse(data).expect("parsable message");
    let spf = auth
        .verify_spf(Parameters::new(
            mail_auth::spf::verify::SpfParameters::verify_mail_from(
                ip,
                "kiln.test",
                "mx.dest.test",
                mail_from,
            ),
        ))
        .await;
    let mail_from_domain = mail_from.rsplit_once('@').map_or("", |(_, d)| d);
    let dmarc = auth
        .verify_dmarc(Parameters::new(
            mail_auth::dmarc::verify::DmarcParameters::new(&msg, &[], mail_from_domain, &spf),
        ))
        .await;
    (spf.result(), dmarc.spf_result().clone())
}

/// The text of a recipient record's first attempt (remote reply or local reason).
fn first_reply(rec: &serde_json::Value) -> &str {
    rec["attempts"][0]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_mail_reaches_the_mx_dns_names() {
    for (backend, algorithm) in BOTH.into_iter().zip(["rsa", "ed25519"]) {
        let e = env(backend, |_| {}).await;
        let out = e
            .kiln
            .command(&["dkim", "create", "shop.test", "--algorithm", algorithm]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(key["dns_name"], "kiln._domainkey.shop.test");
        let txt = key["txt"].as_str().unwrap();
        assert!(
            txt.starts_with(&format!("v=DKIM1; k={algorithm}; p=")),
            "{txt}"
        );
        let show = e.kiln.command(&["dkim", "show", "shop.test"]);
        assert!(show.status.success());
        assert!(String::from_utf8_lossy(&show.stdout).contains(txt));
        e.dns.add_txt("kiln._domainkey.shop.test", txt);

        let id = submit_one(
            e.kiln.smtp,
            "news@shop.test",
            "alice@dest.test",
            "Hello",
            2048,
        )
        .await;

        let rec = wait_state(&e.kiln, &id, 0, "delivered", 20).await;
        let attempt = &rec["attempts"][0];
        assert_eq!(attempt["mx"], "mx.dest.test");
        assert_eq!(attempt["ip"], "127.0.0.1");
        assert_eq!(attempt["code"], 250);
        assert!(
            attempt["tls"].as_str().unwrap_or("").starts_with("TLS"),
            "{attempt}"
        );

        let got = e.sink.messages();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].mail_from, "news@shop.test");
        assert_eq!(got[0].rcpt_to, vec!["alice@dest.test".to_string()]);
        assert!(got[0].tls, "delivery must use STARTTLS when offered");
        let results = verify_dkim(e.dns.addr, &got[0].data).await;
        assert_eq!(results, vec![DkimResult::Pass], "{backend:?}/{algorithm}");

        // A tampered copy fails: the check above can tell.
        let tampered =
            String::from_utf8_lossy(&got[0].data).replace("Subject: Hello", "Subject: Hellp");
        let results = verify_dkim(e.dns.addr, tampered.as_bytes()).await;
        assert!(!results.contains(&DkimResult::Pass), "{results:?}");

        // `kiln status` shows the same record.
        let out = e.kiln.command(&["status", &id]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"delivered\""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_retry_and_bounces() {
    for backend in BOTH {
        let e = env(backend, |o| o.queue = "retry_schedule = [1]".into()).await;
        // Two MXs: the preferred one has nothing listening.
        e.dns.add_mx("two.test", 10, "down.two.test");
        e.dns.add_mx("two.test", 20, "up.two.test");
        e.dns.add_ip("down.two.test", "127.0.0.2".parse().unwrap());
        e.dns.add_ip("up.two.test", "127.0.0.1".parse().unwrap());
        // A domain with a TXT record but no MX and no address.
        e.dns.add_txt("nomail.test", "v=spf1 -all");
        e.dns.add_null_mx("null.test");
        e.sink
            .set_rule("later@dest.test", "451 4.3.0 Try again later");
        e.sink
            .set_rule("gone@dest.test", "550 5.1.1 No such user here");

        let mut c = submit_session(e.kiln.smtp).await;
        let mut ids = Vec::new();
        for rcpt in [
            "bob@two.test",
            "later@dest.test",
            "gone@dest.test",
            "x@nomail.test",
            "y@null.test",
            "z@nxdomain.test",
        ] {
            let body = message("a@shop.test", rcpt, rcpt, 1024);
            let r = c.send("a@shop.test", &[rcpt], &body).await.unwrap();
            assert_eq!(r.code, 250, "{rcpt}: {r:?}");
            ids.push(queued_id(&r.text));
        }
        c.quit().await;

        let rec = wait_state(&e.kiln, &ids[0], 0, "delivered", 30).await;
        assert_eq!(rec["attempts"][0]["mx"], "up.two.test", "{rec}");

        let rec = wait_state(&e.kiln, &ids[1], 0, "deferred", 30).await;
        assert_eq!(rec["attempts"][0]["code"], 451);
        assert!(rec["next_attempt_at_ms"].is_number());
        e.sink.clear_rule("later@dest.test");
        let rec = wait_state(&e.kiln, &ids[1], 0, "delivered", 30).await;
        assert!(rec["attempts"].as_array().unwrap().len() >= 2, "{rec}");

        let rec = wait_state(&e.kiln, &ids[2], 0, "bounced", 30).await;
        assert_eq!(rec["attempts"][0]["code"], 550);
        assert_eq!(rec["attempts"][0]["enhanced_code"], "5.1.1");
        assert!(first_reply(&rec).contains("No such user"));

        let rec = wait_state(&e.kiln, &ids[3], 0, "bounced", 30).await;
        assert!(first_reply(&rec).contains("no MX and no A/AAAA"), "{rec}");
        let rec = wait_state(&e.kiln, &ids[4], 0, "bounced", 30).await;
        assert_eq!(rec["attempts"][0]["enhanced_code"], "5.1.10", "{rec}");
        let rec = wait_state(&e.kiln, &ids[5], 0, "bounced", 30).await;
        assert!(first_reply(&rec).contains("does not exist"), "{rec}");

        // Exactly the two deliverable messages arrived.
        crate::harness::nothing_happens_for(Duration::from_millis(300), "another delivery").await;
        let rcpts: Vec<String> = e
            .sink
            .messages()
            .iter()
            .flat_map(|m| m.rcpt_to.clone())
            .collect();
        assert_eq!(rcpts.len(), 2, "{rcpts:?}");
        assert!(rcpts.contains(&"bob@two.test".to_string()));
        assert!(rcpts.contains(&"later@dest.test".to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_keeps_the_queue() {
    for backend in BOTH {
        let mut e = env(backend, |o| o.queue = "retry_schedule = [3600]".into()).await;
        e.sink
            .set_rule("slow@dest.test", "451 4.3.0 Try again later");
        let id = submit_one(e.kiln.smtp, "a@shop.test", "slow@dest.test", "kept", 1024).await;
        wait_state(&e.kiln, &id, 0, "deferred", 20).await;
        let status = tokio::task::block_in_place(|| e.kiln.terminate()).unwrap();
        assert!(
            status.success(),
            "SIGTERM must exit 0: {status:?}\n{}",
            e.kiln.log_text()
        );
        tokio::task::block_in_place(|| e.kiln.spawn());
        let rec = wait_state(&e.kiln, &id, 0, "deferred", 20).await;
        assert_eq!(
            rec["attempts"].as_array().unwrap().len(),
            1,
            "not retried early: {rec}"
        );
    }
}

/// Submits one message with `MAIL FROM:<..> REQUIRETLS` over STARTTLS.
async fn submit_requiretls(addr: std::net::SocketAddr, to: &str) -> String {
    let mut c = submit_session(addr).await;
    let r = c.cmd("MAIL FROM:<a@shop.test> REQUIRETLS").await.unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).await.unwrap().code, 250);
    assert_eq!(c.cmd("DATA").await.unwrap().code, 354);
    c.write_data(&message("a@shop.test", to, "requiretls", 512))
        .await
        .unwrap();
    let r = c.read_reply().await.unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    c.quit().await;
    queued_id(&r.text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_is_verified_and_never_downgraded() {
    for backend in BOTH {
        // The MX's certificate is for mx.secure.test, signed by a private CA
        // that kiln is told to trust.
        let (ca_pem, server) = kiln_testkit::tls::ca_signed_server_config("mx.secure.test");
        let sink = kiln_testkit::sink::Sink::start_with(
            "127.0.0.1:0".parse().unwrap(),
            Some(server),
            true,
        )
        .await;
        let e = env_with_sink(backend, sink, |o, dir| {
            o.queue = "retry_schedule = [1]".into();
            let ca = dir.join("ca.pem");
            std::fs::write(&ca, &ca_pem).unwrap();
            o.delivery = format!(
                "require_tls_domains = [\"secure.test\", \"wrongname.test\"]\ntls_ca_file = \"{}\"",
                ca.display()
            );
        })
        .await;
        for (domain, mx) in [
            ("secure.test", "mx.secure.test"),
            ("wrongname.test", "mx.wrongname.test"),
            ("other.test", "mx.other.test"),
        ] {
            e.dns.add_mx(domain, 10, mx);
            e.dns.add_ip(mx, "127.0.0.1".parse().unwrap());
        }

        // Policy requires TLS and the certificate matches: delivered over TLS.
        let ok = submit_one(e.kiln.smtp, "a@shop.test", "u@secure.test", "s", 512).await;
        let rec = wait_state(&e.kiln, &ok, 0, "delivered", 30).await;
        assert!(rec["attempts"][0]["tls"].is_string(), "{rec}");
        // Required, but the certificate names another host: deferred, and
        // nothing is sent in the clear instead.
        let bad = submit_one(e.kiln.smtp, "a@shop.test", "u@wrongname.test", "s", 512).await;
        let rec = wait_state(&e.kiln, &bad, 0, "deferred", 30).await;
        let why = rec["attempts"][0]["message"].as_str().unwrap_or_default();
        assert!(why.contains("TLS") || why.contains("certificate"), "{rec}");
        // Not required: opportunistic TLS accepts the same certificate.
        let opp = submit_one(e.kiln.smtp, "a@shop.test", "u@other.test", "s", 512).await;
        wait_state(&e.kiln, &opp, 0, "delivered", 30).await;

        // REQUIRETLS is refused outside TLS...
        let mut plain = kiln_testkit::client::SmtpClient::connect(e.kiln.smtp)
            .await
            .unwrap();
        plain.cmd("EHLO client.test").await.unwrap();
        let r = plain
            .cmd("MAIL FROM:<a@shop.test> REQUIRETLS")
            .await
            .unwrap();
        assert!(r.code == 530 && r.text.contains(" 5.7.10 "), "{r:?}");
        plain.quit().await;
        // ...a REQUIRETLS message is held to verified TLS even where the
        // domain's policy is not...
        let strict = submit_requiretls(e.kiln.smtp, "v@other.test").await;
        wait_state(&e.kiln, &strict, 0, "deferred", 30).await;
        // ...and waits while the MX does not offer REQUIRETLS; once it does,
        // the retry goes, with REQUIRETLS passed on.
        let strict = submit_requiretls(e.kiln.smtp, "w@secure.test").await;
        let rec = wait_state(&e.kiln, &strict, 0, "deferred", 30).await;
        assert_eq!(rec["attempts"][0]["enhanced_code"], "4.7.30", "{rec}");
        e.sink.offer_requiretls(true);
        wait_state(&e.kiln, &strict, 0, "delivered", 30).await;

        let got = e.sink.messages();
        let to = |r: &str| got.iter().find(|m| m.rcpt_to.iter().any(|t| t == r));
        assert!(to("u@secure.test").is_some_and(|m| m.tls));
        assert!(
            to("u@wrongname.test").is_none(),
            "sent without verified TLS"
        );
        assert!(
            to("v@other.test").is_none(),
            "REQUIRETLS message was downgraded"
        );
        let w = to("w@secure.test").expect("REQUIRETLS message delivered");
        assert!(w.tls && w.mail_params.contains("REQUIRETLS"), "{w:?}");
    }
}

/// A body whose lines begin with dots (one a lone dot, which ends the data
/// unless stuffed; the last one unterminated) reaches the MX as Python's
/// smtplib sent it: smtplib stuffs it, Kiln reads it back and stuffs it
/// again for the MX, the MX reads it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_starting_with_a_dot_arrive_as_sent() {
    for backend in BOTH {
        let e = env(backend, |_| {}).await;
        let head = "From: <news@shop.test>\r\nTo: <alice@dest.test>\r\nSubject: dots\r\n\r\n";
        let body = ".\r\n..\r\n.leading\r\nmiddle . line\r\n...three\r\n\r\n.";
        let r = crate::clients::smtplib(
            e.kiln.smtp,
            "shop",
            "shop-password",
            "news@shop.test",
            &["alice@dest.test"],
            format!("{head}{body}").as_bytes(),
        )
        .await;
        assert_eq!(r.code, 250, "{backend:?}: {r:?}");
        assert!(
            e.sink.wait_count(1, Duration::from_secs(20)).await,
            "{backend:?}: not delivered"
        );
        let got = String::from_utf8_lossy(&e.sink.messages()[0].data).into_owned();
        let (_, got_body) = got.split_once("\r\n\r\n").expect("a header and a body");
        // smtplib ends the unterminated last line.
        assert_eq!(got_body, format!("{body}\r\n"), "{backend:?}");
    }
}
