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
    // Every order's keys share the shard's prefix: each is written into one buffer.
    let prefix = k.prefix(c);
    let (mut key, mut fingerprint) = (String::with_capacity(prefix.len() + 32), String::with_capacity(32));
    for r in batch {
        inv.key(KeySpace::order_of_ref_after(&prefix, r.order, &mut key));
        inv.arg(r.order.as_str())
            .arg(r.user.as_str())
            .arg(r.lines.write_fingerprint(&mut fingerprint))
            .arg(r.key.as_str())
            .arg(r.trace.unwrap_or(""))
            .arg(r.lines.len());
        for line in r.lines.iter() {
            inv.key(KeySpace::stock_after(&prefix, &line.sku, &mut key));
            inv.arg(line.sku.as_str()).arg(line.quantity);
        }
    }
    inv
}

/// One result per request of the batch, in order: an order refused because the
/// outbox is full is `Backpressure` (503), one met by a shard being rebuilt is
/// `Unavailable` (503), the others' outcomes stand on their own. A new order's reply
/// carries only what its request and the call's last element (its `created_ms` and
/// `expires_ms`) do not say: most are the prices alone, a string.
pub fn decode(v: Value, batch: &[Request<'_>]) -> Result<Vec<Result<ReserveReply>>> {
    let mut items = replies(v, batch.len() + 1)?;
    let call = Reply::new(items.pop().unwrap_or(Value::Nil))?;
    let times = (call.int(0)?, call.int(1)?);
    Ok(items
        .into_iter()
        .zip(batch)
        .map(|(v, request)| match v {
            Value::BulkString(prices) => {
                let prices = std::str::from_utf8(&prices).map_err(protocol)?;
                let reservation = reservation(request, prices, request.order.as_str(), times)?;
                Ok(ReserveReply::plain(ReserveOutcome::Reserved(reservation)))
            }
            v => decode_one(v, Some(request)),
        })
        .collect())
}

/// The replies of `n` orders whose requests are not at hand, from a script before the
/// call's own last element: only whole replies can be read (`reserved`, as scripts
/// before the `granted` reply wrote a new order's; replays; refusals).
pub fn decode_whole(v: Value, n: usize) -> Result<Vec<Result<ReserveReply>>> {
    Ok(replies(v, n)?.into_iter().map(|v| decode_one(v, None)).collect())
}

/// The reply's `expected` elements.
fn replies(v: Value, expected: usize) -> Result<Vec<Value>> {
    let Value::Array(items) = v else {
        return Err(EngineError::Protocol(format!("reserve: expected an array, got {v:?}")));
    };
    if items.len() != expected {
        return Err(EngineError::Protocol(format!("reserve: {} elements, {expected} expected", items.len())));
    }
    Ok(items)
}

/// A `granted` reply, `{'granted', created_ms, expires_ms, prices, ref, {sku, gen, ...},
/// buyers}`: the order's lines are the request's, each at its price in `prices` (the
/// prices of its lines in order, comma-separated), and its id is made from `ref`, or
/// from the request's ref when `ref` is empty (a key whose earlier order is past its
/// window names the next ref of its chain).
fn granted(r: &Reply, request: Option<&Request<'_>>) -> Result<ReserveReply> {
    let Some(request) = request else {
        return Err(EngineError::Protocol("reserve: a granted reply without its request".into()));
    };
    let chain_ref = r.str(4)?;
    let order_ref = if chain_ref.is_empty() {
        request.order.as_str()
    } else if chain_ref.len() == 20 && chain_ref.bytes().all(|b| b.is_ascii_hexdigit()) {
        chain_ref
    } else {
        return Err(EngineError::Protocol(format!("reserve: ref {chain_ref:?}")));
    };
    Ok(ReserveReply {
        outcome: ReserveOutcome::Reserved(reservation(
            request,
            r.str(3)?,
            order_ref,
            (r.int(1)?, r.int(2)?),
        )?),
        sold_out: r.sku_gens(5)?,
        buyers: r.int(6)? as u64,
    })
}

/// A new order of `request`: its lines at `prices` (comma-separated, in order), its id
/// made from `order_ref` and `created_ms`.
fn reservation(
    request: &Request<'_>,
    prices: &str,
    order_ref: &str,
    (created_ms, expires_ms): (i64, i64),
) -> Result<Reservation> {
    let mut prices = prices.split(',');
    let mut items = Vec::with_capacity(request.lines.len());
    let mut total_cents = 0i64;
    for line in request.lines.iter() {
        let price_cents: i64 = prices
            .next()
            .ok_or_else(|| EngineError::Protocol("reserve: fewer prices than lines".into()))?
            .parse()
            .map_err(protocol)?;
        total_cents = i64::try_from(line.quantity)
            .ok()
            .and_then(|q| price_cents.checked_mul(q))
            .and_then(|line_total| total_cents.checked_add(line_total))
            .ok_or_else(|| EngineError::Protocol("reserve: a total past i64".into()))?;
        items.push(common::message::OrderItem {
            sku_id: line.sku.as_str().to_owned(),
            quantity: line.quantity,
            price_cents,
        });
    }
    if prices.next().is_some() {
        return Err(EngineError::Protocol("reserve: more prices than lines".into()));
    }
    Ok(Reservation {
        order_id: OrderId::of_ref(request.campaign, created_ms, order_ref),
        items,
        total_cents,
        created_ms,
        expires_ms,
    })
}

fn decode_one(v: Value, request: Option<&Request<'_>>) -> Result<ReserveReply> {
    let r = Reply::new(v)?;
    Ok(match r.tag()? {
        "granted" => return granted(&r, request),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn granted(prices: &str, chain_ref: &str) -> Value {
        Value::Array(vec![
            text("granted"),
            Value::Int(0x0193_a0b1_c2d3),
            Value::Int(0x0193_a0b1_c2d3 + 900_000),
            text(prices),
            text(chain_ref),
            Value::Array(vec![text("b"), Value::Int(4)]),
            Value::Int(7),
        ])
    }

    #[test]
    fn a_granted_reply_is_completed_by_its_request() {
        let (c, u, k) = (
            CampaignId::parse("c-1").unwrap(),
            UserId::parse("u").unwrap(),
            IdempotencyKey::parse("k").unwrap(),
        );
        let order = OrderRef::derived("8000000000000000aaaa".into());
        let l = OrderLines::parse(vec![("a".into(), 2), ("b".into(), 1)]).unwrap();
        let request = Request {
            campaign: &c,
            tag: &c,
            order: &order,
            user: &u,
            key: &k,
            lines: &l,
            trace: None,
            idempotency_ttl_secs: 60,
            outbox_max_len: 10,
            idempotency_records: false,
            compact_events: true,
        };
        // The call's own times: what a plain new order (its prices alone) is completed by.
        let call = Value::Array(vec![Value::Int(0x0193_a0b1_c2d4), Value::Int(0x0193_a0b1_c2d4 + 60_000)]);
        let decoded =
            |v: Value| decode(Value::Array(vec![v, call.clone()]), &[request]).unwrap().pop().unwrap();
        let reply = decoded(granted("150,-5", "")).unwrap();
        let ReserveOutcome::Reserved(r) = reply.outcome else { panic!("{:?}", reply.outcome) };
        assert_eq!(r.order_id.as_str(), "c-1.0193a0b1c2d38000000000000000aaaa");
        assert_eq!(
            (r.total_cents, r.created_ms, r.expires_ms),
            (295, 0x0193_a0b1_c2d3, 0x0193_a0b1_c2d3 + 900_000)
        );
        let items: Vec<(&str, u64, i64)> =
            r.items.iter().map(|i| (i.sku_id.as_str(), i.quantity, i.price_cents)).collect();
        assert_eq!(items, vec![("a", 2, 150), ("b", 1, -5)]);
        assert_eq!((reply.sold_out, reply.buyers), (vec![(SkuId::parse("b").unwrap(), 4)], 7));
        // The key's chain moved on: the id is made from the ref the script names.
        let ReserveOutcome::Reserved(moved) =
            decoded(granted("150,-5", "8123456789abcdef0123")).unwrap().outcome
        else {
            panic!()
        };
        assert_eq!(moved.order_id.as_str(), "c-1.0193a0b1c2d38123456789abcdef0123");
        for (prices, chain_ref) in [("150", ""), ("150,-5,1", ""), ("150,x", ""), ("150,-5", "not-a-ref")] {
            assert!(decoded(granted(prices, chain_ref)).is_err(), "{prices} {chain_ref}");
        }
        // The common new order: its prices alone, its times the call's, its ref the request's.
        let plain = decoded(text("150,-5")).unwrap();
        let ReserveOutcome::Reserved(p) = plain.outcome else { panic!("{:?}", plain.outcome) };
        assert_eq!(p.order_id.as_str(), "c-1.0193a0b1c2d48000000000000000aaaa");
        assert_eq!(
            (p.total_cents, p.created_ms, p.expires_ms, p.items.len()),
            (295, 0x0193_a0b1_c2d4, 0x0193_a0b1_c2d4 + 60_000, 2)
        );
        assert!(plain.sold_out.is_empty());
        for prices in ["150", "150,-5,1", "150,x", ""] {
            assert!(decoded(text(prices)).is_err(), "{prices}");
        }
        // Without the call's own last element, or with one that is not its times, the
        // reply is not this script's.
        assert!(decode(Value::Array(vec![text("150,-5")]), &[request]).is_err());
        assert!(decode(Value::Array(vec![text("150,-5"), text("x")]), &[request]).is_err());
        // Without its request a granted reply cannot be read.
        assert!(decode_whole(Value::Array(vec![granted("150,-5", "")]), 1).unwrap().pop().unwrap().is_err());
    }
}
