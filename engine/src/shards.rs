//! Shards: a campaign launched with `shards: N` keeps N copies of its keys under N
//! hash tags, each holding a slice of every sku's stock, so one hot sku is served by
//! N Redis Cluster slots (and so by up to N masters) instead of one.
//!
//! - Shard 0's tag is the campaign's own (`{c:<campaign>}`): an unsharded campaign is
//!   a campaign with one shard, and its keys are what they always were.
//! - The 16384 slots are cut into N equal runs; shard 0 sits in whichever run its
//!   slot falls in, and shard `s > 0` has the tag `<campaign>/<s>.<salt>`, where
//!   `salt` is the smallest number that puts the tag's slot in the `s`-th of the
//!   other runs. A cluster made by `redis-cli --cluster create` gives each of M
//!   masters one contiguous run of 16384/M slots, so with M = N every shard has a
//!   master of its own, and with other M the shards still spread over the slot
//!   space as evenly as N runs can.
//! - A user's home shard is a hash of the user id: every order of one user goes to
//!   one shard, so per-user limits and idempotency stay exact there.
//! - An order id names its shard in its last two hex digits.
//! - Units move between shards only through `lua/move.lua` (see there), so that
//!   `Σ available + reserved + sold + in transit = stock_total` at every instant.

use crate::domain::{CampaignId, IdempotencyKey, OrderId, OrderRef, UserId};
use crate::keys::hash_slot;
use crate::order_ids::OrderIds;

/// Most shards a campaign may have (the contract's `1..=64`).
pub const MAX_SHARDS: usize = 64;
/// A unit move taken longer ago than this was left by a process that stopped:
/// whoever meets it finishes it (a reservation that needs the units, the sync-worker's
/// sweep). A live move takes three script calls, well under this.
pub const MOVE_STALE_MS: i64 = 5_000;
const SLOTS: u32 = 16384;

/// Where each shard of one campaign lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    tags: Vec<CampaignId>,
}

impl ShardMap {
    /// The layout of `campaign` with `n` shards (clamped to `1..=MAX_SHARDS`).
    pub fn new(campaign: &CampaignId, n: usize) -> Self {
        let n = n.clamp(1, MAX_SHARDS);
        let runs = n as u32;
        let run_of = |tag: &CampaignId| u32::from(hash_slot(&format!("{{c:{tag}}}"))) * runs / SLOTS;
        let home_run = run_of(campaign);
        let mut tags = Vec::with_capacity(n);
        tags.push(campaign.clone());
        for (s, run) in (0..runs).filter(|r| *r != home_run).enumerate() {
            // Every run is at least 256 slots wide, so a salt is found within a few
            // thousand tries at worst (about N on average).
            let tag = (0u32..)
                .map(|salt| CampaignId::shard_tag(campaign, s + 1, salt))
                .find(|tag| run_of(tag) == run)
                .unwrap_or_else(|| CampaignId::shard_tag(campaign, s + 1, 0));
            tags.push(tag);
        }
        Self { tags }
    }

    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Shard `s`'s key identity (shard 0: the campaign id itself).
    pub fn tag(&self, s: usize) -> &CampaignId {
        &self.tags[s % self.tags.len()]
    }

    pub fn tags(&self) -> &[CampaignId] {
        &self.tags
    }

    /// The shard every order of `user` goes to.
    pub fn home(&self, user: &UserId) -> usize {
        if self.tags.len() == 1 {
            return 0;
        }
        (fnv1a(user.as_str().as_bytes()) % self.tags.len() as u64) as usize
    }

    /// The shard an order lives in.
    pub fn of_order(&self, order: &OrderId) -> usize {
        if self.tags.len() == 1 {
            0
        } else {
            order.shard_hint() % self.tags.len()
        }
    }

    /// The ref of `user`'s request with `key`, in the user's home shard (the first of
    /// its chain: see [`OrderIds`]).
    pub fn order_for(&self, ids: &OrderIds, user: &UserId, key: &IdempotencyKey) -> OrderRef {
        ids.derive(&self.tags[0], self.home(user), user, key)
    }

    /// Shard `s`'s part of `total` units: as even as can be, the first shards holding
    /// one more when it does not divide.
    pub fn share(&self, total: u64, s: usize) -> u64 {
        let n = self.tags.len() as u64;
        total / n + u64::from((s as u64) < total % n)
    }
}

