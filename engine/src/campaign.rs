//! A campaign's data as the engine holds it: as launched, as tuned, as Redis keeps
//! it (window, limits, skus, counters), and one reservation's record.

use std::collections::BTreeMap;

use common::message::{OrderItem, OrderStatus};

use crate::domain::{CampaignId, EventId, IdempotencyKey, OrderId, SkuId, UserId};

/// A campaign as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignMeta {
    pub campaign: CampaignId,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub per_user_limit: u64,
    pub payment_window_secs: u32,
    pub max_orders_per_sec: Option<u32>,
    pub max_user_requests_per_sec: Option<u32>,
    pub skus: Vec<SkuId>,
    pub version: u64,
    /// How many shards the campaign's stock is spread over (1: unsharded).
    pub shards: u16,
}

/// Where a campaign's window puts a moment: the one reading of `starts`/`ends` on
/// the Rust side (`reserve.lua` applies the same rule by Redis's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Scheduled,
    Active,
    Ended,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Active => "active",
            Self::Ended => "ended",
        }
    }
}

impl CampaignMeta {
    /// The campaign's phase at `now_ms`: open on `[starts_ms, ends_ms)`.
    pub fn phase_at(&self, now_ms: i64) -> Phase {
        if now_ms < self.starts_ms {
            Phase::Scheduled
        } else if now_ms < self.ends_ms {
            Phase::Active
        } else {
            Phase::Ended
        }
    }
}

/// A new campaign: what `warmup.lua` loads. Built by the caller from validated input.
#[derive(Debug, Clone)]
pub struct CampaignLaunch {
    pub campaign: CampaignId,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub per_user_limit: u64,
    pub payment_window_secs: u32,
    pub max_orders_per_sec: Option<u32>,
    pub max_user_requests_per_sec: Option<u32>,
    pub items: Vec<LaunchItem>,
    /// Shards of every sku's stock, `1..=64` (see `shards.rs`).
    pub shards: u16,
}

#[derive(Debug, Clone)]
pub struct LaunchItem {
    pub sku: SkuId,
    pub stock: u64,
    pub price_cents: i64,
}

/// Changes to a live campaign; `None` leaves a field as it is. A threshold of
/// `Some(None)` removes it.
#[derive(Debug, Clone, Default)]
pub struct CampaignTuning {
    pub ends_ms: Option<i64>,
    pub per_user_limit: Option<u64>,
    pub max_orders_per_sec: Option<Option<u32>>,
    pub max_user_requests_per_sec: Option<Option<u32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchOutcome {
    Created,
    AlreadyExists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TuneOutcome {
    Tuned,
    NotFound,
    EndsBeforeStart,
}

/// One sku's counters; `available + reserved + sold = total` always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuCounters {
    pub sku: SkuId,
    pub total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    pub price_cents: i64,
}

/// A reservation as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub order_id: OrderId,
    pub user: String,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// When it was paid (or, for refund_required, when the late payment came).
    pub paid_ms: Option<i64>,
}

/// A campaign as MySQL holds it, to be loaded back into a Redis that lost it: the
/// campaign as launched (with its current tuning) and every one of its orders.
#[derive(Debug, Clone)]
pub struct CampaignSnapshot {
    pub launch: CampaignLaunch,
    pub orders: Vec<SnapshotOrder>,
}

#[derive(Debug, Clone)]
pub struct SnapshotOrder {
    pub order_id: OrderId,
    pub user: UserId,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub paid_ms: Option<i64>,
    /// The reservation's `Idempotency-Key` (`None` for orders from before it was kept).
    pub idempotency_key: Option<IdempotencyKey>,
    /// The payment event that paid the order or asked for its refund.
    pub payment_event: Option<EventId>,
}

/// What a restore loaded: per sku (available, reserved, sold).
pub type RestoredStock = BTreeMap<SkuId, (u64, u64, u64)>;
