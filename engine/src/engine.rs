//! [`Engine`]: the local cache in front of the Redis stock store, and the only way to
//! the store: every call that changes stock goes through a method here that keeps
//! this process's cache right (buyers, sold-out flags, restocks).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::config::{ExposeSecret, Settings};

use common::message::OrderEvent;

use crate::behind::{OutboxEvents, StreamId};
use crate::cache::{LocalCache, Lookup};
use crate::campaign::CampaignSnapshot;
use crate::campaign::{
    CampaignLaunch, CampaignMeta, CampaignTuning, LaunchOutcome, OrderRecord, SkuCounters, TuneOutcome,
};
use crate::coalesce::{self, Coalescer, Waiting};
use crate::domain::{
    CampaignId, ConfirmOutcome, EventId, IdempotencyKey, OrderId, OrderLines, OrderRef, PaymentStatus,
    ReleaseOutcome, ReleaseReason, ReserveOutcome, SkuId, UserId,
};
use crate::error::Result;
use crate::keys::KeySpace;
use crate::link::RedisLink;
use crate::notices;
use crate::order_ids::OrderIds;
use crate::outbox::{OutboxEntry, WorkSignal};
use crate::rebuild::{Rebuilt, ShardState};
use crate::scripts::reserve::ReserveReply;
use crate::shard_notices;
use crate::shards::ShardMap;
use crate::state::Shared;
use crate::store::{StockStore, StoreSettings};

/// Rounds of moving units and deciding again, per shard, before a sharded campaign's
/// reservation gives up with `Unavailable` (see [`Engine::refill`]).
const REFILL_ROUNDS_PER_SHARD: usize = 8;
/// Pause of a reservation whose units are on their way from another shard (a move
/// takes two script calls).
const MOVE_WAIT: Duration = Duration::from_millis(2);

/// Counters of where reservation requests were answered (exported as metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Answered from the local cache, without Redis.
    pub answered_locally: u64,
    /// Sent to the reservation script.
    pub sent_to_redis: u64,
    /// Whole buyer sets read from Redis into the local cache (a campaign's first
    /// request, a reconnect).
    pub buyer_loads: u64,
}

/// See [`Engine::footprint`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub cached_campaigns: usize,
    pub lanes: usize,
    pub shard_maps: usize,
}

/// The hot path. Cheap to clone; background tasks stop when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Shared>,
}

impl Engine {
    /// Builds the engine and starts its notice listener and refresher. Connects lazily:
    /// a Redis that is down makes calls fail with `Unavailable`, not this.
    pub fn start(settings: &Settings) -> Result<Self> {
        let r = &settings.redis;
        let link = RedisLink::new(r)?;
        let e = &settings.engine;
        let store_settings = StoreSettings {
            idempotency_ttl_secs: e.idempotency_ttl_secs,
            outbox_max_len: e.outbox_max_len,
            idempotency_records: e.idempotency_records,
            compact_events: e.compact_events,
            users_hash: e.users_hash,
            payment_event_ttl_secs: e.payment_event_ttl_secs,
        };
        let cluster = !r.cluster_seeds().is_empty();
        let keys = KeySpace::new(&settings.namespace).with_shard_channels(cluster && r.shard_notices);
        let channel = keys.notice_channel();
        let store = StockStore::new(link, keys, store_settings);
        let refresh = Duration::from_millis(e.campaign_refresh_ms);
        let cache =
            LocalCache::new(Duration::from_millis(e.sold_out_ttl_ms), refresh).with_shard_notices(cluster);
        let order_ids = OrderIds::new(e.order_id_secret.expose_secret().as_bytes())?;
        let coalescer = Coalescer::new(e.reserve_batch_max, e.reserve_calls_in_flight);
        let inner = Arc::new(Shared::new(store, cache, coalescer, order_ids));
        let weak = Arc::downgrade(&inner);
        let listener = tokio::spawn(notices::listen(
            weak.clone(),
            r.nodes(),
            channel,
            Duration::from_millis(r.connect_timeout_ms),
        ));
        let shard_listener = cluster.then(|| {
            tokio::spawn(shard_notices::listen(
                weak.clone(),
                Arc::clone(&inner.notices_wanted),
                r.cluster_seeds(),
                Duration::from_millis(r.connect_timeout_ms),
            ))
        });
        let refresher = tokio::spawn(notices::refresh(weak, refresh));
        if let Ok(mut tasks) = inner.tasks.lock() {
            tasks.push(listener.abort_handle());
            tasks.push(refresher.abort_handle());
            tasks.extend(shard_listener.map(|t| t.abort_handle()));
        }
        Ok(Self { inner })
    }

