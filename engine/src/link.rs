//! Redis connections for the hot path: one Redis, or a Redis Cluster.
//!
//! One Redis: requests share a few multiplexed connections instead of checking one
//! out each: an exclusive check-out serialises requests that one multiplexed
//! connection would pipeline, and deadpool's check-out pings the connection every
//! time. deadpool still owns the connections' life-cycle: it creates them (with a
//! connect timeout), and a connection that fails is taken out of its slot and
//! replaced from the pool.
//!
//! A Redis Cluster (`redis.cluster_nodes`): the `redis` crate's async cluster client,
//! itself multiplexed over one connection per node; it learns the slot map from the
//! seeds and follows MOVED/ASK. Every script names keys of one hash slot (see
//! `keys.rs`). A pipeline must stay in one slot there too, so the reads that span
//! campaigns go through [`RedisLink::each`], which pipelines on one Redis and sends the
//! commands side by side on a cluster.
//!
//! Either way every call is bounded by `redis.call_timeout_ms`.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};
use deadpool_redis::{Connection, Manager, Pool, Runtime};

use common::config::RedisSettings;

use crate::error::{EngineError, Result};

/// The cluster client's own retries: none. It retries a command after an I/O error
/// or a timeout too, and a script that ran but whose reply was lost would then run
/// twice (a launch would answer "exists", a unit move would take twice). A failed
/// call is `Unavailable` (503) instead, and the client that retries with its
/// idempotency key is the one that decides. A MOVED still refreshes the slot map,
/// so only the call that met a slot migration fails.
const CLUSTER_RETRIES: u32 = 0;

/// Commands of one [`RedisLink::each`] round trip at most: a bound on a pipeline's
/// size (one Redis) and on the commands in flight at once (a cluster).
pub const EACH_MAX: usize = 500;

/// A connection to one Redis or to a Redis Cluster: what each call runs on.
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
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
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// `WAIT n timeout_ms`: on this very connection (one Redis: it counts this client's
    /// writes), or on the master serving `slot` (a cluster: the node connection the
    /// slot's script ran on). Returns how many replicas acknowledged.
    async fn wait_replicas(&mut self, slot: u16, n: u32, timeout_ms: u64) -> RedisResult<i64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(n).arg(timeout_ms);
        match self {
            Conn::Single(c) => wait.query_async(c).await,
            Conn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                    slot,
                    SlotAddr::Master,
                )));
                Ok(redis::from_redis_value(c.route_command(wait, to).await?)?)
            }
        }
    }
}

/// Opens one connection as the settings say (one Redis or the cluster): for tools and
/// tests that look under the engine.
pub async fn connect(settings: &RedisSettings) -> RedisResult<Conn> {
    let seeds = settings.cluster_seeds();
    if seeds.is_empty() {
        let client = redis::Client::open(settings.url.as_str())?;
        Ok(Conn::Single(client.get_multiplexed_async_connection().await?))
    } else {
        Ok(Conn::Cluster(cluster_client(&seeds, settings)?.get_async_connection().await?))
    }
}

fn cluster_client(seeds: &[String], s: &RedisSettings) -> RedisResult<ClusterClient> {
    ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(Duration::from_millis(s.connect_timeout_ms))
        .response_timeout(Duration::from_millis(s.call_timeout_ms))
        .retries(CLUSTER_RETRIES)
        .build()
}

enum Backend {
    Single { pool: Pool, slots: Box<[Mutex<Option<Connection>>]>, next: AtomicUsize },
    Cluster { client: Box<ClusterClient>, conn: Mutex<Option<ClusterConnection>>, connect_timeout: Duration },
}

/// Shared connections with a timeout on every call.
pub struct RedisLink {
    backend: Backend,
    call_timeout: Duration,
    /// Replicas a change must reach before it is answered (0: none), and how long it waits.
    replica_acks: u32,
    replica_ack_timeout_ms: u64,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Single { slots, .. } => {
                f.debug_struct("RedisLink").field("slots", &slots.len()).finish()
            }
            Backend::Cluster { .. } => f.debug_struct("RedisLink").field("cluster", &true).finish(),
        }
    }
}

