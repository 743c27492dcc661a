//! How the store reaches Redis: one server, through redis-rs's connection
//! manager (it reconnects to that server); a Redis Cluster, through
//! redis-rs's cluster client (it follows `MOVED`/`ASK` and failovers, and
//! a pipeline is split here by slot, since a cluster runs each on one); or
//! the master Redis Sentinel names, followed across a failover: a command that finds its connection
//! gone, or the server a replica now (`READONLY`), asks the Sentinels for
//! the master again. A command the old server refused (a replica, no
//! connection) is sent to the new one; one whose answer was lost is not
//! sent twice (it may have run): its caller hears the error and answers
//! its client for now, as with one Redis that went away.

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use std::sync::Arc;
use std::time::Duration;

/// Tries of a command on a Redis Cluster that fill about `failover`: the
/// client waits about 0.1 s before each of the first tries, growing to
/// about 0.55 s (between 0.1 and 1 s) from the eighth on. The caller stops
/// waiting at `failover` in any case; the count keeps a request the caller
/// gave up on from being tried on inside the client much longer (a
/// question to a dead node, asked every second, would pile up).
fn cluster_retries(failover: Duration) -> u32 {
    let ms = failover.as_millis() as u64;
    7 + (ms.saturating_sub(1_110) / 550) as u32
}

/// Where the store's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (`store.redis_url`).
    Url(String),
    /// Seed nodes of a Redis Cluster (`store.redis_cluster`).
    Cluster(Vec<String>),
    /// The master `master` of the Sentinels at `sentinels`
    /// (`store.redis_sentinels`, `store.redis_sentinel_master`).
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

impl RedisTarget {
    /// For logs: the URL without its password, or the Sentinels and the
    /// master's name.
    pub fn describe(&self) -> String {
        match self {
            RedisTarget::Url(url) => crate::store::redacted_url(url),
            RedisTarget::Cluster(seeds) => format!(
                "the Redis Cluster of store.redis_cluster = {}",
                redacted_list(seeds)
            ),
            RedisTarget::Sentinel { sentinels, master } => format!(
                "store.redis_sentinel_master {master:?} of store.redis_sentinels = {}",
                redacted_list(sentinels)
            ),
        }
    }
}

/// URLs without their passwords, for logs.
fn redacted_list(urls: &[String]) -> String {
    urls.iter()
        .map(|u| crate::store::redacted_url(u))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    /// With how long a command is tried through a failover.
    Cluster(ClusterConnection, Duration),
    Sentinel(Arc<SentinelMaster>),
}

impl Conn {
    pub(super) async fn open(
        target: &RedisTarget,
        response_timeout: Duration,
        failover: Duration,
    ) -> RedisResult<Conn> {
        match target {
            RedisTarget::Url(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response_timeout));
                Ok(Conn::Single(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
            RedisTarget::Cluster(seeds) => {
                // A failover takes the cluster `cluster-node-timeout` (15 s
                // by default) and then some: a command is tried again for
                // `failover` (`store.redis_failover_timeout_ms`) before its
                // caller hears the error.
                let client = ClusterClientBuilder::new(seeds.clone())
                    .response_timeout(response_timeout)
                    .connection_timeout(Duration::from_secs(2))
                    .retries(cluster_retries(failover))
                    .min_retry_wait(100)
                    .max_retry_wait(1_000)
                    .build()?;
                Ok(Conn::Cluster(
                    client.get_async_connection().await?,
                    failover,
                ))
            }
            RedisTarget::Sentinel { sentinels, master } => {
                let client = SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    None,
                    SentinelServerType::Master,
                )?;
                let master = Arc::new(SentinelMaster {
                    client: tokio::sync::Mutex::new(client),
                    current: std::sync::RwLock::new(None),
                    made: std::sync::atomic::AtomicU64::new(0),
                    config: redis::AsyncConnectionConfig::new()
                        .set_response_timeout(Some(response_timeout)),
                    name: master.clone(),
                    failover,
                });
                master.reconnect(0).await?;
                Ok(Conn::Sentinel(master))
            }
        }
    }
}