    /// What this process holds per campaign now (cached campaigns, coalescer lanes,
    /// shard layouts): each is dropped when idle, so it follows the campaigns in use.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            cached_campaigns: self.inner.cache.cached_campaigns().len(),
            lanes: self.inner.coalescer.lanes(),
            shard_maps: self.inner.maps.len(),
        }
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            answered_locally: self.inner.answered_locally.load(Ordering::Relaxed),
            sent_to_redis: self.inner.sent_to_redis.load(Ordering::Relaxed),
            buyer_loads: self.inner.buyer_loads.load(Ordering::Relaxed),
        }
    }

    /// Outbox work notices from every process: which campaigns have entries to relay.
    pub fn work_signals(&self) -> tokio::sync::broadcast::Receiver<WorkSignal> {
        self.inner.work.subscribe()
    }

    /// Hears the outbox notices of these campaigns (and of every campaign launched from
    /// now on) though they are not cached: on a cluster each shard's notices come on a
    /// channel of its own, subscribed only for the campaigns a process names. Replaces
    /// the campaigns named before (a retired campaign drops out).
    pub fn watch_outbox_notices(&self, campaigns: &[CampaignId]) {
        let mut watched = self.inner.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *watched = Some(campaigns.iter().cloned().collect());
        self.inner.notices_wanted.notify_one();
    }

    /// Adds these campaigns to those [`Self::watch_outbox_notices`] named, dropping none.
    pub fn watch_more_outbox_notices(&self, campaigns: &[CampaignId]) {
        let mut watched = self.inner.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        watched.get_or_insert_with(Default::default).extend(campaigns.iter().cloned());
        self.inner.notices_wanted.notify_one();
    }

    /// Whether restock and buyer notices are flowing (local sold-out answers are on).
    pub fn cache_is_live(&self) -> bool {
        self.inner.cache.is_live()
    }

    /// Whether this process may answer the campaign's sold-out and ended requests from
    /// its cache: notices flow and, on a cluster, the campaign's shard channels are
    /// confirmed (`false` while it is not cached).
    pub fn campaign_notices_live(&self, campaign: &CampaignId) -> bool {
        let cache = &self.inner.cache;
        matches!(cache.lookup(campaign.as_str()), Lookup::Known(e) if cache.trusts(&e))
    }

    /// The campaign as this process knows it (loaded from Redis on a miss).
    pub async fn campaign(&self, campaign: &CampaignId) -> Result<Option<Arc<CampaignMeta>>> {
        Ok(self.inner.entry(campaign).await?.map(|e| Arc::clone(&e.meta)))
    }

    /// Reserves all lines or none. Answers from the local cache when it can: unknown
    /// campaign or sku, not started, ended, or a line's sku sold out; the rest are
    /// decided with the other reservations for the campaign in flight (`coalesce`).
    pub async fn reserve(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        key: &IdempotencyKey,
        lines: &OrderLines,
    ) -> Result<ReserveOutcome> {
        self.reserve_admitted(campaign, user, key, (lines, None), |_| None).await
    }

    /// [`reserve`](Self::reserve) behind a gate: once the campaign is known to exist,
    /// `admit` sees its meta and may answer instead (the gateway's per-user request
    /// rate), before anything else is looked at; `None` lets the request through. One
    /// lookup of the campaign serves both. `trace`: the W3C `traceparent` of a sampled
    /// request, carried into the order's outbox event (API.md, "Tracing").
    pub async fn reserve_admitted(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        key: &IdempotencyKey,
        (lines, trace): (&OrderLines, Option<&str>),
        admit: impl FnOnce(&CampaignMeta) -> Option<ReserveOutcome>,
    ) -> Result<ReserveOutcome> {
        let inner = &self.inner;
        let Some(entry) = inner.entry(campaign).await? else {
            Shared::count(&inner.answered_locally);
            return Ok(ReserveOutcome::CampaignNotFound);
        };
        if let Some(answer) = admit(&entry.meta) {
            Shared::count(&inner.answered_locally);
            return Ok(answer);
        }
        if let Some(answer) = inner.answer_locally(&entry, user, lines) {
            Shared::count(&inner.answered_locally);
            return Ok(answer);
        }
        Shared::count(&inner.sent_to_redis);
        // Boxed: the script call's future is most of this one's size (about 8 KiB), and
        // every request answered above would carry it, copied with each move of its
        // future (axum boxes the handler's), for nothing.
        Box::pin(self.decide_in_redis(campaign, entry.meta.shards, (user, key, lines), trace)).await
    }

    /// The rest of [`reserve_admitted`](Self::reserve_admitted): what the local cache
    /// could not answer, asked of the campaign's shards.
    async fn decide_in_redis(
        &self,
        campaign: &CampaignId,
        shards: u16,
        (user, key, lines): (&UserId, &IdempotencyKey, &OrderLines),
        trace: Option<&str>,
    ) -> Result<ReserveOutcome> {
        let inner = &self.inner;
        let map = inner.map_of(campaign, shards);
        let home = map.home(user);
        let order = map.order_for(&inner.order_ids, user, key);
        let mut reply = self.decide(map.tag(home), (&order, user, key, lines), trace).await?;
        if reply.outcome == ReserveOutcome::CampaignNotFound {
            // This process knows the campaign, yet its shard has no meta: the shard's
            // data is gone and the sync-worker is about to rebuild it. Never a 404.
            return Err(crate::EngineError::Unavailable(
                "campaign shard lost its data; being rebuilt".into(),
            ));
        }
        if map.len() > 1 {
            reply = self.refill(campaign, &map, home, (&order, user, key, lines), trace, reply).await?;
        } else {
            for (sku, gen) in &reply.sold_out {
                inner.cache.mark_sold_out(campaign.as_str(), sku, *gen, reply.buyers);
            }
        }
        if matches!(reply.outcome, ReserveOutcome::Reserved(_)) {
            inner.cache.add_buyer(campaign.as_str(), user.as_str());
        }
        Ok(reply.outcome)
    }

    /// A second look before `sold_out` is said: the shards are read side by side, not
    /// at one instant, so a move that ran entirely between two of the reads could hide
    /// its units from the first look; it cannot from a look that starts after the
    /// first one ended (a move takes three calls).
    async fn still_short(&self, map: &ShardMap, sku: &SkuId, asked: u64) -> Result<bool> {
        let again = self.inner.store.sku_levels(map, sku).await?;
        Ok(again.moving == 0 && again.available.iter().sum::<u64>() < asked)
    }

    /// One order decided in its shard's next batch (`coalesce`).
    async fn decide(
        &self,
        tag: &CampaignId,
        (order, user, key, lines): (&OrderRef, &UserId, &IdempotencyKey, &OrderLines),
        trace: Option<&str>,
    ) -> Result<ReserveReply> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = Waiting {
            order: order.clone(),
            user: user.clone(),
            key: key.clone(),
            lines: lines.clone(),
            trace: trace.map(Box::from),
            reply: tx,
        };
        self.inner.coalescer.submit(&self.inner.store, tag, waiting);
        rx.await.map_err(|_| coalesce::dropped())?
    }

    /// A sharded campaign: while the home shard says a line's sku is sold out but
    /// another shard still holds units of it, units move to the home shard (half the
    /// richest shard's, at least what the line lacks) and the order is decided again.
    /// `sold_out` stands only when the shards together hold fewer units than the line
    /// asks for (then, at zero, every shard's flag is set). Bounded: past
    /// [`REFILL_ROUNDS_PER_SHARD`] rounds per shard (units keep being taken by others
    /// as fast as they arrive) the answer is `Unavailable` (503, retry), never a
    /// `sold_out` while units remain.
    async fn refill(
        &self,
        campaign: &CampaignId,
        map: &ShardMap,
        home: usize,
        request: (&OrderRef, &UserId, &IdempotencyKey, &OrderLines),
        trace: Option<&str>,
        mut reply: ReserveReply,
    ) -> Result<ReserveReply> {
        let store = &self.inner.store;
        for _ in 0..REFILL_ROUNDS_PER_SHARD * map.len() {
            let ReserveOutcome::SoldOut(sku) = &reply.outcome else {
                return Ok(reply);
            };
            let asked = request.3.iter().find(|l| &l.sku == sku).map_or(1, |l| l.quantity);
            let levels = store.sku_levels(map, sku).await?;
            let everywhere: u64 = levels.available.iter().sum();
            if levels.incomplete && everywhere < asked {
                // A shard being rebuilt may hold units: 503 and retry, never sold_out.
                return Err(crate::EngineError::Unavailable(
                    "a shard of the campaign is being rebuilt".into(),
                ));
            }
            if levels.moving > 0 {
                // Units between shards are neither here nor gone: never sold out while
                // some are on their way. A move a stopped process left is finished here.
                if levels.stale_moves {
                    store.finish_moves(campaign, map, crate::shards::MOVE_STALE_MS).await?;
                } else if everywhere < asked {
                    tokio::time::sleep(MOVE_WAIT).await;
                }
            } else if everywhere < asked && self.still_short(map, sku, asked).await? {
                if everywhere == 0 {
                    let gen = levels.generations.iter().copied().max().unwrap_or(0);
                    self.inner.cache.mark_sold_out(campaign.as_str(), sku, gen, levels.buyers);
                }
                return Ok(reply);
            }
            let at_home = levels.available[home];
            if at_home < asked {
                // The richest shard gives half its units (at least what the line
                // lacks), so the next buyers homed here find units too; poorer shards
                // then give what is still lacking.
                let mut donors: Vec<usize> =
                    (0..map.len()).filter(|s| *s != home && levels.available[*s] > 0).collect();
                donors.sort_by_key(|s| std::cmp::Reverse(levels.available[*s]));
                let mut lacking = asked - at_home;
                for (i, donor) in donors.into_iter().enumerate() {
                    let want = if i == 0 { lacking.max(levels.available[donor] / 2) } else { lacking };
                    let moved = store.move_units(campaign, map, sku, (donor, home), (want, 1)).await?;
                    lacking = lacking.saturating_sub(moved);
                    if lacking == 0 {
                        break;
                    }
                }
            }
            reply = self.decide(map.tag(home), request, trace).await?;
        }
        match reply.outcome {
            ReserveOutcome::SoldOut(_) => {
                Err(crate::EngineError::Unavailable("stock is moving between shards; retry".into()))
            }
            _ => Ok(reply),
        }
    }

    /// Cancels or expires a pending reservation; units come back on every process.
    pub async fn release(&self, order: &OrderId, reason: ReleaseReason) -> Result<ReleaseOutcome> {
        let campaign = order.campaign();
        let mut outcomes = self.release_many(&campaign, std::slice::from_ref(order), reason).await?;
        outcomes
            .pop()
            .map(|(_, outcome)| outcome)
            .ok_or_else(|| crate::EngineError::Protocol("release: no outcome".into()))
    }

    /// Cancels or expires many pending reservations of one campaign in a few script
    /// calls, each order at most once; units come back on every process.
    pub async fn release_many(
        &self,
        campaign: &CampaignId,
        orders: &[OrderId],
        reason: ReleaseReason,
    ) -> Result<Vec<(OrderId, ReleaseOutcome)>> {
        let map = self.inner.shard_map(campaign).await?;
        let reply = self.inner.store.release_many(campaign, &map, orders, reason).await?;
        for (sku, gen) in &reply.restocked {
            self.inner.cache.restock(campaign.as_str(), sku, *gen);
        }
        Ok(reply.outcomes)
    }

    /// Applies a payment provider's verdict to an order.
    pub async fn confirm(
        &self,
        order: &OrderId,
        event: &EventId,
        amount_cents: i64,
        status: PaymentStatus,
    ) -> Result<ConfirmOutcome> {
        let map = self.inner.shard_map(&order.campaign()).await?;
        self.inner.store.confirm(&map, order, event, amount_cents, status).await
    }

    /// Loads a new campaign into Redis; this process sees it at once, others within 1 s.
    pub async fn launch(&self, spec: &CampaignLaunch) -> Result<LaunchOutcome> {
        let outcome = self.inner.store.launch(spec).await?;
        self.inner.reload(&spec.campaign, true).await?;
        Ok(outcome)
    }

    /// Tunes a live campaign; this process sees it at once, others within 1 s.
    pub async fn tune(&self, campaign: &CampaignId, tuning: &CampaignTuning) -> Result<TuneOutcome> {
        let map = self.inner.shard_map(campaign).await?;
        let outcome = self.inner.store.tune(campaign, &map, tuning).await?;
        self.inner.reload(campaign, false).await?;
        Ok(outcome)
    }

    // Reads: they change nothing, so they need not pass the cache.

    /// The campaign's window, limits and skus as Redis holds them, or `None`.
    pub async fn campaign_meta(&self, campaign: &CampaignId) -> Result<Option<CampaignMeta>> {
        self.inner.store.campaign_meta(campaign).await
    }

    /// Every sku's counters in one consistent snapshot.
    pub async fn counters(&self, campaign: &CampaignId, skus: &[SkuId]) -> Result<Vec<SkuCounters>> {
        let map = self.inner.shard_map(campaign).await?;
        self.inner.store.counters(&map, skus).await
    }

    /// The reservation as Redis holds it, or `None`.
    pub async fn order(&self, order: &OrderId) -> Result<Option<OrderRecord>> {
        let map = self.inner.shard_map(&order.campaign()).await?;
        self.inner.store.order(&map, order).await
    }

    /// Pending orders of `campaign` whose deadline is at or before `now_ms`, oldest
    /// first, at most `limit`.
    pub async fn due_orders(&self, campaign: &CampaignId, now_ms: i64, limit: usize) -> Result<Vec<OrderId>> {
        let map = self.inner.shard_map(campaign).await?;
        self.inner.store.due_orders(&map, now_ms, limit).await
    }

    /// Runs the reservation script against a campaign that cannot exist (readiness).
    pub async fn probe(&self) -> Result<()> {
        self.inner.store.probe().await
    }

    // The sync-worker's side: the outbox protocol and whole-campaign maintenance.

    /// Every campaign in the index.
    pub async fn campaign_ids(&self) -> Result<Vec<CampaignId>> {
        self.inner.store.campaign_ids().await
    }

    /// Every outbox stream of these campaigns: one per shard, named by the shard's tag
    /// (the campaign id for shard 0), as `outbox <tag>` notices name them.
    pub async fn outbox_streams(&self, campaigns: &[CampaignId]) -> Result<Vec<CampaignId>> {
        let maps = self.inner.shard_maps(campaigns).await?;
        Ok(maps.iter().flat_map(|m| m.tags().iter().cloned()).collect())
    }

    /// Completes unit moves between a campaign's shards that a process left half
    /// done more than `older_than_ms` ago; returns how many.
    pub async fn finish_moves(&self, campaign: &CampaignId, older_than_ms: i64) -> Result<usize> {
        let map = self.inner.shard_map(campaign).await?;
        self.inner.store.finish_moves(campaign, &map, older_than_ms).await
    }

    /// Creates the relay group on an outbox stream (a campaign or shard tag), if missing.
    pub async fn outbox_ensure_group(&self, campaign: &CampaignId) -> Result<()> {
        self.inner.store.outbox_ensure_group(campaign).await
    }

    /// Up to `max` outbox entries for `consumer` (claimed from a dead one first).
    pub async fn outbox_take(
        &self,
        campaign: &CampaignId,
        consumer: &str,
        claim_idle_ms: u64,
        max: usize,
    ) -> Result<Vec<OutboxEntry>> {
        self.inner.store.outbox_take(campaign, consumer, claim_idle_ms, max).await
    }

    /// Sets aside outbox entries that carry no order (see `outbox.rs`).
    pub async fn outbox_set_aside(&self, campaign: &CampaignId, ids: &[String]) -> Result<()> {
        self.inner.store.outbox_set_aside(campaign, ids).await
    }

    /// Acknowledges relayed entries; returns the entries left.
    pub async fn outbox_ack(&self, campaign: &CampaignId, ids: &[String]) -> Result<u64> {
        self.inner.store.outbox_ack(campaign, ids).await
    }

    /// Each campaign's outbox length (pipelined).
    pub async fn outbox_lengths(&self, campaigns: &[CampaignId]) -> Result<Vec<u64>> {
        self.inner.store.outbox_lengths(campaigns).await
    }

    /// Each campaign's earliest pending deadline over all its shards (pipelined).
    pub async fn next_deadlines(&self, campaigns: &[CampaignId]) -> Result<Vec<Option<i64>>> {
        let maps = self.inner.shard_maps(campaigns).await?;
        let tags: Vec<CampaignId> = maps.iter().flat_map(|m| m.tags().iter().cloned()).collect();
        let mut per_tag = self.inner.store.next_deadlines(&tags).await?.into_iter();
        Ok(maps.iter().map(|m| per_tag.by_ref().take(m.len()).flatten().min()).collect())
    }

    /// Whether Redis holds these campaigns (pipelined).
    pub async fn campaigns_present(&self, campaigns: &[CampaignId]) -> Result<Vec<bool>> {
        self.inner.store.campaigns_present(campaigns).await
    }

    /// Every shard's state, per campaign (`(id, shard count)` as MySQL has them): one
    /// pipelined command per shard.
    pub async fn shard_states(&self, campaigns: &[(CampaignId, u16)]) -> Result<Vec<Vec<ShardState>>> {
        self.inner.store.shard_states(campaigns).await
    }

    /// Puts campaigns back in the index the relay and sweeps walk; returns how many
    /// were missing from it.
    pub async fn relist(&self, campaigns: &[CampaignId]) -> Result<u64> {
        self.inner.store.relist(campaigns).await
    }

    /// Rebuilds the `lost` shards of a campaign from MySQL's copy and the campaign's
    /// other shards (see `rebuild.rs`). The lease is this process's: a rebuild it left
    /// half done is taken up again at once, another process's after its lease lapses.
    pub async fn rebuild(
        &self,
        snapshot: &CampaignSnapshot,
        lost: &[usize],
        generation: u64,
    ) -> Result<Rebuilt> {
        self.inner.store.rebuild(snapshot, lost, &self.inner.rebuild_token, generation).await
    }

    /// Holds a live shard (`tag`) found behind MySQL under this process's rebuild lease:
    /// every path answers 503 there, its data kept. `false`: another rebuilder holds it,
    /// or it has no meta. Call again within the lease to keep it.
    pub async fn hold_shard(&self, tag: &CampaignId) -> Result<bool> {
        self.inner.store.hold(tag, &self.inner.rebuild_token).await
    }

    /// Drops this process's hold of a shard: it answers again as it was.
    pub async fn unhold_shard(&self, tag: &CampaignId) -> Result<()> {
        self.inner.store.unhold(tag, &self.inner.rebuild_token).await
    }

    /// Each outbox stream's relay group position (see `behind.rs`), one result per stream.
    pub async fn relay_positions(&self, streams: &[CampaignId]) -> Vec<Result<Option<StreamId>>> {
        self.inner.store.relay_positions(streams).await
    }

    /// How many entries a shard's outbox holds, and its first `max` entries with their
    /// order events.
    pub async fn outbox_backlog(&self, tag: &CampaignId, max: usize) -> Result<(u64, Vec<OutboxEvents>)> {
        self.inner.store.outbox_backlog(tag, max).await
    }

    /// Drops these orders from a held shard (see `behind.rs`).
    pub async fn forget_orders(&self, tag: &CampaignId, events: &[OrderEvent]) -> Result<()> {
        self.inner.store.forget_orders(tag, events).await
    }

    /// Makes a shard's outbox stream exist with its last id at least `id`.
    pub async fn raise_stream_id(&self, tag: &CampaignId, id: StreamId) -> Result<()> {
        self.inner.store.raise_stream_id(tag, id).await
    }

    /// Drops one page of a finished campaign's orders from Redis (see `outbox.rs`).
    pub async fn retire_orders(&self, campaign: &CampaignId, orders: &[OrderId]) -> Result<()> {
        let map = self.inner.shard_map(campaign).await?;
        self.inner.store.retire_orders(&map, orders).await
    }

    /// Drops the rest of a finished campaign's per-order data and takes it off the
    /// index, once [`Engine::retire_orders`] has taken every page.
    pub async fn retire_finish(&self, campaign: &CampaignId) -> Result<()> {
        let map = self.inner.shard_map(campaign).await?;
        self.inner.store.retire_finish(campaign, &map).await
    }
}
