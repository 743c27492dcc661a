//! Batch tasks: a task over a recipient list meets the day's warm-up cap,
//! pauses, and resumes the next day.

use crate::clients::*;
use crate::harness::{BOTH, Backend, env};
use serde_json::{Value, json};
use std::time::Duration;

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
    // Three today (the warm-up cap), two kept for tomorrow, and why.
    let t = wait_task(&mut sdk, &acme, task, 6).await;
    let why = t["ErrMsg"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("paused today: ") && why.contains("resumes at "),
        "{t}"
    );
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
    crate::harness::nothing_happens_for(
        Duration::from_millis(1500),
        "a message past today's quota",
    )
    .await;
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
    crate::harness::move_clock(&e, 86_400_000).await;
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
    let later =
        jiff::Timestamp::from_millisecond(kiln::clock::system_now_ms() + 86_400_000 + 3_600_000)
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
    crate::harness::nothing_happens_for(Duration::from_secs(2), "the timed task before its time")
        .await;
    assert_eq!(task_state(&mut sdk, &acme, timed).await["TaskStatus"], 1);
    assert_eq!(e.sink.count(), 5);
    crate::harness::move_clock(&e, 2 * 3_600_000).await;
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
