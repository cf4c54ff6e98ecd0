//! [`Engine`]: the local cache in front of the Redis stock store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::config::Settings;
use tokio::task::AbortHandle;

use crate::cache::{CampaignEntry, LocalCache, Lookup};
use crate::domain::{
    CampaignId, ConfirmOutcome, EventId, IdempotencyKey, OrderId, OrderLines, PaymentStatus, ReleaseOutcome,
    ReleaseReason, ReserveOutcome, UserId,
};
use crate::error::Result;
use crate::events::{self, Notice, WorkSignal};
use crate::keys::KeySpace;
use crate::link::RedisLink;
use crate::store::{
    CampaignLaunch, CampaignMeta, CampaignTuning, LaunchOutcome, StockStore, StoreLimits, TuneOutcome,
};

/// Counters of where reservation requests were answered (exported as metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Answered from the local cache, without Redis.
    pub answered_locally: u64,
    /// Sent to the reservation script.
    pub sent_to_redis: u64,
}

/// The hot path. Cheap to clone; background tasks stop when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: StockStore,
    pub(crate) cache: LocalCache,
    answered_locally: AtomicU64,
    sent_to_redis: AtomicU64,
    /// Outbox work notices, for the relay (nobody listens in a gateway).
    pub(crate) work: tokio::sync::broadcast::Sender<WorkSignal>,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// Work signals buffered per listener; one that falls further behind gets a lag error
/// and treats it as [`WorkSignal::Resync`].
const WORK_SIGNAL_BUFFER: usize = 4096;

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        tasks.iter().for_each(AbortHandle::abort);
    }
}

/// Milliseconds since the Unix epoch by this process's clock.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Engine {
    /// Builds the engine and starts its cache listener and refresher. Connects lazily:
    /// a Redis that is down makes calls fail with `Unavailable`, not this.
    pub fn start(settings: &Settings) -> Result<Self> {
        let r = &settings.redis;
        let link = RedisLink::new(
            &r.url,
            r.connections,
            r.call_timeout(),
            Duration::from_millis(r.connect_timeout_ms),
        )?;
        let e = &settings.engine;
        let limits = StoreLimits {
            idempotency_ttl_secs: e.idempotency_ttl_secs,
            outbox_max_len: e.outbox_max_len,
            payment_event_ttl_secs: e.payment_event_ttl_secs,
        };
        let keys = KeySpace::new(&settings.namespace);
        let channel = keys.events_channel();
        let store = StockStore::new(link, keys, limits);
        let refresh = Duration::from_millis(e.campaign_refresh_ms);
        let cache = LocalCache::new(Duration::from_millis(e.sold_out_ttl_ms), refresh);
        let inner = Arc::new(Inner {
            store,
            cache,
            answered_locally: AtomicU64::new(0),
            sent_to_redis: AtomicU64::new(0),
            work: tokio::sync::broadcast::channel(WORK_SIGNAL_BUFFER).0,
            tasks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&inner);
        let listener = tokio::spawn(events::listen(
            weak.clone(),
            r.url.clone(),
            channel,
            Duration::from_millis(r.connect_timeout_ms),
        ));
        let refresher = tokio::spawn(events::refresh(weak, refresh));
        if let Ok(mut tasks) = inner.tasks.lock() {
            tasks.push(listener.abort_handle());
            tasks.push(refresher.abort_handle());
        }
        Ok(Self { inner })
    }

    pub fn store(&self) -> &StockStore {
        &self.inner.store
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            answered_locally: self.inner.answered_locally.load(Ordering::Relaxed),
            sent_to_redis: self.inner.sent_to_redis.load(Ordering::Relaxed),
        }
    }

    /// Outbox work notices from every process: which campaigns have entries to relay.
    pub fn work_signals(&self) -> tokio::sync::broadcast::Receiver<WorkSignal> {
        self.inner.work.subscribe()
    }

    /// Whether restock and buyer notices are flowing (local sold-out answers are on).
    pub fn cache_is_live(&self) -> bool {
        self.inner.cache.is_live()
    }

    /// The campaign as this process knows it (loaded from Redis on a miss).
    pub async fn campaign(&self, campaign: &CampaignId) -> Result<Option<Arc<CampaignMeta>>> {
        Ok(self.inner.entry(campaign).await?.map(|e| Arc::clone(&e.meta)))
    }

    /// Reserves all lines or none. Answers from the local cache when it can: unknown
    /// campaign or sku, not started, ended, or a line's sku sold out.
    pub async fn reserve(
        &self,
        campaign: &CampaignId,
        user: &UserId,
        key: &IdempotencyKey,
        lines: &OrderLines,
    ) -> Result<ReserveOutcome> {
        let inner = &self.inner;
        let Some(entry) = inner.entry(campaign).await? else {
            inner.answered_locally.fetch_add(1, Ordering::Relaxed);
            return Ok(ReserveOutcome::CampaignNotFound);
        };
        if let Some(answer) = inner.answer_locally(&entry, user, lines) {
            inner.answered_locally.fetch_add(1, Ordering::Relaxed);
            return Ok(answer);
        }
        inner.sent_to_redis.fetch_add(1, Ordering::Relaxed);
        let order_id = OrderId::generate(campaign);
        let reply = inner.store.reserve(campaign, &order_id, user, key, lines).await?;
        if matches!(reply.outcome, ReserveOutcome::Reserved(_)) {
            inner.cache.add_buyer(campaign.as_str(), user.as_str());
        }
        for (sku, gen) in &reply.sold_out {
            inner.cache.mark_sold_out(campaign.as_str(), sku, *gen, reply.buyers);
        }
        Ok(reply.outcome)
    }

    /// Cancels or expires a pending reservation; units come back on every process.
    pub async fn release(&self, order: &OrderId, reason: ReleaseReason) -> Result<ReleaseOutcome> {
        let campaign = order.campaign();
        let mut outcomes = self.release_many(&campaign, std::slice::from_ref(order), reason).await?;
        outcomes
            .pop()
            .map(|(_, outcome)| outcome)
            .ok_or_else(|| crate::EngineError::Protocol("release: no outcome".into()))
    }

    /// Cancels or expires many pending reservations of one campaign in a few script
    /// calls, each order at most once; units come back on every process.
    pub async fn release_many(
        &self,
        campaign: &CampaignId,
        orders: &[OrderId],
        reason: ReleaseReason,
    ) -> Result<Vec<(OrderId, ReleaseOutcome)>> {
        let reply = self.inner.store.release_many(campaign, orders, reason).await?;
        for (sku, gen) in &reply.restocked {
            self.inner.cache.restock(campaign.as_str(), sku, *gen);
        }
        Ok(reply.outcomes)
    }

    /// Applies a payment provider's verdict to an order.
    pub async fn confirm(
        &self,
        order: &OrderId,
        event: &EventId,
        amount_cents: i64,
        status: PaymentStatus,
    ) -> Result<ConfirmOutcome> {
        self.inner.store.confirm(order, event, amount_cents, status).await
    }

    /// Loads a new campaign into Redis; this process sees it at once, others within 1 s.
    pub async fn launch(&self, spec: &CampaignLaunch) -> Result<LaunchOutcome> {
        let outcome = self.inner.store.launch(spec).await?;
        self.inner.reload(&spec.campaign, true).await?;
        Ok(outcome)
    }

    /// Tunes a live campaign; this process sees it at once, others within 1 s.
    pub async fn tune(&self, campaign: &CampaignId, tuning: &CampaignTuning) -> Result<TuneOutcome> {
        let outcome = self.inner.store.tune(campaign, tuning).await?;
        self.inner.reload(campaign, false).await?;
        Ok(outcome)
    }
}

