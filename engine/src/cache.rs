//! The local sharded cache: what lets most requests end without Redis.
//!
//! Per campaign it holds the window, limits and thresholds (refreshed at least every
//! `campaign_refresh_ms`, at once on a `meta` notice) and per sku a sold-out flag.
//! A flag is trusted for at most `sold_out_ttl_ms`; a `restock` notice clears it at
//! once. Each flag carries the stock generation it was seen at (`gen`, bumped by every
//! release that brings a sku back from zero), so a sold-out answer that was already in
//! flight when the restock happened cannot set the flag again: no undersell.
//!
//! A local "sold out" or "ended" answer must never hide an idempotent replay, so each
//! campaign also keeps the set of its buyers (users who ever got a reservation; at
//! most one per reservation): their requests always go to Redis. While the notice
//! stream is down, flags and buyer sets may be stale, so only answers that cannot
//! depend on them (unknown campaign or sku, not started yet) are given locally.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::{DashMap, DashSet};

use crate::campaign::CampaignMeta;
use crate::domain::{CampaignId, SkuId};

/// Most unknown campaign ids remembered at once: a bot probing random ids cannot grow
/// memory without bound (past this, unknown ids simply go to Redis).
const MAX_MISSING_ENTRIES: usize = 10_000;
/// Most buyers remembered per campaign. Past this the campaign's sold-out and ended
/// answers all go to Redis: slower, never wrong.
const MAX_BUYERS_PER_CAMPAIGN: usize = 1_000_000;
/// A campaign no request looked up for this long leaves the cache (10 minutes).
const IDLE_EVICT_MS: u64 = 600_000;
/// How stale a campaign's `last_used` may be (ms): a request writes it only when it is
/// older than this, so requests on two threads do not take turns owning its cache line.
const LAST_USED_GRAIN_MS: u64 = 1_000;
/// How far this process's clock may be behind Redis's: a buyer count read this long
/// after a campaign's end (by the local clock) is final, no reservation can follow it.
const END_CLOCK_SKEW_MS: i64 = 1_000;

/// One sku's sold-out flag, packed in one word so readers never lock:
/// high 32 bits the stock generation, low 32 bits the time (ms since the cache's
/// epoch, wrapping) it was flagged, 0 when not flagged.
#[derive(Debug, Default)]
struct SoldOutFlag(AtomicU64);

impl SoldOutFlag {
    fn pack(gen: u64, since: u32) -> u64 {
        ((gen & 0xFFFF_FFFF) << 32) | u64::from(since)
    }

    fn gen_of(word: u64) -> u64 {
        word >> 32
    }

    /// Sets the flag unless a newer generation is already known.
    fn mark(&self, gen: u64, since: u32) {
        let _ = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            (gen >= Self::gen_of(cur)).then(|| Self::pack(gen, since))
        });
    }

    /// Clears the flag for generation `gen` and everything older.
    fn clear(&self, gen: u64) {
        let _ = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            (gen >= Self::gen_of(cur)).then(|| Self::pack(gen, 0))
        });
    }

    /// Forgets the flag but keeps the generation.
    fn forget(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| Some(Self::pack(Self::gen_of(cur), 0)));
    }

    fn is_set(&self, now: u32, ttl_ms: u32) -> bool {
        let since = (self.0.load(Ordering::Acquire) & 0xFFFF_FFFF) as u32;
        since != 0 && now.wrapping_sub(since) < ttl_ms
    }
}

/// A campaign's buyers as this process knows them, and how many: the count is one word
/// a request reads without a lock (a `DashSet`'s own `len` read-locks every shard, and
/// with two threads answering the same campaign those locks' cache lines went back
/// and forth on every request). Counted after each new insert, so it never exceeds the
/// set (a check of "at least as many buyers as Redis had" can only err towards Redis).
#[derive(Debug, Default)]
struct Buyers {
    set: DashSet<String>,
    count: AtomicUsize,
}

