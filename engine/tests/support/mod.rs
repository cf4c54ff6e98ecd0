//! Test support: each test gets its own namespace on the real Redis, removed on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use common::config::Settings;
use engine::campaign::{CampaignLaunch, LaunchItem, LaunchOutcome};
use engine::clock::now_ms;
use engine::domain::{CampaignId, IdempotencyKey, OrderLines, SkuId, UserId};
use engine::Engine;

/// A namespace of its own on the test Redis; its keys are deleted on drop.
pub struct Ns {
    pub settings: Settings,
}

impl Ns {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = testkit::isolate("en");
        tweak(&mut settings);
        Self { settings }
    }

    pub fn engine(&self) -> Engine {
        Engine::start(&self.settings).expect("engine")
    }

    /// The key layout of this namespace.
    pub fn keys(&self) -> engine::keys::KeySpace {
        engine::keys::KeySpace::new(&self.settings.namespace)
    }

    /// Runs `reserve.lua` itself on a connection of the test's, past every cache.
    pub async fn reserve_in_script(
        &self,
        campaign: &CampaignId,
        order: &engine::domain::OrderRef,
        user: &UserId,
        key: &IdempotencyKey,
        lines: &OrderLines,
    ) -> engine::scripts::reserve::ReserveReply {
        let mut replies = self.reserve_batch_in_script(campaign, &[(order, user, key, lines)]).await;
        replies.pop().unwrap().unwrap()
    }

    /// One `reserve.lua` call deciding `batch` (orders of one campaign), in order.
    pub async fn reserve_batch_in_script(
        &self,
        campaign: &CampaignId,
        batch: &[(&engine::domain::OrderRef, &UserId, &IdempotencyKey, &OrderLines)],
    ) -> Vec<Result<engine::scripts::reserve::ReserveReply, engine::EngineError>> {
        let requests: Vec<_> = batch
            .iter()
            .map(|(order, user, key, lines)| engine::scripts::reserve::Request {
                campaign,
                tag: campaign,
                order,
                user,
                key,
                lines,
                trace: None,
                idempotency_ttl_secs: 60,
                outbox_max_len: 1_000_000,
                idempotency_records: false,
                compact_events: self.settings.engine.compact_events,
            })
            .collect();
        let script = engine::scripts::reserve::script();
        let inv = engine::scripts::reserve::invocation(&script, &self.keys(), &requests);
        let v: redis::Value = inv.invoke_async(&mut self.raw().await).await.unwrap();
        engine::scripts::reserve::decode(v, &requests).unwrap()
    }

    /// A raw connection for assertions that look under the engine.
    /// On the one Redis or the cluster, as the settings say.
    pub async fn raw(&self) -> engine::link::Conn {
        engine::link::connect(&self.settings.redis).await.unwrap()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        testkit::delete_keys_blocking(&self.settings.redis, &self.settings.namespace);
    }
}

pub fn cid(s: &str) -> CampaignId {
    CampaignId::parse(s).unwrap()
}

pub fn sku(s: &str) -> SkuId {
    SkuId::parse(s).unwrap()
}

pub fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

pub fn key(s: &str) -> IdempotencyKey {
    IdempotencyKey::parse(s).unwrap()
}

/// The ref a gateway derives for `user`'s request with `key` in an unsharded campaign.
pub fn order_ref(campaign: &CampaignId, user: &UserId, key: &IdempotencyKey) -> engine::domain::OrderRef {
    engine::order_ids::OrderIds::new(b"tests").unwrap().derive(campaign, 0, user, key)
}

pub fn lines(l: &[(&str, u64)]) -> OrderLines {
    OrderLines::parse(l.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect()).unwrap()
}

/// A campaign open from a minute ago for an hour.
pub fn open_campaign(id: &str, items: &[(&str, u64, i64)], limit: u64) -> CampaignLaunch {
    let now = now_ms();
    window_campaign(id, items, limit, now - 60_000, now + 3_600_000)
}

pub fn window_campaign(
    id: &str,
    items: &[(&str, u64, i64)],
    limit: u64,
    starts_ms: i64,
    ends_ms: i64,
) -> CampaignLaunch {
    CampaignLaunch {
        campaign: cid(id),
        starts_ms,
        ends_ms,
        per_user_limit: limit,
        payment_window_secs: 900,
        max_orders_per_sec: None,
        max_user_requests_per_sec: None,
        shards: 1,
        items: items
            .iter()
            .map(|(s, stock, price)| LaunchItem { sku: sku(s), stock: *stock, price_cents: *price })
            .collect(),
    }
}

pub async fn launch(engine: &Engine, spec: &CampaignLaunch) {
    assert_eq!(engine.launch(spec).await.unwrap(), LaunchOutcome::Created);
}

/// Caches the campaign in the engine and waits until its notices are trusted (on a
/// cluster: its shard channels confirmed), so sold-out answers may be local.
pub async fn until_trusted(engine: &Engine, campaign: &CampaignId) {
    for _ in 0..300 {
        engine.campaign(campaign).await.unwrap();
        if engine.campaign_notices_live(campaign) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the campaign's notices were never trusted");
}

/// Waits until the engine's cache notices are flowing.
pub async fn until_live(engine: &Engine) {
    for _ in 0..200 {
        if engine.cache_is_live() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("cache notices never became live");
}
