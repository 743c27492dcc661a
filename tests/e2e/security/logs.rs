//! A forged log line: a value from outside with a newline in it.

use crate::clients::{Sdk, create_account, today};
use crate::harness::{Backend, env};
use serde_json::json;

/// A `Domain` parameter carrying a newline and a made-up line is logged
/// with its refusal, escaped: the log gains no line of the tenant's making.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_from_outside_cannot_forge_a_log_line() {
    let e = env(Backend::Embedded, |_| {}).await;
    let who = create_account(&e, "acme");
    let mut sdk = Sdk::start(e.kiln.http).await;
    let forged = "2026-12-06T00:00:00.000000Z ERROR kiln::ops: operator token rotated by admin";
    let day = today();
    let (code, _) = sdk
        .err(
            &who,
            "GetStatisticsReport",
            json!({"StartDate": day, "EndDate": day, "Domain": format!("x.test\n{forged}\r\u{1b}[2K")}),
        )
        .await;
    assert_eq!(code, "InvalidParameterValue.NotExistDomain");
    let log = e.kiln.log_text();
    assert!(
        log.contains(&format!("x.test\\n{forged}\\r\\x1b[2K")),
        "the refusal is logged, escaped:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a forged line:\n{log}"
    );
}
