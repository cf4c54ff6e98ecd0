//! MySQL: schema migrations, campaigns, and applying order events with guarded stock
//! moves. Every call is bounded by `mysql.call_timeout_ms`.
//!
//! Order events may arrive more than once and in any order. [`Db::apply_events`]
//! keeps, per order, the furthest state it has seen (see
//! [`OrderStatus::can_reach`]) and moves the order's units between the stock buckets
//! of the old and the new state, so applying any permutation of any multiset of an
//! order's events gives the same rows.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{ConnectOptions, Connection, MySql, QueryBuilder, Row};

use crate::config::MysqlSettings;
use crate::message::{OrderEvent, OrderItem, OrderStatus, StockBucket};

/// Longest wait for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

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

/// A campaign row with its items, as launched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignRow {
    pub campaign_id: String,
    pub name: String,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub per_user_limit: i64,
    pub payment_window_secs: u32,
    pub max_orders_per_sec: Option<u32>,
    pub max_user_requests_per_sec: Option<u32>,
    pub items: Vec<CampaignItemRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignItemRow {
    pub sku_id: String,
    pub price_cents: i64,
    pub stock_total: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertCampaign {
    Created,
    /// A campaign with this id exists; here it is.
    Exists(CampaignRow),
}

/// One sku's stock in MySQL, with the units of its pending and paid orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockRow {
    pub sku_id: String,
    pub stock_total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub pending_units: i64,
    pub paid_units: i64,
}

/// An order as MySQL holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub order_id: String,
    pub campaign_id: String,
    pub user_id: String,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub paid_ms: Option<i64>,
}

/// What applying a batch of events did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub inserted: usize,
    /// Orders refused because Redis lost them before MySQL heard of them (created
    /// before their campaign was rebuilt from MySQL).
    pub lost: Vec<String>,
    pub advanced: usize,
    pub unchanged: usize,
}

