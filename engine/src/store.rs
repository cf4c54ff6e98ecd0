//! The Redis stock store: the Lua scripts (EVALSHA, reloaded on NOSCRIPT) and the
//! plain reads beside them. Every call goes through [`RedisLink`], so every call has
//! a timeout. This layer knows nothing of the local cache.

use std::collections::HashMap;

use common::message::{OrderItem, OrderStatus};
use deadpool_redis::redis::{self, Script, Value};

use crate::domain::{
    CampaignId, ConfirmOutcome, EventId, IdempotencyKey, OrderId, OrderLines, PaymentStatus, ReleaseOutcome,
    ReleaseReason, Reservation, ReserveOutcome, SkuId, UserId,
};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;
use crate::link::RedisLink;

/// Tunables of the store (from `[engine]` settings).
#[derive(Debug, Clone)]
pub struct StoreLimits {
    pub idempotency_ttl_secs: u64,
    pub outbox_max_len: u64,
    pub payment_event_ttl_secs: u64,
}

/// A campaign as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignMeta {
    pub campaign: CampaignId,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub per_user_limit: u64,
    pub payment_window_secs: u32,
    pub max_orders_per_sec: Option<u32>,
    pub max_user_requests_per_sec: Option<u32>,
    pub skus: Vec<SkuId>,
    pub version: u64,
}

impl CampaignMeta {
    pub fn is_open_at(&self, now_ms: i64) -> bool {
        now_ms >= self.starts_ms && now_ms < self.ends_ms
    }
}

/// A new campaign: what `warmup.lua` loads. Built by the caller from validated input.
#[derive(Debug, Clone)]
pub struct CampaignLaunch {
    pub campaign: CampaignId,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub per_user_limit: u64,
    pub payment_window_secs: u32,
    pub max_orders_per_sec: Option<u32>,
    pub max_user_requests_per_sec: Option<u32>,
    pub items: Vec<LaunchItem>,
}

impl CampaignLaunch {
    /// The same campaign as MySQL stores it (items in sku order, as MySQL reads them
    /// back), so a repeated launch can be compared with what is stored.
    pub fn to_row(&self, name: &str) -> common::db::CampaignRow {
        let mut items: Vec<common::db::CampaignItemRow> = self
            .items
            .iter()
            .map(|i| common::db::CampaignItemRow {
                sku_id: i.sku.to_string(),
                price_cents: i.price_cents,
                stock_total: i.stock as i64,
            })
            .collect();
        items.sort_by(|a, b| a.sku_id.cmp(&b.sku_id));
        common::db::CampaignRow {
            campaign_id: self.campaign.to_string(),
            name: name.to_owned(),
            starts_ms: self.starts_ms,
            ends_ms: self.ends_ms,
            per_user_limit: self.per_user_limit as i64,
            payment_window_secs: self.payment_window_secs,
            max_orders_per_sec: self.max_orders_per_sec,
            max_user_requests_per_sec: self.max_user_requests_per_sec,
            items,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LaunchItem {
    pub sku: SkuId,
    pub stock: u64,
    pub price_cents: i64,
}

/// Changes to a live campaign; `None` leaves a field as it is. A threshold of
/// `Some(None)` removes it.
#[derive(Debug, Clone, Default)]
pub struct CampaignTuning {
    pub ends_ms: Option<i64>,
    pub per_user_limit: Option<u64>,
    pub max_orders_per_sec: Option<Option<u32>>,
    pub max_user_requests_per_sec: Option<Option<u32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchOutcome {
    Created,
    AlreadyExists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TuneOutcome {
    Tuned,
    NotFound,
    EndsBeforeStart,
}

/// One sku's counters; `available + reserved + sold = total` always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuCounters {
    pub sku: SkuId,
    pub total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    pub price_cents: i64,
}

impl SkuCounters {
    /// The Redis side of a reconciliation.
    pub fn to_redis_stock(&self) -> common::reconcile::RedisStock {
        common::reconcile::RedisStock {
            sku_id: self.sku.to_string(),
            available: self.available as i64,
            reserved: self.reserved as i64,
            sold: self.sold as i64,
        }
    }
}

/// A reservation as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub order_id: OrderId,
    pub user: String,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// When it was paid (or, for refund_required, when the late payment came).
    pub paid_ms: Option<i64>,
}

/// A reservation outcome plus what the local cache should learn from it: skus seen
/// at zero (never merely short), each with the stock generation it was seen at.
#[derive(Debug, Clone)]
pub struct ReserveReply {
    pub outcome: ReserveOutcome,
    pub sold_out: Vec<(SkuId, u64)>,
    /// With `sold_out`: how many buyers the campaign had then. The flags may be trusted
    /// only by a process that has heard of at least that many.
    pub buyers: u64,
}

/// Each order's release outcome plus the skus brought back from zero, with their new
/// generation.
#[derive(Debug, Clone)]
pub struct ReleaseReply {
    pub outcomes: Vec<(OrderId, ReleaseOutcome)>,
    pub restocked: Vec<(SkuId, u64)>,
}

/// The scripts, hashed once.
pub(crate) struct Scripts {
    reserve: Script,
    release: Script,
    confirm: Script,
    warmup: Script,
    tune: Script,
    counters: Script,
    pub(crate) restore: Script,
}

pub(crate) struct StoreParts<'a> {
    pub(crate) link: &'a RedisLink,
    pub(crate) keys: &'a KeySpace,
    pub(crate) scripts: &'a Scripts,
}

/// The Redis side of the engine.
pub struct StockStore {
    link: RedisLink,
    keys: KeySpace,
    limits: StoreLimits,
    scripts: Scripts,
}

impl std::fmt::Debug for StockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StockStore").field("namespace", &self.keys.namespace()).finish()
    }
}

