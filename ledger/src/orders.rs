//! Order and stock reads: the order views, the MySQL sweep, rebuilds, reconciliation.

use common::message::{OrderItem, OrderStatus};
use sqlx::Row;

use crate::db::{opt_text, text, Db, DbError, Result};
use crate::lines;
use crate::rows::OrderRow;

impl Db {
    pub async fn order(&self, order_id: &str) -> Result<Option<OrderRow>> {
        self.bounded(async {
            let Some(r) = sqlx::query(
                "SELECT order_id, campaign_id, user_id, status, total_cents, created_ms, expires_ms, paid_ms, \
                 idempotency_key, payment_event_id, items FROM orders WHERE order_id = ?",
            )
            .bind(order_id)
            .fetch_optional(&self.pool)
            .await?
            else {
                return Ok(None);
            };
            let items = match opt_text(&r, 10)? {
                Some(inline) => lines::decode(&inline)?,
                // A row written before lines were inline.
                None => sqlx::query(
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
                .collect::<Result<Vec<_>>>()?,
            };
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
                idempotency_key: opt_text(&r, 8)?,
                payment_event: opt_text(&r, 9)?,
            }))
        })
        .await
    }

    /// A campaign's pending orders whose deadline passed before `before_ms`, oldest
    /// first, from just after `after` (a `(expires_ms, order_id)` cursor): a sweep that
    /// cannot settle some rows still reaches the ones behind them. One range of the
    /// `orders_campaign_due` index (campaign, status, deadline).
    pub async fn overdue_orders(
        &self,
        campaign: &str,
        before_ms: i64,
        after: Option<&(i64, String)>,
        limit: u32,
    ) -> Result<Vec<(i64, String)>> {
        self.bounded(async {
            let (after_ms, after_id) = after.map_or((i64::MIN, ""), |(ms, id)| (*ms, id.as_str()));
            let rows = sqlx::query(
                "SELECT expires_ms, order_id FROM orders WHERE campaign_id = ? AND status = 'pending_payment' \
                 AND expires_ms < ? AND (expires_ms > ? OR (expires_ms = ? AND order_id > ?)) \
                 ORDER BY expires_ms, order_id LIMIT ?",
            )
            .bind(campaign)
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

    /// Every order of a campaign with its items (restoring a campaign Redis lost).
    pub async fn campaign_orders(&self, campaign: &str) -> Result<Vec<OrderRow>> {
        self.bounded_for(self.timeout * 10, async {
            let rows = sqlx::query(
                "SELECT o.order_id, o.user_id, o.status, o.total_cents, o.created_ms, o.expires_ms, o.paid_ms, \
                 i.sku_id, i.quantity, i.price_cents, o.idempotency_key, o.payment_event_id, o.items \
                 FROM orders o LEFT JOIN order_items i ON o.items IS NULL AND i.order_id = o.order_id \
                 WHERE o.campaign_id = ? ORDER BY o.order_id, i.sku_id",
            )
            .bind(campaign)
            .fetch_all(&self.pool)
            .await?;
            let mut out: Vec<OrderRow> = Vec::new();
            for r in rows {
                let id = text(&r, 0)?;
                // Lines inline, or one row per line of `order_items` (rows from before).
                let items = match opt_text(&r, 12)? {
                    Some(inline) => lines::decode(&inline)?,
                    None => {
                        let quantity: i64 = r.try_get(8)?;
                        vec![OrderItem { sku_id: text(&r, 7)?, quantity: quantity as u64, price_cents: r.try_get(9)? }]
                    }
                };
                if let Some(last) = out.last_mut().filter(|o| o.order_id == id) {
                    last.items.extend(items);
                    continue;
                }
                let status = text(&r, 2)?;
                out.push(OrderRow {
                    order_id: id,
                    campaign_id: campaign.to_owned(),
                    user_id: text(&r, 1)?,
                    status: OrderStatus::parse(&status)
                        .ok_or_else(|| DbError::Corrupt(format!("order status {status}")))?,
                    items,
                    total_cents: r.try_get(3)?,
                    created_ms: r.try_get(4)?,
                    expires_ms: r.try_get(5)?,
                    paid_ms: r.try_get(6)?,
                    idempotency_key: opt_text(&r, 10)?,
                    payment_event: opt_text(&r, 11)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// A campaign's order ids in id order, `limit` at most, after `after` (a page of a
    /// retirement: never every order in memory at once).
    pub async fn order_ids_page(&self, campaign: &str, after: &str, limit: u32) -> Result<Vec<String>> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT order_id FROM orders WHERE campaign_id = ? AND order_id > ? ORDER BY order_id LIMIT ?",
            )
            .bind(campaign)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(|r| text(r, 0)).collect()
        })
        .await
    }

    /// Whether MySQL has a stock row for this sku (an event naming none can never apply).
    pub async fn has_stock_row(&self, campaign: &str, sku: &str) -> Result<bool> {
        self.bounded(async {
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
}