#[derive(Debug, Clone)]
pub struct Db {
    pool: MySqlPool,
    timeout: Duration,
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
        bounded(timeout * 10, async { Ok(sqlx::migrate!("../migrations").run(&db.pool).await?) }).await?;
        Ok(db)
    }

    /// [`Db::connect`], retried for up to `patience` while MySQL is not up yet
    /// (processes may start before the database).
    pub async fn connect_retrying(settings: &MysqlSettings, patience: Duration) -> Result<Self> {
        let started = std::time::Instant::now();
        loop {
            match Self::connect(settings).await {
                Ok(db) => return Ok(db),
                Err(e) if started.elapsed() < patience => {
                    tracing::warn!(error = %e, "mysql not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
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

    /// Inserts a campaign and its items; an existing id is returned as it is.
    pub async fn insert_campaign(&self, c: &CampaignRow, now_ms: i64) -> Result<InsertCampaign> {
        let inserted = bounded(self.timeout, async {
            let mut tx = self.pool.begin().await?;
            let res = sqlx::query(
                "INSERT INTO campaigns (campaign_id, name, starts_ms, ends_ms, per_user_limit, \
                 payment_window_secs, max_orders_per_sec, max_user_requests_per_sec, created_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&c.campaign_id)
            .bind(&c.name)
            .bind(c.starts_ms)
            .bind(c.ends_ms)
            .bind(c.per_user_limit)
            .bind(c.payment_window_secs)
            .bind(c.max_orders_per_sec)
            .bind(c.max_user_requests_per_sec)
            .bind(now_ms)
            .execute(&mut *tx)
            .await;
            if let Err(e) = res {
                if is_duplicate(&e) {
                    return Ok(false);
                }
                return Err(e.into());
            }
            let mut q = QueryBuilder::<MySql>::new(
                "INSERT INTO campaign_items (campaign_id, sku_id, price_cents, stock_total, available) ",
            );
            q.push_values(&c.items, |mut b, i| {
                b.push_bind(&c.campaign_id)
                    .push_bind(&i.sku_id)
                    .push_bind(i.price_cents)
                    .push_bind(i.stock_total)
                    .push_bind(i.stock_total);
            });
            q.build().execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await?;
        if inserted {
            return Ok(InsertCampaign::Created);
        }
        let existing = self
            .campaign(&c.campaign_id)
            .await?
            .ok_or_else(|| DbError::Corrupt("campaign vanished after a duplicate insert".into()))?;
        Ok(InsertCampaign::Exists(existing))
    }

    pub async fn campaign(&self, id: &str) -> Result<Option<CampaignRow>> {
        bounded(self.timeout, async {
            let Some(row) = sqlx::query(
                "SELECT campaign_id, name, starts_ms, ends_ms, per_user_limit, payment_window_secs, \
                 max_orders_per_sec, max_user_requests_per_sec FROM campaigns WHERE campaign_id = ?",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            else {
                return Ok(None);
            };
            let items = sqlx::query(
                "SELECT sku_id, price_cents, stock_total FROM campaign_items WHERE campaign_id = ? ORDER BY sku_id",
            )
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| -> Result<CampaignItemRow> {
                Ok(CampaignItemRow {
                    sku_id: text(&r, 0)?,
                    price_cents: r.try_get(1)?,
                    stock_total: r.try_get(2)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
            Ok(Some(CampaignRow {
                campaign_id: text(&row, 0)?,
                name: text(&row, 1)?,
                starts_ms: row.try_get(2)?,
                ends_ms: row.try_get(3)?,
                per_user_limit: row.try_get(4)?,
                payment_window_secs: row.try_get(5)?,
                max_orders_per_sec: row.try_get(6)?,
                max_user_requests_per_sec: row.try_get(7)?,
                items,
            }))
        })
        .await
    }

    /// Records a tuning already applied in Redis, so MySQL shows the live settings.
    pub async fn tune_campaign(
        &self,
        id: &str,
        ends_ms: Option<i64>,
        per_user_limit: Option<i64>,
        max_orders_per_sec: Option<Option<u32>>,
        max_user_requests_per_sec: Option<Option<u32>>,
    ) -> Result<()> {
        bounded(self.timeout, async {
            let mut q = QueryBuilder::<MySql>::new("UPDATE campaigns SET campaign_id = campaign_id");
            if let Some(v) = ends_ms {
                q.push(", ends_ms = ").push_bind(v);
            }
            if let Some(v) = per_user_limit {
                q.push(", per_user_limit = ").push_bind(v);
            }
            if let Some(v) = max_orders_per_sec {
                q.push(", max_orders_per_sec = ").push_bind(v);
            }
            if let Some(v) = max_user_requests_per_sec {
                q.push(", max_user_requests_per_sec = ").push_bind(v);
            }
            q.push(" WHERE campaign_id = ").push_bind(id);
            q.build().execute(&self.pool).await?;
            Ok(())
        })
        .await
    }

    /// Applies a batch of order events in one transaction (see the module docs).
    pub async fn apply_events(&self, events: &[OrderEvent]) -> Result<Applied> {
        if events.is_empty() {
            return Ok(Applied::default());
        }
        bounded(self.timeout, apply_batch(&self.pool, events)).await
    }

    pub async fn order(&self, order_id: &str) -> Result<Option<OrderRow>> {
        bounded(self.timeout, async {
            let Some(r) = sqlx::query(
                "SELECT order_id, campaign_id, user_id, status, total_cents, created_ms, expires_ms, paid_ms \
                 FROM orders WHERE order_id = ?",
            )
            .bind(order_id)
            .fetch_optional(&self.pool)
            .await?
            else {
                return Ok(None);
            };
            let items = sqlx::query(
                "SELECT sku_id, quantity, price_cents FROM order_items WHERE order_id = ? ORDER BY sku_id",
            )
            .bind(order_id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|i| -> Result<OrderItem> {
                let quantity: i64 = i.try_get(1)?;
                Ok(OrderItem { sku_id: text(&i, 0)?, quantity: quantity as u64, price_cents: i.try_get(2)? })
            })
            .collect::<Result<Vec<_>>>()?;
            let status = text(&r, 3)?;
            Ok(Some(OrderRow {
                order_id: text(&r, 0)?,
                campaign_id: text(&r, 1)?,
                user_id: text(&r, 2)?,
                status: OrderStatus::parse(&status)
                    .ok_or_else(|| DbError::Corrupt(format!("order status {status}")))?,
                items,
                total_cents: r.try_get(4)?,
                created_ms: r.try_get(5)?,
                expires_ms: r.try_get(6)?,
                paid_ms: r.try_get(7)?,
            }))
        })
        .await
    }

    /// Pending orders whose deadline passed before `before_ms`, oldest first, from just
    /// after `after` (a `(expires_ms, order_id)` cursor): a sweep that cannot settle
    /// some rows still reaches the ones behind them.
    pub async fn overdue_orders(
        &self,
        before_ms: i64,
        after: Option<&(i64, String)>,
        limit: u32,
    ) -> Result<Vec<(i64, String)>> {
        bounded(self.timeout, async {
            let (after_ms, after_id) = after.map_or((i64::MIN, ""), |(ms, id)| (*ms, id.as_str()));
            let rows = sqlx::query(
                "SELECT expires_ms, order_id FROM orders WHERE status = 'pending_payment' AND expires_ms < ? \
                 AND (expires_ms > ? OR (expires_ms = ? AND order_id > ?)) ORDER BY expires_ms, order_id LIMIT ?",
            )
            .bind(before_ms)
            .bind(after_ms)
            .bind(after_ms)
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, text(r, 1)?))).collect()
        })
        .await
    }

    /// Campaigns whose data Redis should still hold (not retired).
    pub async fn unretired_campaigns(&self) -> Result<Vec<String>> {
        bounded(self.timeout, async {
            let rows = sqlx::query("SELECT campaign_id FROM campaigns WHERE retired_ms IS NULL")
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(|r| text(r, 0)).collect()
        })
        .await
    }

    /// Unretired campaigns that ended before `ended_before_ms`.
    pub async fn campaigns_to_retire(&self, ended_before_ms: i64) -> Result<Vec<String>> {
        bounded(self.timeout, async {
            let rows = sqlx::query(
                "SELECT campaign_id FROM campaigns WHERE retired_ms IS NULL AND ends_ms < ? LIMIT 100",
            )
            .bind(ended_before_ms)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(|r| text(r, 0)).collect()
        })
        .await
    }

    /// Records that a campaign is being rebuilt from MySQL: orders created before
    /// `at_ms` that MySQL does not hold yet are lost from here on. Waits for every
    /// persister transaction touching the campaign, so a snapshot read after this
    /// sees every order MySQL will ever accept from before the loss.
    pub async fn mark_restored(&self, campaign: &str, at_ms: i64) -> Result<()> {
        bounded(self.timeout, async {
            sqlx::query("UPDATE campaigns SET restored_ms = ? WHERE campaign_id = ?")
                .bind(at_ms)
                .bind(campaign)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// Records that a campaign's per-order data left Redis.
    pub async fn mark_retired(&self, campaign: &str, now_ms: i64) -> Result<()> {
        bounded(self.timeout, async {
            sqlx::query("UPDATE campaigns SET retired_ms = ? WHERE campaign_id = ?")
                .bind(now_ms)
                .bind(campaign)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// Every order of a campaign with its items (restoring a campaign Redis lost).
    pub async fn campaign_orders(&self, campaign: &str) -> Result<Vec<OrderRow>> {
        bounded(self.timeout * 10, async {
            let rows = sqlx::query(
                "SELECT o.order_id, o.user_id, o.status, o.total_cents, o.created_ms, o.expires_ms, o.paid_ms, \
                 i.sku_id, i.quantity, i.price_cents FROM orders o JOIN order_items i ON i.order_id = o.order_id \
                 WHERE o.campaign_id = ? ORDER BY o.order_id, i.sku_id",
            )
            .bind(campaign)
            .fetch_all(&self.pool)
            .await?;
            let mut out: Vec<OrderRow> = Vec::new();
            for r in rows {
                let id = text(&r, 0)?;
                let quantity: i64 = r.try_get(8)?;
                let item = OrderItem { sku_id: text(&r, 7)?, quantity: quantity as u64, price_cents: r.try_get(9)? };
                if let Some(last) = out.last_mut().filter(|o| o.order_id == id) {
                    last.items.push(item);
                    continue;
                }
                let status = text(&r, 2)?;
                out.push(OrderRow {
                    order_id: id,
                    campaign_id: campaign.to_owned(),
                    user_id: text(&r, 1)?,
                    status: OrderStatus::parse(&status)
                        .ok_or_else(|| DbError::Corrupt(format!("order status {status}")))?,
                    items: vec![item],
                    total_cents: r.try_get(3)?,
                    created_ms: r.try_get(4)?,
                    expires_ms: r.try_get(5)?,
                    paid_ms: r.try_get(6)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Whether MySQL has a stock row for this sku (an event naming none can never apply).
    pub async fn has_stock_row(&self, campaign: &str, sku: &str) -> Result<bool> {
        bounded(self.timeout, async {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM campaign_items WHERE campaign_id = ? AND sku_id = ?",
            )
            .bind(campaign)
            .bind(sku)
            .fetch_one(&self.pool)
            .await?;
            Ok(n > 0)
        })
        .await
    }

    /// Stock per sku with the units of pending and paid orders (reconciliation).
    pub async fn stock(&self, campaign: &str) -> Result<Vec<StockRow>> {
        bounded(self.timeout, async {
            let units = sqlx::query(
                "SELECT i.sku_id, o.status, CAST(SUM(i.quantity) AS SIGNED) FROM orders o \
                 JOIN order_items i ON i.order_id = o.order_id \
                 WHERE o.campaign_id = ? AND o.status IN ('pending_payment', 'paid') \
                 GROUP BY i.sku_id, o.status",
            )
            .bind(campaign)
            .fetch_all(&self.pool)
            .await?;
            let mut by_sku: HashMap<(String, String), i64> = HashMap::new();
            for r in units {
                by_sku.insert((text(&r, 0)?, text(&r, 1)?), r.try_get(2)?);
            }
            let rows = sqlx::query(
                "SELECT sku_id, stock_total, available, reserved, sold FROM campaign_items \
                 WHERE campaign_id = ? ORDER BY sku_id",
            )
            .bind(campaign)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|r| {
                    let sku = text(&r, 0)?;
                    let units = |s: &str| by_sku.get(&(sku.clone(), s.to_owned())).copied().unwrap_or(0);
                    Ok(StockRow {
                        pending_units: units("pending_payment"),
                        paid_units: units("paid"),
                        stock_total: r.try_get(1)?,
                        available: r.try_get(2)?,
                        reserved: r.try_get(3)?,
                        sold: r.try_get(4)?,
                        sku_id: sku,
                    })
                })
                .collect()
        })
        .await
    }

    /// Counts orders of a campaign (tests and the load-test runner).
    pub async fn count_orders(&self, campaign: &str) -> Result<i64> {
        bounded(self.timeout, async {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE campaign_id = ?")
                .bind(campaign)
                .fetch_one(&self.pool)
                .await?;
            Ok(n)
        })
        .await
    }
}

/// A text column. Binary collations (`utf8mb4_bin`, chosen so ids compare exactly)
/// reach sqlx as VARBINARY, so the bytes are decoded here.
fn text(row: &MySqlRow, i: usize) -> Result<String> {
    match row.try_get::<String, _>(i) {
        Ok(s) => Ok(s),
        Err(_) => {
            let bytes: Vec<u8> = row.try_get(i)?;
            String::from_utf8(bytes).map_err(|e| DbError::Corrupt(format!("column {i} is not UTF-8: {e}")))
        }
    }
}

/// Runs a MySQL exchange with a time limit.
async fn bounded<T>(limit: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, f).await.unwrap_or(Err(DbError::Timeout(limit)))
}

fn is_duplicate(e: &sqlx::Error) -> bool {
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

fn bucket_index(b: StockBucket) -> usize {
    match b {
        StockBucket::Available => 0,
        StockBucket::Reserved => 1,
        StockBucket::Sold => 2,
    }
}

/// The state of the batch's orders as the batch is folded.
struct Fold<'a> {
    /// Orders not in MySQL yet: the furthest event seen.
    inserts: Vec<&'a OrderEvent>,
    insert_index: HashMap<&'a str, usize>,
    /// Orders in MySQL: status in MySQL and the furthest event seen.
    updates: HashMap<&'a str, (OrderStatus, &'a OrderEvent)>,
    /// Net unit moves per (campaign, sku): [available, reserved, sold].
    deltas: BTreeMap<(&'a str, &'a str), [i64; 3]>,
    applied: Applied,
}

impl<'a> Fold<'a> {
    fn move_units(&mut self, e: &'a OrderEvent, from: StockBucket, to: StockBucket) {
        if from == to {
            return;
        }
        for item in &e.items {
            let d = self.deltas.entry((e.campaign_id.as_str(), item.sku_id.as_str())).or_default();
            d[bucket_index(from)] -= item.quantity as i64;
            d[bucket_index(to)] += item.quantity as i64;
        }
    }

    fn add(
        &mut self,
        e: &'a OrderEvent,
        in_db: &HashMap<String, OrderStatus>,
        restored: &HashMap<String, i64>,
    ) {
        let id = e.order_id.as_str();
        let lost = || restored.get(&e.campaign_id).is_some_and(|at| e.created_ms < *at);
        let current = if let Some(&i) = self.insert_index.get(id) {
            Some(self.inserts[i].status)
        } else if let Some((_, seen)) = self.updates.get(id) {
            Some(seen.status)
        } else {
            in_db.get(id).copied()
        };
        match current {
            None if lost() => {
                if !self.applied.lost.iter().any(|l| l == id) {
                    self.applied.lost.push(id.to_owned());
                }
            }
            None => {
                self.insert_index.insert(id, self.inserts.len());
                self.inserts.push(e);
                self.move_units(e, StockBucket::Available, e.status.bucket());
                self.applied.inserted += 1;
            }
            Some(cur) if cur.can_reach(e.status) => {
                self.move_units(e, cur.bucket(), e.status.bucket());
                if let Some(&i) = self.insert_index.get(id) {
                    self.inserts[i] = e;
                } else {
                    let db_status = in_db.get(id).copied().unwrap_or(cur);
                    self.updates.insert(id, (db_status, e));
                    self.applied.advanced += 1;
                }
            }
            Some(_) => self.applied.unchanged += 1,
        }
    }
}

async fn apply_batch(pool: &MySqlPool, events: &[OrderEvent]) -> Result<Applied> {
    let mut conn = pool.acquire().await?;
    // READ COMMITTED: no gap locks on the ids looked up, so two workers' batches do
    // not deadlock on orders that do not exist yet (a racing insert fails on the
    // primary key instead, and that batch is retried).
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED").execute(&mut *conn).await?;
    let mut tx = conn.begin().await?;

    let mut q = QueryBuilder::<MySql>::new("SELECT order_id, status FROM orders WHERE order_id IN (");
    let mut ids = q.separated(", ");
    for e in events {
        ids.push_bind(&e.order_id);
    }
    q.push(") FOR UPDATE");
    let mut in_db = HashMap::new();
    for r in q.build().fetch_all(&mut *tx).await? {
        let status = text(&r, 1)?;
        let status =
            OrderStatus::parse(&status).ok_or_else(|| DbError::Corrupt(format!("order status {status}")))?;
        in_db.insert(text(&r, 0)?, status);
    }

    let mut fold = Fold {
        inserts: Vec::new(),
        insert_index: HashMap::new(),
        updates: HashMap::new(),
        deltas: BTreeMap::new(),
        applied: Applied::default(),
    };
    // Shared locks on the campaign rows: a rebuild marks `restored_ms` with an update
    // that waits for this transaction, and every transaction after it sees the mark.
    let mut q =
        QueryBuilder::<MySql>::new("SELECT campaign_id, restored_ms FROM campaigns WHERE campaign_id IN (");
    let mut ids = q.separated(", ");
    for e in events {
        ids.push_bind(&e.campaign_id);
    }
    q.push(") LOCK IN SHARE MODE");
    let mut restored = HashMap::new();
    for r in q.build().fetch_all(&mut *tx).await? {
        if let Some(at) = r.try_get::<Option<i64>, _>(1)? {
            restored.insert(text(&r, 0)?, at);
        }
    }
    for e in events {
        fold.add(e, &in_db, &restored);
    }

    if !fold.inserts.is_empty() {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO orders (order_id, campaign_id, user_id, status, total_cents, created_ms, \
             expires_ms, paid_ms, updated_ms) ",
        );
        q.push_values(&fold.inserts, |mut b, e| {
            b.push_bind(&e.order_id)
                .push_bind(&e.campaign_id)
                .push_bind(&e.user_id)
                .push_bind(e.status.as_str())
                .push_bind(e.total_cents)
                .push_bind(e.created_ms)
                .push_bind(e.expires_ms)
                .push_bind((e.paid_ms > 0).then_some(e.paid_ms))
                .push_bind(e.event_ms);
        });
        q.build().execute(&mut *tx).await?;
        let lines: Vec<(&str, &OrderItem)> =
            fold.inserts.iter().flat_map(|e| e.items.iter().map(move |i| (e.order_id.as_str(), i))).collect();
        let mut q =
            QueryBuilder::<MySql>::new("INSERT INTO order_items (order_id, sku_id, quantity, price_cents) ");
        q.push_values(&lines, |mut b, (order, i)| {
            b.push_bind(*order).push_bind(&i.sku_id).push_bind(i.quantity as i64).push_bind(i.price_cents);
        });
        q.build().execute(&mut *tx).await?;
    }

    for (id, (db_status, e)) in &fold.updates {
        let done = sqlx::query(
            "UPDATE orders SET status = ?, paid_ms = ?, updated_ms = ? WHERE order_id = ? AND status = ?",
        )
        .bind(e.status.as_str())
        .bind((e.paid_ms > 0).then_some(e.paid_ms))
        .bind(e.event_ms)
        .bind(*id)
        .bind(db_status.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(DbError::Corrupt(format!("order {id} changed under its row lock")));
        }
    }

    // In key order, so concurrent batches lock stock rows in the same order.
    for ((campaign, sku), [avail, resv, sold]) in &fold.deltas {
        if [avail, resv, sold].iter().all(|d| **d == 0) {
            continue;
        }
        let done = sqlx::query(
            "UPDATE campaign_items SET available = available + ?, reserved = reserved + ?, sold = sold + ? \
             WHERE campaign_id = ? AND sku_id = ? AND available + ? >= 0 AND reserved + ? >= 0 AND sold + ? >= 0",
        )
        .bind(avail)
        .bind(resv)
        .bind(sold)
        .bind(*campaign)
        .bind(*sku)
        .bind(avail)
        .bind(resv)
        .bind(sold)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(DbError::StockGuard {
                campaign: (*campaign).to_owned(),
                sku: (*sku).to_owned(),
                detail: format!("moving available {avail:+}, reserved {resv:+}, sold {sold:+}"),
            });
        }
    }
    tx.commit().await?;
    Ok(fold.applied)
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
