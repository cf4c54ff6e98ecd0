//! The Redis stock store: runs the Lua scripts (EVALSHA, EVAL on NOSCRIPT; each
//! script's keys and reply in [`crate::scripts`]) and the plain reads beside them.
//! Every call goes through [`RedisLink`], so every call has a timeout. This layer knows
//! nothing of the local cache; only the [`crate::Engine`] reaches it.

use std::collections::HashMap;

use common::message::OrderStatus;
use deadpool_redis::redis::{self, Value};

use crate::campaign::{
    CampaignLaunch, CampaignMeta, CampaignTuning, LaunchOutcome, OrderRecord, SkuCounters, TuneOutcome,
};
use crate::domain::{
    CampaignId, ConfirmOutcome, EventId, IdempotencyKey, OrderId, OrderLines, OrderRef, PaymentStatus,
    ReleaseReason, ReserveOutcome, SkuId, UserId,
};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;
use crate::link::RedisLink;
use crate::order_ids::OrderIds;
use crate::scripts::release::ReleaseReply;
use crate::scripts::reserve::ReserveReply;
use crate::scripts::{self, parse_items, protocol, Scripts};
use crate::shards::ShardMap;

/// The store's settings (from `[engine]`).
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub idempotency_ttl_secs: u64,
    pub outbox_max_len: u64,
    /// Also write each order's idempotency record (`engine.idempotency_records`).
    pub idempotency_records: bool,
    /// Reservations' outbox entries as compact rows (`engine.compact_events`).
    pub compact_events: bool,
    /// New campaigns and lost shards keep their users' units in one hash
    /// (`engine.users_hash`).
    pub users_hash: bool,
    pub payment_event_ttl_secs: u64,
}

pub(crate) struct StoreParts<'a> {
    pub(crate) link: &'a RedisLink,
    pub(crate) keys: &'a KeySpace,
    pub(crate) scripts: &'a Scripts,
}

/// The Redis side of the engine.
pub(crate) struct StockStore {
    link: RedisLink,
    keys: KeySpace,
    settings: StoreSettings,
    scripts: Scripts,
}

impl std::fmt::Debug for StockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StockStore").field("namespace", &self.keys.namespace()).finish()
    }
}

impl StockStore {
    pub(crate) fn new(link: RedisLink, keys: KeySpace, settings: StoreSettings) -> Self {
        Self { link, keys, settings, scripts: Scripts::new() }
    }

