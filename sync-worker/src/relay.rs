//! The outbox relay: outbox streams → RabbitMQ, with publisher confirms.
//!
//! The entries of one round of a stream go out joined into as few messages as their
//! size allows (`joined.rs`). Each outbox is read through one consumer group, so
//! several workers share the work and the entries of a worker that died are claimed
//! by another (`XAUTOCLAIM` after `worker.relay_claim_idle_ms`). Every message is
//! published with `mandatory`, and its entries are acknowledged in the stream
//! (`XACK` and `XDEL`) only after the broker confirmed it; a nack, a return
//! (unroutable) or a timeout leaves them pending, to be claimed and published again.
//! Duplicates are possible downstream, loss is not. Before a round publishes, the
//! newest id it takes is recorded in MySQL (`outbox_relayed`), and before a round reads,
//! the group's position is checked against that record: a shard that a failover set
//! back behind what MySQL holds is not read but left to its repair (`restore.rs`,
//! `engine::behind`). While MySQL cannot record, the stream's entries wait in Redis.
//!
//! There is one outbox stream per campaign shard (the campaign's own when unsharded),
//! named by the shard's tag. The relay visits only streams with work: a script that
//! writes to an empty outbox publishes an `outbox <tag>` notice (on a cluster, on the
//! shard's own channel, which the engine subscribes for every campaign the rescan
//! names and every one launched later), and a stream stays in
//! the work set until it is empty. Notices are lost only while a subscription is
//! down, and every resubscription is followed by a resync; so a full rescan (the
//! campaign index and MySQL's live campaigns, each campaign's shard count once,
//! pipelined `XLEN`s) runs only at
//! start and after the notice stream was interrupted. An idle relay makes no Redis
//! call however many campaigns and shards were ever launched.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use engine::behind::StreamId;
use engine::clock::now_ms;
use engine::domain::CampaignId;
use engine::outbox::WorkSignal;
use lapin::options::BasicPublishOptions;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel};
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::{broadcast, watch};

use crate::context::{pause, Ctx};
use crate::error::{bounded, Result, WorkerError};
use crate::joined;
use crate::topology::ORDER_ROUTING_KEY;
use crate::traced;

/// Pause of a relay with work that moved nothing this round (entries pending for a
/// worker that has not been idle long enough to be claimed from).
const BUSY_PAUSE: Duration = Duration::from_millis(10);
/// How long a stream whose Redis call failed is left alone.
const STREAM_REST: Duration = Duration::from_secs(1);
/// Longest sleep of an idle relay (a notice or the stop signal wakes it sooner).
const IDLE_WAIT: Duration = Duration::from_secs(30);

