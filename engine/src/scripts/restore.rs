//! `lua/restore.lua`: lost campaign shards rebuilt from MySQL and the surviving shards,
//! under a lease; each lost shard goes live whole in its last step.

use redis::Value;

use super::lua::{Script, ScriptInvocation};

use super::Reply;
use crate::campaign::CampaignLaunch;
use crate::domain::{CampaignId, SkuId, UserId};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;

pub fn script() -> Script {
    Script::new(flashsale_lua::RESTORE)
}

/// Who rebuilds, and for how long each step keeps the shard theirs.
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub token: &'a str,
    pub ms: u64,
}

/// One order as the `orders` step writes it back into its shard.
#[derive(Debug, Clone)]
pub struct RestoredOrder<'a> {
    pub order: &'a crate::campaign::SnapshotOrder,
    /// `(record, ttl secs)` of its idempotency record, while it would still exist.
    pub idempotency: Option<(String, u64)>,
    /// `(event id, ttl secs)` of the payment event that settled it.
    pub payment_event: Option<(crate::domain::EventId, u64)>,
}

/// What a step on a lost shard said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `begin`: the shard is ours to rebuild (its meta says `restoring`).
    Begun,
    /// `begin`: the shard holds its data; nothing to rebuild.
    Live,
    /// `begin`: another rebuilder holds the shard's lease.
    Busy,
    Ok,
    /// The lease is not ours (taken over, or the shard went live): nothing was written.
    Lost,
}

/// Step `hold` on a live shard found behind MySQL: `restoring` under this lease, its
/// data kept; [`Step::Ok`], [`Step::Busy`] or [`Step::Lost`] (no meta).
pub fn hold<'s>(
    script: &'s Script,
    k: &KeySpace,
    tag: &CampaignId,
    lease: Lease<'_>,
) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag)).arg("hold").arg(lease.token).arg(lease.ms);
    inv
}

/// Step `unhold`: a hold of this token dropped, the shard live again as it was.
pub fn unhold<'s>(script: &'s Script, k: &KeySpace, tag: &CampaignId, token: &str) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag)).arg("unhold").arg(token);
    inv
}

/// Step `begin` on one shard (`tag`): the meta as MySQL has it, marked `restoring`; the
/// shard's records of moves in and out dropped. A lost shard comes back with the users
/// hash when `users_hash` (`engine.users_hash`); one whose meta is there keeps its layout.
pub fn begin<'s>(
    script: &'s Script,
    k: &KeySpace,
    (spec, tag): (&CampaignLaunch, &CampaignId),
    lease: Lease<'_>,
    users_hash: bool,
) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag)).key(k.moves_out(tag)).key(k.moves_in(tag)).key(k.users(tag));
    inv.arg("begin").arg(lease.token).arg(lease.ms);
    super::push_meta_args(&mut inv, k, spec);
    let skus: Vec<&str> = spec.items.iter().map(|i| i.sku.as_str()).collect();
    inv.arg(spec.shards).arg(skus.join(",")).arg(u8::from(users_hash));
    inv
}

/// Step `orders` on one shard: KEYS meta, pending, buyers, then per order its hash, its
/// idempotency record and its payment marker (the last two when it has them).
pub fn orders<'s>(
    script: &'s Script,
    k: &KeySpace,
    (spec, tag): (&CampaignLaunch, &CampaignId),
    lease: Lease<'_>,
    orders: &[RestoredOrder<'_>],
) -> Result<ScriptInvocation<'s>> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag)).key(k.pending(tag)).key(k.buyers(tag));
    inv.arg("orders").arg(lease.token).arg(lease.ms);
    for r in orders {
        let o = r.order;
        let units: u64 = o.items.iter().map(|i| i.quantity).sum();
        let items = serde_json::to_string(&o.items).map_err(super::protocol)?;
        inv.key(k.order_at(tag, &o.order_id));
        inv.arg(o.order_id.as_str())
            .arg(o.user.as_str())
            .arg(o.status.as_str())
            .arg(items)
            .arg(units)
            .arg(o.total_cents)
            .arg(o.created_ms)
            .arg(o.expires_ms)
            .arg(o.paid_ms.map(|p| p.to_string()).unwrap_or_default())
            .arg(spec.payment_window_secs);
        match (&r.idempotency, &o.idempotency_key) {
            (Some((record, ttl)), Some(key)) => {
                inv.key(k.idempotency(tag, &o.user, key)).arg(record.as_str()).arg(*ttl);
            }
            _ => {
                inv.arg("").arg(0);
            }
        }
        match &r.payment_event {
            Some((event, ttl)) => {
                inv.key(k.payment_event(tag, event)).arg(*ttl);
            }
            None => {
                inv.arg("");
            }
        }
    }
    Ok(inv)
}

