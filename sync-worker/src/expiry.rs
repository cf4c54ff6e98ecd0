//! Giving unpaid stock back, exactly once, within 2 s of the deadline.
//!
//! Three paths lead to `release.lua` (which expires a pending order at most once and
//! refuses before its deadline; many orders per call, so a burst of 10,000 deadlines
//! in one second is a few dozen calls):
//! - payment timers from the delay queues (`<ns>.timeouts`);
//! - the Redis sweep: every `worker.sweep_interval_ms` it releases every order past
//!   its deadline in the campaigns whose earliest deadline has come. It knows each
//!   campaign's earliest deadline (one pipelined read for all of them at start and
//!   every [`RESCAN_EVERY`]) and re-reads it only for campaigns that had outbox work
//!   since (new reservations), so it never polls idle campaigns;
//! - the MySQL sweep: orders MySQL still shows pending well past their deadline. Each
//!   is settled: released in Redis if Redis holds it pending, given Redis's state if
//!   Redis moved on (the event that would have told MySQL was lost or is late), or
//!   expired in MySQL alone if Redis no longer knows it. It walks each unretired
//!   campaign's overdue rows in deadline order (one index range: campaign, status,
//!   deadline) with a cursor, so a row it cannot settle never hides the rows behind it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::message::{OrderEvent, OrderStatus};
use engine::campaign::OrderRecord;
use engine::clock::now_ms;
use engine::domain::{CampaignId, OrderId, ReleaseOutcome, ReleaseReason};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::Channel;
use tokio::sync::watch;

use crate::context::{consume, pause, Ctx};
use crate::error::{bounded, Result, WorkerError};
use crate::persister::Timer;
/// Full re-read of every campaign's next deadline, and the look for unit moves
/// between shards that a process left half done.
const RESCAN_EVERY: Duration = Duration::from_secs(30);

/// Orders read from one campaign's pending set per round at most (released in
/// batches of `engine::scripts::release::BATCH_MAX`).
const SWEEP_BATCH: usize = 4096;
/// How late an order must be before the MySQL sweep looks at it (the other paths
/// normally win well before).
const MYSQL_SWEEP_GRACE_MS: i64 = 5_000;
/// How often the MySQL sweep runs.
const MYSQL_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Overdue rows the MySQL sweep reads per query.
const MYSQL_SWEEP_PAGE: u32 = 512;
/// Rows the MySQL sweep looks at per run at most: a run stays short, the cursor
/// carries on from there next time.
const MYSQL_SWEEP_MAX_ROWS: usize = 8192;

pub async fn consume_timers(ctx: &Ctx, ch: &Channel, mut stop: watch::Receiver<bool>) -> Result<()> {
    let limit = ctx.broker_timeout();
    let mut consumer = consume(ctx, ch, &ctx.names.timeouts_queue, "timeouts").await?;
    loop {
        let next = tokio::select! {
            d = consumer.next() => d,
            _ = stop.changed() => return Ok(()),
        };
        let Some(d) = next else {
            return Err(WorkerError::Broker("timeout consumer ended".into()));
        };
        let d = d?;
        let Ok(timer) = serde_json::from_slice::<Timer>(&d.data) else {
            ctx.metrics.poisoned.inc();
            bounded(limit, "basic.reject", d.acker.reject(BasicRejectOptions { requeue: false })).await?;
            continue;
        };
        match expire_all(ctx, &timer.order_ids).await {
            Ok(()) => {
                bounded(limit, "basic.ack", d.acker.ack(BasicAckOptions::default())).await?;
            }
            Err(e) => {
                tracing::warn!(error = %e, "expiry failed; timer requeued (the sweep also covers it)");
                pause(Duration::from_millis(500), &mut stop).await;
                let nack = d.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() });
                bounded(limit, "basic.nack", nack).await?;
            }
        }
    }
}

/// Expires a timer's orders, campaign by campaign; a campaign that fails does not stop
/// the others. Returns an error (the timer is requeued; releasing is idempotent) if any
/// campaign failed. A campaign Redis cannot answer for and MySQL has no row of (its
/// data deleted: a launch writes MySQL's row first) has nothing to release: its orders
/// are dropped from the timer, counted and logged, not retried for ever.
async fn expire_all(ctx: &Ctx, ids: &[String]) -> Result<()> {
    let mut failed = None;
    for (campaign, orders) in by_campaign(ids.iter().map(String::as_str)) {
        match ctx.engine.release_many(&campaign, &orders, ReleaseReason::Expired).await {
            Ok(outcomes) => {
                ctx.metrics.expired.with_label_values(&["timer"]).inc_by(count_released(&outcomes) as u64);
            }
            Err(e) if matches!(ctx.db.campaign(campaign.as_str()).await, Ok(None)) => {
                ctx.metrics.timer_orders_dropped.inc_by(orders.len() as u64);
                tracing::warn!(%campaign, orders = orders.len(), error = %e,
                    "payment timer of a campaign neither Redis nor MySQL knows: its orders dropped");
            }
            Err(e) => {
                ctx.campaign_failed("expiry_timer", &campaign, &e);
                failed = Some(e);
            }
        }
    }
    failed.map_or(Ok(()), |e| Err(e.into()))
}