pub async fn run(ctx: &Ctx, ch: &Channel, mut stop: watch::Receiver<bool>) -> Result<()> {
    let mut signals = ctx.engine.work_signals();
    let mut with_group: HashSet<CampaignId> = HashSet::new();
    // Streams whose Redis call failed, left alone until then: one unreachable node
    // does not cost every round its call timeout.
    let mut resting: HashMap<CampaignId, Instant> = HashMap::new();
    let mut work: HashSet<CampaignId> = HashSet::new();
    // Set by a resync or a lag, whether met here or while waiting: notices may have been
    // missed, so the next round rescans. Set at start: the first round scans.
    let mut resync = true;
    // A rescan that failed (a node down, MySQL slow) is tried again after STREAM_REST;
    // the streams already known go on meanwhile, and the broker session is kept.
    let mut rescan_at = Instant::now();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        loop {
            match signals.try_recv() {
                Ok(s) => note(s, &mut work, &mut resync),
                Err(TryRecvError::Lagged(_)) => note(WorkSignal::Resync, &mut work, &mut resync),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if resync && Instant::now() >= rescan_at {
            match rescan(ctx).await {
                Ok(found) => {
                    work.extend(found);
                    resync = false;
                }
                Err(e) => {
                    // Counted with the relay's per-stream errors: the work of every
                    // campaign not yet known waits on it.
                    ctx.metrics.campaign_errors.with_label_values(&["relay"]).inc();
                    tracing::warn!(error = %e, "relay rescan failed; tried again shortly");
                    rescan_at = Instant::now() + STREAM_REST;
                }
            }
        }
        let mut moved = 0;
        let mut backlog = 0;
        let mut full = false;
        resting.retain(|_, until| *until > Instant::now());
        for stream in work.clone() {
            if resting.contains_key(&stream) {
                continue;
            }
            if !with_group.contains(&stream) {
                if let Err(e) = ctx.engine.outbox_ensure_group(&stream).await {
                    // Its node unreachable or being rebuilt: the other streams go on.
                    ctx.campaign_failed("relay", &stream, &e);
                    resting.insert(stream.clone(), Instant::now() + STREAM_REST);
                    continue;
                }
                with_group.insert(stream.clone());
            }
            match relay_stream(ctx, ch, &stream).await {
                Ok((n, left)) => {
                    moved += n;
                    backlog += left;
                    full |= n >= ctx.settings.worker.relay_batch_max;
                    if n > 0 {
                        ctx.activity.touch(&stream.campaign_of_tag());
                    }
                    if left == 0 {
                        tracing::debug!(%stream, moved = n, "outbox stream empty; left until its next notice");
                        work.remove(&stream);
                    }
                }
                // Redis lost the stream (and its group): make it again next round.
                Err(WorkerError::Redis(engine::EngineError::Unavailable(msg))) if msg.contains("NOGROUP") => {
                    with_group.remove(&stream);
                }
                // One stream's Redis trouble stays there (kept in `work`, tried again);
                // a broker failure ends the relay, which the supervisor restarts.
                Err(WorkerError::Redis(e)) => {
                    ctx.campaign_failed("relay", &stream, &e);
                    resting.insert(stream.clone(), Instant::now() + STREAM_REST);
                }
                // MySQL could not record how far the stream goes: its entries wait in
                // Redis until it can (the persister could not apply them meanwhile).
                Err(WorkerError::Db(e)) => {
                    ctx.campaign_failed("relay", &stream, &e);
                    resting.insert(stream.clone(), Instant::now() + STREAM_REST);
                }
                Err(e) => return Err(e),
            }
        }
        ctx.metrics.outbox_length.set(backlog as i64);
        if moved > 0 {
            // No stream gave a full batch (what is left came in during the round): the
            // next round waits a little for more (`worker.relay_pace_ms`), so a busy
            // sale's rounds carry more orders each. A backlog is read again at once.
            let pace = Duration::from_millis(ctx.settings.worker.relay_pace_ms);
            if !full && !pace.is_zero() && pause(pace, &mut stop).await {
                return Ok(());
            }
            continue;
        }
        let idle = if !work.is_empty() {
            BUSY_PAUSE
        } else if resync {
            rescan_at.saturating_duration_since(Instant::now())
        } else {
            IDLE_WAIT
        };
        if wait_for_work(&mut signals, &mut work, &mut resync, idle, &mut stop).await {
            return Ok(());
        }
    }
}

/// What a signal asks of the next round: visit a stream, or rescan (a resync, and a lag
/// counts as one: notices may have been missed). One meaning wherever a signal is met,
/// mid-round or while waiting: a dropped resync would leave a stream whose notice was
/// lost while the subscription was down unvisited for good.
fn note(signal: WorkSignal, work: &mut HashSet<CampaignId>, resync: &mut bool) {
    match signal {
        WorkSignal::Outbox(c) => {
            tracing::trace!(stream = %c, "outbox work signal");
            work.insert(c);
        }
        WorkSignal::Resync => *resync = true,
    }
}

/// Sleeps up to `idle` or until a signal arrives ([`note`]d); returns whether to stop.
async fn wait_for_work(
    signals: &mut broadcast::Receiver<WorkSignal>,
    work: &mut HashSet<CampaignId>,
    resync: &mut bool,
    idle: Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        s = signals.recv() => {
            match s {
                Ok(s) => note(s, work, resync),
                Err(broadcast::error::RecvError::Lagged(_)) => note(WorkSignal::Resync, work, resync),
                Err(broadcast::error::RecvError::Closed) => {}
            }
            false
        }
        stopped = pause(idle, stop) => stopped,
    }
}

/// Every outbox stream of every live campaign that is not empty.
async fn rescan(ctx: &Ctx) -> Result<HashSet<CampaignId>> {
    let store = &ctx.engine;
    let mut campaigns = store.campaign_ids().await?;
    // The campaign index lives in one slot: lost with its master, it lacks campaigns
    // until the restore check lists them again. MySQL's live campaigns are added, so a
    // rescan meanwhile neither stops hearing a live shard's notices (on a cluster each
    // shard's `outbox` notices come on its own channel, subscribed for the campaigns
    // named here) nor skips its stream.
    match ctx.db.live_campaign_shards().await {
        Ok(live) => {
            let listed: HashSet<CampaignId> = campaigns.iter().cloned().collect();
            campaigns.extend(
                live.iter().filter_map(|(id, _)| CampaignId::parse(id).ok()).filter(|c| !listed.contains(c)),
            );
            store.watch_outbox_notices(&campaigns);
        }
        // Without MySQL's list, nothing watched is dropped.
        Err(e) => {
            tracing::warn!(error = %e, "live campaigns not read from MySQL; the relay keeps watching every campaign it watched");
            store.watch_more_outbox_notices(&campaigns);
        }
    }
    let streams = store.outbox_streams(&campaigns).await?;
    let lengths = store.outbox_lengths(&streams).await?;
    Ok(streams.into_iter().zip(lengths).filter(|(_, n)| *n > 0).map(|(c, _)| c).collect())
}

