//! What every clone of the [`crate::Engine`] and its background tasks share: the
//! store, the local cache, the answer counters and the work-signal sender, with the
//! two things both the request path and the notice listener do: load a campaign
//! into the cache, and decide what can be answered without Redis.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::AbortHandle;

use crate::cache::{CampaignEntry, LocalCache, Lookup};
use crate::campaign::Phase;
use crate::clock::now_ms;
use crate::coalesce::Coalescer;
use crate::domain::{CampaignId, OrderLines, ReserveOutcome, UserId};
use crate::error::Result;
use crate::order_ids::OrderIds;
use crate::outbox::WorkSignal;
use crate::shards::ShardMap;
use crate::store::StockStore;
use dashmap::DashMap;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Arc<StockStore>,
    pub(crate) coalescer: Arc<Coalescer>,
    pub(crate) cache: LocalCache,
    pub(crate) answered_locally: AtomicU64,
    pub(crate) sent_to_redis: AtomicU64,
    /// Whole buyer sets read into the cache (each costs Redis a read of every buyer).
    pub(crate) buyer_loads: AtomicU64,
    /// One gate per campaign being loaded on a request's behalf: requests that find it
    /// unknown at once (a gateway started mid-sale) wait for one load, not one each.
    loading: DashMap<CampaignId, Arc<tokio::sync::Mutex<()>>>,
    /// Outbox work notices, for the relay (nobody listens in a gateway).
    pub(crate) work: tokio::sync::broadcast::Sender<WorkSignal>,
    pub(crate) tasks: Mutex<Vec<AbortHandle>>,
    /// Each campaign's shard layout (fixed at launch, so never reloaded).
    pub(crate) maps: DashMap<CampaignId, Arc<ShardMap>>,
    /// Names this process as the holder of a rebuild lease (`rebuild.rs`).
    pub(crate) rebuild_token: String,
    /// Campaigns whose shard notices this process hears though it does not cache them
    /// (a relay's, for `outbox` notices); `None` until it asks for any.
    pub(crate) watched: Mutex<Option<HashSet<CampaignId>>>,
    /// Wakes the shard notice listener: a campaign entered the cache or the watch list,
    /// and its channels are wanted now rather than at the listener's next tick.
    pub(crate) notices_wanted: Arc<tokio::sync::Notify>,
    /// Derives each reservation's order id from its campaign, user and key.
    pub(crate) order_ids: OrderIds,
}

/// Shard layouts kept for campaigns the cache no longer holds (the sync-worker's
/// sweeps use layouts without caching campaigns).
const SHARD_MAPS_KEPT: usize = 1024;

/// Work signals buffered per listener; one that falls further behind gets a lag error
/// and treats it as [`WorkSignal::Resync`].
const WORK_SIGNAL_BUFFER: usize = 4096;

impl Drop for Shared {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        tasks.iter().for_each(AbortHandle::abort);
    }
}

impl Shared {
    pub(crate) fn new(
        store: StockStore,
        cache: LocalCache,
        coalescer: Coalescer,
        order_ids: OrderIds,
    ) -> Self {
        Self {
            store: Arc::new(store),
            coalescer: Arc::new(coalescer),
            cache,
            answered_locally: AtomicU64::new(0),
            sent_to_redis: AtomicU64::new(0),
            buyer_loads: AtomicU64::new(0),
            loading: DashMap::new(),
            work: tokio::sync::broadcast::channel(WORK_SIGNAL_BUFFER).0,
            tasks: Mutex::new(Vec::new()),
            maps: DashMap::new(),
            rebuild_token: uuid::Uuid::now_v7().simple().to_string(),
            watched: Mutex::new(None),
            notices_wanted: Arc::new(tokio::sync::Notify::new()),
            order_ids,
        }
    }

    /// See [`Self::watched`].
    pub(crate) fn watched_campaigns(&self) -> Vec<CampaignId> {
        let watched = self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        watched.iter().flatten().cloned().collect()
    }

