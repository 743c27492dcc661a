//! The admin endpoints the `kiln` subcommands use: message status, DKIM
//! keys, queue size, egress shaping, reload, policy state, accounts, AUTH
//! blocks. They
//! answer on loopback, to the operator token only (`admin_auth`).

use crate::services::Services;
use crate::ses::dkim;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The admin routes, each behind the token guard.
pub fn routes(ctx: &Arc<Services>) -> Router<Arc<Services>> {
    Router::new()
        .route("/admin/messages/{id}", get(message_status))
        .route("/admin/dkim/{domain}", get(dkim_show).post(dkim_create))
        .route("/admin/queue", get(queue_info))
        .route("/admin/egress", get(egress_info))
        .route("/admin/reload", axum::routing::post(reload))
        .route("/admin/policy", get(policy_info))
        .route("/admin/cluster", get(super::cluster::status))
        .route("/admin/tls-report/{domain}", get(tls_report))
        .route(
            "/admin/tls-reports/send",
            axum::routing::post(tls_reports_send),
        )
        .route("/admin/clock", axum::routing::post(clock_advance))
        .route("/admin/auth/blocked", get(auth_blocked))
        .route("/admin/auth/unblock", axum::routing::post(auth_unblock))
        .route("/admin/accounts", get(accounts_list))
        .route(
            "/admin/accounts/{name}",
            axum::routing::post(account_create),
        )
        .route(
            "/admin/accounts/{name}/callback",
            axum::routing::post(account_callback),
        )
        .route(
            "/admin/accounts/{name}/{operation}",
            axum::routing::post(account_change),
        )
        .merge(super::queue_control::routes())
        .merge(super::domains::routes())
        .merge(super::explain::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            ctx.admin_tokens.clone(),
            super::admin_auth::guard,
        ))
}

pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

async fn message_status(State(ctx): State<Arc<Services>>, Path(id): Path<String>) -> Response {
    match ctx.store.status(&id).await {
        Ok(Some(status)) => Json(status).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "MessageNotFound",
            format!("no message {id}"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "StoreError",
            e.to_string(),
        ),
    }
}

/// Shaping per (provider, source): limits, connections allowed now, the
/// pace factor, suspensions and the last throttling signal acted on.
async fn egress_info(State(ctx): State<Arc<Services>>) -> Response {
    Json(json!({ "shaping": ctx.egress.shaping().await })).into_response()
}

async fn reload(State(ctx): State<Arc<Services>>) -> Response {
    match ctx.reload().await {
        Ok(version) => Json(json!({"reloaded": true, "policy_version": version})).into_response(),
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ReloadFailed",
            format!("{e} (the running configuration and policy stay in force)"),
        ),
    }
}

async fn policy_info(State(ctx): State<Arc<Services>>) -> Response {
    let policy = &ctx.policy;
    let hooks = policy.defined_hooks();
    let mut info = json!({
        "version": policy.version(),
        "hooks": hooks,
        "errors": policy.error_counts(),
        "stuck_states": crate::policy::stuck_states(),
    });
    if let Some((counters, units)) = ctx.store.held_ahead() {
        info["held_ahead"] = json!({ "counters": counters, "units": units });
    }
    Json(info).into_response()
}

async fn queue_info(State(ctx): State<Arc<Services>>) -> Response {
    match ctx.store.queue_len().await {
        Ok(n) => Json(json!({"queued": n})).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "StoreError",
            e.to_string(),
        ),
    }
}

fn key_json(key: &dkim::DkimKey) -> serde_json::Value {
    json!({
        "domain": key.domain,
        "selector": key.selector,
        "algorithm": key.algorithm,
        "dns_name": key.dns_name(),
        "txt": key.txt_record(),
    })
}

async fn dkim_show(State(ctx): State<Arc<Services>>, Path(domain): Path<String>) -> Response {
    match dkim::load_key(&ctx.store, &domain).await {
        Ok(Some(key)) => Json(key_json(&key)).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "DkimKeyNotFound",
            format!("no DKIM key for {domain}; create one with `kiln dkim create {domain}`"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "StoreError",
            e.to_string(),
        ),
    }
}

#[derive(Deserialize)]
struct ReportDay {
    day: Option<String>,
}

