//! Lost campaign shards, found and rebuilt.
//!
//! A shard's meta hash lives in the shard's own slot, so it is the shard's own marker:
//! a shard whose meta is missing lost its data (its master restarted empty, or the
//! whole Redis did), one whose meta says `restoring` is being rebuilt. The sync-worker
//! reads every live shard's state each second ([`StockStore::shard_states`], one
//! pipelined command per shard) and rebuilds the lost ones of a campaign together
//! ([`StockStore::rebuild`]) while the campaign's other shards sell on:
//!
//! 1. `begin` on each lost shard: its meta comes back with `restoring` and a lease, so
//!    every path (reserve, release, confirm, move, counters, tune) answers 503 there
//!    until the shard is whole. A shard that turns out live is left alone; one whose
//!    lease another rebuilder holds is left to it.
//! 2. The surviving shards stop moving units for a moment (`pause`, a few seconds at
//!    most, lapsing by itself), so that reading them one after another (`census`) sees
//!    every unit exactly once: each shard's available + reserved + sold, and the moves
//!    taken from it and not yet settled. Reservations, releases and payments go on.
//! 3. What the lost shards held follows from conservation: per sku,
//!    `stock_total = Σ survivors + units in transit + Σ lost shards`. Their reserved and
//!    sold units are their orders in MySQL; what is left is available, split over the
//!    lost shards as at launch. Orders answered but never relayed are gone with the
//!    shard; their units are available again.
//! 4. `orders` (with their idempotency records and payment markers, so retries and
//!    repeated payment events are answered as before), `users`, then `finish`, which
//!    writes the stock and drops the flag in one step. The survivors `resume`.

use std::collections::{BTreeMap, HashMap};

use common::message::OrderStatus;
use deadpool_redis::redis;

use crate::campaign::{CampaignSnapshot, RestoredStock, SnapshotOrder};
use crate::domain::{CampaignId, OrderLines, SkuId, UserId};
use crate::error::{EngineError, Result};
use crate::scripts::restore::{self as script, Lease, RestoredOrder, ShardStock, Step};
use crate::scripts::{self, moves};
use crate::shards::ShardMap;
use crate::store::StockStore;

/// How long one rebuild step keeps a lost shard its rebuilder's: a rebuilder that
/// stops is taken over this long after its last step (each step renews it).
pub const REBUILD_LEASE_MS: u64 = 3_000;
/// How long the surviving shards hold their units still for the census. The rebuild
/// resumes them as soon as it is done; this only bounds a rebuilder that stopped.
const PAUSE_MS: u64 = 3_000;
/// Orders written back per `orders` step at most.
const ORDERS_PER_CALL: usize = 200;
/// User counts written back per `users` step at most.
const USERS_PER_CALL: usize = 500;

pub use crate::shards::ShardState;

/// What [`StockStore::rebuild`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebuilt {
    /// These shards were rebuilt; per sku, what they hold now (available, reserved, sold).
    Shards { shards: Vec<usize>, stock: RestoredStock },
    /// Every shard named turned out live.
    Nothing,
    /// Another rebuilder holds a lost shard's lease.
    Busy,
}

impl StockStore {
    /// Every shard's state, per campaign (`shards`: each campaign's shard count, as
    /// MySQL has it). One pipelined command per shard; a shard whose node does not
    /// answer is [`ShardState::Unknown`], the others are read all the same.
    pub(crate) async fn shard_states(&self, campaigns: &[(CampaignId, u16)]) -> Result<Vec<Vec<ShardState>>> {
        let k = self.parts().keys;
        let maps: Vec<ShardMap> = campaigns.iter().map(|(c, n)| ShardMap::new(c, usize::from(*n))).collect();
        let reads = maps
            .iter()
            .flat_map(|m| m.tags().iter())
            .map(|t| redis::cmd("HMGET").arg(k.meta(t)).arg("starts").arg("restoring").clone())
            .collect();
        let rows = self.parts().link.each_settled::<(Option<String>, Option<String>)>(reads).await;
        if let Some(Err(e)) = rows.first().filter(|_| rows.iter().all(Result::is_err)) {
            return Err(e.clone());
        }
        let mut rows = rows.into_iter();
        Ok(maps
            .iter()
            .map(|m| {
                rows.by_ref()
                    .take(m.len())
                    .map(|row| {
                        row.map_or(ShardState::Unknown, |(starts, restoring)| {
                            ShardState::of(starts, restoring)
                        })
                    })
                    .collect()
            })
            .collect())
    }

