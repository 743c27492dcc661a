//! What an attacker tries, with the clients an attacker has: Python's
//! smtplib, raw sockets, curl, the SDK, a browser. Each test plays one
//! attack and fails on the code before its fix; docs/security.md says
//! what Kiln refuses and why.

mod console;
mod domains;
mod freeze;
mod http;
mod logs;
mod reports;
mod ssrf;

use crate::clients::{
    Sdk, create_account, run_smtplib, send_params, smtplib, smtplib_login, verified_sender,
};
use crate::harness::{BOTH, Backend, env, queued, queued_id, submit_session, wait_state};
use kiln_testkit::client::{SmtpClient, message};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

/// The `d=` of every DKIM-Signature of a delivered message.
fn signing_domains(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let head = format!("\r\n{}", text.split("\r\n\r\n").next().unwrap_or_default());
    head.split("\r\nDKIM-Signature:")
        .skip(1)
        .filter_map(|sig| {
            let unfolded: String = sig.split("\r\n").collect::<Vec<_>>().join("");
            unfolded
                .split(';')
                .map(str::trim)
                .find_map(|t| t.strip_prefix("d="))
                .map(|d| d.trim().to_string())
        })
        .collect()
}

fn with_from(from_header: &str, subject: &str) -> Vec<u8> {
    format!(
        "{from_header}\r\nTo: <victim@dest.test>\r\nSubject: {subject}\r\n\r\nWire the money today.\r\n"
    )
    .into_bytes()
}

/// An account never gets mail signed with another tenant's
/// key, whatever its From header says, on any path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_is_signed_only_for_the_senders_own_domains() {
    for backend in BOTH {
        let e = env(backend, |o| {
            o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
            o.extra = r#"
[[accounts]]
name = "probe"
username = "probe"
password = "probe-password"
domains = ["probe.test"]
"#
            .into();
        })
        .await;
        // The operator's key for the config account shop, and a tenant of
        // the API ("other") with a verified domain and its own key.
        for domain in ["shop.test", "probe.test"] {
            let out = e.kiln.command(&["dkim", "create", domain]);
            assert!(out.status.success(), "{out:?}");
        }
        let mut sdk = Sdk::start(e.kiln.http).await;
        let other = create_account(&e, "other");
        verified_sender(&e, &mut sdk, &other, "other.test", 1).await;
        sdk.ok(
            &other,
            "UpdateEmailSmtpPassWord",
            json!({"EmailAddress": "news@other.test", "Password": "Secret12345"}),
        )
        .await;

        let smtp = e.kiln.smtp;
        let to = ["victim@dest.test"];
        // (user, password, envelope sender, From header, what is tried);
        // user "-": a relay client, without AUTH.
        let probe = ("probe", "probe-password", "a@probe.test");
        let refused = [
            (
                probe,
                "From: CEO <ceo@other.test>",
                "another tenant's domain",
            ),
            (
                probe,
                "From: \"a@probe.test\" <ceo@other.test>",
                "a name that looks like ours",
            ),
            (
                probe,
                "From: <a@probe.test>, ceo@other.test",
                "a second author",
            ),
            (
                probe,
                "From: CEO <ceo@shop.test>",
                "another config account's domain",
            ),
            (
                ("news@other.test", "Secret12345", "news@other.test"),
                "From: <ceo@shop.test>",
                "the tenant, as the operator's config domain",
            ),
            (
                ("-", "", "x@shop.test"),
                "From: <ceo@other.test>",
                "a relay client, as a tenant",
            ),
            (
                ("-", "", "x@other.test"),
                "From: <x@shop.test>",
                "a relay client, a tenant's envelope",
            ),
        ];
        for ((user, password, sender), from, why) in refused {
            let r = smtplib(smtp, user, password, sender, &to, &with_from(from, why)).await;
            assert_eq!(r.code, 550, "{backend:?} {why}: {r:?}");
            assert!(r.text.starts_with("5.7.1"), "{r:?}");
        }
        let (user, password, sender) = probe;
        let two_from = with_from("From: a@probe.test\r\nFrom: ceo@other.test", "two From");
        let r = smtplib(smtp, user, password, sender, &to, &two_from).await;
        assert_eq!(r.code, 554, "{r:?}");
        assert!(
            r.text.contains("5.6.0") && r.text.contains("more than one From"),
            "{r:?}"
        );
        assert_eq!(queued(&e.kiln).await, 0);
        assert_eq!(e.sink.count(), 0, "nothing refused was delivered");

        // What each may do is still signed, each with its own key.
        let allowed = [
            (
                "probe",
                "probe-password",
                "a@probe.test",
                "From: <a@probe.test>",
                "probe.test",
            ),
            (
                "news@other.test",
                "Secret12345",
                "news@other.test",
                "From: News <news@other.test>",
                "other.test",
            ),
            ("-", "", "x@shop.test", "From: <x@shop.test>", "shop.test"),
        ];
        for (user, password, sender, from, _) in allowed {
            let r = smtplib(smtp, user, password, sender, &to, &with_from(from, user)).await;
            assert_eq!(r.code, 250, "{user}: {r:?}");
        }
        assert!(e.sink.wait_count(3, Duration::from_secs(30)).await);
        let mut signed: Vec<(String, Vec<String>)> = e
            .sink
            .messages()
            .iter()
            .map(|m| (m.mail_from.clone(), signing_domains(&m.data)))
            .collect();
        signed.sort();
        let mut want: Vec<(String, Vec<String>)> = allowed
            .iter()
            .map(|(_, _, sender, _, d)| (sender.to_string(), vec![d.to_string()]))
            .collect();
        want.sort();
        assert_eq!(signed, want, "{backend:?}");

        // The API checks the same: HeaderFrom on another tenant's domain.
        let template = crate::clients::approved_template(&mut sdk, &other).await;
        let (code, _) = sdk
            .err(&other, "SendEmail", {
                let mut p = send_params("other.test", template, "victim@dest.test");
                p["HeaderFrom"] = json!("ceo@probe.test");
                p
            })
            .await;
        assert_eq!(code, "FailedOperation.NotAuthenticatedSender");
    }
}

