//! `lua/release.lua`: pending orders of one campaign become cancelled or expired,
//! many per call, each at most once.

use redis::Value;

use super::lua::{Script, ScriptInvocation};

use super::Reply;
use crate::domain::{CampaignId, OrderId, ReleaseOutcome, ReleaseReason, SkuId, UserId};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;
use common::message::OrderStatus;

/// Orders released by one script call at most: a burst of 10,000 deadlines is a few
/// dozen calls, each short enough (a few ms) not to stall the reservations behind it.
pub const BATCH_MAX: usize = 256;

pub fn script() -> Script {
    Script::new(flashsale_lua::RELEASE)
}

/// Each order's release outcome plus the skus brought back from zero, with their new
/// generation.
#[derive(Debug, Clone)]
pub struct ReleaseReply {
    pub outcomes: Vec<(OrderId, ReleaseOutcome)>,
    pub restocked: Vec<(SkuId, u64)>,
}

/// All orders in the shard `tag` of `campaign` (the campaign itself when unsharded).
/// KEYS: meta, outbox, pending, users, then per order its hash, its owner's count and one
/// stock hash per line; `owners[i]` is order i's owner and skus (`None`: Redis has
/// no such order, the script only takes it off the pending set).
pub fn invocation<'s>(
    script: &'s Script,
    k: &KeySpace,
    (campaign, tag): (&CampaignId, &CampaignId),
    reason: ReleaseReason,
    orders: &[OrderId],
    owners: &[Option<(UserId, Vec<SkuId>)>],
) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag)).key(k.outbox(tag)).key(k.pending(tag)).key(k.users(tag));
    inv.arg(campaign.as_str()).arg(reason.as_str()).arg(k.prefix(tag)).arg(k.shard_notice_channel(tag));
    for (order, owner) in orders.iter().zip(owners) {
        inv.key(k.order_at(tag, order));
        match owner {
            Some((user, skus)) => {
                inv.key(k.user(tag, user));
                for sku in skus {
                    inv.key(k.stock(tag, sku));
                }
                inv.arg(order.as_str()).arg(skus.len());
            }
            None => {
                inv.key(format!("{}user:", k.prefix(tag)));
                inv.arg(order.as_str()).arg(0);
            }
        }
    }
    inv
}

/// `None` while the campaign is being restored (it has no meta yet).
pub fn decode(v: Value, orders: &[OrderId]) -> Result<Option<ReleaseReply>> {
    let r = Reply::new(v)?;
    match r.tag()? {
        "done" => {}
        "restoring" => return Ok(None),
        other => return Err(EngineError::Protocol(format!("release: {other}"))),
    }
    let Some(Value::Array(outcomes)) = r.0.get(1) else {
        return Err(EngineError::Protocol("release: no outcome list".into()));
    };
    if outcomes.len() != orders.len() {
        return Err(EngineError::Protocol("release: one outcome per order expected".into()));
    }
    let words = Reply(outcomes.clone());
    let outcomes = orders
        .iter()
        .enumerate()
        .map(|(i, order)| Ok((order.clone(), outcome(&words.string(i)?)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(ReleaseReply { outcomes, restocked: r.sku_gens(2)? }))
}

fn outcome(word: &str) -> Result<ReleaseOutcome> {
    let (tag, detail) = word.split_once(':').unwrap_or((word, ""));
    Ok(match tag {
        "released" => ReleaseOutcome::Released,
        "not_found" => ReleaseOutcome::NotFound,
        "not_pending" => ReleaseOutcome::NotPending(
            OrderStatus::parse(detail).ok_or_else(|| EngineError::Protocol(format!("release: {word}")))?,
        ),
        "not_due" => ReleaseOutcome::NotDue { expires_ms: detail.parse().map_err(super::protocol)? },
        _ => return Err(EngineError::Protocol(format!("release: {word}"))),
    })
}
