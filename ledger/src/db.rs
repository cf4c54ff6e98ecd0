//! The MySQL connection pool and what every query shares: the error type, the time
//! limit on every call, text columns.

use std::future::Future;
use std::time::Duration;

use common::config::MysqlSettings;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{ConnectOptions, Connection, Row};

/// Longest wait for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long start-up keeps trying to reach MySQL (processes may start before it).
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("mysql unavailable: {0}")]
    Unavailable(String),
    /// The server refused a statement (duplicate key from a racing writer, deadlock,
    /// constraint): retrying the work alone may succeed.
    #[error("mysql refused a statement: {0}")]
    Statement(String),
    #[error("mysql call timed out after {0:?}")]
    Timeout(Duration),
    /// A guarded stock move found too few units: MySQL disagrees with Redis.
    #[error("stock guard failed for {campaign}/{sku}: {detail}")]
    StockGuard { campaign: String, sku: String, detail: String },
    #[error("mysql holds unexpected data: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(d) => DbError::Statement(d.to_string()),
            other => DbError::Unavailable(other.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for DbError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        DbError::Unavailable(format!("migration: {e}"))
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// The MySQL side of both binaries. Every call is bounded by `mysql.call_timeout_ms`.
#[derive(Debug, Clone)]
pub struct Db {
    pub(crate) pool: MySqlPool,
    pub(crate) timeout: Duration,
}

impl Db {
    /// Connects, creating the database if it is missing, and applies the migrations
    /// (sqlx holds a MySQL advisory lock while migrating, so several processes may
    /// start at once).
    pub async fn connect(settings: &MysqlSettings) -> Result<Self> {
        let timeout = Duration::from_millis(settings.call_timeout_ms);
        let opts: MySqlConnectOptions = settings.url.parse()?;
        let database = database_name(&settings.url)
            .ok_or_else(|| DbError::Corrupt(format!("mysql.url names no database: {}", settings.url)))?;
        bounded(timeout, async {
            let mut server = opts.clone().database("").connect().await?;
            let create = format!("CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4");
            sqlx::query(&create).execute(&mut server).await?;
            server.close().await?;
            Ok(())
        })
        .await?;
        let pool = MySqlPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT.min(timeout))
            .connect_with(opts)
            .await?;
        let db = Self { pool, timeout };
        // Migrations only add: a binary one release behind (a rollback, or the other
        // half of a rolling upgrade) runs against a schema migrated by a newer one.
        let mut migrator = sqlx::migrate!("../migrations");
        migrator.set_ignore_missing(true);
        bounded(timeout * 10, async {
            // Several processes may start at once on a fresh database: one migrates
            // while the others wait for its lock (MySQL cannot roll DDL back, so another
            // starter would otherwise meet a migration half applied and give up).
            let mut lock = db.pool.acquire().await?;
            let name = migration_lock_name(&database);
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
                .bind(&name)
                .bind((timeout * 10).as_secs().max(1))
                .fetch_one(&mut *lock)
                .await?;
            if got != Some(1) {
                return Err(DbError::Unavailable(format!("migration lock {name} not granted")));
            }
            let ran = migrator.run(&db.pool).await;
            sqlx::query("SELECT RELEASE_LOCK(?)").bind(&name).execute(&mut *lock).await?;
            Ok(ran?)
        })
        .await?;
        Ok(db)
    }

    /// [`Db::connect`], retried for up to `patience` while MySQL is not up yet
    /// (processes may start before the database).
    pub async fn connect_retrying(settings: &MysqlSettings, patience: Duration) -> Result<Self> {
        let started = std::time::Instant::now();
        let mut backoff = common::backoff::DEPENDENCY;
        loop {
            match Self::connect(settings).await {
                Ok(db) => return Ok(db),
                Err(e) if started.elapsed() < patience => {
                    tracing::warn!(error = %e, "mysql not ready; retrying");
                    tokio::time::sleep(backoff.next_pause()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes every pooled connection (after rolling back what is open).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Round trip to the server (readiness).
    pub async fn ping(&self) -> Result<()> {
        bounded(self.timeout, async {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
        .await
    }

    /// Runs a MySQL exchange with this handle's time limit.
    pub(crate) async fn bounded<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        bounded(self.timeout, f).await
    }

    /// Runs a longer MySQL exchange (a whole campaign's orders) with a larger limit.
    pub(crate) async fn bounded_for<T>(
        &self,
        limit: Duration,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        bounded(limit, f).await
    }
}

pub(crate) fn text(row: &MySqlRow, i: usize) -> Result<String> {
    match row.try_get::<String, _>(i) {
        Ok(s) => Ok(s),
        Err(_) => {
            let bytes: Vec<u8> = row.try_get(i)?;
            String::from_utf8(bytes).map_err(|e| DbError::Corrupt(format!("column {i} is not UTF-8: {e}")))
        }
    }
}

/// [`text`] for a column that may be NULL.
pub(crate) fn opt_text(row: &MySqlRow, i: usize) -> Result<Option<String>> {
    match row.try_get::<Option<String>, _>(i) {
        Ok(s) => Ok(s),
        Err(_) => {
            let bytes: Option<Vec<u8>> = row.try_get(i)?;
            bytes
                .map(|b| {
                    String::from_utf8(b)
                        .map_err(|e| DbError::Corrupt(format!("column {i} is not UTF-8: {e}")))
                })
                .transpose()
        }
    }
}

/// The server-wide lock that serialises migrations of one database (a lock name is at
/// most 64 characters).
fn migration_lock_name(database: &str) -> String {
    let mut name = format!("flashsale-migrate:{database}");
    name.truncate(64);
    name
}

/// Runs a MySQL exchange with a time limit.
pub(crate) async fn bounded<T>(limit: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, f).await.unwrap_or(Err(DbError::Timeout(limit)))
}

pub(crate) fn is_duplicate(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "23000")
}

/// The database part of a `mysql://user@host:port/db?opts` URL.
fn database_name(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let path = rest.split_once('/')?.1;
    let name = path.split('?').next()?.trim();
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_come_from_the_url_path() {
        assert_eq!(database_name("mysql://root@127.0.0.1:3306/flashsale").as_deref(), Some("flashsale"));
        assert_eq!(database_name("mysql://u:p@h/db_1?ssl-mode=disabled").as_deref(), Some("db_1"));
        assert_eq!(database_name("mysql://root@127.0.0.1:3306"), None);
        assert_eq!(database_name("mysql://root@h/bad`name"), None);
    }
}
