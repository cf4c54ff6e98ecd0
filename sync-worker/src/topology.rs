//! RabbitMQ names and declarations, all under the namespace.
//!
//! | name | kind | role |
//! |---|---|---|
//! | `<ns>.orders` | direct exchange + quorum queue | order events from the relay to the persister |
//! | `<ns>.dlx` → `<ns>.dead` | direct exchange + quorum queue | poison messages, after `worker.max_deliveries` |
//! | `<ns>.delay.<secs>` | classic queue, `x-message-ttl` | one per payment window; expired messages dead-letter to timeouts |
//! | `<ns>.timeouts` | direct exchange + quorum queue | payment deadlines reached |
//! | `<ns>.retry` | classic queue, `x-message-ttl` | order events set aside; back to `<ns>.orders` after `worker.persist_retry_ms` |
//!
//! RabbitMQ here has no delayed-message plugin, and per-message TTLs in one queue
//! only leave from the head, so each distinct payment window gets its own queue with
//! a per-queue TTL. The delay queues are classic: dead-lettering on TTL expiry is
//! what they are for, and a timer lost with one is caught by the sweeper anyway.

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use tokio::sync::Mutex;

use crate::error::{bounded, Result};

pub const ORDER_ROUTING_KEY: &str = "order";
pub const TIMEOUT_ROUTING_KEY: &str = "timeout";
pub const DEAD_ROUTING_KEY: &str = "dead";
/// The header a message sent to the dead-letter exchange names its reason in
/// (`unknown_sku`, `lost_by_redis`…); RabbitMQ's own dead letters carry `x-death`.
pub const REASON_HEADER: &str = "x-flashsale-reason";

#[derive(Debug, Clone)]
pub struct Names {
    pub orders_exchange: String,
    pub orders_queue: String,
    pub dead_exchange: String,
    pub dead_queue: String,
    pub timeouts_exchange: String,
    pub timeouts_queue: String,
    pub retry_queue: String,
    ns: String,
}

impl Names {
    pub fn new(ns: &str) -> Self {
        Self {
            orders_exchange: format!("{ns}.orders"),
            orders_queue: format!("{ns}.orders"),
            dead_exchange: format!("{ns}.dlx"),
            dead_queue: format!("{ns}.dead"),
            timeouts_exchange: format!("{ns}.timeouts"),
            timeouts_queue: format!("{ns}.timeouts"),
            retry_queue: format!("{ns}.retry"),
            ns: ns.to_owned(),
        }
    }

    pub fn delay_queue(&self, window_secs: u32) -> String {
        format!("{}.delay.{window_secs}", self.ns)
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
}

/// Declares the fixed part of the topology (idempotent).
pub async fn declare(
    ch: &Channel,
    n: &Names,
    max_deliveries: u32,
    retry_ms: u64,
    limit: Duration,
) -> Result<()> {
    let ex = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    for name in [&n.orders_exchange, &n.dead_exchange, &n.timeouts_exchange] {
        bounded(
            limit,
            "exchange.declare",
            ch.exchange_declare(name.as_str().into(), ExchangeKind::Direct, ex, FieldTable::default()),
        )
        .await?;
    }
    let quorum_with_dlx = table(&[
        ("x-queue-type", text("quorum")),
        ("x-delivery-limit", AMQPValue::LongInt(max_deliveries as i32)),
        ("x-dead-letter-exchange", text(&n.dead_exchange)),
        ("x-dead-letter-routing-key", text(DEAD_ROUTING_KEY)),
    ]);
    let quorum = table(&[("x-queue-type", text("quorum"))]);
    for (queue, args, exchange, key) in [
        (&n.orders_queue, &quorum_with_dlx, &n.orders_exchange, ORDER_ROUTING_KEY),
        (&n.timeouts_queue, &quorum_with_dlx, &n.timeouts_exchange, TIMEOUT_ROUTING_KEY),
        (&n.dead_queue, &quorum, &n.dead_exchange, DEAD_ROUTING_KEY),
    ] {
        bounded(limit, "queue.declare", ch.queue_declare(queue.as_str().into(), durable(), args.clone()))
            .await?;
        bounded(
            limit,
            "queue.bind",
            ch.queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    let retry = table(&[
        ("x-message-ttl", AMQPValue::LongUInt(u32::try_from(retry_ms).unwrap_or(u32::MAX))),
        ("x-dead-letter-exchange", text(&n.orders_exchange)),
        ("x-dead-letter-routing-key", text(ORDER_ROUTING_KEY)),
    ]);
    bounded(limit, "queue.declare", ch.queue_declare(n.retry_queue.as_str().into(), durable(), retry))
        .await?;
    Ok(())
}

/// Declares delay queues on first use, once per process and window.
#[derive(Default)]
pub struct DelayQueues {
    declared: Mutex<HashSet<u32>>,
}

impl DelayQueues {
    pub async fn ensure(&self, ch: &Channel, n: &Names, window_secs: u32, limit: Duration) -> Result<String> {
        let name = n.delay_queue(window_secs);
        let mut declared = self.declared.lock().await;
        if declared.contains(&window_secs) {
            return Ok(name);
        }
        let args = table(&[
            ("x-message-ttl", AMQPValue::LongUInt(window_secs.saturating_mul(1000))),
            ("x-dead-letter-exchange", text(&n.timeouts_exchange)),
            ("x-dead-letter-routing-key", text(TIMEOUT_ROUTING_KEY)),
        ]);
        bounded(limit, "queue.declare", ch.queue_declare(name.as_str().into(), durable(), args)).await?;
        declared.insert(window_secs);
        Ok(name)
    }

    /// After a reconnect the broker may have lost nothing, but declare again anyway.
    pub async fn forget(&self) {
        self.declared.lock().await.clear();
    }
}
