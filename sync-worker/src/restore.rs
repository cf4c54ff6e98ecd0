//! Finding and rebuilding campaign shards Redis lost.
//!
//! Redis here keeps nothing on disk, and a Redis Cluster loses one master's data at a
//! time: a master restarted empty, a failover to a replica behind it. Every
//! `worker.restore_check_ms` the worker asks Redis for the state of every shard of
//! every unretired campaign MySQL holds (one pipelined command per shard: the shard's
//! own meta is its marker) and puts every such campaign back in the campaign index (one
//! command; the index lives in one slot too). A shard that is missing, or left
//! half-rebuilt, is rebuilt from MySQL and the campaign's surviving shards
//! ([`engine::rebuild`]); the campaign's other shards sell on meanwhile, and the lost
//! shard answers 503 until it is whole. One campaign's failure is logged and counted
//! (`flashsale_campaign_errors_total{task="rebuild"}`) and the others go on.
//!
//! What cannot come back: reservations granted but not yet relayed to the broker when
//! their shard died (their outbox entries died with it); their units are on sale again.
//! Orders relayed before the loss but not yet in MySQL when the shard is rebuilt are
//! refused by the persister (`campaigns.restored_ms`: created before it, unknown to
//! MySQL, not in Redis) and dead-lettered as `lost_by_redis`, each logged by id and
//! counted: their units were put back on sale, so MySQL never holds more units than
//! stock. Idempotency keys and payment event ids travel with the orders into MySQL and
//! come back with them, so a retry or a repeated payment event is answered as before.
//!
//! A campaign MySQL holds and Redis does not is not always lost: the operator API
//! writes a launch to MySQL first, so a check can fall between the two writes. The
//! mark's time is therefore taken before Redis is asked, so the launched campaign's
//! orders all come after it, and the persister applies any order the mark refuses that
//! Redis holds: a rebuild writes back only orders MySQL holds, so such an order was
//! never lost. (A shard rebuilt before its launch reached it gets exactly its launch
//! slice: nothing else holds units yet.)

use std::time::Duration;

use engine::campaign::{CampaignLaunch, LaunchItem};
use engine::campaign::{CampaignSnapshot, SnapshotOrder};
use engine::clock::now_ms;
use engine::domain::{CampaignId, EventId, IdempotencyKey, OrderId, SkuId, UserId};
use engine::rebuild::{Rebuilt, ShardState};
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

/// Rebuilds every lost shard of every live campaign; returns how many shards it
/// rebuilt. An error here is one of the reads every campaign shares (MySQL's list,
/// Redis's shard states); one campaign's rebuild failing is logged and counted.
pub async fn check_once(ctx: &Ctx) -> Result<usize> {
    let campaigns: Vec<(CampaignId, u16)> = ctx
        .db
        .live_campaign_shards()
        .await?
        .into_iter()
        .filter_map(|(id, shards)| Some((CampaignId::parse(&id).ok()?, shards)))
        .collect();
    if campaigns.is_empty() {
        return Ok(0);
    }
    // The rebuild mark's time is taken before Redis is asked: a campaign MySQL holds
    // and Redis does not may be a launch under way (MySQL is written first), and its
    // first orders, created once Redis has it, must all come after the mark.
    let at = now_ms();
    let ids: Vec<CampaignId> = campaigns.iter().map(|(c, _)| c.clone()).collect();
    let relisted = ctx.engine.relist(&ids).await?;
    if relisted > 0 {
        tracing::warn!(relisted, "the campaign index had lost live campaigns; listed again");
    }
    let states = ctx.engine.shard_states(&campaigns).await?;
    let mut rebuilt = 0;
    for ((campaign, _), states) in campaigns.iter().zip(states) {
        let lost: Vec<usize> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, ShardState::Missing | ShardState::Restoring))
            .map(|(i, _)| i)
            .collect();
        if lost.is_empty() {
            continue;
        }
        if states.contains(&ShardState::Unknown) {
            // A surviving shard must be read to rebuild a lost one: wait for its node.
            ctx.campaign_failed("rebuild", campaign, &"a shard's node does not answer");
            continue;
        }
        match rebuild_campaign(ctx, campaign, &lost, at).await {
            Ok(n) => rebuilt += n,
            Err(e) => ctx.campaign_failed("rebuild", campaign, &e),
        }
    }
    Ok(rebuilt)
}

/// Rebuilds the `lost` shards of one campaign Redis was asked about after `at`;
/// returns how many it rebuilt.
async fn rebuild_campaign(ctx: &Ctx, campaign: &CampaignId, lost: &[usize], at: i64) -> Result<usize> {
    let Some(row) = ctx.db.campaign(campaign.as_str()).await? else { return Ok(0) };
    // First the mark (from now on MySQL refuses orders Redis lost), then the snapshot:
    // it holds every order MySQL will ever hold from before the loss. An order the
    // mark refuses that Redis holds after all is applied by the persister.
    ctx.db.mark_restored(campaign.as_str(), at).await?;
    let orders = ctx.db.campaign_orders(campaign.as_str()).await?;
    let snapshot = snapshot(campaign, &row, orders)?;
    // A generation above any a gateway has seen: their old sold-out flags cannot
    // outrank what the rebuilt stock says.
    let generation = (now_ms() / 1000) as u64;
    match ctx.engine.rebuild(&snapshot, lost, generation).await? {
        Rebuilt::Shards { shards, stock } => {
            ctx.metrics.restored_campaigns.inc();
            ctx.metrics.restored_shards.inc_by(shards.len() as u64);
            tracing::warn!(%campaign, ?shards, orders = snapshot.orders.len(), ?stock,
                "lost campaign shards rebuilt from MySQL and the surviving shards");
            Ok(shards.len())
        }
        Rebuilt::Nothing => Ok(0),
        Rebuilt::Busy => {
            tracing::info!(%campaign, "another process is rebuilding this campaign's shards");
            Ok(0)
        }
    }
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
                idempotency_key: o.idempotency_key.and_then(|k| IdempotencyKey::parse(&k).ok()),
                payment_event: o.payment_event.and_then(|e| EventId::parse(&e).ok()),
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
