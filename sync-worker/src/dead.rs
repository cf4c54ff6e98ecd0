//! Dead letters are never silent: the worker consumes `<ns>.dead` (messages the
//! persister refused for good, and messages RabbitMQ dead-lettered after their delivery
//! limit), logs every order in each by id, counts it in
//! `flashsale_dead_lettered_orders_total{reason}` and keeps it in MySQL
//! (`dead_letters`), where the operator API lists it; the message is acknowledged only
//! once MySQL holds it. An order an operator asks to replay (`POST
//! /admin/v1/dead-letters/replay`) is published again to `<ns>.orders` by
//! [`replay`], confirmed, then forgotten here; if it fails again it comes back.

use std::time::Duration;

use common::message::{OrderEvent, OrderMessage};
use engine::clock::now_ms;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use ledger::dead::{DeadLetter, NewDeadLetter};
use tokio::sync::watch;

use crate::context::{consume, pause, Ctx};
use crate::error::{bounded, Result, WorkerError};
use crate::topology::{ORDER_ROUTING_KEY, REASON_HEADER};

/// Dead letters sent back per round at most.
const REPLAY_BATCH: u32 = 500;
/// How often the worker looks for dead letters an operator asked to replay.
const REPLAY_EVERY: Duration = Duration::from_secs(1);

/// Consumes the dead-letter queue until stopped.
pub async fn keep(ctx: &Ctx, ch: &Channel, mut stop: watch::Receiver<bool>) -> Result<()> {
    // Bounded like every consumer: at most `amqp.prefetch` unacknowledged messages here.
    let qos = ch.basic_qos(ctx.settings.amqp.prefetch, lapin::options::BasicQosOptions::default());
    bounded(ctx.broker_timeout(), "basic.qos", qos).await?;
    let mut consumer = consume(ctx, ch, &ctx.names.dead_queue, "dead-letters").await?;
    loop {
        let next = tokio::select! {
            d = consumer.next() => d,
            _ = stop.changed() => return Ok(()),
        };
        let Some(d) = next else {
            return Err(WorkerError::Broker("dead-letter consumer ended".into()));
        };
        let d = d?;
        let letters = letters_of(&d);
        let mut backoff = common::backoff::DEPENDENCY;
        // Acknowledged only once MySQL holds every order of it.
        while let Err(e) = ctx.db.record_dead_letters(&letters).await {
            tracing::warn!(error = %e, orders = letters.len(), "dead letters not recorded yet; holding them");
            if pause(backoff.next_pause(), &mut stop).await {
                return Ok(());
            }
        }
        for l in &letters {
            tracing::error!(order = %l.letter.order_id, campaign = %l.letter.campaign_id, reason = %l.letter.reason,
                "order dead-lettered; kept for an operator (GET /admin/v1/dead-letters)");
            ctx.metrics.dead_lettered_orders.with_label_values(&[bounded_reason(&l.letter.reason)]).inc();
        }
        bounded(ctx.broker_timeout(), "basic.ack", d.acker.ack(BasicAckOptions::default())).await?;
    }
}

/// The orders of one dead-lettered message, or one placeholder for a body that is not
/// an order message (kept, with its text, under `unreadable`).
fn letters_of(d: &Delivery) -> Vec<NewDeadLetter> {
    let reason = reason_of(d);
    let at_ms = now_ms();
    match OrderMessage::parse(&d.data) {
        Ok(events) => events
            .into_iter()
            .map(|e| NewDeadLetter {
                letter: DeadLetter {
                    order_id: e.order_id.clone(),
                    campaign_id: e.campaign_id.clone(),
                    reason: reason.clone(),
                    at_ms,
                },
                event_json: serde_json::to_string(&e).unwrap_or_default(),
            })
            .collect(),
        Err(_) => vec![NewDeadLetter {
            letter: DeadLetter {
                order_id: format!("unreadable-{at_ms}-{}", d.delivery_tag),
                campaign_id: String::new(),
                reason: "unreadable".into(),
                at_ms,
            },
            event_json: String::from_utf8_lossy(&d.data).into_owned(),
        }],
    }
}

/// The persister's own reason, else RabbitMQ's (`x-death`: `rejected` for a message
/// the persister refused, `delivery_limit` for one whose deliveries ran out).
fn reason_of(d: &Delivery) -> String {
    let headers = d.properties.headers().as_ref().map(FieldTable::inner);
    let text = |v: &AMQPValue| match v {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    };
    if let Some(r) = headers.and_then(|h| h.get(REASON_HEADER)).and_then(text) {
        return r;
    }
    let death = headers.and_then(|h| h.get("x-death")).and_then(|v| match v {
        AMQPValue::FieldArray(a) => a.as_slice().first().cloned(),
        _ => None,
    });
    if let Some(AMQPValue::FieldTable(t)) = death {
        if let Some(r) = t.inner().get("reason").and_then(text) {
            return r;
        }
    }
    "unknown".into()
}

/// The metric's label: the known reasons, anything else as `other` (labels stay bounded).
fn bounded_reason(reason: &str) -> &'static str {
    match reason {
        "rejected" => "rejected",
        "delivery_limit" => "delivery_limit",
        "unreadable" => "unreadable",
        "unknown_sku" => "unknown_sku",
        "retries_exhausted" => "retries_exhausted",
        "lost_by_redis" => "lost_by_redis",
        "corrupt" => "corrupt",
        _ => "other",
    }
}

/// Sends back the dead letters an operator asked to replay, every [`REPLAY_EVERY`].
pub async fn replay(ctx: &Ctx, ch: &Channel, mut stop: watch::Receiver<bool>) -> Result<()> {
    loop {
        if pause(REPLAY_EVERY, &mut stop).await {
            return Ok(());
        }
        let due = match ctx.db.replays_due(REPLAY_BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "dead letters to replay not read; next round");
                continue;
            }
        };
        if due.is_empty() {
            continue;
        }
        let mut events: Vec<OrderEvent> = Vec::with_capacity(due.len());
        let mut ids = Vec::with_capacity(due.len());
        for (id, json) in due {
            match serde_json::from_str::<OrderEvent>(&json) {
                Ok(e) => {
                    events.push(e);
                    ids.push(id);
                }
                Err(e) => {
                    tracing::error!(order = %id, error = %e, "dead letter is no order event; not replayed")
                }
            }
        }
        let body = serde_json::to_vec(&OrderMessage::Batch { version: 2, events })
            .map_err(|e| WorkerError::Broker(e.to_string()))?;
        let props = BasicProperties::default().with_delivery_mode(2);
        crate::persister::publish_confirmed(
            ctx,
            ch,
            &ctx.names.orders_exchange,
            ORDER_ROUTING_KEY,
            &body,
            props,
        )
        .await?;
        if let Err(e) = ctx.db.forget_dead_letters(&ids).await {
            // Published twice at worst: applying is idempotent.
            tracing::warn!(error = %e, "replayed dead letters not forgotten yet");
        }
        tracing::warn!(orders = ids.len(), "dead letters sent back to be applied");
    }
}
