//! The row types, as MySQL holds them.

use common::message::{OrderItem, OrderStatus};
use engine::campaign::{CampaignLaunch, LaunchItem};
use engine::domain::{CampaignId, InvalidInput, SkuId};

/// A campaign row with its items, as launched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignRow {
    pub campaign_id: String,
    pub name: String,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub per_user_limit: i64,
    pub payment_window_secs: u32,
    pub max_orders_per_sec: Option<u32>,
    pub max_user_requests_per_sec: Option<u32>,
    pub items: Vec<CampaignItemRow>,
    /// Redis shards of the campaign's stock (1: unsharded).
    pub shards: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignItemRow {
    pub sku_id: String,
    pub price_cents: i64,
    pub stock_total: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertCampaign {
    Created,
    /// A campaign with this id exists; here it is.
    Exists(CampaignRow),
}

/// One sku's stock in MySQL, with the units of its pending and paid orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockRow {
    pub sku_id: String,
    pub stock_total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub pending_units: i64,
    pub paid_units: i64,
}

/// An order as MySQL holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub order_id: String,
    pub campaign_id: String,
    pub user_id: String,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub paid_ms: Option<i64>,
    /// The reservation's `Idempotency-Key` (`None` for orders from before it was kept).
    pub idempotency_key: Option<String>,
    /// The payment event that paid the order or asked for its refund.
    pub payment_event: Option<String>,
}

/// What applying a batch of events did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub inserted: usize,
    /// Orders refused because Redis lost them before MySQL heard of them (created
    /// before their campaign was rebuilt from MySQL).
    pub lost: Vec<String>,
    pub advanced: usize,
    pub unchanged: usize,
}

impl CampaignRow {
    /// A launch as MySQL stores it (items in sku order, as MySQL reads them back), so a
    /// repeated launch can be compared with what is stored.
    pub fn from_launch(launch: &CampaignLaunch, name: &str) -> Self {
        let mut items: Vec<CampaignItemRow> = launch
            .items
            .iter()
            .map(|i| CampaignItemRow {
                sku_id: i.sku.to_string(),
                price_cents: i.price_cents,
                stock_total: i.stock as i64,
            })
            .collect();
        items.sort_by(|a, b| a.sku_id.cmp(&b.sku_id));
        Self {
            campaign_id: launch.campaign.to_string(),
            name: name.to_owned(),
            starts_ms: launch.starts_ms,
            ends_ms: launch.ends_ms,
            per_user_limit: launch.per_user_limit as i64,
            payment_window_secs: launch.payment_window_secs,
            max_orders_per_sec: launch.max_orders_per_sec,
            max_user_requests_per_sec: launch.max_user_requests_per_sec,
            items,
            shards: launch.shards,
        }
    }

    /// The campaign as the engine launches it, with its current tuning (rebuilding a
    /// campaign Redis lost).
    pub fn to_launch(&self) -> Result<CampaignLaunch, InvalidInput> {
        let items = self
            .items
            .iter()
            .map(|i| {
                Ok(LaunchItem {
                    sku: SkuId::parse(&i.sku_id)?,
                    stock: i.stock_total as u64,
                    price_cents: i.price_cents,
                })
            })
            .collect::<Result<Vec<_>, InvalidInput>>()?;
        Ok(CampaignLaunch {
            campaign: CampaignId::parse(&self.campaign_id)?,
            starts_ms: self.starts_ms,
            ends_ms: self.ends_ms,
            per_user_limit: self.per_user_limit as u64,
            payment_window_secs: self.payment_window_secs,
            max_orders_per_sec: self.max_orders_per_sec,
            max_user_requests_per_sec: self.max_user_requests_per_sec,
            items,
            shards: self.shards,
        })
    }
}