/// `GET /admin/tls-report/DOMAIN?day=YYYY-MM-DD`: the TLS report DOMAIN
/// would get for the day (today, UTC, unless said).
async fn tls_report(
    State(ctx): State<Arc<Services>>,
    Path(domain): Path<String>,
    Query(q): Query<ReportDay>,
) -> Response {
    use crate::egress::{mta_sts, tls_report};
    let day = match q.day {
        Some(d) if d.parse::<jiff::civil::Date>().is_ok() => d,
        Some(d) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidDay",
                format!("day {d:?} is not a date (YYYY-MM-DD)"),
            );
        }
        None => tls_report::day_of(ctx.store.now_ms()),
    };
    let policy = mta_sts::kept_policy(&ctx.store, &domain).await;
    match tls_report::report(
        &ctx.store,
        &domain,
        &day,
        &ctx.settings.server.hostname,
        policy.as_ref(),
    )
    .await
    {
        Ok(Some(r)) => Json(r).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "NoTlsSessions",
            format!("no connection to {domain}'s MX hosts was counted on {day}"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "StoreError",
            e.to_string(),
        ),
    }
}

/// `POST /admin/tls-reports/send`: sends the TLS reports due now,
/// yesterday's not sent yet and today's so far; answers what became of
/// each.
async fn tls_reports_send(State(ctx): State<Arc<Services>>) -> Response {
    let Some(sender) = ctx.tls_reports.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "TlsReportsUnavailable",
            "this node cannot send TLS reports (its HTTPS client could not be made; see its log)",
        );
    };
    Json(sender.send_now(&ctx).await).into_response()
}

#[derive(Deserialize)]
struct CreateKey {
    algorithm: Option<String>,
    selector: Option<String>,
}

async fn dkim_create(
    State(ctx): State<Arc<Services>>,
    Path(domain): Path<String>,
    Query(q): Query<CreateKey>,
) -> Response {
    if !crate::address::valid_domain(&domain) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValue.Domain",
            format!("{domain:?} is not a domain name"),
        );
    }
    let algorithm = match q.algorithm.as_deref() {
        None => ctx.settings.dkim.algorithm,
        Some(a) => match crate::config::DkimAlgorithm::parse(a) {
            Some(a) => a,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameterValue.Algorithm",
                    format!("algorithm {a:?} is not one of rsa, ed25519"),
                );
            }
        },
    };
    let selector = q
        .selector
        .unwrap_or_else(|| ctx.settings.dkim.selector.clone());
    match dkim::ensure_key(&ctx.store, &domain, &selector, algorithm).await {
        Ok(key) => {
            ctx.signers.clear();
            Json(key_json(&key)).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "DkimError",
            e.to_string(),
        ),
    }
}

fn account_error(e: crate::ses::accounts::AccountError) -> Response {
    use crate::ses::accounts::AccountError;
    let (status, code) = match &e {
        AccountError::InvalidName(_) => {
            (StatusCode::BAD_REQUEST, "InvalidParameterValue.AccountName")
        }
        AccountError::Exists(_) => (StatusCode::CONFLICT, "AccountExists"),
        AccountError::NotFound(_) => (StatusCode::NOT_FOUND, "AccountNotFound"),
        AccountError::Records(_) => (StatusCode::INTERNAL_SERVER_ERROR, "StoreError"),
    };
    error(status, code, e.to_string())
}

fn credentials_json(a: &crate::ses::accounts::AccountRecord) -> serde_json::Value {
    json!({"Account": a.name, "SecretId": a.secret_id, "SecretKey": a.secret_key})
}

async fn account_create(State(ctx): State<Arc<Services>>, Path(name): Path<String>) -> Response {
    match ctx.ses.create_account(&name).await {
        Ok(a) => {
            tracing::info!(account = %a.name, "account created");
            Json(credentials_json(&a)).into_response()
        }
        Err(e) => account_error(e),
    }
}

