//! A sender domain moved from another service: the operator's typo in
//! the policy, and the operator setting the domain's level and quota.

use crate::clients::{ready_to_send, send_params};
use crate::harness::{Backend, env};
use kiln_testkit::process::PERMISSIVE_POLICY;
use serde_json::{Value, json};
use std::time::Duration;

fn kiln_json(e: &crate::harness::Env, args: &[&str]) -> (bool, Value, String) {
    let out = e.kiln.command(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v, text)
}

/// A level written as a string inside the map of domains fails
/// check-config and reload (the running policy stays); the operator sets
/// the moved domain's level, then a quota of its own that SendEmail meets,
/// then resets it, each logged with who asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sets_a_moved_domains_reputation() {
    let e = env(Backend::Embedded, |o| {
        o.policy = "return { config = { limits = { rate_per_second = 1e9, per_recipient_per_hour = 1e12 } } }".into();
        o.server = "test_clock = true".into();
    })
    .await;
    let (mut sdk, acme, domain, template) = ready_to_send(&e, 1).await;

    // The typo, as an operator made it: refused, naming the leaf.
    let typo = format!(
        "return {{ config = {{ reputation = {{ domains = {{ [\"{domain}\"] = {{ level = \"8\" }} }} }} }} }}"
    );
    std::fs::write(&e.kiln.policy, typo).unwrap();
    let says =
        format!("config.reputation.domains[\"{domain}\"].level: expected an integer, got string");
    for args in [&["check-config"][..], &["reload"][..]] {
        let (ok, v, text) = kiln_json(&e, args);
        assert!(!ok, "{args:?}: {text}");
        let message = v["error"]["message"].as_str().unwrap_or(&text).to_string();
        assert!(message.contains(&says), "{args:?}: {text}");
        assert!(!message.contains("stack traceback"), "{args:?}: {message}");
    }
    std::fs::write(
        &e.kiln.policy,
        PERMISSIVE_POLICY.replace("initial_level = 20", "initial_level = 1"),
    )
    .unwrap();
    let (ok, _, text) = kiln_json(&e, &["reload"]);
    assert!(ok, "{text}");

    // A new domain: level 1. The operator puts it at level 8.
    let (ok, shown, text) = kiln_json(&e, &["domain", "show", domain]);
    assert!(ok, "{text}");
    assert_eq!(
        (shown["level"].clone(), shown["daily_limit"].clone()),
        (json!(1), json!(500)),
        "{shown}"
    );
    assert_eq!(shown["owner"], "acme");
    let (ok, set, text) = kiln_json(&e, &["domain", "set-level", domain, "8"]);
    assert!(ok, "{text}");
    assert_eq!(
        (set["level"].clone(), set["daily_limit"].clone()),
        (json!(8), json!(60000)),
        "{set}"
    );
    let listed = sdk.ok(&acme, "ListEmailIdentities", json!({})).await;
    let row = &listed["EmailIdentities"][0];
    assert_eq!(
        (
            row["CurrentReputationLevel"].clone(),
            row["DailyQuota"].clone()
        ),
        (json!(8), json!(60000)),
        "{listed}"
    );
    let (ok, _, text) = kiln_json(&e, &["domain", "set-level", domain, "21"]);
    assert!(!ok && text.contains("a level from 1 to 20"), "{text}");

    // A quota of its own: two messages today, the third refused.
    let (ok, set, text) = kiln_json(&e, &["domain", "set-quota", domain, "2"]);
    assert!(ok, "{text}");
    assert_eq!(set["daily_limit"], 2, "{set}");
    // The limits plugin reads a domain's limit at most once a second (of
    // Kiln's time).
    crate::harness::move_clock(&e, 1_000).await;
    for to in ["q1@dest.test", "q2@dest.test"] {
        sdk.ok(&acme, "SendEmail", send_params(domain, template, to))
            .await;
    }
    let (code, _) = sdk
        .err(
            &acme,
            "SendEmail",
            send_params(domain, template, "q3@dest.test"),
        )
        .await;
    assert_eq!(code, "FailedOperation.ExceedSendLimit");

    // Reset: a new domain again.
    let (ok, reset, text) = kiln_json(&e, &["domain", "reset", domain]);
    assert!(ok, "{text}");
    assert_eq!(
        (reset["level"].clone(), reset["daily_limit"].clone()),
        (json!(1), json!(500)),
        "{reset}"
    );
    // The log is written a moment after the answer.
    crate::harness::wait_until(Duration::from_secs(5), || {
        e.kiln
            .log_text()
            .matches("sender domain's reputation changed by an operator")
            .count()
            >= 3
    })
    .await;
    let log = e.kiln.log_text();
    assert_eq!(
        log.matches("sender domain's reputation changed by an operator")
            .count(),
        3,
        "{log}"
    );
    assert!(log.contains("operation=set-quota"), "{log}");
}
