//! `lua/restore.lua`: a campaign Redis lost, loaded back from MySQL's copy in steps;
//! it goes live in the last one.

use redis::{Script, ScriptInvocation, Value};

use super::Reply;
use crate::campaign::CampaignLaunch;
use crate::campaign::SnapshotOrder;
use crate::domain::{CampaignId, UserId};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;

pub fn script() -> Script {
    Script::new(flashsale_lua::RESTORE)
}

/// Step `orders` on one shard (`c`: its tag): KEYS meta, pending, buyers, then one
/// order hash per order.
pub fn orders<'s>(
    script: &'s Script,
    k: &KeySpace,
    (spec, c): (&CampaignLaunch, &CampaignId),
    orders: &[SnapshotOrder],
) -> Result<ScriptInvocation<'s>> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(c)).key(k.pending(c)).key(k.buyers(c)).arg("orders");
    for o in orders {
        let units: u64 = o.items.iter().map(|i| i.quantity).sum();
        let items = serde_json::to_string(&o.items).map_err(super::protocol)?;
        inv.key(k.order_at(c, &o.order_id));
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
    }
    Ok(inv)
}

/// Step `users`: KEYS meta, then one user count per user; ARGV the units each holds.
pub fn users<'s>(
    script: &'s Script,
    k: &KeySpace,
    tag: &CampaignId,
    users: &[(&UserId, u64)],
) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag)).arg("users");
    for (user, units) in users {
        inv.key(k.user(tag, user)).arg(*units);
    }
    inv
}

/// Step `finish` on one shard (`c`: its tag; `waiting`: a shard other than 0, which
/// goes live only with shard 0): KEYS meta, one stock hash per sku; `stock(sku)`
/// gives this shard's (total, available, reserved, sold).
pub fn finish<'s>(
    script: &'s Script,
    k: &KeySpace,
    (spec, c, waiting): (&CampaignLaunch, &CampaignId, bool),
    generation: u64,
    stock: impl Fn(&crate::domain::SkuId) -> (u64, u64, u64, u64),
) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(c));
    inv.arg("finish");
    super::push_meta_args(&mut inv, k, spec);
    inv.arg(generation).arg(spec.shards).arg(if waiting { "1" } else { "" });
    for item in &spec.items {
        let (total, avail, resv, sold) = stock(&item.sku);
        inv.key(k.stock(c, &item.sku));
        inv.arg(item.sku.as_str()).arg(total).arg(avail).arg(resv).arg(sold).arg(item.price_cents);
    }
    inv
}

/// Whether the step ran (`false`: the campaign exists in Redis again).
pub fn decode(v: Value) -> Result<bool> {
    match Reply::new(v)?.tag()? {
        "ok" => Ok(true),
        "exists" => Ok(false),
        other => Err(EngineError::Protocol(format!("restore: {other}"))),
    }
}