impl Buyers {
    fn insert(&self, user: String) {
        if self.set.insert(user) {
            self.count.fetch_add(1, Ordering::Release);
        }
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    fn contains(&self, user: &str) -> bool {
        self.set.contains(user)
    }
}

/// A campaign as this process knows it. Replaced whole on reload; the flags are
/// shared between the old and the new entry (a campaign's skus never change).
#[derive(Debug)]
pub struct CampaignEntry {
    pub meta: Arc<CampaignMeta>,
    flags: Arc<HashMap<SkuId, SoldOutFlag>>,
    buyers: Arc<Buyers>,
    /// Buyers Redis had when it last flagged a sku here (or when the campaign was last
    /// reloaded): until this process has heard of as many, a buyer may be missing and
    /// no flag is trusted.
    buyers_required: Arc<AtomicU64>,
    /// When (local clock, ms) Redis's buyer count was last read into `buyers_required`.
    buyers_counted_ms: Arc<AtomicI64>,
    /// When (ms since the cache's epoch) a request last looked the campaign up.
    last_used: Arc<AtomicU64>,
    /// Whether the campaign's shard notices flow (always, without shard channels):
    /// set by `shard_notices.rs` once every shard channel is confirmed and the
    /// campaign was reloaded after that.
    notices_live: Arc<AtomicBool>,
}

impl CampaignEntry {
    pub fn has_sku(&self, sku: &SkuId) -> bool {
        self.flags.contains_key(sku)
    }

    /// Whether the user may have a reservation to replay (or the set overflowed).
    pub fn may_have_bought(&self, user: &str) -> bool {
        self.buyers.len() >= MAX_BUYERS_PER_CAMPAIGN || self.buyers.contains(user)
    }
}

/// What the cache can say about a campaign without Redis.
#[derive(Debug)]
pub enum Lookup {
    Known(Arc<CampaignEntry>),
    /// Redis said recently that the campaign does not exist.
    Missing,
    /// Not in the cache: ask Redis.
    Unknown,
}

#[derive(Debug)]
pub struct LocalCache {
    campaigns: DashMap<CampaignId, Arc<CampaignEntry>>,
    missing: DashMap<CampaignId, Instant>,
    epoch: Instant,
    sold_out_ttl_ms: u32,
    refresh: Duration,
    /// Whether restock and buyer notices are flowing (the pub/sub link is up).
    live: AtomicBool,
    /// Whether shards' notices come on channels of their own (a cluster), so each
    /// campaign is trusted only once its own channels are confirmed.
    shard_notices: bool,
}

impl LocalCache {
    pub fn new(sold_out_ttl: Duration, refresh: Duration) -> Self {
        Self {
            campaigns: DashMap::new(),
            missing: DashMap::new(),
            epoch: Instant::now(),
            sold_out_ttl_ms: u32::try_from(sold_out_ttl.as_millis()).unwrap_or(u32::MAX),
            refresh,
            live: AtomicBool::new(false),
            shard_notices: false,
        }
    }

    /// The same cache, for shard notices on channels of their own (a cluster).
    pub fn with_shard_notices(mut self, on: bool) -> Self {
        self.shard_notices = on;
        self
    }

    /// Whether this campaign's flags and buyers may be trusted (local answers that
    /// depend on notices): the notice link is up and, with shard channels, the
    /// campaign's own are confirmed.
    pub fn trusts(&self, entry: &CampaignEntry) -> bool {
        self.is_live() && entry.notices_live.load(Ordering::Acquire)
    }

    /// `None` when the campaign is not cached.
    pub fn notices_live(&self, campaign: &str) -> Option<bool> {
        self.campaigns.get(campaign).map(|e| e.notices_live.load(Ordering::Acquire))
    }

    /// Trusts the campaign's shard notices again, or stops (forgetting its sold-out
    /// flags: a restock may be missed while they do not flow).
    pub fn set_notices_live(&self, campaign: &str, live: bool) {
        if let Some(e) = self.campaigns.get(campaign) {
            if !live {
                e.flags.values().for_each(SoldOutFlag::forget);
            }
            e.notices_live.store(live, Ordering::Release);
        }
    }

    /// The campaign's shard count, when cached.
    pub fn shard_count(&self, campaign: &str) -> Option<u16> {
        self.campaigns.get(campaign).map(|e| e.meta.shards)
    }

    /// Whether notices are flowing; while not, sold-out flags and buyer sets are not trusted.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
    }

    /// Milliseconds since the cache's epoch, wrapping, never 0 (0 means "not flagged").
    /// Wrapping is harmless: only differences under the TTL are ever compared.
    fn now(&self) -> u32 {
        ((self.epoch.elapsed().as_millis() & 0xFFFF_FFFF) as u32).max(1)
    }

