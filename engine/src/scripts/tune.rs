//! `lua/tune.lua`: a live campaign's end, per-user limit or thresholds.

use redis::Value;

use super::lua::{Script, ScriptInvocation};

use super::{threshold_arg, Reply};
use crate::campaign::{CampaignTuning, TuneOutcome};
use crate::domain::CampaignId;
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;

pub fn script() -> Script {
    Script::new(flashsale_lua::TUNE)
}

/// One shard's meta (`tag`; the campaign itself when unsharded).
/// KEYS: meta; ARGV: campaign, notice channel, then (field, value) pairs.
pub fn invocation<'s>(
    script: &'s Script,
    k: &KeySpace,
    (campaign, tag): (&CampaignId, &CampaignId),
    t: &CampaignTuning,
) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag));
    inv.arg(campaign.as_str()).arg(k.notice_channel());
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
    inv
}

pub fn decode(v: Value) -> Result<TuneOutcome> {
    match Reply::new(v)?.tag()? {
        "tuned" => Ok(TuneOutcome::Tuned),
        "not_found" => Ok(TuneOutcome::NotFound),
        "restoring" => Err(EngineError::Unavailable("campaign shard is being rebuilt".into())),
        "ends_before_start" => Ok(TuneOutcome::EndsBeforeStart),
        other => Err(EngineError::Protocol(format!("tune: {other}"))),
    }
}
