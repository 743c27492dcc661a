//! Who may use the admin endpoints: a process on this host (loopback) that
//! also shows an operator token (`ses::operators`: made by each node in its
//! data directory, accepted by every node on the same store). Loopback
//! alone is no fence: any local process, or a reverse proxy on this host,
//! connects from there.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::ses::operators::OperatorTokens;

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    super::admin::error(status, code, message)
}

/// Lets a request through to an admin endpoint only from loopback with
/// `Authorization: Bearer <token>`.
pub async fn guard(
    State(tokens): State<Arc<OperatorTokens>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if !peer.ip().is_loopback() {
        return refuse(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "admin endpoints answer on loopback only",
        );
    }
    let shown = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let accepted = match shown {
        Some(t) => tokens.accepts(t).await,
        None => false,
    };
    match accepted {
        true => next.run(request).await,
        false => {
            tracing::warn!(%peer, path = %request.uri().path(), "admin request without the operator token refused");
            refuse(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "admin endpoints need the operator token (Authorization: Bearer <token>; the kiln command reads it from the data directory's admin.token)",
            )
        }
    }
}
