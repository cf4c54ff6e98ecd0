//! Domain types. Each id is a newtype whose `parse` is the only way to build it, so a
//! value that exists is valid; everything past the HTTP edge takes these, not strings.

use std::fmt;

use common::message::OrderItem;

/// Longest campaign, sku and user id.
pub const MAX_ID_LEN: usize = 64;
/// Longest idempotency key or payment event id.
pub const MAX_TOKEN_LEN: usize = 128;
/// Most lines in one order.
pub const MAX_LINES: usize = 16;
/// Most units of one line (the largest stock of a sku: more can never be granted, and
/// larger numbers would lose precision in the scripts' number format).
pub const MAX_QUANTITY: u64 = 1_000_000_000;

/// The ids as the parsers below accept them, as JSON-schema patterns: the OpenAPI
/// document states these (a test checks strings drawn from each parse).
pub const OPERATOR_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
pub const TOKEN_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,128}$";
pub const ORDER_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}[.][0-9a-fA-F]{32}$";

/// Why a value was refused; `field` names what the client sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// An operator-chosen campaign id: `[A-Za-z0-9_-]{1,64}`.
    CampaignId
);
string_id!(
    /// An operator-chosen sku id: `[A-Za-z0-9_-]{1,64}`.
    SkuId
);
string_id!(
    /// A buyer, from the JWT `sub`: 1..=64 characters.
    UserId
);
string_id!(
    /// A client's idempotency key: 1..=128 characters of `[A-Za-z0-9_.:-]`.
    IdempotencyKey
);
string_id!(
    /// An order id: `<campaign>.<32 hex>` (a UUIDv7), unique across processes. The
    /// campaign part routes an order to its campaign's keys; clients treat it as opaque.
    OrderId
);
string_id!(
    /// A payment provider's event id: 1..=128 characters of `[A-Za-z0-9_.:-]`.
    EventId
);

fn parse_operator_id(field: &'static str, s: &str) -> Result<String, InvalidInput> {
    if s.is_empty() || s.len() > MAX_ID_LEN || !s.bytes().all(is_id_byte) {
        return Err(InvalidInput::new(field, "must be 1..=64 characters of [A-Za-z0-9_-]"));
    }
    Ok(s.to_owned())
}

fn parse_token(field: &'static str, s: &str) -> Result<String, InvalidInput> {
    let ok = !s.is_empty()
        && s.len() <= MAX_TOKEN_LEN
        && s.bytes().all(|b| is_id_byte(b) || b == b'.' || b == b':');
    if !ok {
        return Err(InvalidInput::new(field, "must be 1..=128 characters of [A-Za-z0-9_.:-]"));
    }
    Ok(s.to_owned())
}

impl CampaignId {
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        parse_operator_id("campaign_id", s).map(Self)
    }
}

impl SkuId {
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        parse_operator_id("sku_id", s).map(Self)
    }
}

impl UserId {
    /// Any 1..=64 characters except control characters (the `sub` of a signed token).
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        let n = s.chars().count();
        if n == 0 || n > MAX_ID_LEN || s.chars().any(char::is_control) {
            return Err(InvalidInput::new("sub", "must be 1..=64 characters, none a control character"));
        }
        Ok(Self(s.to_owned()))
    }
}

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        parse_token("Idempotency-Key", s).map(Self)
    }
}

impl EventId {
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        parse_token("event_id", s).map(Self)
    }
}

impl CampaignId {
    /// A shard's hash-tag identity (`<campaign>/<shard>.<salt>`): keys of shard `s`
    /// are built from it as from a campaign id. Only [`crate::shards::ShardMap`] makes
    /// these; no input parses to one (`/` and `.` are not id characters), so a shard
    /// never collides with a campaign.
    pub(crate) fn shard_tag(campaign: &CampaignId, shard: usize, salt: u32) -> Self {
        Self(format!("{campaign}/{shard}.{salt}"))
    }

