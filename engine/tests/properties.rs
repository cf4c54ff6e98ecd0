//! Property test: for any sequence of reserve / release / confirm from several users,
//! on a campaign of 1..=4 shards with units moving between shards (whole moves, and
//! moves left half done then finished), the counters in Redis match a model after
//! every step: `available + reserved + sold = stock_total` per sku (per shard: `Σ
//! avail + resv + sold + in transit = stock_total`), nothing negative, no user over
//! the limit, and `sold_out` only when the shards together hold too few units.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;

use common::message::OrderStatus;
use engine::domain::{
    ConfirmOutcome, EventId, OrderId, OrderRef, PaymentStatus, ReleaseOutcome, ReleaseReason, ReserveOutcome,
};
use engine::order_ids::OrderIds;
use engine::scripts::moves::{Move, Step};
use engine::shards::ShardMap;
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
    /// sku index, from shard, to shard, units; `false`: taken only (left in transit)
    Move(usize, usize, usize, u64, bool),
    /// What a stopped process left half done is finished.
    FinishMoves,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..USERS, prop::collection::vec((0..SKUS.len(), 1..4u64), 1..3), 0..6u8)
            .prop_map(|(u, l, k)| Op::Reserve(u, l, k)),
        1 => (0..64usize).prop_map(Op::Cancel),
        1 => (0..64usize).prop_map(Op::Expire),
        2 => (0..64usize, any::<bool>()).prop_map(|(i, ok)| Op::Pay(i, ok)),
        1 => (0..SKUS.len(), 0..4usize, 0..4usize, 1..4u64, any::<bool>())
            .prop_map(|(s, f, t, n, whole)| Op::Move(s, f, t, n, whole)),
        1 => Just(Op::FinishMoves),
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

async fn run(ns: &Ns, engine: &Engine, shards: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let c = cid("p");
    let map = ShardMap::new(&c, shards);
    let mut moves = 0;
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
                    (ReserveOutcome::SoldOut(s), None) => {
                        // No undersell: the shards together hold fewer units than asked.
                        let asked = l.iter().find(|(i, _)| SKUS[*i] == s.as_str()).map_or(0, |(_, q)| *q);
                        let shelves = shard_levels(ns, &map, s.as_str()).await;
                        let held: u64 = shelves.iter().map(|l| l.avail).sum();
                        prop_assert!(held < asked, "sold_out of {} with {} units in the shards", s, held);
                    }
                    (ReserveOutcome::LimitExceeded { .. }, None) => {}
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
            Op::Move(s, from, to, n, whole) => {
                let (from, to) = (from % shards, to % shards);
                if from != to {
                    moves += 1;
                    let id = format!("m{moves}");
                    let sku_id = sku(SKUS[s]);
                    let m = Move {
                        id: &id,
                        campaign: &c,
                        sku: &sku_id,
                        from: map.tag(from),
                        to: map.tag(to),
                        to_shard: to,
                    };
                    let script = engine::scripts::moves::script();
                    let mut raw = ns.raw().await;
                    let inv = engine::scripts::moves::take(&script, &ns.keys(), &m, n, 1);
                    let taken =
                        engine::scripts::moves::decode(inv.invoke_async(&mut raw).await.unwrap()).unwrap();
                    if let (Step::Taken(_), false) = (&taken, whole) {
                        // Left half done by a process that stopped long ago: its record
                        // is older than the stale age (taken at time 0), so whoever
                        // meets it finishes it.
                        let out = ns.keys().moves_out(map.tag(from));
                        let record: String =
                            redis::cmd("HGET").arg(&out).arg(&id).query_async(&mut raw).await.unwrap();
                        let old = format!("{} 0", record.rsplit_once(' ').unwrap().0);
                        let _: () = redis::cmd("HSET")
                            .arg(&out)
                            .arg(&id)
                            .arg(old)
                            .query_async(&mut raw)
                            .await
                            .unwrap();
                    }
                    if let (Step::Taken(units), true) = (taken, whole) {
                        let inv = engine::scripts::moves::give(&script, &ns.keys(), &m, units);
                        let _: redis::Value = inv.invoke_async(&mut raw).await.unwrap();
                        let inv = engine::scripts::moves::settle(&script, &ns.keys(), &m);
                        let _: redis::Value = inv.invoke_async(&mut raw).await.unwrap();
                    }
                }
            }
            Op::FinishMoves => {
                engine.finish_moves(&c, -1).await.unwrap();
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
        check_shards(ns, &map).await?;
    }
    Ok(())
}

/// One sku's counters in one shard.
#[derive(Debug, Default)]
struct Shelf {
    total: i64,
    avail: u64,
    resv: i64,
    sold: i64,
    moved_in: i64,
    moved_out: i64,
}