/// Only CRLF.CRLF ends DATA; a bare LF or CR is refused and a
/// smuggled second message never becomes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_smuggling_is_refused() {
    let e = env(Backend::Embedded, |_| {}).await;
    let smuggled = "MAIL FROM:<smuggler@shop.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nFrom: <ceo@shop.test>\r\n\r\nsmuggled\r\n.\r\n";
    for end in ["\n.\n", "\r\n.\n", "\n.\r\n"] {
        let mut c = submit_session(e.kiln.smtp).await;
        assert_eq!(c.cmd("MAIL FROM:<a@shop.test>").await.unwrap().code, 250);
        assert_eq!(c.cmd("RCPT TO:<r@dest.test>").await.unwrap().code, 250);
        assert_eq!(c.cmd("DATA").await.unwrap().code, 354);
        let body = format!("From: <a@shop.test>\r\nSubject: hi\r\n\r\nhello{end}{smuggled}");
        c.write_raw(body.as_bytes()).await.unwrap();
        let r = c.read_reply().await.unwrap();
        assert_eq!(r.code, 550, "{end:?}: {r:?}");
        assert!(r.text.contains("5.5.2"), "{r:?}");
        // And the connection is closed: nothing after the bare dot is read
        // as a command.
        let r = c.read_reply().await.unwrap();
        assert_eq!(r.code, 421, "{r:?}");
        assert!(
            c.read_reply().await.is_err(),
            "{end:?}: the connection stays open"
        );
    }
    // A bare LF or CR inside an otherwise well-ended message: refused, and
    // the session goes on.
    let mut c = submit_session(e.kiln.smtp).await;
    for body in [
        "From: <a@shop.test>\r\n\r\nline\nbreak\r\n.\r\n",
        "From: <a@shop.test>\r\n\r\nover\rprint\r\n.\r\n",
    ] {
        assert_eq!(c.cmd("MAIL FROM:<a@shop.test>").await.unwrap().code, 250);
        assert_eq!(c.cmd("RCPT TO:<r@dest.test>").await.unwrap().code, 250);
        assert_eq!(c.cmd("DATA").await.unwrap().code, 354);
        c.write_raw(body.as_bytes()).await.unwrap();
        let r = c.read_reply().await.unwrap();
        assert_eq!(r.code, 550, "{r:?}");
        assert_eq!(c.cmd("NOOP").await.unwrap().code, 250);
    }
    c.quit().await;
    crate::harness::nothing_happens_for(Duration::from_millis(500), "a smuggled message queued")
        .await;
    assert_eq!(queued(&e.kiln).await, 0);
    assert_eq!(e.sink.count(), 0, "nothing was delivered");
}

