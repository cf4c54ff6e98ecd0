//! `order_units`: the units of each campaign's pending and paid orders per sku, kept
//! by the persister in the transaction that writes the orders ([`add`]), so
//! reconciliation reads a few small rows however many orders a campaign has
//! ([`Db::stock`]).
//!
//! A campaign launched before the sums were kept (`campaigns.units_counted_ms` NULL)
//! is counted once by the worker ([`Db::count_units`]): under an exclusive lock on the
//! campaign row, which every persister batch takes shared, so no batch of that
//! campaign commits between the count and the mark. Until then its reconciliation
//! sums its orders as before. A worker of an older build does not keep the sums: after
//! one ran (a rollback), mark the campaigns to count again (docs/operations.md).

use std::collections::HashMap;

use futures_util::TryStreamExt;
use sqlx::{Connection, MySql, MySqlConnection, QueryBuilder, Row, Transaction};

use crate::db::{opt_text, text, Db, DbError, Result};
use crate::lines::{self, UnitSums};
use crate::rows::StockRow;
use crate::shapes;

/// Campaigns counted per call of [`Db::count_uncounted`] at most.
const COUNT_PER_ROUND: u32 = 4;

/// Adds a batch's unit changes to `order_units` (rows in key order, like the stock rows).
pub(crate) async fn add(tx: &mut Transaction<'_, MySql>, sums: &UnitSums<'_>) -> Result<()> {
    let rows: Vec<_> = sums.iter().filter(|(_, d)| d.iter().any(|n| *n != 0)).collect();
    if rows.is_empty() {
        return Ok(());
    }
    for rows in shapes::chunks(&rows) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO order_units (campaign_id, sku_id, pending_units, paid_units) ",
        );
        q.push_values(rows, |mut b, ((campaign, sku), [pending, paid])| {
            b.push_bind(*campaign).push_bind(*sku).push_bind(*pending).push_bind(*paid);
        });
        q.push(
            " ON DUPLICATE KEY UPDATE pending_units = pending_units + VALUES(pending_units), \
             paid_units = paid_units + VALUES(paid_units)",
        );
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

impl Db {
    /// Stock per sku with the units of pending and paid orders (reconciliation): the
    /// buckets and the kept sums in one statement (one snapshot), or, for a campaign
    /// not counted yet, the sums of its orders.
    pub async fn stock(&self, campaign: &str) -> Result<Vec<StockRow>> {
        self.bounded(async {
            let mut conn = self.pool.acquire().await?;
            let rows = sqlx::query(
                "SELECT i.sku_id, i.stock_total, i.available, i.reserved, i.sold, \
                 COALESCE(u.pending_units, 0), COALESCE(u.paid_units, 0), c.units_counted_ms \
                 FROM campaign_items i JOIN campaigns c ON c.campaign_id = i.campaign_id \
                 LEFT JOIN order_units u ON u.campaign_id = i.campaign_id AND u.sku_id = i.sku_id \
                 WHERE i.campaign_id = ? ORDER BY i.sku_id",
            )
            .bind(campaign)
            .fetch_all(&mut *conn)
            .await?;
            let counted =
                rows.first().is_none_or(|r| r.try_get::<Option<i64>, _>(7).ok().flatten().is_some());
            let scanned = if counted { None } else { Some(scan(&mut conn, campaign).await?) };
            rows.iter()
                .map(|r| {
                    let sku_id = text(r, 0)?;
                    let [pending_units, paid_units] = match &scanned {
                        Some(sums) => sums.get(&sku_id).copied().unwrap_or_default(),
                        None => [r.try_get(5)?, r.try_get(6)?],
                    };
                    Ok(StockRow {
                        stock_total: r.try_get(1)?,
                        available: r.try_get(2)?,
                        reserved: r.try_get(3)?,
                        sold: r.try_get(4)?,
                        pending_units,
                        paid_units,
                        sku_id,
                    })
                })
                .collect()
        })
        .await
    }

