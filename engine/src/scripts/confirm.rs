//! `lua/confirm.lua`: a payment provider's verdict on one order.

use redis::Value;

use super::lua::{Script, ScriptInvocation};

use super::Reply;
use crate::domain::{ConfirmOutcome, EventId, OrderId, PaymentStatus, SkuId};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;

pub fn script() -> Script {
    Script::new(flashsale_lua::CONFIRM)
}

/// One payment callback, as the script takes it; `skus` are the order's.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub order_id: &'a OrderId,
    /// The order's shard (the campaign id itself when unsharded).
    pub tag: &'a crate::domain::CampaignId,
    pub skus: &'a [SkuId],
    pub event: &'a EventId,
    pub amount_cents: i64,
    pub status: PaymentStatus,
    pub event_ttl_secs: u64,
}

/// KEYS: order, outbox, pending, payment event marker, meta, then the order's stock
/// hashes; ARGV as `confirm.lua`'s header says.
pub fn invocation<'s>(script: &'s Script, k: &KeySpace, r: &Request<'_>) -> ScriptInvocation<'s> {
    let campaign = r.order_id.campaign();
    let tag = r.tag;
    let mut inv = script.prepare_invoke();
    inv.key(k.order_at(tag, r.order_id))
        .key(k.outbox(tag))
        .key(k.pending(tag))
        .key(k.payment_event(tag, r.event))
        .key(k.meta(tag));
    for sku in r.skus {
        inv.key(k.stock(tag, sku));
    }
    inv.arg(campaign.as_str())
        .arg(r.order_id.as_str())
        .arg(r.amount_cents.to_string())
        .arg(r.status.as_str())
        .arg(k.prefix(tag))
        .arg(r.event_ttl_secs)
        .arg(k.shard_notice_channel(tag))
        .arg(r.event.as_str());
    inv
}

/// `None` while the order's shard is lost or being rebuilt.
pub fn decode(v: Value) -> Result<Option<ConfirmOutcome>> {
    let r = Reply::new(v)?;
    Ok(Some(match r.tag()? {
        "paid" => ConfirmOutcome::Paid,
        "refund_required" => ConfirmOutcome::RefundRequired,
        "failed_noted" => ConfirmOutcome::FailedNoted(r.status(1)?),
        "duplicate" => ConfirmOutcome::Duplicate(r.status(1)?),
        "already" => ConfirmOutcome::AlreadySettled(r.status(1)?),
        "amount_mismatch" => ConfirmOutcome::AmountMismatch { total_cents: r.int(1)? },
        "event_conflict" => ConfirmOutcome::EventConflict,
        "not_found" => ConfirmOutcome::NotFound,
        "restoring" => return Ok(None),
        other => return Err(EngineError::Protocol(format!("confirm: {other}"))),
    }))
}
