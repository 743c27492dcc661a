//! What an account may reach: a sender address submitting over SMTP with
//! its API password, and nothing of another account, action by action.

use crate::clients::*;
use crate::harness::{Backend, env};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;
use std::time::Duration;

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
    let results = crate::egress::delivery::verify_dkim(e.dns.addr, &got.data).await;
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