    pub fn lookup(&self, campaign: &str) -> Lookup {
        if let Some(e) = self.campaigns.get(campaign) {
            let now = self.elapsed_ms();
            if now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= LAST_USED_GRAIN_MS {
                e.last_used.store(now, Ordering::Relaxed);
            }
            return Lookup::Known(Arc::clone(e.value()));
        }
        match self.missing.get(campaign) {
            Some(at) if at.elapsed() < self.refresh => Lookup::Missing,
            _ => Lookup::Unknown,
        }
    }

    /// Stores what Redis said about a campaign (`None`: it does not exist). `buyers`,
    /// when given, is added to the buyer set (on first load and after a reconnect);
    /// buyers are never removed, so a union is always right.
    pub fn put(&self, campaign: &CampaignId, meta: Option<CampaignMeta>, loaded_buyers: Option<Vec<String>>) {
        let Some(meta) = meta else {
            self.campaigns.remove(campaign);
            if self.missing.len() < MAX_MISSING_ENTRIES {
                self.missing.insert(campaign.clone(), Instant::now());
            }
            return;
        };
        self.missing.remove(campaign);
        let old = self.campaigns.get(campaign).map(|e| Arc::clone(e.value()));
        let flags = match &old {
            Some(old) if old.meta.skus == meta.skus => Arc::clone(&old.flags),
            _ => Arc::new(meta.skus.iter().map(|s| (s.clone(), SoldOutFlag::default())).collect()),
        };
        let buyers_required = old.as_ref().map_or_else(Arc::default, |o| Arc::clone(&o.buyers_required));
        let buyers_counted_ms = old.as_ref().map_or_else(Arc::default, |o| Arc::clone(&o.buyers_counted_ms));
        let last_used = old
            .as_ref()
            .map_or_else(|| Arc::new(AtomicU64::new(self.elapsed_ms())), |o| Arc::clone(&o.last_used));
        let notices_live = old
            .as_ref()
            .map_or_else(|| Arc::new(AtomicBool::new(!self.shard_notices)), |o| Arc::clone(&o.notices_live));
        let buyers = old.map_or_else(Arc::default, |o| Arc::clone(&o.buyers));
        for b in loaded_buyers.into_iter().flatten() {
            buyers.insert(b);
        }
        let entry = Arc::new(CampaignEntry {
            meta: Arc::new(meta),
            flags,
            buyers,
            buyers_required,
            buyers_counted_ms,
            last_used,
            notices_live,
        });
        self.campaigns.insert(campaign.clone(), entry);
    }

    pub fn contains(&self, campaign: &str) -> bool {
        self.campaigns.contains_key(campaign)
    }

    /// Drops a campaign: its next request loads it again, buyers and all.
    pub fn evict(&self, campaign: &str) {
        self.campaigns.remove(campaign);
    }

    /// Forgets that a campaign was missing (it was just launched).
    pub fn unmark_missing(&self, campaign: &str) {
        self.missing.remove(campaign);
    }

    /// Campaigns currently cached (the refresher reloads them).
    pub fn cached_campaigns(&self) -> Vec<CampaignId> {
        self.campaigns.iter().map(|e| e.key().clone()).collect()
    }

    /// Drops expired "missing" entries, and campaigns no request looked up for
    /// [`IDLE_EVICT_MS`]: the refresher reloads only what is in use, however many
    /// campaigns were ever launched (an evicted one is loaded again, buyers and all,
    /// on its next request).
    pub fn prune(&self) {
        let refresh = self.refresh;
        self.missing.retain(|_, at| at.elapsed() < refresh);
        let now = self.elapsed_ms();
        self.campaigns.retain(|_, e| now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < IDLE_EVICT_MS);
    }

    fn elapsed_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn is_sold_out(&self, entry: &CampaignEntry, sku: &SkuId) -> bool {
        self.trusts(entry)
            && entry.flags.get(sku).is_some_and(|f| f.is_set(self.now(), self.sold_out_ttl_ms))
            && entry.buyers.len() as u64 >= entry.buyers_required.load(Ordering::Relaxed)
    }

    /// Redis had `count` buyers when read at `read_at_ms` (local clock).
    pub fn note_buyer_count(&self, campaign: &str, count: u64, read_at_ms: i64) {
        if let Some(e) = self.campaigns.get(campaign) {
            e.buyers_required.fetch_max(count, Ordering::Relaxed);
            e.buyers_counted_ms.fetch_max(read_at_ms, Ordering::Relaxed);
        }
    }

