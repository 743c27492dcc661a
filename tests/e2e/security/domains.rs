//! Sender domains claimed without proof: a claim owns nothing, the first
//! to prove a domain through DNS owns it, and a domain's next owner
//! inherits none of the last one's data.

use crate::clients::{
    Sdk, approved_template, create_account, next_second, send_params, today, verified_sender,
    wait_deliver_status,
};
use crate::feedback::events::{arf, mail_report};
use crate::harness::{Backend, env};
use kiln_testkit::client::{SmtpClient, message};
use serde_json::json;
use std::time::Duration;

/// `who`'s claim to `domain` is gone (another account proved it).
async fn claim_gone(sdk: &mut Sdk, who: &crate::clients::Creds, domain: &str) -> String {
    let (code, why) = sdk
        .err(who, "GetEmailIdentity", json!({"EmailIdentity": domain}))
        .await;
    assert_eq!(code, "InvalidParameterValue.NotExistDomain");
    why
}

/// One SMTP message from the config account `relay2` (no domain list: it
/// may send as any domain nobody owns), From `from`; the DATA reply's code.
async fn relay2_sends_as(smtp: std::net::SocketAddr, from: &str) -> u16 {
    let mut c = SmtpClient::connect(smtp).await.unwrap();
    c.cmd("EHLO relay2.test").await.unwrap();
    c.starttls().await.unwrap();
    c.cmd("EHLO relay2.test").await.unwrap();
    assert_eq!(
        c.auth_plain("relay2", "relay2-password")
            .await
            .unwrap()
            .code,
        235
    );
    let body = message(from, "r@dest.test", "as a free domain", 256);
    let r = c.send(from, &["r@dest.test"], &body).await.unwrap();
    c.quit().await;
    r.code
}

