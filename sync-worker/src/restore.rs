//! Rebuilding campaigns Redis lost.
//!
//! Redis here keeps nothing on disk, and even with AOF `everysec` a crash can lose a
//! second. Every `worker.restore_check_ms` the worker reads a marker key it keeps in
//! Redis (one call); a missing marker means Redis lost its data. Then every campaign
//! MySQL holds unretired is checked (pipelined) and each one missing from Redis is
//! rebuilt from MySQL: stock available = stock − units of pending orders − units of
//! paid orders, every order with its state, the pending deadlines, the buyers and
//! each user's count ([`engine::store::StockStore::restore`]; the campaign goes live
//! in the script's last step, and releases and payments wait for it with 503). The
//! campaign sells again within a few seconds, and MySQL never holds more units than
//! stock.
//!
//! What cannot come back: reservations granted but not yet relayed to the broker
//! when Redis died (their outbox entries died with it), idempotency records (a
//! buyer's retry with the same key makes a new reservation, within their limit) and
//! payment-event markers. Orders relayed before the loss but not yet in MySQL when the
//! campaign is rebuilt are refused by the persister (`campaigns.restored_ms`: created
//! before it, unknown to MySQL, not in Redis) and dead-lettered as `lost_by_redis`,
//! with an error naming each order: their units were put back on sale, so MySQL never
//! holds more units than stock.
//!
//! A campaign MySQL holds and Redis does not is not always lost: the operator API
//! writes a launch to MySQL first, so a check can fall between the two writes (on a
//! fresh namespace the marker is missing too). The mark's time is therefore taken
//! before Redis is asked, so the launched campaign's orders all come after it, and the
//! persister applies any order the mark refuses that Redis holds: a rebuild writes
//! back only orders MySQL holds, so such an order was never lost.

use std::time::Duration;

use engine::campaign::{CampaignLaunch, LaunchItem};
use engine::campaign::{CampaignSnapshot, SnapshotOrder};
use engine::clock::now_ms;
use engine::domain::{CampaignId, OrderId, SkuId, UserId};
use ledger::{CampaignRow, OrderRow};
use tokio::sync::watch;

use crate::context::{pause, Ctx};
use crate::error::{Result, WorkerError};

pub async fn run(ctx: &Ctx, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(ctx.settings.worker.restore_check_ms);
    loop {
        if let Err(e) = check_once(ctx).await {
            tracing::warn!(error = %e, "restore check failed");
        }
        if pause(every, &mut stop).await {
            return;
        }
    }
}

/// Rebuilds every campaign Redis lost, if the marker says it lost anything; returns
/// how many it rebuilt.
pub async fn check_once(ctx: &Ctx) -> Result<usize> {
    let store = &ctx.engine;
    if store.data_marker_present().await? {
        return Ok(0);
    }
    let ids: Vec<CampaignId> =
        ctx.db.unretired_campaigns().await?.iter().filter_map(|c| CampaignId::parse(c).ok()).collect();
    // The rebuild mark's time is taken before Redis is asked: a campaign MySQL holds
    // and Redis does not may be a launch under way (MySQL is written first), and its
    // first orders, created once Redis has it, must all come after the mark.
    let at = now_ms();
    let present = store.campaigns_present(&ids).await?;
    let mut restored = 0;
    for (campaign, present) in ids.iter().zip(present) {
        if present {
            continue;
        }
        match restore_campaign(ctx, campaign, at).await {
            Ok(true) => restored += 1,
            Ok(false) => {}
            Err(e) => {
                // Try again next round: the marker must not say "all is well" yet.
                forget_marker(ctx).await;
                return Err(e);
            }
        }
    }
    if restored > 0 {
        tracing::warn!(restored, "redis had lost campaigns; rebuilt from MySQL");
    }
    Ok(restored)
}

async fn forget_marker(ctx: &Ctx) {
    let _ = ctx.engine.clear_data_marker().await;
}

/// Rebuilds one campaign Redis did not hold when it was asked after `at`.
async fn restore_campaign(ctx: &Ctx, campaign: &CampaignId, at: i64) -> Result<bool> {
    let Some(row) = ctx.db.campaign(campaign.as_str()).await? else { return Ok(false) };
    // First the mark (from now on MySQL refuses orders Redis lost), then the snapshot:
    // it holds every order MySQL will ever hold from before the loss. An order the
    // mark refuses that Redis holds after all is applied by the persister.
    ctx.db.mark_restored(campaign.as_str(), at).await?;
    let orders = ctx.db.campaign_orders(campaign.as_str()).await?;
    let snapshot = snapshot(campaign, &row, orders)?;
    // A generation above any a gateway has seen: their old sold-out flags cannot
    // outrank what the rebuilt stock says.
    let generation = (now_ms() / 1000) as u64;
    let Some(stock) = ctx.engine.restore(&snapshot, generation).await? else {
        return Ok(false);
    };
    ctx.metrics.restored_campaigns.inc();
    tracing::warn!(%campaign, orders = snapshot.orders.len(), ?stock, "campaign rebuilt from MySQL");
    Ok(true)
}

fn snapshot(campaign: &CampaignId, row: &CampaignRow, orders: Vec<OrderRow>) -> Result<CampaignSnapshot> {
    let bad =
        |e: engine::domain::InvalidInput| WorkerError::Redis(engine::EngineError::Protocol(e.to_string()));
    let items = row
        .items
        .iter()
        .map(|i| {
            Ok(LaunchItem {
                sku: SkuId::parse(&i.sku_id).map_err(bad)?,
                stock: i.stock_total as u64,
                price_cents: i.price_cents,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let orders = orders
        .into_iter()
        .map(|o| {
            Ok(SnapshotOrder {
                order_id: OrderId::parse(&o.order_id).map_err(bad)?,
                user: UserId::parse(&o.user_id).map_err(bad)?,
                status: o.status,
                items: o.items,
                total_cents: o.total_cents,
                created_ms: o.created_ms,
                expires_ms: o.expires_ms,
                paid_ms: o.paid_ms,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let launch = CampaignLaunch {
        campaign: campaign.clone(),
        starts_ms: row.starts_ms,
        ends_ms: row.ends_ms,
        per_user_limit: row.per_user_limit as u64,
        payment_window_secs: row.payment_window_secs,
        max_orders_per_sec: row.max_orders_per_sec,
        max_user_requests_per_sec: row.max_user_requests_per_sec,
        items,
        shards: row.shards,
    };
    Ok(CampaignSnapshot { launch, orders })
}