    /// Whether an "ended" answer may be given here: notices flow, Redis's buyer count
    /// was read after the end (so it is final) and this process knows that many buyers
    /// (so everyone who could replay an order is in the buyer set).
    pub fn may_answer_ended(&self, entry: &CampaignEntry) -> bool {
        self.trusts(entry)
            && entry.buyers_counted_ms.load(Ordering::Relaxed) >= entry.meta.ends_ms + END_CLOCK_SKEW_MS
            && entry.buyers.len() as u64 >= entry.buyers_required.load(Ordering::Relaxed)
    }

    pub fn add_buyer(&self, campaign: &str, user: &str) {
        if let Some(e) = self.campaigns.get(campaign) {
            // A known buyer (every order of a returning user) is only looked up: no
            // copy of the id made and dropped, no write lock on the set's shard.
            if !e.buyers.contains(user) && e.buyers.len() < MAX_BUYERS_PER_CAMPAIGN {
                e.buyers.insert(user.to_owned());
            }
        }
    }

    /// Flags `sku` sold out as of generation `gen`, seen when the campaign had `buyers`.
    pub fn mark_sold_out(&self, campaign: &str, sku: &SkuId, gen: u64, buyers: u64) {
        if let Some(e) = self.campaigns.get(campaign) {
            e.buyers_required.fetch_max(buyers, Ordering::Relaxed);
            if let Some(f) = e.flags.get(sku) {
                f.mark(gen, self.now());
            }
        }
    }

    pub fn restock(&self, campaign: &str, sku: &SkuId, gen: u64) {
        if let Some(e) = self.campaigns.get(campaign) {
            if let Some(f) = e.flags.get(sku) {
                f.clear(gen);
            }
        }
    }