/// A line no next hop takes is refused at DATA, never
/// accepted and then bounced; the API encodes long lines instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_a_next_hop_refuses_are_never_accepted() {
    let e = env(Backend::Embedded, |o| {
        o.extra = "[platform]\nallow_simple = true\n".into();
    })
    .await;
    // A message whose last line is `len` times `fill`, from shop.
    let with_line = |subject: &str, fill: u8, len: usize| {
        let mut m = message("a@shop.test", "r@dest.test", subject, 512);
        m.extend_from_slice(&vec![fill; len]);
        m.extend_from_slice(b"\r\n");
        m
    };
    let as_shop = |m: Vec<u8>| async move {
        smtplib(
            e.kiln.smtp,
            "shop",
            "shop-password",
            "a@shop.test",
            &["r@dest.test"],
            &m,
        )
        .await
    };
    let r = as_shop(with_line("long", b'x', 1 << 20)).await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text.contains("5.6.0") && r.text.contains("998"), "{r:?}");
    let r = as_shop(with_line("longest", b'y', 998)).await;
    assert_eq!(r.code, 250, "{r:?}");
    let id = queued_id(&r.text);
    wait_state(&e.kiln, &id, 0, "delivered", 20).await;

    // The API: a long line of HTML and a lone CR are encoded, and the
    // message is delivered whole.
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut sdk = Sdk::start(e.kiln.http).await;
    let acme = create_account(&e, "acme");
    verified_sender(&e, &mut sdk, &acme, "mail.acme.test", 1).await;
    let html = format!("<p>{}</p>\r<p>end</p>", "z".repeat(5000));
    let r = sdk
        .ok(
            &acme,
            "SendEmail",
            json!({
                "FromEmailAddress": "news@mail.acme.test",
                "Destination": ["r2@dest.test"],
                "Subject": "long",
                "Simple": {"Html": b64(&html), "Text": b64(&"w".repeat(3000))},
            }),
        )
        .await;
    assert!(r["MessageId"].is_string(), "{r}");
    assert!(e.sink.wait_count(2, Duration::from_secs(30)).await);
    let got = e.sink.messages();
    let data = &got
        .iter()
        .find(|m| m.rcpt_to[0] == "r2@dest.test")
        .unwrap()
        .data;
    let text = String::from_utf8_lossy(data);
    for line in text.split("\r\n") {
        assert!(
            line.len() <= 998,
            "a line of {} characters was sent",
            line.len()
        );
        assert!(
            !line.contains(['\r', '\n']),
            "a bare line end was sent: {line:?}"
        );
    }
    let parsed = mail_parser::MessageParser::default()
        .parse(data.as_slice())
        .unwrap();
    assert!(parsed.body_html(0).unwrap().contains(&"z".repeat(5000)));
}