/// One campaign shard as Redis holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    Live,
    /// No meta: the shard's data is gone (or the campaign's launch has not reached it).
    Missing,
    /// Being rebuilt (or left half-rebuilt by a rebuilder that stopped).
    Restoring,
    /// Its node did not answer: nothing is known (and nothing is rebuilt).
    Unknown,
}

impl ShardState {
    /// A shard's state from its meta's `starts` and `restoring` fields (`HMGET meta
    /// starts restoring`), as the scripts' `shard_state` reads them.
    pub fn of<T>(starts: Option<T>, restoring: Option<T>) -> Self {
        match (starts, restoring) {
            (None, _) => Self::Missing,
            (Some(_), Some(_)) => Self::Restoring,
            (Some(_), None) => Self::Live,
        }
    }
}

/// FNV-1a, 64 bits: a stable hash of a user id (the same in every process and release).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(s: &str) -> CampaignId {
        CampaignId::parse(s).unwrap()
    }

    /// Every shard's [`ShardMap::share`] of `total`.
    fn split(m: &ShardMap, total: u64) -> Vec<u64> {
        (0..m.len()).map(|s| m.share(total, s)).collect()
    }

    #[test]
    fn one_shard_is_the_campaign_itself() {
        let m = ShardMap::new(&cid("spring"), 1);
        assert_eq!(m.tags(), &[cid("spring")]);
        let order = OrderId::generate(&cid("spring"));
        assert_eq!(m.of_order(&order), 0);
        assert_eq!(split(&m, 10), vec![10]);
    }

    #[test]
    fn shards_take_one_run_of_the_slot_space_each() {
        for (n, name) in [(2usize, "hot-sale"), (3, "share"), (3, "hot-sale"), (5, "x"), (16, "y"), (64, "z")]
        {
            let c = cid(name);
            let m = ShardMap::new(&c, n);
            assert_eq!(m.len(), n);
            let mut runs: Vec<u32> = (0..n)
                .map(|s| u32::from(hash_slot(&format!("{{c:{}}}", m.tag(s)))) * n as u32 / SLOTS)
                .collect();
            runs.sort_unstable();
            assert_eq!(runs, (0..n as u32).collect::<Vec<_>>(), "n={n} {name}");
            for s in 0..n {
                assert_eq!(m.tag(s).campaign_of_tag(), c);
                assert_eq!(CampaignId::parse_tag(m.tag(s).as_str()).unwrap(), *m.tag(s));
            }
            assert_eq!(ShardMap::new(&c, n), m, "the layout is a pure function");
        }
    }

    #[test]
    fn orders_name_their_shard_and_users_have_one_home() {
        let c = cid("c");
        let m = ShardMap::new(&c, 3);
        let ids = OrderIds::new(b"secret").unwrap();
        let mut homes = [0; 3];
        for i in 0..300 {
            let user = UserId::parse(&format!("user-{i}")).unwrap();
            let home = m.home(&user);
            homes[home] += 1;
            let order = m.order_for(&ids, &user, &IdempotencyKey::parse("k").unwrap());
            let id = OrderId::parse(&format!("c.{:012x}{}", 1_796_563_387_443_i64, order.as_str())).unwrap();
            assert_eq!(id.campaign(), c);
            assert_eq!(m.of_order(&id), home);
        }
        assert!(homes.iter().all(|&h| h > 60), "{homes:?}");
    }

    #[test]
    fn a_split_keeps_every_unit() {
        let m = ShardMap::new(&cid("c"), 3);
        assert_eq!(split(&m, 10), vec![4, 3, 3]);
        assert_eq!(split(&m, 2), vec![1, 1, 0]);
        assert_eq!(split(&m, 0).iter().sum::<u64>(), 0);
    }

    #[test]
    fn tags_parse_only_in_their_own_shape() {
        assert!(CampaignId::parse_tag("c/1.0").is_ok());
        assert!(CampaignId::parse_tag("c").is_ok());
        for bad in ["c/1", "c/.1", "c/1.", "c/a.1", "bad id/1.0", "c/1.0/2.0"] {
            assert!(CampaignId::parse_tag(bad).is_err(), "{bad}");
        }
        assert!(CampaignId::parse("c/1.0").is_err());
    }
}