    /// A campaign id or a shard tag, as an `outbox <tag>` notice names it.
    pub fn parse_tag(s: &str) -> Result<Self, InvalidInput> {
        let Some((campaign, rest)) = s.split_once('/') else {
            return Self::parse(s);
        };
        let ok = rest.split_once('.').is_some_and(|(shard, salt)| {
            !shard.is_empty()
                && !salt.is_empty()
                && (shard.len() + salt.len()) <= 12
                && shard.bytes().chain(salt.bytes()).all(|b| b.is_ascii_digit())
        });
        if !ok {
            return Err(InvalidInput::new("campaign_id", "not a shard tag"));
        }
        Self::parse(campaign).map(|_| Self(s.to_owned()))
    }

    /// The campaign a shard tag belongs to (a campaign id is its own).
    pub fn campaign_of_tag(&self) -> CampaignId {
        Self(self.0.split_once('/').map_or(self.0.as_str(), |(c, _)| c).to_owned())
    }
}

/// What names a new order before it exists: the part of its id derived from (campaign,
/// user, idempotency key), `8` + 17 hex + 2 hex of the shard
/// ([`crate::order_ids::OrderIds`]). `reserve.lua` puts the order's creation time in
/// front of it to make the id (`<campaign>.<12 hex of ms><ref>`), so ids grow with
/// time (MySQL inserts them in order), and the order's Redis key is named by the ref
/// alone, which a retry derives again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderRef(String);

impl OrderRef {
    pub(crate) fn derived(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl OrderId {
    /// The creation time (ms) an id made from a ref carries; `None` for ids of builds
    /// before (UUIDv7).
    pub fn created_ms(&self) -> Option<i64> {
        let (time, _) = self.made_from_ref()?;
        i64::from_str_radix(time, 16).ok()
    }

    /// What names the order's Redis key: the ref of an id made from one (its last 20
    /// hex digits, led by the `8` no UUIDv7 has there), else the whole id (orders of
    /// builds before derived ids: random UUIDv7 ids, a `7` there).
    pub fn key_part(&self) -> &str {
        self.made_from_ref().map_or(&self.0, |(_, r)| r)
    }

    /// An id made from a ref, split into its time (12 hex digits) and its ref; `None`
    /// for ids of builds before. The one place that reads the id's layout (the Lua side
    /// reads it in `deadlines.lua` `order_key` and the prelude's `is_order_of`).
    fn made_from_ref(&self) -> Option<(&str, &str)> {
        let suffix_at = self.0.len().checked_sub(32)?;
        if self.0.as_bytes().get(suffix_at + 12) != Some(&b'8') {
            return None;
        }
        Some((self.0.get(suffix_at..suffix_at + 12)?, self.0.get(suffix_at + 12..)?))
    }

    /// The id `reserve.lua` gives an order it made from `order_ref` at `created_ms`
    /// (`<campaign>.<12 hex of ms><ref>`).
    pub(crate) fn of_ref(campaign: &CampaignId, created_ms: i64, order_ref: &str) -> Self {
        Self(format!("{campaign}.{created_ms:012x}{order_ref}"))
    }

    /// A new, unique order id for `campaign`.
    pub fn generate(campaign: &CampaignId) -> Self {
        Self(format!("{campaign}.{}", uuid::Uuid::now_v7().simple()))
    }

    /// A new order id for shard `shard` of `campaign`: the last two hex digits name
    /// the shard (the rest stays a UUIDv7 prefix with 116 random-or-time bits), so
    /// releases and payments find the order's shard from its id alone.
    pub fn generate_in(campaign: &CampaignId, shard: usize) -> Self {
        let hex = uuid::Uuid::now_v7().simple().to_string();
        Self(format!("{campaign}.{}{:02x}", &hex[..30], shard % 256))
    }

    /// The shard number the id carries (meaningful only in a sharded campaign).
    pub fn shard_hint(&self) -> usize {
        let tail = self.0.get(self.0.len().saturating_sub(2)..).unwrap_or("0");
        usize::from_str_radix(tail, 16).unwrap_or(0)
    }

    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        let bad = || InvalidInput::new("order_id", "not an order id");
        let (campaign, suffix) = s.rsplit_once('.').ok_or_else(bad)?;
        CampaignId::parse(campaign).map_err(|_| bad())?;
        if suffix.len() != 32 || !suffix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }

    /// The campaign this order belongs to.
    pub fn campaign(&self) -> CampaignId {
        let campaign = self.0.rsplit_once('.').map_or("", |(c, _)| c);
        CampaignId(campaign.to_owned())
    }
}

/// One requested line: a sku and a quantity of 1..=[`MAX_QUANTITY`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub sku: SkuId,
    pub quantity: u64,
}

