//! The semantic checks of the settings: what deserialising cannot tell
//! (an address that does not parse, a limit of zero ...). Each problem
//! names its key.

use super::{Settings, StoreBackend};
use std::net::SocketAddr;
use std::time::Duration;

/// A problem for each entry of `list` (the key `key`) that is not a CIDR
/// network.
fn networks(list: &[String], key: &str, out: &mut Vec<String>) {
    for (i, net) in list.iter().enumerate() {
        if crate::net::Cidr::parse(net).is_none() {
            out.push(format!("{key}[{i}]: {net:?} is not a CIDR network"));
        }
    }
}

impl Settings {
    /// Every semantic problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, ns) in self.dns.nameservers.iter().enumerate() {
            if ns.parse::<SocketAddr>().is_err() {
                out.push(format!(
                    "dns.nameservers[{i}]: {ns:?} is not an ip:port address"
                ));
            }
        }
        for (i, a) in self.accounts.iter().enumerate() {
            if a.secret_id.is_some() != a.secret_key.is_some() {
                out.push(format!(
                    "accounts[{i}] ({}): secret_id and secret_key go together",
                    a.name
                ));
            }
        }
        if let Err(e) = self.policy.to_settings() {
            out.push(e);
        }
        if self.policy.states == 0 {
            out.push("policy.states: must be at least 1".into());
        }
        if self.policy.max_memory_mb < 4 {
            out.push("policy.max_memory_mb: must be at least 4".into());
        }
        if self.smtp.listeners.is_empty() {
            out.push("smtp.listeners: at least one listener is needed".into());
        }
        for (i, l) in self.smtp.listeners.iter().enumerate() {
            networks(
                &l.relay_networks,
                &format!("smtp.listeners[{i}].relay_networks"),
                &mut out,
            );
        }
        networks(
            &self.http.metrics_networks,
            "http.metrics_networks",
            &mut out,
        );
        networks(
            &self.callbacks.allow_networks,
            "callbacks.allow_networks",
            &mut out,
        );
        networks(
            &self.delivery.https_allow_networks,
            "delivery.https_allow_networks",
            &mut out,
        );
        networks(
            &self.smtp.literal_networks,
            "smtp.literal_networks",
            &mut out,
        );
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            out.push("http.tls_cert / http.tls_key: set both or neither".into());
        }
        if self.smtp.tls_cert.is_some() != self.smtp.tls_key.is_some() {
            out.push("smtp.tls_cert / smtp.tls_key: set both or neither".into());
        }
        if self.smtp.max_message_size == 0 {
            out.push("smtp.max_message_size: must be greater than 0".into());
        }
        if self.smtp.auth_max_failures_per_ip == 0 || self.smtp.auth_max_failures_per_user == 0 {
            out.push("smtp.auth_max_failures_per_ip / _per_user: must be at least 1".into());
        }
        if self.smtp.max_connections == 0 || self.smtp.max_connections_per_ip == 0 {
            out.push("smtp.max_connections / max_connections_per_ip: must be at least 1".into());
        }
        if self.smtp.max_recipients == 0 {
            out.push("smtp.max_recipients: must be greater than 0".into());
        }
        if self.smtp.max_line_length < 512 {
            out.push("smtp.max_line_length: RFC 5321 requires at least 512".into());
        }
        let redis_url = |u: &str| {
            u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("redis+unix://")
        };
        if self.store.backend == StoreBackend::Redis
            && self.store.redis_sentinels.is_empty()
            && self.store.redis_cluster.is_empty()
            && !redis_url(&self.store.redis_url)
        {
            out.push(format!(
                "store.redis_url: {:?} is not a redis:// URL",
                self.store.redis_url
            ));
        }
        for (i, s) in self.store.redis_cluster.iter().enumerate() {
            if !redis_url(s) || s.starts_with("redis+unix://") {
                out.push(format!(
                    "store.redis_cluster[{i}]: {s:?} is not a redis:// URL of a cluster node"
                ));
            }
        }
        if !self.store.redis_cluster.is_empty() && !self.store.redis_sentinels.is_empty() {
            out.push(
                "store.redis_cluster, store.redis_sentinels: a store is a Redis Cluster or a master Sentinel names, not both"
                    .into(),
            );
        }
        if self.store.redis_queue_shards > 1024 {
            out.push(format!(
                "store.redis_queue_shards: {} is more than 1024",
                self.store.redis_queue_shards
            ));
        }
        for (i, s) in self.store.redis_sentinels.iter().enumerate() {
            if !redis_url(s) {
                out.push(format!(
                    "store.redis_sentinels[{i}]: {s:?} is not a redis:// URL"
                ));
            }
        }
        if !self.store.redis_sentinels.is_empty() && self.store.redis_sentinel_master.is_empty() {
            out.push(
                "store.redis_sentinel_master: the name the Sentinels monitor the master by is needed with store.redis_sentinels"
                    .into(),
            );
        }
        if !(100..=600_000).contains(&self.store.redis_failover_timeout_ms) {
            out.push(format!(
                "store.redis_failover_timeout_ms: {} is not between 100 and 600000",
                self.store.redis_failover_timeout_ms
            ));
        }
        let from = &self.delivery.tls_report_from;
        if !from.is_empty() && crate::address::canonical(from, true).is_err() {
            out.push(format!(
                "delivery.tls_report_from: {from:?} is not an email address"
            ));
        }
        if self.delivery.mx_port == 0 {
            out.push("delivery.mx_port: must not be 0".into());
        }
        if self.delivery.max_connections_per_destination == 0 {
            out.push("delivery.max_connections_per_destination: must be greater than 0".into());
        }
        if self.delivery.max_in_flight == 0 {
            out.push("delivery.max_in_flight: must be greater than 0".into());
        }
        if self.queue.retry_schedule.is_empty() || self.queue.retry_schedule.contains(&0) {
            out.push("queue.retry_schedule: needs at least one delay, each > 0 seconds".into());
        }
        if self.queue.lease_time < Duration::from_secs(2) {
            out.push("queue.lease_time: must be at least 2 seconds".into());
        }
        if self.dkim.selector.is_empty() {
            out.push("dkim.selector: must not be empty".into());
        }
        for (i, a) in self.accounts.iter().enumerate() {
            if a.username.is_empty() || a.password.is_empty() {
                out.push(format!(
                    "accounts[{i}] ({}): username and password must not be empty",
                    a.name
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Settings::default().problems().is_empty());
    }
}
