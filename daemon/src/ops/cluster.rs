//! The Kiln nodes on one store, as `kiln cluster status` shows them: each
//! node files a heartbeat every few seconds (its id, version, start, the
//! leases it holds), kept for three heartbeats, so a node that stopped
//! drops out of the list by itself and one that stops cleanly leaves it at
//! once. With them, what the store's server says of itself (Redis: its
//! version, its role, the replicas connected).

use crate::services::Services;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a node files its heartbeat.
const EVERY: Duration = Duration::from_secs(5);
/// How long a heartbeat is kept: three missed ones and the node is gone.
const KEPT: Duration = Duration::from_secs(15);
/// The set of nodes that filed a heartbeat.
const NODES: &str = "cluster:nodes";

fn node_key(node: &str) -> String {
    format!("cluster:node:{node}")
}

/// One node's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub version: String,
    pub hostname: String,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
    /// Queue entries it holds leases on.
    pub leases_held: usize,
}

/// Files this node's heartbeat every [`EVERY`] until `stop`, then takes it
/// back.
pub async fn heartbeats(ctx: Arc<Services>, stop: CancellationToken) {
    let node = ctx.settings.node_id();
    let started_at_ms = ctx.store.now_ms();
    loop {
        let beat = Heartbeat {
            node: node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: ctx.settings.server.hostname.clone(),
            started_at_ms,
            heartbeat_at_ms: ctx.store.now_ms(),
            leases_held: ctx.store.leases_held(),
        };
        if let Err(e) = file(&ctx, &beat).await {
            tracing::warn!(error = %e, "the node's heartbeat was not filed");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
    let _ = ctx.store.set_remove(NODES, &node).await;
    let _ = ctx.store.delete(&node_key(&node)).await;
}

async fn file(ctx: &Services, beat: &Heartbeat) -> crate::store::Result<()> {
    let value = serde_json::to_vec(beat).unwrap_or_default();
    ctx.store
        .put(&node_key(&beat.node), &value, Some(KEPT))
        .await?;
    ctx.store.set_add(NODES, &beat.node, Some(KEPT)).await
}

/// The nodes whose heartbeat is current, by id.
pub async fn nodes(ctx: &Services) -> crate::store::Result<Vec<Heartbeat>> {
    let mut out = Vec::new();
    for node in ctx.store.set_members(NODES).await? {
        let Some(raw) = ctx.store.get(&node_key(&node)).await? else {
            continue;
        };
        if let Ok(beat) = serde_json::from_slice::<Heartbeat>(&raw) {
            out.push(beat);
        }
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(out)
}

/// `GET /admin/cluster`: the nodes and the store's server.
pub async fn status(State(ctx): State<Arc<Services>>) -> Response {
    let nodes = match nodes(&ctx).await {
        Ok(n) => n,
        Err(e) => {
            return super::admin::error(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "StoreUnavailable",
                e.to_string(),
            );
        }
    };
    let now = ctx.store.now_ms();
    let nodes: Vec<_> = nodes
        .into_iter()
        .map(|b| {
            json!({
                "node": b.node,
                "this": b.node == ctx.settings.node_id(),
                "version": b.version,
                "hostname": b.hostname,
                "started_at": crate::clock::format_ms(b.started_at_ms),
                "last_heartbeat_s": (now - b.heartbeat_at_ms).max(0) as f64 / 1000.0,
                "leases_held": b.leases_held,
            })
        })
        .collect();
    let server = match ctx.store.server_info().await {
        Ok(Some(fields)) => {
            json!(
                fields
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>()
            )
        }
        Ok(None) => json!(null),
        Err(e) => json!({ "error": e.to_string() }),
    };
    Json(json!({
        "store": ctx.store.backend_name(),
        "nodes": nodes,
        "server": server,
    }))
    .into_response()
}