    /// Counts the sums of a few campaigns launched before they were kept; returns how
    /// many were counted. One campaign's failure is logged and the others go on.
    pub async fn count_uncounted(&self) -> Result<usize> {
        let campaigns: Vec<String> = self
            .bounded(async {
                let rows = sqlx::query(
                    "SELECT campaign_id FROM campaigns WHERE units_counted_ms IS NULL ORDER BY campaign_id LIMIT ?",
                )
                .bind(COUNT_PER_ROUND)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(|r| text(r, 0)).collect()
            })
            .await?;
        let mut counted = 0;
        for campaign in campaigns {
            match self.count_units(&campaign).await {
                Ok(()) => counted += 1,
                Err(e) => tracing::warn!(%campaign, error = %e, "order units not counted this round"),
            }
        }
        Ok(counted)
    }

    /// Counts a campaign's sums from its orders and marks them kept, in one transaction
    /// holding the campaign row exclusively (see the module docs).
    pub async fn count_units(&self, campaign: &str) -> Result<()> {
        self.bounded_for(self.timeout * 30, async {
            let mut conn = self.pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let marked: Option<Option<i64>> =
                sqlx::query_scalar("SELECT units_counted_ms FROM campaigns WHERE campaign_id = ? FOR UPDATE")
                    .bind(campaign)
                    .fetch_optional(&mut *tx)
                    .await?;
            if !matches!(marked, Some(None)) {
                return Ok(());
            }
            let sums = scan(&mut tx, campaign).await?;
            sqlx::query("DELETE FROM order_units WHERE campaign_id = ?")
                .bind(campaign)
                .execute(&mut *tx)
                .await?;
            let by_key: UnitSums<'_> =
                sums.iter().map(|(sku, units)| ((campaign, sku.as_str()), *units)).collect();
            add(&mut tx, &by_key).await?;
            sqlx::query("UPDATE campaigns SET units_counted_ms = ? WHERE campaign_id = ?")
                .bind(engine::clock::now_ms())
                .bind(campaign)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

/// The sums of a campaign's orders, read from the orders themselves: lines inline, or
/// in `order_items` for rows written before they were inline.
async fn scan(conn: &mut MySqlConnection, campaign: &str) -> Result<HashMap<String, [i64; 2]>> {
    let mut sums: HashMap<String, [i64; 2]> = HashMap::new();
    let at = |status: &str| match status {
        "pending_payment" => Ok(0),
        "paid" => Ok(1),
        other => Err(DbError::Corrupt(format!("order status {other}"))),
    };
    let old = sqlx::query(
        "SELECT i.sku_id, o.status, CAST(SUM(i.quantity) AS SIGNED) FROM orders o \
         JOIN order_items i ON i.order_id = o.order_id \
         WHERE o.campaign_id = ? AND o.status IN ('pending_payment', 'paid') AND o.items IS NULL \
         GROUP BY i.sku_id, o.status",
    )
    .bind(campaign)
    .fetch_all(&mut *conn)
    .await?;
    for r in old {
        let units: i64 = r.try_get(2)?;
        sums.entry(text(&r, 0)?).or_default()[at(&text(&r, 1)?)?] += units;
    }
    let mut inline = sqlx::query(
        "SELECT status, items FROM orders \
         WHERE campaign_id = ? AND status IN ('pending_payment', 'paid') AND items IS NOT NULL",
    )
    .bind(campaign)
    .fetch(&mut *conn);
    let mut seen = 0u32;
    while let Some(r) = inline.try_next().await? {
        // Rows stream in and the task yields now and then: a campaign of millions of
        // orders is cut off by the call's time limit instead of holding a thread.
        seen = seen.wrapping_add(1);
        if seen.is_multiple_of(4096) {
            tokio::task::yield_now().await;
        }
        let i = at(&text(&r, 0)?)?;
        for item in lines::decode(&opt_text(&r, 1)?.unwrap_or_default())? {
            sums.entry(item.sku_id).or_default()[i] += item.quantity as i64;
        }
    }
    Ok(sums)
}
