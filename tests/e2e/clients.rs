//! The ordinary clients the tests drive Kiln with: Tencent Cloud's
//! official Python SDK (one long-lived process per test, through its typed
//! models), hand-signed API requests, and Python's smtplib.

use crate::harness::Env;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kiln_testkit::client::Reply;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The SDK in a Python process that takes one call per line.
pub struct Sdk {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

/// An account's API credentials.
#[derive(Clone)]
pub struct Creds {
    pub id: String,
    pub key: String,
}

impl Sdk {
    pub async fn start(http: std::net::SocketAddr) -> Sdk {
        Sdk::start_with(&http.to_string(), "http", None).await
    }

    /// The SDK on `endpoint` over `protocol` (`https` trusting `ca`).
    pub async fn start_with(endpoint: &str, protocol: &str, ca: Option<&std::path::Path>) -> Sdk {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/sdk_client.py");
        let mut command = tokio::process::Command::new("python3");
        command.arg(script).arg(endpoint).arg(protocol);
        if let Some(ca) = ca {
            command.arg(ca);
        }
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Sdk {
            _child: child,
            stdin,
            lines,
        }
    }

    /// One action; the outcome `{"ok": true, "response"}` or `{"ok": false, "code", "message"}`.
    pub async fn call(&mut self, who: &Creds, action: &str, params: Value) -> Value {
        let line = json!({"id": who.id, "key": who.key, "action": action, "params": params});
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let out = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("the SDK answers")
            .unwrap()
            .unwrap_or_else(|| {
                panic!("sdk_client.py exited (is tencentcloud-sdk-python-ses installed?)")
            });
        serde_json::from_str(&out).unwrap()
    }

    /// A call that must succeed; its response.
    pub async fn ok(&mut self, who: &Creds, action: &str, params: Value) -> Value {
        let r = self.call(who, action, params.clone()).await;
        assert_eq!(r["ok"], true, "{action} {params}: {r}");
        r["response"].clone()
    }

