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
    for _ in 0..40 {
        if page.contains(&format!("4 / {quota}")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        c.refresh().await.unwrap();
        page = c.source().await.unwrap();
    }
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