/// Step `users`: KEYS meta, users, then one user count per user; ARGV (user, units) per
/// user (the script writes the hash or the strings, as the shard's layout is).
pub fn users<'s>(
    script: &'s Script,
    k: &KeySpace,
    tag: &CampaignId,
    lease: Lease<'_>,
    users: &[(&UserId, u64)],
) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag)).key(k.users(tag)).arg("users").arg(lease.token).arg(lease.ms);
    for (user, units) in users {
        inv.key(k.user(tag, user)).arg(user.as_str()).arg(*units);
    }
    inv
}

/// One sku of a rebuilt shard: its launch slice (`total`), its counters, and the units
/// moved in and out that make `avail + resv + sold = total + moved_in - moved_out`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStock {
    pub total: u64,
    pub avail: u64,
    pub resv: u64,
    pub sold: u64,
    pub moved_in: u64,
    pub moved_out: u64,
}

/// Step `finish` on one shard: KEYS meta, one stock hash per sku.
pub fn finish<'s>(
    script: &'s Script,
    k: &KeySpace,
    (spec, tag): (&CampaignLaunch, &CampaignId),
    lease: Lease<'_>,
    generation: u64,
    stock: impl Fn(&SkuId) -> ShardStock,
) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag));
    inv.arg("finish").arg(lease.token).arg(lease.ms);
    inv.arg(spec.campaign.as_str()).arg(k.notice_channel()).arg(generation);
    for item in &spec.items {
        let s = stock(&item.sku);
        inv.key(k.stock(tag, &item.sku));
        inv.arg(item.sku.as_str())
            .arg(s.total)
            .arg(s.avail)
            .arg(s.resv)
            .arg(s.sold)
            .arg(item.price_cents)
            .arg(s.moved_in)
            .arg(s.moved_out);
    }
    inv
}

pub fn decode(v: Value) -> Result<Step> {
    Ok(match Reply::new(v)?.tag()? {
        "begun" => Step::Begun,
        "live" => Step::Live,
        "busy" => Step::Busy,
        "ok" => Step::Ok,
        "lost" => Step::Lost,
        other => return Err(EngineError::Protocol(format!("restore: {other}"))),
    })
}

/// Step `pause` on a surviving shard: no unit moves in or out of it for `ms`.
pub fn pause<'s>(script: &'s Script, k: &KeySpace, tag: &CampaignId, ms: u64) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag)).arg("pause").arg(ms);
    inv
}

/// Step `resume` on a surviving shard: units may move again.
pub fn resume<'s>(script: &'s Script, k: &KeySpace, tag: &CampaignId) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag)).arg("resume");
    inv
}

/// Step `census` on a surviving shard: per sku (in `skus` order) its units
/// (available + reserved + sold), and its unsettled moves out.
pub fn census<'s>(
    script: &'s Script,
    k: &KeySpace,
    tag: &CampaignId,
    skus: &[SkuId],
) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag)).key(k.moves_out(tag));
    for sku in skus {
        inv.key(k.stock(tag, sku));
    }
    inv.arg("census");
    inv
}

/// A surviving shard's units per sku, and its unsettled moves out (move id, record).
#[derive(Debug, Clone, Default)]
pub struct Census {
    pub units: Vec<u64>,
    pub moves_out: Vec<(String, String)>,
}

/// A surviving shard's census, or `None` if it is not live after all.
pub fn decode_census(v: Value) -> Result<Option<Census>> {
    let r = Reply::new(v)?;
    match r.tag()? {
        "ok" => {}
        "gone" => return Ok(None),
        other => return Err(EngineError::Protocol(format!("restore census: {other}"))),
    }
    let mut parts = r.0.into_iter().skip(1);
    let sums = match parts.next() {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| redis::from_redis_value::<u64>(v).map_err(super::protocol))
            .collect::<Result<Vec<_>>>()?,
        other => return Err(EngineError::Protocol(format!("restore census sums: {other:?}"))),
    };
    let moves: Vec<String> = match parts.next() {
        Some(v) => redis::from_redis_value(v).map_err(super::protocol)?,
        None => Vec::new(),
    };
    let moves_out = moves.chunks(2).filter_map(|p| Some((p.first()?.clone(), p.get(1)?.clone()))).collect();
    Ok(Some(Census { units: sums, moves_out }))
}

/// Whether `pause` reached a live shard.
pub fn decode_pause(v: Value) -> Result<bool> {
    match Reply::new(v)?.tag()? {
        "ok" => Ok(true),
        "gone" => Ok(false),
        other => Err(EngineError::Protocol(format!("restore pause: {other}"))),
    }
}