impl StockStore {
    pub fn new(link: RedisLink, keys: KeySpace, limits: StoreLimits) -> Self {
        let scripts = Scripts {
            reserve: Script::new(flashsale_lua::RESERVE),
            release: Script::new(flashsale_lua::RELEASE),
            confirm: Script::new(flashsale_lua::CONFIRM),
            warmup: Script::new(flashsale_lua::WARMUP),
            tune: Script::new(flashsale_lua::TUNE),
            counters: Script::new(flashsale_lua::COUNTERS),
            restore: Script::new(flashsale_lua::RESTORE),
        };
        Self { link, keys, limits, scripts }
    }

    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// What the outbox and whole-campaign operations (`outbox.rs`) share with the scripts here.
    pub(crate) fn parts(&self) -> StoreParts<'_> {
        StoreParts { link: &self.link, keys: &self.keys, scripts: &self.scripts }
    }

    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    async fn eval(&self, inv: redis::ScriptInvocation<'_>) -> Result<Reply> {
        let v: Value = self.link.call(|mut c| async move { inv.invoke_async(&mut c).await }).await?;
        Reply::new(v)
    }

    /// Reserves every line or none (`reserve.lua`).
    #[tracing::instrument(level = "debug", skip_all, fields(campaign = %campaign, order = %order_id))]
    pub async fn reserve(
        &self,
        campaign: &CampaignId,
        order_id: &OrderId,
        user: &UserId,
        key: &IdempotencyKey,
        lines: &OrderLines,
    ) -> Result<ReserveReply> {
        let k = &self.keys;
        let mut inv = self.scripts.reserve.prepare_invoke();
        inv.key(k.meta(campaign))
            .key(k.user(campaign, user))
            .key(k.idempotency(campaign, user, key))
            .key(k.order(order_id))
            .key(k.outbox(campaign))
            .key(k.pending(campaign))
            .key(k.buyers(campaign))
            .key(k.order_rate(campaign));
        inv.arg(campaign.as_str())
            .arg(order_id.as_str())
            .arg(user.as_str())
            .arg(lines.fingerprint())
            .arg(self.limits.idempotency_ttl_secs)
            .arg(self.limits.outbox_max_len)
            .arg(k.events_channel());
        for line in lines.iter() {
            inv.key(k.stock(campaign, &line.sku));
            inv.arg(line.sku.as_str()).arg(line.quantity);
        }
        let r = self.eval(inv).await?;
        let none = Vec::new;
        let reply = match r.tag()? {
            tag @ ("reserved" | "replay") => {
                let reservation = Reservation {
                    order_id: OrderId::parse(&r.string(1)?).map_err(protocol)?,
                    items: parse_items(&r.string(2)?)?,
                    total_cents: r.int(3)?,
                    created_ms: r.int(4)?,
                    expires_ms: r.int(5)?,
                };
                if tag == "reserved" {
                    ReserveReply {
                        outcome: ReserveOutcome::Reserved(reservation),
                        sold_out: r.sku_gens(6)?,
                        buyers: r.int(7)? as u64,
                    }
                } else {
                    ReserveReply {
                        outcome: ReserveOutcome::Replayed(reservation),
                        sold_out: none(),
                        buyers: 0,
                    }
                }
            }
            "reused" => ReserveReply { outcome: ReserveOutcome::KeyReused, sold_out: none(), buyers: 0 },
            "campaign_not_found" => {
                ReserveReply { outcome: ReserveOutcome::CampaignNotFound, sold_out: none(), buyers: 0 }
            }
            "not_active" => ReserveReply { outcome: ReserveOutcome::NotActive, sold_out: none(), buyers: 0 },
            "sku_not_found" => {
                ReserveReply { outcome: ReserveOutcome::SkuNotFound(r.sku(1)?), sold_out: none(), buyers: 0 }
            }
            "sold_out" => {
                let sku = r.sku(1)?;
                // Only a sku at zero is flagged: one with fewer units than asked for can
                // still serve smaller orders.
                let flag = if r.int(3)? == 0 { vec![(sku.clone(), r.int(2)? as u64)] } else { Vec::new() };
                ReserveReply {
                    outcome: ReserveOutcome::SoldOut(sku),
                    sold_out: flag,
                    buyers: r.int(4)? as u64,
                }
            }
            "limit_exceeded" => ReserveReply {
                outcome: ReserveOutcome::LimitExceeded { held: r.int(1)? as u64, limit: r.int(2)? as u64 },
                sold_out: none(),
                buyers: 0,
            },
            "rate_limited" => ReserveReply {
                outcome: ReserveOutcome::RateLimited { retry_after_ms: r.int(1)? as u64 },
                sold_out: none(),
                buyers: 0,
            },
            "backlog_full" => return Err(EngineError::Backpressure(r.int(1)? as u64)),
            other => return Err(EngineError::Protocol(format!("reserve: {other}"))),
        };
        Ok(reply)
    }

    /// Cancels or expires pending reservations of one campaign, giving their units back
    /// (`release.lua`, one call per [`RELEASE_BATCH_MAX`] orders). The orders' owners
    /// and lines are read first in one pipelined round trip: the script must name
    /// every key it touches.
    #[tracing::instrument(level = "debug", skip_all, fields(campaign = %campaign, orders = orders.len()))]
    pub async fn release_many(
        &self,
        campaign: &CampaignId,
        orders: &[OrderId],
        reason: ReleaseReason,
    ) -> Result<ReleaseReply> {
        let mut reply = ReleaseReply { outcomes: Vec::with_capacity(orders.len()), restocked: Vec::new() };
        for chunk in orders.chunks(RELEASE_BATCH_MAX) {
            let owners = self.owners_and_skus(chunk).await?;
            let k = &self.keys;
            let mut inv = self.scripts.release.prepare_invoke();
            inv.key(k.meta(campaign)).key(k.outbox(campaign)).key(k.pending(campaign));
            inv.arg(campaign.as_str()).arg(reason.as_str()).arg(k.prefix(campaign)).arg(k.events_channel());
            for (order, owner) in chunk.iter().zip(&owners) {
                inv.key(k.order(order));
                match owner {
                    Some((user, skus)) => {
                        inv.key(k.user(campaign, user));
                        for sku in skus {
                            inv.key(k.stock(campaign, sku));
                        }
                        inv.arg(order.as_str()).arg(skus.len());
                    }
                    // No order hash: the script only takes the id off the pending set.
                    None => {
                        inv.key(format!("{}user:", k.prefix(campaign)));
                        inv.arg(order.as_str()).arg(0);
                    }
                }
            }
            let r = self.eval(inv).await?;
            match r.tag()? {
                "done" => {}
                "restoring" => return Err(restoring(campaign)),
                other => return Err(EngineError::Protocol(format!("release: {other}"))),
            }
            let Some(Value::Array(outcomes)) = r.0.get(1) else {
                return Err(EngineError::Protocol("release: no outcome list".into()));
            };
            if outcomes.len() != chunk.len() {
                return Err(EngineError::Protocol("release: one outcome per order expected".into()));
            }
            let outcomes = Reply(outcomes.clone());
            for (i, order) in chunk.iter().enumerate() {
                reply.outcomes.push((order.clone(), parse_release_outcome(&outcomes.string(i)?)?));
            }
            reply.restocked.extend(r.sku_gens(2)?);
        }
        Ok(reply)
    }

    /// Applies a payment provider's verdict (`confirm.lua`).
    #[tracing::instrument(level = "debug", skip_all, fields(order = %order_id, event = %event))]
    pub async fn confirm(
        &self,
        order_id: &OrderId,
        event: &EventId,
        amount_cents: i64,
        status: PaymentStatus,
    ) -> Result<ConfirmOutcome> {
        let campaign = order_id.campaign();
        let owners = self.owners_and_skus(std::slice::from_ref(order_id)).await?;
        let Some(Some((_, skus))) = owners.into_iter().next() else {
            return Ok(ConfirmOutcome::NotFound);
        };
        let k = &self.keys;
        let mut inv = self.scripts.confirm.prepare_invoke();
        inv.key(k.order(order_id))
            .key(k.outbox(&campaign))
            .key(k.pending(&campaign))
            .key(k.payment_event(&campaign, event))
            .key(k.meta(&campaign));
        for sku in &skus {
            inv.key(k.stock(&campaign, sku));
        }
        let status = match status {
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
        };
        inv.arg(campaign.as_str())
            .arg(order_id.as_str())
            .arg(amount_cents.to_string())
            .arg(status)
            .arg(k.prefix(&campaign))
            .arg(self.limits.payment_event_ttl_secs)
            .arg(k.events_channel());
        let r = self.eval(inv).await?;
        Ok(match r.tag()? {
            "paid" => ConfirmOutcome::Paid,
            "refund_required" => ConfirmOutcome::RefundRequired,
            "failed_noted" => ConfirmOutcome::FailedNoted(r.status(1)?),
            "duplicate" => ConfirmOutcome::Duplicate(r.status(1)?),
            "already" => ConfirmOutcome::AlreadySettled(r.status(1)?),
            "amount_mismatch" => ConfirmOutcome::AmountMismatch { total_cents: r.int(1)? },
            "event_conflict" => ConfirmOutcome::EventConflict,
            "not_found" => ConfirmOutcome::NotFound,
            "restoring" => return Err(restoring(&campaign)),
            other => return Err(EngineError::Protocol(format!("confirm: {other}"))),
        })
    }

    /// Loads a new campaign's window and stock and lists it, in one step (`warmup.lua`).
    #[tracing::instrument(level = "debug", skip_all, fields(campaign = %spec.campaign))]
    pub async fn launch(&self, spec: &CampaignLaunch) -> Result<LaunchOutcome> {
        let k = &self.keys;
        let c = &spec.campaign;
        let mut inv = self.scripts.warmup.prepare_invoke();
        inv.key(k.meta(c)).key(k.campaigns());
        inv.arg(c.as_str())
            .arg(spec.starts_ms)
            .arg(spec.ends_ms)
            .arg(spec.per_user_limit)
            .arg(spec.payment_window_secs)
            .arg(threshold_arg(spec.max_orders_per_sec))
            .arg(threshold_arg(spec.max_user_requests_per_sec))
            .arg(k.events_channel());
        for item in &spec.items {
            inv.key(k.stock(c, &item.sku));
            inv.arg(item.sku.as_str()).arg(item.stock).arg(item.price_cents);
        }
        let r = self.eval(inv).await?;
        let outcome = match r.tag()? {
            "created" => LaunchOutcome::Created,
            "exists" => LaunchOutcome::AlreadyExists,
            other => return Err(EngineError::Protocol(format!("warmup: {other}"))),
        };
        Ok(outcome)
    }

    /// Changes a live campaign (`tune.lua`); every gateway reloads it.
    pub async fn tune(&self, campaign: &CampaignId, t: &CampaignTuning) -> Result<TuneOutcome> {
        let mut inv = self.scripts.tune.prepare_invoke();
        inv.key(self.keys.meta(campaign));
        inv.arg(campaign.as_str()).arg(self.keys.events_channel());
        if let Some(v) = t.ends_ms {
            inv.arg("ends").arg(v);
        }
        if let Some(v) = t.per_user_limit {
            inv.arg("limit").arg(v);
        }
        if let Some(v) = t.max_orders_per_sec {
            inv.arg("max_orders_per_sec").arg(threshold_arg(v));
        }
        if let Some(v) = t.max_user_requests_per_sec {
            inv.arg("max_user_rps").arg(threshold_arg(v));
        }
        let r = self.eval(inv).await?;
        Ok(match r.tag()? {
            "tuned" => TuneOutcome::Tuned,
            "not_found" => TuneOutcome::NotFound,
            "ends_before_start" => TuneOutcome::EndsBeforeStart,
            other => return Err(EngineError::Protocol(format!("tune: {other}"))),
        })
    }

    /// The campaign's window, limits and skus, or `None` if Redis does not know it.
    pub async fn campaign_meta(&self, campaign: &CampaignId) -> Result<Option<CampaignMeta>> {
        let key = self.keys.meta(campaign);
        let map: HashMap<String, String> = self
            .link
            .call(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await })
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        parse_meta(campaign, &map).map(Some)
    }

    /// [`StockStore::campaign_meta`] and how many buyers the campaign has, in one
    /// round trip (what a process's cache reloads).
    pub async fn campaign_meta_and_buyer_count(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<(CampaignMeta, u64)>> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(self.keys.meta(campaign)).cmd("SCARD").arg(self.keys.buyers(campaign));
        let (map, buyers): (HashMap<String, String>, u64) =
            self.link.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        if map.is_empty() {
            return Ok(None);
        }
        Ok(Some((parse_meta(campaign, &map)?, buyers)))
    }

    /// Every sku's counters in one consistent snapshot (`counters.lua`).
    pub async fn counters(&self, campaign: &CampaignId, skus: &[SkuId]) -> Result<Vec<SkuCounters>> {
        let mut inv = self.scripts.counters.prepare_invoke();
        for sku in skus {
            inv.key(self.keys.stock(campaign, sku));
        }
        let v: Value = self.link.call(|mut c| async move { inv.invoke_async(&mut c).await }).await?;
        let Value::Array(rows) = v else {
            return Err(EngineError::Protocol("counters: not an array".into()));
        };
        let mut out = Vec::with_capacity(rows.len());
        for (sku, row) in skus.iter().zip(rows) {
            let r = Reply::new(row)?;
            if r.0.is_empty() {
                continue;
            }
            out.push(SkuCounters {
                sku: sku.clone(),
                total: r.int(0)? as u64,
                available: r.int(1)? as u64,
                reserved: r.int(2)? as u64,
                sold: r.int(3)? as u64,
                price_cents: r.int(4)?,
            });
        }
        Ok(out)
    }

    /// The reservation as Redis holds it, or `None`.
    pub async fn order(&self, order_id: &OrderId) -> Result<Option<OrderRecord>> {
        let key = self.keys.order(order_id);
        let map: HashMap<String, String> = self
            .link
            .call(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await })
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| {
            map.get(name).ok_or_else(|| EngineError::Protocol(format!("order hash lacks {name}")))
        };
        let num = |name: &str| -> Result<i64> { field(name)?.parse().map_err(protocol) };
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
    pub async fn due_orders(&self, campaign: &CampaignId, now_ms: i64, limit: usize) -> Result<Vec<OrderId>> {
        let key = self.keys.pending(campaign);
        let ids: Vec<String> = self
            .link
            .call(|mut c| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(key)
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(ids.iter().filter_map(|s| OrderId::parse(s).ok()).collect())
    }

    /// Every user who ever got a reservation in `campaign`.
    pub async fn buyers(&self, campaign: &CampaignId) -> Result<Vec<String>> {
        let key = self.keys.buyers(campaign);
        self.link.call(|mut c| async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await }).await
    }

    /// Runs the reservation script itself against a campaign that cannot exist: proves
    /// Redis answers and the script runs (readiness).
    pub async fn probe(&self) -> Result<()> {
        let campaign = CampaignId::parse(PROBE_CAMPAIGN).map_err(protocol)?;
        let user = UserId::parse("readiness").map_err(protocol)?;
        let key = IdempotencyKey::parse("readiness").map_err(protocol)?;
        let lines = OrderLines::parse(vec![("probe".to_owned(), 1)]).map_err(protocol)?;
        let reply = self.reserve(&campaign, &OrderId::generate(&campaign), &user, &key, &lines).await?;
        match reply.outcome {
            ReserveOutcome::CampaignNotFound => Ok(()),
            other => Err(EngineError::Protocol(format!("probe: {other:?}"))),
        }
    }

    /// Each order's owner and skus (`None` where Redis has no such order): the keys a
    /// release or confirmation must name. One pipelined round trip.
    async fn owners_and_skus(&self, orders: &[OrderId]) -> Result<Vec<Option<(UserId, Vec<SkuId>)>>> {
        let mut pipe = redis::pipe();
        for order in orders {
            pipe.cmd("HMGET").arg(self.keys.order(order)).arg("user").arg("items");
        }
        let rows: Vec<(Option<String>, Option<String>)> =
            self.link.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
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

/// Orders released by one script call at most: a burst of 10,000 deadlines is a few
/// dozen calls, each short enough (a few ms) not to stall the reservations behind it.
pub const RELEASE_BATCH_MAX: usize = 256;

fn restoring(campaign: &CampaignId) -> EngineError {
    EngineError::Unavailable(format!("campaign {campaign} is being restored from MySQL"))
}

fn parse_release_outcome(word: &str) -> Result<ReleaseOutcome> {
    let (tag, detail) = word.split_once(':').unwrap_or((word, ""));
    Ok(match tag {
        "released" => ReleaseOutcome::Released,
        "not_found" => ReleaseOutcome::NotFound,
        "not_pending" => ReleaseOutcome::NotPending(
            OrderStatus::parse(detail).ok_or_else(|| EngineError::Protocol(format!("release: {word}")))?,
        ),
        "not_due" => ReleaseOutcome::NotDue { expires_ms: detail.parse().map_err(protocol)? },
        _ => return Err(EngineError::Protocol(format!("release: {word}"))),
    })
}

fn threshold_arg(v: Option<u32>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}

fn protocol(e: impl std::fmt::Display) -> EngineError {
    EngineError::Protocol(e.to_string())
}

fn parse_items(json: &str) -> Result<Vec<OrderItem>> {
    serde_json::from_str(json).map_err(protocol)
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
    })
}

