//! Small network helpers: CIDR matching for relay networks, the domain of
//! a mail address.

use std::net::IpAddr;

/// The lower-case domain of a mail address ("" when it has none).
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// The client a connection is counted as: its IPv4 address, or the /64 of
/// its IPv6 address (a host gets a whole /64).
pub fn client_net(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address (a host route).
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr {
            network: addr,
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Runs `flush` every `interval` until `stop`, then once more (so what was
/// gathered since the last round is not lost at a clean stop).
pub async fn flush_every<F, Fut>(
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
    mut flush: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => flush().await,
        }
    }
    flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_its_64() {
        assert_eq!(
            client_net("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(client_net("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(client_net("192.0.2.7".parse().unwrap()), "192.0.2.7");
    }

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(net.contains("127.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!net.contains("128.0.0.1".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let host = Cidr::parse("::1").unwrap();
        assert!(host.contains("::1".parse().unwrap()));
        assert!(!host.contains("::2".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nonsense").is_none());
    }
}

/// How many connections a listener (or several) may hold: in all, and per
/// client (an IPv6 client per /64; clients not counted one by one, a
/// relay network's, only in all).
pub struct ConnectionLimits {
    total: std::sync::Arc<tokio::sync::Semaphore>,
    per_client: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    max_per_client: usize,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooMany {
    InAll,
    FromClient,
}

/// A connection's place; given back when dropped.
pub struct ConnectionSlot {
    _total: tokio::sync::OwnedSemaphorePermit,
    client: Option<(std::sync::Arc<ConnectionLimits>, String)>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some((limits, client)) = self.client.take() {
            let mut map = limits.per_client.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&client);
                }
            }
        }
    }
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_client: usize) -> std::sync::Arc<ConnectionLimits> {
        std::sync::Arc::new(ConnectionLimits {
            total: std::sync::Arc::new(tokio::sync::Semaphore::new(max_total)),
            per_client: Default::default(),
            max_per_client,
        })
    }

    /// A slot for a new connection from `ip` (counted per client when
    /// `counted`), or why not.
    pub fn admit(
        self: &std::sync::Arc<Self>,
        ip: IpAddr,
        counted: bool,
    ) -> Result<ConnectionSlot, TooMany> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| TooMany::InAll)?;
        if !counted {
            return Ok(ConnectionSlot {
                _total: total,
                client: None,
            });
        }
        let client = client_net(ip);
        let mut map = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(client.clone()).or_insert(0);
        if *n >= self.max_per_client {
            return Err(TooMany::FromClient);
        }
        *n += 1;
        Ok(ConnectionSlot {
            _total: total,
            client: Some((self.clone(), client)),
        })
    }
}

/// Requests per client address in the current second.
#[derive(Default)]
pub struct RateLimiter {
    window: std::sync::Mutex<(i64, std::collections::HashMap<IpAddr, u32>)>,
}

impl RateLimiter {
    pub fn allow(&self, ip: IpAddr, per_second: u32) -> bool {
        let now = crate::clock::system_now_ms() / 1000;
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0 != now {
            *w = (now, std::collections::HashMap::new());
        }
        let n = w.1.entry(ip).or_default();
        *n += 1;
        *n <= per_second
    }
}
