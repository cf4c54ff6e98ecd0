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
//! A shard can also come back **behind** MySQL: a failover to a replica that missed the
//! last writes. The relay records the newest stream id it takes per stream in MySQL
//! before publishing; a live shard whose relay group position is older than that record
//! lost reads Redis had acknowledged ([`engine::behind`]); the relay, which checks
//! this before every read, wakes this check at once (`Ctx::restore_now`). It is held
//! (503 on every path, its data kept); the persister gets a moment for what is already on its way;
//! the orders of its outbox that MySQL still lacks are applied to MySQL each alone, and
//! those that no longer fit (they sold units MySQL had given to orders the shard
//! forgot) are dropped from the shard, logged and counted
//! (`flashsale_forgotten_orders_total`); its outbox is cleared and it is rebuilt as a
//! lost shard, its stream and group raised to the recorded id.
//!
//! A campaign MySQL holds and Redis does not is not always lost: the operator API
//! writes a launch to MySQL first, so a check can fall between the two writes. The
//! mark's time is therefore taken before Redis is asked, so the launched campaign's
//! orders all come after it, and the persister applies any order the mark refuses that
//! Redis holds: a rebuild writes back only orders MySQL holds, so such an order was
//! never lost. (A shard rebuilt before its launch reached it gets exactly its launch
//! slice: nothing else holds units yet.)

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::message::OrderEvent;
use engine::behind::{OutboxEvents, StreamId};
use engine::shards::ShardMap;

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
        tokio::select! {
            stopped = pause(every, &mut stop) => if stopped { return },
            _ = ctx.restore_now.notified() => {}
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
    // How far the relay got, read before the streams themselves: a stream read after its
    // record is never older than it, unless Redis lost what it had.
    let names: Vec<String> = ids.iter().map(|c| c.as_str().to_owned()).collect();
    let relayed = ctx.db.relayed_ids(&names).await?;
    let relisted = ctx.engine.relist(&ids).await?;
    if relisted > 0 {
        tracing::warn!(relisted, "the campaign index had lost live campaigns; listed again");
    }
    let states = ctx.engine.shard_states(&campaigns).await?;
    let maps: Vec<ShardMap> = campaigns.iter().map(|(c, n)| ShardMap::new(c, usize::from(*n))).collect();
    let tags: Vec<CampaignId> = maps.iter().flat_map(|m| m.tags().iter().cloned()).collect();
    let mut positions = ctx.engine.relay_positions(&tags).await.into_iter();
    let mut rebuilt = 0;
    for (((campaign, _), states), map) in campaigns.iter().zip(states).zip(&maps) {
        let positions: Vec<_> = positions.by_ref().take(map.len()).collect();
        let lost: Vec<usize> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, ShardState::Missing | ShardState::Restoring))
            .map(|(i, _)| i)
            .collect();
        let behind: Vec<usize> = (0..map.len())
            .filter(|&i| states.get(i) == Some(&ShardState::Live))
            .filter(|&i| {
                let recorded = relayed.get(map.tag(i).as_str());
                // No stream or no group (a campaign being retired has none): not a
                // sign of a failover, whose replica still has them.
                matches!((recorded, positions.get(i)), (Some(r), Some(Ok(Some(p)))) if p < r)
            })
            .collect();
        if lost.is_empty() && behind.is_empty() {
            continue;
        }
        if states.contains(&ShardState::Unknown) {
            // A surviving shard must be read to rebuild a lost one: wait for its node.
            ctx.campaign_failed("rebuild", campaign, &"a shard's node does not answer");
            continue;
        }
        let outcome = if lost.is_empty() {
            repair_behind(ctx, campaign, map, &behind, &relayed).await
        } else {
            rebuild_campaign(ctx, campaign, map, &lost, &relayed, at).await
        };
        match outcome {
            Ok(n) => rebuilt += n,
            Err(e) => ctx.campaign_failed("rebuild", campaign, &e),
        }
    }
    Ok(rebuilt)
}

