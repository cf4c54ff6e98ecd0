//! The persister: order events from RabbitMQ into MySQL, in batches.
//!
//! A batch is applied in one transaction ([`ledger::Db::apply_events`]: a
//! redelivered or reordered event is a no-op) and its messages are acknowledged only
//! after the commit and after the payment timer of each pending order is confirmed by
//! the broker. While MySQL is down the batch is held unacknowledged and retried, so an
//! outage costs no delivery attempt; a batch the server refuses is split and retried
//! message by message.
//!
//! MySQL is a projection of Redis, and events reach it in any order (two workers on
//! one queue, a relay retry, a redelivery): order B's reservation of the unit order
//! A's release freed can arrive before that release, and the guarded stock move
//! (`available >= 0`) refuses it. Such an event is set aside, not dead-lettered: it is
//! republished to `<ns>.retry`, which hands it back to `<ns>.orders` after
//! `worker.persist_retry_ms`, until the event it waits for has been applied. Only an
//! event that can never apply goes to the dead-letter queue, with a metric
//! (`flashsale_dead_lettered_events_total{reason}`) and an error naming the order:
//! not JSON, a sku MySQL does not have, an order lost with Redis's data (created
//! before its campaign was rebuilt from MySQL, unknown to MySQL and to Redis: the fold
//! refuses it, its units were sold again), or `worker.persist_retry_max` tries.

use std::time::{Duration, Instant};

use common::message::{OrderEvent, OrderMessage, OrderStatus};
use engine::domain::OrderId;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::AMQPValue;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel};
use ledger::{Applied, DbError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::context::{consume, pause, Ctx};
use crate::error::{bounded, Result, WorkerError};
use crate::topology::DEAD_ROUTING_KEY;

/// The body of a payment-timer message: the pending orders of one persisted batch
/// that share a payment window. Published after every one of them was created, it
/// dead-letters after the window, so never before any of their deadlines.
#[derive(Debug, Serialize, Deserialize)]
pub struct Timer {
    pub order_ids: Vec<String>,
}

pub async fn run(ctx: &Ctx, ch: &Channel, timer_ch: &Channel, mut stop: watch::Receiver<bool>) -> Result<()> {
    let limit = ctx.broker_timeout();
    bounded(limit, "basic.qos", ch.basic_qos(ctx.settings.amqp.prefetch, BasicQosOptions::default())).await?;
    let mut consumer = consume(ctx, ch, &ctx.names.orders_queue, "persister").await?;
    let max_events = ctx.settings.worker.persist_batch_max;
    let wait = Duration::from_millis(ctx.settings.worker.persist_batch_wait_ms);
    loop {
        let first = tokio::select! {
            d = consumer.next() => d,
            _ = stop.changed() => return Ok(()),
        };
        let Some(first) = first else {
            return Err(WorkerError::Broker("order consumer ended".into()));
        };
        // A batch is bounded by events, not messages: a version 2 or 3 message
        // carries every order of several script calls.
        let mut batch = Vec::new();
        let mut events = read(ctx, first?, &mut batch).await?;
        let deadline = tokio::time::Instant::now() + wait;
        while events < max_events {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(d)) => events += read(ctx, d?, &mut batch).await?,
                Ok(None) => return Err(WorkerError::Broker("order consumer ended".into())),
                Err(_) => break,
            }
        }
        apply(ctx, timer_ch, batch, &mut stop).await?;
    }
}

/// Parses one delivery into `batch` (an unreadable one is dead-lettered); returns how
/// many events it added.
async fn read(ctx: &Ctx, d: Delivery, batch: &mut Vec<(Vec<OrderEvent>, Delivery)>) -> Result<usize> {
    match OrderMessage::parse(&d.data) {
        Ok(events) => {
            let n = events.len();
            batch.push((events, d));
            Ok(n)
        }
        Err(e) => {
            tracing::error!(error = %e, "unreadable order message; dead-lettered");
            poison(ctx, &d).await?;
            Ok(0)
        }
    }
}

async fn poison(ctx: &Ctx, d: &Delivery) -> Result<()> {
    ctx.metrics.poisoned.inc();
    let reject = d.acker.reject(BasicRejectOptions { requeue: false });
    bounded(ctx.broker_timeout(), "basic.reject", reject).await?;
    Ok(())
}