/// A destination whose MX takes the connection and never
/// greets (a tarpit), with hundreds of recipients queued for it, holds up
/// no other destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarpit_destination_does_not_hold_up_the_others() {
    for backend in BOTH {
        let e = env(backend, |o| {
            o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
            o.delivery = "max_in_flight = 64".into();
        })
        .await;
        // mx.tarpit.test: the sink's port on another loopback address, where
        // a listener accepts and says nothing.
        let tarpit = tokio::net::TcpListener::bind(SocketAddr::new(
            "127.0.0.2".parse().unwrap(),
            e.sink.addr.port(),
        ))
        .await
        .expect("bind 127.0.0.2");
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((socket, _)) = tarpit.accept().await {
                keep.lock().unwrap().push(socket);
            }
        });
        e.dns.add_mx("tarpit.test", 10, "mx.tarpit.test");
        e.dns.add_ip("mx.tarpit.test", "127.0.0.2".parse().unwrap());

        let mut c = SmtpClient::connect(e.kiln.smtp).await.unwrap();
        c.cmd("EHLO client.test").await.unwrap();
        for m in 0..6 {
            let to: Vec<String> = (0..50).map(|i| format!("r{m}-{i}@tarpit.test")).collect();
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            let body = message("a@shop.test", to[0], "to the tarpit", 512);
            assert_eq!(c.send("a@shop.test", &to, &body).await.unwrap().code, 250);
        }
        // Give the tarpit's connections time to be opened and stuck: as many
        // as a site may have ([delivery]'s max_connections_per_destination).
        assert!(
            crate::harness::wait_until(Duration::from_secs(10), || held.lock().unwrap().len()
                >= 16)
            .await,
            "{backend:?}: the tarpit got {} connections",
            held.lock().unwrap().len()
        );
        let started = tokio::time::Instant::now();
        let body = message("a@shop.test", "alice@dest.test", "healthy", 512);
        let r = c
            .send("a@shop.test", &["alice@dest.test"], &body)
            .await
            .unwrap();
        assert_eq!(r.code, 250);
        wait_state(&e.kiln, &queued_id(&r.text), 0, "delivered", 10).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{backend:?}: {took:?}");
        // Nothing for the tarpit was lost or given up on.
        assert_eq!(queued(&e.kiln).await, 300, "{backend:?}");
        c.quit().await;
        accepting.abort();
    }
}

/// One RFC 5321/6531 parser at RCPT and in the API; address
/// literals refused by default and never to an internal network unless
/// listed; what a next hop would refuse is refused here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_addresses_and_literals() {
    let e = env(Backend::Embedded, |_| {}).await;
    let mut c = submit_session(e.kiln.smtp).await;
    assert_eq!(c.cmd("MAIL FROM:<a@shop.test>").await.unwrap().code, 250);
    for (rcpt, code, enhanced) in [
        ("x@[127.0.0.1]", 550, "5.1.2"),
        ("x@[IPv6:::1]", 550, "5.1.2"),
        ("x@[192.0.2.1]", 550, "5.1.2"),
        ("x@@dest.test", 501, "5.1.3"),
        ("\"x\"y@dest.test", 501, "5.1.3"),
        ("x@localhost", 550, "5.1.2"),
        ("x@dest_test.test", 501, "5.1.3"),
        ("üser@dest.test", 553, "5.6.7"),
    ] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await.unwrap();
        assert_eq!(r.code, code, "{rcpt}: {r:?}");
        assert!(r.text.contains(enhanced), "{rcpt}: {r:?}");
    }
    // Quoted local parts: kept quoted only when they must be.
    for rcpt in ["\"john doe\"@Dest.Test", "\"plain\"@dest.test"] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await.unwrap();
        assert_eq!(r.code, 250, "{rcpt}: {r:?}");
    }
    assert_eq!(c.cmd("DATA").await.unwrap().code, 354);
    c.write_data(&message("a@shop.test", "plain@dest.test", "quoted", 256))
        .await
        .unwrap();
    assert_eq!(c.read_reply().await.unwrap().code, 250);
    assert!(e.sink.wait_count(2, Duration::from_secs(20)).await);
    let mut rcpts: Vec<String> = e
        .sink
        .messages()
        .iter()
        .flat_map(|m| m.rcpt_to.clone())
        .collect();
    rcpts.sort();
    assert_eq!(rcpts, ["\"john doe\"@dest.test", "plain@dest.test"]);
    // UTF-8 only in an SMTPUTF8 transaction, and not passed to a next hop
    // that does not offer SMTPUTF8 (the sink): bounced, never downgraded.
    assert_eq!(
        c.cmd("MAIL FROM:<a@shop.test> SMTPUTF8")
            .await
            .unwrap()
            .code,
        250
    );
    assert_eq!(c.cmd("RCPT TO:<üser@dest.test>").await.unwrap().code, 250);
    assert_eq!(c.cmd("DATA").await.unwrap().code, 354);
    c.write_data(&message("a@shop.test", "x@dest.test", "utf8", 256))
        .await
        .unwrap();
    let r = c.read_reply().await.unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    let rec = wait_state(&e.kiln, &queued_id(&r.text), 0, "bounced", 20).await;
    assert_eq!(rec["attempts"][0]["enhanced_code"], "5.6.7", "{rec}");
    c.quit().await;

    // The API, through the SDK: the same parser.
    let mut sdk = Sdk::start(e.kiln.http).await;
    let acme = create_account(&e, "acme");
    verified_sender(&e, &mut sdk, &acme, "mail.acme.test", 1).await;
    let template = crate::clients::approved_template(&mut sdk, &acme).await;
    for to in [
        "x@[127.0.0.1]",
        "x@@dest.test",
        "x@localhost",
        "üser@dest.test",
    ] {
        let (code, _) = sdk
            .err(
                &acme,
                "SendEmail",
                send_params("mail.acme.test", template, to),
            )
            .await;
        assert_eq!(code, "InvalidParameterValue.IllegalEmailAddress", "{to}");
    }
    drop(e);

    // Literals allowed by the operator: never to an internal network
    // unless it is listed.
    for (extra, internal_ok) in [
        ("address_literals = true\n", false),
        (
            "address_literals = true\nliteral_networks = [\"127.0.0.0/8\"]\n",
            true,
        ),
    ] {
        let e = env(Backend::Embedded, |o| o.smtp = extra.into()).await;
        let mut c = submit_session(e.kiln.smtp).await;
        assert_eq!(c.cmd("MAIL FROM:<a@shop.test>").await.unwrap().code, 250);
        let r = c.cmd("RCPT TO:<x@[192.0.2.1]>").await.unwrap();
        assert_eq!(r.code, 550, "documentation range is internal: {r:?}");
        let r = c.cmd("RCPT TO:<x@[127.0.0.1]>").await.unwrap();
        assert_eq!(r.code == 250, internal_ok, "{extra}: {r:?}");
        c.quit().await;
    }
}