    pub(crate) fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// What the outbox and whole-campaign operations (`outbox.rs`) share with the scripts here.
    pub(crate) fn parts(&self) -> StoreParts<'_> {
        StoreParts { link: &self.link, keys: &self.keys, scripts: &self.scripts }
    }

    /// A whole hash (empty when the key does not exist).
    async fn hash(&self, key: String) -> Result<HashMap<String, String>> {
        self.link.call(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await }).await
    }

    /// Runs one script call that may change the shard `tag` (EVALSHA, EVAL on NOSCRIPT:
    /// [`crate::scripts::lua`]) through the link; with `redis.replica_acks` it answers
    /// only once the replicas hold the change ([`RedisLink::call_acked`]).
    pub(crate) async fn run(
        &self,
        inv: crate::scripts::lua::ScriptInvocation<'_>,
        tag: &CampaignId,
    ) -> Result<Value> {
        let slot = crate::keys::hash_slot(&format!("{{c:{tag}}}"));
        self.link.call_acked(slot, |mut c| async move { inv.invoke_async(&mut c).await }).await
    }

    /// Runs one script call that only reads.
    pub(crate) async fn run_read(&self, inv: crate::scripts::lua::ScriptInvocation<'_>) -> Result<Value> {
        self.link.call(|mut c| async move { inv.invoke_async(&mut c).await }).await
    }

    /// Reserves every line or none (`reserve.lua`), one order alone.
    #[tracing::instrument(level = "debug", skip_all, fields(campaign = %campaign, order = %order.as_str()))]
    pub(crate) async fn reserve(
        &self,
        campaign: &CampaignId,
        order: &OrderRef,
        user: &UserId,
        key: &IdempotencyKey,
        lines: &OrderLines,
    ) -> Result<ReserveReply> {
        let mut replies = self.reserve_batch(campaign, campaign, &[(order, user, key, lines, None)]).await?;
        replies.pop().unwrap_or_else(|| Err(EngineError::Protocol("reserve: no reply".into())))
    }

    /// Decides a batch of orders of one campaign in one `reserve.lua` call on one of
    /// its shards (`tag`), each on its own, in order; one result per order.
    pub(crate) async fn reserve_batch(
        &self,
        campaign: &CampaignId,
        tag: &CampaignId,
        batch: &[(&OrderRef, &UserId, &IdempotencyKey, &OrderLines, Option<&str>)],
    ) -> Result<Vec<Result<ReserveReply>>> {
        let requests: Vec<scripts::reserve::Request<'_>> = batch
            .iter()
            .map(|&(order, user, key, lines, trace)| scripts::reserve::Request {
                campaign,
                tag,
                order,
                user,
                key,
                lines,
                trace,
                idempotency_ttl_secs: self.settings.idempotency_ttl_secs,
                outbox_max_len: self.settings.outbox_max_len,
                idempotency_records: self.settings.idempotency_records,
                compact_events: self.settings.compact_events,
            })
            .collect();
        let inv = scripts::reserve::invocation(&self.scripts.reserve, &self.keys, &requests);
        scripts::reserve::decode(self.run(inv, tag).await?, &requests)
    }

    /// Cancels or expires pending reservations of one campaign, giving their units back
    /// (`release.lua`, one call per [`scripts::release::BATCH_MAX`] orders). The orders'
    /// owners and lines are read first in one pipelined round trip: the script must name
    /// every key it touches.
    #[tracing::instrument(level = "debug", skip_all, fields(campaign = %campaign, orders = orders.len()))]
    pub(crate) async fn release_many(
        &self,
        campaign: &CampaignId,
        map: &ShardMap,
        orders: &[OrderId],
        reason: ReleaseReason,
    ) -> Result<ReleaseReply> {
        let mut reply = ReleaseReply { outcomes: Vec::with_capacity(orders.len()), restocked: Vec::new() };
        for (shard, orders) in by_shard(map, orders) {
            let tag = map.tag(shard);
            for chunk in orders.chunks(scripts::release::BATCH_MAX) {
                let owners = self.owners_and_skus(tag, chunk).await?;
                let inv = scripts::release::invocation(
                    &self.scripts.release,
                    &self.keys,
                    (campaign, tag),
                    reason,
                    chunk,
                    &owners,
                );
                let Some(part) = scripts::release::decode(self.run(inv, tag).await?, chunk)? else {
                    return Err(restoring(campaign));
                };
                reply.outcomes.extend(part.outcomes);
                reply.restocked.extend(part.restocked);
            }
        }
        Ok(reply)
    }

    /// Applies a payment provider's verdict (`confirm.lua`).
    #[tracing::instrument(level = "debug", skip_all, fields(order = %order_id, event = %event))]
    pub(crate) async fn confirm(
        &self,
        map: &ShardMap,
        order_id: &OrderId,
        event: &EventId,
        amount_cents: i64,
        status: PaymentStatus,
    ) -> Result<ConfirmOutcome> {
        let tag = map.tag(map.of_order(order_id));
        let owners = self.owners_and_skus(tag, std::slice::from_ref(order_id)).await?;
        let Some(Some((_, skus))) = owners.into_iter().next() else {
            // No such order in its shard: unknown, unless the shard itself is gone or
            // being rebuilt (the order may be on its way back).
            if !self.shard_live(tag).await? {
                return Err(restoring(&order_id.campaign()));
            }
            return Ok(ConfirmOutcome::NotFound);
        };
        if !self.claim_payment_event(event, order_id).await? {
            return Ok(ConfirmOutcome::EventConflict);
        }
        let request = scripts::confirm::Request {
            order_id,
            tag,
            skus: &skus,
            event,
            amount_cents,
            status,
            event_ttl_secs: self.settings.payment_event_ttl_secs,
        };
        let inv = scripts::confirm::invocation(&self.scripts.confirm, &self.keys, &request);
        scripts::confirm::decode(self.run(inv, tag).await?)?.ok_or_else(|| restoring(&order_id.campaign()))
    }

    /// Lists a new campaign, then loads each shard's window and stock (`warmup.lua`,
    /// one step per shard). A sharded campaign: every other shard first, shard 0 (whose
    /// meta makes the campaign visible) last, so nobody is routed to a shard that is
    /// not there yet. A shard left by an interrupted launch is kept as it is (its slice
    /// is the same).
    #[tracing::instrument(level = "debug", skip_all, fields(campaign = %spec.campaign))]
    pub(crate) async fn launch(&self, spec: &CampaignLaunch) -> Result<LaunchOutcome> {
        self.list_campaign(&spec.campaign).await?;
        let map = ShardMap::new(&spec.campaign, usize::from(spec.shards));
        for shard in (0..map.len()).rev() {
            let slice = |item: &crate::campaign::LaunchItem| map.share(item.stock, shard);
            let inv = scripts::warmup::shard_invocation(
                &self.scripts.warmup,
                &self.keys,
                (spec, map.tag(shard)),
                self.settings.users_hash,
                slice,
            );
            let outcome = scripts::warmup::decode(self.run(inv, map.tag(shard)).await?)?;
            if shard == 0 {
                return Ok(outcome);
            }
        }
        Ok(LaunchOutcome::Created)
    }

    /// Lists a campaign in the index the relay and the sweeps walk. Done before the
    /// campaign's own keys are written (the index is in another slot on a cluster),
    /// so a campaign that can sell is always listed; an entry whose campaign never
    /// came to be costs a look-up and nothing else.
    pub(crate) async fn list_campaign(&self, campaign: &CampaignId) -> Result<()> {
        let (index, id) = (self.keys.campaigns(), campaign.as_str().to_owned());
        self.link
            .call(
                |mut c| async move { redis::cmd("SADD").arg(index).arg(id).query_async::<()>(&mut c).await },
            )
            .await
    }

    /// Changes a live campaign (`tune.lua`); every gateway reloads it.
    /// Every shard's copy of the meta, shard 0's last (its answer is the outcome).
    pub(crate) async fn tune(
        &self,
        campaign: &CampaignId,
        map: &ShardMap,
        t: &CampaignTuning,
    ) -> Result<TuneOutcome> {
        for shard in (0..map.len()).rev() {
            let inv =
                scripts::tune::invocation(&self.scripts.tune, &self.keys, (campaign, map.tag(shard)), t);
            let outcome = scripts::tune::decode(self.run(inv, map.tag(shard)).await?)?;
            if shard == 0 || outcome != TuneOutcome::Tuned {
                return Ok(outcome);
            }
        }
        Ok(TuneOutcome::Tuned)
    }

    /// Every sku's counters in one consistent snapshot (`counters.lua`).
    /// A sharded campaign's are the sums over its shards (one snapshot per shard):
    /// `stock_total` is what was launched, and units on their way between shards
    /// count as available.
    pub(crate) async fn counters(&self, map: &ShardMap, skus: &[SkuId]) -> Result<Vec<SkuCounters>> {
        let mut sums: Vec<SkuCounters> = Vec::new();
        for tag in map.tags() {
            let inv = scripts::counters::invocation(&self.scripts.counters, &self.keys, tag, skus);
            let shard = scripts::counters::decode(self.run_read(inv).await?, skus)?;
            if sums.is_empty() {
                sums = shard;
                continue;
            }
            for s in &mut sums {
                if let Some(c) = shard.iter().find(|c| c.sku == s.sku) {
                    s.total += c.total;
                    s.reserved += c.reserved;
                    s.sold += c.sold;
                }
            }
        }
        if map.len() > 1 {
            for s in &mut sums {
                s.available = s.total.saturating_sub(s.reserved + s.sold);
            }
        }
        Ok(sums)
    }

    /// The campaign's window, limits and skus, or `None` if Redis does not know it.
    pub(crate) async fn campaign_meta(&self, campaign: &CampaignId) -> Result<Option<CampaignMeta>> {
        let map = self.hash(self.keys.meta(campaign)).await?;
        if map.is_empty() {
            return Ok(None);
        }
        parse_meta(campaign, &map).map(Some)
    }

    /// [`StockStore::campaign_meta`] and how many buyers its shard 0 has, in one round
    /// trip (what a process's cache reloads; the other shards' buyers: [`StockStore::buyer_count`]).
    pub(crate) async fn campaign_meta_and_buyer_count(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<(CampaignMeta, u64)>> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(self.keys.meta(campaign));
        pipe.cmd("SCARD").arg(self.keys.buyers(campaign)).cmd("HLEN").arg(self.keys.users(campaign));
        let (map, in_set, in_hash): (HashMap<String, String>, u64, u64) =
            self.link.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        if map.is_empty() {
            return Ok(None);
        }
        Ok(Some((parse_meta(campaign, &map)?, in_set + in_hash)))
    }

    /// How many buyers these shards have together (a shard keeps them in its buyer set
    /// or, with the users hash, as the hash's fields: the other key is absent).
    pub(crate) async fn buyer_count(&self, tags: &[CampaignId]) -> Result<u64> {
        let reads = tags
            .iter()
            .flat_map(|t| {
                [
                    redis::cmd("SCARD").arg(self.keys.buyers(t)).clone(),
                    redis::cmd("HLEN").arg(self.keys.users(t)).clone(),
                ]
            })
            .collect();
        let counts: Vec<u64> = self.link.each(reads).await?;
        Ok(counts.iter().sum())
    }

    /// Each campaign's shard count (`None`: Redis does not know the campaign).
    pub(crate) async fn shard_counts(&self, campaigns: &[&CampaignId]) -> Result<Vec<Option<u16>>> {
        let reads = campaigns
            .iter()
            .map(|c| redis::cmd("HMGET").arg(self.keys.meta(c)).arg("starts").arg("shards").clone());
        let rows: Vec<(Option<String>, Option<u16>)> = self.link.each(reads.collect()).await?;
        Ok(rows.into_iter().map(|(starts, shards)| starts.map(|_| shards.unwrap_or(1))).collect())
    }

    /// The reservation as Redis holds it, or `None`.
    pub(crate) async fn order(&self, shards: &ShardMap, order_id: &OrderId) -> Result<Option<OrderRecord>> {
        let map = self.hash(self.keys.order_at(shards.tag(shards.of_order(order_id)), order_id)).await?;
        if map.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| {
            map.get(name).ok_or_else(|| EngineError::Protocol(format!("order hash lacks {name}")))
        };
        let num = |name: &str| -> Result<i64> { field(name)?.parse().map_err(protocol) };
        // The hash under a ref's key may be another order of the key's chain (one a
        // lost shard forgot, retried): it is this id's order only if its time matches.
        if order_id.created_ms().is_some_and(|ms| num("created").ok() != Some(ms)) {
            return Ok(None);
        }
        let status = OrderStatus::parse(field("state")?)
            .ok_or_else(|| EngineError::Protocol("unknown order state".into()))?;
        Ok(Some(OrderRecord {
            order_id: order_id.clone(),
            user: field("user")?.clone(),
            status,
            items: parse_items(field("items")?)?,
            total_cents: num("total")?,
            created_ms: num("created")?,
            expires_ms: num("expires")?,
            paid_ms: map.get("paid").and_then(|p| p.parse().ok()),
        }))
    }

    /// Pending orders of `campaign` whose payment deadline is at or before `now_ms`,
    /// oldest first, at most `limit`.
    /// Up to `limit` per shard.
    pub(crate) async fn due_orders(&self, map: &ShardMap, now_ms: i64, limit: usize) -> Result<Vec<OrderId>> {
        let mut due = Vec::new();
        for (_, ids) in self.deadlines(map.tags(), now_ms, limit).await? {
            due.extend(ids);
        }
        Ok(due)
    }

    /// Each shard's earliest pending deadline and its orders due at `now_ms` (at most
    /// `want`), one `deadlines.lua` call per shard, side by side on the multiplexed
    /// connections; settled orders leave the head of each shard's list on the way. That
    /// is the call's only write, and it needs no replica's acknowledgement (a failover
    /// that loses it only makes the next call drop them again).
    pub(crate) async fn deadlines(
        &self,
        tags: &[CampaignId],
        now_ms: i64,
        want: usize,
    ) -> Result<Vec<(Option<i64>, Vec<OrderId>)>> {
        let calls = tags.iter().map(|tag| async move {
            let inv = scripts::deadlines::invocation(&self.scripts.deadlines, &self.keys, tag, now_ms, want);
            scripts::deadlines::decode(self.run_read(inv).await?)
        });
        futures_util::future::join_all(calls).await.into_iter().collect()
    }

    /// Every user who ever got a reservation in `campaign`.
    /// Every shard's, together (its buyer set or its users hash's fields).
    pub(crate) async fn buyers(&self, map: &ShardMap) -> Result<Vec<String>> {
        let reads = map
            .tags()
            .iter()
            .flat_map(|t| {
                [
                    redis::cmd("SMEMBERS").arg(self.keys.buyers(t)).clone(),
                    redis::cmd("HKEYS").arg(self.keys.users(t)).clone(),
                ]
            })
            .collect();
        let sets: Vec<Vec<String>> = self.link.each(reads).await?;
        Ok(sets.into_iter().flatten().collect())
    }

    /// Runs the reservation script itself against a campaign that cannot exist: proves
    /// Redis answers and the script runs (readiness).
    pub(crate) async fn probe(&self) -> Result<()> {
        let campaign = CampaignId::parse(PROBE_CAMPAIGN).map_err(protocol)?;
        let user = UserId::parse("readiness").map_err(protocol)?;
        let key = IdempotencyKey::parse("readiness").map_err(protocol)?;
        let lines = OrderLines::parse(vec![("probe".to_owned(), 1)]).map_err(protocol)?;
        let order = OrderIds::new(b"readiness")?.derive(&campaign, 0, &user, &key);
        let reply = self.reserve(&campaign, &order, &user, &key, &lines).await?;
        match reply.outcome {
            ReserveOutcome::CampaignNotFound => Ok(()),
            other => Err(EngineError::Protocol(format!("probe: {other:?}"))),
        }
    }

    /// Claims a payment event id for an order, system-wide (`SET NX GET` on a key of its
    /// own hash tag); false when the id belongs to another order. The same event for the
    /// same order passes again, so a confirmation that failed after the claim can be
    /// retried.
    async fn claim_payment_event(&self, event: &EventId, order_id: &OrderId) -> Result<bool> {
        let key = self.keys.payment_event_claim(event);
        let slot = crate::keys::hash_slot(&key);
        let (order, ttl) = (order_id.as_str().to_owned(), self.settings.payment_event_ttl_secs);
        let owner: Option<String> = self
            .link
            .call_acked(slot, |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(order)
                    .arg("NX")
                    .arg("GET")
                    .arg("EX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(owner.is_none_or(|o| o == order_id.as_str()))
    }

    /// Whether a campaign shard holds its data and is not being rebuilt.
    async fn shard_live(&self, tag: &CampaignId) -> Result<bool> {
        let key = self.keys.meta(tag);
        let (starts, restoring): (Option<String>, Option<String>) = self
            .link
            .call(|mut c| async move {
                redis::cmd("HMGET").arg(key).arg("starts").arg("restoring").query_async(&mut c).await
            })
            .await?;
        Ok(crate::shards::ShardState::of(starts, restoring) == crate::shards::ShardState::Live)
    }

    /// Each order's owner and skus (`None` where Redis has no such order): the keys a
    /// release or confirmation must name. One pipelined round trip.
    async fn owners_and_skus(
        &self,
        tag: &CampaignId,
        orders: &[OrderId],
    ) -> Result<Vec<Option<(UserId, Vec<SkuId>)>>> {
        let reads = orders
            .iter()
            .map(|order| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.keys.order_at(tag, order)).arg("user").arg("items");
                cmd
            })
            .collect();
        let rows: Vec<(Option<String>, Option<String>)> = self.link.each(reads).await?;
        rows.into_iter()
            .map(|row| match row {
                (Some(user), Some(items)) => {
                    let user = UserId::parse(&user).map_err(protocol)?;
                    let skus = parse_items(&items)?
                        .iter()
                        .map(|i| SkuId::parse(&i.sku_id).map_err(protocol))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Some((user, skus)))
                }
                _ => Ok(None),
            })
            .collect()
    }
}

