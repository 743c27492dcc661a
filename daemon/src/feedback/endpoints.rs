//! `GET /t/o/{token}` (the open pixel) and `GET /t/c/{token}` (a tracked
//! link): on the public listener, so cheap and safe under abuse. A token
//! that does not verify is a 404 and records nothing; each client address
//! gets at most `tracking.rate_per_ip` requests a second (429 past that);
//! recording is one store write or two, done after the answer is sent.

use crate::rewrite::tracking::Mark;
use crate::services::Services;
use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;

/// A transparent 1×1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x01, 0x44, 0x00, 0x3b,
];

/// The client's User-Agent, at most 512 characters.
/// The public routes: the pixel, tracked links, the unsubscribe page.
pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/t/o/{token}", get(open))
        .route("/t/c/{token}", get(click))
        .route("/u/{token}", get(unsubscribe_page).post(unsubscribe_now))
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(512)
        .collect()
}

/// The mark of a token of `kind`, within the client's rate limit: 404 for a
/// token that does not verify (or an unsubscribe token without a
/// recipient), 429 past the limit.
fn verified(ctx: &Services, peer: SocketAddr, token: &str, kind: char) -> Result<Mark, StatusCode> {
    let tracker = ctx.tracker.as_ref().ok_or(StatusCode::NOT_FOUND)?;
    if !ctx
        .tracking_limiter
        .allow(peer.ip(), ctx.settings.tracking.rate_per_ip)
    {
        return Err(StatusCode::TOO_MANY_REQUESTS);
    }
    tracker
        .verify(token)
        .filter(|m| m.kind == kind && (kind != 'u' || !m.recipient.is_empty()))
        .ok_or(StatusCode::NOT_FOUND)
}

/// Checks the limit and the token; records in the background.
fn accept(
    ctx: &Arc<Services>,
    peer: SocketAddr,
    headers: &HeaderMap,
    token: &str,
    kind: char,
) -> Result<Mark, StatusCode> {
    let mark = verified(ctx, peer, token, kind)?;
    let user_agent = user_agent(headers);
    let ctx = ctx.clone();
    let recorded = mark.clone();
    tokio::spawn(async move {
        crate::feedback::engagement::record(&ctx, &recorded, peer.ip(), &user_agent).await;
    });
    Ok(mark)
}

pub async fn open(
    State(ctx): State<Arc<Services>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    match accept(&ctx, peer, &headers, &token, 'o') {
        Ok(_) => (
            [
                (header::CONTENT_TYPE, "image/gif"),
                (header::CACHE_CONTROL, "no-store, max-age=0"),
            ],
            PIXEL,
        )
            .into_response(),
        Err(status) => status.into_response(),
    }
}

pub async fn click(
    State(ctx): State<Arc<Services>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    match accept(&ctx, peer, &headers, &token, 'c') {
        Ok(mark) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, mark.url.as_str()),
                (header::CACHE_CONTROL, "no-store"),
            ],
        )
            .into_response(),
        Err(status) => status.into_response(),
    }
}

/// The unsubscribe pages: a form no other site may frame (a button
/// clicked through a page on top of it would unsubscribe), a token in the
/// URL that no link sends on.
fn html_page(status: StatusCode, body: String) -> Response {
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
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /u/{token}`: the confirmation page (a link may be followed by a
/// scanner; only a POST unsubscribes).
pub async fn unsubscribe_page(
    State(ctx): State<Arc<Services>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
) -> Response {
    let mark = match verified(&ctx, peer, &token, 'u') {
        Ok(m) => m,
        Err(status) => return status.into_response(),
    };
    let lang = mark.url.parse().unwrap_or(2);
    let domain = match ctx.store.status(&mark.message_id).await {
        Ok(Some(st)) => crate::net::domain_of(&st.meta.sender),
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    html_page(
        StatusCode::OK,
        crate::rewrite::unsubscribe::confirm_page(lang, &domain),
    )
}

/// `POST /u/{token}`: the page's button, or a mail provider's one-click
/// request (RFC 8058, body `List-Unsubscribe=One-Click`).
pub async fn unsubscribe_now(
    State(ctx): State<Arc<Services>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let mark = match verified(&ctx, peer, &token, 'u') {
        Ok(m) => m,
        Err(status) => return status.into_response(),
    };
    let user_agent = user_agent(&headers);
    let lang = mark.url.parse().unwrap_or(2);
    match crate::feedback::engagement::unsubscribe(&ctx, &mark, peer.ip(), &user_agent).await {
        Ok(Some(domain)) => html_page(
            StatusCode::OK,
            crate::rewrite::unsubscribe::done_page(lang, &domain),
        ),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe not recorded");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}
