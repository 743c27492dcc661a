//! Events and callbacks: delivered, bounce and dropped events reach a real
//! HTTP receiver in the Tencent format, signed; the sender address's URL
//! wins over the account's; a receiver that is down, answers 500, or a
//! daemon killed with callbacks pending loses no event and gets none twice.

use crate::clients::{Creds, Sdk, ready_to_send, send_status, today};
use crate::harness::{BOTH, Backend, Env, env};
use kiln_testkit::webhook::{Hook, Webhook};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

pub(crate) fn body(h: &Hook) -> Value {
    serde_json::from_str(&h.body).unwrap_or_else(|_| panic!("callback body is JSON: {}", h.body))
}

/// Checks the signature the way a receiver would (HMAC-SHA256 over
/// "<timestamp>.<body>" with the account's callback secret).
fn assert_signed(h: &Hook, secret: &str) {
    use aws_lc_rs::hmac;
    let ts = h.header("x-kiln-timestamp").expect("timestamp header");
    let now = kiln::clock::system_now_ms() / 1000;
    let age = now - ts.parse::<i64>().expect("numeric timestamp");
    assert!((0..300).contains(&age), "fresh timestamp: {ts}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, format!("{ts}.{}", h.body).as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        h.header("x-kiln-signature"),
        Some(format!("v1={hex}").as_str())
    );
    assert!(h.header("x-kiln-event-id").is_some_and(|id| !id.is_empty()));
}

/// Callback URL for the account (or one address); the signing secret.
pub fn set_callback(e: &Env, account: &str, url: &str, address: Option<&str>) -> String {
    let mut args = vec!["account", "callback", account, url];
    if let Some(a) = address {
        args.extend(["--address", a]);
    }
    let out = e.kiln.command(&args);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["CallbackSecret"].as_str().expect("secret").to_string()
}

/// The successful (2xx) callbacks, by event id: each must be there once.
fn delivered_once(hook: &Webhook) -> HashMap<String, Value> {
    let mut seen = HashMap::new();
    for h in hook.hooks().iter().filter(|h| h.status < 300) {
        let id = h.header("x-kiln-event-id").unwrap_or_default().to_string();
        assert!(
            seen.insert(id.clone(), body(h)).is_none(),
            "event {id} received twice"
        );
    }
    seen
}

async fn send(sdk: &mut Sdk, who: &Creds, domain: &str, template: i64, to: &[&str]) -> String {
    let r = sdk
        .ok(
            who,
            "SendEmail",
            json!({
                "FromEmailAddress": format!("news@{domain}"),
                "Destination": to,
                "Subject": "Hi {{name}}",
                "Template": {"TemplateID": template, "TemplateData": "{\"name\":\"A\",\"code\":\"1\"}"},
            }),
        )
        .await;
    r["MessageId"].as_str().unwrap().to_string()
}

