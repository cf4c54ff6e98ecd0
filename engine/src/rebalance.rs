//! Units moving between the shards of a campaign (`lua/move.lua`): a shard that ran
//! dry takes units from the shard that has the most, before anyone is told
//! `sold_out`; the sync-worker finishes any move a process left half done.

use std::collections::HashMap;

use deadpool_redis::redis;

use crate::domain::{CampaignId, SkuId};
use crate::error::{EngineError, Result};
use crate::scripts::moves::{self, Move, Step};
use crate::shards::ShardState;
use crate::shards::{ShardMap, MOVE_STALE_MS};
use crate::store::StockStore;

/// One sku in every shard: available units and stock generation per shard, how many
/// buyers the campaign has (all shards), and units of the sku taken from a shard and
/// not yet settled (in transit, or given and about to be settled).
#[derive(Debug, Clone, Default)]
pub(crate) struct Levels {
    pub(crate) available: Vec<u64>,
    pub(crate) generations: Vec<u64>,
    pub(crate) buyers: u64,
    pub(crate) moving: u64,
    /// Some of `moving` was taken more than [`MOVE_STALE_MS`] ago.
    pub(crate) stale_moves: bool,
    /// Some shard is lost or being rebuilt: its units are unknown, so nobody may be
    /// told `sold_out` on the strength of this reading.
    pub(crate) incomplete: bool,
}

impl StockStore {
    /// Reads `sku` in every shard, the shards side by side (one round trip each).
    pub(crate) async fn sku_levels(&self, map: &ShardMap, sku: &SkuId) -> Result<Levels> {
        let parts = self.parts();
        let reads = map.tags().iter().map(|tag| {
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET").arg(parts.keys.stock(tag, sku)).arg("avail").arg("gen");
            pipe.cmd("SCARD").arg(parts.keys.buyers(tag));
            pipe.cmd("HLEN").arg(parts.keys.users(tag));
            pipe.cmd("HVALS").arg(parts.keys.moves_out(tag));
            pipe.cmd("HMGET").arg(parts.keys.meta(tag)).arg("starts").arg("restoring");
            // The shard's own clock: the one its move records were taken by.
            pipe.cmd("TIME");
            parts.link.call(|mut c| async move {
                pipe.query_async::<(
                    (Option<u64>, Option<u64>),
                    u64,
                    u64,
                    Vec<String>,
                    (Option<String>, Option<String>),
                    (i64, i64),
                )>(&mut c)
                    .await
            })
        });
        let rows = futures_util::future::try_join_all(reads).await?;
        let mut levels = Levels::default();
        for ((avail, gen), in_set, in_hash, records, (starts, restoring), time) in rows {
            let stale_before = redis_ms(time) - MOVE_STALE_MS;
            levels.incomplete |= ShardState::of(starts, restoring) != ShardState::Live;
            levels.available.push(avail.unwrap_or(0));
            levels.generations.push(gen.unwrap_or(0));
            levels.buyers += in_set + in_hash;
            let mine = records.iter().filter_map(|r| moves::parse_record(r)).filter(|(_, s, _, _)| s == sku);
            for (_, _, units, at) in mine {
                levels.moving += units;
                levels.stale_moves |= at < stale_before;
            }
        }
        Ok(levels)
    }

    /// Moves up to `want` units of `sku` (none unless `min` are there) from shard
    /// `from` to shard `to`; returns how many moved. An error after the take leaves
    /// the donor's record, which [`StockStore::finish_moves`] completes.
    pub(crate) async fn move_units(
        &self,
        campaign: &CampaignId,
        map: &ShardMap,
        sku: &SkuId,
        (from, to): (usize, usize),
        (want, min): (u64, u64),
    ) -> Result<u64> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let m = Move { id: &id, campaign, sku, from: map.tag(from), to: map.tag(to), to_shard: to };
        let parts = self.parts();
        let script = &parts.scripts.moves;
        let taken = self.move_step(moves::take(script, parts.keys, &m, want, min), m.from).await?;
        let Step::Taken(units) = taken else {
            return Ok(0);
        };
        self.deliver(&m, units).await?;
        Ok(units)
    }

    /// Gives a taken move to its receiver, then settles it on the donor.
    async fn deliver(&self, m: &Move<'_>, units: u64) -> Result<()> {
        let parts = self.parts();
        let script = &parts.scripts.moves;
        match self.move_step(moves::give(script, parts.keys, m, units), m.to).await? {
            Step::Given => {}
            Step::Restoring => return Err(EngineError::Unavailable("campaign is being restored".into())),
            other => return Err(EngineError::Protocol(format!("move give: {other:?}"))),
        }
        self.move_step(moves::settle(script, parts.keys, m), m.from).await?;
        Ok(())
    }

    async fn move_step(
        &self,
        inv: crate::scripts::lua::ScriptInvocation<'_>,
        tag: &CampaignId,
    ) -> Result<Step> {
        moves::decode(self.run(inv, tag).await?)
    }

    /// Completes every move of `campaign` taken more than `older_than_ms` ago and not
    /// settled (its process stopped between steps); returns how many it completed.
    pub(crate) async fn finish_moves(
        &self,
        campaign: &CampaignId,
        map: &ShardMap,
        older_than_ms: i64,
    ) -> Result<usize> {
        if map.len() < 2 {
            return Ok(0);
        }
        let parts = self.parts();
        let reads = map
            .tags()
            .iter()
            .map(|t| {
                // Each shard's records with its own clock (the one they were taken by).
                let mut pipe = redis::pipe();
                pipe.cmd("HGETALL").arg(parts.keys.moves_out(t)).cmd("TIME");
                parts.link.call(|mut c| async move {
                    pipe.query_async::<(HashMap<String, String>, (i64, i64))>(&mut c).await
                })
            })
            .collect::<Vec<_>>();
        let records = futures_util::future::try_join_all(reads).await?;
        let mut finished = 0;
        for (from, (shard_records, time)) in records.iter().enumerate() {
            let cutoff = redis_ms(*time) - older_than_ms;
            for (id, record) in shard_records {
                let Some((to, sku, units, at)) = moves::parse_record(record) else {
                    tracing::error!(%campaign, %id, %record, "unreadable move record left as it is");
                    continue;
                };
                if at > cutoff || to >= map.len() {
                    continue;
                }
                let m = Move { id, campaign, sku: &sku, from: map.tag(from), to: map.tag(to), to_shard: to };
                self.deliver(&m, units).await?;
                finished += 1;
            }
        }
        Ok(finished)
    }
}

/// Redis's `TIME` reply (seconds, microseconds) in milliseconds.
fn redis_ms((secs, micros): (i64, i64)) -> i64 {
    secs * 1000 + micros / 1000
}