    /// Lists campaigns in the index the relay and the sweeps walk (the index lives in
    /// one slot: its node may have lost it). Returns how many were missing.
    pub(crate) async fn relist(&self, campaigns: &[CampaignId]) -> Result<u64> {
        if campaigns.is_empty() {
            return Ok(0);
        }
        let index = self.parts().keys.campaigns();
        let ids: Vec<String> = campaigns.iter().map(|c| c.as_str().to_owned()).collect();
        let added: u64 = self
            .parts()
            .link
            .call(|mut c| {
                let index = index.clone();
                async move { redis::cmd("SADD").arg(index).arg(ids).query_async(&mut c).await }
            })
            .await?;
        if added > 0 {
            // The caller's list came from MySQL a moment ago: a campaign retired since
            // (its meta marked, then taken off the index) must not stay listed. Its mark
            // is read after the SADD, and a retirement marks before it takes the campaign
            // off, so one of the two removals comes last.
            let marks = campaigns
                .iter()
                .map(|c| redis::cmd("HEXISTS").arg(self.parts().keys.meta(c)).arg("retired").clone())
                .collect();
            let marks: Vec<bool> = self.parts().link.each(marks).await?;
            let retired: Vec<&str> =
                campaigns.iter().zip(marks).filter(|(_, r)| *r).map(|(c, _)| c.as_str()).collect();
            if !retired.is_empty() {
                let mut unlist = redis::cmd("SREM");
                unlist.arg(&index).arg(retired);
                let _: Vec<redis::Value> = self.parts().link.each(vec![unlist]).await?;
            }
        }
        Ok(added)
    }

    /// Rebuilds the `lost` shards of the campaign in `snap` (MySQL's copy: the campaign
    /// with its current tuning and every order) from MySQL and the other shards; see
    /// the module docs. `token` names this rebuilder (the same one may resume its own
    /// lease at once); `generation` outranks every stock generation a gateway has seen.
    pub(crate) async fn rebuild(
        &self,
        snap: &CampaignSnapshot,
        lost: &[usize],
        token: &str,
        generation: u64,
    ) -> Result<Rebuilt> {
        let spec = &snap.launch;
        let map = ShardMap::new(&spec.campaign, usize::from(spec.shards));
        let lease = Lease { token, ms: REBUILD_LEASE_MS };
        let (k, s) = (self.parts().keys, &self.parts().scripts.restore);
        let mut begun = Vec::new();
        for &shard in lost.iter().filter(|s| **s < map.len()) {
            match script::decode(
                self.run(
                    script::begin(s, k, (spec, map.tag(shard)), lease, self.settings().users_hash),
                    map.tag(shard),
                )
                .await?,
            )? {
                Step::Begun => begun.push(shard),
                Step::Live => {}
                Step::Busy => return Ok(Rebuilt::Busy),
                other => return Err(EngineError::Protocol(format!("restore begin: {other:?}"))),
            }
        }
        if begun.is_empty() {
            return Ok(Rebuilt::Nothing);
        }
        let survivors: Vec<usize> = (0..map.len()).filter(|s| !begun.contains(s)).collect();
        let paused = self.pause_moves(&map, &survivors).await;
        let outcome = match paused {
            Ok(()) => self.rebuild_paused(snap, &map, (&begun, &survivors), lease, generation).await,
            Err(e) => Err(e),
        };
        // Always: a pause left behind would hold the survivors' units still until it lapses.
        let resumed = self.resume_moves(&map, &survivors).await;
        let stock = outcome?;
        resumed?;
        Ok(Rebuilt::Shards { shards: begun, stock })
    }

    async fn pause_moves(&self, map: &ShardMap, survivors: &[usize]) -> Result<()> {
        let (k, s) = (self.parts().keys, &self.parts().scripts.restore);
        for &shard in survivors {
            if !script::decode_pause(
                self.run(script::pause(s, k, map.tag(shard), PAUSE_MS), map.tag(shard)).await?,
            )? {
                return Err(EngineError::Unavailable(format!(
                    "shard {} lost its data during the rebuild of another",
                    map.tag(shard)
                )));
            }
        }
        Ok(())
    }

    async fn resume_moves(&self, map: &ShardMap, survivors: &[usize]) -> Result<()> {
        let (k, s) = (self.parts().keys, &self.parts().scripts.restore);
        for &shard in survivors {
            self.run(script::resume(s, k, map.tag(shard)), map.tag(shard)).await?;
        }
        Ok(())
    }