async fn events_of(hook: &Webhook, n: usize) -> Vec<Value> {
    assert!(
        hook.wait_count(n, Duration::from_secs(30)).await,
        "{} callbacks, wanted {n}: {:?}",
        hook.hooks().len(),
        hook.hooks()
    );
    hook.hooks().iter().map(body).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_callback_url_signed_in_the_tencent_format() {
    for backend in BOTH {
        scenario(backend).await;
    }
}

async fn scenario(backend: Backend) {
    let mut hook = Webhook::start().await;
    let e = env(backend, |o| {
        o.callbacks.push_str("retry_base_ms = 100\ntimeout = 2\n")
    })
    .await;
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;
    let secret = set_callback(&e, "acme", &hook.url("/account"), None);

    // delivered
    let id = send(&mut sdk, &acme, domain, template, &["ann@dest.test"]).await;
    let got = events_of(&hook, 1).await;
    let ev = &got[0];
    assert_eq!(ev["event"], "delivered", "{ev}");
    assert_eq!(ev["eventid"], 1);
    assert_eq!(ev["email"], "ann@dest.test");
    assert_eq!(ev["messageId"], id);
    assert_eq!(ev["username"], "acme");
    assert_eq!(ev["from"], format!("news@{domain}"));
    assert_eq!(ev["fromDomain"], domain);
    assert_eq!(ev["templateId"], template);
    assert!(ev["timestamp"].as_i64().unwrap() >= ev["sentTimestamp"].as_i64().unwrap());
    let first = &hook.hooks()[0];
    assert_eq!(first.path, "/account");
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_signed(first, &secret);

    // bounce (hard), then dropped: the address is blocklisted now.
    e.sink.set_rule("gone@dest.test", "550 5.1.1 No such user");
    send(&mut sdk, &acme, domain, template, &["gone@dest.test"]).await;
    let got = events_of(&hook, 2).await;
    assert_eq!(
        (got[1]["event"].as_str(), got[1]["eventid"].as_i64()),
        (Some("bounce"), Some(4)),
        "{}",
        got[1]
    );
    assert_eq!(got[1]["bounceType"], "hard");
    assert!(
        got[1]["reason"].as_str().unwrap().contains("5.1.1"),
        "{}",
        got[1]
    );
    send(
        &mut sdk,
        &acme,
        domain,
        template,
        &["gone@dest.test", "bob@dest.test"],
    )
    .await;
    let got = events_of(&hook, 4).await;
    let dropped = got
        .iter()
        .find(|v| v["event"] == "dropped")
        .expect("dropped event");
    assert_eq!(dropped["eventid"], 3);
    assert_eq!(dropped["email"], "gone@dest.test");
    assert_eq!(dropped["reason"], "FailedOperation.EmailAddrInBlacklist");
    assert!(
        got.iter()
            .any(|v| v["event"] == "delivered" && v["email"] == "bob@dest.test")
    );

    // The sender address's own URL wins over the account's.
    set_callback(
        &e,
        "acme",
        &hook.url("/address"),
        Some(&format!("news@{domain}")),
    );
    send(&mut sdk, &acme, domain, template, &["cy@dest.test"]).await;
    events_of(&hook, 5).await;
    assert_eq!(hook.hooks()[4].path, "/address");
    assert_signed(&hook.hooks()[4], &secret);

    // A receiver that is down, then answers 500, then is back: every event
    // arrives, once.
    hook.go_down();
    send(&mut sdk, &acme, domain, template, &["d1@dest.test"]).await;
    let failed = crate::harness::metric(&e, "kiln_callbacks_total", "result=\"failed\"").await;
    assert!(
        crate::harness::wait_for_metric(
            &e,
            "kiln_callbacks_total",
            "result=\"failed\"",
            failed + 1.0
        )
        .await,
        "no callback tried while the receiver is down"
    );
    hook.answer(500);
    hook.resume().await;
    send(&mut sdk, &acme, domain, template, &["d2@dest.test"]).await;
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || hook
            .hooks()
            .iter()
            .filter(|h| h.status == 500)
            .count()
            >= 2)
        .await,
        "retries while the receiver fails"
    );
    hook.answer(200);
    assert!(
        crate::harness::wait_until(Duration::from_secs(60), || delivered_once(&hook).len() >= 7)
            .await,
        "{:?}",
        hook.hooks()
    );

    // Callbacks queued when the daemon dies are sent after it restarts.
    hook.go_down();
    let failures = |e: &Env| {
        e.kiln
            .log_text()
            .matches("callback failed; will retry")
            .count()
    };
    let before = failures(&e);
    send(&mut sdk, &acme, domain, template, &["k1@dest.test"]).await;
    let mut e = e;
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || failures(&e) > before).await,
        "the callback was tried while the receiver was down"
    );
    e.kiln.kill9();
    e.kiln.spawn();
    hook.resume().await;
    if !crate::harness::wait_until(Duration::from_secs(60), || delivered_once(&hook).len() >= 8)
        .await
    {
        let log = e.kiln.log_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("callback") || l.contains("kiln started"))
            .collect();
        panic!(
            "k1's event never arrived after the restart:\n{}",
            lines.join("\n")
        );
    }
    let all = delivered_once(&hook);
    assert_eq!(all.len(), 8, "{all:?}");
    assert!(
        all.values()
            .any(|v| v["email"] == "k1@dest.test" && v["event"] == "delivered")
    );
    crate::harness::nothing_happens_for(Duration::from_secs(1), "a callback twice").await;
    assert_eq!(delivered_once(&hook).len(), 8, "nothing arrives twice");
}

/// The HTML part of a received message, decoded.
fn html_part(data: &[u8]) -> String {
    let msg = mail_parser::MessageParser::default()
        .parse(data)
        .expect("parsable message");
    msg.body_html(0).expect("an HTML part").into_owned()
}