/// The lines of one order: 1..=16, distinct skus, each quantity 1..=[`MAX_QUANTITY`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLines(Vec<OrderLine>);

impl OrderLines {
    pub fn parse(lines: Vec<(String, u64)>) -> Result<Self, InvalidInput> {
        Self::parse_from(&lines)
    }

    /// [`Self::parse`] of lines whose skus are borrowed (e.g. from the request's body).
    pub fn parse_from<S: AsRef<str>>(lines: &[(S, u64)]) -> Result<Self, InvalidInput> {
        if lines.is_empty() || lines.len() > MAX_LINES {
            return Err(InvalidInput::new("items", "must have 1..=16 lines"));
        }
        let mut out: Vec<OrderLine> = Vec::with_capacity(lines.len());
        for (sku, quantity) in lines {
            let (sku, quantity) = (SkuId::parse(sku.as_ref())?, *quantity);
            if quantity == 0 || quantity > MAX_QUANTITY {
                return Err(InvalidInput::new("quantity", format!("must be 1..={MAX_QUANTITY}")));
            }
            if out.iter().any(|l| l.sku == sku) {
                return Err(InvalidInput::new("items", format!("sku {sku} appears twice")));
            }
            out.push(OrderLine { sku, quantity });
        }
        Ok(Self(out))
    }

    pub fn iter(&self) -> impl Iterator<Item = &OrderLine> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same order written the same way whatever the order of its lines: what an
    /// idempotency key is bound to.
    pub fn fingerprint(&self) -> String {
        let mut out = String::with_capacity(self.0.len() * 24);
        self.write_fingerprint(&mut out);
        out
    }

    /// [`Self::fingerprint`] written into `out` (emptied first): one line, the most
    /// common order, needs no sorting.
    pub fn write_fingerprint<'o>(&self, out: &'o mut String) -> &'o str {
        use std::fmt::Write;
        out.clear();
        let mut push = |l: &OrderLine| {
            out.push_str(l.sku.as_str());
            out.push('*');
            // Writing into a String cannot fail.
            let _ = write!(out, "{};", l.quantity);
        };
        if let [line] = self.0.as_slice() {
            push(line);
        } else {
            let mut lines: Vec<&OrderLine> = self.0.iter().collect();
            lines.sort_by(|a, b| a.sku.cmp(&b.sku));
            lines.into_iter().for_each(&mut push);
        }
        out
    }
}

/// A granted reservation, as the buyer is told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub order_id: OrderId,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// What became of a reservation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved(Reservation),
    /// The same idempotency key with the same lines: the first answer again.
    Replayed(Reservation),
    /// The same idempotency key with other lines.
    KeyReused,
    CampaignNotFound,
    SkuNotFound(SkuId),
    NotActive,
    SoldOut(SkuId),
    LimitExceeded {
        held: u64,
        limit: u64,
    },
    /// The campaign's `max_orders_per_sec` was reached in this second.
    RateLimited {
        retry_after_ms: u64,
    },
}

/// Why a reservation is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    Cancelled,
    Expired,
}

impl ReleaseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }
}

/// What became of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    Released,
    NotFound,
    /// Already paid, cancelled, expired or refund-required: nothing was changed.
    NotPending(common::message::OrderStatus),
    /// An expiry asked for before the order's deadline: nothing was changed.
    NotDue {
        expires_ms: i64,
    },
}

