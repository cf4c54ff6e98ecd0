//! The SQL that applies a batch of order events in one transaction: the orders MySQL
//! does not hold are inserted, the ones it holds advanced (conditionally on the state
//! read under their row lock), and the net stock moves of the batch applied with a
//! guard per sku, so only the batch's final state must fit the stock. Orders whose
//! only events in the batch are their reservations are not looked up first (nearly
//! all of a sale's are new); one MySQL holds after all fails its insert on the primary
//! key, and the batch is rolled back and applied again with every order looked up.

use std::collections::{HashMap, HashSet};

use common::message::{OrderEvent, OrderStatus};
use sqlx::mysql::MySqlPool;
use sqlx::{Connection, MySql, QueryBuilder, Row, Transaction};

use crate::db::{text, Db, DbError, Result};
use crate::fold::fold;
use crate::lines::{self, UnitSums};
use crate::rows::Applied;
use crate::shapes;
use crate::units;

impl Db {
    /// Applies a batch of order events in one transaction (see the module docs).
    pub async fn apply_events(&self, events: &[OrderEvent]) -> Result<Applied> {
        if events.is_empty() {
            return Ok(Applied::default());
        }
        self.bounded(apply_batch(&self.pool, events, Rebuilds::Refuse)).await
    }

    /// [`Db::apply_events`] for events of orders Redis still holds: such an order was
    /// not lost, whatever its campaign's rebuild mark says (a rebuild that found the
    /// campaign live after all, or a mark taken on a clock ahead of Redis's), so none
    /// is refused as lost.
    pub async fn apply_events_held_by_redis(&self, events: &[OrderEvent]) -> Result<Applied> {
        if events.is_empty() {
            return Ok(Applied::default());
        }
        self.bounded(apply_batch(&self.pool, events, Rebuilds::Ignore)).await
    }
}

/// Whether a campaign's rebuild mark refuses orders MySQL does not hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rebuilds {
    Refuse,
    Ignore,
}

/// Which orders of a batch are looked up (and locked) before the fold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Only orders with an event past their reservation. An order whose every event
    /// in the batch is its reservation is nearly always new to MySQL: it is not looked
    /// up but inserted, and one MySQL already holds (a redelivery, a racing worker)
    /// fails its insert on the primary key; the batch is then rolled back and applied
    /// again with [`Lookup::Every`].
    Settled,
    Every,
}

/// The outcome of one try at a batch.
enum Tried {
    Applied(Applied),
    /// [`Lookup::Settled`] met an order MySQL holds: rolled back, apply it again.
    Again,
}

async fn apply_batch(pool: &MySqlPool, events: &[OrderEvent], rebuilds: Rebuilds) -> Result<Applied> {
    match apply_once(pool, events, rebuilds, Lookup::Settled).await? {
        Tried::Applied(applied) => Ok(applied),
        Tried::Again => match apply_once(pool, events, rebuilds, Lookup::Every).await? {
            Tried::Applied(applied) => Ok(applied),
            Tried::Again => Err(DbError::Corrupt("a batch looked up whole still met a duplicate".into())),
        },
    }
}