    /// Steps 3 and 4 of the module docs, with the survivors' moves paused.
    async fn rebuild_paused(
        &self,
        snap: &CampaignSnapshot,
        map: &ShardMap,
        (lost, survivors): (&[usize], &[usize]),
        lease: Lease<'_>,
        generation: u64,
    ) -> Result<RestoredStock> {
        let spec = &snap.launch;
        let skus: Vec<SkuId> = spec.items.iter().map(|i| i.sku.clone()).collect();
        let outside = self.units_outside(map, (lost, survivors), &skus).await?;
        let parts: Vec<Part<'_>> =
            lost.iter().map(|&shard| Part::of(snap, map, shard)).collect::<Result<_>>()?;
        let mut stocks: Vec<HashMap<SkuId, ShardStock>> = vec![HashMap::new(); parts.len()];
        let mut restored = RestoredStock::new();
        for item in &spec.items {
            let held: u64 = parts.iter().map(|p| p.held(&item.sku).0 + p.held(&item.sku).1).sum();
            let free = item.stock.checked_sub(outside.get(&item.sku).copied().unwrap_or(0) + held);
            let free = free.unwrap_or_else(|| {
                tracing::error!(campaign = %spec.campaign, sku = %item.sku, "the surviving shards and MySQL \
                    hold more units than the stock: the rebuilt shards get none available");
                0
            });
            for (i, p) in parts.iter().enumerate() {
                let (resv, sold) = p.held(&item.sku);
                let avail = share(free, i, parts.len());
                let total = map.share(item.stock, p.shard);
                let has = avail + resv + sold;
                let s = ShardStock {
                    total,
                    avail,
                    resv,
                    sold,
                    moved_in: has.saturating_sub(total),
                    moved_out: total.saturating_sub(has),
                };
                let e = restored.entry(item.sku.clone()).or_default();
                *e = (e.0 + avail, e.1 + resv, e.2 + sold);
                stocks[i].insert(item.sku.clone(), s);
            }
        }
        for (p, stock) in parts.iter().zip(&stocks) {
            self.write_part(spec, map, p, stock, lease, generation).await?;
        }
        Ok(restored)
    }

    /// Per sku, the units the surviving shards hold (available + reserved + sold) plus
    /// those in transit (taken from a survivor and not yet received: a move to a lost
    /// shard is always in transit, its receiver's record of it is gone).
    async fn units_outside(
        &self,
        map: &ShardMap,
        (lost, survivors): (&[usize], &[usize]),
        skus: &[SkuId],
    ) -> Result<HashMap<SkuId, u64>> {
        let (k, s) = (self.parts().keys, &self.parts().scripts.restore);
        let mut outside: HashMap<SkuId, u64> = HashMap::new();
        let mut pending_moves = Vec::new();
        for &shard in survivors {
            let census =
                script::decode_census(self.run_read(script::census(s, k, map.tag(shard), skus)).await?)?;
            let Some(script::Census { units: sums, moves_out }) = census else {
                return Err(EngineError::Unavailable(format!(
                    "shard {} lost its data during the rebuild of another",
                    map.tag(shard)
                )));
            };
            for (sku, units) in skus.iter().zip(sums) {
                *outside.entry(sku.clone()).or_default() += units;
            }
            for (id, record) in moves_out {
                let Some((to, sku, units, _)) = moves::parse_record(&record) else { continue };
                if to >= map.len() {
                    continue;
                }
                pending_moves.push((id, to, sku, units));
            }
        }
        // A move to a survivor is in transit until the receiver has recorded it.
        let moves_script = &self.parts().scripts.moves;
        for (id, to, sku, units) in pending_moves {
            let arrived = !lost.contains(&to)
                && redis::from_redis_value::<bool>(
                    self.run_read(moves::received(moves_script, k, map.tag(to), &id)).await?,
                )
                .map_err(scripts::protocol)?;
            if !arrived {
                *outside.entry(sku).or_default() += units;
            }
        }
        Ok(outside)
    }

    async fn write_part(
        &self,
        spec: &crate::campaign::CampaignLaunch,
        map: &ShardMap,
        p: &Part<'_>,
        stock: &HashMap<SkuId, ShardStock>,
        lease: Lease<'_>,
        generation: u64,
    ) -> Result<()> {
        let (k, s) = (self.parts().keys, &self.parts().scripts.restore);
        let tag = map.tag(p.shard);
        let now_secs = (crate::clock::now_ms() / 1000).max(0) as u64;
        let settings = self.settings();
        let orders: Vec<RestoredOrder<'_>> = p
            .orders
            .iter()
            .map(|o| RestoredOrder {
                order: o,
                idempotency: idempotency_record(o, settings.idempotency_ttl_secs, now_secs),
                payment_event: o.payment_event.as_ref().and_then(|e| {
                    let paid_secs = (o.paid_ms.unwrap_or(o.created_ms) / 1000).max(0) as u64;
                    remaining(settings.payment_event_ttl_secs, paid_secs, now_secs).map(|t| (e.clone(), t))
                }),
            })
            .collect();
        for chunk in orders.chunks(ORDERS_PER_CALL) {
            self.rebuild_step(script::orders(s, k, (spec, tag), lease, chunk)?, tag).await?;
        }
        let users: Vec<(&UserId, u64)> = p.users.iter().map(|(u, n)| (*u, *n)).collect();
        for chunk in users.chunks(USERS_PER_CALL) {
            self.rebuild_step(script::users(s, k, tag, lease, chunk), tag).await?;
        }
        let finish = script::finish(s, k, (spec, tag), lease, generation, |sku| {
            stock.get(sku).copied().unwrap_or_default()
        });
        self.rebuild_step(finish, tag).await
    }