/// How long the persister is given to apply what the relay passed on from a held shard.
const SETTLE_WAIT: Duration = Duration::from_secs(2);
/// Outbox entries of a held shard read at most (more: the repair waits for the next round).
const BACKLOG_MAX: usize = 10_000;
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Holds the `behind` shards of one campaign, applies the orders of their outboxes
/// that MySQL lacks (dropping those that no longer fit), and rebuilds them as lost
/// shards.
async fn repair_behind(
    ctx: &Ctx,
    campaign: &CampaignId,
    map: &ShardMap,
    behind: &[usize],
    relayed: &HashMap<String, StreamId>,
) -> Result<usize> {
    let tags: Vec<&CampaignId> = behind.iter().map(|&i| map.tag(i)).collect();
    let mut held = Vec::new();
    for tag in &tags {
        match ctx.engine.hold_shard(tag).await {
            Ok(true) => held.push(*tag),
            Ok(false) => break,
            Err(e) => {
                unhold(ctx, &held).await;
                return Err(e.into());
            }
        }
    }
    if held.len() < tags.len() {
        // Another rebuilder has one of them (or it was lost meanwhile): next round.
        unhold(ctx, &held).await;
        return Ok(0);
    }
    ctx.metrics.behind_shards.inc_by(tags.len() as u64);
    tracing::error!(%campaign, shards = ?behind,
        "campaign shards behind MySQL (a failover lost writes the relay had passed on): held, to be rebuilt");
    let backlogs = match settle(ctx, &tags).await {
        Ok(b) => b,
        Err(e) => {
            unhold(ctx, &held).await;
            return Err(e);
        }
    };
    // From here the shards change: they stay held (503) until rebuilt, by this round or,
    // once the hold lapses, as lost shards by the next.
    for (tag, (entries, missing)) in tags.iter().zip(&backlogs) {
        let events: Vec<OrderEvent> = entries
            .iter()
            .flat_map(|entry| entry.events.iter())
            .filter(|e| missing.contains(&e.order_id))
            .cloned()
            .collect();
        let dropped = apply_or_drop(ctx, campaign, events).await?;
        record_dropped(ctx, &dropped).await?;
        ctx.engine.forget_orders(tag, &dropped).await?;
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        ctx.engine.outbox_ack(tag, &ids).await?;
    }
    // The mark comes after every order of the held shards was made: an order dropped
    // here that reaches MySQL later is refused as lost, whenever it was created.
    rebuild_campaign(ctx, campaign, map, behind, relayed, now_ms()).await
}

