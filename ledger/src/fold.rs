//! The pure fold of a batch of order events into row changes: no MySQL here.
//!
//! Order events may arrive more than once and in any order. Per order the fold keeps
//! the furthest state it has seen (see [`OrderStatus::can_reach`]) and moves the
//! order's units between the stock buckets of the old and the new state, so folding
//! any permutation of any multiset of an order's events gives the same rows. The
//! moves of a batch are summed per sku: only the batch's final state must fit the
//! stock. An order MySQL does not hold that was created before its campaign was
//! rebuilt from MySQL was lost with Redis's data (its units were sold again): it is
//! reported, never inserted.

use std::collections::{BTreeMap, HashMap};

use common::message::{OrderEvent, OrderStatus, StockBucket};

use crate::rows::Applied;

/// What a batch changes: rows to insert and to advance, net stock moves.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// Orders not in MySQL yet: the furthest event seen of each, in arrival order.
    pub inserts: Vec<&'a OrderEvent>,
    /// Orders in MySQL: their state there and the furthest event seen.
    pub updates: BTreeMap<&'a str, (OrderStatus, &'a OrderEvent)>,
    /// Net unit moves per (campaign, sku): [available, reserved, sold].
    pub deltas: BTreeMap<(&'a str, &'a str), [i64; 3]>,
    /// Per order (not lost), the ids some event of the batch carries, whichever state it
    /// is in: the reservation's idempotency key and the payment event id ride on
    /// different events, and the furthest event may carry neither.
    pub ids: BTreeMap<&'a str, ReplayIds<'a>>,
    pub applied: Applied,
    insert_index: HashMap<&'a str, usize>,
}

/// An order's idempotency key and payment event id, as far as a batch knows them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayIds<'a> {
    pub idempotency_key: Option<&'a str>,
    pub payment_event: Option<&'a str>,
}

/// Folds `events` given each order's state in MySQL (`in_db`) and when each
/// campaign was last rebuilt from MySQL (`restored`, ms).
pub fn fold<'a>(
    events: &'a [OrderEvent],
    in_db: &HashMap<String, OrderStatus>,
    restored: &HashMap<String, i64>,
) -> Plan<'a> {
    let mut plan = Plan::default();
    for e in events {
        plan.add(e, in_db, restored);
    }
    plan
}

fn bucket_index(b: StockBucket) -> usize {
    match b {
        StockBucket::Available => 0,
        StockBucket::Reserved => 1,
        StockBucket::Sold => 2,
    }
}

impl<'a> Plan<'a> {
    /// Whether the batch inserts this order.
    pub fn inserts_order(&self, id: &str) -> bool {
        self.insert_index.contains_key(id)
    }

    fn move_units(&mut self, e: &'a OrderEvent, from: StockBucket, to: StockBucket) {
        if from == to {
            return;
        }
        for item in &e.items {
            let d = self.deltas.entry((e.campaign_id.as_str(), item.sku_id.as_str())).or_default();
            d[bucket_index(from)] -= item.quantity as i64;
            d[bucket_index(to)] += item.quantity as i64;
        }
    }