/// Attachments up to the product's 4 MB fit the API; a larger
/// request gets an SES error the SDK can read, naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_up_to_the_message_limit_fit_the_api() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let e = env(Backend::Embedded, |_| {}).await;
    let mut sdk = Sdk::start(e.kiln.http).await;
    let acme = create_account(&e, "acme");
    verified_sender(&e, &mut sdk, &acme, "mail.acme.test", 1).await;
    let template = crate::clients::approved_template(&mut sdk, &acme).await;
    let send = |to: &str, bytes: &[u8]| {
        let mut p = send_params("mail.acme.test", template, to);
        p["Attachments"] = json!([{"FileName": "report.pdf", "Content": b64(bytes)}]);
        p
    };
    // The message may have 4 MB (the product's limit, attachments
    // included, counted as sent: base64-encoded).
    let mut sizes = Vec::new();
    for (i, size) in [1_600_000usize, 3_000_000].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..size).map(|n| (n * 7 + i) as u8).collect();
        let r = sdk
            .call(&acme, "SendEmail", send(&format!("r{i}@dest.test"), &bytes))
            .await;
        assert_eq!(r["ok"], true, "{size} bytes: {}", r["message"]);
        sizes.push(bytes);
    }
    let r = sdk
        .call(
            &acme,
            "SendEmail",
            send("r3@dest.test", &vec![b'a'; 3_500_000]),
        )
        .await;
    assert_eq!(
        r["code"], "FailedOperation.EmailContentToolarge",
        "{}",
        r["message"]
    );
    assert!(e.sink.wait_count(2, Duration::from_secs(60)).await);
    for (i, bytes) in sizes.iter().enumerate() {
        let got = e.sink.messages();
        let m = got
            .iter()
            .find(|m| m.rcpt_to[0] == format!("r{i}@dest.test"))
            .unwrap();
        let parsed = mail_parser::MessageParser::default()
            .parse(m.data.as_slice())
            .unwrap();
        let attachment = parsed.attachment(0).expect("an attachment");
        assert!(
            attachment.contents() == bytes.as_slice(),
            "attachment {i} changed on the way"
        );
    }
    // Over the limit, through the SDK: an error it reads, naming the limit.
    let big = vec![b'x'; 6 * 1024 * 1024];
    let r = sdk
        .call(&acme, "SendEmail", send("big@dest.test", &big))
        .await;
    let (code, message) = (
        r["code"].as_str().unwrap_or_default(),
        r["message"].as_str().unwrap_or_default(),
    );
    assert_eq!(code, "InvalidParameterValue", "{message}");
    assert!(
        message.contains("larger than") && message.contains("4194304"),
        "{message}"
    );
    // And with curl, unsigned: an SES error in JSON that curl reads, whether
    // it waits for `100 Continue` (its default for a big body), sends the
    // whole body at once, or sends it in chunks of unknown total. A size it
    // declares is refused for what it says; a body of unknown size, from
    // no account, is refused from its headers, its body never kept.
    for extra in [None, Some("Expect:"), Some("Transfer-Encoding: chunked")] {
        let mut curl = tokio::process::Command::new("curl");
        curl.args(["-s", "-o", "-", "-w", "\n%{http_code}"])
            .args(["-H", "Content-Type: application/json"]);
        if let Some(header) = extra {
            curl.args(["-H", header]);
        }
        let out = curl
            .args(["--data-binary", "@-"])
            .arg(format!("http://{}/", e.kiln.http))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map(|mut child| {
                let mut stdin = child.stdin.take().unwrap();
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let _ = stdin.write_all(&vec![b'{'; 8 * 1024 * 1024]).await;
                });
                child
            })
            .expect("curl runs")
            .wait_with_output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, status) = text.rsplit_once('\n').unwrap();
        assert_eq!(status, "200", "{extra:?}: {text}");
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
        let want = if extra == Some("Transfer-Encoding: chunked") {
            "MissingParameter"
        } else {
            "InvalidParameterValue"
        };
        assert_eq!(v["Response"]["Error"]["Code"], want, "{extra:?}: {v}");
    }
    // A client that writes its whole request before it reads (as many
    // HTTP libraries do) still reads the answer: the connection is not
    // reset under it with the rest of its body unread.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = vec![b'{'; 32 * 1024 * 1024];
    let mut conn = tokio::net::TcpStream::connect(e.kiln.http).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body)
        .await
        .expect("the whole body is taken, not reset");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("InvalidParameterValue"), "{answer}");
}