    /// A launched campaign joins the watched ones, once any are watched.
    pub(crate) fn watch_launched(&self, campaign: &CampaignId) {
        let mut watched = self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(set) = watched.as_mut() {
            if set.insert(campaign.clone()) {
                self.notices_wanted.notify_one();
            }
        }
    }

    /// Drops what no request uses any more: idle campaigns from the cache, idle lanes,
    /// and, past [`SHARD_MAPS_KEPT`], the layouts of campaigns not in the cache (a
    /// layout is a pure function of the campaign: it is computed again when needed).
    pub(crate) fn prune(&self) {
        self.cache.prune();
        self.coalescer.prune();
        if self.maps.len() > SHARD_MAPS_KEPT {
            let watched: HashSet<CampaignId> = self.watched_campaigns().into_iter().collect();
            self.maps.retain(|c, _| self.cache.contains(c.as_str()) || watched.contains(c));
        }
    }

    /// The shard layout of a campaign with `shards` shards (computed once).
    pub(crate) fn map_of(&self, campaign: &CampaignId, shards: u16) -> Arc<ShardMap> {
        if let Some(m) = self.maps.get(campaign) {
            return Arc::clone(m.value());
        }
        let m = Arc::new(ShardMap::new(campaign, usize::from(shards)));
        self.maps.insert(campaign.clone(), Arc::clone(&m));
        m
    }

    /// The shard layouts of `campaigns`, reading the shard count of those not seen yet
    /// from Redis (a campaign Redis does not know has one shard, and is not kept).
    pub(crate) async fn shard_maps(&self, campaigns: &[CampaignId]) -> Result<Vec<Arc<ShardMap>>> {
        let unknown: Vec<&CampaignId> = campaigns.iter().filter(|c| !self.maps.contains_key(*c)).collect();
        if !unknown.is_empty() {
            let counts = self.store.shard_counts(&unknown).await?;
            for (c, n) in unknown.into_iter().zip(counts) {
                if let Some(n) = n {
                    self.map_of(c, n);
                }
            }
        }
        Ok(campaigns
            .iter()
            .map(|c| match self.maps.get(c) {
                Some(m) => Arc::clone(m.value()),
                None => Arc::new(ShardMap::new(c, 1)),
            })
            .collect())
    }

    pub(crate) async fn shard_map(&self, campaign: &CampaignId) -> Result<Arc<ShardMap>> {
        let mut maps = self.shard_maps(std::slice::from_ref(campaign)).await?;
        Ok(maps.pop().unwrap_or_else(|| Arc::new(ShardMap::new(campaign, 1))))
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) async fn entry(&self, campaign: &CampaignId) -> Result<Option<Arc<CampaignEntry>>> {
        match self.cache.lookup(campaign.as_str()) {
            Lookup::Known(e) => Ok(Some(e)),
            Lookup::Missing => Ok(None),
            // Boxed: rare, and its future would make every lookup's larger.
            Lookup::Unknown => Box::pin(self.load(campaign)).await,
        }
    }

    /// Loads a campaign the cache does not know, buyers and all, once for every request
    /// asking meanwhile: the first loads, the others wait for it and read the cache.
    /// Without the gate, a gateway started mid-sale would read a campaign's whole buyer
    /// set once per request in flight (64 connections, a million buyers: Redis busy for
    /// seconds). A load that fails lets the next waiter try (each is bounded by the
    /// Redis call timeout, and the request by its own).
    async fn load(&self, campaign: &CampaignId) -> Result<Option<Arc<CampaignEntry>>> {
        let gate = Arc::clone(self.loading.entry(campaign.clone()).or_default().value());
        let loaded = async {
            let _turn = gate.lock().await;
            match self.cache.lookup(campaign.as_str()) {
                Lookup::Known(e) => return Ok(Some(e)),
                Lookup::Missing => return Ok(None),
                Lookup::Unknown => {}
            }
            self.reload(campaign, true).await?;
            Ok(match self.cache.lookup(campaign.as_str()) {
                Lookup::Known(e) => Some(e),
                _ => None,
            })
        }
        .await;
        // The last one out removes the gate (one taken from the map just now by a late
        // request keeps it alive, and at worst a new gate means one more load).
        drop(gate);
        self.loading.remove_if(campaign, |_, g| Arc::strong_count(g) == 1);
        loaded
    }

