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

/// An order message as the relay publishes it: version 3 carries reservations as
/// compact rows ([`ReservedRow`], what the reservation script writes) beside whole
/// events, version 2 every event one script call decided (`{"version":2,"events":[...]}`),
/// version 1 one event (the event object itself). All three are read, so messages
/// published before an upgrade still apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OrderMessage {
    Batch { version: u32, events: Vec<OrderEvent> },
    Single(OrderEvent),
}

/// A version 2 or 3 body, decoded straight into its events: version 2 is
/// `{"version":2,"events":[...]}`, version 3 `{"version":3,"events":[...],
/// "reserved":[...]}` with either list optional.
#[derive(Deserialize)]
struct Batch {
    version: u32,
    events: Option<Vec<OrderEvent>>,
    #[serde(default)]
    reserved: Vec<ReservedRow>,
}

/// A reservation's event as one JSON array, what it has that no other reservation
/// event of its campaign shares: `[order_id, user_id, idempotency_key, lines, total,
/// created_ms, expires_ms, payment_window_secs]` and, when the request's trace is
/// sampled, a ninth element `{"trace":"00-…"}`. The rest is implied: the status is
/// `pending_payment`, the event's time is the creation time, nothing is paid, the lines
/// are the `sku:quantity:price_cents` text ([`encode_lines`]) and the campaign is the
/// order id less its last 33 characters (`.`, 12 hex digits of the creation time and
/// the 20-digit ref: the only ids the script makes). A third of the bytes of the same
/// event in full, on every hop from the script to MySQL.
#[derive(Deserialize)]
struct ReservedRow {
    order_id: String,
    user_id: String,
    idempotency_key: String,
    lines: String,
    total_cents: i64,
    created_ms: i64,
    expires_ms: i64,
    payment_window_secs: u32,
    #[serde(default)]
    extra: Option<RowExtra>,
}

#[derive(Deserialize)]
struct RowExtra {
    trace: Option<String>,
}

/// Characters after the campaign id in an order id the reservation script makes.
const ID_TAIL: usize = 33;

impl ReservedRow {
    fn event<E: serde::de::Error>(self) -> Result<OrderEvent, E> {
        let bad = |what: &str| E::custom(format!("reserved row of {:?}: {what}", self.order_id));
        let cut = self.order_id.len().checked_sub(ID_TAIL).ok_or_else(|| bad("short order id"))?;
        // An ASCII '.' is always a character boundary.
        if cut == 0 || self.order_id.as_bytes()[cut] != b'.' {
            return Err(bad("order id without a campaign"));
        }
        let items = decode_lines(&self.lines).ok_or_else(|| bad("malformed lines"))?;
        Ok(OrderEvent {
            campaign_id: self.order_id[..cut].to_owned(),
            order_id: self.order_id,
            user_id: self.user_id,
            status: OrderStatus::PendingPayment,
            items,
            total_cents: self.total_cents,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            paid_ms: 0,
            payment_window_secs: self.payment_window_secs,
            event_ms: self.created_ms,
            idempotency_key: Some(self.idempotency_key),
            payment_event: None,
            trace: self.extra.and_then(|x| x.trace),
        })
    }
}

impl Batch {
    fn events<E: serde::de::Error>(self) -> Result<Vec<OrderEvent>, E> {
        let mut events = match (self.version, self.events) {
            (2, Some(events)) => events,
            (3, events) => events.unwrap_or_default(),
            (version, _) => return Err(E::custom(format!("not a version 2 or 3 body (version {version})"))),
        };
        events.reserve(self.reserved.len());
        for row in self.reserved {
            events.push(row.event()?);
        }
        Ok(events)
    }
}

/// Lines as text, `sku:quantity:price_cents`, comma-separated: how a version 3 row and
/// an `orders` row carry them. Sku ids are `[A-Za-z0-9_-]` (checked at launch), so
/// neither separator can occur in one.
pub fn encode_lines(items: &[OrderItem]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(items.len() * 24);
    for (i, item) in items.iter().enumerate() {
        let sep = if i > 0 { "," } else { "" };
        let _ = write!(out, "{sep}{}:{}:{}", item.sku_id, item.quantity, item.price_cents);
    }
    out
}

/// The lines of such a text; `None` when it is malformed.
pub fn decode_lines(text: &str) -> Option<Vec<OrderItem>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let (sku, qty, price) = (parts.next()?, parts.next()?, parts.next()?);
            Some(OrderItem {
                sku_id: sku.to_owned(),
                quantity: qty.parse().ok()?,
                price_cents: price.parse().ok()?,
            })
        })
        .collect()
}