/// Loopback is no fence on its own: an admin request needs the
/// operator token, which `kiln` reads from the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_operator_token() {
    use std::os::unix::fs::PermissionsExt;
    let e = env(Backend::Embedded, |_| {}).await;
    let token_file = e.kiln.data_dir.join("admin.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let curl = |args: Vec<String>| async move {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .await
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let base = format!("http://{}", e.kiln.http);
    // A local process (or a proxy on this host) without the token.
    assert_eq!(
        curl(vec![
            "-X".into(),
            "POST".into(),
            format!("{base}/admin/accounts/evil")
        ])
        .await,
        "401"
    );
    assert_eq!(
        curl(vec![
            "-X".into(),
            "POST".into(),
            "-H".into(),
            "Authorization: Bearer guess".into(),
            format!("{base}/admin/accounts/evil/rotate-key")
        ])
        .await,
        "401"
    );
    assert_eq!(curl(vec![format!("{base}/admin/accounts")]).await, "401");
    // The operator's command reads the token itself.
    let out = e.kiln.command(&["account", "list"]);
    assert!(out.status.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, json!([]), "no account was made without the token");
    let out = e.kiln.command(&["account", "create", "good"]);
    assert!(out.status.success(), "{out:?}");
    // A token that does not match (another node's, an old one) is refused.
    let good = e.kiln.admin_token();
    std::fs::write(&token_file, "stale").unwrap();
    let out = e.kiln.command(&["account", "list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Unauthorized"),
        "{out:?}"
    );
    std::fs::write(&token_file, &good).unwrap();
    // With the token, curl works too.
    let token = e.kiln.admin_token();
    assert_eq!(
        curl(vec![
            "-H".into(),
            format!("Authorization: Bearer {token}"),
            format!("{base}/admin/accounts")
        ])
        .await,
        "200"
    );
}

/// Relays TCP to `target` and keeps what the client sent.
async fn recording_proxy(
    target: SocketAddr,
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let server = tokio::net::TcpStream::connect(target).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (addr, sent)
}

/// One raw HTTP exchange: `request` as bytes, the response's JSON body.
async fn raw_http(target: SocketAddr, request: &[u8]) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(target).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return serde_json::from_str(&body[..len]).unwrap();
            }
        }
        assert!(n > 0, "connection closed: {text}");
    }
}