/// mallory claims victim-corp.test first, unproven: victim-corp still
/// creates and proves it, mallory's claim is dropped with the reason, and
/// a config account that may send as unowned domains was never stopped by
/// the claim. Subdomains of the proven domain cannot be claimed by others.
/// Then victim-corp deletes the domain (after a hard bounce, a complaint
/// and some sending): mallory's new claim sees no abuse report, blocklist
/// entry or statistics of it and lifts no blocklist entry, and newco, which
/// proves it next, starts clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_claimed_without_proof_owns_nothing() {
    let e = env(Backend::Embedded, |o| {
        o.extra = "[platform]\nbounce_domain = \"bounces.kiln.test\"\n\n\
                   [[accounts]]\nname = \"relay2\"\nusername = \"relay2\"\npassword = \"relay2-password\"\n"
            .into();
    })
    .await;
    e.dns
        .add_txt("_spf.kiln.test", "v=spf1 ip4:127.0.0.0/8 -all");
    let domain = "victim-corp.test";
    let mut sdk = Sdk::start(e.kiln.http).await;
    let (victim, mallory, newco) = (
        create_account(&e, "victim"),
        create_account(&e, "mallory"),
        create_account(&e, "newco"),
    );

    // A claim first, unproven: it stops no one.
    sdk.ok(
        &mallory,
        "CreateEmailIdentity",
        json!({"EmailIdentity": domain}),
    )
    .await;
    let got = sdk
        .ok(
            &mallory,
            "GetEmailIdentity",
            json!({"EmailIdentity": domain}),
        )
        .await;
    assert_eq!(got["VerifiedForSendingStatus"], false, "{got}");
    assert_eq!(
        relay2_sends_as(e.kiln.smtp, &format!("x@{domain}")).await,
        250
    );
    verified_sender(&e, &mut sdk, &victim, domain, 1).await;

    // The proof decided: mallory's claim is gone, and says why.
    let why = claim_gone(&mut sdk, &mallory, domain).await;
    assert!(why.contains("another account proved the domain"), "{why}");
    let listed = sdk.ok(&mallory, "ListEmailIdentities", json!({})).await;
    assert_eq!(listed["EmailIdentities"], json!([]), "{listed}");
    // (The same request again within its second would be a replay.)
    next_second().await;
    for claim in [domain.to_string(), format!("mail.{domain}")] {
        let (code, _) = sdk
            .err(
                &mallory,
                "CreateEmailIdentity",
                json!({"EmailIdentity": claim}),
            )
            .await;
        assert_eq!(code, "InvalidParameterValue.CreatedByOther", "{claim}");
    }
    assert_eq!(
        relay2_sends_as(e.kiln.smtp, &format!("x@{domain}")).await,
        550
    );

    // victim-corp's mail: a hard bounce (blocklisted), a complaint.
    let template = approved_template(&mut sdk, &victim).await;
    e.sink.set_rule("gone@dest.test", "550 5.1.1 No such user");
    let bounced = sdk
        .ok(
            &victim,
            "SendEmail",
            send_params(domain, template, "gone@dest.test"),
        )
        .await;
    wait_deliver_status(&mut sdk, &victim, bounced["MessageId"].as_str().unwrap(), 3).await;
    let sent = sdk
        .ok(
            &victim,
            "SendEmail",
            send_params(domain, template, "bob@dest.test"),
        )
        .await;
    let id = sent["MessageId"].as_str().unwrap().to_string();
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || e
            .sink
            .messages()
            .iter()
            .any(|m| m.rcpt_to == ["bob@dest.test"]))
        .await
    );
    let return_path = e
        .sink
        .messages()
        .iter()
        .find(|m| m.rcpt_to == ["bob@dest.test"])
        .unwrap()
        .mail_from
        .clone();
    assert!(
        return_path.starts_with(&format!("b-{id}-0-")),
        "{return_path}"
    );
    let r = mail_report(&e, &return_path, &arf(&return_path, "bob@dest.test")).await;
    assert_eq!(r.code, 250);
    let day = today();
    let abuse = json!({"StartTime": day, "EndTime": day});
    let black = json!({"StartDate": day, "EndDate": day, "Offset": 0, "Limit": 10});
    let stats = json!({"StartDate": day, "EndDate": day, "Domain": domain});
    let mut seen = false;
    for _ in 0..50 {
        let a = sdk.ok(&victim, "GetAbuseReport", abuse.clone()).await;
        if a["TotalCount"] == 1 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen, "the complaint was filed");
    let b = sdk
        .ok(&victim, "ListBlackEmailAddress", black.clone())
        .await;
    assert_eq!(b["BlackList"][0]["EmailAddress"], "gone@dest.test", "{b}");
    let mut requested = 0;
    for _ in 0..50 {
        let s = sdk.ok(&victim, "GetStatisticsReport", stats.clone()).await;
        requested = s["OverallVolume"]["RequestCount"].as_i64().unwrap_or(0);
        if requested >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(requested >= 2, "statistics counted the sends");

    // victim-corp lets the domain go.
    sdk.ok(
        &victim,
        "DeleteEmailAddress",
        json!({"EmailAddress": format!("news@{domain}")}),
    )
    .await;
    sdk.ok(
        &victim,
        "DeleteEmailIdentity",
        json!({"EmailIdentity": domain}),
    )
    .await;

    // mallory claims it, unproven: nothing of it is mallory's to see or change.
    next_second().await;
    sdk.ok(
        &mallory,
        "CreateEmailIdentity",
        json!({"EmailIdentity": domain}),
    )
    .await;
    let a = sdk.ok(&mallory, "GetAbuseReport", abuse.clone()).await;
    assert_eq!(a["TotalCount"], 0, "{a}");
    let b = sdk
        .ok(&mallory, "ListBlackEmailAddress", black.clone())
        .await;
    assert_eq!(b["TotalCount"], 0, "{b}");
    let (code, _) = sdk
        .err(&mallory, "GetStatisticsReport", stats.clone())
        .await;
    assert_eq!(code, "InvalidParameterValue.NotExistDomain");
    let _ = sdk
        .call(
            &mallory,
            "DeleteBlackList",
            json!({"EmailAddressList": ["gone@dest.test"]}),
        )
        .await;

    // newco proves it: a clean start, and the installation-wide blocklist
    // entry mallory tried to lift still holds.
    verified_sender(&e, &mut sdk, &newco, domain, 1).await;
    claim_gone(&mut sdk, &mallory, domain).await;
    let a = sdk.ok(&newco, "GetAbuseReport", abuse).await;
    assert_eq!(a["TotalCount"], 0, "{a}");
    let b = sdk.ok(&newco, "ListBlackEmailAddress", black).await;
    assert_eq!(b["TotalCount"], 0, "{b}");
    let s = sdk.ok(&newco, "GetStatisticsReport", stats).await;
    assert_eq!(s["OverallVolume"]["RequestCount"], 0, "{s}");
    let template = approved_template(&mut sdk, &newco).await;
    let (code, _) = sdk
        .err(
            &newco,
            "SendEmail",
            send_params(domain, template, "gone@dest.test"),
        )
        .await;
    assert_eq!(code, "FailedOperation.EmailAddrInBlacklist");
}
