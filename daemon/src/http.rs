//! The HTTP listener's routes, from the rooms that answer them: the SES
//! API (intake), the tracking and unsubscribe pages (feedback), the admin
//! endpoints and the metrics (ops), and health.

use crate::services::Services;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::sync::Arc;

pub fn router(ctx: Arc<Services>) -> Router {
    Router::new()
        .route(
            "/",
            axum::routing::post(crate::intake::api::tencent::handle),
        )
        .route("/healthz", get(health))
        .merge(crate::feedback::endpoints::routes())
        .merge(crate::ops::admin::routes(&ctx))
        .merge(crate::ops::scrape::routes())
        .merge(crate::ops::console::routes())
        .with_state(ctx)
}

async fn health(State(ctx): State<Arc<Services>>) -> Response {
    match ctx.store.queue_len().await {
        Ok(n) => {
            axum::Json(json!({"status": "ok", "store": ctx.store.backend_name(), "queued": n}))
                .into_response()
        }
        Err(e) => crate::ops::admin::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "StoreUnavailable",
            e.to_string(),
        ),
    }
}