async fn shard_levels(ns: &Ns, map: &ShardMap, s: &str) -> Vec<Shelf> {
    let mut raw = ns.raw().await;
    let mut out = Vec::new();
    for tag in map.tags() {
        let v: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(ns.keys().stock(tag, &sku(s)))
            .arg("total")
            .arg("avail")
            .arg("resv")
            .arg("sold")
            .arg("in")
            .arg("out")
            .query_async(&mut raw)
            .await
            .unwrap();
        let f = |i: usize| v[i].unwrap_or(0);
        assert!(f(1) >= 0, "negative avail in {tag}");
        out.push(Shelf {
            total: f(0),
            avail: f(1) as u64,
            resv: f(2),
            sold: f(3),
            moved_in: f(4),
            moved_out: f(5),
        });
    }
    out
}

/// Per shard `avail + resv + sold = total + in - out`, nothing negative; over the
/// shards `Σ avail + resv + sold + in transit = stock_total`, where in transit are the
/// donors' move records no receiver has applied.
async fn check_shards(ns: &Ns, map: &ShardMap) -> Result<(), TestCaseError> {
    let mut raw = ns.raw().await;
    let mut in_transit: HashMap<String, i64> = HashMap::new();
    for tag in map.tags() {
        let records: HashMap<String, String> =
            redis::cmd("HGETALL").arg(ns.keys().moves_out(tag)).query_async(&mut raw).await.unwrap();
        for (id, rec) in records {
            let (to, sku_id, units, _) = engine::scripts::moves::parse_record(&rec).unwrap();
            let given: Option<f64> = redis::cmd("ZSCORE")
                .arg(ns.keys().moves_in(map.tag(to)))
                .arg(&id)
                .query_async(&mut raw)
                .await
                .unwrap();
            let given = given.is_some();
            if !given {
                *in_transit.entry(sku_id.to_string()).or_default() += units as i64;
            }
        }
    }
    for s in SKUS {
        let shelves = shard_levels(ns, map, s).await;
        let mut held = 0;
        for sh in &shelves {
            prop_assert!(sh.resv >= 0 && sh.sold >= 0, "{s}: {sh:?}");
            prop_assert_eq!(
                sh.avail as i64 + sh.resv + sh.sold,
                sh.total + sh.moved_in - sh.moved_out,
                "{}: {:?}",
                s,
                sh
            );
            held += sh.avail as i64 + sh.resv + sh.sold;
        }
        let moving = in_transit.get(s).copied().unwrap_or(0);
        prop_assert_eq!(held + moving, STOCK as i64, "{}: {} held, {} in transit", s, held, moving);
        prop_assert_eq!(shelves.iter().map(|sh| sh.total).sum::<i64>(), STOCK as i64);
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
    fn counters_always_add_up(shards in 1..=4usize, ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let ns = Ns::new();
            let engine = ns.engine();
            let mut spec = open_campaign("p", &SKUS.map(|s| (s, STOCK, 125)), LIMIT);
            spec.shards = shards as u16;
            launch(&engine, &spec).await;
            run(&ns, &engine, shards, ops).await
        })?;
    }
}

/// One order request of the batch-equivalence property: user, lines, idempotency key.
type Req = (usize, Vec<(usize, u64)>, u8);

fn request() -> impl Strategy<Value = Req> {
    (0..USERS, prop::collection::vec((0..SKUS.len(), 1..4u64), 1..3), 0..4u8).prop_map(|(u, mut l, k)| {
        l.sort();
        l.dedup_by_key(|x| x.0);
        (u, l, k)
    })
}

/// What an outcome says, less the times (the two runs happen at different moments).
fn shape(r: &Result<engine::scripts::reserve::ReserveReply, engine::EngineError>) -> String {
    match r {
        Ok(reply) => match &reply.outcome {
            ReserveOutcome::Reserved(res) | ReserveOutcome::Replayed(res) => format!(
                "{} {} {} {:?} {:?}",
                if matches!(reply.outcome, ReserveOutcome::Reserved(_)) { "reserved" } else { "replayed" },
                res.order_id.key_part(),
                res.total_cents,
                res.items,
                reply.sold_out
            ),
            other => format!("{other:?} {:?}", reply.sold_out),
        },
        Err(e) => format!("error {e}"),
    }
}

