//! A sender domain's reputation as an operator sees and steers it: `kiln
//! domain show | set-level | set-quota | reset`. The state is the
//! `reputation` hook's (the policy keeps it); these ask the hook (kinds
//! `show`, `set`, `forget`), and each change is logged with who asked.

use crate::services::Services;
use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

pub fn routes() -> axum::Router<Arc<Services>> {
    axum::Router::new()
        .route("/admin/domains/{domain}", get(show))
        .route("/admin/domains/{domain}/{operation}", post(change))
}

/// What the hook says of `domain` now, with who owns it.
pub async fn describe(ctx: &Services, domain: &str) -> Result<Value, String> {
    let domain = crate::ses::identities::normalize_domain(domain)
        .ok_or_else(|| format!("{domain:?} is not a domain name"))?;
    let mut state = ask(ctx, &domain, json!({"kind": "show"})).await?;
    let owner = ctx
        .ses
        .identity_of_domain(&domain)
        .await
        .map_err(|e| e.to_string())?;
    state["domain"] = json!(domain);
    state["owner"] = json!(owner.map(|i| i.account));
    Ok(state)
}

/// Asks the `reputation` hook about `domain` (`event` gives the kind and
/// what it needs).
async fn ask(ctx: &Services, domain: &str, mut event: Value) -> Result<Value, String> {
    event["domain"] = json!(domain);
    event["account"] = json!("");
    event["count"] = json!(0);
    event["now"] = json!(ctx.store.now_ms());
    match ctx
        .policy
        .call(crate::policy::hooks::Reputation, &event)
        .await
    {
        Ok(Some(v)) => Ok(v),
        Ok(None) if event["kind"] == "forget" => Ok(Value::Null),
        Ok(None) => Err("the policy has no reputation hook".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn show(State(ctx): State<Arc<Services>>, Path(domain): Path<String>) -> Response {
    match describe(&ctx, &domain).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => super::admin::error(StatusCode::BAD_REQUEST, "DomainUnreadable", e),
    }
}

#[derive(Deserialize)]
struct Change {
    level: Option<i64>,
    quota: Option<i64>,
}

async fn change(
    State(ctx): State<Arc<Services>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((domain, operation)): Path<(String, String)>,
    Query(q): Query<Change>,
) -> Response {
    let by = super::queue_control::who(&headers, peer);
    match apply(&ctx, &domain, &operation, q.level, q.quota, &by).await {
        Ok(v) => Json(v).into_response(),
        Err(Refused::Bad(code, why)) => super::admin::error(StatusCode::BAD_REQUEST, code, why),
        Err(Refused::Unreadable(why)) => {
            super::admin::error(StatusCode::INTERNAL_SERVER_ERROR, "DomainUnreadable", why)
        }
    }
}

/// Why a change was not made.
pub enum Refused {
    /// The request: an error code and what is wrong.
    Bad(&'static str, String),
    /// Made, but the state cannot be read back.
    Unreadable(String),
}

/// Sets a domain's level or quota, or forgets its state (`operation`
/// set-level, set-quota, reset), logged with who asked (`by`); answers the
/// state after.
pub async fn apply(
    ctx: &Services,
    domain: &str,
    operation: &str,
    level: Option<i64>,
    quota: Option<i64>,
    by: &str,
) -> Result<Value, Refused> {
    let Some(domain) = crate::ses::identities::normalize_domain(domain) else {
        return Err(Refused::Bad(
            "InvalidDomain",
            format!("{domain:?} is not a domain name"),
        ));
    };
    let event = match (operation, level, quota) {
        ("set-level", Some(level), _) => json!({"kind": "set", "level": level}),
        ("set-quota", _, Some(quota)) => json!({"kind": "set", "quota": quota}),
        ("reset", _, _) => json!({"kind": "forget"}),
        _ => {
            return Err(Refused::Bad(
                "InvalidOperation",
                "set-level?level=N, set-quota?quota=N (0: none) or reset".into(),
            ));
        }
    };
    if let Err(e) = ask(ctx, &domain, event).await {
        return Err(Refused::Bad("NotChanged", e));
    }
    tracing::info!(
        target: "kiln::ops", %domain, %operation, ?level, ?quota, %by,
        "sender domain's reputation changed by an operator"
    );
    let mut v = describe(ctx, &domain).await.map_err(Refused::Unreadable)?;
    v["changed_by"] = json!(by);
    Ok(v)
}
