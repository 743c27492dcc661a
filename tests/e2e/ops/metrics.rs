//! `GET /metrics` after a run of known size, on both stores: the counters
//! read exactly what happened (parsed by the Prometheus project's own
//! Python parser), and no label carries an address or a message id.

use crate::harness::{BOTH, env, queued_id, submit_session, wait_until};
use kiln_testkit::client::message;
use std::collections::HashMap;
use std::time::Duration;

/// The samples of an OpenMetrics text, as `name{label="v",...}` → value,
/// parsed by `prometheus_client.openmetrics.parser`.
fn parse(text: &str) -> HashMap<String, f64> {
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the metrics (is prometheus-client installed?): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

/// The sum of the samples named `name` whose labels include `with`.
fn sum(samples: &HashMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && with.iter().all(|w| k.contains(w)))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_read_what_happened() {
    for backend in BOTH {
        let e = env(backend, |_| {}).await;
        e.sink.set_rule("gone1@dest.test", "550 5.1.1 no such user");
        e.sink.set_rule("gone2@dest.test", "550 5.1.1 no such user");
        let mut c = submit_session(e.kiln.smtp).await;
        let mut ids = Vec::new();
        for (i, rcpt) in [
            "a@dest.test",
            "b@dest.test",
            "c@dest.test",
            "gone1@dest.test",
            "gone2@dest.test",
        ]
        .iter()
        .enumerate()
        {
            let body = message("a@shop.test", rcpt, &format!("m{i}"), 600);
            let r = c.send("a@shop.test", &[rcpt], &body).await.unwrap();
            assert_eq!(r.code, 250, "{r:?}");
            ids.push(queued_id(&r.text));
        }
        // Refused at admission: a line longer than SMTP allows.
        for _ in 0..2 {
            let mut body = message("a@shop.test", "a@dest.test", "long", 100);
            body.extend_from_slice(&[b'x'; 1200]);
            body.extend_from_slice(b"\r\n");
            let r = c
                .send("a@shop.test", &["a@dest.test"], &body)
                .await
                .unwrap();
            assert_eq!(r.code / 100, 5, "{r:?}");
        }
        c.quit().await;
        // An API call with a made-up action: counted as `unknown`.
        let http = reqwest::Client::new();
        http.post(format!("http://{}/", e.kiln.http))
            .header("X-TC-Action", "Evil<script>@x.test")
            .body("{}")
            .send()
            .await
            .unwrap();

        for id in &ids {
            let mut done = false;
            for _ in 0..300 {
                let st = crate::harness::status(&e.kiln, id).await;
                let state = st.as_ref().map(|s| s["recipients"][0]["state"].clone());
                if state
                    .as_ref()
                    .is_some_and(|s| s == "delivered" || s == "bounced")
                {
                    done = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(done, "{backend:?}: {id} not final");
        }
        assert!(wait_until(Duration::from_secs(5), || e.sink.count() == 3).await);

        let read = || async {
            let r = http
                .get(format!("http://{}/metrics", e.kiln.http))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert!(
                r.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/openmetrics-text")
            );
            r.text().await.unwrap()
        };
        // Events are counted when their write is done: read until settled.
        let mut text = read().await;
        for _ in 0..50 {
            if sum(&parse(&text), "kiln_events_total", &[]) >= 5.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            text = read().await;
        }
        let m = parse(&text);
        // What a Prometheus operator tries first: curl, headers shown.
        let curl = std::process::Command::new("curl")
            .args(["-sS", "-i", &format!("http://{}/metrics", e.kiln.http)])
            .output()
            .expect("curl runs (apt-get install -y curl)");
        let shown = String::from_utf8_lossy(&curl.stdout).to_string();
        assert!(shown.starts_with("HTTP/1.1 200"), "{shown}");
        assert!(
            shown
                .to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{shown}"
        );
        let (_, body) = shown.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            sum(
                &parse(body),
                "kiln_messages_accepted_total",
                &["door=\"smtp\""]
            ),
            5.0,
            "{shown}"
        );
        let b = format!("{backend:?}");
        assert_eq!(
            sum(&m, "kiln_messages_accepted_total", &["door=\"smtp\""]),
            5.0,
            "{b}\n{text}"
        );
        assert_eq!(
            sum(&m, "kiln_recipients_queued_total", &["door=\"smtp\""]),
            5.0,
            "{b}"
        );
        assert_eq!(
            sum(
                &m,
                "kiln_messages_refused_total",
                &["door=\"smtp\"", "reason=\"malformed\""]
            ),
            2.0,
            "{b}\n{text}"
        );
        assert_eq!(sum(&m, "kiln_messages_refused_total", &[]), 2.0, "{b}");
        assert_eq!(
            sum(
                &m,
                "kiln_delivery_attempts_total",
                &["result=\"delivered\""]
            ),
            3.0,
            "{b}\n{text}"
        );
        assert_eq!(
            sum(&m, "kiln_delivery_attempts_total", &["result=\"bounced\""]),
            2.0,
            "{b}"
        );
        assert_eq!(sum(&m, "kiln_delivery_attempts_total", &[]), 5.0, "{b}");
        assert_eq!(
            sum(&m, "kiln_delivery_attempt_duration_seconds_count", &[]),
            5.0,
            "{b}"
        );
        assert_eq!(
            sum(
                &m,
                "kiln_bounces_total",
                &["bounce_type=\"hard\"", "class=\"hard\""]
            ),
            2.0,
            "{b}\n{text}"
        );
        assert_eq!(
            sum(&m, "kiln_events_total", &["event=\"delivered\""]),
            3.0,
            "{b}\n{text}"
        );
        assert_eq!(
            sum(&m, "kiln_events_total", &["event=\"bounce\""]),
            2.0,
            "{b}"
        );
        assert_eq!(
            sum(&m, "kiln_api_requests_total", &["action=\"unknown\""]),
            1.0,
            "{b}\n{text}"
        );
        assert_eq!(
            sum(&m, "kiln_smtp_sessions_total", &["tls=\"yes\""]),
            1.0,
            "{b}\n{text}"
        );
        assert_eq!(
            sum(
                &m,
                "kiln_store_write_duration_seconds_count",
                &["op=\"enqueue\""]
            ),
            5.0,
            "{b}"
        );
        assert!(
            sum(&m, "kiln_policy_hook_calls_total", &[]) >= 5.0,
            "{b}\n{text}"
        );
        assert_eq!(sum(&m, "kiln_policy_hook_errors_total", &[]), 0.0, "{b}");
        for state in ["due", "waiting", "leased"] {
            assert_eq!(
                sum(&m, "kiln_queue_entries", &[&format!("state=\"{state}\"")]),
                0.0,
                "{b}"
            );
        }
        // Bounded labels: no address, no message id, no client's action name.
        for key in m.keys() {
            assert!(!key.contains('@') && !key.contains("Evil"), "{b}: {key}");
            for id in &ids {
                assert!(!key.contains(id.as_str()), "{b}: {key}");
            }
        }
        assert!(m.len() < 400, "{b}: {} series", m.len());
    }
}