    async fn rebuild_step(
        &self,
        inv: crate::scripts::lua::ScriptInvocation<'_>,
        tag: &CampaignId,
    ) -> Result<()> {
        match script::decode(self.run(inv, tag).await?)? {
            Step::Ok => Ok(()),
            Step::Lost => Err(EngineError::Unavailable("another rebuilder took the shard over".into())),
            other => Err(EngineError::Protocol(format!("restore step: {other:?}"))),
        }
    }
}

/// One lost shard's share of MySQL's copy: its orders and its users' counts.
struct Part<'a> {
    shard: usize,
    orders: Vec<&'a SnapshotOrder>,
    /// Per sku (reserved, sold) by this shard's orders.
    held: BTreeMap<SkuId, (u64, u64)>,
    users: BTreeMap<&'a UserId, u64>,
}

impl<'a> Part<'a> {
    fn of(snap: &'a CampaignSnapshot, map: &ShardMap, shard: usize) -> Result<Self> {
        let orders: Vec<&SnapshotOrder> =
            snap.orders.iter().filter(|o| map.of_order(&o.order_id) == shard).collect();
        let mut held: BTreeMap<SkuId, (u64, u64)> = BTreeMap::new();
        let mut users: BTreeMap<&UserId, u64> = BTreeMap::new();
        for o in &orders {
            let counted = matches!(o.status, OrderStatus::PendingPayment | OrderStatus::Paid);
            let user = users.entry(&o.user).or_default();
            if !counted {
                continue;
            }
            for item in &o.items {
                let sku = SkuId::parse(&item.sku_id).map_err(scripts::protocol)?;
                *user += item.quantity;
                let h = held.entry(sku).or_default();
                if o.status == OrderStatus::Paid {
                    h.1 += item.quantity;
                } else {
                    h.0 += item.quantity;
                }
            }
        }
        Ok(Self { shard, orders, held, users })
    }

    fn held(&self, sku: &SkuId) -> (u64, u64) {
        self.held.get(sku).copied().unwrap_or((0, 0))
    }
}

/// Lost shard `i` of `n`'s part of `free` units (the first ones one more).
fn share(free: u64, i: usize, n: usize) -> u64 {
    let n = n.max(1) as u64;
    free / n + u64::from((i as u64) < free % n)
}

/// Seconds left of a record written at `at_secs` that lives `ttl_secs`, if any.
fn remaining(ttl_secs: u64, at_secs: u64, now_secs: u64) -> Option<u64> {
    (at_secs + ttl_secs).checked_sub(now_secs).filter(|t| *t > 0)
}

/// The idempotency record `reserve.lua` wrote for this order
/// (`fp\norder\ntotal\ncreated\nexpires\nitems`) and its seconds left, if it would
/// still exist.
fn idempotency_record(o: &SnapshotOrder, ttl_secs: u64, now_secs: u64) -> Option<(String, u64)> {
    o.idempotency_key.as_ref()?;
    let ttl = remaining(ttl_secs, (o.created_ms / 1000).max(0) as u64, now_secs)?;
    let lines = OrderLines::parse(o.items.iter().map(|i| (i.sku_id.clone(), i.quantity)).collect()).ok()?;
    let items = serde_json::to_string(&o.items).ok()?;
    let record = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        lines.fingerprint(),
        o.order_id,
        o.total_cents,
        o.created_ms,
        o.expires_ms,
        items
    );
    Some((record, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_shards_split_the_free_units_without_losing_one() {
        for (free, n) in [(0, 1), (7, 1), (7, 3), (2, 3), (100, 4)] {
            let parts: Vec<u64> = (0..n).map(|i| share(free, i, n)).collect();
            assert_eq!(parts.iter().sum::<u64>(), free, "{free} over {n}");
            assert!(parts.iter().max().unwrap_or(&0) - parts.iter().min().unwrap_or(&0) <= 1);
        }
    }

    #[test]
    fn a_record_past_its_ttl_is_not_written_back() {
        assert_eq!(remaining(60, 1_000, 1_030), Some(30));
        assert_eq!(remaining(60, 1_000, 1_060), None);
        assert_eq!(remaining(60, 1_000, 2_000), None);
    }
}