/// A payment provider's verdict (the callback's `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PaymentStatus {
    Succeeded,
    Failed,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// What became of a payment callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    Paid,
    /// Paid after the order was cancelled or expired: the money goes back, not the units.
    RefundRequired,
    /// A failed payment: noted, order unchanged (its state is given).
    FailedNoted(common::message::OrderStatus),
    /// This event id was seen before for this order: no effect (the order's state is given).
    Duplicate(common::message::OrderStatus),
    /// This event id was seen before for another order: nothing changes.
    EventConflict,
    /// The order was already paid or refund-required: no effect.
    AlreadySettled(common::message::OrderStatus),
    AmountMismatch {
        total_cents: i64,
    },
    NotFound,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Strings of a `^...$` pattern (the generator takes it without the anchors).
    fn unanchored(pattern: &str) -> proptest::string::RegexGeneratorStrategy<String> {
        let inner = pattern.strip_prefix('^').and_then(|p| p.strip_suffix('$')).unwrap();
        proptest::string::string_regex(inner).unwrap()
    }

    proptest! {
        /// What the OpenAPI document promises is accepted: every string of each pattern parses.
        #[test]
        fn every_string_of_the_documented_patterns_parses(
            id in unanchored(OPERATOR_ID_PATTERN),
            token in unanchored(TOKEN_PATTERN),
            order in unanchored(ORDER_ID_PATTERN),
        ) {
            prop_assert!(CampaignId::parse(&id).is_ok() && SkuId::parse(&id).is_ok());
            prop_assert!(IdempotencyKey::parse(&token).is_ok() && EventId::parse(&token).is_ok());
            prop_assert!(OrderId::parse(&order).is_ok());
        }
    }

    #[test]
    fn operator_ids_accept_only_the_contract_alphabet() {
        assert!(CampaignId::parse("spring-sale_2").is_ok());
        assert!(CampaignId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a.b", "a:b", "é", "{x}", &"a".repeat(65)] {
            assert!(CampaignId::parse(bad).is_err(), "{bad:?}");
            assert!(SkuId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_ids_allow_unicode_but_not_control_characters() {
        assert!(UserId::parse("usér-1 ✓").is_ok());
        assert!(UserId::parse(&"é".repeat(64)).is_ok());
        assert!(UserId::parse(&"é".repeat(65)).is_err());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a\nb").is_err());
    }

    #[test]
    fn idempotency_keys_follow_the_contract() {
        assert!(IdempotencyKey::parse("abc.DEF:1_2-3").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(128)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("a/b").is_err());
        assert!(IdempotencyKey::parse("").is_err());
    }

    #[test]
    fn order_ids_round_trip_and_name_their_campaign() {
        let c = CampaignId::parse("spring-sale").unwrap();
        let a = OrderId::generate(&c);
        let b = OrderId::generate(&c);
        assert_ne!(a, b);
        let parsed = OrderId::parse(a.as_str()).unwrap();
        assert_eq!(parsed.campaign(), c);
        assert!(OrderId::parse("spring-sale.xyz").is_err());
        assert!(OrderId::parse("no-dot").is_err());
        assert!(OrderId::parse("bad campaign.0123456789abcdef0123456789abcdef").is_err());
    }

    #[test]
    fn lines_are_bounded_distinct_and_positive() {
        let ok = OrderLines::parse(vec![("a".into(), 1), ("b".into(), 2)]).unwrap();
        assert_eq!(ok.len(), 2);
        assert!(OrderLines::parse(vec![]).is_err());
        assert!(OrderLines::parse(vec![("a".into(), 0)]).is_err());
        assert!(OrderLines::parse(vec![("a".into(), 1), ("a".into(), 2)]).is_err());
        let seventeen = (0..17).map(|i| (format!("s{i}"), 1)).collect();
        assert!(OrderLines::parse(seventeen).is_err());
        let sixteen = (0..16).map(|i| (format!("s{i}"), 1)).collect();
        assert!(OrderLines::parse(sixteen).is_ok());
    }

    #[test]
    fn fingerprint_ignores_line_order_but_not_quantities() {
        let a = OrderLines::parse(vec![("a".into(), 1), ("b".into(), 2)]).unwrap();
        let b = OrderLines::parse(vec![("b".into(), 2), ("a".into(), 1)]).unwrap();
        let c = OrderLines::parse(vec![("a".into(), 2), ("b".into(), 1)]).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint(), "a*1;b*2;");
        // Written into a buffer that held another order's: the same text.
        let one = OrderLines::parse(vec![("sku-9".into(), 12)]).unwrap();
        let mut buf = String::from("left over");
        assert_eq!(one.write_fingerprint(&mut buf), "sku-9*12;");
        assert_eq!(b.write_fingerprint(&mut buf), a.fingerprint());
    }
}
