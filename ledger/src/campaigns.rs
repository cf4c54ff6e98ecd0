//! Campaign rows: launched by the operator API, tuned, marked when Redis lost the
//! campaign and it was rebuilt, and when its per-order data left Redis.

use sqlx::{MySql, QueryBuilder, Row};

use crate::db::{is_duplicate, text, Db, DbError, Result};
use crate::rows::{CampaignItemRow, CampaignRow, InsertCampaign};

impl Db {
    /// Inserts a campaign and its items; an existing id is returned as it is.
    pub async fn insert_campaign(&self, c: &CampaignRow, now_ms: i64) -> Result<InsertCampaign> {
        self.insert_campaign_as(c, now_ms, "admin").await
    }

    /// [`Db::insert_campaign`] by the operator `operator`, recorded as a `launch` in the
    /// campaign's history in the same transaction.
    pub async fn insert_campaign_as(
        &self,
        c: &CampaignRow,
        now_ms: i64,
        operator: &str,
    ) -> Result<InsertCampaign> {
        let inserted = self
            .bounded(async {
                let mut tx = self.pool.begin().await?;
                let res = sqlx::query(
                    "INSERT INTO campaigns (campaign_id, name, starts_ms, ends_ms, per_user_limit, \
                 payment_window_secs, max_orders_per_sec, max_user_requests_per_sec, created_ms, shards, \
                 units_counted_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                .bind(c.shards)
                // No orders yet: its order_units sums are complete from the start.
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
                record_change(&mut tx, &c.campaign_id, now_ms, operator, "launch", None, &launch_json(c))
                    .await?;
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
        self.bounded(async {
            let Some(row) = sqlx::query(
                "SELECT campaign_id, name, starts_ms, ends_ms, per_user_limit, payment_window_secs, \
                 max_orders_per_sec, max_user_requests_per_sec, shards FROM campaigns WHERE campaign_id = ?",
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
                shards: row.try_get(8)?,
            }))
        })
        .await
    }

    /// Records a tuning already applied in Redis, so MySQL shows the live settings.
    pub async fn tune_campaign(
        &self,
        id: &str,
        (ends_ms, per_user_limit): (Option<i64>, Option<i64>),
        (max_orders_per_sec, max_user_requests_per_sec): (Option<Option<u32>>, Option<Option<u32>>),
        (operator, now_ms): (&str, i64),
    ) -> Result<()> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let before = tuning_json(&mut tx, id).await?;
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
            q.build().execute(&mut *tx).await?;
            let after = tuning_json(&mut tx, id).await?;
            record_change(&mut tx, id, now_ms, operator, "tune", Some(&before), &after).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// A campaign's recorded changes, newest first, `limit` at most.
    pub async fn campaign_history(&self, id: &str, limit: u32) -> Result<Vec<CampaignChange>> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT at_ms, operator, action, before_json, after_json FROM campaign_changes \
                 WHERE campaign_id = ? ORDER BY change_id DESC LIMIT ?",
            )
            .bind(id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(CampaignChange {
                        at_ms: r.try_get(0)?,
                        operator: text(r, 1)?,
                        action: text(r, 2)?,
                        before: crate::db::opt_text(r, 3)?,
                        after: text(r, 4)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// One page of campaigns, newest `starts_at` first (ties by id, descending), after
    /// the `(starts_ms, campaign_id)` of the previous page's last one: at most `limit`
    /// of (campaign_id, name, starts_ms), and whether more remain.
    pub async fn campaign_page(
        &self,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<(Vec<(String, String, i64)>, bool)> {
        self.bounded(async {
            let fetch = i64::from(limit) + 1;
            let rows = match after {
                None => {
                    sqlx::query(
                        "SELECT campaign_id, name, starts_ms FROM campaigns \
                         ORDER BY starts_ms DESC, campaign_id DESC LIMIT ?",
                    )
                    .bind(fetch)
                    .fetch_all(&self.pool)
                    .await?
                }
                Some((starts_ms, id)) => {
                    sqlx::query(
                        "SELECT campaign_id, name, starts_ms FROM campaigns \
                         WHERE starts_ms < ? OR (starts_ms = ? AND campaign_id < ?) \
                         ORDER BY starts_ms DESC, campaign_id DESC LIMIT ?",
                    )
                    .bind(starts_ms)
                    .bind(starts_ms)
                    .bind(id)
                    .bind(fetch)
                    .fetch_all(&self.pool)
                    .await?
                }
            };
            let mut page = rows
                .iter()
                .map(|r| Ok((text(r, 0)?, text(r, 1)?, r.try_get(2)?)))
                .collect::<Result<Vec<_>>>()?;
            let more = page.len() > limit as usize;
            page.truncate(limit as usize);
            Ok((page, more))
        })
        .await
    }

    /// Campaigns whose data Redis should still hold (not retired).
    /// Whether a campaign with this id was launched (one primary-key look-up).
    pub async fn campaign_exists(&self, id: &str) -> Result<bool> {
        self.bounded(async {
            let found = sqlx::query("SELECT 1 FROM campaigns WHERE campaign_id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            Ok(found.is_some())
        })
        .await
    }

    /// Each sku's stock buckets as MySQL holds them (sku, total, available, reserved,
    /// sold), in sku order: the campaign view while Redis cannot answer for it.
    pub async fn buckets(&self, campaign: &str) -> Result<Vec<(String, i64, i64, i64, i64)>> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT sku_id, stock_total, available, reserved, sold FROM campaign_items \
                 WHERE campaign_id = ? ORDER BY sku_id",
            )
            .bind(campaign)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| Ok((text(r, 0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?)))
                .collect()
        })
        .await
    }

    /// Every unretired campaign with its shard count (what the worker checks Redis for).
    pub async fn live_campaign_shards(&self) -> Result<Vec<(String, u16)>> {
        self.bounded(async {
            let rows = sqlx::query("SELECT campaign_id, shards FROM campaigns WHERE retired_ms IS NULL")
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(|r| Ok((text(r, 0)?, r.try_get::<u16, _>(1)?))).collect()
        })
        .await
    }

    pub async fn unretired_campaigns(&self) -> Result<Vec<String>> {
        self.bounded(async {
            let rows = sqlx::query("SELECT campaign_id FROM campaigns WHERE retired_ms IS NULL")
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(|r| text(r, 0)).collect()
        })
        .await
    }

    /// Unretired campaigns that ended before `ended_before_ms`.
    pub async fn campaigns_to_retire(&self, ended_before_ms: i64) -> Result<Vec<String>> {
        self.bounded(async {
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
        self.mark(campaign, "UPDATE campaigns SET restored_ms = ? WHERE campaign_id = ?", at_ms).await
    }

    /// Records that a campaign's per-order data left Redis.
    pub async fn mark_retired(&self, campaign: &str, at_ms: i64) -> Result<()> {
        self.mark(campaign, "UPDATE campaigns SET retired_ms = ? WHERE campaign_id = ?", at_ms).await
    }

    async fn mark(&self, campaign: &str, update: &'static str, at_ms: i64) -> Result<()> {
        self.bounded(async {
            sqlx::query(update).bind(at_ms).bind(campaign).execute(&self.pool).await?;
            Ok(())
        })
        .await
    }
}

/// One recorded change of a campaign; `before` and `after` are JSON objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignChange {
    pub at_ms: i64,
    pub operator: String,
    pub action: String,
    pub before: Option<String>,
    pub after: String,
}

/// A launch as its history records it: the whole definition.
fn launch_json(c: &CampaignRow) -> String {
    let items: Vec<serde_json::Value> = c
        .items
        .iter()
        .map(
            |i| serde_json::json!({"sku_id": i.sku_id, "stock": i.stock_total, "price_cents": i.price_cents}),
        )
        .collect();
    serde_json::json!({
        "name": c.name, "starts_ms": c.starts_ms, "ends_ms": c.ends_ms, "per_user_limit": c.per_user_limit,
        "payment_window_secs": c.payment_window_secs, "max_orders_per_sec": c.max_orders_per_sec,
        "max_user_requests_per_sec": c.max_user_requests_per_sec, "shards": c.shards, "items": items,
    })
    .to_string()
}

/// What a tuning may change, as the row holds it now (read under its lock).
async fn tuning_json(tx: &mut sqlx::Transaction<'_, MySql>, id: &str) -> Result<String> {
    let r = sqlx::query(
        "SELECT ends_ms, per_user_limit, max_orders_per_sec, max_user_requests_per_sec FROM campaigns \
         WHERE campaign_id = ? FOR UPDATE",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(serde_json::json!({
        "ends_ms": r.try_get::<i64, _>(0)?, "per_user_limit": r.try_get::<i64, _>(1)?,
        "max_orders_per_sec": r.try_get::<Option<u32>, _>(2)?,
        "max_user_requests_per_sec": r.try_get::<Option<u32>, _>(3)?,
    })
    .to_string())
}

async fn record_change(
    tx: &mut sqlx::Transaction<'_, MySql>,
    id: &str,
    at_ms: i64,
    operator: &str,
    action: &str,
    before: Option<&str>,
    after: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO campaign_changes (campaign_id, at_ms, operator, action, before_json, after_json) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(at_ms)
    .bind(operator)
    .bind(action)
    .bind(before)
    .bind(after)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