    fn add(
        &mut self,
        e: &'a OrderEvent,
        in_db: &HashMap<String, OrderStatus>,
        restored: &HashMap<String, i64>,
    ) {
        let id = e.order_id.as_str();
        let lost = || restored.get(&e.campaign_id).is_some_and(|at| e.created_ms < *at);
        let current = if let Some(&i) = self.insert_index.get(id) {
            Some(self.inserts[i].status)
        } else if let Some((_, seen)) = self.updates.get(id) {
            Some(seen.status)
        } else {
            in_db.get(id).copied()
        };
        if !(current.is_none() && lost()) && (e.idempotency_key.is_some() || e.payment_event.is_some()) {
            let ids = self.ids.entry(id).or_default();
            ids.idempotency_key = ids.idempotency_key.or(e.idempotency_key.as_deref());
            ids.payment_event = ids.payment_event.or(e.payment_event.as_deref());
        }
        match current {
            None if lost() => {
                if !self.applied.lost.iter().any(|l| l == id) {
                    self.applied.lost.push(id.to_owned());
                }
            }
            None => {
                self.insert_index.insert(id, self.inserts.len());
                self.inserts.push(e);
                self.move_units(e, StockBucket::Available, e.status.bucket());
                self.applied.inserted += 1;
            }
            Some(cur) if cur.can_reach(e.status) => {
                self.move_units(e, cur.bucket(), e.status.bucket());
                if let Some(&i) = self.insert_index.get(id) {
                    self.inserts[i] = e;
                } else {
                    let db_status = in_db.get(id).copied().unwrap_or(cur);
                    self.updates.insert(id, (db_status, e));
                    self.applied.advanced += 1;
                }
            }
            Some(_) => self.applied.unchanged += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use common::message::OrderItem;

    use super::*;

    fn ev(order: &str, status: OrderStatus, qty: u64, created_ms: i64) -> OrderEvent {
        OrderEvent {
            order_id: order.into(),
            campaign_id: "c".into(),
            user_id: "u".into(),
            status,
            items: vec![OrderItem { sku_id: "a".into(), quantity: qty, price_cents: 100 }],
            total_cents: qty as i64 * 100,
            created_ms,
            expires_ms: 60_000,
            paid_ms: 0,
            payment_window_secs: 60,
            event_ms: 5,
            idempotency_key: None,
            payment_event: None,
            trace: None,
        }
    }

    fn moves(plan: &Plan<'_>) -> [i64; 3] {
        plan.deltas.get(&("c", "a")).copied().unwrap_or_default()
    }

    #[test]
    fn any_order_and_any_repetition_give_the_same_changes() {
        let events = [
            ev("x", OrderStatus::PendingPayment, 2, 1),
            ev("x", OrderStatus::Paid, 2, 1),
            ev("y", OrderStatus::PendingPayment, 1, 1),
            ev("y", OrderStatus::Cancelled, 1, 1),
            ev("y", OrderStatus::RefundRequired, 1, 1),
        ];
        let (none, never) = (HashMap::new(), HashMap::new());
        let expected = fold(&events, &none, &never);
        assert_eq!(moves(&expected), [-2, 0, 2]);
        assert_eq!((expected.applied.inserted, expected.inserts.len()), (2, 2));
        // Every rotation, reversed too, with every event twice.
        for r in 0..events.len() {
            let mut shuffled: Vec<OrderEvent> =
                events.iter().cycle().skip(r).take(events.len()).cloned().collect();
            shuffled.extend(shuffled.clone().into_iter().rev());
            let plan = fold(&shuffled, &none, &never);
            assert_eq!(moves(&plan), moves(&expected), "rotation {r}");
            let finals: Vec<_> = plan.inserts.iter().map(|e| (e.order_id.as_str(), e.status)).collect();
            assert!(
                finals.contains(&("x", OrderStatus::Paid))
                    && finals.contains(&("y", OrderStatus::RefundRequired))
            );
        }
    }

    #[test]
    fn a_release_and_the_reservation_of_its_unit_in_one_batch_net_out() {
        // A (in MySQL, pending) is cancelled and B reserves the freed unit: the batch
        // moves nothing out of `available`, whatever order the two arrive in.
        let in_db = HashMap::from([("a-order".to_owned(), OrderStatus::PendingPayment)]);
        let events =
            [ev("b-order", OrderStatus::PendingPayment, 1, 2), ev("a-order", OrderStatus::Cancelled, 1, 1)];
        let plan = fold(&events, &in_db, &HashMap::new());
        assert_eq!(moves(&plan), [0, 0, 0]);
        assert_eq!(
            plan.updates.get("a-order").map(|(db, e)| (*db, e.status)),
            Some((OrderStatus::PendingPayment, OrderStatus::Cancelled))
        );
        assert_eq!(plan.inserts.len(), 1);
    }

    #[test]
    fn the_ids_of_an_order_survive_whichever_of_its_events_is_kept() {
        let mut reserved = ev("x", OrderStatus::PendingPayment, 1, 1);
        reserved.idempotency_key = Some("key-1".into());
        let mut paid = ev("x", OrderStatus::Paid, 1, 1);
        paid.payment_event = Some("evt-1".into());
        let want = ReplayIds { idempotency_key: Some("key-1"), payment_event: Some("evt-1") };
        for events in [[reserved.clone(), paid.clone()], [paid, reserved]] {
            let plan = fold(&events, &HashMap::new(), &HashMap::new());
            assert_eq!(plan.inserts.len(), 1);
            assert_eq!(plan.inserts[0].status, OrderStatus::Paid);
            assert_eq!(plan.ids.get("x"), Some(&want));
        }
    }

    #[test]
    fn events_behind_what_mysql_holds_change_nothing() {
        let in_db = HashMap::from([("x".to_owned(), OrderStatus::Expired)]);
        let events = [ev("x", OrderStatus::PendingPayment, 1, 1), ev("x", OrderStatus::Paid, 1, 1)];
        let plan = fold(&events, &in_db, &HashMap::new());
        assert_eq!((plan.applied.unchanged, plan.applied.advanced), (2, 0));
        assert_eq!(moves(&plan), [0, 0, 0]);
        assert!(plan.updates.is_empty() && plan.inserts.is_empty());
    }

    #[test]
    fn orders_created_before_a_rebuild_and_unknown_to_mysql_are_lost_not_inserted() {
        let restored = HashMap::from([("c".to_owned(), 100)]);
        let in_db = HashMap::from([("known".to_owned(), OrderStatus::PendingPayment)]);
        let events = [
            ev("lost", OrderStatus::PendingPayment, 1, 99),
            ev("lost", OrderStatus::Cancelled, 1, 99),
            ev("known", OrderStatus::Paid, 1, 50),
            ev("new", OrderStatus::PendingPayment, 1, 100),
        ];
        let plan = fold(&events, &in_db, &restored);
        assert_eq!(plan.applied.lost, vec!["lost".to_owned()]);
        assert_eq!((plan.applied.inserted, plan.applied.advanced), (1, 1));
        assert_eq!(moves(&plan), [-1, 0, 1]);
    }
}
