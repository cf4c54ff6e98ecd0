//! The order event: one per state change of an order, written by the Lua scripts into
//! a campaign's outbox stream, relayed to RabbitMQ and applied to MySQL.
//!
//! Each event carries the whole order, so applying events is idempotent and does not
//! depend on their order: a consumer keeps the furthest state it has seen.

use serde::{Deserialize, Serialize};

/// Where an order stands. The only ways forward are
/// `pending_payment → paid | cancelled | expired` and `cancelled | expired → refund_required`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    Cancelled,
    Expired,
    RefundRequired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "pending_payment",
            Self::Paid => "paid",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::RefundRequired => "refund_required",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending_payment" => Self::PendingPayment,
            "paid" => Self::Paid,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            "refund_required" => Self::RefundRequired,
            _ => return None,
        })
    }

    /// Whether an order in `self` may move to `next`.
    pub fn can_become(self, next: Self) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (PendingPayment, Paid | Cancelled | Expired) | (Cancelled | Expired, RefundRequired)
        )
    }

    /// Whether an order in `self` can end up in `next` through one or more steps. Events
    /// may arrive in any order; a consumer applies one only if it moves the order on.
    pub fn can_reach(self, next: Self) -> bool {
        use OrderStatus::*;
        self.can_become(next) || (self == PendingPayment && next == RefundRequired)
    }

    /// Which stock bucket the order's units sit in while the order is in this state.
    pub fn bucket(self) -> StockBucket {
        match self {
            Self::PendingPayment => StockBucket::Reserved,
            Self::Paid => StockBucket::Sold,
            Self::Cancelled | Self::Expired | Self::RefundRequired => StockBucket::Available,
        }
    }
}

/// The three stock counters an order's units can be counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockBucket {
    Available,
    Reserved,
    Sold,
}

/// One line of an order, with the price at the time of reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderItem {
    pub sku_id: String,
    pub quantity: u64,
    pub price_cents: i64,
}

/// An order as of one state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub order_id: String,
    pub campaign_id: String,
    pub user_id: String,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// 0 while unpaid.
    pub paid_ms: i64,
    pub payment_window_secs: u32,
    /// When this state change happened (Redis clock).
    pub event_ms: i64,
    /// The reservation's `Idempotency-Key` (the reservation's event carries it), kept
    /// in MySQL so that a shard rebuilt from MySQL still replays the order to a retry
    /// (the request's fingerprint is its lines, which MySQL holds anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The payment event that paid the order (or asked for its refund), kept for the
    /// same reason: the same event after a rebuild is still a no-op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_event: Option<String>,
    /// The W3C `traceparent` of the request that reserved the order, when its trace is
    /// sampled: the relay and the persister add their spans to that trace (API.md,
    /// "Tracing"). Absent otherwise; builds before ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_only_move_forward() {
        use OrderStatus::*;
        assert!(PendingPayment.can_become(Paid));
        assert!(PendingPayment.can_become(Expired));
        assert!(Expired.can_become(RefundRequired));
        assert!(!Paid.can_become(Cancelled));
        assert!(!Cancelled.can_become(Paid));
        assert!(!RefundRequired.can_become(Expired));
        assert!(!PendingPayment.can_become(PendingPayment));
    }

    #[test]
    fn reach_is_the_closure_of_become() {
        use OrderStatus::*;
        assert!(PendingPayment.can_reach(RefundRequired));
        assert!(PendingPayment.can_reach(Paid));
        assert!(!Paid.can_reach(RefundRequired));
        assert!(!RefundRequired.can_reach(Cancelled));
    }

    #[test]
    fn status_names_round_trip() {
        for s in ["pending_payment", "paid", "cancelled", "expired", "refund_required"] {
            assert_eq!(OrderStatus::parse(s).map(OrderStatus::as_str), Some(s));
        }
        assert_eq!(OrderStatus::parse("shipped"), None);
    }
}

/// An order message as the relay publishes it: version 2 carries every event one
/// script call decided (`{"version":2,"events":[...]}`), version 1 one event (the
/// event object itself). Both are read, so messages published before an upgrade
/// still apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OrderMessage {
    Batch { version: u32, events: Vec<OrderEvent> },
    Single(OrderEvent),
}

/// A version 2 body, decoded straight into its events.
#[derive(Deserialize)]
struct Batch {
    #[allow(dead_code)]
    version: u32,
    events: Vec<OrderEvent>,
}

impl OrderMessage {
    /// The events of a message body, each decoded once, straight into its struct: the
    /// body's first key tells the version (`{"version":` is how the scripts and the
    /// relay write version 2), and only a body that fails as that version is tried as
    /// the other (an untagged enum would first buffer the whole body as a JSON tree).
    pub fn parse(body: &[u8]) -> Result<Vec<OrderEvent>, serde_json::Error> {
        let batch = || serde_json::from_slice::<Batch>(body).map(|b| b.events);
        let single = || serde_json::from_slice::<OrderEvent>(body).map(|e| vec![e]);
        if body.trim_ascii_start().starts_with(br#"{"version""#) {
            batch().or_else(|e| single().map_err(|_| e))
        } else {
            single().or_else(|e| batch().map_err(|_| e))
        }
    }
}

#[cfg(test)]
mod message_tests {
    use super::*;

    fn event(id: &str) -> OrderEvent {
        OrderEvent {
            order_id: id.into(),
            campaign_id: "c".into(),
            user_id: "u".into(),
            status: OrderStatus::PendingPayment,
            items: vec![OrderItem { sku_id: "a".into(), quantity: 1, price_cents: 100 }],
            total_cents: 100,
            created_ms: 1,
            expires_ms: 2,
            paid_ms: 0,
            payment_window_secs: 60,
            event_ms: 1,
            idempotency_key: Some("k".into()),
            payment_event: None,
            trace: None,
        }
    }

    #[test]
    fn both_versions_parse_whatever_the_key_order() {
        let v2 =
            serde_json::to_vec(&OrderMessage::Batch { version: 2, events: vec![event("a"), event("b")] })
                .unwrap();
        assert_eq!(OrderMessage::parse(&v2).unwrap(), vec![event("a"), event("b")]);
        let v1 = serde_json::to_vec(&OrderMessage::Single(event("a"))).unwrap();
        assert_eq!(OrderMessage::parse(&v1).unwrap(), vec![event("a")]);
        let reordered = format!(r#" {{"events":[{}],"version":2}}"#, String::from_utf8(v1.clone()).unwrap());
        assert_eq!(OrderMessage::parse(reordered.as_bytes()).unwrap(), vec![event("a")]);
        assert!(OrderMessage::parse(br#"{"version":2}"#).is_err());
        assert!(OrderMessage::parse(b"not json").is_err());
        assert!(OrderMessage::parse(br#"{"order_id":"x"}"#).is_err());
    }
}
