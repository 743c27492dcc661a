//! `kiln explain MESSAGE_ID [RECIPIENT]`: a message's whole story, in the
//! order it happened: how it came in and what the policy and DKIM said
//! (kept with its status), every attempt with its reply, how the reply was
//! classified and what followed (kept with each attempt), and what came
//! after (opens, clicks, unsubscribes, complaints, delays reported, the
//! callbacks: the message's trail). Read from the store: any node answers.

use crate::clock::format_ms;
use crate::queued::Attempt;
use crate::services::Services;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Services>> {
    Router::new().route("/admin/explain/{id}", get(explain))
}

#[derive(Deserialize)]
struct ExplainQuery {
    recipient: Option<String>,
}

/// One line of the story.
#[derive(Debug, Serialize)]
pub struct Line {
    pub at_ms: i64,
    pub at: String,
    pub what: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub recipient: String,
    pub text: String,
}

fn line(at_ms: i64, what: &str, recipient: &str, text: String) -> Line {
    Line {
        at_ms,
        at: format_ms(at_ms),
        what: what.to_string(),
        recipient: recipient.to_string(),
        text,
    }
}

/// An attempt as the story tells it.
fn attempt_text(n: usize, a: &Attempt) -> String {
    let mut out = format!("#{n}");
    if let Some(mx) = &a.mx {
        out.push_str(&format!(" to {mx}"));
    }
    if let Some(ip) = &a.ip {
        out.push_str(&format!(" [{ip}]"));
    }
    if let Some(s) = &a.source {
        out.push_str(&format!(" from source {s}"));
    }
    if let Some(node) = &a.node {
        out.push_str(&format!(" by node {node}"));
    }
    out.push_str(&match &a.tls {
        Some(v) => format!(", {v}"),
        None if a.mx.is_some() => ", no TLS".to_string(),
        None => String::new(),
    });
    if let Some(p) = &a.tls_policy {
        out.push_str(&format!(" under {p}"));
    }
    out.push_str(": ");
    let reply = match (a.code, &a.enhanced_code) {
        (Some(c), Some(x)) => format!("{c} {x} {}", a.message),
        (Some(c), None) => format!("{c} {}", a.message),
        (None, _) => a.message.clone(),
    };
    out.push_str(reply.trim());
    if let Some(s) = &a.shaping {
        out.push_str(&format!(" [shaping: {s}]"));
    }
    if let Some(o) = &a.outcome {
        out.push_str(&format!(" → {o}"));
    }
    out
}

async fn explain(
    State(ctx): State<Arc<Services>>,
    Path(id): Path<String>,
    Query(q): Query<ExplainQuery>,
) -> Response {
    let status = match ctx.store.status(&id).await {
        Ok(Some(st)) => st,
        Ok(None) => {
            return super::admin::error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no message {id} (or its record has expired)"),
            );
        }
        Err(e) => {
            return super::admin::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "StoreUnavailable",
                e.to_string(),
            );
        }
    };
    let trail = match crate::feedback::trail::read(&ctx.store, &id).await {
        Ok(t) => t,
        Err(e) => {
            return super::admin::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "StoreUnavailable",
                e.to_string(),
            );
        }
    };
    let wanted = |r: &str| {
        q.recipient
            .as_deref()
            .is_none_or(|w| w.eq_ignore_ascii_case(r))
    };
    let meta = &status.meta;
    let mut lines = vec![line(
        meta.received_at_ms,
        "queued",
        "",
        format!(
            "message {} from {} ({} bytes{}), {} recipient(s)",
            meta.id,
            if meta.sender.is_empty() {
                "<>"
            } else {
                &meta.sender
            },
            meta.size,
            if meta.account.is_empty() {
                String::new()
            } else {
                format!(", account {}", meta.account)
            },
            status.recipients.len()
        ),
    )];
    for step in &meta.story {
        lines.push(line(meta.received_at_ms, &step.what, "", step.text.clone()));
    }
    for r in status.recipients.iter().filter(|r| wanted(&r.recipient)) {
        if let Some(reason) = &r.reason {
            lines.push(line(
                r.updated_at_ms,
                "dropped",
                &r.recipient,
                format!("dropped by the policy: {reason}"),
            ));
        }
        for (i, a) in r.attempts.iter().enumerate() {
            lines.push(line(
                a.at_ms,
                "attempt",
                &r.recipient,
                attempt_text(i + 1, a),
            ));
        }
        let mut now = format!("now {:?}", r.state).to_lowercase();
        if let Some(at) = r.next_attempt_at_ms {
            now.push_str(&format!(", next try at {}", format_ms(at)));
        }
        lines.push(line(r.updated_at_ms, "state", &r.recipient, now));
    }
    for step in trail
        .iter()
        .filter(|t| t.recipient.is_empty() || wanted(&t.recipient))
    {
        lines.push(line(
            step.at_ms,
            &step.what,
            &step.recipient,
            step.text.clone(),
        ));
    }
    // In time order; what happened at one instant keeps its order above.
    lines.sort_by_key(|l| l.at_ms);
    let text = lines
        .iter()
        .map(|l| {
            let who = if l.recipient.is_empty() {
                String::new()
            } else {
                format!(" {}", l.recipient)
            };
            format!("{}  {}{}: {}", l.at, l.what, who, l.text)
        })
        .collect::<Vec<_>>()
        .join("\n");
    Json(serde_json::json!({"message_id": id, "lines": lines, "text": text})).into_response()
}
