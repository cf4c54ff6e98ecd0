//! `lua/warmup.lua`: a new campaign's window and stock in one step.

use redis::Value;

use super::lua::{Script, ScriptInvocation};

use super::Reply;
use crate::campaign::{CampaignLaunch, LaunchOutcome};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;

pub fn script() -> Script {
    Script::new(flashsale_lua::WARMUP)
}

/// An unsharded campaign (its one shard holds all the stock), with the users hash.
pub fn invocation<'s>(script: &'s Script, k: &KeySpace, spec: &CampaignLaunch) -> ScriptInvocation<'s> {
    shard_invocation(script, k, (spec, &spec.campaign), true, |item| item.stock)
}

/// One shard of a campaign: its meta (with the campaign's shard count) and its slice
/// of each sku's stock (`slice`); its users' units in one hash when `users_hash`
/// (`engine.users_hash`). KEYS: meta, then one stock hash per sku.
pub fn shard_invocation<'s>(
    script: &'s Script,
    k: &KeySpace,
    (spec, tag): (&CampaignLaunch, &crate::domain::CampaignId),
    users_hash: bool,
    slice: impl Fn(&crate::campaign::LaunchItem) -> u64,
) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(tag));
    super::push_meta_args(&mut inv, k, spec);
    inv.arg(spec.shards).arg(u8::from(users_hash));
    for item in &spec.items {
        inv.key(k.stock(tag, &item.sku));
        inv.arg(item.sku.as_str()).arg(slice(item)).arg(item.price_cents);
    }
    inv
}

pub fn decode(v: Value) -> Result<LaunchOutcome> {
    match Reply::new(v)?.tag()? {
        "created" => Ok(LaunchOutcome::Created),
        "exists" => Ok(LaunchOutcome::AlreadyExists),
        other => Err(EngineError::Protocol(format!("warmup: {other}"))),
    }
}
