//! Benchmarks live in `benches/`; this library holds what several of them set up the
//! same way.
#![forbid(unsafe_code)]

use std::time::Duration;

use engine::campaign::{CampaignLaunch, LaunchItem};
use engine::domain::{CampaignId, SkuId};
use engine::Engine;

/// A campaign of one sku priced 100 cents, one unit per buyer, a 900 s payment window,
/// no thresholds, open over `(starts_ms, ends_ms)`.
pub fn one_sku_campaign(
    campaign: CampaignId,
    sku: SkuId,
    stock: u64,
    (starts_ms, ends_ms): (i64, i64),
    shards: u16,
) -> CampaignLaunch {
    CampaignLaunch {
        campaign,
        starts_ms,
        ends_ms,
        per_user_limit: 1,
        payment_window_secs: 900,
        max_orders_per_sec: None,
        max_user_requests_per_sec: None,
        shards,
        items: vec![LaunchItem { sku, stock, price_cents: 100 }],
    }
}

/// Waits up to `limit` for the engine's local cache to hear Redis's notices (until then
/// it answers nothing locally, and a bench of local answers would measure Redis).
pub async fn until_cache_live(engine: &Engine, limit: Duration) {
    let started = std::time::Instant::now();
    while !engine.cache_is_live() && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
