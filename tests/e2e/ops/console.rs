//! The web console in headless Chromium (driven over WebDriver by
//! chromedriver): the operator and an account sign in and see the level,
//! quota, counts and charts of data this test made; an account sees none
//! of another's; forms without the session's CSRF token are refused. A
//! screenshot of each page goes to the test's output directory.

use crate::clients::{create_account, ready_to_send, send_params, verified_sender};
use crate::harness::{Backend, env};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Driver {
    let port = kiln_testkit::free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver runs (apt-get install -y chromium-driver)");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver(child, port)
}

async fn browser(driver: &Driver) -> Client {
    // The WebDriver client's TLS (unused on loopback) needs a provider named.
    let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,2400"],
        }),
    );
    ClientBuilder::rustls()
        .expect("TLS for the WebDriver client")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("a browser session")
}

async fn screenshot(c: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn sign_in(c: &Client, base: &str, fields: &[(&str, &str)], button: &str) -> String {
    c.goto(&format!("{base}/console")).await.unwrap();
    for (id, value) in fields {
        c.find(Locator::Id(id))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    c.find(Locator::Id(button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::Id("domains"))
        .await
        .expect("signed in: the domains section");
    c.source().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_account_see_their_own_numbers() {
    let e = env(Backend::Embedded, |_| {}).await;
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;
    let other = create_account(&e, "other");
    verified_sender(&e, &mut sdk, &other, "mail.other.test", 1).await;
    e.sink.set_rule("gone@dest.test", "550 5.1.1 no such user");
    for to in [
        "a@dest.test",
        "b@dest.test",
        "c@dest.test",
        "gone@dest.test",
    ] {
        sdk.ok(&acme, "SendEmail", send_params(domain, template, to))
            .await;
    }
    assert!(e.sink.wait_count(3, Duration::from_secs(20)).await);
    let listed = sdk.ok(&acme, "ListEmailIdentities", json!({})).await;
    let id = &listed["EmailIdentities"][0];
    let (level, quota) = (
        id["CurrentReputationLevel"].as_i64().unwrap(),
        id["DailyQuota"].as_i64().unwrap(),
    );

    let driver = chromedriver();
    let base = format!("http://{}", e.kiln.http);
    let token = e.kiln.admin_token();

    // The operator: every account's domains, with level, quota and today's
    // count; the charts; the queue; a blocklist search.
    let c = browser(&driver).await;
    let mut page = sign_in(&c, &base, &[("token", token.trim())], "operator-sign-in").await;
    // The daily statistics reach the store within a few seconds.
    page = console_showing(&c, &base, page, &format!("4 / {quota}")).await;
    assert!(
        page.contains("mail.acme.test") && page.contains("mail.other.test"),
        "{page}"
    );
    assert!(
        page.contains(&format!("<td class=\"level\">{level}</td>")),
        "level {level}: {page}"
    );
    assert!(
        page.contains(&format!("4 / {quota}")),
        "4 sent of {quota}: {page}"
    );
    assert!(page.matches("<svg").count() >= 2, "charts: {page}");
    assert!(page.contains("id=\"queue\""));
    c.goto(&format!("{base}/console?blocklist=gone%40dest.test"))
        .await
        .unwrap();
    let page = c.source().await.unwrap();
    assert!(page.contains("gone@dest.test is blocklisted"), "{page}");
    screenshot(&c, "operator").await;
    c.close().await.unwrap();

    // The account: its own domain, statistics, templates; nothing of the other's.
    let c = browser(&driver).await;
    let page = sign_in(
        &c,
        &base,
        &[("secret_id", &acme.id), ("secret_key", &acme.key)],
        "account-sign-in",
    )
    .await;
    assert!(page.contains("mail.acme.test"), "{page}");
    assert!(
        !page.contains("mail.other.test"),
        "another account's domain: {page}"
    );
    assert!(page.contains(&format!("<td class=\"level\">{level}</td>")));
    assert!(
        page.contains("id=\"templates\"") && page.contains("approved"),
        "{page}"
    );
    assert!(page.matches("<svg").count() >= 2);
    screenshot(&c, "account").await;
    c.close().await.unwrap();

    // A wrong key is refused; a form without the session's CSRF token too.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .post(format!("{base}/console/login"))
        .form(&[("secret_id", acme.id.as_str()), ("secret_key", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{base}/console/login"))
        .form(&[("token", token.trim())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let r = http
        .post(format!("{base}/console/queue"))
        .header("cookie", &session)
        .form(&[
            ("action", "suspend"),
            ("select", "domain:dest.test"),
            ("csrf", "forged"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let controls: Value =
        serde_json::from_slice(&e.kiln.command(&["queue", "controls"]).stdout).unwrap();
    assert_eq!(
        controls["rules"].as_array().unwrap().len(),
        0,
        "nothing suspended"
    );
}

/// The policy of the next test: SMTP mail with a banned word is refused;
/// the warm-up curve caps batch mail at 2 on the first day.
const WATCHED: &str = r#"
return { config = {
  limits = { rate_per_second = 1e9, account_daily_limit = 1e12, per_recipient_per_hour = 1e12 },
  reputation = { initial_level = 20 },
  warmup = { curve = { 2 } },
  content_filter = { banned_words = { "cheap pills" } },
} }
"#;

async fn page_of(c: &Client, base: &str) -> String {
    c.goto(&format!("{base}/console")).await.unwrap();
    c.source().await.unwrap()
}

/// The console page, loaded again until it shows `text` (about ten
/// seconds at most; then the last one, for the caller's assertions).
async fn console_showing(c: &Client, base: &str, mut page: String, text: &str) -> String {
    for _ in 0..40 {
        if page.contains(text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        page = page_of(c, base).await;
    }
    page
}

/// What the operator needs to see when mail waits or is refused, played
/// as it was found: a `provider:gmail` suspension shows what it holds (the
/// queue, the suspensions, the shaping row), a refusal names the message's
/// sender, where it came from and why, the warm-up cap says what it holds
/// back (no "3 of 2"), a domain whose state the policy cannot read is
/// warned of and repaired from the console, the rates chart leaves days
/// without mail empty (no 0 %) and spans the page, and at 420 px the page
/// does not scroll sideways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_sees_what_holds_mail_and_why() {
    let e = env(Backend::Redis, |o| o.policy = WATCHED.into()).await;
    e.dns.add_mx("gw.test", 10, "alt1.aspmx.l.google.com");
    e.dns
        .add_ip("alt1.aspmx.l.google.com", "127.0.0.1".parse().unwrap());
    // An MX without STARTTLS, for the week's TLS failures.
    let plain = kiln_testkit::sink::Sink::start_with(
        std::net::SocketAddr::new([127, 0, 0, 2].into(), e.sink.addr.port()),
        None,
        true,
    )
    .await;
    e.dns.add_mx("plain.test", 10, "mx.plain.test");
    e.dns.add_ip("mx.plain.test", "127.0.0.2".parse().unwrap());
    crate::harness::submit_one(e.kiln.smtp, "ops@shop.test", "p@plain.test", "plain", 300).await;
    assert!(plain.wait_count(1, Duration::from_secs(20)).await);
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;
    // Delivered to gmail (a shaping line), then gmail suspended, then three
    // that wait.
    for to in ["first@gw.test", "a@dest.test", "b@dest.test"] {
        sdk.ok(&acme, "SendEmail", send_params(domain, template, to))
            .await;
    }
    assert!(e.sink.wait_count(3, Duration::from_secs(20)).await);
    let out = e.kiln.command(&["queue", "suspend", "provider:gmail"]);
    assert!(out.status.success(), "{out:?}");
    for i in 0..3 {
        sdk.ok(
            &acme,
            "SendEmail",
            send_params(domain, template, &format!("h{i}@gw.test")),
        )
        .await;
    }
    // A refusal at the SMTP door.
    let mut smtp = crate::harness::submit_session(e.kiln.smtp).await;
    let spam = kiln_testkit::client::message("promo@shop.test", "r@dest.test", "cheap pills", 300);
    let r = smtp
        .send("promo@shop.test", &["r@dest.test"], &spam)
        .await
        .unwrap();
    assert_eq!(r.code, 554, "{r:?}");
    smtp.quit().await;

    let driver = chromedriver();
    let base = format!("http://{}", e.kiln.http);
    let token = e.kiln.admin_token();
    let c = browser(&driver).await;
    let mut page = sign_in(&c, &base, &[("token", token.trim())], "operator-sign-in").await;
    page = console_showing(&c, &base, page, "6 / ").await;
    assert_eq!(e.sink.rcpts_seen("h0@gw.test"), 0, "held");

    // The suspension and what it holds.
    let suspension = page
        .split("<tr class=\"suspension\">")
        .nth(1)
        .unwrap_or_else(|| panic!("no suspension shown: {page}"));
    assert!(
        suspension.contains("provider:gmail") && suspension.contains("3 queued"),
        "{suspension}"
    );
    // A table's row by its first cell, from `heading` on.
    let row = |heading: &str| {
        let from = &page[page.find(heading).unwrap()..];
        from.split("<tr>")
            .find(|r| r.starts_with("<td>gmail</td>"))
            .unwrap_or_else(|| panic!("no gmail row after {heading}: {from}"))
            .to_string()
    };
    let gmail_row = row("id=\"queue\"");
    let cells: Vec<&str> = gmail_row
        .split("<td>")
        .filter_map(|c| c.split("</td>").next())
        .collect();
    // Provider, queued, due, waiting, being attempted, held, oldest.
    assert_eq!(
        (cells.get(2), cells.get(6)),
        (Some(&"3"), Some(&"3")),
        "queued 3, held by a suspension 3: {gmail_row}"
    );
    let until = row("<h2>Shaping</h2>");
    assert!(
        until.contains("until resumed: provider:gmail suspended by"),
        "{until}"
    );

    // The week's TLS failures: the MX that offered no STARTTLS.
    let tls = &page[page.find("id=\"tls\"").unwrap()..page.find("id=\"blocklist\"").unwrap()];
    assert!(
        tls.contains("<td>plain.test</td>") && tls.contains("starttls-not-supported 1"),
        "{tls}"
    );
    assert!(!tls.contains("dest.test</td>"), "{tls}");
    // The refusal: who sent it, by which door, why.
    let recent = &page[page.find("id=\"recent\"").unwrap()..];
    assert!(
        recent.contains("from &lt;promo@shop.test&gt; (smtp 127.0.0.1")
            && recent.contains("account shop")
            && recent.contains("banned word"),
        "{recent}"
    );
    assert!(!recent.contains("a message at the smtp door"), "{recent}");

    // Warm-up: 6 sent today, the cap of 2 holds batch mail only.
    let domains =
        &page[page.find("id=\"domains\"").unwrap()..page.find("id=\"domain-control\"").unwrap()];
    assert!(
        domains.contains(
            "2 a day for batch mail: <span class=\"bad\">reached, batch mail waits until tomorrow"
        ),
        "{domains}"
    );
    assert!(!domains.contains(" of 2"), "{domains}");

    // Rates: mail only today, so one dot a series and no line through 0 %.
    let charts = &page[page.find("id=\"charts\"").unwrap()..page.find("id=\"queue\"").unwrap()];
    let rates = &charts[charts.find("Rates over").unwrap()..];
    assert_eq!(rates.matches("<polyline").count(), 0, "{rates}");
    assert!(rates.matches("<circle").count() >= 2, "{rates}");
    let widths = c
        .execute(
            "const s = document.querySelector('#charts svg'); \
             const box = document.querySelector('#charts'); \
             return [s.getBoundingClientRect().width, box.clientWidth];",
            vec![],
        )
        .await
        .unwrap();
    let (chart, section) = (widths[0].as_f64().unwrap(), widths[1].as_f64().unwrap());
    assert!(
        chart >= 0.9 * section,
        "the chart is {chart} px of {section}"
    );

    // A narrow screen: nothing wider than the window.
    c.set_window_size(420, 2400).await.unwrap();
    let page_width = c
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        page_width[0].as_f64().unwrap() <= page_width[1].as_f64().unwrap(),
        "at 420 px the page is {page_width}"
    );
    screenshot(&c, "operator-narrow").await;
    c.set_window_size(1200, 2400).await.unwrap();

    // The domain's state damaged behind Kiln's back: warned of, and set
    // right from the console.
    let redis = e.redis.as_ref().unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let key = cli(&["--scan", "--pattern", &format!("*rep:{domain}:state")]);
    assert!(!key.is_empty(), "the reputation state's key");
    cli(&["SET", &key, "{\"level\":\"eight\",\"day\":\"2026-01-01\"}"]);
    let page = page_of(&c, &base).await;
    assert!(
        page.contains("id=\"domain-warning\"") && page.contains("state unreadable: sends nothing"),
        "{page}"
    );
    let field = |css: &'static str| c.find(Locator::Css(css));
    field("#domain-form input[name=domain]")
        .await
        .unwrap()
        .send_keys(domain)
        .await
        .unwrap();
    field("#domain-form select")
        .await
        .unwrap()
        .select_by_value("set-level")
        .await
        .unwrap();
    field("#domain-form input[name=value]")
        .await
        .unwrap()
        .send_keys("5")
        .await
        .unwrap();
    field("#domain-form button")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let done = c
        .wait()
        .for_element(Locator::Id("done"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        done.contains(&format!("set-level {domain}: level 5")),
        "{done}"
    );
    let page = c.source().await.unwrap();
    assert!(!page.contains("id=\"domain-warning\""), "{page}");
    assert!(page.contains("<td class=\"level\">5</td>"), "{page}");
    assert!(
        crate::harness::wait_until(Duration::from_secs(5), || e
            .kiln
            .log_text()
            .lines()
            .any(|l| l.contains("reputation changed by an operator")
                && l.contains("operator (console) from 127.0.0.1")))
        .await,
        "logged with who: {}",
        e.kiln.log_text()
    );
    screenshot(&c, "operator-held").await;
    c.close().await.unwrap();
}