/// Applies the events (in stream order) of orders MySQL lacks, each order's together and
/// alone, in the order they first appear (an order Redis holds, so no rebuild mark
/// refuses it); returns the events of the orders that
/// no longer fit (the stock guard refused them).
async fn apply_or_drop(ctx: &Ctx, campaign: &CampaignId, events: Vec<OrderEvent>) -> Result<Vec<OrderEvent>> {
    let mut by_order: Vec<(String, Vec<OrderEvent>)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for e in events {
        match at.get(&e.order_id) {
            Some(&i) => by_order[i].1.push(e),
            None => {
                at.insert(e.order_id.clone(), by_order.len());
                by_order.push((e.order_id.clone(), vec![e]));
            }
        }
    }
    let mut dropped = Vec::new();
    for (order, events) in by_order {
        match ctx.db.apply_events_held_by_redis(&events).await {
            Ok(_) => {}
            Err(ledger::DbError::StockGuard { .. }) => {
                tracing::error!(%campaign, %order, user = %events[0].user_id,
                    "order granted by a shard behind MySQL no longer fits the stock: dropped with the shard's rebuild");
                dropped.extend(events);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(dropped)
}

/// Keeps the dropped orders in the dead-letter list (`lost_by_redis`: a buyer was
/// answered, and a failover lost what made it fit), one letter per order with its
/// furthest event, counted like every dead letter.
async fn record_dropped(ctx: &Ctx, dropped: &[OrderEvent]) -> Result<()> {
    let mut latest: HashMap<&str, &OrderEvent> = HashMap::new();
    for e in dropped {
        let keep = latest.get(e.order_id.as_str()).is_none_or(|k| k.status.can_reach(e.status));
        if keep {
            latest.insert(&e.order_id, e);
        }
    }
    let at = now_ms();
    let letters = latest
        .values()
        .map(|e| {
            Ok(ledger::dead::NewDeadLetter {
                letter: ledger::dead::DeadLetter {
                    order_id: e.order_id.clone(),
                    campaign_id: e.campaign_id.clone(),
                    reason: "lost_by_redis".into(),
                    at_ms: at,
                },
                event_json: serde_json::to_string(e).map_err(|e| WorkerError::Broker(e.to_string()))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    ctx.db.record_dead_letters(&letters).await?;
    ctx.metrics.forgotten_orders.inc_by(letters.len() as u64);
    ctx.metrics.dead_lettered_orders.with_label_values(&["lost_by_redis"]).inc_by(letters.len() as u64);
    Ok(())
}

async fn unhold(ctx: &Ctx, tags: &[&CampaignId]) {
    for tag in tags {
        if let Err(e) = ctx.engine.unhold_shard(tag).await {
            tracing::warn!(error = %e, %tag, "hold not dropped; it lapses by itself");
        }
    }
}

/// Reads each held shard's outbox and waits, keeping the holds, until MySQL holds the
/// orders it carries or [`SETTLE_WAIT`] has passed (what the relay already published is
/// on its way); returns per shard its entries and the orders MySQL still lacks.
async fn settle(ctx: &Ctx, tags: &[&CampaignId]) -> Result<Vec<(Vec<OutboxEvents>, HashSet<String>)>> {
    let mut out = Vec::with_capacity(tags.len());
    for tag in tags {
        let (len, entries) = ctx.engine.outbox_backlog(tag, BACKLOG_MAX).await?;
        if len as usize > entries.len() {
            return Err(WorkerError::Redis(engine::EngineError::Unavailable(format!(
                "shard {tag} behind MySQL holds {len} outbox entries, more than {BACKLOG_MAX}"
            ))));
        }
        out.push(entries);
    }
    let ids: Vec<String> =
        out.iter().flatten().flat_map(|e| e.events.iter().map(|ev| ev.order_id.clone())).collect();
    let started = Instant::now();
    let mut present = ctx.db.orders_present(&ids).await?;
    while ids.iter().any(|id| !present.contains(id)) && started.elapsed() < SETTLE_WAIT {
        tokio::time::sleep(LOOK_EVERY).await;
        for tag in tags {
            keep_hold(ctx, tag).await?;
        }
        present = ctx.db.orders_present(&ids).await?;
    }
    Ok(out
        .into_iter()
        .map(|entries| {
            let missing = entries
                .iter()
                .flat_map(|e| e.events.iter().map(|ev| ev.order_id.clone()))
                .filter(|id| !present.contains(id))
                .collect();
            (entries, missing)
        })
        .collect())
}

async fn keep_hold(ctx: &Ctx, tag: &CampaignId) -> Result<()> {
    if ctx.engine.hold_shard(tag).await? {
        Ok(())
    } else {
        Err(WorkerError::Redis(engine::EngineError::Unavailable(format!("the hold of shard {tag} was lost"))))
    }
}

/// Rebuilds the `lost` shards of one campaign Redis was asked about after `at`;
/// returns how many it rebuilt. Each rebuilt shard's stream keeps its place: its last
/// id is raised to what the relay recorded, so it is not found behind afterwards.
async fn rebuild_campaign(
    ctx: &Ctx,
    campaign: &CampaignId,
    map: &ShardMap,
    lost: &[usize],
    relayed: &HashMap<String, StreamId>,
    at: i64,
) -> Result<usize> {
    let Some(row) = ctx.db.campaign(campaign.as_str()).await? else { return Ok(0) };
    for &shard in lost {
        if let Some(id) = relayed.get(map.tag(shard).as_str()) {
            ctx.engine.raise_stream_id(map.tag(shard), *id).await?;
        }
    }
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
