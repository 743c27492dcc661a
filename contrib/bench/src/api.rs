//! API benchmark: SendEmail with a template through the Tencent-compatible
//! API, N signed requests (TC3-HMAC-SHA256, as the SDKs sign) over C
//! keep-alive connections, against `kiln` (release build) on the embedded
//! store with the default policy. Prints
//!
//! `kiln api_send_rps=<n> end_to_end_mps=<n> n=<N> connections=<C> dkim=<1024|2048>
//!  events=<on|off> store=<embedded|redis>`
//!
//! Usage: kiln-api-bench [--n N] [--connections C] [--store embedded|redis] [--kiln PATH]
//!                       [--dkim 1024|2048] [--events on|off]
//!
//! `--events on` adds open/click tracking and an unsubscribe link to every
//! message, VERP return paths, and a callback receiver for every event;
//! `off` (the default) turns tracking off and sets no callback URL.
//!
//! Setup (not timed): an account, a sender domain verified against the
//! benchmark's DNS server, a sender address and an approved template.

mod help;
mod peers;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kiln::intake::api::tc3;
use kiln_testkit::process::Kiln;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Args {
    n: usize,
    connections: usize,
    redis: bool,
    kiln: PathBuf,
    /// DKIMOption of the sender domain: 0 RSA-1024 (the API's default), 1 RSA-2048.
    dkim_option: i64,
    /// Tracking, unsubscribe links, VERP and a callback receiver.
    events: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        n: 20_000,
        connections: 32,
        redis: false,
        kiln: PathBuf::from("target/release/kiln"),
        dkim_option: 0,
        events: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--n" => args.n = value.parse().map_err(|_| "--n: not a number")?,
            "--connections" => {
                args.connections = value.parse().map_err(|_| "--connections: not a number")?
            }
            "--store" => args.redis = value == "redis",
            "--kiln" => args.kiln = PathBuf::from(value),
            "--events" => args.events = value == "on",
            "--dkim" => {
                args.dkim_option = match value.as_str() {
                    "1024" => 0,
                    "2048" => 1,
                    _ => return Err("--dkim: 1024 or 2048".into()),
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// Signs and sends one action; the `Response` object.
struct Api {
    http: reqwest::Client,
    host: String,
    id: String,
    key: String,
}

impl Api {
    async fn call(&self, action: &str, params: &Value) -> Result<Value, String> {
        let body = params.to_string();
        let now = kiln::clock::system_now_ms() / 1000;
        let ts = now.to_string();
        let (date, signature) = {
            let headers = [
                (
                    "content-type",
                    "application/json; charset=utf-8".to_string(),
                ),
                ("host", self.host.clone()),
            ];
            let lookup = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.clone())
            };
            // The UTC date, as TC3 wants it.
            let date = jiff::Timestamp::from_second(now)
                .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
                .unwrap_or_default();
            let auth = tc3::Authorization {
                secret_id: self.id.clone(),
                date: date.clone(),
                service: "ses".into(),
                signed_headers: vec!["content-type".into(), "host".into()],
                signature: String::new(),
            };
            let request = tc3::Request {
                method: "POST",
                path: "/",
                query: "",
                header: &lookup,
                payload: body.as_bytes(),
            };
            let signature = tc3::sign(&auth, &ts, &self.key, &request);
            (date, signature)
        };
        let authorization = format!(
            "TC3-HMAC-SHA256 Credential={}/{date}/ses/tc3_request, SignedHeaders=content-type;host, Signature={signature}",
            self.id
        );
        let resp = self
            .http
            .post(format!("http://{}/", self.host))
            .header("content-type", "application/json; charset=utf-8")
            .header("x-tc-action", action)
            .header("x-tc-version", "2020-10-02")
            .header("x-tc-timestamp", ts)
            .header("authorization", authorization)
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        let r = v["Response"].clone();
        match r.get("Error") {
            Some(e) => Err(format!("{action}: {e}")),
            None => Ok(r),
        }
    }
}

#[tokio::main]
async fn main() {
    help::or_exit(include_str!("api.rs"));
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kiln-api-bench: {e}");
            std::process::exit(2);
        }
    };
    let peers = peers::Peers::start(if args.redis { "redis" } else { "embedded" }).await;
    let (dns, sink) = (&peers.dns, &peers.sink);
    let mut opts = peers.options();
    // With events on: open/click tracking and unsubscribe links in every
    // message, VERP return paths, and every event POSTed to a receiver.
    let receiver = if args.events {
        opts.extra = "[platform]\nbounce_domain = \"bounces.bench.test\"\n\
                      [tracking]\nbase_url = \"http://{http}\"\n"
            .into();
        Some(kiln_testkit::webhook::Webhook::start().await)
    } else {
        opts.extra = "[tracking]\nenabled = false\n".into();
        None
    };
    let kiln = tokio::task::block_in_place(|| Kiln::start(&args.kiln, &opts));

    let out = kiln.command(&["account", "create", "bench"]);
    if let Some(r) = &receiver {
        let set = kiln.command(&["account", "callback", "bench", &r.url("/events")]);
        assert!(set.status.success(), "callback URL not set");
    }
    let creds: Value = serde_json::from_slice(&out.stdout).expect("account credentials");
    let api = Arc::new(Api {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections)
            .build()
            .expect("client"),
        host: kiln.http.to_string(),
        id: creds["SecretId"].as_str().expect("SecretId").into(),
        key: creds["SecretKey"].as_str().expect("SecretKey").into(),
    });
    let dkim_option = args.dkim_option;
    let setup = async {
        let domain = "mail.bench.test";
        let r = api
            .call(
                "CreateEmailIdentity",
                &json!({"EmailIdentity": domain, "DKIMOption": dkim_option}),
            )
            .await?;
        for a in r["Attributes"].as_array().into_iter().flatten() {
            let (name, value) = (
                a["SendDomain"].as_str().unwrap_or(""),
                a["ExpectedValue"].as_str().unwrap_or(""),
            );
            if a["Type"] == "MX" {
                dns.add_mx(name, 10, value);
            } else {
                dns.add_txt(name, value);
            }
        }
        let r = api
            .call("GetEmailIdentity", &json!({"EmailIdentity": domain}))
            .await?;
        if r["VerifiedForSendingStatus"] != true {
            return Err(format!("domain not verified: {r}"));
        }
        api.call(
            "CreateEmailAddress",
            &json!({"EmailAddress": format!("news@{domain}")}),
        )
        .await?;
        let words = "your order has shipped and will arrive soon thank you ".repeat(10);
        let r = api
            .call(
                "CreateEmailTemplate",
                &json!({"TemplateName": "bench", "TemplateContent": {
                    "Html": B64.encode(format!("<p>Hello {{{{name}}}}, {words}</p>")),
                    "Text": B64.encode(format!("Hello {{{{name}}}}, {words}")),
                }}),
            )
            .await?;
        r["TemplateID"]
            .as_i64()
            .ok_or_else(|| format!("no TemplateID: {r}"))
    };
    let template = match setup.await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kiln-api-bench: setup failed: {e}");
            std::process::exit(1);
        }
    };

    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let events = args.events;
    for _ in 0..args.connections {
        let (api, next, failed, n) = (api.clone(), next.clone(), failed.clone(), args.n);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let mut params = json!({
                    "FromEmailAddress": "Bench <news@mail.bench.test>",
                    "Destination": [format!("r{}@sink.test", i % 5000)],
                    "Subject": "Order for {{name}}",
                    "Template": {"TemplateID": template, "TemplateData": format!("{{\"name\":\"R{i}\"}}")},
                });
                if events {
                    params["Unsubscribe"] = json!("2");
                }
                if let Err(e) = api.call("SendEmail", &params).await
                    && failed.fetch_add(1, Ordering::Relaxed) < 3
                {
                    eprintln!("kiln-api-bench: {e}");
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    let ok = args.n - failed;
    // End to end: every accepted message at the sink; then, with events
    // on, every delivered event at the receiver.
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    while Instant::now() < deadline && sink.count() < ok {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let total = start.elapsed().as_secs_f64();
    while Instant::now() < deadline && receiver.as_ref().is_some_and(|r| r.hooks().len() < ok) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let callbacks = receiver.as_ref().map(|r| r.hooks().len()).unwrap_or(0);
    eprintln!(
        "{ok} SendEmail requests answered with a MessageId in {secs:.2}s ({failed} failed); \
         all delivered after {total:.2}s; {callbacks} callbacks received after {:.2}s",
        start.elapsed().as_secs_f64()
    );
    println!(
        "kiln api_send_rps={:.0} end_to_end_mps={:.0} n={} connections={} dkim={} events={} store={}",
        ok as f64 / secs,
        ok as f64 / total,
        ok,
        args.connections,
        if args.dkim_option == 0 { 1024 } else { 2048 },
        if args.events { "on" } else { "off" },
        if args.redis { "redis" } else { "embedded" }
    );
    drop(kiln);
    if failed > 0 {
        std::process::exit(1);
    }
}
