//! The Tencent-compatible API, driven by the official Python SDK
//! (tencentcloud-sdk-python-ses, installed by .ci/run) through its typed
//! request and response models, against a running Kiln with a test DNS
//! server and a sink MX.

use crate::harness::{BOTH, Backend, Env, env};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
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
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/sdk_client.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg(http.to_string())
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
    for a in attributes.as_array().unwrap() {
        let name = a["SendDomain"].as_str().unwrap();
        let value = a["ExpectedValue"].as_str().unwrap();
        match a["Type"].as_str().unwrap() {
            "MX" => e.dns.add_mx(name, 10, value),
            "TXT" => e.dns.add_txt(name, value),
            other => panic!("unexpected record type {other}"),
        }
    }
}

/// A verified sender domain with one sender address `news@<domain>`.
pub async fn verified_sender(e: &Env, sdk: &mut Sdk, who: &Creds, domain: &str, dkim_option: i64) {
    let created = sdk
        .ok(
            who,
            "CreateEmailIdentity",
            json!({"EmailIdentity": domain, "DKIMOption": dkim_option}),
        )
        .await;
    publish(e, &created["Attributes"]);
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
fn filler(n: usize) -> String {
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
    let now = kiln::net::system_now_ms();
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

async fn wait_deliver_status(sdk: &mut Sdk, who: &Creds, id: &str, want: i64) -> Value {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_flow_from_domain_to_delivery_and_the_blocklist() {
    for backend in BOTH {
        let e = env(backend, |_| {}).await;
        let mut sdk = Sdk::start(e.kiln.http).await;
        let acme = create_account(&e, "acme");
        let domain = "mail.acme.test";

        // A new domain is not verified: its records are not in DNS yet.
        let created = sdk
            .ok(
                &acme,
                "CreateEmailIdentity",
                json!({"EmailIdentity": domain, "DKIMOption": 1}),
            )
            .await;
        assert_eq!(created["IdentityType"], "DOMAIN");
        assert_eq!(created["VerifiedForSendingStatus"], false);
        let attrs = created["Attributes"].as_array().unwrap();
        let kinds: Vec<&str> = attrs.iter().map(|a| a["Type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["MX", "TXT", "TXT", "TXT"], "{created}");
        assert!(
            attrs[1]["ExpectedValue"]
                .as_str()
                .unwrap()
                .starts_with("v=spf1 include:")
        );
        assert!(
            attrs[2]["ExpectedValue"]
                .as_str()
                .unwrap()
                .starts_with("v=DKIM1; k=rsa; p=")
        );
        assert_eq!(attrs[3]["SendDomain"], format!("_dmarc.{domain}"));
        let (code, _) = sdk
            .err(
                &acme,
                "CreateEmailAddress",
                json!({"EmailAddress": format!("news@{domain}")}),
            )
            .await;
        assert_eq!(code, "OperationDenied.DomainNotVerified");
        // Three of four records: still not verified, and the missing one says so.
        for a in &attrs[..3] {
            publish(&e, &json!([a]));
        }
        let got = sdk
            .ok(&acme, "GetEmailIdentity", json!({"EmailIdentity": domain}))
            .await;
        assert_eq!(got["VerifiedForSendingStatus"], false, "{got}");
        let status: Vec<bool> = got["Attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["Status"].as_bool().unwrap())
            .collect();
        assert_eq!(status, [true, true, true, false], "{got}");
        assert_eq!(
            got["Attributes"][2]["CurrentValue"],
            attrs[2]["ExpectedValue"]
        );
        publish(&e, &json!([attrs[3]]));
        let got = sdk
            .ok(&acme, "GetEmailIdentity", json!({"EmailIdentity": domain}))
            .await;
        assert_eq!(got["VerifiedForSendingStatus"], true, "{got}");
        let listed = sdk.ok(&acme, "ListEmailIdentities", json!({})).await;
        assert_eq!(listed["Total"], 1);
        assert_eq!(listed["EmailIdentities"][0]["IdentityName"], domain);
        assert_eq!(listed["EmailIdentities"][0]["SendingEnabled"], true);
        assert!(
            listed["EmailIdentities"][0]["DailyQuota"].as_i64().unwrap() > 0,
            "{listed}"
        );

        sdk.ok(
            &acme,
            "CreateEmailAddress",
            json!({"EmailAddress": format!("news@{domain}"), "EmailSenderName": "Acme News"}),
        )
        .await;
        let senders = sdk.ok(&acme, "ListEmailAddress", json!({})).await;
        assert_eq!(
            senders["EmailSenders"][0]["EmailAddress"],
            format!("news@{domain}")
        );
        let template = approved_template(&mut sdk, &acme).await;

        // Send: rendered, DKIM-signed, delivered.
        let sent = sdk
            .ok(
                &acme,
                "SendEmail",
                send_params(domain, template, "ann@dest.test"),
            )
            .await;
        let id = sent["MessageId"].as_str().unwrap().to_string();
        assert!(
            e.sink.wait_count(1, Duration::from_secs(20)).await,
            "nothing delivered"
        );
        let got = e.sink.messages().remove(0);
        assert_eq!(got.rcpt_to, ["ann@dest.test"]);
        let text = String::from_utf8_lossy(&got.data).to_string();
        assert!(text.contains("Subject: Order for Ann <&>"), "{text}");
        assert!(
            text.contains("Ann &lt;&amp;&gt;"),
            "HTML values are escaped: {text}"
        );
        assert!(text.contains("your code is 4711"), "{text}");
        assert!(
            text.contains("From: \"News\" <news@mail.acme.test>"),
            "the request's name: {text}"
        );
        let results = crate::delivery::verify_dkim(e.dns.addr, &got.data).await;
        assert!(
            !results.is_empty() && results.iter().all(|r| *r == mail_auth::DkimResult::Pass),
            "DKIM: {results:?}"
        );
        let row = wait_deliver_status(&mut sdk, &acme, &id, 1).await;
        assert_eq!(row["SendStatus"], 0);
        assert_eq!(row["ToEmailAddress"], "ann@dest.test");
        assert_eq!(row["FromEmailAddress"], format!("news@{domain}"));
        assert!(row["DeliverTime"].as_i64().unwrap() >= row["RequestTime"].as_i64().unwrap());

        // A hard bounce blocklists the recipient; the next send to it fails.
        e.sink.set_rule("gone@dest.test", "550 5.1.1 No such user");
        let sent = sdk
            .ok(
                &acme,
                "SendEmail",
                send_params(domain, template, "gone@dest.test"),
            )
            .await;
        let id = sent["MessageId"].as_str().unwrap().to_string();
        let row = wait_deliver_status(&mut sdk, &acme, &id, 3).await;
        assert!(
            row["DeliverMessage"].as_str().unwrap().contains("5.1.1"),
            "{row}"
        );
        let black = sdk
            .ok(
                &acme,
                "ListBlackEmailAddress",
                json!({"StartDate": today(), "EndDate": today(), "Offset": 0, "Limit": 10}),
            )
            .await;
        assert_eq!(black["TotalCount"], 1, "{black}");
        assert_eq!(black["BlackList"][0]["EmailAddress"], "gone@dest.test");
        assert!(
            black["BlackList"][0]["IspDesc"]
                .as_str()
                .unwrap()
                .contains("5.1.1")
        );
        // Another message to the same recipient (the same one again within
        // its second would be refused as a replay).
        let mut again = send_params(domain, template, "gone@dest.test");
        again["Subject"] = json!("Again for {{name}}");
        let (code, message) = sdk.err(&acme, "SendEmail", again).await;
        assert_eq!(code, "FailedOperation.EmailAddrInBlacklist", "{message}");
        // Mixed: the blocklisted recipient is dropped, the other one sent.
        let mut mixed = send_params(domain, template, "gone@dest.test");
        mixed["Destination"] = json!(["gone@dest.test", "bob@dest.test"]);
        let sent = sdk.ok(&acme, "SendEmail", mixed).await;
        let rows = send_status(&mut sdk, &acme, sent["MessageId"].as_str().unwrap()).await;
        let gone = rows
            .iter()
            .find(|r| r["ToEmailAddress"] == "gone@dest.test")
            .unwrap();
        assert_eq!(
            (gone["SendStatus"].as_i64(), gone["DeliverStatus"].as_i64()),
            (Some(1007), Some(2)),
            "{rows:?}"
        );
        sdk.ok(
            &acme,
            "DeleteBlackList",
            json!({"EmailAddressList": ["gone@dest.test"]}),
        )
        .await;
        let black = sdk
            .ok(
                &acme,
                "ListBlackEmailAddress",
                json!({"StartDate": today(), "EndDate": today(), "Offset": 0, "Limit": 10}),
            )
            .await;
        assert_eq!(black["TotalCount"], 0, "{black}");
        e.sink.clear_rule("gone@dest.test");
        let mut back = send_params(domain, template, "gone@dest.test");
        back["Subject"] = json!("Welcome back {{name}}");
        let sent = sdk.ok(&acme, "SendEmail", back).await;
        wait_deliver_status(&mut sdk, &acme, sent["MessageId"].as_str().unwrap(), 1).await;

        // Statistics: five recipients asked for (the refused send is not a
        // request), one dropped, three delivered (bob with the mixed send),
        // one bounced; by provider too.
        let report = |provider: &str| json!({"StartDate": today(), "EndDate": today(), "Domain": domain, "ReceivingMailboxType": provider});
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = sdk
                .ok(&acme, "GetStatisticsReport", report("dest.test"))
                .await;
            let v = &r["OverallVolume"];
            let got = [
                "RequestCount",
                "AcceptedCount",
                "DeliveredCount",
                "BounceCount",
            ]
            .map(|f| v[f].as_i64().unwrap());
            if got == [5, 4, 3, 1] {
                assert_eq!(r["DailyVolumes"][0]["SendDate"], today());
                assert_eq!(r["DailyVolumes"][0]["DeliveredCount"], 3);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend:?} statistics: {r}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let abuse = sdk
            .ok(
                &acme,
                "GetAbuseReport",
                json!({"StartTime": today(), "EndTime": today()}),
            )
            .await;
        assert_eq!(abuse["TotalCount"], 0, "no complaints yet: {abuse}");
        let (code, _) = sdk
            .err(
                &acme,
                "GetAbuseReport",
                json!({"StartTime": "yesterday", "EndTime": today()}),
            )
            .await;
        assert_eq!(code, "InvalidParameter.InvalidStartTimeFormat");
        let r = sdk
            .ok(&acme, "GetStatisticsReport", report("gmail.com"))
            .await;
        assert_eq!(r["OverallVolume"]["RequestCount"], 0, "{r}");
        let (code, _) = sdk
            .err(
                &acme,
                "GetStatisticsReport",
                json!({"StartDate": "2026-13-01", "EndDate": today()}),
            )
            .await;
        assert_eq!(code, "InvalidParameter.InvalidStartTimeFormat");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_email_refuses_bad_requests_with_the_field_named() {
    let e = env(Backend::Embedded, |_| {}).await;
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 2).await;
    let base = send_params(domain, template, "ann@dest.test");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = base.clone();
        f(&mut p);
        p
    };
    let many: Vec<String> = (0..51).map(|i| format!("r{i}@dest.test")).collect();
    let attachment = json!({"FileName": "a.txt", "Content": B64.encode("hi")});
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            with(&|p| {
                p.as_object_mut().unwrap().remove("FromEmailAddress");
            }),
            "MissingParameter",
            "FromEmailAddress",
        ),
        (
            with(&|p| p["FromEmailAddress"] = json!("not an address")),
            "InvalidParameterValue.IllegalEmailAddress",
            "FromEmailAddress",
        ),
        (
            with(&|p| p["FromEmailAddress"] = json!("other@mail.acme.test")),
            "InvalidParameterValue.NoSuchSender",
            "other@mail.acme.test",
        ),
        (
            with(&|p| p["FromEmailAddress"] = json!("news@elsewhere.test")),
            "FailedOperation.NotAuthenticatedSender",
            "elsewhere.test",
        ),
        (
            with(&|p| p["Destination"] = json!(["bad@"])),
            "InvalidParameterValue.IllegalEmailAddress",
            "Destination",
        ),
        (
            with(&|p| p["Destination"] = json!(many)),
            "FailedOperation.TooManyRecipients",
            "Destination",
        ),
        (
            with(&|p| {
                p.as_object_mut().unwrap().remove("Destination");
            }),
            "MissingParameter.EmailsNecessary",
            "Destination",
        ),
        (
            with(&|p| p["Template"]["TemplateData"] = json!("{not json")),
            "InvalidParameterValue.TemplateDataError",
            "TemplateData",
        ),
        (
            with(&|p| p["Template"]["TemplateData"] = json!("{\"name\":\"x\"}")),
            "InvalidParameterValue.TemplateNotMatchData",
            "code",
        ),
        (
            with(&|p| {
                p["Template"]["TemplateData"] =
                    json!(format!("{{\"name\":\"{}\"}}", "x".repeat(70_000)))
            }),
            "InvalidParameterValue.TemplateDataLenLimit",
            "TemplateData",
        ),
        (
            with(&|p| p["Template"]["TemplateID"] = json!(12345)),
            "InvalidParameterValue.TemplateNotExist",
            "12345",
        ),
        (
            with(&|p| {
                p.as_object_mut().unwrap().remove("Template");
            }),
            "MissingParameter.SendParamNecessary",
            "Template",
        ),
        (
            with(&|p| {
                p.as_object_mut().unwrap().remove("Template");
                p["Simple"] = json!({"Html": B64.encode("<p>x</p>")});
            }),
            "FailedOperation.WithOutPermission",
            "Template",
        ),
        (
            with(&|p| p["Attachments"] = json!(vec![attachment.clone(); 11])),
            "FailedOperation.TooManyAttachments",
            "10",
        ),
        (
            with(&|p| p["Attachments"] = json!([{"FileName": "a.txt", "Content": "%%%"}])),
            "InvalidParameterValue.AttachContentIsWrong",
            "Attachments.0.Content",
        ),
        (
            with(&|p| {
                p["Attachments"] = json!([{"FileName": "../a.txt", "Content": B64.encode("x")}])
            }),
            "FailedOperation.InvalidAttachName",
            "Attachments.0.FileName",
        ),
        (
            with(&|p| p["SmtpHeaders"] = json!("{\"From\":\"ceo@bank.test\"}")),
            "InvalidParameterValue",
            "From",
        ),
        (
            with(&|p| p["SmtpHeaders"] = json!("{\"X-Tag\":\"a\\r\\nBcc: x@y.z\"}")),
            "InvalidParameterValue",
            "X-Tag",
        ),
        (
            with(&|p| p["TriggerType"] = json!(7)),
            "InvalidParameterValue",
            "TriggerType",
        ),
        (
            with(&|p| p["HeaderFrom"] = json!("ceo@bank.test")),
            "FailedOperation.NotAuthenticatedSender",
            "HeaderFrom",
        ),
    ];
    for (params, code, mention) in cases {
        let (got, message) = sdk.err(&acme, "SendEmail", params.clone()).await;
        assert_eq!(got, code, "{params}: {message}");
        assert!(
            message.contains(mention),
            "{code}: {message:?} should name {mention}"
        );
    }
    assert_eq!(e.sink.count(), 0);

    // A template the review rejects cannot send; the reasons are listed.
    let r = sdk
        .ok(&acme, "CreateEmailTemplate", json!({"TemplateName": "short", "TemplateContent": {"Text": B64.encode("Buy {{x}} now")}}))
        .await;
    let short = r["TemplateID"].as_i64().unwrap();
    let listed = sdk
        .ok(
            &acme,
            "ListEmailTemplates",
            json!({"Offset": 0, "Limit": 10}),
        )
        .await;
    let meta = listed["TemplatesMetadata"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["TemplateID"] == short)
        .unwrap()
        .clone();
    assert_eq!(meta["TemplateStatus"], 2, "{meta}");
    assert!(
        meta["ReviewReason"]
            .as_str()
            .unwrap()
            .contains("too few words"),
        "{meta}"
    );
    let (code, _) = sdk
        .err(
            &acme,
            "SendEmail",
            with(&|p| p["Template"]["TemplateID"] = json!(short)),
        )
        .await;
    assert_eq!(code, "OperationDenied.TemplateStatusError");

    // The account's own blocklist drops its addresses.
    let r = sdk
        .ok(
            &acme,
            "CreateCustomBlacklist",
            json!({"Emails": ["Blocked@dest.test", "blocked@dest.test", "nope"]}),
        )
        .await;
    assert_eq!(
        (
            r["TotalCount"].as_i64(),
            r["ValidCount"].as_i64(),
            r["RepeatCount"].as_i64(),
            r["InvalidCount"].as_i64()
        ),
        (Some(3), Some(1), Some(1), Some(1)),
        "{r}"
    );
    let (code, _) = sdk
        .err(
            &acme,
            "SendEmail",
            send_params(domain, template, "blocked@dest.test"),
        )
        .await;
    assert_eq!(code, "FailedOperation.EmailAddrInBlacklist");
    let listed = sdk
        .ok(
            &acme,
            "ListCustomBlacklist",
            json!({"Offset": 0, "Limit": 10, "Status": 1}),
        )
        .await;
    assert_eq!(listed["TotalCount"], 1, "{listed}");
    let entry = listed["Data"][0].clone();
    // Expired yesterday: no longer applies.
    let yesterday = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .yesterday()
        .unwrap()
        .to_string();
    sdk.ok(
        &acme,
        "UpdateCustomBlackList",
        json!({"Id": entry["Id"], "Email": "blocked@dest.test", "ExpireDate": yesterday}),
    )
    .await;
    let listed = sdk
        .ok(
            &acme,
            "ListCustomBlacklist",
            json!({"Offset": 0, "Limit": 10, "Status": 0}),
        )
        .await;
    assert_eq!(listed["TotalCount"], 1, "{listed}");
    sdk.ok(
        &acme,
        "SendEmail",
        send_params(domain, template, "blocked@dest.test"),
    )
    .await;
    sdk.ok(
        &acme,
        "DeleteCustomBlackList",
        json!({"Emails": ["blocked@dest.test"]}),
    )
    .await;
    let listed = sdk
        .ok(
            &acme,
            "ListCustomBlacklist",
            json!({"Offset": 0, "Limit": 10}),
        )
        .await;
    assert_eq!(listed["TotalCount"], 0, "{listed}");

    // Attachments, Cc, Bcc, Reply-To and custom headers reach the recipient.
    let mut full = send_params(domain, template, "ann@dest.test");
    full["Cc"] = json!(["cc@dest.test"]);
    full["Bcc"] = json!(["hidden@dest.test"]);
    full["ReplyToAddresses"] = json!("help@acme.test");
    full["SmtpHeaders"] = json!("{\"X-Campaign\":\"autumn\"}");
    full["Attachments"] =
        json!([{"FileName": "invoice.pdf", "Content": B64.encode(b"%PDF-1.4 test")}]);
    sdk.ok(&acme, "SendEmail", full).await;
    assert!(
        e.sink.wait_count(4, Duration::from_secs(20)).await,
        "{}",
        e.sink.count()
    );
    let msgs = e.sink.messages();
    let last = msgs
        .iter()
        .find(|m| m.rcpt_to.contains(&"hidden@dest.test".to_string()))
        .expect("bcc delivered");
    let text = String::from_utf8_lossy(&last.data).to_string();
    assert!(
        text.contains("Cc: <cc@dest.test>") || text.contains("Cc: cc@dest.test"),
        "{text}"
    );
    assert!(
        !text.contains("hidden@dest.test"),
        "Bcc must not show: {text}"
    );
    assert!(
        text.contains("Reply-To:") && text.contains("help@acme.test"),
        "{text}"
    );
    assert!(text.contains("X-Campaign: autumn"), "{text}");
    assert!(text.contains("invoice.pdf"), "{text}");
    // DKIMOption 2: signed twice, RSA-2048 and RSA-1024, both valid.
    let results = crate::delivery::verify_dkim(e.dns.addr, &last.data).await;
    assert_eq!(
        results,
        [mail_auth::DkimResult::Pass, mail_auth::DkimResult::Pass],
        "{text}"
    );
}

/// A request signed by hand (TC3-HMAC-SHA256), for what the SDK will not
/// send: old timestamps, bodies changed after signing, unknown fields.
async fn raw_call(
    http: std::net::SocketAddr,
    who: &Creds,
    action: &str,
    signed_body: &str,
    sent_body: &str,
    timestamp: i64,
) -> Value {
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
    let resp = reqwest::Client::new()
        .post(format!("http://{host}/"))
        .header("content-type", "application/json; charset=utf-8")
        .header("x-tc-action", action)
        .header("x-tc-version", "2020-10-02")
        .header("x-tc-timestamp", ts)
        .header("x-tc-region", "ap-guangzhou")
        .header("authorization", authorization)
        .body(sent_body.to_string())
        .send()
        .await
        .unwrap();
    resp.json::<Value>().await.unwrap()["Response"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_must_be_signed_by_an_enabled_account() {
    let e = env(Backend::Embedded, |_| {}).await;
    let mut sdk = Sdk::start(e.kiln.http).await;
    // The account from the config file, and one created on the running daemon.
    let shop = Creds {
        id: "AKIDshop".into(),
        key: "shop-secret-key".into(),
    };
    let listed = sdk.ok(&shop, "ListEmailIdentities", json!({})).await;
    assert_eq!(listed["Total"], 0);
    assert!(
        listed["RequestId"].as_str().is_some_and(|r| r.len() == 36),
        "{listed}"
    );
    let acme = create_account(&e, "acme");
    assert!(acme.id.starts_with("AKID") && acme.key.len() >= 32);
    sdk.ok(&acme, "ListEmailIdentities", json!({})).await;
    let out = e.kiln.command(&["account", "create", "acme"]);
    assert!(!out.status.success(), "a name is taken once");

    let wrong = Creds {
        id: acme.id.clone(),
        key: "wrong".into(),
    };
    assert_eq!(
        sdk.err(&wrong, "ListEmailIdentities", json!({})).await.0,
        "AuthFailure.SignatureFailure"
    );
    let nobody = Creds {
        id: "AKIDnobody".into(),
        key: acme.key.clone(),
    };
    assert_eq!(
        sdk.err(&nobody, "ListEmailIdentities", json!({})).await.0,
        "AuthFailure.SecretIdNotFound"
    );
    assert_eq!(
        sdk.err(&acme, "NoSuchAction", json!({})).await.0,
        "InvalidAction"
    );

    // Signed by hand: right, then expired, tampered, and with an unknown field.
    let now = kiln::net::now_ms() / 1000;
    let body = r#"{"Limit":10,"Offset":0}"#;
    let r = raw_call(e.kiln.http, &acme, "ListEmailTemplates", body, body, now).await;
    assert_eq!(r["TotalCount"], 0, "{r}");
    let r = raw_call(
        e.kiln.http,
        &acme,
        "ListEmailTemplates",
        body,
        body,
        now - 600,
    )
    .await;
    assert_eq!(r["Error"]["Code"], "AuthFailure.SignatureExpire", "{r}");
    let r = raw_call(
        e.kiln.http,
        &acme,
        "ListEmailTemplates",
        body,
        r#"{"Limit":99,"Offset":0}"#,
        now,
    )
    .await;
    assert_eq!(r["Error"]["Code"], "AuthFailure.SignatureFailure", "{r}");
    let odd = r#"{"Limit":10,"Colour":"red"}"#;
    let r = raw_call(e.kiln.http, &acme, "ListEmailTemplates", odd, odd, now).await;
    assert_eq!(r["Error"]["Code"], "UnknownParameter", "{r}");
    assert!(
        r["Error"]["Message"].as_str().unwrap().contains("Colour"),
        "{r}"
    );
    let bad = r#"{"Limit":"ten"}"#;
    let r = raw_call(e.kiln.http, &acme, "ListEmailTemplates", bad, bad, now).await;
    assert_eq!(r["Error"]["Code"], "InvalidParameter", "{r}");
    assert!(
        r["Error"]["Message"].as_str().unwrap().contains("Limit"),
        "{r}"
    );

    // Rotating the key retires the old pair; disabling refuses the account.
    let out = e.kiln.command(&["account", "rotate-key", "acme"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rotated = Creds {
        id: v["SecretId"].as_str().unwrap().into(),
        key: v["SecretKey"].as_str().unwrap().into(),
    };
    assert_ne!(rotated.id, acme.id);
    assert_eq!(
        sdk.err(&acme, "ListEmailIdentities", json!({})).await.0,
        "AuthFailure.SecretIdNotFound"
    );
    sdk.ok(&rotated, "ListEmailIdentities", json!({})).await;
    assert!(
        e.kiln
            .command(&["account", "disable", "acme"])
            .status
            .success()
    );
    assert_eq!(
        sdk.err(&rotated, "ListEmailIdentities", json!({})).await.0,
        "AuthFailure.UnauthorizedOperation"
    );
    assert!(
        e.kiln
            .command(&["account", "enable", "acme"])
            .status
            .success()
    );
    sdk.ok(&rotated, "ListEmailIdentities", json!({})).await;
    let out = e.kiln.command(&["account", "list"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["Account"], "acme");
    assert!(
        list[0].get("SecretKey").is_none(),
        "list never shows keys: {list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_address_submits_over_smtp_with_its_api_password() {
    let e = env(Backend::Embedded, |_| {}).await;
    let mut sdk = Sdk::start(e.kiln.http).await;
    let acme = create_account(&e, "acme");
    let domain = "mail.acme.test";
    verified_sender(&e, &mut sdk, &acme, domain, 0).await;
    let address = format!("news@{domain}");
    let (code, _) = sdk
        .err(
            &acme,
            "UpdateEmailSmtpPassWord",
            json!({"EmailAddress": address, "Password": "short"}),
        )
        .await;
    assert_eq!(code, "InvalidParameterValue.InvalidSmtpPassWord");
    sdk.ok(
        &acme,
        "UpdateEmailSmtpPassWord",
        json!({"EmailAddress": address, "Password": "Secret12345"}),
    )
    .await;
    // The same request again within the second would be the same signed
    // bytes, refused as a replay: this one is the user's second try.
    next_second().await;
    let (code, _) = sdk
        .err(
            &acme,
            "UpdateEmailSmtpPassWord",
            json!({"EmailAddress": address, "Password": "Secret12345"}),
        )
        .await;
    assert_eq!(code, "OperationDenied.RepeatPassWord");
    let listed = sdk.ok(&acme, "ListEmailAddress", json!({})).await;
    assert_eq!(listed["EmailSenders"][0]["SmtpPwdType"], 1, "{listed}");

    let mut c = kiln_testkit::client::SmtpClient::connect(e.kiln.smtp)
        .await
        .unwrap();
    c.cmd("EHLO client.test").await.unwrap();
    c.starttls().await.unwrap();
    c.cmd("EHLO client.test").await.unwrap();
    assert_eq!(
        c.auth_plain(&address, "Wrong12345x").await.unwrap().code,
        535
    );
    let mut c = kiln_testkit::client::SmtpClient::connect(e.kiln.smtp)
        .await
        .unwrap();
    c.cmd("EHLO client.test").await.unwrap();
    c.starttls().await.unwrap();
    c.cmd("EHLO client.test").await.unwrap();
    assert_eq!(
        c.auth_plain(&address, "Secret12345").await.unwrap().code,
        235
    );
    // Only the account's verified domains may send.
    let r = c.cmd("MAIL FROM:<ceo@bank.test>").await.unwrap();
    assert_eq!(r.code, 553, "{r:?}");
    c.cmd("RSET").await.unwrap();
    let body = kiln_testkit::client::message(&address, "ann@dest.test", "over smtp", 200);
    let r = c.send(&address, &["ann@dest.test"], &body).await.unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    assert!(e.sink.wait_count(1, Duration::from_secs(20)).await);
    let got = e.sink.messages().remove(0);
    let results = crate::delivery::verify_dkim(e.dns.addr, &got.data).await;
    assert_eq!(
        results,
        [mail_auth::DkimResult::Pass],
        "signed with the domain's key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_cannot_see_or_touch_another_accounts_resources() {
    let e = env(Backend::Embedded, |_| {}).await;
    let mut sdk = Sdk::start(e.kiln.http).await;
    let a = create_account(&e, "alpha");
    let b = create_account(&e, "beta");
    let (da, db) = ("mail.alpha.test", "mail.beta.test");
    verified_sender(&e, &mut sdk, &a, da, 1).await;
    verified_sender(&e, &mut sdk, &b, db, 0).await;
    let ta = approved_template(&mut sdk, &a).await;
    let addr_a = format!("news@{da}");
    sdk.ok(
        &a,
        "CreateCustomBlacklist",
        json!({"Emails": ["x@dest.test"]}),
    )
    .await;
    sdk.ok(
        &a,
        "CreateAddressUnsubscribeConfig",
        json!({"Address": addr_a, "UnsubscribeConfig": "2", "Status": 1}),
    )
    .await;
    let sent = sdk
        .ok(&a, "SendEmail", send_params(da, ta, "ann@dest.test"))
        .await;
    let msg_a = sent["MessageId"].as_str().unwrap().to_string();
    let list_a = sdk
        .ok(&a, "CreateReceiver", json!({"ReceiversName": "alpha list"}))
        .await["ReceiverId"]
        .clone();
    sdk.ok(
        &a,
        "CreateReceiverDetail",
        json!({"ReceiverId": list_a, "Emails": ["l1@dest.test"]}),
    )
    .await;
    let task_data = r#"{"name":"x","code":"y"}"#;
    sdk.ok(&a, "BatchSendEmail", json!({"FromEmailAddress": addr_a, "ReceiverId": list_a, "Subject": "s", "TaskType": 1, "Template": {"TemplateID": ta, "TemplateData": task_data}}))
        .await;
    e.sink.set_rule("gone@dest.test", "550 5.1.1 No such user");
    let sent = sdk
        .ok(&a, "SendEmail", send_params(da, ta, "gone@dest.test"))
        .await;
    wait_deliver_status(&mut sdk, &a, sent["MessageId"].as_str().unwrap(), 3).await;

    // Domains.
    let denied = [
        (
            "GetEmailIdentity",
            json!({"EmailIdentity": da}),
            "InvalidParameterValue.NotExistDomain",
        ),
        (
            "UpdateEmailIdentity",
            json!({"EmailIdentity": da}),
            "InvalidParameterValue.NotExistDomain",
        ),
        (
            "DeleteEmailIdentity",
            json!({"EmailIdentity": da}),
            "InvalidParameterValue.NotExistDomain",
        ),
        (
            "CreateEmailIdentity",
            json!({"EmailIdentity": da}),
            "InvalidParameterValue.CreatedByOther",
        ),
        // Addresses.
        (
            "CreateEmailAddress",
            json!({"EmailAddress": format!("x@{da}")}),
            "InvalidParameterValue.NotExistDomain",
        ),
        (
            "DeleteEmailAddress",
            json!({"EmailAddress": addr_a}),
            "InvalidParameterValue.NoSuchSender",
        ),
        (
            "UpdateEmailSmtpPassWord",
            json!({"EmailAddress": addr_a, "Password": "Secret12345"}),
            "InvalidParameterValue.NoSuchSender",
        ),
        // Templates.
        (
            "GetEmailTemplate",
            json!({"TemplateID": ta}),
            "InvalidParameterValue.TemplateNotExist",
        ),
        (
            "UpdateEmailTemplate",
            json!({"TemplateID": ta, "TemplateName": "x", "TemplateContent": {"Text": B64.encode("x")}}),
            "InvalidParameterValue.TemplateNotExist",
        ),
        (
            "DeleteEmailTemplate",
            json!({"TemplateID": ta}),
            "InvalidParameterValue.TemplateNotExist",
        ),
        // Sending with the other's address or template.
        (
            "SendEmail",
            send_params(da, ta, "ann@dest.test"),
            "FailedOperation.NotAuthenticatedSender",
        ),
        (
            "SendEmail",
            send_params(db, ta, "ann@dest.test"),
            "InvalidParameterValue.TemplateNotExist",
        ),
        // Unsubscribe settings.
        (
            "CreateAddressUnsubscribeConfig",
            json!({"Address": addr_a, "UnsubscribeConfig": "1"}),
            "InvalidParameterValue.NoSuchSender",
        ),
        (
            "UpdateAddressUnsubscribeConfig",
            json!({"Address": addr_a, "UnsubscribeConfig": "1"}),
            "InvalidParameterValue.NoSuchSender",
        ),
        // Recipient lists and tasks.
        (
            "ListReceiverDetails",
            json!({"ReceiverId": list_a, "Offset": 0, "Limit": 10}),
            "OperationDenied.ReceiverNotExist",
        ),
        (
            "CreateReceiverDetail",
            json!({"ReceiverId": list_a, "Emails": ["x@dest.test"]}),
            "OperationDenied.ReceiverNotExist",
        ),
        (
            "DeleteReceiver",
            json!({"ReceiverId": list_a}),
            "OperationDenied.ReceiverNotExist",
        ),
        (
            "BatchSendEmail",
            json!({"FromEmailAddress": format!("news@{db}"), "ReceiverId": list_a, "Subject": "s", "TaskType": 1, "Template": {"TemplateID": ta}}),
            "OperationDenied.ReceiverNotExist",
        ),
        (
            "DeleteAddressUnsubscribeConfig",
            json!({"Address": addr_a}),
            "ResourceNotFound",
        ),
    ];
    for (action, params, code) in denied {
        let (got, message) = sdk.err(&b, action, params.clone()).await;
        assert_eq!(got, code, "{action} {params}: {message}");
    }
    // Lists show only one's own.
    let l = sdk.ok(&b, "ListEmailIdentities", json!({})).await;
    assert_eq!(l["Total"], 1);
    assert_eq!(l["EmailIdentities"][0]["IdentityName"], db);
    let l = sdk.ok(&b, "ListEmailAddress", json!({})).await;
    assert_eq!(l["EmailSenders"].as_array().unwrap().len(), 1);
    assert_eq!(l["EmailSenders"][0]["EmailAddress"], format!("news@{db}"));
    let l = sdk
        .ok(&b, "ListEmailTemplates", json!({"Offset": 0, "Limit": 100}))
        .await;
    assert_eq!(l["TotalCount"], 0, "{l}");
    let l = sdk
        .ok(
            &b,
            "ListCustomBlacklist",
            json!({"Offset": 0, "Limit": 100}),
        )
        .await;
    assert_eq!(l["TotalCount"], 0, "{l}");
    let l = sdk
        .ok(
            &b,
            "ListAddressUnsubscribeConfig",
            json!({"Offset": 0, "Limit": 100}),
        )
        .await;
    assert_eq!(l["Total"], 0, "{l}");
    let r = sdk
        .ok(
            &b,
            "GetStatisticsReport",
            json!({"StartDate": today(), "EndDate": today()}),
        )
        .await;
    assert_eq!(r["OverallVolume"]["RequestCount"], 0, "{r}");
    let rows = send_status(&mut sdk, &b, &msg_a).await;
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!(
        sdk.ok(&b, "ListReceivers", json!({"Offset": 0, "Limit": 100}))
            .await["TotalCount"],
        0
    );
    assert_eq!(
        sdk.ok(&b, "ListSendTasks", json!({"Offset": 0, "Limit": 100}))
            .await["TotalCount"],
        0
    );
    let l = sdk
        .ok(
            &b,
            "GetSendEmailStatus",
            json!({"RequestDate": today(), "Offset": 0, "Limit": 100}),
        )
        .await;
    assert_eq!(l["EmailStatusList"].as_array().unwrap().len(), 0, "{l}");
    // The blocklist entry alpha's mail caused: beta neither sees nor removes it.
    let range = json!({"StartDate": today(), "EndDate": today(), "Offset": 0, "Limit": 10});
    assert_eq!(
        sdk.ok(&b, "ListBlackEmailAddress", range.clone()).await["TotalCount"],
        0
    );
    sdk.ok(
        &b,
        "DeleteBlackList",
        json!({"EmailAddressList": ["gone@dest.test"]}),
    )
    .await;
    assert_eq!(
        sdk.ok(&a, "ListBlackEmailAddress", range).await["TotalCount"],
        1
    );
    // ... and alpha's things are all still there.
    sdk.ok(&a, "GetEmailTemplate", json!({"TemplateID": ta}))
        .await;
    sdk.ok(&a, "GetEmailIdentity", json!({"EmailIdentity": da}))
        .await;
    assert_eq!(
        sdk.ok(
            &a,
            "ListCustomBlacklist",
            json!({"Offset": 0, "Limit": 100})
        )
        .await["TotalCount"],
        1
    );
    assert_eq!(send_status(&mut sdk, &a, &msg_a).await.len(), 1);
    assert_eq!(
        sdk.ok(&a, "ListReceivers", json!({"Offset": 0, "Limit": 100}))
            .await["TotalCount"],
        1
    );
    assert_eq!(
        sdk.ok(&a, "ListSendTasks", json!({"Offset": 0, "Limit": 100}))
            .await["TotalCount"],
        1
    );
}

/// A warm-up cap of three a day (six the day after), nothing else limiting.
const THREE_A_DAY: &str = r#"
return { config = {
  limits = { rate_per_second = 1e9, account_daily_limit = 1e12, per_recipient_per_hour = 1e12 },
  reputation = { initial_level = 20 },
  warmup = { curve = { 3, 10 } },
} }
"#;

async fn task_state(sdk: &mut Sdk, who: &Creds, task: i64) -> Value {
    let r = sdk
        .ok(who, "ListSendTasks", json!({"Offset": 0, "Limit": 100}))
        .await;
    r["Data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["TaskId"] == task)
        .cloned()
        .unwrap_or_else(|| panic!("task {task} not listed: {r}"))
}

async fn wait_task(sdk: &mut Sdk, who: &Creds, task: i64, status: i64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t = task_state(sdk, who, task).await;
        if t["TaskStatus"] == status {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task never reached status {status}: {t}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn advance_clock(e: &Env, ms: i64) {
    let r = e
        .kiln
        .admin_post(&format!("/admin/clock?ms={ms}"))
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_task_pauses_at_the_days_cap_and_resumes_the_next_day() {
    for backend in BOTH {
        batch_task_scenario(backend).await;
    }
}

async fn batch_task_scenario(backend: Backend) {
    let e = env(backend, |o| {
        o.policy = THREE_A_DAY.into();
        o.server = "test_clock = true".into();
    })
    .await;
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;

    let list = sdk
        .ok(
            &acme,
            "CreateReceiver",
            json!({"ReceiversName": "autumn", "Desc": "customers"}),
        )
        .await["ReceiverId"]
        .as_i64()
        .unwrap();
    let (code, _) = sdk
        .err(&acme, "CreateReceiver", json!({"ReceiversName": "autumn"}))
        .await;
    assert_eq!(code, "InvalidParameterValue.RepeatReceiverName");
    let mut datas: Vec<Value> = (0..5)
        .map(|i| json!({"Email": format!("r{i}@dest.test"), "TemplateData": format!("{{\"name\":\"R{i}\"}}")}))
        .collect();
    datas.push(json!({"Email": "R0@dest.test"}));
    datas.push(json!({"Email": "bad@"}));
    let r = sdk
        .ok(
            &acme,
            "CreateReceiverDetailWithData",
            json!({"ReceiverId": list, "Datas": datas}),
        )
        .await;
    assert_eq!(
        (
            r["TotalCount"].as_i64(),
            r["ValidCount"].as_i64(),
            r["RepeatCount"].as_i64()
        ),
        (Some(7), Some(5), Some(1)),
        "{r}"
    );
    let r = sdk
        .ok(
            &acme,
            "CreateReceiverDetail",
            json!({"ReceiverId": list, "Emails": ["r1@dest.test"]}),
        )
        .await;
    assert_eq!(r["RepeatCount"], 1, "already in the list: {r}");
    let lists = sdk
        .ok(&acme, "ListReceivers", json!({"Offset": 0, "Limit": 10}))
        .await;
    assert_eq!(lists["Data"][0]["Count"], 5, "{lists}");
    assert_eq!(lists["Data"][0]["InvalidCount"], 1, "{lists}");
    assert_eq!(lists["Data"][0]["ReceiversStatus"], 3, "{lists}");
    let page = sdk
        .ok(
            &acme,
            "ListReceiverDetails",
            json!({"ReceiverId": list, "Offset": 1, "Limit": 2}),
        )
        .await;
    assert_eq!(page["TotalCount"], 6, "{page}");
    assert_eq!(page["Data"].as_array().unwrap().len(), 2);
    assert_eq!(page["Data"][0]["Email"], "r1@dest.test");
    let invalid = sdk
        .ok(
            &acme,
            "ListReceiverDetails",
            json!({"ReceiverId": list, "Offset": 0, "Limit": 10, "Status": 2}),
        )
        .await;
    assert_eq!(invalid["Data"][0]["Email"], "bad@", "{invalid}");

    let (code, _) = sdk
        .err(&acme, "BatchSendEmail", json!({"FromEmailAddress": format!("news@{domain}"), "ReceiverId": list, "Subject": "s", "TaskType": 2, "Template": {"TemplateID": template}}))
        .await;
    assert_eq!(code, "MissingParameter.TimedParamNecessary");
    let task = sdk
        .ok(&acme, "BatchSendEmail", json!({
            "FromEmailAddress": format!("news@{domain}"),
            "ReceiverId": list,
            "Subject": "Hello {{name}}",
            "TaskType": 1,
            "Template": {"TemplateID": template, "TemplateData": "{\"name\":\"friend\",\"code\":\"C-1\"}"},
        }))
        .await["TaskId"]
        .as_i64()
        .unwrap();
    // Three today (the warm-up cap), two kept for tomorrow.
    let t = wait_task(&mut sdk, &acme, task, 6).await;
    assert_eq!(
        (
            t["RequestCount"].as_i64(),
            t["SendCount"].as_i64(),
            t["CacheCount"].as_i64()
        ),
        (Some(5), Some(3), Some(2)),
        "{t}"
    );
    assert!(e.sink.wait_count(3, Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(e.sink.count(), 3, "nothing more today");
    let first = e
        .sink
        .messages()
        .into_iter()
        .find(|m| m.rcpt_to == ["r0@dest.test"])
        .expect("r0 first");
    let text = String::from_utf8_lossy(&first.data).to_string();
    assert!(
        text.contains("Subject: Hello R0"),
        "the recipient's own data wins: {text}"
    );
    assert!(
        text.contains("C-1"),
        "the task's data fills the rest: {text}"
    );
    let (code, _) = sdk
        .err(&acme, "DeleteReceiver", json!({"ReceiverId": list}))
        .await;
    assert_eq!(code, "OperationDenied.ReceiverIsOperating");

    // The next day it resumes by itself and finishes.
    advance_clock(&e, 86_400_000).await;
    let t = wait_task(&mut sdk, &acme, task, 10).await;
    assert_eq!(
        (t["SendCount"].as_i64(), t["CacheCount"].as_i64()),
        (Some(5), Some(0)),
        "{t}"
    );
    assert!(e.sink.wait_count(5, Duration::from_secs(20)).await);
    let mut got: Vec<String> = e
        .sink
        .messages()
        .iter()
        .map(|m| m.rcpt_to[0].clone())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "r0@dest.test",
            "r1@dest.test",
            "r2@dest.test",
            "r3@dest.test",
            "r4@dest.test"
        ]
    );

    // A timed task waits for its time.
    let later = jiff::Timestamp::from_millisecond(kiln::net::now_ms() + 86_400_000 + 3_600_000)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let timed = sdk
        .ok(
            &acme,
            "BatchSendEmail",
            json!({
                "FromEmailAddress": format!("news@{domain}"),
                "ReceiverId": list,
                "Subject": "Later {{name}}",
                "TaskType": 2,
                "TimedParam": {"BeginTime": later},
                "Template": {"TemplateID": template, "TemplateData": "{\"code\":\"C-2\"}"},
            }),
        )
        .await["TaskId"]
        .as_i64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(task_state(&mut sdk, &acme, timed).await["TaskStatus"], 1);
    assert_eq!(e.sink.count(), 5);
    advance_clock(&e, 2 * 3_600_000).await;
    let t = wait_task(&mut sdk, &acme, timed, 10).await;
    assert_eq!(t["SendCount"], 5, "{t}");
    sdk.ok(&acme, "DeleteReceiver", json!({"ReceiverId": list}))
        .await;

    // A large upload: one request of 20,000, paged from the end.
    let big = sdk
        .ok(
            &acme,
            "CreateReceiver",
            json!({"ReceiversName": "everyone"}),
        )
        .await["ReceiverId"]
        .as_i64()
        .unwrap();
    let emails: Vec<String> = (0..20_000).map(|i| format!("u{i}@dest.test")).collect();
    let started = std::time::Instant::now();
    let r = sdk
        .ok(
            &acme,
            "CreateReceiverDetail",
            json!({"ReceiverId": big, "Emails": emails}),
        )
        .await;
    assert_eq!(r["ValidCount"], 20_000, "{r}");
    eprintln!(
        "{backend:?}: 20,000 recipients uploaded in {:?}",
        started.elapsed()
    );
    let page = sdk
        .ok(
            &acme,
            "ListReceiverDetails",
            json!({"ReceiverId": big, "Offset": 19_998, "Limit": 10}),
        )
        .await;
    assert_eq!(page["TotalCount"], 20_000);
    let tail: Vec<&str> = page["Data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["Email"].as_str().unwrap())
        .collect();
    assert_eq!(tail, ["u19998@dest.test", "u19999@dest.test"]);
    let again = sdk
        .ok(
            &acme,
            "CreateReceiverDetail",
            json!({"ReceiverId": big, "Emails": ["u12345@dest.test", "new@dest.test"]}),
        )
        .await;
    assert_eq!(
        (again["ValidCount"].as_i64(), again["RepeatCount"].as_i64()),
        (Some(1), Some(1)),
        "{again}"
    );
    let lists = sdk
        .ok(&acme, "ListReceivers", json!({"Offset": 0, "Limit": 10}))
        .await;
    assert_eq!(lists["TotalCount"], 1, "only the big list is left: {lists}");
    assert_eq!(lists["Data"][0]["Count"], 20_001);
}