/// Decides `reqs` in batches of the given sizes (one `reserve.lua` call each); returns
/// every outcome and the final counters and user counts.
async fn decide(ns: &Ns, reqs: &[Req], ids: &[OrderRef], sizes: &[usize]) -> (Vec<String>, Vec<String>) {
    let c = cid("p");
    let parsed: Vec<_> = reqs
        .iter()
        .map(|(u, l, k)| {
            let lines: Vec<(&str, u64)> = l.iter().map(|(s, q)| (SKUS[*s], *q)).collect();
            (user(&format!("u{u}")), key(&format!("k{u}-{k}")), support::lines(&lines))
        })
        .collect();
    let mut outcomes = Vec::new();
    let mut at = 0;
    for size in sizes.iter().copied().chain(std::iter::repeat(1)) {
        if at >= reqs.len() {
            break;
        }
        let end = (at + size.max(1)).min(reqs.len());
        let batch: Vec<_> = (at..end).map(|i| (&ids[i], &parsed[i].0, &parsed[i].1, &parsed[i].2)).collect();
        outcomes.extend(ns.reserve_batch_in_script(&c, &batch).await.iter().map(shape));
        at = end;
    }
    let mut raw = ns.raw().await;
    let mut state = Vec::new();
    for s in SKUS {
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(ns.keys().stock(&c, &sku(s)))
            .arg("avail")
            .arg("resv")
            .arg("sold")
            .query_async(&mut raw)
            .await
            .unwrap();
        state.push(format!("{s} {v:?}"));
    }
    // A user's units: one field of the users hash, or (a shard without it) a string.
    let users_hash = ns.settings.engine.users_hash;
    for u in 0..USERS {
        let in_string: Option<String> = redis::cmd("GET")
            .arg(ns.keys().user(&c, &user(&format!("u{u}"))))
            .query_async(&mut raw)
            .await
            .unwrap();
        let in_hash: Option<String> = redis::cmd("HGET")
            .arg(ns.keys().users(&c))
            .arg(format!("u{u}"))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(if users_hash { in_string.is_none() } else { in_hash.is_none() }, "u{u}: the other layout");
        // A field at 0 is a buyer whose orders were all released; a string goes at 0.
        let held = in_string.or(in_hash.filter(|n| n != "0"));
        state.push(format!("u{u} {held:?}"));
    }
    // The deadlines, the buyer set and the outbox's orders (ids and state, in order).
    let deadlines: Vec<String> =
        redis::cmd("LRANGE").arg(ns.keys().deadlines(&c)).arg(0).arg(-1).query_async(&mut raw).await.unwrap();
    // Ids carry their creation time (the two runs differ there): their refs, in order.
    let deadlines: Vec<&str> = deadlines.iter().map(|id| &id[id.len() - 20..]).collect();
    state.push(format!("deadlines {deadlines:?}"));
    let mut buyers: Vec<String> =
        redis::cmd("SMEMBERS").arg(ns.keys().buyers(&c)).query_async(&mut raw).await.unwrap();
    let in_hash: Vec<String> =
        redis::cmd("HKEYS").arg(ns.keys().users(&c)).query_async(&mut raw).await.unwrap();
    assert!(users_hash || in_hash.is_empty(), "a buyer in the users hash of a shard without it");
    buyers.extend(in_hash);
    buyers.sort();
    state.push(format!("buyers {buyers:?}"));
    let entries: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg(ns.keys().outbox(&c)).arg("-").arg("+").query_async(&mut raw).await.unwrap();
    let text: String = entries.iter().flat_map(|(_, fields)| fields.iter().map(String::as_str)).collect();
    let mut in_outbox = Vec::new();
    for id in ids {
        if let Some(at) = text.find(id.as_str()) {
            in_outbox.push((at, id.as_str().to_owned()));
        }
    }
    in_outbox.sort();
    state.push(format!("outbox {:?}", in_outbox.into_iter().map(|(_, id)| id).collect::<Vec<_>>()));
    (outcomes, state)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Any sequence of orders (mixed users, keys, lines, quantities, repeats) decided
    /// in batches of random sizes gives exactly the outcomes and final counters of
    /// deciding them one by one.
    #[test]
    fn batches_decide_exactly_as_one_by_one(
        reqs in prop::collection::vec(request(), 1..40),
        sizes in prop::collection::vec(1..12usize, 1..40),
        users_hash in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (batched, alone) = rt.block_on(async {
            let spec = open_campaign("p", &SKUS.map(|s| (s, STOCK, 125)), LIMIT);
            // Either layout of the users' units (a campaign launched before the users hash).
            let layout = |s: &mut common::config::Settings| s.engine.users_hash = users_hash;
            let (a, b) = (Ns::with(layout), Ns::with(layout));
            launch(&a.engine(), &spec).await;
            launch(&b.engine(), &spec).await;
            // Each request's id derived as the engine derives it: a retry names its order.
            let derive = OrderIds::new(b"property").unwrap();
            let ids: Vec<OrderRef> = reqs
                .iter()
                .map(|(u, _, k)| derive.derive(&cid("p"), 0, &user(&format!("u{u}")), &key(&format!("k{u}-{k}"))))
                .collect();
            (decide(&a, &reqs, &ids, &sizes).await, decide(&b, &reqs, &ids, &[1]).await)
        });
        // The key's model: after a reservation, the same key with the same lines is its
        // replay (in the same batch or a later one), with other lines `KeyReused`.
        let mut first: HashMap<(usize, u8), (usize, String)> = HashMap::new();
        for (i, (u, l, k)) in reqs.iter().enumerate() {
            let out = &alone.0[i];
            match first.get(&(*u, *k)) {
                Some((j, id)) if &reqs[*j].1 == l => {
                    prop_assert!(out.starts_with(&format!("replayed {id} ")), "{i}: {out} (first {j})")
                }
                Some((j, _)) => prop_assert!(out.starts_with("KeyReused"), "{i}: {out} (first {j})"),
                None => {
                    if let Some(id) = out.strip_prefix("reserved ") {
                        let id = id.split(' ').next().unwrap_or_default().to_owned();
                        first.insert((*u, *k), (i, id));
                    }
                }
            }
        }
        prop_assert_eq!(batched, alone);
    }
}