impl RedisLink {
    /// Builds the link; no connection is made until the first call.
    pub fn new(settings: &RedisSettings) -> Result<Self> {
        let call_timeout = Duration::from_millis(settings.call_timeout_ms);
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
        let seeds = settings.cluster_seeds();
        let backend = if seeds.is_empty() {
            Self::single(&settings.url, settings.connections, call_timeout, connect_timeout)?
        } else {
            Backend::Cluster {
                client: Box::new(cluster_client(&seeds, settings)?),
                conn: Mutex::new(None),
                connect_timeout,
            }
        };
        Ok(Self {
            backend,
            call_timeout,
            replica_acks: settings.replica_acks,
            replica_ack_timeout_ms: settings.replica_ack_timeout_ms,
        })
    }

    fn single(
        url: &str,
        connections: usize,
        call_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Backend> {
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(call_timeout));
        let manager = Manager::new_with_config(url, conn_config)?;
        let pool = Pool::builder(manager)
            .max_size(connections.max(1) * 2)
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(call_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| EngineError::Unavailable(format!("redis pool: {e}")))?;
        let slots = (0..connections.max(1)).map(|_| Mutex::new(None)).collect();
        Ok(Backend::Single { pool, slots, next: AtomicUsize::new(0) })
    }

    /// Whether this link talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// Runs one Redis exchange on a shared connection, bounded by the call timeout.
    /// A connection that failed is dropped, so the next call gets a new one.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (conn, slot) = self.lease().await?;
        self.bounded(conn, slot, f).await
    }

    /// [`RedisLink::call`] for an exchange that changes state in hash slot `slot`:
    /// with `redis.replica_acks` ≥ 1 it returns only once that many replicas hold the
    /// change (`WAIT` on the connection, or the node, that made it). Not acknowledged
    /// in time: `Unavailable` (503). The change may or may not survive a failover then,
    /// and the client's retry with its idempotency key finds out which.
    pub async fn call_acked<T, F, Fut>(&self, slot: u16, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (conn, lease) = self.lease().await?;
        let value = self.bounded(conn.clone(), lease, f).await?;
        if self.replica_acks == 0 {
            return Ok(value);
        }
        let (n, timeout_ms) = (self.replica_acks, self.replica_ack_timeout_ms);
        let acked = self
            .bounded(conn, lease, |mut c| async move { c.wait_replicas(slot, n, timeout_ms).await })
            .await?;
        if acked < i64::from(n) {
            return Err(EngineError::Unavailable(format!(
                "{acked} of {n} replicas acknowledged the change within {timeout_ms} ms"
            )));
        }
        Ok(value)
    }

    /// Whether changes wait for replicas (`redis.replica_acks` ≥ 1).
    pub fn acks_replicas(&self) -> bool {
        self.replica_acks > 0
    }

    async fn bounded<T, F, Fut>(&self, conn: Conn, slot: usize, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match tokio::time::timeout(self.call_timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if self.is_cluster() {
                    // The slot map moved under us (a failover): a fresh cluster
                    // connection learns it from the seeds. A node that failed alone
                    // keeps the rest (see `discard`).
                    if matches!(e.retry_method(), redis::RetryMethod::MovedRedirect) {
                        self.rebuild_cluster_connection();
                    }
                } else if is_connection_fault(&e) {
                    self.discard(slot);
                }
                Err(e.into())
            }
            Err(_) => {
                self.discard(slot);
                Err(EngineError::Unavailable(format!(
                    "redis call timed out after {} ms",
                    self.call_timeout.as_millis()
                )))
            }
        }
    }

    /// Runs independent commands and returns their replies in order, [`EACH_MAX`] at a
    /// time: one pipeline on one Redis; on a cluster, where a pipeline must stay in one
    /// slot, each command on its own, a chunk in flight at once. Every command must
    /// name one key (or none).
    pub async fn each<T: FromRedisValue>(&self, commands: Vec<Cmd>) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(commands.len());
        let mut commands = commands.into_iter().peekable();
        while commands.peek().is_some() {
            let chunk: Vec<Cmd> = commands.by_ref().take(EACH_MAX).collect();
            out.extend(self.each_chunk::<T>(chunk).await?);
        }
        Ok(out)
    }

    /// [`RedisLink::each`] where one command failing does not fail the others (on a
    /// cluster, a node out of reach costs only its own commands): one result per
    /// command. On one Redis they stand or fall together, as one pipeline.
    pub async fn each_settled<T: FromRedisValue>(&self, commands: Vec<Cmd>) -> Vec<Result<T>> {
        if !self.is_cluster() {
            let n = commands.len();
            return match self.each::<T>(commands).await {
                Ok(replies) => replies.into_iter().map(Ok).collect(),
                Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
            };
        }
        let mut out = Vec::with_capacity(commands.len());
        let mut commands = commands.into_iter().peekable();
        while commands.peek().is_some() {
            let calls = commands
                .by_ref()
                .take(EACH_MAX)
                .map(|cmd| self.call(move |mut c| async move { cmd.query_async::<T>(&mut c).await }));
            out.extend(futures_util::future::join_all(calls).await);
        }
        out
    }

    async fn each_chunk<T: FromRedisValue>(&self, commands: Vec<Cmd>) -> Result<Vec<T>> {
        if self.is_cluster() {
            self.call(|c| async move {
                let calls = commands.into_iter().map(|cmd| {
                    let mut c = c.clone();
                    async move { cmd.query_async::<T>(&mut c).await }
                });
                futures_util::future::try_join_all(calls).await
            })
            .await
        } else {
            let mut pipe = redis::pipe();
            for cmd in commands {
                pipe.add_command(cmd);
            }
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await
        }
    }

    async fn lease(&self) -> Result<(Conn, usize)> {
        match &self.backend {
            Backend::Single { pool, slots, next } => {
                let slot = next.fetch_add(1, Ordering::Relaxed) % slots.len();
                if let Some(conn) = lock(&slots[slot]).as_ref() {
                    return Ok((Conn::Single(MultiplexedConnection::clone(conn)), slot));
                }
                let fresh =
                    pool.get().await.map_err(|e| EngineError::Unavailable(format!("redis connect: {e}")))?;
                let mut guard = lock(&slots[slot]);
                let conn = guard.get_or_insert(fresh);
                Ok((Conn::Single(MultiplexedConnection::clone(conn)), slot))
            }
            Backend::Cluster { client, conn, connect_timeout } => {
                if let Some(c) = lock(conn).as_ref() {
                    return Ok((Conn::Cluster(c.clone()), 0));
                }
                let fresh = tokio::time::timeout(*connect_timeout, client.get_async_connection())
                    .await
                    .map_err(|_| EngineError::Unavailable("redis cluster connect timed out".into()))?
                    .map_err(|e| EngineError::Unavailable(format!("redis cluster connect: {e}")))?;
                let mut guard = lock(conn);
                let c = guard.get_or_insert(fresh);
                Ok((Conn::Cluster(c.clone()), 0))
            }
        }
    }

    /// Drops the cluster connection: the next call makes a new one, with the slot map
    /// as the seeds tell it now.
    fn rebuild_cluster_connection(&self) {
        if let Backend::Cluster { conn, .. } = &self.backend {
            lock(conn).take();
        }
    }

    fn discard(&self, slot: usize) {
        match &self.backend {
            Backend::Single { slots, .. } => {
                if let Some(conn) = lock(&slots[slot]).take() {
                    // Detach instead of returning it: a failed connection must not be reused.
                    drop(Connection::take(conn));
                }
            }
            // Kept: the cluster connection holds one connection per node and replaces a
            // node's own when it fails. Dropping the whole of it for one node's fault
            // would make every call wait for a new one, whose set-up waits for every
            // node, the silent one included: one blackholed master would stop them all.
            Backend::Cluster { .. } => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_connection_fault(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}
