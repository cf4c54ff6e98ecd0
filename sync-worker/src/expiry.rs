//! Giving unpaid stock back, exactly once, within 2 s of the deadline.
//!
//! Three paths lead to `release.lua` (which expires a pending order at most once and
//! refuses before its deadline):
//! - payment timers from the delay queues (`<ns>.timeouts`);
//! - the Redis sweep: every `worker.sweep_interval_ms`, each campaign's pending set
//!   is read for deadlines past, so expiry does not depend on the broker at all;
//! - the MySQL sweep: orders MySQL still shows pending well past their deadline;
//!   one Redis no longer knows is expired in MySQL directly.

use std::time::Duration;

use common::message::OrderEvent;
use engine::domain::{OrderId, ReleaseOutcome, ReleaseReason};
use engine::engine::now_ms;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::watch;

use crate::context::{pause, Ctx};
use crate::error::{bounded, Result, WorkerError};
use crate::persister::Timer;

/// Orders released per campaign per sweep at most.
const SWEEP_BATCH: usize = 512;
/// How late an order must be before the MySQL sweep looks at it (the other paths
/// normally win well before).
const MYSQL_SWEEP_GRACE_MS: i64 = 5_000;
/// How often the MySQL sweep runs.
const MYSQL_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

pub async fn consume_timers(ctx: &Ctx, ch: &Channel, mut stop: watch::Receiver<bool>) -> Result<()> {
    let limit = ctx.broker_timeout();
    let mut consumer = bounded(
        limit,
        "basic.consume",
        ch.basic_consume(
            ctx.names.timeouts_queue.as_str().into(),
            format!("timeouts-{}", ctx.consumer).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
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

async fn expire_all(ctx: &Ctx, ids: &[String]) -> Result<()> {
    for id in ids {
        let Ok(order) = OrderId::parse(id) else { continue };
        if ctx.engine.release(&order, ReleaseReason::Expired).await? == ReleaseOutcome::Released {
            ctx.metrics.expired.with_label_values(&["timer"]).inc();
        }
    }
    Ok(())
}

pub async fn sweep_redis(ctx: &Ctx, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(ctx.settings.worker.sweep_interval_ms);
    loop {
        if let Err(e) = sweep_redis_once(ctx).await {
            tracing::warn!(error = %e, "redis expiry sweep failed");
        }
        if pause(every, &mut stop).await {
            return;
        }
    }
}

/// Releases every pending order past its deadline; returns how many it released.
pub async fn sweep_redis_once(ctx: &Ctx) -> Result<usize> {
    let store = ctx.engine.store();
    let mut released = 0;
    for campaign in store.campaign_ids().await? {
        for order in store.due_orders(&campaign, now_ms(), SWEEP_BATCH).await? {
            if ctx.engine.release(&order, ReleaseReason::Expired).await? == ReleaseOutcome::Released {
                ctx.metrics.expired.with_label_values(&["sweeper"]).inc();
                released += 1;
            }
        }
    }
    Ok(released)
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

pub async fn sweep_mysql_once(ctx: &Ctx) -> Result<usize> {
    let mut fixed = 0;
    for id in ctx.db.overdue_orders(now_ms() - MYSQL_SWEEP_GRACE_MS, SWEEP_BATCH as u32).await? {
        let Ok(order) = OrderId::parse(&id) else { continue };
        match ctx.engine.release(&order, ReleaseReason::Expired).await? {
            ReleaseOutcome::NotFound => {
                // Redis lost this reservation: MySQL is all there is; expire it there.
                let Some(row) = ctx.db.order(&id).await? else { continue };
                let event = OrderEvent {
                    order_id: row.order_id,
                    campaign_id: row.campaign_id,
                    user_id: row.user_id,
                    status: common::message::OrderStatus::Expired,
                    items: row.items,
                    total_cents: row.total_cents,
                    created_ms: row.created_ms,
                    expires_ms: row.expires_ms,
                    paid_ms: 0,
                    payment_window_secs: 0,
                    event_ms: now_ms(),
                };
                ctx.db.apply_events(&[event]).await?;
                tracing::warn!(order = %id, "expired in MySQL only: Redis no longer knew the order");
                ctx.metrics.expired.with_label_values(&["mysql_sweeper"]).inc();
                fixed += 1;
            }
            ReleaseOutcome::Released => {
                ctx.metrics.expired.with_label_values(&["mysql_sweeper"]).inc();
                fixed += 1;
            }
            _ => {}
        }
    }
    Ok(fixed)
}
