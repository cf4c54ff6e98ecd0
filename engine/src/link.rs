//! Redis connections for the hot path.
//!
//! Requests share a few multiplexed connections instead of checking one out each:
//! an exclusive check-out serialises requests that one multiplexed connection would
//! pipeline, and deadpool's check-out pings the connection every time. deadpool
//! still owns the connections' life-cycle: it creates them (with a connect timeout),
//! and a connection that fails is taken out of its slot and replaced from the pool.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{AsyncConnectionConfig, RedisError, RedisResult};
use deadpool_redis::{Connection, Manager, Pool, Runtime};

use crate::error::{EngineError, Result};

/// Shared multiplexed connections with a timeout on every call.
pub struct RedisLink {
    pool: Pool,
    slots: Box<[Mutex<Option<Connection>>]>,
    next: AtomicUsize,
    call_timeout: Duration,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink").field("slots", &self.slots.len()).finish()
    }
}

impl RedisLink {
    /// Builds the pool; no connection is made until the first call.
    pub fn new(
        url: &str,
        connections: usize,
        call_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self> {
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
        Ok(Self { pool, slots, next: AtomicUsize::new(0), call_timeout })
    }

    /// Runs one Redis exchange on a shared connection, bounded by the call timeout.
    /// A connection that failed is dropped from its slot, so the next call gets a new one.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let conn = self.lease(slot).await?;
        match tokio::time::timeout(self.call_timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if is_connection_fault(&e) {
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

    async fn lease(&self, slot: usize) -> Result<MultiplexedConnection> {
        if let Some(conn) = lock(&self.slots[slot]).as_ref() {
            return Ok(MultiplexedConnection::clone(conn));
        }
        let fresh =
            self.pool.get().await.map_err(|e| EngineError::Unavailable(format!("redis connect: {e}")))?;
        let mut guard = lock(&self.slots[slot]);
        let conn = guard.get_or_insert(fresh);
        Ok(MultiplexedConnection::clone(conn))
    }

    fn discard(&self, slot: usize) {
        if let Some(conn) = lock(&self.slots[slot]).take() {
            // Detach instead of returning it: a failed connection must not be reused.
            drop(Connection::take(conn));
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
