//! The web console under `/console`, served by the daemon itself: HTML
//! with its style inline and charts drawn as SVG here (`chart`), so a page
//! needs nothing else, no build step and no CDN.
//!
//! Two kinds of sign-in (`session`): the operator, with the operator token
//! (`<data_dir>/admin.token`, printed by `kiln console token`), sees every
//! account and sender domain, the queue by provider with shaping state,
//! recent refusals and failures, the blocklist, and steers the queue; an
//! account, with its SecretId and SecretKey, sees its own sender domains,
//! statistics, templates and batch tasks, and nothing of any other
//! account's.

pub mod chart;
mod pages;
mod session;

use crate::services::Services;
use axum::Router;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use session::{Session, Who};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/console", get(home))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/queue", post(queue_action))
        .route("/console/domain", post(domain_action))
}

/// Queue entries the operator's page groups by provider at most.
const SCAN_AT_MOST: u64 = 50_000;
/// Days the charts show.
const DAYS: i64 = 30;
/// A failed sign-in is answered this much later (guessing is slow).
const FAILED_SIGN_IN_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

fn page(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'",
            ),
        ],
        Html(html),
    )
        .into_response()
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut r = (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, to.to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::REFERRER_POLICY, "no-referrer".to_string()),
        ],
    )
        .into_response();
    if let Some(c) = cookie
        && let Ok(v) = c.parse()
    {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize, Default)]
struct HomeQuery {
    blocklist: Option<String>,
    done: Option<String>,
}

async fn home(
    State(ctx): State<Arc<Services>>,
    headers: HeaderMap,
    Query(q): Query<HomeQuery>,
) -> Response {
    let Some((_, session)) = signed_in(&ctx, &headers).await else {
        return page(StatusCode::OK, pages::sign_in(None));
    };
    let html = match &session.who {
        Who::Operator(_) => operator_page(&ctx, &session, &q).await,
        Who::Account(name) => account_page(&ctx, &session, name).await,
    };
    page(StatusCode::OK, html)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    secret_id: String,
    #[serde(default)]
    secret_key: String,
}

/// Whether a form was posted from the console's own pages: a browser says
/// where a POST comes from (`Sec-Fetch-Site`, `Origin`); a client that
/// says nothing is no browser another site could drive.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = text(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = reqwest::Url::parse(origin) else {
        return false;
    };
    let authority = match (origin.host_str(), origin.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => return false,
    };
    text(header::HOST).is_some_and(|h| h.eq_ignore_ascii_case(&authority))
}

async fn login(
    State(ctx): State<Arc<Services>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    use crate::intake::smtp::auth_throttle;
    if !same_origin(&headers) {
        tracing::warn!(target: "kiln::ops", peer = %peer.ip(), "console sign-in from another site refused");
        return page(
            StatusCode::FORBIDDEN,
            pages::sign_in(Some("Sign in from the console's own page.")),
        );
    }
    // Counted with SMTP AUTH's failures: per client address and per name.
    let user = if f.token.is_empty() {
        format!("console:{}", f.secret_id.trim())
    } else {
        "console:operator".to_string()
    };
    let smtp = &ctx.settings.smtp;
    match auth_throttle::blocked(&ctx.store, smtp, Some(peer.ip()), &user).await {
        Ok(None) => {}
        Ok(Some(subject)) => {
            tracing::warn!(target: "kiln::ops", %subject, "console sign-in refused: too many failures");
            return page(
                StatusCode::TOO_MANY_REQUESTS,
                pages::sign_in(Some(
                    "Too many failed sign-ins from here or for this account: try again later.",
                )),
            );
        }
        Err(e) => {
            tracing::error!(target: "kiln::ops", error = %e, "console sign-in: failures could not be read");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::sign_in(Some("Sign-in is not available now: try again shortly.")),
            );
        }
    }
    let who = if !f.token.is_empty() {
        ctx.admin_tokens.accepts(f.token.trim()).await.then(|| {
            Who::Operator(crate::ses::operators::OperatorTokens::hash_of(
                f.token.trim(),
            ))
        })
    } else if !f.secret_id.is_empty() {
        account_for(&ctx, f.secret_id.trim(), f.secret_key.trim())
            .await
            .map(Who::Account)
    } else {
        None
    };
    let Some(who) = who else {
        tracing::warn!(target: "kiln::ops", peer = %peer.ip(), "console sign-in refused");
        let delay = auth_throttle::failed(&ctx.store, smtp, Some(peer.ip()), &user)
            .await
            .unwrap_or_default();
        tokio::time::sleep(delay.max(FAILED_SIGN_IN_DELAY)).await;
        return page(
            StatusCode::UNAUTHORIZED,
            pages::sign_in(Some(
                "That token, or that SecretId and SecretKey, is not right.",
            )),
        );
    };
    let Some(grant) = grant_of(&ctx, &who).await else {
        return page(
            StatusCode::UNAUTHORIZED,
            pages::sign_in(Some("That account may not sign in.")),
        );
    };
    match session::create(&ctx.store, who.clone(), grant).await {
        Ok((id, _)) => {
            tracing::info!(target: "kiln::ops", who = ?who, "console sign-in");
            redirect(
                "/console",
                Some(session::set_cookie(&id, session::over_tls(&headers))),
            )
        }
        Err(e) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::sign_in(Some(&format!("The store cannot be reached: {e}"))),
        ),
    }
}