/// The master a Sentinel names, and this node's connection to it.
pub(super) struct SentinelMaster {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection in use, with its generation (how many were made);
    /// none after one failed and no new one could be made.
    current: std::sync::RwLock<Option<(u64, MultiplexedConnection)>>,
    made: std::sync::atomic::AtomicU64,
    config: redis::AsyncConnectionConfig,
    name: String,
    /// How long a command the master refused is tried again, on the
    /// master the Sentinels name, before its caller hears the error.
    failover: Duration,
}

impl SentinelMaster {
    fn connection(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// A connection to the master as the Sentinels name it now, unless
    /// another caller made one since generation `failed` failed.
    async fn reconnect(&self, failed: u64) -> RedisResult<(u64, MultiplexedConnection)> {
        let mut client = self.client.lock().await;
        if let Some((generation, conn)) = self.connection().filter(|(g, _)| *g > failed) {
            return Ok((generation, conn));
        }
        let conn = match client.get_async_connection_with_config(&self.config).await {
            Ok(conn) => conn,
            Err(e) => {
                // The failed connection is of no more use: the next
                // command asks the Sentinels again.
                if let Ok(mut current) = self.current.write()
                    && current.as_ref().is_some_and(|(g, _)| *g <= failed)
                {
                    *current = None;
                }
                return Err(e);
            }
        };
        let generation = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Ok(mut current) = self.current.write() {
            *current = Some((generation, conn.clone()));
        }
        if generation > 1 {
            tracing::warn!(master = %self.name, "connected to the master the Sentinels name now");
            if let Some(m) = crate::metrics::get() {
                m.store_failovers.inc();
            }
        }
        Ok((generation, conn))
    }

    async fn ready(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        match self.connection() {
            Some(c) => Ok(c),
            None => self.reconnect(0).await,
        }
    }

    /// `send` on the master, and again on the master the Sentinels name
    /// after one that refused it (a replica now, gone, or none elected
    /// yet), with growing waits, for `failover` at most. One whose answer
    /// was lost is not sent twice (it may have run).
    async fn through_failover<T, F, Fut>(&self, send: F) -> RedisResult<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.failover;
        let mut wait = Duration::from_millis(100);
        let mut generation = 0;
        let mut done = match self.ready().await {
            Ok((g, conn)) => {
                generation = g;
                send(conn).await
            }
            Err(e) => Err(e),
        };
        loop {
            let e = match done {
                Err(e) if master_may_have_moved(&e) => e,
                done => return done,
            };
            let refused = not_run(&e);
            let next = self.reconnect(generation).await;
            if !refused {
                return Err(e);
            }
            if tokio::time::Instant::now() + wait > deadline {
                return next.and(Err(e));
            }
            match next {
                Ok((g, conn)) => {
                    generation = g;
                    done = send(conn).await;
                    if done.as_ref().is_err_and(not_run) {
                        tokio::time::sleep(wait).await;
                    }
                }
                Err(refused_again) if not_run(&refused_again) => {
                    tokio::time::sleep(wait).await;
                    done = Err(refused_again);
                }
                Err(other) => return Err(other),
            }
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }
}

/// `send`, given up after `failover` (a cluster client retries a refused
/// command until then): a timeout its caller hears, as from one server.
async fn within<T>(
    failover: Duration,
    send: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    match tokio::time::timeout(failover, send).await {
        Ok(done) => done,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no answer from the cluster within store.redis_failover_timeout_ms ({} ms)",
                failover.as_millis()
            ),
        ))),
    }
}

/// An error that says the command did not run: the server refused the
/// connection, or is a replica (or without a master) now.
fn not_run(e: &RedisError) -> bool {
    e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// An error after which the master may be elsewhere: the connection gone,
/// or the server a replica (or without a master) now.
fn master_may_have_moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// Counts a command that failed after the client's own retries.
fn counted<T>(done: RedisResult<T>) -> RedisResult<T> {
    // A script not loaded yet is loaded and run again: not a failure.
    if done
        .as_ref()
        .is_err_and(|e| e.kind() != ErrorKind::Server(ServerErrorKind::NoScript))
        && let Some(m) = crate::metrics::get()
    {
        m.store_errors.inc();
    }
    done
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move { counted(self.send_one(cmd).await) })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move { counted(self.send_many(pipeline, offset, count).await) })
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(..) | Conn::Sentinel(_) => 0,
        }
    }
}

