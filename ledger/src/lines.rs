//! An order's lines inline in its row (`orders.items`): `sku:quantity:price_cents`,
//! comma-separated. Sku ids are `[A-Za-z0-9_-]` (checked at launch), so neither
//! separator can occur in one. Rows written before the column existed keep their
//! lines in `order_items`; readers take either ([`crate::orders`]).

use std::collections::BTreeMap;

use common::message::{OrderItem, OrderStatus};

use crate::db::{DbError, Result};

/// The column's text for these lines (the same text a version 3 message carries).
pub fn encode(items: &[OrderItem]) -> String {
    common::message::encode_lines(items)
}

/// The lines of a column's text.
pub fn decode(text: &str) -> Result<Vec<OrderItem>> {
    common::message::decode_lines(text).ok_or_else(|| DbError::Corrupt(format!("order lines {text:?}")))
}

/// Units of pending and paid orders per (campaign, sku): what `order_units` holds.
pub type UnitSums<'a> = BTreeMap<(&'a str, &'a str), [i64; 2]>;

/// Adds (`sign` 1) or takes away (-1) one order's units from the sums of its status
/// (only pending and paid orders are counted).
pub fn count<'a>(
    sums: &mut UnitSums<'a>,
    campaign: &'a str,
    status: OrderStatus,
    items: &'a [OrderItem],
    sign: i64,
) {
    let at = match status {
        OrderStatus::PendingPayment => 0,
        OrderStatus::Paid => 1,
        _ => return,
    };
    for item in items {
        sums.entry((campaign, item.sku_id.as_str())).or_default()[at] += sign * item.quantity as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, quantity: u64, price_cents: i64) -> OrderItem {
        OrderItem { sku_id: sku.into(), quantity, price_cents }
    }

    #[test]
    fn lines_round_trip_through_the_column() {
        let items = vec![item("phone-1_X", 2, 19_900), item("case", 1, -5), item("z", 1_000_000_000, 0)];
        let text = encode(&items);
        assert_eq!(text, "phone-1_X:2:19900,case:1:-5,z:1000000000:0");
        assert_eq!(decode(&text).unwrap(), items);
        assert_eq!(decode("").unwrap(), Vec::new());
        assert!(decode("a:1").is_err());
        assert!(decode("a:x:1").is_err());
    }

    #[test]
    fn only_pending_and_paid_units_are_counted() {
        let items = vec![item("a", 2, 1), item("b", 1, 1)];
        let mut sums = UnitSums::new();
        count(&mut sums, "c", OrderStatus::PendingPayment, &items, 1);
        count(&mut sums, "c", OrderStatus::PendingPayment, &items, -1);
        count(&mut sums, "c", OrderStatus::Paid, &items, 1);
        count(&mut sums, "c", OrderStatus::Cancelled, &items, 1);
        assert_eq!(sums[&("c", "a")], [0, 2]);
        assert_eq!(sums[&("c", "b")], [0, 1]);
    }
}