/// The account whose API key this is (enabled ones only).
/// The credentials `who` signs in with now, as a fingerprint; None when
/// it may not sign in at all (an account gone or disabled).
async fn grant_of(ctx: &Services, who: &Who) -> Option<String> {
    match who {
        Who::Operator(token) => ctx
            .admin_tokens
            .accepts_hash(token)
            .await
            .then(|| crate::digest::fingerprint(&["operator", token])),
        Who::Account(name) => {
            if let Some(a) = ctx.settings.accounts.iter().find(|a| a.name == *name) {
                let (id, key) = (a.secret_id.as_deref()?, a.secret_key.as_deref()?);
                return Some(crate::digest::fingerprint(&["account", name, id, key]));
            }
            let a = ctx.ses.account(name).await.ok()??;
            (!a.disabled).then(|| {
                crate::digest::fingerprint(&["account", name, &a.secret_id, &a.secret_key])
            })
        }
    }
}

/// The session the request's cookie names, if it is one and its
/// credentials still stand (else it is ended here).
async fn signed_in(ctx: &Services, headers: &HeaderMap) -> Option<(String, Session)> {
    let (id, session) = session::load(&ctx.store, headers).await?;
    if grant_of(ctx, &session.who).await.as_deref() == Some(session.grant.as_str()) {
        return Some((id, session));
    }
    tracing::info!(target: "kiln::ops", who = ?session.who, "console session ended: its credentials changed, or the account was disabled");
    session::end(&ctx.store, &id).await;
    None
}

async fn account_for(ctx: &Services, secret_id: &str, secret_key: &str) -> Option<String> {
    use crate::ses::config_accounts::constant_time_eq;
    if let Some((key, account)) = ctx.accounts().api_key(secret_id) {
        return constant_time_eq(key.as_bytes(), secret_key.as_bytes())
            .then(|| account.name.clone());
    }
    let a = ctx.ses.account_by_secret_id(secret_id).await.ok()??;
    (!a.disabled && constant_time_eq(a.secret_key.as_bytes(), secret_key.as_bytes()))
        .then_some(a.name)
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(ctx): State<Arc<Services>>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some((id, session)) = signed_in(&ctx, &headers).await
        && csrf_ok(&session, &f.csrf)
    {
        session::end(&ctx.store, &id).await;
    }
    redirect(
        "/console",
        Some(session::set_cookie("", session::over_tls(&headers))),
    )
}

fn csrf_ok(session: &Session, shown: &str) -> bool {
    crate::ses::config_accounts::constant_time_eq(session.csrf.as_bytes(), shown.as_bytes())
}

#[derive(Deserialize)]
struct QueueForm {
    #[serde(default)]
    csrf: String,
    action: String,
    select: String,
    #[serde(default)]
    reason: String,
}

/// Who posted an operator's form, for the log: None (and the page to
/// answer) when it is not the operator's, or the form is stale.
async fn operator_form(
    ctx: &Services,
    headers: &HeaderMap,
    peer: std::net::SocketAddr,
    csrf: &str,
    what: &str,
) -> Result<String, Response> {
    let Some((_, session)) = signed_in(ctx, headers).await else {
        return Err(redirect("/console", None));
    };
    if !matches!(session.who, Who::Operator(_)) {
        return Err(page(
            StatusCode::FORBIDDEN,
            pages::message(&format!("Only the operator {what}.")),
        ));
    }
    if !csrf_ok(&session, csrf) {
        return Err(page(
            StatusCode::FORBIDDEN,
            pages::message("The form is stale: reload the page and try again."),
        ));
    }
    Ok(format!("operator (console) from {}", peer.ip()))
}