    /// Forgets every sold-out flag: after the notice stream was interrupted, a restock
    /// may have been missed.
    pub fn forget_sold_out(&self) {
        for e in self.campaigns.iter() {
            e.flags.values().for_each(SoldOutFlag::forget);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(skus: &[&str]) -> CampaignMeta {
        CampaignMeta {
            campaign: CampaignId::parse("c").unwrap(),
            starts_ms: 0,
            ends_ms: i64::MAX,
            per_user_limit: 1,
            payment_window_secs: 60,
            max_orders_per_sec: None,
            max_user_requests_per_sec: None,
            shards: 1,
            skus: skus.iter().map(|s| SkuId::parse(s).unwrap()).collect(),
            version: 1,
        }
    }

    /// A live cache holding campaign `c` with sku `a`.
    fn live_cache(sold_out_ttl: Duration, refresh: Duration) -> (LocalCache, CampaignId, SkuId) {
        let cache = LocalCache::new(sold_out_ttl, refresh);
        cache.set_live(true);
        let c = CampaignId::parse("c").unwrap();
        cache.put(&c, Some(meta(&["a"])), None);
        (cache, c, SkuId::parse("a").unwrap())
    }

    fn entry(cache: &LocalCache) -> Arc<CampaignEntry> {
        match cache.lookup("c") {
            Lookup::Known(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stale_sold_out_answers_cannot_undo_a_restock() {
        let (cache, _, sku) = live_cache(Duration::from_secs(1), Duration::from_secs(1));
        cache.mark_sold_out("c", &sku, 0, 0);
        assert!(cache.is_sold_out(&entry(&cache), &sku));
        cache.restock("c", &sku, 1);
        assert!(!cache.is_sold_out(&entry(&cache), &sku));
        // A sold-out answer seen before the restock arrives late: ignored.
        cache.mark_sold_out("c", &sku, 0, 0);
        assert!(!cache.is_sold_out(&entry(&cache), &sku));
        // A sold-out answer after the restock counts.
        cache.mark_sold_out("c", &sku, 1, 0);
        assert!(cache.is_sold_out(&entry(&cache), &sku));
    }

    #[test]
    fn a_flag_waits_for_the_buyers_redis_had_when_it_was_set() {
        let (cache, c, sku) = live_cache(Duration::from_secs(1), Duration::from_secs(1));
        cache.add_buyer("c", "u1");
        // Redis had two buyers; the notice of the second has not arrived here yet.
        cache.mark_sold_out("c", &sku, 0, 2);
        assert!(!cache.is_sold_out(&entry(&cache), &sku), "u2 could be a buyer retrying");
        cache.add_buyer("c", "u2");
        assert!(cache.is_sold_out(&entry(&cache), &sku));
        // A reload keeps what is required.
        cache.put(&c, Some(meta(&["a"])), None);
        cache.mark_sold_out("c", &sku, 0, 3);
        assert!(!cache.is_sold_out(&entry(&cache), &sku));
    }

    #[test]
    fn ended_is_answered_only_once_every_buyer_after_the_end_is_known() {
        let cache = LocalCache::new(Duration::from_secs(1), Duration::from_secs(1));
        cache.set_live(true);
        let c = CampaignId::parse("c").unwrap();
        let mut m = meta(&["a"]);
        m.ends_ms = 10_000;
        cache.put(&c, Some(m), Some(vec!["u1".into()]));
        assert!(!cache.may_answer_ended(&entry(&cache)), "no buyer count read after the end yet");
        cache.note_buyer_count("c", 2, 10_500);
        assert!(!cache.may_answer_ended(&entry(&cache)), "read within the clock skew: not final");
        cache.note_buyer_count("c", 2, 11_000);
        assert!(!cache.may_answer_ended(&entry(&cache)), "u2's notice has not arrived: u2 may be retrying");
        cache.add_buyer("c", "u2");
        assert!(cache.may_answer_ended(&entry(&cache)));
        cache.set_live(false);
        assert!(!cache.may_answer_ended(&entry(&cache)), "not while notices are down");
    }

    #[test]
    fn buyers_survive_reloads_and_only_grow() {
        let cache = LocalCache::new(Duration::from_secs(1), Duration::from_secs(1));
        let c = CampaignId::parse("c").unwrap();
        cache.put(&c, Some(meta(&["a"])), Some(vec!["u1".into()]));
        cache.add_buyer("c", "u2");
        cache.put(&c, Some(meta(&["a"])), None);
        cache.put(&c, Some(meta(&["a"])), Some(vec!["u3".into()]));
        let e = entry(&cache);
        for u in ["u1", "u2", "u3"] {
            assert!(e.may_have_bought(u), "{u}");
        }
        assert!(!e.may_have_bought("u4"));
    }

    #[test]
    fn a_buyer_heard_of_again_is_counted_once() {
        let (cache, c, sku) = live_cache(Duration::from_secs(1), Duration::from_secs(1));
        cache.put(&c, Some(meta(&["a"])), Some(vec!["u1".into(), "u1".into()]));
        cache.add_buyer("c", "u1");
        cache.put(&c, Some(meta(&["a"])), Some(vec!["u1".into(), "u2".into()]));
        cache.add_buyer("c", "u2");
        assert_eq!(entry(&cache).buyers.len(), 2);
        // Redis had three buyers: two known here are not enough to trust the flag.
        cache.mark_sold_out("c", &sku, 0, 3);
        assert!(!cache.is_sold_out(&entry(&cache), &sku), "a third buyer could be retrying");
        cache.add_buyer("c", "u3");
        assert!(cache.is_sold_out(&entry(&cache), &sku));
    }

    #[test]
    fn flags_expire_after_their_ttl() {
        let (cache, _, sku) = live_cache(Duration::from_millis(30), Duration::from_secs(1));
        cache.mark_sold_out("c", &sku, 0, 0);
        assert!(cache.is_sold_out(&entry(&cache), &sku));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!cache.is_sold_out(&entry(&cache), &sku));
    }

    #[test]
    fn reloads_keep_flags_and_missing_entries_expire() {
        let (cache, c, sku) = live_cache(Duration::from_secs(5), Duration::from_millis(30));
        cache.mark_sold_out("c", &sku, 0, 0);
        cache.put(&c, Some(meta(&["a"])), None);
        assert!(cache.is_sold_out(&entry(&cache), &sku));
        cache.forget_sold_out();
        assert!(!cache.is_sold_out(&entry(&cache), &sku));
        cache.mark_sold_out("c", &sku, 0, 0);
        cache.set_live(false);
        assert!(!cache.is_sold_out(&entry(&cache), &sku), "flags are not trusted while notices are down");

        let gone = CampaignId::parse("gone").unwrap();
        cache.put(&gone, None, None);
        assert!(matches!(cache.lookup("gone"), Lookup::Missing));
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(cache.lookup("gone"), Lookup::Unknown));
    }
}