/// Relays one batch of one outbox stream (a campaign or shard tag); returns how many
/// entries the broker confirmed and how many are left in the stream.
async fn relay_stream(ctx: &Ctx, ch: &Channel, stream: &CampaignId) -> Result<(usize, u64)> {
    let store = &ctx.engine;
    let max = ctx.settings.worker.relay_batch_max;
    let idle_ms = ctx.settings.worker.relay_claim_idle_ms;
    // A shard that came back behind MySQL is left to its repair (`restore.rs`): a read
    // would move its group's position past the evidence that it is behind. The record
    // is read from MySQL every round: another worker may have raised it since.
    if let Some(id) = ctx.db.relayed_id(stream.as_str()).await? {
        let position = store.relay_positions(std::slice::from_ref(stream)).await.pop().unwrap_or(Ok(None))?;
        if position.is_some_and(|p| p < id) {
            ctx.restore_now.notify_one();
            return Err(WorkerError::Redis(engine::EngineError::Unavailable(format!(
                "the relay's position in this stream is behind what MySQL recorded ({id}): left to its repair"
            ))));
        }
    }
    let entries = store.outbox_take(stream, &ctx.consumer, idle_ms, max).await?;
    if entries.is_empty() {
        return Ok((0, store.outbox_ack(stream, &[]).await?));
    }

    let started = Instant::now();
    let limit = ctx.broker_timeout();
    let malformed: Vec<String> = entries.iter().filter(|e| e.doc.is_none()).map(|e| e.id.clone()).collect();
    if !malformed.is_empty() {
        for id in &malformed {
            tracing::error!(%stream, %id, "outbox entry without an order; set aside in the shard's outbox-dead stream");
        }
        store.outbox_set_aside(stream, &malformed).await?;
    }
    // MySQL learns how far this stream was passed on before the broker has any of it,
    // so a shard that later comes back without these entries is found behind
    // (`restore.rs`). No record, no publish: the entries wait in the stream.
    if let Some(newest) = entries.iter().filter_map(|e| StreamId::parse(&e.id)).max() {
        ctx.db.record_relayed(stream.as_str(), stream.campaign_of_tag().as_str(), newest).await?;
    }
    let messages = joined::join(&entries);
    let mut confirms = Vec::with_capacity(messages.len());
    // Spans of the sampled orders published (traces exported only), ended once confirmed.
    let mut spans = Vec::new();
    for message in messages {
        let first = message.ids.first().cloned().unwrap_or_default();
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(format!("{first}+{}", message.ids.len()).as_str().into());
        if let Some(traced) = traced::relaying(&traced::traces_in(&message.body)) {
            if let Some(tp) = common::telemetry::traceparent(&traced.batch) {
                let mut headers = lapin::types::FieldTable::default();
                headers.insert("traceparent".into(), lapin::types::AMQPValue::LongString(tp.into()));
                props = props.with_headers(headers);
            }
            spans.push(traced);
        }
        let confirm = bounded(
            limit,
            "basic.publish",
            ch.basic_publish(
                ctx.names.orders_exchange.as_str().into(),
                ORDER_ROUTING_KEY.into(),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                message.body.as_bytes(),
                props,
            ),
        )
        .await?;
        confirms.push((message.ids, confirm));
    }
    let mut confirmed = Vec::with_capacity(entries.len());
    for (ids, confirm) in confirms {
        match bounded(limit, "publisher confirm", confirm).await {
            Ok(Confirmation::Ack(None)) => confirmed.extend(ids),
            Ok(other) => {
                ctx.metrics.relay_failures.inc();
                let first = ids.first().cloned().unwrap_or_default();
                tracing::warn!(%first, entries = ids.len(), confirmation = ?other.is_ack(), "publish not confirmed (nack or returned); will retry");
            }
            Err(e) => {
                ctx.metrics.relay_failures.inc();
                return Err(e);
            }
        }
    }
    drop(spans);
    ctx.metrics.publish_seconds.observe(started.elapsed().as_secs_f64());
    if let Some(oldest) =
        confirmed.first().and_then(|id| id.split('-').next()).and_then(|ms| ms.parse::<i64>().ok())
    {
        ctx.metrics.relay_lag_seconds.set((now_ms() - oldest).max(0) as f64 / 1000.0);
    }
    let left = store.outbox_ack(stream, &confirmed).await?;
    ctx.metrics.relayed.inc_by(confirmed.len() as u64);
    Ok((confirmed.len(), left))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A resync that arrives while the relay waits must lead to a rescan: the notice of
    /// a stream written while the subscription was down is gone, and nothing else would
    /// bring that stream back into the work set.
    #[tokio::test]
    async fn a_resync_met_while_waiting_is_kept_for_the_next_round() {
        let (tx, mut signals) = broadcast::channel(4);
        let (_stop_tx, mut stop) = watch::channel(false);
        let mut work = HashSet::new();
        let mut resync = false;
        tx.send(WorkSignal::Resync).unwrap();
        let stopped =
            wait_for_work(&mut signals, &mut work, &mut resync, Duration::from_secs(5), &mut stop).await;
        assert!(!stopped);
        assert!(resync, "the resync was dropped");
        assert!(work.is_empty());

        let mut resync = false;
        let c = CampaignId::parse("c").unwrap();
        tx.send(WorkSignal::Outbox(c.clone())).unwrap();
        wait_for_work(&mut signals, &mut work, &mut resync, Duration::from_secs(5), &mut stop).await;
        assert!(!resync);
        assert!(work.contains(&c));
    }
}