/// Opens `url` in headless Chromium (it loads images and follows
/// redirects), as a mail client's browser would.
fn chromium(url: &str) -> String {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .args(["--virtual-time-budget=3000", "--dump-dom", url])
        .output()
        .expect("chromium runs (apt-get install -y chromium)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_and_clicks_in_a_real_browser_become_events() {
    let hook = Webhook::start().await;
    let e = env(Backend::Embedded, |o| {
        o.extra =
            "[tracking]\nbase_url = \"http://{http}\"\nsecret = \"tracking-test-secret\"\n".into()
    })
    .await;
    let mut sdk = Sdk::start(e.kiln.http).await;
    let acme = crate::clients::create_account(&e, "acme");
    let domain = "mail.acme.test";
    crate::clients::verified_sender(&e, &mut sdk, &acme, domain, 1).await;
    let landing = hook.url("/landing?from=mail");
    let words = "your parcel left our store today and will arrive soon ".repeat(8);
    let html = format!(
        "<html><body><p>Hello {{{{name}}}}, {words}</p>\
         <p><a href=\"{landing}\">Track it</a> or <a data-kiln-notrack href=\"{}\">keep</a></p></body></html>",
        hook.url("/untracked")
    );
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let template = sdk
        .ok(&acme, "CreateEmailTemplate", json!({"TemplateName": "t", "TemplateContent": {"Html": b64(&html), "Text": b64(&format!("Hello {{{{name}}}}, {words}"))}}))
        .await["TemplateID"]
        .as_i64()
        .unwrap();
    set_callback(&e, "acme", &hook.url("/events"), None);
    let id = sdk
        .ok(
            &acme,
            "SendEmail",
            json!({
                "FromEmailAddress": format!("news@{domain}"),
                "Destination": ["ann@dest.test"],
                "Subject": "Your parcel",
                "Template": {"TemplateID": template, "TemplateData": "{\"name\":\"Ann\"}"},
            }),
        )
        .await["MessageId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(e.sink.wait_count(1, Duration::from_secs(20)).await);
    let html = html_part(&e.sink.messages()[0].data);
    assert!(!html.contains(&landing), "the link is tracked: {html}");
    assert!(
        html.contains(&hook.url("/untracked")),
        "an opted-out link is left alone"
    );
    let text = String::from_utf8_lossy(&e.sink.messages()[0].data).to_string();
    assert!(
        !text.contains("/t/o/") || text.contains("text/html"),
        "only the HTML part is tracked"
    );
    // The delivered event first.
    assert!(hook.wait_count(1, Duration::from_secs(20)).await);

    // Opening the message in a browser loads the pixel: an open event.
    let page = e.dir.path().join("message.html");
    std::fs::write(&page, &html).unwrap();
    let shown =
        tokio::task::spawn_blocking(move || chromium(&format!("file://{}", page.display())))
            .await
            .unwrap();
    assert!(shown.contains("Hello Ann"), "{shown}");
    let events = |hook: &Webhook| -> Vec<Value> { hook.posts().iter().map(body).collect() };
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || events(&hook)
            .iter()
            .any(|v| v["event"] == "open"))
        .await,
        "{:?}",
        hook.hooks()
    );
    let open = events(&hook)
        .into_iter()
        .find(|v| v["event"] == "open")
        .unwrap();
    assert_eq!(
        (open["eventid"].as_i64(), open["messageId"].as_str()),
        (Some(5), Some(id.as_str())),
        "{open}"
    );
    assert_eq!(open["email"], "ann@dest.test");
    assert!(
        open["useragent"].as_str().unwrap().contains("Chrome"),
        "{open}"
    );

    // Following the link lands on the original page: a click event.
    let start = html.find("/t/c/").expect("tracked link");
    let head = html[..start].rfind('"').unwrap() + 1;
    let tracked = html[head..].split('"').next().unwrap().to_string();
    let link = tracked.clone();
    let landed = tokio::task::spawn_blocking(move || chromium(&link))
        .await
        .unwrap();
    assert!(landed.contains("landing page"), "{landed}");
    assert!(
        hook.hooks().iter().any(|h| h.path == "/landing"),
        "the original page was reached"
    );
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || events(&hook)
            .iter()
            .any(|v| v["event"] == "click"))
        .await
    );
    let click = events(&hook)
        .into_iter()
        .find(|v| v["event"] == "click")
        .unwrap();
    assert_eq!(click["eventid"], 6);
    assert_eq!(click["link"], landing);

    // A forged or altered token: 404, and nothing is recorded.
    let before = events(&hook).len();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut forged = tracked.clone();
    forged.insert(forged.find("/t/c/").unwrap() + 6, 'x');
    for url in [
        forged,
        format!(
            "http://{}/t/c/bm90LWEtdG9rZW4.AAAAAAAAAAAAAAAAAAAAAA",
            e.kiln.http
        ),
    ] {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 404, "{url}");
    }
    let r = client.get(&tracked).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], landing.as_str());
    crate::harness::nothing_happens_for(Duration::from_millis(1500), "a forged click's event")
        .await;
    assert_eq!(
        events(&hook).len(),
        before + 1,
        "only the genuine click was recorded"
    );

    // Status and statistics know about it.
    let today = today();
    let status = sdk
        .ok(
            &acme,
            "GetSendEmailStatus",
            json!({"RequestDate": today, "MessageId": id, "Offset": 0, "Limit": 10}),
        )
        .await;
    let row = &status["EmailStatusList"][0];
    assert_eq!(
        (row["UserOpened"].as_bool(), row["UserClicked"].as_bool()),
        (Some(true), Some(true)),
        "{row}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = sdk
            .ok(
                &acme,
                "GetStatisticsReport",
                json!({"StartDate": today, "EndDate": today}),
            )
            .await;
        let v = &r["OverallVolume"];
        if (v["OpenedCount"].as_i64(), v["ClickedCount"].as_i64()) == (Some(1), Some(1)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "unique opens and clicks counted once: {r}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn header_value(data: &[u8], name: &str) -> Option<String> {
    let msg = mail_parser::MessageParser::default().parse(data)?;
    msg.header_raw(name).map(|v| v.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_unsubscribe_suppresses_the_recipient() {
    let hook = Webhook::start().await;
    let e = env(Backend::Embedded, |o| {
        o.extra = "[tracking]\nbase_url = \"http://{http}\"\n".into()
    })
    .await;
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;
    set_callback(&e, "acme", &hook.url("/events"), None);
    let params = |to: &[&str], unsubscribe: &str| {
        let mut p = json!({
            "FromEmailAddress": format!("news@{domain}"),
            "Destination": to,
            "Subject": "News",
            "Template": {"TemplateID": template, "TemplateData": "{\"name\":\"A\",\"code\":\"1\"}"},
        });
        if !unsubscribe.is_empty() {
            p["Unsubscribe"] = json!(unsubscribe);
        }
        p
    };
    let first = sdk
        .ok(&acme, "SendEmail", params(&["ann@dest.test"], "2"))
        .await["MessageId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(e.sink.wait_count(1, Duration::from_secs(20)).await);
    let data = e.sink.messages()[0].data.clone();
    let list = header_value(&data, "List-Unsubscribe").expect("List-Unsubscribe");
    assert_eq!(
        header_value(&data, "List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let url = list
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string();
    assert!(
        url.starts_with(&format!("http://{}/u/", e.kiln.http)),
        "{url}"
    );
    assert!(
        html_part(&data).contains("Unsubscribe</a>"),
        "the footer, in English"
    );
    // The DKIM signature covers both headers (RFC 8058 section 4).
    let text = String::from_utf8_lossy(&data).to_string();
    let signed = text
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replace("\r\n\t", " ");
    let h = signed
        .split("h=")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .expect("h= tag")
        .replace(' ', "");
    let names: Vec<&str> = h.split(':').collect();
    assert!(
        names.contains(&"List-Unsubscribe") && names.contains(&"List-Unsubscribe-Post"),
        "{h}"
    );
    let results = crate::egress::delivery::verify_dkim(e.dns.addr, &data).await;
    assert_eq!(results, [mail_auth::DkimResult::Pass]);

    // Opening the link only asks; it takes a POST. No other site may frame
    // the page (a click through a page on top would unsubscribe), and the
    // token in its URL goes nowhere as a Referer.
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert!(header("content-security-policy").contains("frame-ancestors 'none'"));
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
    let page = page.text().await.unwrap();
    assert!(
        page.contains("<form method=\"post\">") && page.contains(domain),
        "{page}"
    );
    sdk.ok(&acme, "SendEmail", params(&["ann@dest.test"], ""))
        .await;

    // A forged token changes nothing; the provider's one-click POST does.
    let client = reqwest::Client::new();
    let forged = format!("{url}x");
    let r = client
        .post(&forged)
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("You are unsubscribed from mail.acme.test.")
    );
    let events = |hook: &Webhook| -> Vec<Value> { hook.posts().iter().map(body).collect() };
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || events(&hook)
            .iter()
            .any(|v| v["event"] == "unsubscribe"))
        .await,
        "{:?}",
        hook.hooks()
    );
    let ev = events(&hook)
        .into_iter()
        .find(|v| v["event"] == "unsubscribe")
        .unwrap();
    assert_eq!(
        (ev["eventid"].as_i64(), ev["email"].as_str()),
        (Some(8), Some("ann@dest.test")),
        "{ev}"
    );
    assert_eq!(ev["messageId"], first);

    // From now on the sender domain may not send to her.
    let mut again = params(&["ann@dest.test"], "2");
    again["Subject"] = json!("News again");
    let (code, _) = sdk.err(&acme, "SendEmail", again).await;
    assert_eq!(code, "FailedOperation.ReceiverHasUnsubscribed");
    let today = today();
    let st = sdk
        .ok(
            &acme,
            "GetSendEmailStatus",
            json!({"RequestDate": today, "MessageId": first, "Offset": 0, "Limit": 10}),
        )
        .await;
    assert_eq!(st["EmailStatusList"][0]["UserUnsubscribed"], true, "{st}");

    // The sender address's setting applies when the request says nothing;
    // a message to several recipients gets no link (it would not know whom).
    sdk.ok(
        &acme,
        "CreateAddressUnsubscribeConfig",
        json!({"Address": format!("news@{domain}"), "UnsubscribeConfig": "6", "Status": 1}),
    )
    .await;
    sdk.ok(&acme, "SendEmail", params(&["bob@dest.test"], ""))
        .await;
    sdk.ok(
        &acme,
        "SendEmail",
        params(&["cy@dest.test", "di@dest.test"], "2"),
    )
    .await;
    assert!(
        e.sink.wait_count(5, Duration::from_secs(20)).await,
        "{}",
        e.sink.count()
    );
    let msgs = e.sink.messages();
    let bob = msgs
        .iter()
        .find(|m| m.rcpt_to == ["bob@dest.test"])
        .unwrap();
    assert!(
        html_part(&bob.data).contains("Abmelden</a>"),
        "German, from the address's setting"
    );
    let group = msgs
        .iter()
        .find(|m| m.rcpt_to.contains(&"cy@dest.test".to_string()))
        .unwrap();
    assert_eq!(header_value(&group.data, "List-Unsubscribe"), None);
}

/// Sends `body` to `to` the way a remote MTA returns a report: no AUTH,
/// null sender.
pub(crate) async fn mail_report(e: &Env, to: &str, body: &str) -> kiln_testkit::client::Reply {
    let mut c = kiln_testkit::client::SmtpClient::connect(e.kiln.smtp)
        .await
        .unwrap();
    c.cmd("EHLO mx.dest.test").await.unwrap();
    let r = c.send("", &[to], body.as_bytes()).await.unwrap();
    c.quit().await;
    r
}

pub(crate) fn dsn(to: &str, recipient: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.dest.test\r\nTo: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
         --B\r\nContent-Type: text/plain\r\n\r\nThe mailbox does not exist.\r\n\
         --B\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; mx.dest.test\r\n\r\n\
         Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Remote-MTA: dns; mx.dest.test\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: user unknown\r\n\r\n\
         --B\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: News\r\n\r\n--B--\r\n"
    )
}

pub(crate) fn arf(to: &str, recipient: &str) -> String {
    format!(
        "From: abuse@dest.test\r\nTo: {to}\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"F\"\r\n\r\n\
         --F\r\nContent-Type: text/plain\r\n\r\nA user marked this message as spam.\r\n\
         --F\r\nContent-Type: message/feedback-report\r\n\r\n\
         Feedback-Type: abuse\r\nUser-Agent: DestMail/1.0\r\nVersion: 1\r\n\
         Original-Rcpt-To: <{recipient}>\r\nSource-IP: 192.0.2.7\r\n\r\n\
         --F\r\nContent-Type: message/rfc822\r\n\r\nFrom: news@mail.acme.test\r\nTo: {recipient}\r\nSubject: News for you\r\n\r\nHello\r\n\
         --F--\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_and_complaints_come_back_to_the_verp_address() {
    for backend in BOTH {
        verp_reports(backend).await;
    }
}

async fn verp_reports(backend: Backend) {
    let hook = Webhook::start().await;
    let e = env(backend, |o| {
        o.extra = "[platform]\nbounce_domain = \"bounces.kiln.test\"\n".into()
    })
    .await;
    // Kiln's SPF record, which every sender domain's includes.
    e.dns
        .add_txt("_spf.kiln.test", "v=spf1 ip4:127.0.0.0/8 -all");
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;
    set_callback(&e, "acme", &hook.url("/events"), None);
    let send = |to: &'static str| {
        json!({
            "FromEmailAddress": format!("news@{domain}"),
            "Destination": [to],
            "Subject": "News",
            "Template": {"TemplateID": template, "TemplateData": "{\"name\":\"A\",\"code\":\"1\"}"},
        })
    };
    let ann_id = sdk.ok(&acme, "SendEmail", send("ann@dest.test")).await["MessageId"]
        .as_str()
        .unwrap()
        .to_string();
    let bob_id = sdk.ok(&acme, "SendEmail", send("bob@dest.test")).await["MessageId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(e.sink.wait_count(2, Duration::from_secs(20)).await);
    let msgs = e.sink.messages();
    let return_path = |rcpt: &str| {
        msgs.iter()
            .find(|m| m.rcpt_to == [rcpt])
            .unwrap()
            .mail_from
            .clone()
    };
    let (ann_rp, bob_rp) = (return_path("ann@dest.test"), return_path("bob@dest.test"));
    // The sender domain published its return-path records (CreateEmailIdentity
    // listed them): return paths are on its own subdomain, not the shared one.
    assert!(
        ann_rp.starts_with(&format!("b-{ann_id}-0-"))
            && ann_rp.ends_with(&format!("@bounces.{domain}")),
        "{ann_rp}"
    );
    assert_ne!(ann_rp, bob_rp);
    // DKIM (the From domain's) still passes with the VERP envelope, and SPF
    // passes for the return path and aligns with the From domain: DMARC
    // passes on SPF alone.
    let results = crate::egress::delivery::verify_dkim(e.dns.addr, &msgs[0].data).await;
    assert_eq!(results, [mail_auth::DkimResult::Pass]);
    let (spf, dmarc) = crate::egress::delivery::verify_spf_and_dmarc(
        e.dns.addr,
        msgs[0].peer,
        &msgs[0].mail_from,
        &msgs[0].data,
    )
    .await;
    assert_eq!(spf, mail_auth::SpfResult::Pass, "{ann_rp}");
    assert_eq!(dmarc, mail_auth::DmarcResult::Pass, "{ann_rp}");
    let events = |hook: &Webhook| -> Vec<Value> { hook.posts().iter().map(body).collect() };
    assert!(crate::harness::wait_until(Duration::from_secs(20), || events(&hook).len() >= 2).await);

    // A forged return path is no mailbox; other domains are still no relay.
    let forged = format!("b-{ann_id}-0-000000000000@bounces.{domain}");
    assert_eq!(
        mail_report(&e, &forged, &dsn(&forged, "ann@dest.test"))
            .await
            .code,
        550
    );
    assert_eq!(
        mail_report(&e, "x@elsewhere.test", "Subject: x\r\n\r\nx\r\n")
            .await
            .code,
        550
    );

    // A DSN: bounce event, and the hard bounce blocklists the address.
    let r = mail_report(&e, &ann_rp, &dsn(&ann_rp, "ann@dest.test")).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || events(&hook)
            .iter()
            .any(|v| v["event"] == "bounce"))
        .await,
        "{:?}",
        hook.hooks()
    );
    let bounce = events(&hook)
        .into_iter()
        .find(|v| v["event"] == "bounce")
        .unwrap();
    assert_eq!(
        (bounce["messageId"].as_str(), bounce["email"].as_str()),
        (Some(ann_id.as_str()), Some("ann@dest.test"))
    );
    assert_eq!(bounce["bounceType"], "hard");
    assert!(
        bounce["reason"].as_str().unwrap().contains("5.1.1"),
        "{bounce}"
    );
    let today = today();
    let black = sdk
        .ok(
            &acme,
            "ListBlackEmailAddress",
            json!({"StartDate": today, "EndDate": today, "Offset": 0, "Limit": 10}),
        )
        .await;
    assert_eq!(
        black["BlackList"][0]["EmailAddress"], "ann@dest.test",
        "{black}"
    );
    // The status record now says what the DSN said; the same DSN again
    // changes nothing (one bounce event, checked at the end).
    let row = send_status(&mut sdk, &acme, &ann_id).await.remove(0);
    assert_eq!(row["DeliverStatus"], 3, "{row}");
    let said = row["DeliverMessage"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("550 5.1.1 <ann@dest.test>: user unknown")
            && said.contains("delivery status notification"),
        "{row}"
    );
    let r = mail_report(&e, &ann_rp, &dsn(&ann_rp, "ann@dest.test")).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(send_status(&mut sdk, &acme, &ann_id).await[0], row);

    // A complaint: spamreport event, the recipient suppressed, an abuse report.
    let r = mail_report(&e, &bob_rp, &arf(&bob_rp, "bob@dest.test")).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || events(&hook)
            .iter()
            .any(|v| v["event"] == "spamreport"))
        .await
    );
    let complaint = events(&hook)
        .into_iter()
        .find(|v| v["event"] == "spamreport")
        .unwrap();
    assert_eq!(
        (complaint["eventid"].as_i64(), complaint["email"].as_str()),
        (Some(7), Some("bob@dest.test"))
    );
    assert_eq!(complaint["messageId"], bob_id);
    let (code, _) = sdk.err(&acme, "SendEmail", send("bob@dest.test")).await;
    assert_eq!(code, "FailedOperation.ReceiverHasUnsubscribed");
    let abuse = sdk
        .ok(
            &acme,
            "GetAbuseReport",
            json!({"StartTime": today, "EndTime": today}),
        )
        .await;
    assert_eq!(abuse["TotalCount"], 1, "{abuse}");
    assert_eq!(abuse["Data"][0]["OriginalRcptTo"], "bob@dest.test");
    assert_eq!(abuse["Data"][0]["SourceIp"], "192.0.2.7");
    assert_eq!(abuse["Data"][0]["Subject"], "News for you");
    let st = sdk
        .ok(
            &acme,
            "GetSendEmailStatus",
            json!({"RequestDate": today, "MessageId": bob_id, "Offset": 0, "Limit": 10}),
        )
        .await;
    assert_eq!(st["EmailStatusList"][0]["UserComplained"], true, "{st}");
    assert_eq!(
        events(&hook)
            .iter()
            .filter(|v| v["event"] == "bounce")
            .count(),
        1,
        "the forged DSN and the repeated one raised nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_can_go_several_to_a_post() {
    let mut hook = Webhook::start().await;
    let e = env(Backend::Embedded, |o| {
        o.callbacks
            .push_str("batch_max = 10\nretry_base_ms = 500\n")
    })
    .await;
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;
    let secret = set_callback(&e, "acme", &hook.url("/events"), None);
    hook.go_down();
    for to in ["a1@dest.test", "a2@dest.test", "a3@dest.test"] {
        send(&mut sdk, &acme, domain, template, &[to]).await;
    }
    assert!(e.sink.wait_count(3, Duration::from_secs(20)).await);
    // Kept while the receiver is down (tried, failed), then sent together.
    assert!(
        crate::harness::wait_for_metric(&e, "kiln_callbacks_total", "result=\"failed\"", 1.0).await,
        "no callback tried while the receiver is down"
    );
    hook.resume().await;
    let delivered = |hook: &Webhook| -> Vec<Value> {
        hook.posts()
            .iter()
            .flat_map(|h| match body(h) {
                Value::Array(items) => items,
                one => vec![one],
            })
            .collect()
    };
    assert!(
        crate::harness::wait_until(Duration::from_secs(30), || delivered(&hook).len() >= 3).await,
        "{:?}",
        hook.hooks()
    );
    let posts = hook.posts();
    let batched = posts
        .iter()
        .find(|h| body(h).is_array())
        .expect("a JSON array of events");
    assert_signed(batched, &secret);
    let ids = batched
        .header("x-kiln-event-id")
        .unwrap()
        .split(',')
        .count();
    assert_eq!(ids, body(batched).as_array().unwrap().len());
    let mut emails: Vec<String> = delivered(&hook)
        .iter()
        .map(|v| v["email"].as_str().unwrap().to_string())
        .collect();
    emails.sort();
    assert_eq!(emails, ["a1@dest.test", "a2@dest.test", "a3@dest.test"]);
}