async fn accounts_list(State(ctx): State<Arc<Services>>) -> Response {
    match ctx.ses.list_accounts().await {
        Ok(list) => Json(
            list.iter()
                .map(|a| {
                    json!({
                        "Account": a.name,
                        "SecretId": a.secret_id,
                        "Disabled": a.disabled,
                        "CreatedTimestamp": a.created_at_ms / 1000,
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => account_error(e.into()),
    }
}

/// disable, enable, rotate-key.
async fn account_change(
    State(ctx): State<Arc<Services>>,
    Path((name, operation)): Path<(String, String)>,
) -> Response {
    let result = match operation.as_str() {
        "disable" => ctx.ses.set_account_disabled(&name, true).await,
        "enable" => ctx.ses.set_account_disabled(&name, false).await,
        "rotate-key" => ctx.ses.rotate_account_key(&name).await,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                "UnknownOperation",
                format!("{other:?} is not one of disable, enable, rotate-key"),
            );
        }
    };
    match result {
        Ok(a) => {
            tracing::info!(account = %a.name, %operation, "account changed");
            if operation == "rotate-key" {
                Json(credentials_json(&a)).into_response()
            } else {
                Json(json!({"Account": a.name, "Disabled": a.disabled})).into_response()
            }
        }
        Err(e) => account_error(e),
    }
}

async fn auth_blocked(State(ctx): State<Arc<Services>>) -> Response {
    match crate::intake::smtp::auth_throttle::list(&ctx.store).await {
        Ok(list) => Json(json!({ "blocked": list })).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "StoreError",
            e.to_string(),
        ),
    }
}

#[derive(Deserialize)]
struct Unblock {
    subject: String,
}

async fn auth_unblock(State(ctx): State<Arc<Services>>, Query(q): Query<Unblock>) -> Response {
    if !(q.subject.starts_with("ip:") || q.subject.starts_with("user:")) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValue.Subject",
            format!("{:?} is not ip:<address> or user:<name>", q.subject),
        );
    }
    match crate::intake::smtp::auth_throttle::unblock(&ctx.store, &q.subject).await {
        Ok(was_blocked) => {
            tracing::info!(subject = %q.subject, was_blocked, "AUTH block lifted by the operator");
            Json(json!({ "subject": q.subject, "was_blocked": was_blocked })).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "StoreError",
            e.to_string(),
        ),
    }
}

#[derive(Deserialize)]
struct Advance {
    ms: i64,
}

/// Moves the clock forward or back (`ms` < 0), when `server.test_clock`
/// allows it: a system clock stepped by an operator or NTP, for tests.
async fn clock_advance(State(ctx): State<Arc<Services>>, Query(q): Query<Advance>) -> Response {
    let clock = ctx.store.clock();
    match clock.jump(q.ms) {
        Ok(offset) => {
            tracing::warn!(by_ms = q.ms, offset_ms = offset, "clock moved (test clock)");
            Json(json!({"offset_ms": offset, "now_ms": clock.now_ms()})).into_response()
        }
        Err(e) => error(StatusCode::FORBIDDEN, "Forbidden", e.to_string()),
    }
}

#[derive(Deserialize)]
struct CallbackTarget {
    /// Empty clears it.
    #[serde(default)]
    url: String,
    /// A sender address of the account: its own URL instead of the account's.
    address: Option<String>,
}

/// Sets where an account's (or one sender address's) events are POSTed;
/// answers the URL and the account's signing secret.
async fn account_callback(
    State(ctx): State<Arc<Services>>,
    Path(name): Path<String>,
    Query(q): Query<CallbackTarget>,
) -> Response {
    if !q.url.is_empty() {
        let destinations =
            crate::outbound_http::Destinations::new(&ctx.settings.callbacks.allow_networks);
        if let Err(e) = destinations.check_url(&q.url, crate::feedback::callbacks::ALLOW_SETTING) {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValue.CallbackUrl",
                e.to_string(),
            );
        }
    }
    // The secret exists once the account has a callback of any kind.
    let account = match ctx.ses.account(&name).await {
        Ok(Some(a)) if q.address.is_some() => {
            if a.callback_secret.is_some() {
                Ok(a)
            } else {
                let url = a.callback_url.clone().unwrap_or_default();
                ctx.ses.set_account_callback(&name, &url).await
            }
        }
        Ok(Some(_)) => ctx.ses.set_account_callback(&name, &q.url).await,
        Ok(None) => Err(crate::ses::accounts::AccountError::NotFound(name.clone())),
        Err(e) => Err(e.into()),
    };
    let account = match account {
        Ok(a) => a,
        Err(e) => return account_error(e),
    };
    if let Some(address) = &q.address
        && let Err(e) = ctx.ses.set_address_callback(&name, address, &q.url).await
    {
        return error(StatusCode::NOT_FOUND, "AddressNotFound", e.to_string());
    }

    ctx.feedback.forget_routes();
    tracing::info!(account = %name, address = ?q.address, url = %q.url, "callback URL set");
    Json(json!({
        "Account": account.name,
        "Address": q.address,
        "CallbackUrl": q.url,
        "CallbackSecret": account.callback_secret,
    }))
    .into_response()
}
