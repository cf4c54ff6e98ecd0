//! `lua/warmup.lua`: a new campaign's window and stock in one step.

use redis::{Script, ScriptInvocation, Value};

use super::Reply;
use crate::campaign::{CampaignLaunch, LaunchOutcome};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;

pub fn script() -> Script {
    Script::new(flashsale_lua::WARMUP)
}

/// KEYS: meta, then one stock hash per sku.
pub fn invocation<'s>(script: &'s Script, k: &KeySpace, spec: &CampaignLaunch) -> ScriptInvocation<'s> {
    let c = &spec.campaign;
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(c));
    super::push_meta_args(&mut inv, k, spec);
    for item in &spec.items {
        inv.key(k.stock(c, &item.sku));
        inv.arg(item.sku.as_str()).arg(item.stock).arg(item.price_cents);
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
