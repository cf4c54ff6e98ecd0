//! `lua/counters.lua`: every sku's counters in one consistent snapshot.

use redis::Value;

use super::lua::{Script, ScriptInvocation};

use super::Reply;
use crate::campaign::SkuCounters;
use crate::domain::{CampaignId, SkuId};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;

pub fn script() -> Script {
    Script::new(flashsale_lua::COUNTERS)
}

/// KEYS: the shard's meta, then one stock hash per sku.
pub fn invocation<'s>(
    script: &'s Script,
    k: &KeySpace,
    campaign: &CampaignId,
    skus: &[SkuId],
) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(campaign));
    for sku in skus {
        inv.key(k.stock(campaign, sku));
    }
    inv
}

/// One [`SkuCounters`] per sku Redis holds, in `skus` order; `Unavailable` while the
/// shard is lost or being rebuilt.
pub fn decode(v: Value, skus: &[SkuId]) -> Result<Vec<SkuCounters>> {
    let r = Reply::new(v)?;
    match r.tag()? {
        "ok" => {}
        "restoring" => return Err(EngineError::Unavailable("campaign shard is being rebuilt".into())),
        other => return Err(EngineError::Protocol(format!("counters: {other}"))),
    }
    let Some(Value::Array(rows)) = r.0.into_iter().nth(1) else {
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
