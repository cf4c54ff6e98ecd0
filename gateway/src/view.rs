//! Response bodies, exactly as the contract shows them.

use common::message::{OrderItem, OrderStatus};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Parses an RFC 3339 time into Unix milliseconds.
pub fn parse_time(field: &str, s: &str) -> Result<i64, crate::error::AppError> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| crate::error::AppError::InvalidRequest(format!("{field}: not an RFC 3339 time: {e}")))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReservationView {
    pub order_id: String,
    pub campaign_id: String,
    pub status: &'static str,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub expires_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub order_id: String,
    pub campaign_id: String,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub created_at: String,
    pub expires_at: String,
    pub paid_at: Option<String>,
}

impl From<engine::campaign::OrderRecord> for OrderView {
    fn from(o: engine::campaign::OrderRecord) -> Self {
        Self {
            campaign_id: o.order_id.campaign().to_string(),
            order_id: o.order_id.to_string(),
            status: o.status,
            items: o.items,
            total_cents: o.total_cents,
            created_at: rfc3339(o.created_ms),
            expires_at: rfc3339(o.expires_ms),
            paid_at: o.paid_ms.map(rfc3339),
        }
    }
}

impl From<ledger::OrderRow> for OrderView {
    fn from(o: ledger::OrderRow) -> Self {
        Self {
            order_id: o.order_id,
            campaign_id: o.campaign_id,
            status: o.status,
            items: o.items,
            total_cents: o.total_cents,
            created_at: rfc3339(o.created_ms),
            expires_at: rfc3339(o.expires_ms),
            paid_at: o.paid_ms.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Thresholds {
    pub max_orders_per_sec: Option<u32>,
    pub max_user_requests_per_sec: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CampaignItemView {
    pub sku_id: String,
    pub price_cents: i64,
    pub stock_total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CampaignView {
    pub campaign_id: String,
    pub name: String,
    pub status: &'static str,
    pub starts_at: String,
    pub ends_at: String,
    pub per_user_limit: u64,
    pub payment_window_secs: u32,
    pub thresholds: Thresholds,
    pub items: Vec<CampaignItemView>,
    /// Redis cannot answer for the campaign right now (a shard is being rebuilt after
    /// its data was lost, or Redis is out of reach): the view is MySQL's, whose
    /// counters trail Redis's by the relay's lag.
    pub restoring: bool,
}

/// `GET /admin/v1/campaigns`: one page, newest `starts_at` first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CampaignList {
    pub campaigns: Vec<CampaignView>,
    /// Pass as `?cursor=` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}