/// A signed request that changes something is done once: a copy
/// replayed within the timestamp window, or the SDK sending the same
/// request twice within a second, gets the first one's answer (its
/// MessageId) and nothing is sent twice, on both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_is_done_once() {
    for backend in BOTH {
        let e = env(backend, |_| {}).await;
        let mut sdk = Sdk::start(e.kiln.http).await;
        let acme = create_account(&e, "acme");
        verified_sender(&e, &mut sdk, &acme, "mail.acme.test", 1).await;
        let template = crate::clients::approved_template(&mut sdk, &acme).await;
        // The SDK talks through a proxy that keeps what it sent.
        let (proxy, sent) = recording_proxy(e.kiln.http).await;
        let mut through_proxy = Sdk::start(proxy).await;
        let r = through_proxy
            .ok(
                &acme,
                "SendEmail",
                send_params("mail.acme.test", template, "once@dest.test"),
            )
            .await;
        assert!(r["MessageId"].is_string());
        let captured = sent.lock().unwrap().clone();
        assert!(
            captured.starts_with(b"POST / HTTP/1.1"),
            "{}",
            String::from_utf8_lossy(&captured)
        );
        // The same bytes again, as an attacker on the path would send them
        // (or an application retrying within the second): the first one's
        // answer, and nothing sent twice.
        let again = raw_http(e.kiln.http, &captured).await;
        assert_eq!(
            again["Response"]["MessageId"], r["MessageId"],
            "{backend:?}: {again}"
        );
        assert!(e.sink.wait_count(1, Duration::from_secs(20)).await);
        crate::harness::nothing_happens_for(Duration::from_millis(500), "the replay's copy").await;
        assert_eq!(e.sink.count(), 1, "{backend:?}: sent once");
        // The SDK itself sends one request twice within a second (a double
        // click): two answers, one MessageId, one message.
        crate::clients::next_second().await;
        let params = send_params("mail.acme.test", template, "twice@dest.test");
        let (first, second) = (
            sdk.ok(&acme, "SendEmail", params.clone()).await,
            sdk.ok(&acme, "SendEmail", params).await,
        );
        assert_eq!(first["MessageId"], second["MessageId"], "{backend:?}");
        assert!(e.sink.wait_count(2, Duration::from_secs(20)).await);
        crate::harness::nothing_happens_for(Duration::from_millis(500), "the double click's copy")
            .await;
        let twice = e
            .sink
            .messages()
            .iter()
            .filter(|m| m.rcpt_to == ["twice@dest.test"])
            .count();
        assert_eq!(twice, 1, "{backend:?}: {first} {second}");
        // Reads may repeat (clients poll them; a copy learns nothing new).
        let (proxy, sent) = recording_proxy(e.kiln.http).await;
        let mut through_proxy = Sdk::start(proxy).await;
        through_proxy
            .ok(
                &acme,
                "ListEmailTemplates",
                json!({"Limit": 10, "Offset": 0}),
            )
            .await;
        let captured = sent.lock().unwrap().clone();
        let again = raw_http(e.kiln.http, &captured).await;
        assert!(again["Response"]["TemplatesMetadata"].is_array(), "{again}");
    }
}