/// Publishes `events` to the dead-letter exchange as one message (some events of a
/// message that otherwise applied), with confirms.
async fn dead_letter_events(
    ctx: &Ctx,
    ch: &Channel,
    events: &[OrderEvent],
    reason: &'static str,
) -> Result<()> {
    let body = serde_json::to_vec(&OrderMessage::Batch { version: 2, events: events.to_vec() })
        .map_err(|e| WorkerError::Broker(e.to_string()))?;
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(crate::topology::REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    publish_confirmed(ctx, ch, &ctx.names.dead_exchange, DEAD_ROUTING_KEY, &body, props).await?;
    ctx.metrics.dead_lettered.with_label_values(&[reason]).inc_by(events.len() as u64);
    Ok(())
}

/// Sends a message to the dead-letter queue with its reason (a header the dead-letter
/// keeper records), confirmed, then acknowledges it.
async fn dead_letter(ctx: &Ctx, ch: &Channel, d: &Delivery, reason: &'static str) -> Result<()> {
    ctx.metrics.dead_lettered.with_label_values(&[reason]).inc();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(crate::topology::REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    publish_confirmed(ctx, ch, &ctx.names.dead_exchange, DEAD_ROUTING_KEY, &d.data, props).await?;
    bounded(ctx.broker_timeout(), "basic.ack", d.acker.ack(BasicAckOptions::default())).await?;
    Ok(())
}

/// Times a refused statement (a deadlock, a lock wait) is tried again in place before
/// its message is requeued (which spends one of its deliveries).
const STATEMENT_RETRIES: u32 = 5;

/// Header counting how often an event was set aside.
const ATTEMPTS_HEADER: &str = "x-flashsale-attempts";

fn attempts(d: &Delivery) -> u32 {
    let Some(headers) = d.properties.headers() else { return 0 };
    match headers.inner().get(ATTEMPTS_HEADER) {
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// A message whose stock moves MySQL cannot make yet: back through the retry queue,
/// unless one of its events can never apply (see the module docs). A message of many
/// events (the relay joins many script calls' entries) is taken apart first: each
/// event is applied alone and only those still refused wait, each in a message of its
/// own, so one waiting or hopeless event never holds back or dead-letters the others.
async fn set_aside(ctx: &Ctx, ch: &Channel, events: &[OrderEvent], d: &Delivery) -> Result<()> {
    if events.len() > 1 {
        return take_apart(ctx, ch, events, d).await;
    }
    let tries = attempts(d) + 1;
    for event in events {
        if let Some(reason) = never_applies(ctx, event, tries).await? {
            tracing::error!(order = %event.order_id, campaign = %event.campaign_id, status = event.status.as_str(),
                reason, tries, events = events.len(), "order event can never apply to MySQL; message dead-lettered");
            return dead_letter(ctx, ch, d, reason).await;
        }
    }
    tracing::debug!(events = events.len(), tries, "stock move waits for another event; set aside");
    publish_confirmed(ctx, ch, "", &ctx.names.retry_queue, &d.data, retry_props(d, tries)).await?;
    ctx.metrics.persist_retries.inc();
    bounded(ctx.broker_timeout(), "basic.ack", d.acker.ack(BasicAckOptions::default())).await?;
    Ok(())
}

/// [`set_aside`] for a message of many events. Any other failure than the stock guard
/// leaves the message unacknowledged (the caller stops; the broker redelivers it, and
/// events already applied apply again as unchanged).
async fn take_apart(ctx: &Ctx, ch: &Channel, events: &[OrderEvent], d: &Delivery) -> Result<()> {
    let tries = attempts(d) + 1;
    let mut waiting = 0;
    for event in events {
        let one = std::slice::from_ref(event);
        match ctx.db.apply_events(one).await {
            Ok(applied) => after_applied(ctx, ch, one, &applied).await?,
            Err(DbError::StockGuard { .. }) => {
                let body = serde_json::to_vec(&OrderMessage::Batch { version: 2, events: one.to_vec() })
                    .map_err(|e| WorkerError::Broker(e.to_string()))?;
                publish_confirmed(ctx, ch, "", &ctx.names.retry_queue, &body, retry_props(d, tries)).await?;
                ctx.metrics.persist_retries.inc();
                waiting += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    tracing::debug!(events = events.len(), waiting, "message taken apart; refused events set aside alone");
    bounded(ctx.broker_timeout(), "basic.ack", d.acker.ack(BasicAckOptions::default())).await?;
    Ok(())
}

/// A delivery's properties for its way through the retry queue, counting `tries`.
fn retry_props(d: &Delivery, tries: u32) -> BasicProperties {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongUInt(tries));
    d.properties.clone().with_headers(headers)
}

/// Publishes one message (mandatory) and waits for the broker's confirm.
pub(crate) async fn publish_confirmed(
    ctx: &Ctx,
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<()> {
    let limit = ctx.broker_timeout();
    let confirm = bounded(
        limit,
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            body,
            props,
        ),
    )
    .await?;
    match bounded(limit, "publisher confirm", confirm).await? {
        Confirmation::Ack(None) => Ok(()),
        _ => Err(WorkerError::Broker(format!("publish to {exchange}/{routing_key} not confirmed"))),
    }
}

async fn never_applies(ctx: &Ctx, event: &OrderEvent, tries: u32) -> Result<Option<&'static str>> {
    for item in &event.items {
        if !ctx.db.has_stock_row(&event.campaign_id, &item.sku_id).await? {
            return Ok(Some("unknown_sku"));
        }
    }
    if tries > ctx.settings.worker.persist_retry_max {
        return Ok(Some("retries_exhausted"));
    }
    Ok(None)
}

async fn apply(
    ctx: &Ctx,
    timer_ch: &Channel,
    group: Vec<(Vec<OrderEvent>, Delivery)>,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    if group.is_empty() {
        return Ok(());
    }
    let events: Vec<OrderEvent> = group.iter().flat_map(|(e, _)| e.iter().cloned()).collect();
    // Spans of the sampled orders in the transaction (traces exported only), ended when
    // this batch is done.
    let _traced = crate::traced::persisting(&crate::traced::traces_of_events(&events));
    let mut backoff = common::backoff::DEPENDENCY;
    let mut refused = 0;
    loop {
        let started = Instant::now();
        match ctx.db.apply_events(&events).await {
            Ok(applied) => {
                ctx.metrics.persist_seconds.observe(started.elapsed().as_secs_f64());
                after_applied(ctx, timer_ch, &events, &applied).await?;
                for (_, d) in &group {
                    bounded(ctx.broker_timeout(), "basic.ack", d.acker.ack(BasicAckOptions::default()))
                        .await?;
                }
                return Ok(());
            }
            Err(DbError::Unavailable(e)) => {
                tracing::warn!(error = %e, batch = events.len(), "mysql unavailable; holding the batch");
            }
            Err(DbError::Timeout(d)) => {
                tracing::warn!(after = ?d, batch = events.len(), "mysql timed out; holding the batch");
            }
            Err(e) if group.len() > 1 => {
                tracing::warn!(error = %e, batch = events.len(), "batch refused; applying one by one");
                for one in group {
                    Box::pin(apply(ctx, timer_ch, vec![one], stop)).await?;
                }
                return Ok(());
            }
            // A racing writer or a deadlock: tried again here first, so a passing
            // conflict spends none of the message's deliveries.
            Err(DbError::Statement(e)) if refused < STATEMENT_RETRIES => {
                refused += 1;
                tracing::warn!(error = %e, refused, "statement refused; trying again");
            }
            Err(DbError::Statement(e)) => {
                tracing::warn!(error = %e, "statement refused again; message requeued");
                for (_, d) in &group {
                    let nack =
                        d.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() });
                    bounded(ctx.broker_timeout(), "basic.nack", nack).await?;
                }
                return Ok(());
            }
            Err(DbError::StockGuard { .. }) => {
                for (events, d) in &group {
                    set_aside(ctx, timer_ch, events, d).await?;
                }
                return Ok(());
            }
            Err(e) => {
                tracing::error!(error = %e, order = %events[0].order_id, "event cannot apply; dead-lettered");
                for (_, d) in &group {
                    dead_letter(ctx, timer_ch, d, "corrupt").await?;
                }
                return Ok(());
            }
        }
        if pause(backoff.next_pause(), stop).await {
            // Unacknowledged: the broker redelivers the batch to whoever runs next.
            return Ok(());
        }
    }
}

/// What follows a committed transaction: metrics, payment timers, and the dead
/// letters of orders Redis lost before MySQL heard of them.
async fn after_applied(
    ctx: &Ctx,
    timer_ch: &Channel,
    events: &[OrderEvent],
    applied: &Applied,
) -> Result<()> {
    ctx.metrics.persist_batch_size.observe(events.len() as f64);
    ctx.metrics.persisted.with_label_values(&["inserted"]).inc_by(applied.inserted as u64);
    ctx.metrics.persisted.with_label_values(&["advanced"]).inc_by(applied.advanced as u64);
    ctx.metrics.persisted.with_label_values(&["unchanged"]).inc_by(applied.unchanged as u64);
    schedule_timers(ctx, timer_ch, events).await?;
    if applied.lost.is_empty() {
        return Ok(());
    }
    let lost = held_by_redis(ctx, timer_ch, events, &applied.lost).await?;
    if !lost.is_empty() {
        for e in &lost {
            tracing::error!(order = %e.order_id, campaign = %e.campaign_id, user = %e.user_id,
                "order lost with Redis's data before MySQL heard of it; its units were sold again; dead-lettered");
        }
        dead_letter_events(ctx, timer_ch, &lost, "lost_by_redis").await?;
    }
    Ok(())
}

/// Of the orders the fold refused as lost (created before their campaign's rebuild
/// mark, unknown to MySQL), applies those Redis still holds: the mark was wrong about
/// them (a rebuild check that saw the campaign missing while its launch was under way,
/// or a mark taken on a clock ahead of Redis's). A rebuild writes back only orders
/// MySQL holds, so an order Redis holds was never lost. Returns the events of the
/// orders really lost. A Redis error leaves the message unacknowledged (redelivered,
/// the rest of it applies again as unchanged); a held order whose stock move must
/// wait for another event goes through the retry queue, each event alone, and comes
/// back here.
async fn held_by_redis(
    ctx: &Ctx,
    ch: &Channel,
    events: &[OrderEvent],
    lost: &[String],
) -> Result<Vec<OrderEvent>> {
    let mut held = Vec::new();
    for id in lost {
        let Ok(order) = OrderId::parse(id) else { continue };
        if ctx.engine.order(&order).await?.is_some() {
            held.push(id.as_str());
        }
    }
    let (kept, lost): (Vec<OrderEvent>, Vec<OrderEvent>) = events
        .iter()
        .filter(|e| lost.contains(&e.order_id))
        .cloned()
        .partition(|e| held.contains(&e.order_id.as_str()));
    if !kept.is_empty() {
        tracing::warn!(orders = held.len(), campaign = %kept[0].campaign_id,
            "orders created before their campaign's rebuild mark are still held by Redis; applied");
        match ctx.db.apply_events_held_by_redis(&kept).await {
            Ok(applied) => {
                let m = &ctx.metrics.persisted;
                m.with_label_values(&["inserted"]).inc_by(applied.inserted as u64);
                m.with_label_values(&["advanced"]).inc_by(applied.advanced as u64);
                m.with_label_values(&["unchanged"]).inc_by(applied.unchanged as u64);
            }
            Err(DbError::StockGuard { .. }) => {
                for event in &kept {
                    let body =
                        serde_json::to_vec(&OrderMessage::Batch { version: 2, events: vec![event.clone()] })
                            .map_err(|e| WorkerError::Broker(e.to_string()))?;
                    let props = BasicProperties::default().with_delivery_mode(2);
                    publish_confirmed(ctx, ch, "", &ctx.names.retry_queue, &body, props).await?;
                    ctx.metrics.persist_retries.inc();
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(lost)
}

/// Publishes one payment timer per payment window for the batch's pending orders
/// (redeliveries schedule again: expiry is idempotent).
async fn schedule_timers(ctx: &Ctx, ch: &Channel, events: &[OrderEvent]) -> Result<()> {
    let limit = ctx.broker_timeout();
    let mut by_window: std::collections::BTreeMap<u32, Vec<String>> = std::collections::BTreeMap::new();
    for e in events.iter().filter(|e| e.status == OrderStatus::PendingPayment) {
        by_window.entry(e.payment_window_secs).or_default().push(e.order_id.clone());
    }
    let mut confirms = Vec::new();
    for (window, order_ids) in by_window {
        let queue = ctx.delay_queues.ensure(ch, &ctx.names, window, limit).await?;
        let body =
            serde_json::to_vec(&Timer { order_ids }).map_err(|e| WorkerError::Broker(e.to_string()))?;
        let props = BasicProperties::default().with_delivery_mode(2);
        let confirm = bounded(
            limit,
            "basic.publish",
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                &body,
                props,
            ),
        )
        .await?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        match bounded(limit, "publisher confirm", confirm).await? {
            Confirmation::Ack(None) => {}
            _ => return Err(WorkerError::Broker("payment timer not confirmed".into())),
        }
    }
    Ok(())
}