impl Inner {
    async fn entry(&self, campaign: &CampaignId) -> Result<Option<Arc<CampaignEntry>>> {
        match self.cache.lookup(campaign.as_str()) {
            Lookup::Known(e) => Ok(Some(e)),
            Lookup::Missing => Ok(None),
            Lookup::Unknown => {
                self.reload(campaign, true).await?;
                match self.cache.lookup(campaign.as_str()) {
                    Lookup::Known(e) => Ok(Some(e)),
                    _ => Ok(None),
                }
            }
        }
    }

    /// What can be said without Redis, or `None` to ask Redis. The checks follow the
    /// script's order: window, unknown sku, sold out.
    fn answer_locally(
        &self,
        entry: &CampaignEntry,
        user: &UserId,
        lines: &OrderLines,
    ) -> Option<ReserveOutcome> {
        let meta = &entry.meta;
        let now = now_ms();
        if now < meta.starts_ms {
            // Nobody can hold a reservation before the start: nothing to replay.
            return Some(ReserveOutcome::NotActive);
        }
        if let Some(line) = lines.iter().find(|l| !entry.has_sku(&l.sku)) {
            return Some(ReserveOutcome::SkuNotFound(line.sku.clone()));
        }
        if !self.cache.is_live() || entry.may_have_bought(user.as_str()) {
            return None;
        }
        if now >= meta.ends_ms {
            // Only once this process knows every buyer Redis had after the end: a
            // winner whose notice has not arrived yet must reach the script.
            return self.cache.may_answer_ended(entry).then_some(ReserveOutcome::NotActive);
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
        let found = self.store.campaign_meta_and_buyer_count(campaign).await?;
        let buyers = match (&found, with_buyers) {
            (Some(_), true) => Some(self.store.buyers(campaign).await?),
            _ => None,
        };
        let count = found.as_ref().map(|(_, n)| *n);
        self.cache.put(campaign, found.map(|(meta, _)| meta), buyers);
        if let Some(count) = count {
            self.cache.note_buyer_count(campaign.as_str(), count, read_at_ms);
        }
        Ok(())
    }

    pub(crate) async fn reload_all(&self, with_buyers: bool) -> Result<()> {
        for campaign in self.cache.cached_campaigns() {
            self.reload(&campaign, with_buyers).await?;
        }
        Ok(())
    }

    pub(crate) async fn apply_notice(&self, text: &str) {
        match Notice::parse(text) {
            Some(Notice::Restock { campaign, sku, gen }) => self.cache.restock(&campaign, &sku, gen),
            Some(Notice::Buyer { campaign, user }) => self.cache.add_buyer(&campaign, &user),
            Some(Notice::Outbox { campaign }) => {
                let _ = self.work.send(WorkSignal::Outbox(campaign));
            }
            // Only a campaign this process serves is reloaded; others load on first use.
            Some(Notice::Meta { campaign }) if self.cache.contains(campaign.as_str()) => {
                if let Err(e) = self.reload(&campaign, false).await {
                    tracing::warn!(error = %e, %campaign, "reload on notice failed");
                }
            }
            Some(Notice::Meta { campaign }) => self.cache.unmark_missing(campaign.as_str()),
            None => tracing::debug!(notice = text, "ignored unknown cache notice"),
        }
    }
}