async fn apply_once(
    pool: &MySqlPool,
    events: &[OrderEvent],
    rebuilds: Rebuilds,
    lookup: Lookup,
) -> Result<Tried> {
    let mut conn = pool.acquire().await?;
    // READ COMMITTED: no gap locks on the ids looked up, so two workers' batches do
    // not deadlock on orders that do not exist yet (a racing insert fails on the
    // primary key instead, and that batch is applied again).
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED").execute(&mut *conn).await?;
    let mut tx = conn.begin().await?;

    let settled: HashSet<&str> = match lookup {
        Lookup::Every => events.iter().map(|e| e.order_id.as_str()).collect(),
        Lookup::Settled => events
            .iter()
            .filter(|e| e.status != OrderStatus::PendingPayment)
            .map(|e| e.order_id.as_str())
            .collect(),
    };
    let mut in_db = look_up(&mut tx, events, |e| settled.contains(e.order_id.as_str())).await?;

    // Shared locks on the campaign rows: a rebuild marks `restored_ms` with an update
    // that waits for this transaction, and every transaction after it sees the mark.
    let mut q =
        in_list("SELECT campaign_id, restored_ms FROM campaigns WHERE campaign_id IN (", events, |e| {
            Some(&e.campaign_id)
        });
    q.push(") LOCK IN SHARE MODE");
    let mut restored = HashMap::new();
    for r in q.build().fetch_all(&mut *tx).await? {
        if let Some(at) = r.try_get::<Option<i64>, _>(1)? {
            if rebuilds == Rebuilds::Refuse {
                restored.insert(text(&r, 0)?, at);
            }
        }
    }
    let mut plan = fold(events, &in_db, &restored);
    if !plan.applied.lost.is_empty() && lookup == Lookup::Settled {
        // Refused as lost because MySQL was not asked: ask it about those (nothing is
        // written yet), and fold again.
        let lost: HashSet<&str> = plan.applied.lost.iter().map(String::as_str).collect();
        in_db.extend(look_up(&mut tx, events, |e| lost.contains(e.order_id.as_str())).await?);
        plan = fold(events, &in_db, &restored);
    }

    if !plan.inserts.is_empty() {
        // Rows in one fixed order (by order id), whatever order the events came in: two
        // workers applying overlapping batches take their locks in the same order and
        // cannot deadlock each other.
        let mut inserts = plan.inserts.clone();
        inserts.sort_unstable_by(|a, b| a.order_id.cmp(&b.order_id));
        for rows in shapes::chunks(&inserts) {
            let mut q = QueryBuilder::<MySql>::new(
                "INSERT INTO orders (order_id, campaign_id, user_id, status, total_cents, created_ms, \
                 expires_ms, paid_ms, updated_ms, idempotency_key, payment_event_id, items) ",
            );
            q.push_values(rows, |mut b, e| {
                b.push_bind(&e.order_id)
                    .push_bind(&e.campaign_id)
                    .push_bind(&e.user_id)
                    .push_bind(e.status.as_str())
                    .push_bind(e.total_cents)
                    .push_bind(e.created_ms)
                    .push_bind(e.expires_ms)
                    .push_bind((e.paid_ms > 0).then_some(e.paid_ms))
                    .push_bind(e.event_ms)
                    .push_bind(plan.ids.get(e.order_id.as_str()).and_then(|i| i.idempotency_key))
                    .push_bind(plan.ids.get(e.order_id.as_str()).and_then(|i| i.payment_event))
                    .push_bind(lines::encode(&e.items));
            });
            match q.build().execute(&mut *tx).await {
                // Rolled back here, not when the connection is next used: the next try
                // looks up (and locks) the rows this one inserted.
                Err(sqlx::Error::Database(e)) if lookup == Lookup::Settled && e.is_unique_violation() => {
                    tx.rollback().await?;
                    return Ok(Tried::Again);
                }
                done => done?,
            };
        }
    }

    for (id, (db_status, e)) in &plan.updates {
        let ids = plan.ids.get(id).copied().unwrap_or_default();
        let done = sqlx::query(
            "UPDATE orders SET status = ?, paid_ms = ?, updated_ms = ?, \
             idempotency_key = COALESCE(idempotency_key, ?), payment_event_id = COALESCE(payment_event_id, ?) \
             WHERE order_id = ? AND status = ?",
        )
        .bind(e.status.as_str())
        .bind((e.paid_ms > 0).then_some(e.paid_ms))
        .bind(e.event_ms)
        .bind(ids.idempotency_key)
        .bind(ids.payment_event)
        .bind(*id)
        .bind(db_status.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(DbError::Corrupt(format!("order {id} changed under its row lock")));
        }
    }

    // An order whose events here change nothing may still bring an id MySQL lacks (its
    // reservation's event arriving after its payment's): kept, so a rebuild has it.
    for (id, ids) in &plan.ids {
        if plan.updates.contains_key(id) || plan.inserts_order(id) || !in_db.contains_key(*id) {
            continue;
        }
        sqlx::query(
            "UPDATE orders SET idempotency_key = COALESCE(idempotency_key, ?), \
             payment_event_id = COALESCE(payment_event_id, ?) WHERE order_id = ? \
             AND ((? IS NOT NULL AND idempotency_key IS NULL) OR (? IS NOT NULL AND payment_event_id IS NULL))",
        )
        .bind(ids.idempotency_key)
        .bind(ids.payment_event)
        .bind(*id)
        .bind(ids.idempotency_key)
        .bind(ids.payment_event)
        .execute(&mut *tx)
        .await?;
    }

    // In key order, so concurrent batches lock stock rows in the same order.
    for ((campaign, sku), [avail, resv, sold]) in &plan.deltas {
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
    // The units of pending and paid orders per sku, counted from the orders' own
    // states (not from the stock moves above), so reconciliation still compares two
    // independent accounts.
    let mut sums = UnitSums::new();
    for e in &plan.inserts {
        lines::count(&mut sums, &e.campaign_id, e.status, &e.items, 1);
    }
    for (db_status, e) in plan.updates.values() {
        lines::count(&mut sums, &e.campaign_id, *db_status, &e.items, -1);
        lines::count(&mut sums, &e.campaign_id, e.status, &e.items, 1);
    }
    units::add(&mut tx, &sums).await?;
    tx.commit().await?;
    Ok(Tried::Applied(plan.applied))
}

/// The state in MySQL of the orders of the `wanted` events, their rows locked.
async fn look_up(
    tx: &mut Transaction<'_, MySql>,
    events: &[OrderEvent],
    wanted: impl Fn(&OrderEvent) -> bool,
) -> Result<HashMap<String, OrderStatus>> {
    let mut in_db = HashMap::new();
    if !events.iter().any(&wanted) {
        return Ok(in_db);
    }
    let mut q = in_list("SELECT order_id, status FROM orders WHERE order_id IN (", events, |e| {
        wanted(e).then_some(&e.order_id)
    });
    q.push(") FOR UPDATE");
    for r in q.build().fetch_all(&mut **tx).await? {
        let status = text(&r, 1)?;
        let status =
            OrderStatus::parse(&status).ok_or_else(|| DbError::Corrupt(format!("order status {status}")))?;
        in_db.insert(text(&r, 0)?, status);
    }
    Ok(in_db)
}

/// `head` followed by the events' distinct values (`None`: the event has none),
/// bound, comma-separated (close it yourself), in a list of one of few lengths
/// ([`shapes::padded`]).
fn in_list<'a>(
    head: &'static str,
    events: &'a [OrderEvent],
    value: impl Fn(&'a OrderEvent) -> Option<&'a String>,
) -> QueryBuilder<'a, MySql> {
    let mut values: Vec<&str> = events.iter().filter_map(|e| value(e).map(String::as_str)).collect();
    values.sort_unstable();
    values.dedup();
    let mut q = QueryBuilder::<MySql>::new(head);
    let mut list = q.separated(", ");
    for v in shapes::padded(&values) {
        list.push_bind(v);
    }
    q
}