/// The campaign the readiness probe reserves from: a reserved id the operator API
/// refuses to launch, so the probe always ends at `campaign_not_found` and writes
/// nothing. It only proves that Redis runs the reservation script.
pub const PROBE_CAMPAIGN: &str = "readiness-probe-never-launched";

/// Orders grouped by the shard they live in, each group in the given order.
fn by_shard(map: &ShardMap, orders: &[OrderId]) -> Vec<(usize, Vec<OrderId>)> {
    let mut groups: Vec<(usize, Vec<OrderId>)> = Vec::new();
    for order in orders {
        let shard = map.of_order(order);
        match groups.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, g)) => g.push(order.clone()),
            None => groups.push((shard, vec![order.clone()])),
        }
    }
    groups
}

fn restoring(campaign: &CampaignId) -> EngineError {
    EngineError::Unavailable(format!("a shard of campaign {campaign} is being rebuilt"))
}

fn parse_meta(campaign: &CampaignId, map: &HashMap<String, String>) -> Result<CampaignMeta> {
    let get = |k: &str| map.get(k).ok_or_else(|| EngineError::Protocol(format!("meta lacks {k}")));
    let num = |k: &str| -> Result<i64> { get(k)?.parse().map_err(protocol) };
    let threshold = |k: &str| -> Result<Option<u32>> {
        match map.get(k).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(protocol),
        }
    };
    let skus = get("skus")?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| SkuId::parse(s).map_err(protocol))
        .collect::<Result<Vec<_>>>()?;
    Ok(CampaignMeta {
        campaign: campaign.clone(),
        starts_ms: num("starts")?,
        ends_ms: num("ends")?,
        per_user_limit: num("limit")? as u64,
        payment_window_secs: num("window")? as u32,
        max_orders_per_sec: threshold("max_orders_per_sec")?,
        max_user_requests_per_sec: threshold("max_user_rps")?,
        skus,
        version: num("version")? as u64,
        // Written at launch since sharding exists; a campaign from before has one.
        shards: map.get("shards").and_then(|v| v.parse().ok()).unwrap_or(1),
    })
}
