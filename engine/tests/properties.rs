//! Property test: for any sequence of reserve / release / confirm from several users,
//! the counters in Redis match a model after every step: `available + reserved + sold
//! = stock_total` per sku, nothing negative, no user over the limit.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;

use common::message::OrderStatus;
use engine::domain::{
    ConfirmOutcome, EventId, OrderId, PaymentStatus, ReleaseOutcome, ReleaseReason, ReserveOutcome,
};
use engine::Engine;
use proptest::prelude::*;
use support::*;

const SKUS: [&str; 3] = ["a", "b", "c"];
const STOCK: u64 = 6;
const LIMIT: u64 = 4;
const USERS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    /// user, (sku index, qty) lines, idempotency key number
    Reserve(usize, Vec<(usize, u64)>, u8),
    Cancel(usize),
    Expire(usize),
    Pay(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..USERS, prop::collection::vec((0..SKUS.len(), 1..4u64), 1..3), 0..6u8)
            .prop_map(|(u, l, k)| Op::Reserve(u, l, k)),
        1 => (0..64usize).prop_map(Op::Cancel),
        1 => (0..64usize).prop_map(Op::Expire),
        2 => (0..64usize, any::<bool>()).prop_map(|(i, ok)| Op::Pay(i, ok)),
    ]
}

#[derive(Debug)]
struct ModelOrder {
    id: OrderId,
    user: usize,
    lines: Vec<(usize, u64)>,
    status: OrderStatus,
    total: i64,
}

async fn run(engine: &Engine, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let c = cid("p");
    let mut orders: Vec<ModelOrder> = Vec::new();
    let mut keys: HashMap<(usize, u8), usize> = HashMap::new();
    let mut event = 0;
    for op in ops {
        match op {
            Op::Reserve(u, mut l, k) => {
                l.sort();
                l.dedup_by_key(|x| x.0);
                let req = lines(&l.iter().map(|(s, q)| (SKUS[*s], *q)).collect::<Vec<_>>());
                let key = key(&format!("k{k}"));
                let out = engine.reserve(&c, &user(&format!("u{u}")), &key, &req).await.unwrap();
                match (out, keys.get(&(u, k))) {
                    (ReserveOutcome::Reserved(r), None) => {
                        keys.insert((u, k), orders.len());
                        orders.push(ModelOrder {
                            id: r.order_id,
                            user: u,
                            lines: l,
                            status: OrderStatus::PendingPayment,
                            total: r.total_cents,
                        });
                    }
                    (ReserveOutcome::Replayed(r), Some(&i)) => prop_assert_eq!(&r.order_id, &orders[i].id),
                    (ReserveOutcome::KeyReused, Some(&i)) => prop_assert_ne!(&orders[i].lines, &l),
                    (ReserveOutcome::SoldOut(_) | ReserveOutcome::LimitExceeded { .. }, None) => {}
                    (other, seen) => prop_assert!(false, "{other:?} with key seen {seen:?}"),
                }
            }
            Op::Cancel(i) | Op::Expire(i) if orders.is_empty() => {
                let _ = i;
            }
            Op::Cancel(i) | Op::Expire(i) => {
                let reason = if matches!(op, Op::Cancel(_)) {
                    ReleaseReason::Cancelled
                } else {
                    ReleaseReason::Expired
                };
                let n = orders.len();
                let o = &mut orders[i % n];
                let out = engine.release(&o.id, reason).await.unwrap();
                match (o.status, reason, out) {
                    (OrderStatus::PendingPayment, ReleaseReason::Cancelled, ReleaseOutcome::Released) => {
                        o.status = OrderStatus::Cancelled;
                    }
                    // The payment window (900 s) has not passed: expiry must refuse.
                    (OrderStatus::PendingPayment, ReleaseReason::Expired, ReleaseOutcome::NotDue { .. }) => {}
                    (s, _, ReleaseOutcome::NotPending(now)) => prop_assert_eq!(s, now),
                    (s, r, out) => prop_assert!(false, "{s:?} {r:?} -> {out:?}"),
                }
            }
            Op::Pay(_, _) if orders.is_empty() => {}
            Op::Pay(i, ok) => {
                event += 1;
                let n = orders.len();
                let o = &mut orders[i % n];
                let ev = EventId::parse(&format!("e{event}")).unwrap();
                let status = if ok { PaymentStatus::Succeeded } else { PaymentStatus::Failed };
                let out = engine.confirm(&o.id, &ev, o.total, status).await.unwrap();
                let expected = match (ok, o.status) {
                    (false, s) => ConfirmOutcome::FailedNoted(s),
                    (true, OrderStatus::PendingPayment) => ConfirmOutcome::Paid,
                    (true, OrderStatus::Cancelled | OrderStatus::Expired) => ConfirmOutcome::RefundRequired,
                    (true, s) => ConfirmOutcome::AlreadySettled(s),
                };
                prop_assert_eq!(&out, &expected);
                match out {
                    ConfirmOutcome::Paid => o.status = OrderStatus::Paid,
                    ConfirmOutcome::RefundRequired => o.status = OrderStatus::RefundRequired,
                    _ => {}
                }
            }
        }
        check(engine, &orders).await?;
    }
    Ok(())
}

async fn check(engine: &Engine, orders: &[ModelOrder]) -> Result<(), TestCaseError> {
    let skus: Vec<_> = SKUS.iter().map(|s| sku(s)).collect();
    let counters = engine.counters(&cid("p"), &skus).await.unwrap();
    for (i, c) in counters.iter().enumerate() {
        let units = |status: OrderStatus| -> u64 {
            orders
                .iter()
                .filter(|o| o.status == status)
                .flat_map(|o| o.lines.iter())
                .filter(|(s, _)| *s == i)
                .map(|(_, q)| q)
                .sum()
        };
        prop_assert_eq!(c.available + c.reserved + c.sold, c.total);
        prop_assert_eq!(c.total, STOCK);
        prop_assert_eq!(c.reserved, units(OrderStatus::PendingPayment), "reserved of {}", SKUS[i]);
        prop_assert_eq!(c.sold, units(OrderStatus::Paid), "sold of {}", SKUS[i]);
    }
    for u in 0..USERS {
        let held: u64 = orders
            .iter()
            .filter(|o| o.user == u && matches!(o.status, OrderStatus::PendingPayment | OrderStatus::Paid))
            .flat_map(|o| o.lines.iter().map(|(_, q)| q))
            .sum();
        prop_assert!(held <= LIMIT, "user {u} holds {held}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn counters_always_add_up(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let ns = Ns::new();
            let engine = ns.engine();
            launch(&engine, &open_campaign("p", &SKUS.map(|s| (s, STOCK, 125)), LIMIT)).await;
            run(&engine, ops).await
        })?;
    }
}
