//! `GET /metrics`: the node's metrics for Prometheus, answered to loopback
//! and to the networks `http.metrics_networks` names, refused (403) to any
//! other client. The gauges of what is rather than what happened (queue
//! entries by state, shaping state, jobs in delivery lines) are read here,
//! when scraped.

use crate::net::Cidr;
use crate::services::Services;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn routes() -> Router<Arc<Services>> {
    Router::new().route("/metrics", get(metrics))
}

/// Whether a client at `ip` may read the metrics.
pub fn may_read(ip: std::net::IpAddr, networks: &[String]) -> bool {
    ip.to_canonical().is_loopback()
        || networks
            .iter()
            .filter_map(|n| Cidr::parse(n))
            .any(|n| n.contains(ip))
}

async fn metrics(
    State(ctx): State<Arc<Services>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !may_read(peer.ip(), &ctx.settings.http.metrics_networks) {
        return super::admin::error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "metrics are answered to loopback and to http.metrics_networks only",
        );
    }
    let Some(m) = crate::metrics::get() else {
        return super::admin::error(
            StatusCode::NOT_FOUND,
            "MetricsOff",
            "metrics are turned off (http.metrics = false)",
        );
    };
    match ctx.store.queue_counts().await {
        Ok(c) => {
            for (state, n) in [("due", c.due), ("waiting", c.waiting), ("leased", c.leased)] {
                m.queue_entries
                    .get_or_create(&crate::metrics::QueueState { state })
                    .set(n as i64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: the queue could not be counted"),
    }
    ctx.egress.set_gauges();
    m.policy_states_stuck
        .set(crate::policy::stuck_states() as i64);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], m.render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_the_named_networks_only() {
        let nets = vec!["10.1.0.0/16".to_string()];
        assert!(may_read("127.0.0.1".parse().unwrap(), &[]));
        assert!(may_read("::1".parse().unwrap(), &[]));
        assert!(may_read("::ffff:127.0.0.1".parse().unwrap(), &[]));
        assert!(may_read("10.1.2.3".parse().unwrap(), &nets));
        assert!(!may_read("10.2.0.1".parse().unwrap(), &nets));
        assert!(!may_read("192.0.2.1".parse().unwrap(), &[]));
    }
}