impl OrderMessage {
    /// The events of a message body, each decoded once, straight into its struct: the
    /// body's first key tells the version (`{"version":` is how the scripts and the
    /// relay write versions 2 and 3), and only a body that fails as that version is
    /// tried as the other (an untagged enum would first buffer the whole body as a
    /// JSON tree).
    pub fn parse(body: &[u8]) -> Result<Vec<OrderEvent>, serde_json::Error> {
        let batch = || serde_json::from_slice::<Batch>(body).and_then(Batch::events);
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

    const ID: &str = "c-1.0193a0b1c2d3800000000000000000a1";

    fn reserved(order_id: &str, user: &str, trace: Option<&str>) -> OrderEvent {
        OrderEvent {
            order_id: order_id.into(),
            campaign_id: order_id[..order_id.len() - 33].into(),
            user_id: user.into(),
            status: OrderStatus::PendingPayment,
            items: vec![
                OrderItem { sku_id: "a-1".into(), quantity: 2, price_cents: 150 },
                OrderItem { sku_id: "b_2".into(), quantity: 1, price_cents: -5 },
            ],
            total_cents: 295,
            created_ms: 10,
            expires_ms: 70_010,
            paid_ms: 0,
            payment_window_secs: 70,
            event_ms: 10,
            idempotency_key: Some("k\"1".into()),
            payment_event: None,
            trace: trace.map(str::to_owned),
        }
    }

    #[test]
    fn a_version_3_row_is_the_whole_reservation_event() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let body = format!(
            r#"{{"version":3,"reserved":[["{ID}","u\"x","k\"1","a-1:2:150,b_2:1:-5",295,10,70010,70],["a.b.0193a0b1c2d3800000000000000000a2","v","k\"1","a-1:2:150,b_2:1:-5",295,10,70010,70,{{"trace":"{tp}"}}]]}}"#
        );
        let events = OrderMessage::parse(body.as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![reserved(ID, "u\"x", None), reserved("a.b.0193a0b1c2d3800000000000000000a2", "v", Some(tp))]
        );
        assert_eq!(events[1].campaign_id, "a.b");
        // Whole events and rows in one body, in either key order.
        let v1 = serde_json::to_string(&OrderMessage::Single(event("x"))).unwrap();
        for body in [
            format!(r#"{{"version":3,"events":[{v1}],"reserved":[["{ID}","u","k","a:1:1",1,1,2,1]]}}"#),
            format!(r#"{{"reserved":[["{ID}","u","k","a:1:1",1,1,2,1]],"events":[{v1}],"version":3}}"#),
        ] {
            let ids: Vec<String> =
                OrderMessage::parse(body.as_bytes()).unwrap().into_iter().map(|e| e.order_id).collect();
            assert_eq!(ids, vec!["x".to_owned(), ID.to_owned()]);
        }
    }

    #[test]
    fn a_malformed_version_3_row_fails_the_message() {
        for row in [
            r#"["c.1","u","k","a:1:1",1,1,2,1]"#, // not a script-made id
            r#"["xyz0193a0b1c2d3800000000000000000a1","u","k","a:1:1",1,1,2,1]"#, // no campaign
            r#"[".0193a0b1c2d3800000000000000000a1","u","k","a:1:1",1,1,2,1]"#, // empty campaign
            r#"["c-1.0193a0b1c2d3800000000000000000a1","u","k","a:1",1,1,2,1]"#, // lines
            r#"["c-1.0193a0b1c2d3800000000000000000a1","u","k","a:1:1",1,1,2]"#, // short
        ] {
            let body = format!(r#"{{"version":3,"reserved":[{row}]}}"#);
            assert!(OrderMessage::parse(body.as_bytes()).is_err(), "{row}");
        }
    }

    #[test]
    fn lines_round_trip_through_their_text() {
        let items = vec![
            OrderItem { sku_id: "phone-1_X".into(), quantity: 2, price_cents: 19_900 },
            OrderItem { sku_id: "z".into(), quantity: 1_000_000_000, price_cents: -5 },
        ];
        let text = encode_lines(&items);
        assert_eq!(text, "phone-1_X:2:19900,z:1000000000:-5");
        assert_eq!(decode_lines(&text), Some(items));
        assert_eq!(decode_lines(""), Some(Vec::new()));
        for bad in ["a", "a:1", "a:x:1", "a:1:1,", "a:-1:1"] {
            assert_eq!(decode_lines(bad), None, "{bad}");
        }
    }
}