/// Order ids grouped by campaign (ids that do not parse are skipped).
fn by_campaign<'a>(ids: impl Iterator<Item = &'a str>) -> BTreeMap<CampaignId, Vec<OrderId>> {
    let mut by_campaign: BTreeMap<CampaignId, Vec<OrderId>> = BTreeMap::new();
    for id in ids {
        if let Ok(order) = OrderId::parse(id) {
            by_campaign.entry(order.campaign()).or_default().push(order);
        }
    }
    by_campaign
}

fn count_released(outcomes: &[(OrderId, ReleaseOutcome)]) -> usize {
    outcomes.iter().filter(|(_, o)| *o == ReleaseOutcome::Released).count()
}

/// What the Redis sweep knows of each campaign: its earliest pending deadline.
#[derive(Default)]
pub struct SweepState {
    next_due: HashMap<CampaignId, i64>,
    last_scan: Option<Instant>,
    /// Every campaign was looked at for half-done unit moves once.
    moves_checked: bool,
}

pub async fn sweep_redis(ctx: &Ctx, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(ctx.settings.worker.sweep_interval_ms);
    let mut state = SweepState::default();
    loop {
        if let Err(e) = sweep_redis_once(ctx, &mut state).await {
            tracing::warn!(error = %e, "redis expiry sweep failed");
            state.last_scan = None;
        }
        if pause(every, &mut stop).await {
            return;
        }
    }
}

/// Releases every pending order past its deadline in the campaigns where one is due;
/// returns how many it released.
pub async fn sweep_redis_once(ctx: &Ctx, state: &mut SweepState) -> Result<usize> {
    let store = &ctx.engine;
    let rescan = state.last_scan.is_none_or(|at| at.elapsed() >= RESCAN_EVERY);
    let stale: Vec<CampaignId> = if rescan {
        state.last_scan = Some(Instant::now());
        state.next_due.clear();
        let all = store.campaign_ids().await?;
        // Moves happen while a campaign sells (its outbox has work): after the first
        // look at every campaign, only those with recent work are looked at again.
        let movers = if state.moves_checked {
            ctx.activity.within(RESCAN_EVERY * 2)
        } else {
            state.moves_checked = true;
            all.clone()
        };
        for c in &movers {
            match store.finish_moves(c, engine::shards::MOVE_STALE_MS).await {
                Ok(0) => {}
                Ok(finished) => {
                    tracing::warn!(campaign = %c, finished, "finished unit moves a stopped process left");
                }
                Err(e) => ctx.campaign_failed("finish_moves", c, &e),
            }
        }
        all
    } else {
        // Campaigns with outbox work since the last round may have new deadlines.
        ctx.activity.within(Duration::from_millis(ctx.settings.worker.sweep_interval_ms * 4))
    };
    for (c, due) in stale.iter().zip(store.next_deadlines(&stale).await?) {
        match due {
            Some(ms) => state.next_due.insert(c.clone(), ms),
            None => state.next_due.remove(c),
        };
    }
    let now = now_ms();
    let due: Vec<CampaignId> =
        state.next_due.iter().filter(|(_, ms)| **ms <= now).map(|(c, _)| c.clone()).collect();
    let mut released = 0;
    for campaign in &due {
        match sweep_campaign(ctx, campaign).await {
            Ok(n) => released += n,
            Err(e) => ctx.campaign_failed("expiry_sweep", campaign, &e),
        }
    }
    for (c, ms) in due.iter().zip(store.next_deadlines(&due).await?) {
        match ms {
            Some(ms) => state.next_due.insert(c.clone(), ms),
            None => state.next_due.remove(c),
        };
    }
    Ok(released)
}

/// Releases every order of one campaign past its deadline; returns how many.
async fn sweep_campaign(ctx: &Ctx, campaign: &CampaignId) -> Result<usize> {
    let mut released = 0;
    loop {
        let orders = ctx.engine.due_orders(campaign, now_ms(), SWEEP_BATCH).await?;
        if orders.is_empty() {
            return Ok(released);
        }
        let outcomes = ctx.engine.release_many(campaign, &orders, ReleaseReason::Expired).await?;
        let n = count_released(&outcomes);
        ctx.metrics.expired.with_label_values(&["sweeper"]).inc_by(n as u64);
        released += n;
        // A short read is everything due; a read with nothing released is orders the
        // Redis clock does not see due yet.
        if orders.len() < SWEEP_BATCH || n == 0 {
            return Ok(released);
        }
    }
}

pub async fn sweep_mysql(ctx: &Ctx, mut stop: watch::Receiver<bool>) {
    loop {
        if pause(MYSQL_SWEEP_INTERVAL, &mut stop).await {
            return;
        }
        if let Err(e) = sweep_mysql_once(ctx).await {
            tracing::warn!(error = %e, "mysql expiry sweep failed");
        }
    }
}

