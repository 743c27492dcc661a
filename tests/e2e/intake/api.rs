//! The Tencent-compatible API, driven by the official Python SDK
//! (tencentcloud-sdk-python-ses) through its typed request and response
//! models, against a running Kiln with a test DNS server and a sink MX: the
//! whole flow from a sender domain to delivery and the blocklist, every
//! refusal naming its field, request signatures.

use crate::clients::*;
use crate::harness::{Backend, env};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_flow_from_domain_to_delivery_and_the_blocklist() {
    for backend in crate::harness::ALL {
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
        let results = crate::egress::delivery::verify_dkim(e.dns.addr, &got.data).await;
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
    // DKIMOption 2: signed twice, RSA-2048 and RSA-1024, both valid: to
    // mail-auth, and to rspamd, which reads a published key as OpenDKIM
    // does (a SubjectPublicKeyInfo: a bare PKCS#1 key is a permanent
    // failure, `R_DKIM_PERMFAIL`).
    let results = crate::egress::delivery::verify_dkim(e.dns.addr, &last.data).await;
    assert_eq!(
        results,
        [mail_auth::DkimResult::Pass, mail_auth::DkimResult::Pass],
        "{text}"
    );
    let rspamd =
        tokio::task::block_in_place(|| kiln_testkit::rspamd::Rspamd::start(&e.dns.nameserver()));
    let said = tokio::task::block_in_place(|| rspamd.symbols(&last.data));
    assert!(
        said.contains("R_DKIM_ALLOW")
            && !said.contains("R_DKIM_PERMFAIL")
            && !said.contains("R_DKIM_REJECT"),
        "{said}\n{}",
        rspamd.log()
    );
    assert_eq!(
        said.matches("mail.acme.test:s=").count(),
        2,
        "both signatures: {said}"
    );
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
    let now = kiln::clock::system_now_ms() / 1000;
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
