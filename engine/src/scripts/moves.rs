//! `lua/move.lua`: units of one sku from one shard of a campaign to another (take on
//! the donor, give on the receiver, settle on the donor), never created or lost.

use redis::Value;

use super::lua::{Script, ScriptInvocation};

use super::Reply;
use crate::domain::{CampaignId, SkuId};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;

pub fn script() -> Script {
    Script::new(flashsale_lua::MOVE)
}

/// One move between two shards of a campaign.
#[derive(Debug, Clone)]
pub struct Move<'a> {
    pub id: &'a str,
    pub campaign: &'a CampaignId,
    pub sku: &'a SkuId,
    pub from: &'a CampaignId,
    pub to: &'a CampaignId,
    /// The receiver's shard number (kept in the donor's record, for whoever finishes it).
    pub to_shard: usize,
}

/// What a step said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Taken(u64),
    /// The donor had fewer units than the least worth moving.
    Short,
    Given,
    Settled,
    /// The campaign is being rebuilt from MySQL.
    Restoring,
}

/// Take on the donor: up to `want` units, none unless `min` are there.
pub fn take<'s>(script: &'s Script, k: &KeySpace, m: &Move<'_>, want: u64, min: u64) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(m.from)).key(k.stock(m.from, m.sku)).key(k.moves_out(m.from));
    inv.arg("take").arg(m.id).arg(m.to_shard).arg(m.sku.as_str()).arg(want).arg(min);
    inv
}

/// Give on the receiver (at most once per move id).
pub fn give<'s>(script: &'s Script, k: &KeySpace, m: &Move<'_>, units: u64) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.meta(m.to)).key(k.stock(m.to, m.sku)).key(k.moves_in(m.to));
    inv.arg("give")
        .arg(m.id)
        .arg(units)
        .arg(m.campaign.as_str())
        .arg(m.sku.as_str())
        .arg(k.shard_notice_channel(m.to));
    inv
}

/// Whether the receiver has applied this move (read only).
pub fn received<'s>(script: &'s Script, k: &KeySpace, to: &CampaignId, id: &str) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.moves_in(to)).arg("received").arg(id);
    inv
}

/// Settle on the donor, once the receiver has the units.
pub fn settle<'s>(script: &'s Script, k: &KeySpace, m: &Move<'_>) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.moves_out(m.from));
    inv.arg("settle").arg(m.id);
    inv
}

pub fn decode(v: Value) -> Result<Step> {
    let r = Reply::new(v)?;
    Ok(match r.tag()? {
        "taken" => Step::Taken(r.int(1)? as u64),
        "short" => Step::Short,
        "given" | "already" => Step::Given,
        "settled" | "gone" => Step::Settled,
        "restoring" => Step::Restoring,
        other => return Err(EngineError::Protocol(format!("move: {other}"))),
    })
}

/// A donor's record of a move not yet settled: `"<to shard> <sku> <units> <taken ms>"`.
pub fn parse_record(record: &str) -> Option<(usize, SkuId, u64, i64)> {
    let mut parts = record.split(' ');
    let to = parts.next()?.parse().ok()?;
    let sku = SkuId::parse(parts.next()?).ok()?;
    let units = parts.next()?.parse().ok()?;
    let at = parts.next()?.parse().ok()?;
    Some((to, sku, units, at))
}