impl Conn {
    fn send_one<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c, failover) => Box::pin(within(*failover, c.req_packed_command(cmd))),
            Conn::Sentinel(m) => Box::pin(m.through_failover(move |mut conn| async move {
                conn.req_packed_command(cmd).await
            })),
        }
    }

    fn send_many<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c, failover) => {
                if pipeline.is_transaction() {
                    Box::pin(within(
                        *failover,
                        c.req_packed_commands(pipeline, offset, count),
                    ))
                } else {
                    Box::pin(within(*failover, by_slot(c.clone(), pipeline)))
                }
            }
            Conn::Sentinel(m) => Box::pin(m.through_failover(move |mut conn| async move {
                conn.req_packed_commands(pipeline, offset, count).await
            })),
        }
    }
}

impl Conn {
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(..))
    }

    /// `cmd` sent to the master of the slot `key` hashes to (a command
    /// without a key of its own, such as `WAIT`, that must reach the
    /// server a write went to); anywhere but a cluster, to the one server.
    pub(super) async fn to_master_of<T: redis::FromRedisValue>(
        &self,
        key: &str,
        cmd: Cmd,
    ) -> RedisResult<T> {
        self.routed(cmd, || {
            SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master))
        })
        .await
    }

    /// `cmd` sent to the cluster node `host:port`.
    pub(super) async fn to_node<T: redis::FromRedisValue>(
        &self,
        host: &str,
        port: u16,
        cmd: Cmd,
    ) -> RedisResult<T> {
        self.routed(cmd, || SingleNodeRoutingInfo::ByAddress {
            host: host.to_string(),
            port,
        })
        .await
    }

    /// `cmd` sent where `route` says on a cluster; elsewhere to the one
    /// server.
    async fn routed<T: redis::FromRedisValue>(
        &self,
        cmd: Cmd,
        route: impl FnOnce() -> SingleNodeRoutingInfo,
    ) -> RedisResult<T> {
        match self {
            Conn::Cluster(c, failover) => {
                let value = within(
                    *failover,
                    c.clone()
                        .route_command(cmd, RoutingInfo::SingleNode(route())),
                )
                .await?;
                Ok(redis::from_redis_value(value)?)
            }
            other => cmd.query_async(&mut other.clone()).await,
        }
    }
}

/// The cluster slot of `key` (its hash tag's, if it has one).
pub(super) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16384
}

/// The key a command is routed by: its first argument, or for a script
/// the first of its keys.
fn routing_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let at = if name == b"EVAL" || name == b"EVALSHA" {
        (args.get(2)? != b"0").then_some(3)?
    } else {
        1
    };
    args.get(at).map(|k| k.to_vec())
}

/// A pipeline (not a transaction) on a Redis Cluster: one sub-pipeline per
/// slot, sent together; the answers in the pipeline's order.
async fn by_slot(conn: ClusterConnection, pipeline: &Pipeline) -> RedisResult<Vec<Value>> {
    let mut groups: Vec<(Option<u16>, Pipeline, Vec<usize>)> = Vec::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        let slot = routing_key(cmd).map(|k| slot_of(&k));
        let at = match groups.iter().position(|(s, ..)| *s == slot) {
            Some(at) => at,
            None => {
                groups.push((slot, redis::pipe(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[at].1.add_command(cmd.clone());
        groups[at].2.push(i);
    }
    let sent = groups.iter().map(|(_, pipe, _)| {
        let mut conn = conn.clone();
        async move { conn.req_packed_commands(pipe, 0, pipe.len()).await }
    });
    let answers = futures::future::try_join_all(sent).await?;
    let mut out = vec![Value::Nil; pipeline.len()];
    for ((_, _, places), values) in groups.iter().zip(answers) {
        for (at, v) in places.iter().zip(values) {
            out[*at] = v;
        }
    }
    Ok(out)
}
