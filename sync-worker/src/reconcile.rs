//! Periodic Redis/MySQL reconciliation: exports the drift and warns when it lasts.

use std::collections::HashMap;
use std::time::Duration;

use common::reconcile::{compare, Reconciliation};
use engine::domain::CampaignId;
use tokio::sync::watch;

use crate::context::{pause, Ctx};
use crate::error::Result;

/// Consecutive inconsistent checks before a warning: a check taken while events are
/// in flight is normally inconsistent for a moment.
const WARN_AFTER_CHECKS: u32 = 3;

pub async fn run(ctx: &Ctx, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(ctx.settings.worker.reconcile_interval_ms);
    let mut streak: HashMap<CampaignId, u32> = HashMap::new();
    loop {
        if pause(every, &mut stop).await {
            return;
        }
        let campaigns = match ctx.engine.store().campaign_ids().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reconciliation: cannot list campaigns");
                continue;
            }
        };
        for campaign in campaigns {
            match check(ctx, &campaign).await {
                Ok(Some(r)) => {
                    let drift: i64 = r.items.iter().map(|i| i.drift.abs()).sum();
                    ctx.metrics.drift_units.with_label_values(&[campaign.as_str()]).set(drift);
                    let n = streak.entry(campaign.clone()).or_default();
                    *n = if r.consistent { 0 } else { *n + 1 };
                    if *n == WARN_AFTER_CHECKS {
                        tracing::warn!(%campaign, drift, report = ?r.items, "redis and mysql disagree");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, %campaign, "reconciliation failed"),
            }
        }
    }
}

pub async fn check(ctx: &Ctx, campaign: &CampaignId) -> Result<Option<Reconciliation>> {
    let store = ctx.engine.store();
    let Some(meta) = store.campaign_meta(campaign).await? else {
        return Ok(None);
    };
    let counters = store.counters(campaign, &meta.skus).await?;
    let redis: Vec<_> = counters.iter().map(|c| c.to_redis_stock()).collect();
    let mysql = ctx.db.stock(campaign.as_str()).await?;
    Ok(Some(compare(&redis, &mysql)))
}