async fn queue_action(
    State(ctx): State<Arc<Services>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<QueueForm>,
) -> Response {
    let by = match operator_form(&ctx, &headers, peer, &f.csrf, "steers the queue").await {
        Ok(by) => by,
        Err(answer) => return answer,
    };
    let done = super::queue_control::act(&ctx, &f.action, &f.select, &f.reason, &by).await;
    let text = match done {
        Ok(v) => format!("{} {}: {}", f.action, f.select, v),
        Err(why) => format!("{} {}: refused: {why}", f.action, f.select),
    };
    redirect(&format!("/console?done={}", url_encode(&text)), None)
}

#[derive(Deserialize)]
struct DomainForm {
    #[serde(default)]
    csrf: String,
    domain: String,
    /// set-level, set-quota or reset.
    action: String,
    #[serde(default)]
    value: String,
}

async fn domain_action(
    State(ctx): State<Arc<Services>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<DomainForm>,
) -> Response {
    let by = match operator_form(&ctx, &headers, peer, &f.csrf, "sets a domain's reputation").await
    {
        Ok(by) => by,
        Err(answer) => return answer,
    };
    let value = f.value.trim();
    let number = if f.action == "reset" {
        Ok(None)
    } else {
        value
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("{value:?} is not a whole number"))
    };
    let text = match number {
        Err(why) => format!("{} {}: refused: {why}", f.action, f.domain),
        Ok(n) => {
            let (level, quota) = match f.action.as_str() {
                "set-level" => (n, None),
                _ => (None, n),
            };
            match super::domains::apply(&ctx, &f.domain, &f.action, level, quota, &by).await {
                Ok(v) => format!(
                    "{} {}: level {}, daily quota {}",
                    f.action, f.domain, v["level"], v["daily_limit"]
                ),
                Err(
                    super::domains::Refused::Bad(_, why) | super::domains::Refused::Unreadable(why),
                ) => format!("{} {}: refused: {why}", f.action, f.domain),
            }
        }
    };
    redirect(&format!("/console?done={}", url_encode(&text)), None)
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A sender domain as the console shows it.
pub struct DomainRow {
    pub account: String,
    pub domain: String,
    pub verified: bool,
    pub level: i64,
    pub quota: i64,
    /// Why the policy cannot read the domain's state (it then sends
    /// nothing until repaired).
    pub problem: Option<String>,
    pub sent_today: i64,
    pub warmup: Option<WarmupCap>,
}

/// Today's warm-up cap of a domain, as the `warmup_limit` hook says.
pub struct WarmupCap {
    pub day: i64,
    pub cap: i64,
    /// The trigger types and scenarios it holds back (empty: every message).
    pub applies_to: Vec<String>,
}

async fn domain_rows(ctx: &Services, accounts: &[String]) -> Vec<DomainRow> {
    let now = ctx.store.now_ms();
    let today = ctx.ses.day(now);
    let mut rows = Vec::new();
    for account in accounts {
        let Ok(identities) = ctx.ses.list_identities(account).await else {
            continue;
        };
        for i in identities {
            let (level, quota, problem) = match ctx.ses.reputation(account, &i.domain).await {
                Ok((level, quota)) => (level, quota, None),
                Err(why) => (0, 0, Some(why)),
            };
            let sent_today = ctx
                .stats
                .day_counts(&i.domain, &today, None)
                .await
                .map(|c| c[1])
                .unwrap_or(0);
            let query = crate::policy::decisions::WarmupQuery {
                identity: i.domain.clone(),
                now,
            };
            let warmup = ctx
                .policy
                .call(crate::policy::hooks::WarmupLimit, &query)
                .await
                .ok()
                .flatten()
                .and_then(|v| {
                    let mut applies_to: Vec<String> = match &v.applies_to {
                        Some(Value::Object(set)) => set
                            .iter()
                            .filter(|(_, on)| on.as_bool() == Some(true))
                            .map(|(k, _)| k.clone())
                            .collect(),
                        Some(Value::Array(list)) => list
                            .iter()
                            .filter_map(|k| k.as_str().map(str::to_string))
                            .collect(),
                        _ => Vec::new(),
                    };
                    applies_to.sort();
                    // A cap too large to be one (math.huge) is no cap.
                    let cap = Some(v.cap).filter(|c| c.is_finite() && *c < 1e15)?;
                    Some(WarmupCap {
                        day: v.day? as i64,
                        cap: cap as i64,
                        applies_to,
                    })
                });
            rows.push(DomainRow {
                account: account.clone(),
                domain: i.domain,
                verified: i.verified,
                level,
                quota,
                problem,
                sent_today,
                warmup,
            });
        }
    }
    rows
}

/// Daily counts over the last [`DAYS`] days, summed over `domains`.
pub struct Daily {
    pub labels: Vec<String>,
    pub accepted: Vec<f64>,
    pub delivered: Vec<f64>,
    pub bounced: Vec<f64>,
    pub opened: Vec<f64>,
    pub complaints: Vec<f64>,
}