    /// What can be said without Redis, or `None` to ask Redis. The checks follow the
    /// script's order: window, unknown sku, sold out.
    pub(crate) fn answer_locally(
        &self,
        entry: &CampaignEntry,
        user: &UserId,
        lines: &OrderLines,
    ) -> Option<ReserveOutcome> {
        let phase = entry.meta.phase_at(now_ms());
        if phase == Phase::Scheduled {
            // Nobody can hold a reservation before the start: nothing to replay.
            return Some(ReserveOutcome::NotActive);
        }
        if let Some(line) = lines.iter().find(|l| !entry.has_sku(&l.sku)) {
            return Some(ReserveOutcome::SkuNotFound(line.sku.clone()));
        }
        if !self.cache.trusts(entry) || entry.may_have_bought(user.as_str()) {
            return None;
        }
        if phase == Phase::Ended {
            // Only once this process knows every buyer Redis had after the end: a
            // winner whose notice has not arrived yet must reach the script.
            return self.cache.may_answer_ended(entry).then_some(ReserveOutcome::NotActive);
        }
        // The limit before stock, as `reserve.lua` decides: a user who never bought holds
        // nothing, so only an order over the limit by itself is refused here.
        let units: u64 = lines.iter().map(|l| l.quantity).sum();
        let limit = entry.meta.per_user_limit;
        if units > limit {
            return Some(ReserveOutcome::LimitExceeded { held: 0, limit });
        }
        lines
            .iter()
            .find(|l| self.cache.is_sold_out(entry, &l.sku))
            .map(|l| ReserveOutcome::SoldOut(l.sku.clone()))
    }

    /// Reloads a campaign from Redis; its buyers too when asked, or when this process
    /// has not cached the campaign yet (an entry must never start with a partial set).
    pub(crate) async fn reload(&self, campaign: &CampaignId, with_buyers: bool) -> Result<()> {
        let with_buyers = with_buyers || !self.cache.contains(campaign.as_str());
        let read_at_ms = now_ms();
        let mut found = self.store.campaign_meta_and_buyer_count(campaign).await?;
        let map = found.as_ref().map(|(meta, _)| self.map_of(campaign, meta.shards));
        if let (Some((_, count)), Some(map)) = (found.as_mut(), &map) {
            *count += self.store.buyer_count(&map.tags()[1..]).await?;
        }
        let buyers = match (&map, with_buyers) {
            (Some(map), true) => {
                Self::count(&self.buyer_loads);
                Some(self.store.buyers(map).await?)
            }
            _ => None,
        };
        let count = found.as_ref().map(|(_, n)| *n);
        let new_entry = found.is_some() && !self.cache.contains(campaign.as_str());
        self.cache.put(campaign, found.map(|(meta, _)| meta), buyers);
        if new_entry {
            self.notices_wanted.notify_one();
        }
        if let Some(count) = count {
            self.cache.note_buyer_count(campaign.as_str(), count, read_at_ms);
        }
        Ok(())
    }

    /// Reloads every cached campaign; returns how many could not be read now (a node
    /// down, a shard being rebuilt). One that fails never holds the others back. With
    /// `with_buyers` (after notices may have been missed) a campaign that failed is
    /// dropped from the cache, to be loaded again, buyers and all, by its next request;
    /// otherwise it keeps what it had until the next round.
    pub(crate) async fn reload_all(&self, with_buyers: bool) -> usize {
        let mut failed = 0;
        for campaign in self.cache.cached_campaigns() {
            if let Err(e) = self.reload(&campaign, with_buyers).await {
                tracing::debug!(%campaign, error = %e, "campaign not reloaded");
                failed += 1;
                if with_buyers {
                    self.cache.evict(campaign.as_str());
                }
            }
        }
        failed
    }
}