/// Password guessing is slowed, then stopped per client address
/// and per user name (the right password too), counted by the store, shown
/// to the operator and lifted by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_slowed_then_stopped() {
    for backend in BOTH {
        let e = env(backend, |o| {
            o.smtp = "auth_max_failures_per_ip = 3\nauth_max_failures_per_user = 5\nauth_failure_window = 120\n".into();
        })
        .await;
        let smtp = e.kiln.smtp;
        let mut waits = Vec::new();
        for _ in 0..3 {
            let started = tokio::time::Instant::now();
            let r = smtplib_login(smtp, "shop", "guess", "127.0.0.1").await;
            assert_eq!(r.code, 535, "{backend:?}: {r:?}");
            waits.push(started.elapsed());
        }
        assert!(
            waits[2] > waits[0] + Duration::from_millis(700),
            "{waits:?}"
        );
        // The address is blocked: the right password too.
        let r = smtplib_login(smtp, "shop", "shop-password", "127.0.0.1").await;
        assert_eq!(r.code, 454, "{backend:?}: {r:?}");
        assert!(r.text.contains("4.7.0"), "{r:?}");
        // From elsewhere the user may still log in, until the user name has
        // failed too often from everywhere.
        assert_eq!(
            smtplib_login(smtp, "shop", "shop-password", "127.0.0.2")
                .await
                .code,
            235
        );
        for _ in 0..2 {
            assert_eq!(
                smtplib_login(smtp, "shop", "guess", "127.0.0.2").await.code,
                535
            );
        }
        let r = smtplib_login(smtp, "shop", "shop-password", "127.0.0.3").await;
        assert_eq!(r.code, 454, "{backend:?}: the user name is blocked: {r:?}");
        // The operator sees it and lifts it.
        let out = e.kiln.command(&["auth", "blocked"]);
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            listed["blocked"],
            json!(["ip:127.0.0.1", "user:shop"]),
            "{backend:?}"
        );
        assert!(
            e.kiln
                .log_text()
                .contains("sign-in blocked after repeated failures")
        );
        let out = e.kiln.command(&["auth", "unblock", "user:shop"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            smtplib_login(smtp, "shop", "shop-password", "127.0.0.2")
                .await
                .code,
            235
        );
        let r = smtplib_login(smtp, "shop", "shop-password", "127.0.0.1").await;
        assert_eq!(r.code, 454, "the address is still blocked: {r:?}");
        let out = e.kiln.command(&["auth", "unblock", "ip:127.0.0.1"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            smtplib_login(smtp, "shop", "shop-password", "127.0.0.1")
                .await
                .code,
            235
        );
    }
}

/// A client trickling bytes holds neither a command nor DATA
/// past its deadline, and one address cannot take every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_holds_nothing_for_long() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = env(Backend::Embedded, |o| {
        o.smtp = "max_connections = 20\nmax_connections_per_ip = 10\ncommand_timeout = 3\ndata_rate_grace = 2\nmin_data_rate = 100\n".into();
    })
    .await;
    let smtp = e.kiln.smtp;
    // An attacker at 127.0.0.1 opens 20 connections and trickles a byte a
    // second into each.
    let mut held = 0;
    let mut refused = 0;
    let mut trickles = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(smtp).await.unwrap();
        let mut greeting = [0u8; 128];
        let n = s.read(&mut greeting).await.unwrap();
        let text = String::from_utf8_lossy(&greeting[..n]).to_string();
        if text.starts_with("220") {
            held += 1;
            trickles.push(tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                for b in b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP"
                    .iter()
                    .cycle()
                    .take(60)
                {
                    if s.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let mut rest = String::new();
                let _ = s.read_to_string(&mut rest).await;
                (started.elapsed(), rest)
            }));
        } else {
            assert!(
                text.starts_with("421") && text.contains("your address"),
                "{text}"
            );
            refused += 1;
        }
    }
    assert_eq!((held, refused), (10, 10));
    // A real client from elsewhere gets in and sends.
    let req = json!({
        "from": "a@shop.test",
        "to": ["r@dest.test"],
        "data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, message("a@shop.test", "r@dest.test", "real", 512)),
    });
    let r = run_smtplib(smtp, "shop", "shop-password", Some("127.0.0.2"), req).await;
    assert_eq!(r.code, 250, "{r:?}");
    // Each trickled command is cut at its deadline, though bytes kept coming.
    for t in trickles {
        let (took, rest) = t.await.unwrap();
        assert!(took < Duration::from_secs(6), "{took:?}");
        assert!(rest.contains("421 4.4.2"), "{rest}");
    }
    // DATA at under 100 bytes a second is cut once its grace time is over.
    let mut c = submit_session(smtp).await;
    assert_eq!(c.cmd("MAIL FROM:<a@shop.test>").await.unwrap().code, 250);
    assert_eq!(c.cmd("RCPT TO:<r@dest.test>").await.unwrap().code, 250);
    assert_eq!(c.cmd("DATA").await.unwrap().code, 354);
    let started = tokio::time::Instant::now();
    let reply = loop {
        if c.write_raw(b"x").await.is_err() {
            break c.read_reply().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(10) {
            break c.read_reply().await;
        }
    };
    let took = started.elapsed();
    let reply = reply.expect("a reply before the connection closes");
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}