async fn daily(ctx: &Services, domains: &[String]) -> Daily {
    let now = ctx.store.now_ms();
    let mut d = Daily {
        labels: Vec::new(),
        accepted: Vec::new(),
        delivered: Vec::new(),
        bounced: Vec::new(),
        opened: Vec::new(),
        complaints: Vec::new(),
    };
    for back in (0..DAYS).rev() {
        let day = ctx.ses.day(now - back * 86_400_000);
        let mut counts = [0i64; 7];
        let mut complaints = 0usize;
        for domain in domains {
            if let Ok(c) = ctx.stats.day_counts(domain, &day, None).await {
                for (sum, n) in counts.iter_mut().zip(c) {
                    *sum += n;
                }
            }
            complaints += ctx.ses.abuse_count(domain, &day).await.unwrap_or(0);
        }
        d.labels.push(day.get(5..).unwrap_or(&day).to_string());
        d.accepted.push(counts[1] as f64);
        d.delivered.push(counts[2] as f64);
        d.bounced.push(counts[3] as f64);
        d.opened.push(counts[4] as f64);
        d.complaints.push(complaints as f64);
    }
    d
}

async fn all_accounts(ctx: &Services) -> Vec<String> {
    let mut names: Vec<String> = ctx
        .ses
        .list_accounts()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.name)
        .collect();
    names.extend(ctx.accounts().names());
    names.sort();
    names.dedup();
    names
}

async fn operator_page(ctx: &Services, session: &Session, q: &HomeQuery) -> String {
    let accounts = all_accounts(ctx).await;
    let rows = domain_rows(ctx, &accounts).await;
    let domains: Vec<String> = rows.iter().map(|r| r.domain.clone()).collect();
    let daily = daily(ctx, &domains).await;
    // Grouping by provider reads every entry: on a large queue the page
    // shows the counts by state and leaves the rest to `kiln queue summary`.
    let summary = match ctx.store.queue_len().await {
        Ok(n) if n <= SCAN_AT_MOST => super::queue_control::summarize(ctx, "provider").await.ok(),
        _ => None,
    };
    let (queue, suspensions) = match summary {
        Some(summary) => (summary.groups, summary.suspensions),
        None => {
            let groups = match ctx.store.queue_counts().await {
                Ok(c) => vec![json!({
                    "key": "(all; kiln queue summary --by provider for each)",
                    "count": c.due + c.waiting + c.leased,
                    "due": c.due,
                    "waiting": c.waiting,
                    "leased": c.leased,
                    "suspended": "—",
                    "oldest_age_s": "—",
                })],
                Err(_) => Vec::new(),
            };
            let rules = ctx.queue.controls().rules();
            let suspensions = rules
                .iter()
                .filter(|r| r.action == crate::queue::control::Action::Suspend)
                .map(|r| {
                    json!({
                        "select": r.select.to_string(),
                        "by": r.by,
                        "since": crate::clock::format_ms(r.at_ms),
                        "holds": null,
                    })
                })
                .collect();
            (groups, suspensions)
        }
    };
    let shaping = ctx.egress.shaping().await;
    let recent = crate::feedback::recent::list();
    let tls_failures =
        crate::egress::tls_report::failures_over(&ctx.store, ctx.store.now_ms(), 7, 50)
            .await
            .unwrap_or_default();
    let blocklist = match q
        .blocklist
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        Some(address) => Some((
            address.to_string(),
            ctx.ses.blocklist_entry(address).await.ok().flatten(),
        )),
        None => None,
    };
    pages::operator(&pages::OperatorView {
        csrf: &session.csrf,
        rows: &rows,
        daily: &daily,
        queue: &queue,
        suspensions: &suspensions,
        shaping: &shaping,
        recent: &recent,
        tls_failures: &tls_failures,
        blocklist,
        done: q.done.as_deref(),
    })
}

async fn account_page(ctx: &Services, session: &Session, account: &str) -> String {
    let rows = domain_rows(ctx, &[account.to_string()]).await;
    let domains: Vec<String> = rows.iter().map(|r| r.domain.clone()).collect();
    let daily = daily(ctx, &domains).await;
    let templates = ctx.ses.list_templates(account).await.unwrap_or_default();
    let tasks = ctx.ses.list_tasks(account).await.unwrap_or_default();
    pages::account(&pages::AccountView {
        account,
        csrf: &session.csrf,
        rows: &rows,
        daily: &daily,
        templates: &templates,
        tasks: &tasks,
    })
}
