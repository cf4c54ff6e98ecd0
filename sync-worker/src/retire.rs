//! Retiring finished campaigns: once a campaign ended more than
//! `worker.retain_finished_secs` ago and is settled (nothing pending in Redis, its
//! outbox empty, Redis and MySQL reconciled), its per-order data leaves Redis (orders,
//! user counts, buyers, pending set, outbox); its meta and stock stay, so it still
//! answers "ended" and shows its counters. MySQL records the retirement, so the
//! campaign is never rebuilt, and the relay and sweeps stop seeing it.

use std::time::Duration;

use engine::clock::now_ms;
use engine::domain::{CampaignId, OrderId};
use tokio::sync::watch;

use crate::context::{pause, Ctx};
use crate::error::Result;

/// How often finished campaigns are looked for.
const RETIRE_EVERY: Duration = Duration::from_secs(60);

pub async fn run(ctx: &Ctx, mut stop: watch::Receiver<bool>) {
    loop {
        if pause(RETIRE_EVERY.min(Duration::from_secs(ctx.settings.worker.retain_finished_secs)), &mut stop)
            .await
        {
            return;
        }
        if let Err(e) = retire_once(ctx).await {
            tracing::warn!(error = %e, "retiring finished campaigns failed");
        }
    }
}

/// Order ids read and dropped from Redis per page when a campaign retires.
const RETIRE_PAGE: u32 = 10_000;

/// Retires every settled campaign past its retention; returns how many.
pub async fn retire_once(ctx: &Ctx) -> Result<usize> {
    let retention_ms = (ctx.settings.worker.retain_finished_secs * 1000) as i64;
    let mut retired = 0;
    for id in ctx.db.campaigns_to_retire(now_ms() - retention_ms).await? {
        let Ok(campaign) = CampaignId::parse(&id) else { continue };
        match retire_one(ctx, &campaign).await {
            Ok(done) => retired += usize::from(done),
            Err(e) => ctx.campaign_failed("retire", &campaign, &e),
        }
    }
    Ok(retired)
}

/// Retires one campaign if it is settled; returns whether it did.
async fn retire_one(ctx: &Ctx, campaign: &CampaignId) -> Result<bool> {
    if !settled(ctx, campaign).await? {
        return Ok(false);
    }
    let id = campaign.as_str();
    // A page of order ids at a time: a campaign of millions never sits in memory whole.
    let (mut after, mut retired) = (String::new(), 0usize);
    loop {
        let page = ctx.db.order_ids_page(id, &after, RETIRE_PAGE).await?;
        let Some(last) = page.last().cloned() else { break };
        let orders: Vec<OrderId> = page.iter().filter_map(|o| OrderId::parse(o).ok()).collect();
        ctx.engine.retire_orders(campaign, &orders).await?;
        retired += page.len();
        after = last;
    }
    ctx.engine.retire_finish(campaign).await?;
    ctx.db.mark_retired(id, now_ms()).await?;
    ctx.metrics.retired_campaigns.inc();
    tracing::info!(%campaign, orders = retired, "finished campaign retired from Redis");
    Ok(true)
}

async fn settled(ctx: &Ctx, campaign: &CampaignId) -> Result<bool> {
    let store = &ctx.engine;
    let c = std::slice::from_ref(campaign);
    if store.next_deadlines(c).await?.first().copied().flatten().is_some() {
        return Ok(false);
    }
    let streams = store.outbox_streams(c).await?;
    if store.outbox_lengths(&streams).await?.iter().any(|n| *n > 0) {
        return Ok(false);
    }
    Ok(ledger::reconcile::check(&ctx.engine, &ctx.db, campaign).await?.is_some_and(|r| r.consistent))
}
