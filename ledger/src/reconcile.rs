//! Compares a campaign's stock in Redis with MySQL: [`check`] reads both sides,
//! [`against`] takes Redis's counters already read, [`compare`] is the pure comparison. The operator API, the worker's periodic check
//! and retirement all call [`check`].
//!
//! Consistent means every reservation Redis granted is in MySQL in the same state:
//! per sku the three buckets agree, and MySQL's reserved and sold units equal the
//! units of its pending and paid orders.

use engine::campaign::SkuCounters;
use engine::domain::CampaignId;
use engine::Engine;
use serde::Serialize;

use crate::db::{Db, DbError};
use crate::rows::StockRow;

/// What a reconciliation can fail on: one side did not answer.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Redis(#[from] engine::EngineError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Reads a campaign's counters from Redis and its stock from MySQL and compares
/// them; `None` when Redis does not know the campaign.
pub async fn check(
    engine: &Engine,
    db: &Db,
    campaign: &CampaignId,
) -> Result<Option<Reconciliation>, ReconcileError> {
    let Some(meta) = engine.campaign_meta(campaign).await? else {
        return Ok(None);
    };
    let counters = engine.counters(campaign, &meta.skus).await?;
    against(db, campaign, &counters).await.map(Some)
}

/// Compares counters already read from Redis with MySQL's stock of the campaign.
pub async fn against(
    db: &Db,
    campaign: &CampaignId,
    counters: &[SkuCounters],
) -> Result<Reconciliation, ReconcileError> {
    let redis: Vec<RedisStock> = counters.iter().map(RedisStock::from).collect();
    let mysql = db.stock(campaign.as_str()).await?;
    Ok(compare(&redis, &mysql))
}

impl From<&SkuCounters> for RedisStock {
    fn from(c: &SkuCounters) -> Self {
        Self {
            sku_id: c.sku.to_string(),
            available: c.available as i64,
            reserved: c.reserved as i64,
            sold: c.sold as i64,
        }
    }
}

/// One sku's counters as Redis holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStock {
    pub sku_id: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReconciliationItem {
    pub sku_id: String,
    pub redis_available: i64,
    pub mysql_available: i64,
    pub redis_reserved: i64,
    pub mysql_reserved: i64,
    pub redis_sold: i64,
    pub mysql_sold: i64,
    /// Units in MySQL orders awaiting payment.
    pub pending: i64,
    /// Units in MySQL orders paid.
    pub paid: i64,
    /// `redis_available - mysql_available`: units Redis granted that MySQL has not seen.
    pub drift: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reconciliation {
    pub consistent: bool,
    pub items: Vec<ReconciliationItem>,
}

pub fn compare(redis: &[RedisStock], mysql: &[StockRow]) -> Reconciliation {
    let mut items = Vec::with_capacity(redis.len().max(mysql.len()));
    let mut consistent = redis.len() == mysql.len();
    for r in redis {
        let m = mysql.iter().find(|m| m.sku_id == r.sku_id);
        let (ma, mr, ms, pending, paid) =
            m.map_or((0, 0, 0, 0, 0), |m| (m.available, m.reserved, m.sold, m.pending_units, m.paid_units));
        let item = ReconciliationItem {
            sku_id: r.sku_id.clone(),
            redis_available: r.available,
            mysql_available: ma,
            redis_reserved: r.reserved,
            mysql_reserved: mr,
            redis_sold: r.sold,
            mysql_sold: ms,
            pending,
            paid,
            drift: r.available - ma,
        };
        consistent &=
            m.is_some() && item.drift == 0 && r.reserved == mr && r.sold == ms && mr == pending && ms == paid;
        items.push(item);
    }
    Reconciliation { consistent, items }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(a: i64, r: i64, s: i64) -> RedisStock {
        RedisStock { sku_id: "x".into(), available: a, reserved: r, sold: s }
    }

    fn mysql(a: i64, r: i64, s: i64, pending: i64, paid: i64) -> StockRow {
        StockRow {
            sku_id: "x".into(),
            stock_total: a + r + s,
            available: a,
            reserved: r,
            sold: s,
            pending_units: pending,
            paid_units: paid,
        }
    }

    #[test]
    fn agreement_is_consistent() {
        let r = compare(&[redis(5, 3, 2)], &[mysql(5, 3, 2, 3, 2)]);
        assert!(r.consistent);
        assert_eq!(r.items[0].drift, 0);
    }

    #[test]
    fn unpersisted_reservations_show_as_drift() {
        let r = compare(&[redis(4, 4, 2)], &[mysql(5, 3, 2, 3, 2)]);
        assert!(!r.consistent);
        assert_eq!(r.items[0].drift, -1);
    }

    #[test]
    fn a_missing_sku_or_orders_that_disagree_with_counters_are_inconsistent() {
        assert!(!compare(&[redis(5, 3, 2)], &[]).consistent);
        assert!(!compare(&[redis(5, 3, 2)], &[mysql(5, 3, 2, 2, 2)]).consistent);
    }
}