/// A script's array reply; element 0 is the outcome tag.
struct Reply(Vec<Value>);

impl Reply {
    fn new(v: Value) -> Result<Self> {
        match v {
            Value::Array(items) => Ok(Self(items)),
            other => Err(EngineError::Protocol(format!("expected an array, got {other:?}"))),
        }
    }

    fn tag(&self) -> Result<&str> {
        match self.0.first() {
            Some(Value::BulkString(b)) => std::str::from_utf8(b).map_err(protocol),
            Some(Value::SimpleString(s)) => Ok(s),
            other => Err(EngineError::Protocol(format!("no outcome tag: {other:?}"))),
        }
    }

    fn string(&self, i: usize) -> Result<String> {
        match self.0.get(i) {
            Some(Value::BulkString(b)) => String::from_utf8(b.clone()).map_err(protocol),
            Some(Value::SimpleString(s)) => Ok(s.clone()),
            Some(Value::Int(n)) => Ok(n.to_string()),
            other => Err(EngineError::Protocol(format!("element {i}: {other:?}"))),
        }
    }

    fn int(&self, i: usize) -> Result<i64> {
        match self.0.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            _ => self.string(i)?.parse().map_err(protocol),
        }
    }

    fn sku(&self, i: usize) -> Result<SkuId> {
        SkuId::parse(&self.string(i)?).map_err(protocol)
    }

    fn status(&self, i: usize) -> Result<OrderStatus> {
        OrderStatus::parse(&self.string(i)?).ok_or_else(|| EngineError::Protocol("unknown state".into()))
    }

    /// Element `i` as a flat `{sku, gen, sku, gen, ...}` array.
    fn sku_gens(&self, i: usize) -> Result<Vec<(SkuId, u64)>> {
        let Some(Value::Array(flat)) = self.0.get(i) else {
            return Ok(Vec::new());
        };
        let inner = Reply(flat.clone());
        (0..flat.len() / 2).map(|j| Ok((inner.sku(2 * j)?, inner.int(2 * j + 1)? as u64))).collect()
    }
}
