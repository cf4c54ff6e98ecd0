//! Periodic Redis/MySQL reconciliation: exports the drift and warns when it lasts,
//! and counts once the order sums of campaigns launched before MySQL kept them.
//!
//! Only campaigns with outbox work in the last [`ACTIVE_WINDOW`] are checked, plus
//! every campaign that was inconsistent at its last check until it is consistent
//! again: a finished, settled campaign costs nothing, however many there are.

use std::collections::HashMap;
use std::time::Duration;

use engine::domain::CampaignId;
use tokio::sync::watch;

use crate::context::{pause, Ctx};

/// Consecutive inconsistent checks before a warning: a check taken while events are
/// in flight is normally inconsistent for a moment.
const WARN_AFTER_CHECKS: u32 = 3;
/// A campaign is checked for this long after its last outbox work.
const ACTIVE_WINDOW: Duration = Duration::from_secs(120);

pub async fn run(ctx: &Ctx, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(ctx.settings.worker.reconcile_interval_ms);
    let mut streak: HashMap<CampaignId, u32> = HashMap::new();
    loop {
        if pause(every, &mut stop).await {
            return;
        }
        // Campaigns launched before MySQL kept their order sums are counted once, a
        // few per round (each under its campaign row's lock: see `ledger::units`).
        match ctx.db.count_uncounted().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(campaigns = n, "order unit sums counted"),
            Err(e) => tracing::warn!(error = %e, "campaigns to count not listed"),
        }
        let mut campaigns = ctx.activity.within(ACTIVE_WINDOW);
        campaigns.extend(streak.keys().filter(|c| !campaigns.contains(c)).cloned().collect::<Vec<_>>());
        let (mut drift_total, mut inconsistent) = (0, 0);
        for campaign in campaigns {
            match ledger::reconcile::check(&ctx.engine, &ctx.db, &campaign).await {
                Ok(Some(r)) => {
                    let drift: i64 = r.items.iter().map(|i| i.drift.abs()).sum();
                    drift_total += drift;
                    if r.consistent {
                        streak.remove(&campaign);
                        continue;
                    }
                    inconsistent += 1;
                    let n = streak.entry(campaign.clone()).or_default();
                    *n += 1;
                    if *n == WARN_AFTER_CHECKS {
                        tracing::warn!(%campaign, drift, report = ?r.items, "redis and mysql disagree");
                    }
                }
                Ok(None) => {
                    streak.remove(&campaign);
                }
                Err(e) => ctx.campaign_failed("reconcile", &campaign, &e),
            }
        }
        ctx.metrics.drift_units.set(drift_total);
        ctx.metrics.inconsistent_campaigns.set(inconsistent);
    }
}
