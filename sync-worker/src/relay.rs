//! The outbox relay: campaign streams → RabbitMQ, with publisher confirms.
//!
//! Each campaign's outbox is read through one consumer group, so several workers
//! share the work and the entries of a worker that died are claimed by another
//! (`XAUTOCLAIM` after `worker.relay_claim_idle_ms`). Every entry is published with
//! `mandatory` and acknowledged in the stream (`XACK` + `XDEL`) only after the broker
//! confirmed it; a nack, a return (unroutable) or a timeout leaves it pending, to be
//! claimed and published again. Duplicates are possible downstream, loss is not.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use engine::domain::CampaignId;
use engine::engine::now_ms;
use lapin::options::BasicPublishOptions;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use tokio::sync::watch;

use crate::context::{pause, Ctx};
use crate::error::{bounded, Result};
use crate::topology::ORDER_ROUTING_KEY;

pub const GROUP: &str = "relay";
/// Pause of an idle relay between rounds: bounds the added latency of an order.
const IDLE_PAUSE: Duration = Duration::from_millis(10);

pub async fn run(ctx: &Ctx, ch: &Channel, mut stop: watch::Receiver<bool>) -> Result<()> {
    let mut with_group: HashSet<CampaignId> = HashSet::new();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let mut moved = 0;
        for campaign in ctx.engine.store().campaign_ids().await? {
            if !with_group.contains(&campaign) {
                ensure_group(ctx, &campaign).await?;
                with_group.insert(campaign.clone());
            }
            moved += relay_campaign(ctx, ch, &campaign).await?;
        }
        if moved == 0 && pause(IDLE_PAUSE, &mut stop).await {
            return Ok(());
        }
    }
}

async fn ensure_group(ctx: &Ctx, campaign: &CampaignId) -> Result<()> {
    let key = ctx.engine.store().keys().outbox(campaign);
    let created = ctx
        .engine
        .store()
        .link()
        .call(|mut c| async move {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    match created {
        Err(engine::EngineError::Unavailable(msg)) if msg.contains("BUSYGROUP") => Ok(()),
        other => Ok(other?),
    }
}

/// Relays one batch of one campaign; returns how many entries the broker confirmed.
async fn relay_campaign(ctx: &Ctx, ch: &Channel, campaign: &CampaignId) -> Result<usize> {
    let store = ctx.engine.store();
    let key = store.keys().outbox(campaign);
    let max = ctx.settings.worker.relay_batch_max;
    let idle_ms = ctx.settings.worker.relay_claim_idle_ms;
    let consumer = ctx.consumer.clone();

    let (k, me) = (key.clone(), consumer.clone());
    let claimed: StreamAutoClaimReply = store
        .link()
        .call(|mut c| async move {
            redis::cmd("XAUTOCLAIM")
                .arg(k)
                .arg(GROUP)
                .arg(me)
                .arg(idle_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(max)
                .query_async(&mut c)
                .await
        })
        .await?;
    let mut entries: Vec<StreamId> = claimed.claimed;
    if entries.len() < max {
        let (k, me, n) = (key.clone(), consumer, max - entries.len());
        let fresh: Option<StreamReadReply> = store
            .link()
            .call(|mut c| async move {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(me)
                    .arg("COUNT")
                    .arg(n)
                    .arg("STREAMS")
                    .arg(k)
                    .arg(">")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        entries.extend(fresh.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids));
    }
    let k = key.clone();
    let backlog: i64 =
        store.link().call(|mut c| async move { redis::cmd("XLEN").arg(k).query_async(&mut c).await }).await?;
    ctx.metrics.outbox_length.with_label_values(&[campaign.as_str()]).set(backlog);
    if entries.is_empty() {
        return Ok(0);
    }

    let started = Instant::now();
    let limit = ctx.broker_timeout();
    let mut confirms = Vec::with_capacity(entries.len());
    for entry in &entries {
        let Some(doc) = entry.get::<String>("order") else {
            tracing::error!(id = %entry.id, "outbox entry without an order; left pending");
            continue;
        };
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(entry.id.as_str().into());
        let confirm = bounded(
            limit,
            "basic.publish",
            ch.basic_publish(
                ctx.names.orders_exchange.as_str().into(),
                ORDER_ROUTING_KEY.into(),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                doc.as_bytes(),
                props,
            ),
        )
        .await?;
        confirms.push((entry.id.clone(), confirm));
    }
    let mut confirmed = Vec::with_capacity(confirms.len());
    for (id, confirm) in confirms {
        match bounded(limit, "publisher confirm", confirm).await {
            Ok(Confirmation::Ack(None)) => confirmed.push(id),
            Ok(other) => {
                ctx.metrics.relay_failures.inc();
                tracing::warn!(%id, confirmation = ?other.is_ack(), "publish not confirmed (nack or returned); will retry");
            }
            Err(e) => {
                ctx.metrics.relay_failures.inc();
                return Err(e);
            }
        }
    }
    ctx.metrics.publish_seconds.observe(started.elapsed().as_secs_f64());
    if let Some(oldest) =
        confirmed.first().and_then(|id| id.split('-').next()).and_then(|ms| ms.parse::<i64>().ok())
    {
        ctx.metrics.relay_lag_seconds.set((now_ms() - oldest).max(0) as f64 / 1000.0);
    }
    if !confirmed.is_empty() {
        let n = confirmed.len();
        let ids = confirmed.clone();
        store
            .link()
            .call(|mut c| async move {
                redis::pipe()
                    .cmd("XACK")
                    .arg(&key)
                    .arg(GROUP)
                    .arg(&ids)
                    .ignore()
                    .cmd("XDEL")
                    .arg(&key)
                    .arg(&ids)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
        ctx.metrics.relayed.inc_by(n as u64);
    }
    Ok(confirmed.len())
}