/// Settles every order MySQL shows pending well past its deadline (see the module
/// docs), campaign by campaign; returns how many it settled. A campaign that fails is
/// counted and skipped: its rows come round again next run.
pub async fn sweep_mysql_once(ctx: &Ctx) -> Result<usize> {
    let before = now_ms() - MYSQL_SWEEP_GRACE_MS;
    let mut settled = 0;
    for id in ctx.db.unretired_campaigns().await? {
        let Ok(campaign) = CampaignId::parse(&id) else { continue };
        match sweep_mysql_campaign(ctx, &campaign, before).await {
            Ok(n) => settled += n,
            Err(e) => ctx.campaign_failed("mysql_sweep", &campaign, &e),
        }
    }
    Ok(settled)
}

/// One campaign's overdue pending rows, in deadline order, [`MYSQL_SWEEP_MAX_ROWS`] at
/// most per run; returns how many it settled. The cursor walks past rows that could
/// not be settled, so they never hide the rows behind them.
async fn sweep_mysql_campaign(ctx: &Ctx, campaign: &CampaignId, before: i64) -> Result<usize> {
    let mut cursor: Option<(i64, String)> = None;
    let mut settled = 0;
    let mut seen = 0;
    while seen < MYSQL_SWEEP_MAX_ROWS {
        let page =
            ctx.db.overdue_orders(campaign.as_str(), before, cursor.as_ref(), MYSQL_SWEEP_PAGE).await?;
        let Some(last) = page.last().cloned() else { break };
        seen += page.len();
        let orders: Vec<OrderId> = page.iter().filter_map(|(_, id)| OrderId::parse(id).ok()).collect();
        settled += settle_campaign(ctx, campaign, &orders).await?;
        if page.len() < MYSQL_SWEEP_PAGE as usize {
            break;
        }
        cursor = Some(last);
    }
    Ok(settled)
}

/// Settles one campaign's overdue orders; returns how many changed.
async fn settle_campaign(ctx: &Ctx, campaign: &CampaignId, orders: &[OrderId]) -> Result<usize> {
    let mut settled = 0;
    for (order, outcome) in ctx.engine.release_many(campaign, orders, ReleaseReason::Expired).await? {
        settled += usize::from(settle(ctx, &order, outcome).await?);
    }
    Ok(settled)
}

/// Makes MySQL agree with Redis about one overdue order; returns whether it changed.
async fn settle(ctx: &Ctx, order: &OrderId, outcome: ReleaseOutcome) -> Result<bool> {
    let id = order.as_str();
    let source = match outcome {
        // The expired event is on its way to MySQL through the outbox.
        ReleaseOutcome::Released => "released",
        ReleaseOutcome::NotDue { .. } => return Ok(false),
        // Redis moved on and the event that would have told MySQL was lost or is late:
        // take Redis's state.
        ReleaseOutcome::NotPending(_) => {
            let Some(record) = ctx.engine.order(order).await? else { return Ok(false) };
            ctx.db.apply_events(&[event_from_redis(order, &record)]).await?;
            tracing::warn!(order = %id, status = record.status.as_str(), "mysql sweep: took redis's state");
            "redis_state"
        }
        // Redis no longer knows the order: MySQL is all there is; expire it there.
        ReleaseOutcome::NotFound => {
            let Some(row) = ctx.db.order(id).await? else { return Ok(false) };
            let event = OrderEvent {
                order_id: row.order_id,
                campaign_id: row.campaign_id,
                user_id: row.user_id,
                status: OrderStatus::Expired,
                items: row.items,
                total_cents: row.total_cents,
                created_ms: row.created_ms,
                expires_ms: row.expires_ms,
                paid_ms: 0,
                payment_window_secs: 0,
                event_ms: now_ms(),
                idempotency_key: None,
                payment_event: None,
                trace: None,
            };
            ctx.db.apply_events(&[event]).await?;
            tracing::warn!(order = %id, "mysql sweep: expired in MySQL only, Redis no longer knew the order");
            "mysql_only"
        }
    };
    ctx.metrics.expired.with_label_values(&["mysql_sweeper"]).inc();
    ctx.metrics.sweep_repairs.with_label_values(&[source]).inc();
    Ok(true)
}

fn event_from_redis(order: &OrderId, r: &OrderRecord) -> OrderEvent {
    OrderEvent {
        order_id: order.as_str().to_owned(),
        campaign_id: order.campaign().as_str().to_owned(),
        user_id: r.user.clone(),
        status: r.status,
        items: r.items.clone(),
        total_cents: r.total_cents,
        created_ms: r.created_ms,
        expires_ms: r.expires_ms,
        paid_ms: r.paid_ms.unwrap_or(0),
        payment_window_secs: 0,
        event_ms: now_ms(),
        idempotency_key: None,
        payment_event: None,
        trace: None,
    }
}
