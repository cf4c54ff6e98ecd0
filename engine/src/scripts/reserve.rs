//! `lua/reserve.lua`: every line of one order or none.

use redis::Value;

use super::lua::{Script, ScriptInvocation};

use super::{parse_items, protocol, Reply};
use crate::domain::{
    CampaignId, IdempotencyKey, OrderId, OrderLines, OrderRef, Reservation, ReserveOutcome, SkuId, UserId,
};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;

pub fn script() -> Script {
    Script::new(flashsale_lua::RESERVE)
}

/// One reservation request, as the script takes it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub campaign: &'a CampaignId,
    /// The shard whose keys decide it (the campaign id itself when unsharded).
    pub tag: &'a CampaignId,
    /// The ref its id will end with (derived from campaign, user and key).
    pub order: &'a OrderRef,
    pub user: &'a UserId,
    pub key: &'a IdempotencyKey,
    pub lines: &'a OrderLines,
    /// The W3C `traceparent` of a sampled request: its outbox event carries it.
    pub trace: Option<&'a str>,
    pub idempotency_ttl_secs: u64,
    pub outbox_max_len: u64,
    /// Also write each order's idempotency record (`engine.idempotency_records`).
    pub idempotency_records: bool,
    /// Write the outbox entry as compact rows (`engine.compact_events`).
    pub compact_events: bool,
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

impl ReserveReply {
    fn plain(outcome: ReserveOutcome) -> Self {
        Self { outcome, sold_out: Vec::new(), buyers: 0 }
    }
}

/// KEYS: meta, outbox, deadlines, buyers, order rate, users, then per order its hash
/// (the first id of its key's chain) and one stock hash per line (the keys of the
/// earlier layout, a count string per user and an idempotency record per order, the
/// script names itself for the shards that have them); ARGV as
/// `reserve.lua`'s header says. All requests must be for one campaign and share the
/// settings of the first; all are decided in the first's shard (`tag`).
pub fn invocation<'s>(script: &'s Script, k: &KeySpace, batch: &[Request<'_>]) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    let Some(first) = batch.first() else {
        return inv;
    };
    let c = first.tag;
    inv.key(k.meta(c))
        .key(k.outbox(c))
        .key(k.deadlines(c))
        .key(k.buyers(c))
        .key(k.order_rate(c))
        .key(k.users(c));
    inv.arg(first.campaign.as_str())
        .arg(first.idempotency_ttl_secs)
        .arg(first.outbox_max_len)
        .arg(k.shard_notice_channel(c))
        .arg(u8::from(first.idempotency_records))
        .arg(if first.compact_events { 3 } else { 2 });
    for r in batch {
        inv.key(k.order_of_ref(c, r.order));
        inv.arg(r.order.as_str())
            .arg(r.user.as_str())
            .arg(r.lines.fingerprint())
            .arg(r.key.as_str())
            .arg(r.trace.unwrap_or(""))
            .arg(r.lines.len());
        for line in r.lines.iter() {
            inv.key(k.stock(c, &line.sku));
            inv.arg(line.sku.as_str()).arg(line.quantity);
        }
    }
    inv
}

/// One result per request of the batch, in order: an order refused because the
/// outbox is full is `Backpressure` (503), one met by a shard being rebuilt is
/// `Unavailable` (503), the others' outcomes stand on their own.
pub fn decode(v: Value, expected: usize) -> Result<Vec<Result<ReserveReply>>> {
    let Value::Array(items) = v else {
        return Err(EngineError::Protocol(format!("reserve: expected an array, got {v:?}")));
    };
    if items.len() != expected {
        return Err(EngineError::Protocol(format!("reserve: {} replies for {expected} orders", items.len())));
    }
    Ok(items.into_iter().map(decode_one).collect())
}

fn decode_one(v: Value) -> Result<ReserveReply> {
    let r = Reply::new(v)?;
    Ok(match r.tag()? {
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
                ReserveReply::plain(ReserveOutcome::Replayed(reservation))
            }
        }
        "reused" => ReserveReply::plain(ReserveOutcome::KeyReused),
        "campaign_not_found" => ReserveReply::plain(ReserveOutcome::CampaignNotFound),
        "not_active" => ReserveReply::plain(ReserveOutcome::NotActive),
        "sku_not_found" => ReserveReply::plain(ReserveOutcome::SkuNotFound(r.sku(1)?)),
        "sold_out" => {
            let sku = r.sku(1)?;
            // Only a sku at zero is flagged: one with fewer units than asked for can
            // still serve smaller orders.
            let flag = if r.int(3)? == 0 { vec![(sku.clone(), r.int(2)? as u64)] } else { Vec::new() };
            ReserveReply { outcome: ReserveOutcome::SoldOut(sku), sold_out: flag, buyers: r.int(4)? as u64 }
        }
        "limit_exceeded" => ReserveReply::plain(ReserveOutcome::LimitExceeded {
            held: r.int(1)? as u64,
            limit: r.int(2)? as u64,
        }),
        "rate_limited" => {
            ReserveReply::plain(ReserveOutcome::RateLimited { retry_after_ms: r.int(1)? as u64 })
        }
        "backlog_full" => return Err(EngineError::Backpressure(r.int(1)? as u64)),
        "restoring" => return Err(EngineError::Unavailable("campaign shard is being rebuilt".into())),
        other => return Err(EngineError::Protocol(format!("reserve: {other}"))),
    })
}