    /// A call that must fail; its error code and message.
    pub async fn err(&mut self, who: &Creds, action: &str, params: Value) -> (String, String) {
        let r = self.call(who, action, params.clone()).await;
        assert_eq!(r["ok"], false, "{action} {params} should fail: {r}");
        (
            r["code"].as_str().unwrap_or_default().to_string(),
            r["message"].as_str().unwrap_or_default().to_string(),
        )
    }
}

/// `kiln account create NAME` on the running daemon.
pub fn create_account(e: &Env, name: &str) -> Creds {
    let out = e.kiln.command(&["account", "create", name]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON credentials");
    Creds {
        id: v["SecretId"].as_str().unwrap().to_string(),
        key: v["SecretKey"].as_str().unwrap().to_string(),
    }
}

/// Publishes what CreateEmailIdentity asked for in the test DNS server.
pub fn publish(e: &Env, attributes: &Value) {
    publish_in(&e.dns, attributes)
}

fn publish_in(dns: &kiln_testkit::dns::DnsServer, attributes: &Value) {
    for a in attributes.as_array().unwrap() {
        let name = a["SendDomain"].as_str().unwrap();
        let value = a["ExpectedValue"].as_str().unwrap();
        match a["Type"].as_str().unwrap() {
            "MX" => dns.add_mx(name, 10, value),
            "TXT" => dns.add_txt(name, value),
            other => panic!("unexpected record type {other}"),
        }
    }
}

/// A verified sender domain with one sender address `news@<domain>`.
pub async fn verified_sender(e: &Env, sdk: &mut Sdk, who: &Creds, domain: &str, dkim_option: i64) {
    verified_sender_in(&e.dns, sdk, who, domain, dkim_option).await
}

/// [`verified_sender`], its records published in `dns`.
pub async fn verified_sender_in(
    dns: &kiln_testkit::dns::DnsServer,
    sdk: &mut Sdk,
    who: &Creds,
    domain: &str,
    dkim_option: i64,
) {
    let created = sdk
        .ok(
            who,
            "CreateEmailIdentity",
            json!({"EmailIdentity": domain, "DKIMOption": dkim_option}),
        )
        .await;
    publish_in(dns, &created["Attributes"]);
    let got = sdk
        .ok(who, "GetEmailIdentity", json!({"EmailIdentity": domain}))
        .await;
    assert_eq!(got["VerifiedForSendingStatus"], true, "{got}");
    sdk.ok(
        who,
        "CreateEmailAddress",
        json!({"EmailAddress": format!("news@{domain}"), "EmailSenderName": "News"}),
    )
    .await;
}

/// Words enough for the review of a notification template (50).
pub fn filler(n: usize) -> String {
    (0..n)
        .map(|i| ["order", "shipped", "today", "thanks", "store", "parcel"][i % 6])
        .collect::<Vec<_>>()
        .join(" ")
}

/// An approved template with `{{name}}` and `{{code}}`; its id.
pub async fn approved_template(sdk: &mut Sdk, who: &Creds) -> i64 {
    let html = format!(
        "<p>Hello {{{{name}}}}, your code is <b>{{{{code}}}}</b>. {}</p><a href=\"https://shop.example/o\">order</a>",
        filler(60)
    );
    let text = format!(
        "Hello {{{{name}}}}, your code is {{{{code}}}}. {}",
        filler(60)
    );
    let r = sdk
        .ok(
            who,
            "CreateEmailTemplate",
            json!({"TemplateName": "order", "TemplateContent": {"Html": B64.encode(html), "Text": B64.encode(text)}}),
        )
        .await;
    let id = r["TemplateID"].as_i64().unwrap();
    let got = sdk
        .ok(who, "GetEmailTemplate", json!({"TemplateID": id}))
        .await;
    assert_eq!(got["TemplateStatus"], 0, "{got}");
    id
}

/// The SDK, account "acme" with the verified sender domain mail.acme.test
/// (its address news@) and an approved template: what most tests start with.
pub async fn ready_to_send(e: &Env, dkim_option: i64) -> (Sdk, Creds, &'static str, i64) {
    let mut sdk = Sdk::start(e.kiln.http).await;
    let acme = create_account(e, "acme");
    let domain = "mail.acme.test";
    verified_sender(e, &mut sdk, &acme, domain, dkim_option).await;
    let template = approved_template(&mut sdk, &acme).await;
    (sdk, acme, domain, template)
}

/// A SendEmail of the approved template from news@`domain` to `to`.
pub fn send_params(domain: &str, template: i64, to: &str) -> Value {
    json!({
        "FromEmailAddress": format!("News <news@{domain}>"),
        "Destination": [to],
        "Subject": "Order for {{name}}",
        "Template": {"TemplateID": template, "TemplateData": "{\"name\":\"Ann <&>\",\"code\":\"4711\"}"},
    })
}

/// Waits until the wall clock's second changes: the SDK signs with a
/// timestamp in seconds, so the same request sent again within one is
/// the same bytes (a replay).
pub async fn next_second() {
    let now = kiln::clock::system_now_ms();
    tokio::time::sleep(Duration::from_millis((1000 - now % 1000) as u64 + 5)).await;
}

pub fn today() -> String {
    jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}

/// The status rows of one message.
pub async fn send_status(sdk: &mut Sdk, who: &Creds, id: &str) -> Vec<Value> {
    let r = sdk
        .ok(
            who,
            "GetSendEmailStatus",
            json!({"RequestDate": today(), "MessageId": id, "Offset": 0, "Limit": 100}),
        )
        .await;
    r["EmailStatusList"].as_array().cloned().unwrap_or_default()
}

pub async fn wait_deliver_status(sdk: &mut Sdk, who: &Creds, id: &str, want: i64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = send_status(sdk, who, id).await;
        if let Some(r) = rows.first()
            && r["DeliverStatus"] == want
        {
            return r.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message {id} never reached DeliverStatus {want}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The headers of a request signed by hand (TC3-HMAC-SHA256) for
/// `signed_body`, as (name, value).
pub fn signed_headers(
    http: std::net::SocketAddr,
    who: &Creds,
    action: &str,
    signed_body: &str,
    timestamp: i64,
) -> Vec<(String, String)> {
    let host = http.to_string();
    let ts = timestamp.to_string();
    let headers = [
        (
            "content-type",
            "application/json; charset=utf-8".to_string(),
        ),
        ("host", host.clone()),
    ];
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    let request = kiln::intake::api::tc3::Request {
        method: "POST",
        path: "/",
        query: "",
        header: &lookup,
        payload: signed_body.as_bytes(),
    };
    let date = jiff::Timestamp::from_second(timestamp)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let auth = kiln::intake::api::tc3::Authorization {
        secret_id: who.id.clone(),
        date: date.to_string(),
        service: "ses".into(),
        signed_headers: vec!["content-type".into(), "host".into()],
        signature: String::new(),
    };
    let signature = kiln::intake::api::tc3::sign(&auth, &ts, &who.key, &request);
    let authorization = format!(
        "TC3-HMAC-SHA256 Credential={}/{}/ses/tc3_request, SignedHeaders=content-type;host, Signature={signature}",
        who.id, auth.date
    );
    [
        (
            "content-type",
            "application/json; charset=utf-8".to_string(),
        ),
        ("host", host),
        ("x-tc-action", action.to_string()),
        ("x-tc-version", "2020-10-02".to_string()),
        ("x-tc-timestamp", ts),
        ("x-tc-region", "ap-guangzhou".to_string()),
        ("authorization", authorization),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect()
}

/// A request signed by hand (TC3-HMAC-SHA256), for what the SDK will not
/// send: old timestamps, bodies changed after signing, unknown fields.
pub async fn raw_call(
    http: std::net::SocketAddr,
    who: &Creds,
    action: &str,
    signed_body: &str,
    sent_body: &str,
    timestamp: i64,
) -> Value {
    let mut req = reqwest::Client::new().post(format!("http://{http}/"));
    for (name, value) in signed_headers(http, who, action, signed_body, timestamp) {
        if name != "host" {
            req = req.header(name, value);
        }
    }
    let resp = req.body(sent_body.to_string()).send().await.unwrap();
    resp.json::<Value>().await.unwrap()["Response"].clone()
}

/// One message submitted with Python's smtplib (STARTTLS, AUTH unless
/// `user` is "-"): the reply that decided it.
pub async fn smtplib(
    addr: SocketAddr,
    user: &str,
    password: &str,
    from: &str,
    to: &[&str],
    data: &[u8],
) -> Reply {
    use base64::Engine;
    let req = json!({
        "from": from,
        "to": to,
        "data": base64::engine::general_purpose::STANDARD.encode(data),
    });
    run_smtplib(addr, user, password, None, req).await
}

/// An smtplib login from `source` (a loopback address), and nothing more:
/// the reply to AUTH.
pub async fn smtplib_login(addr: SocketAddr, user: &str, password: &str, source: &str) -> Reply {
    run_smtplib(addr, user, password, Some(source), json!({})).await
}

pub async fn run_smtplib(
    addr: SocketAddr,
    user: &str,
    password: &str,
    source: Option<&str>,
    req: serde_json::Value,
) -> Reply {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/smtplib_send.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(addr.to_string())
        .arg(user)
        .arg(password)
        .args(source)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(req.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("smtplib finishes")
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "smtplib_send.py: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Reply {
        code: v["code"].as_u64().unwrap() as u16,
        text: v["text"].as_str().unwrap().to_string(),
    }
}
