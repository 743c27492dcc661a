//! How the store reaches Redis: one server, through redis-rs's connection
//! manager (it reconnects to that server), or the master Redis Sentinel
//! names, followed across a failover: a command that finds its connection
//! gone, or the server a replica now (`READONLY`), asks the Sentinels for
//! the master again. A command the old server refused (a replica, no
//! connection) is sent to the new one; one whose answer was lost is not
//! sent twice (it may have run): its caller hears the error and answers
//! its client for now, as with one Redis that went away.

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use std::sync::Arc;
use std::time::Duration;

/// Where the store's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (`store.redis_url`).
    Url(String),
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
            RedisTarget::Sentinel { sentinels, master } => format!(
                "master {master:?} of the Sentinels {}",
                sentinels
                    .iter()
                    .map(|s| crate::store::redacted_url(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Sentinel(Arc<SentinelMaster>),
}

impl Conn {
    pub(super) async fn open(
        target: &RedisTarget,
        response_timeout: Duration,
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
                    config: redis::AsyncConnectionConfig::new()
                        .set_response_timeout(Some(response_timeout)),
                    name: master.clone(),
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
    /// The connection in use, with its generation (how many were made).
    current: std::sync::RwLock<Option<(u64, MultiplexedConnection)>>,
    config: redis::AsyncConnectionConfig,
    name: String,
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
        let conn = client
            .get_async_connection_with_config(&self.config)
            .await?;
        let generation = failed + 1;
        if let Ok(mut current) = self.current.write() {
            *current = Some((generation, conn.clone()));
        }
        if generation > 1 {
            tracing::warn!(master = %self.name, "connected to the master the Sentinels name now");
        }
        Ok((generation, conn))
    }

    async fn ready(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        match self.connection() {
            Some(c) => Ok(c),
            None => self.reconnect(0).await,
        }
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

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Sentinel(m) => Box::pin(async move {
                let (generation, mut conn) = m.ready().await?;
                match conn.req_packed_command(cmd).await {
                    Err(e) if master_may_have_moved(&e) => {
                        let (_, mut conn) = m.reconnect(generation).await?;
                        if !not_run(&e) {
                            return Err(e);
                        }
                        conn.req_packed_command(cmd).await
                    }
                    done => done,
                }
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(m) => Box::pin(async move {
                let (generation, mut conn) = m.ready().await?;
                match conn.req_packed_commands(pipeline, offset, count).await {
                    Err(e) if master_may_have_moved(&e) => {
                        let (_, mut conn) = m.reconnect(generation).await?;
                        if !not_run(&e) {
                            return Err(e);
                        }
                        conn.req_packed_commands(pipeline, offset, count).await
                    }
                    done => done,
                }
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Sentinel(_) => 0,
        }
    }
}
