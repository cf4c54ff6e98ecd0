//! A hot sku split over shards (`shards: N`), through two engines (two gateways'
//! worth) at once: exactly the stock sold, never `sold_out` while a unit is left in any
//! shard, per-user limits and idempotent replays exact, and units freed on one shard
//! still sold to buyers homed on the others. Runs on the one Redis and, in the test
//! script, on the local 3-master Redis Cluster (where the shards sit on three masters).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::domain::{ReleaseReason, ReserveOutcome, UserId};
use engine::shards::ShardMap;
use engine::Engine;
use support::*;

fn sharded(id: &str, stock: u64, limit: u64, shards: u16) -> engine::campaign::CampaignLaunch {
    let mut spec = open_campaign(id, &[("hot", stock, 100)], limit);
    spec.shards = shards;
    spec
}

/// Units available in each shard (raw reads, past the engine).
async fn shelves(ns: &Ns, map: &ShardMap) -> Vec<i64> {
    let mut raw = ns.raw().await;
    let mut out = Vec::new();
    for tag in map.tags() {
        let v: Option<i64> = redis::cmd("HGET")
            .arg(ns.keys().stock(tag, &sku("hot")))
            .arg("avail")
            .query_async(&mut raw)
            .await
            .unwrap();
        out.push(v.unwrap());
    }
    out
}

/// One request's start, end and outcome.
type Answer = (Instant, Instant, UserId, ReserveOutcome);

/// `buyers` buyers, one unit each, spread over `engines`, `concurrency` in flight.
async fn sale(engines: &[Engine], campaign: &str, buyers: Vec<UserId>, concurrency: usize) -> Vec<Answer> {
    let queue = Arc::new(std::sync::Mutex::new(buyers));
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (e, queue, c) = (engines[worker % engines.len()].clone(), Arc::clone(&queue), cid(campaign));
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let Some(u) = queue.lock().unwrap().pop() else { return out };
                let started = Instant::now();
                let r = e.reserve(&c, &u, &key("k1"), &lines(&[("hot", 1)])).await.unwrap();
                out.push((started, Instant::now(), u, r));
            }
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    answers
}

/// No reservation began after a `sold_out` had been answered (nothing was released in
/// between): a `sold_out` was only ever said when no unit was left in any shard.
fn no_undersell(answers: &[Answer]) {
    let first_sold_out = answers
        .iter()
        .filter(|(_, _, _, r)| matches!(r, ReserveOutcome::SoldOut(_)))
        .map(|(_, end, _, _)| *end)
        .min();
    if let Some(t) = first_sold_out {
        let late = answers
            .iter()
            .filter(|(start, _, _, r)| *start > t && matches!(r, ReserveOutcome::Reserved(_)))
            .count();
        assert_eq!(late, 0, "{late} units granted after a sold_out was answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_sku_over_three_shards_sells_exactly_its_stock() {
    let ns = Ns::new();
    let (a, b) = (ns.engine(), ns.engine());
    const STOCK: u64 = 300;
    launch(&a, &sharded("hot", STOCK, 2, 3)).await;
    until_live(&a).await;
    until_live(&b).await;
    let map = ShardMap::new(&cid("hot"), 3);
    assert_eq!(shelves(&ns, &map).await, vec![100, 100, 100]);

    // Per-user limit, exact in the user's home shard: 2 units, a third is refused.
    let greedy = user("greedy");
    for (k, expect_ok) in [("g1", true), ("g2", true), ("g3", false)] {
        let r = a.reserve(&cid("hot"), &greedy, &key(k), &lines(&[("hot", 1)])).await.unwrap();
        assert_eq!(matches!(r, ReserveOutcome::Reserved(_)), expect_ok, "{k}: {r:?}");
        if !expect_ok {
            assert!(matches!(r, ReserveOutcome::LimitExceeded { held: 2, limit: 2 }), "{r:?}");
        }
    }

    // Demand four times the stock, through both engines.
    let buyers: Vec<UserId> = (0..1200).map(|i| user(&format!("b{i}"))).collect();
    let answers = sale(&[a.clone(), b.clone()], "hot", buyers, 48).await;
    let won: Vec<&Answer> =
        answers.iter().filter(|(_, _, _, r)| matches!(r, ReserveOutcome::Reserved(_))).collect();
    assert_eq!(won.len() as u64, STOCK - 2, "every unit sold, none twice");
    assert!(answers
        .iter()
        .all(|(_, _, _, r)| matches!(r, ReserveOutcome::Reserved(_) | ReserveOutcome::SoldOut(_))));
    no_undersell(&answers);
    assert_eq!(shelves(&ns, &map).await, vec![0, 0, 0]);
    let view = a.counters(&cid("hot"), &[sku("hot")]).await.unwrap();
    assert_eq!((view[0].total, view[0].available, view[0].reserved), (STOCK, 0, STOCK));

    // A winner's retry, on either engine, is the same reservation.
    for (i, (_, _, u, r)) in won.iter().take(40).enumerate() {
        let ReserveOutcome::Reserved(first) = r else { unreachable!() };
        let e = if i % 2 == 0 { &a } else { &b };
        let again = e.reserve(&cid("hot"), u, &key("k1"), &lines(&[("hot", 1)])).await.unwrap();
        assert_eq!(again, ReserveOutcome::Replayed(first.clone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_freed_on_one_shard_are_sold_to_buyers_homed_on_the_others() {
    let ns = Ns::new();
    let (a, b) = (ns.engine(), ns.engine());
    const STOCK: u64 = 90;
    launch(&a, &sharded("cx", STOCK, 1, 3)).await;
    let map = ShardMap::new(&cid("cx"), 3);
    let homed = |shard: usize, n: usize, tag: &str| -> Vec<UserId> {
        (0..).map(|i| user(&format!("{tag}{i}"))).filter(|u| map.home(u) == shard).take(n).collect()
    };
    // Everything sold, a third of it to buyers homed on shard 1.
    let mut first: Vec<UserId> = homed(0, 30, "x");
    first.extend(homed(1, 30, "y"));
    first.extend(homed(2, 30, "z"));
    let answers = sale(&[a.clone(), b.clone()], "cx", first, 16).await;
    assert!(answers.iter().all(|(_, _, _, r)| matches!(r, ReserveOutcome::Reserved(_))), "{answers:?}");
    // Every cancellation lands on shard 1.
    let mut freed = 0;
    for (_, _, u, r) in &answers {
        if let (ReserveOutcome::Reserved(res), 1) = (r, map.home(u)) {
            a.release(&res.order_id, ReleaseReason::Cancelled).await.unwrap();
            freed += 1;
        }
    }
    assert_eq!(freed, 30);
    assert_eq!(shelves(&ns, &map).await, vec![0, 30, 0]);
    // The contract's bound for a release to reach every process's sold-out flags (on
    // a cluster the restock notice crosses the cluster bus).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Buyers homed on shards 0 and 2 only: they get every freed unit.
    let mut second = homed(0, 40, "p");
    second.extend(homed(2, 40, "q"));
    let answers = sale(&[a.clone(), b.clone()], "cx", second, 16).await;
    let won = answers.iter().filter(|(_, _, _, r)| matches!(r, ReserveOutcome::Reserved(_))).count();
    assert_eq!(won, 30, "every freed unit sold again");
    no_undersell(&answers);
    assert_eq!(shelves(&ns, &map).await, vec![0, 0, 0]);
    let view = a.counters(&cid("cx"), &[sku("hot")]).await.unwrap();
    assert_eq!((view[0].available, view[0].reserved, view[0].total), (0, STOCK, STOCK));
}

/// Each master's share of a hot sku's script calls (`INFO commandstats`). Needs the
/// cluster and a quiet one: the test script runs it alone, after the other suites.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run alone against the Redis Cluster (scripts/test.sh)"]
async fn each_master_serves_a_fair_share_of_a_hot_sku() {
    let ns = Ns::new();
    let seeds = ns.settings.redis.cluster_seeds();
    assert_eq!(seeds.len(), 3, "needs FLASHSALE__REDIS__CLUSTER_NODES with the three masters");
    let e = ns.engine();
    launch(&e, &sharded("share", 3000, 1, 3)).await;
    let before = script_stats(&seeds).await;
    let buyers: Vec<UserId> = (0..3000).map(|i| user(&format!("s{i}"))).collect();
    let answers = sale(&[e.clone(), ns.engine()], "share", buyers, 32).await;
    assert!(answers.iter().all(|(_, _, _, r)| matches!(r, ReserveOutcome::Reserved(_))));
    let after = script_stats(&seeds).await;
    let calls: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.0 - b.0).collect();
    let usec: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).collect();
    let all: u64 = calls.iter().sum();
    let shares: Vec<f64> = calls.iter().map(|c| *c as f64 / all as f64).collect();
    // Redis CPU inside scripts, per reservation, over the whole sale (the capacity
    // model's input: reservations per second one Redis core can decide).
    let per_order = usec.iter().sum::<u64>() as f64 / answers.len() as f64;
    println!("script calls per master: {calls:?}, shares {shares:.3?}");
    println!("script CPU per master: {usec:?} µs; {per_order:.1} µs per reservation over all masters");
    for s in &shares {
        assert!((0.20..=0.47).contains(s), "shares {shares:?}");
    }
}

/// (EVALSHA + EVAL calls, µs spent in them) each node has served.
async fn script_stats(seeds: &[String]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for node in seeds {
        let client = redis::Client::open(node.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut c).await.unwrap();
        let field = |name: &str, what: &str| -> u64 {
            info.lines()
                .find(|l| l.starts_with(&format!("cmdstat_{name}:")))
                .and_then(|l| l.split(&format!("{what}=")).nth(1))
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        out.push((
            field("evalsha", "calls") + field("eval", "calls"),
            field("evalsha", "usec") + field("eval", "usec"),
        ));
    }
    out
}

/// Redis lost a sharded campaign (a restart with no persistence): rebuilt from the
/// orders MySQL would hold, each order is back in its shard, each user's count in the
/// home shard, and the counters, limits and shard sums are what they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_campaign_lost_by_redis_is_rebuilt_shard_by_shard() {
    use engine::campaign::{CampaignSnapshot, SnapshotOrder};
    use engine::domain::{EventId, PaymentStatus};
    use engine::rebuild::Rebuilt;

    let ns = Ns::new();
    let e = ns.engine();
    let spec = sharded("lost", 60, 2, 3);
    launch(&e, &spec).await;
    let buyers: Vec<UserId> = (0..40).map(|i| user(&format!("r{i}"))).collect();
    let answers = sale(std::slice::from_ref(&e), "lost", buyers, 8).await;
    let mut snapshot = CampaignSnapshot { launch: spec.clone(), orders: Vec::new() };
    for (i, (_, _, _, r)) in answers.iter().enumerate() {
        let ReserveOutcome::Reserved(res) = r else { panic!("{r:?}") };
        match i % 4 {
            0 => {
                let ev = EventId::parse(&format!("ev{i}")).unwrap();
                e.confirm(&res.order_id, &ev, res.total_cents, PaymentStatus::Succeeded).await.unwrap();
            }
            1 => {
                e.release(&res.order_id, ReleaseReason::Cancelled).await.unwrap();
            }
            _ => {}
        }
        let o = e.order(&res.order_id).await.unwrap().unwrap();
        snapshot.orders.push(SnapshotOrder {
            order_id: o.order_id,
            user: user(&o.user),
            status: o.status,
            items: o.items,
            total_cents: o.total_cents,
            created_ms: o.created_ms,
            expires_ms: o.expires_ms,
            paid_ms: o.paid_ms,
            idempotency_key: None,
            payment_event: None,
        });
    }
    let before = e.counters(&cid("lost"), &[sku("hot")]).await.unwrap();
    assert_eq!((before[0].available, before[0].reserved, before[0].sold), (30, 20, 10));

    testkit::delete_keys(&ns.settings.redis, &ns.settings.namespace).await;
    let fresh = ns.engine();
    let rebuilt = fresh.rebuild(&snapshot, &[0, 1, 2], 7).await.unwrap();
    assert!(matches!(rebuilt, Rebuilt::Shards { ref shards, .. } if shards.len() == 3), "{rebuilt:?}");
    let after = fresh.counters(&cid("lost"), &[sku("hot")]).await.unwrap();
    assert_eq!(after, before);
    let map = ShardMap::new(&cid("lost"), 3);
    let on_shelves: i64 = shelves(&ns, &map).await.iter().sum();
    assert_eq!(on_shelves, 30);
    for o in &snapshot.orders {
        let back = fresh.order(&o.order_id).await.unwrap().unwrap();
        assert_eq!(back.status, o.status);
    }
    // A buyer holding one unit may take one more, and no third (limit 2), in the
    // home shard the rebuilt count lives in.
    let held =
        snapshot.orders.iter().find(|o| o.status == common::message::OrderStatus::PendingPayment).unwrap();
    let r = fresh.reserve(&cid("lost"), &held.user, &key("more1"), &lines(&[("hot", 1)])).await.unwrap();
    assert!(matches!(r, ReserveOutcome::Reserved(_)), "{r:?}");
    let r = fresh.reserve(&cid("lost"), &held.user, &key("more2"), &lines(&[("hot", 1)])).await.unwrap();
    assert!(matches!(r, ReserveOutcome::LimitExceeded { held: 2, limit: 2 }), "{r:?}");
    // A second rebuild finds every shard live and changes nothing.
    assert_eq!(fresh.rebuild(&snapshot, &[0, 1, 2], 8).await.unwrap(), Rebuilt::Nothing);
}

/// A move's steps are safe to repeat: the same take twice takes once, the same give
/// twice gives once, and a half-done move is finished exactly once.
#[tokio::test]
async fn a_unit_move_repeated_moves_its_units_once() {
    use engine::scripts::moves::{self, Move, Step};
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &sharded("mv", 30, 1, 3)).await;
    let map = ShardMap::new(&cid("mv"), 3);
    let hot = sku("hot");
    let m = Move { id: "m1", campaign: &cid("mv"), sku: &hot, from: map.tag(0), to: map.tag(2), to_shard: 2 };
    let script = moves::script();
    let mut raw = ns.raw().await;
    for _ in 0..2 {
        let inv = moves::take(&script, &ns.keys(), &m, 4, 1);
        assert_eq!(moves::decode(inv.invoke_async(&mut raw).await.unwrap()).unwrap(), Step::Taken(4));
    }
    assert_eq!(shelves(&ns, &map).await, vec![6, 10, 10], "taken once, 4 in transit");
    let view = e.counters(&cid("mv"), std::slice::from_ref(&hot)).await.unwrap();
    assert_eq!((view[0].available, view[0].total), (30, 30), "units in transit count as available");
    for _ in 0..2 {
        let inv = moves::give(&script, &ns.keys(), &m, 4);
        assert_eq!(moves::decode(inv.invoke_async(&mut raw).await.unwrap()).unwrap(), Step::Given);
    }
    assert_eq!(shelves(&ns, &map).await, vec![6, 10, 14], "given once");
    // The record is still there (not settled): finishing it gives nothing more.
    assert_eq!(e.finish_moves(&cid("mv"), -1).await.unwrap(), 1);
    assert_eq!(e.finish_moves(&cid("mv"), -1).await.unwrap(), 0);
    assert_eq!(shelves(&ns, &map).await, vec![6, 10, 14]);
}

/// A user whose home is shard `shard` of `map`.
fn homed(map: &ShardMap, shard: usize, prefix: &str) -> UserId {
    (0..).map(|i| user(&format!("{prefix}{i}"))).find(|u| map.home(u) == shard).unwrap()
}

fn is_unavailable<T: std::fmt::Debug>(r: &Result<T, engine::EngineError>) -> bool {
    matches!(r, Err(engine::EngineError::Unavailable(_)))
}

/// A shard being rebuilt (its meta says `restoring`) answers 503 on every path until it
/// is whole: no reservation, release, payment, unit move, counter read or tuning
/// touches it, while the campaign's other shards sell on.
#[tokio::test]
async fn a_shard_being_rebuilt_answers_503_on_every_path() {
    use engine::campaign::CampaignTuning;
    use engine::domain::{EventId, PaymentStatus};
    use engine::scripts::moves::{self, Move, Step};

    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &sharded("rb", 30, 5, 3)).await;
    let (c, hot) = (cid("rb"), sku("hot"));
    let map = ShardMap::new(&c, 3);
    let (u1, u0) = (homed(&map, 1, "one-"), homed(&map, 0, "zero-"));
    let one = lines(&[("hot", 1)]);
    let mut held = Vec::new();
    for k in ["a", "b"] {
        let ReserveOutcome::Reserved(r) = e.reserve(&c, &u1, &key(k), &one).await.unwrap() else { panic!() };
        held.push(r);
    }
    let before = shelves(&ns, &map).await;
    let mut raw = ns.raw().await;
    let _: () = redis::cmd("HSET")
        .arg(ns.keys().meta(map.tag(1)))
        .arg("restoring")
        .arg("another-rebuilder")
        .query_async(&mut raw)
        .await
        .unwrap();

    let r = e.reserve(&c, &u1, &key("c"), &one).await;
    assert!(is_unavailable(&r), "reserve: {r:?}");
    let r = e.release(&held[0].order_id, ReleaseReason::Cancelled).await;
    assert!(is_unavailable(&r), "release: {r:?}");
    let ev = EventId::parse("pay-b").unwrap();
    let r = e.confirm(&held[1].order_id, &ev, held[1].total_cents, PaymentStatus::Succeeded).await;
    assert!(is_unavailable(&r), "confirm: {r:?}");
    let r = e.counters(&c, std::slice::from_ref(&hot)).await;
    assert!(is_unavailable(&r), "counters: {r:?}");
    let r = e.tune(&c, &CampaignTuning { per_user_limit: Some(4), ..CampaignTuning::default() }).await;
    assert!(is_unavailable(&r), "tune: {r:?}");
    let script = moves::script();
    let out = Move { id: "m-out", campaign: &c, sku: &hot, from: map.tag(1), to: map.tag(0), to_shard: 0 };
    let step =
        moves::decode(moves::take(&script, &ns.keys(), &out, 3, 1).invoke_async(&mut raw).await.unwrap());
    assert_eq!(step.unwrap(), Step::Restoring, "take from it");
    let into = Move { id: "m-in", campaign: &c, sku: &hot, from: map.tag(0), to: map.tag(1), to_shard: 1 };
    let step =
        moves::decode(moves::give(&script, &ns.keys(), &into, 3).invoke_async(&mut raw).await.unwrap());
    assert_eq!(step.unwrap(), Step::Restoring, "give to it");

    // Nothing in it changed; the other shards sell on.
    assert_eq!(shelves(&ns, &map).await, before);
    for r in &held {
        let state: String = redis::cmd("HGET")
            .arg(ns.keys().order_at(map.tag(1), &r.order_id))
            .arg("state")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(state, "pending_payment");
    }
    let r = e.reserve(&c, &u0, &key("d"), &one).await.unwrap();
    assert!(matches!(r, ReserveOutcome::Reserved(_)), "shard 0 sells: {r:?}");
}

/// One shard of three loses its data (its master restarted empty) mid-sale, with units
/// on their way into it and between the others: rebuilt from MySQL's copy of its
/// orders and from the two surviving shards, it sells again, the campaign holds exactly
/// its stock, and its orders' retries and repeated payment events are answered as
/// before the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lost_shard_is_rebuilt_from_mysql_and_the_surviving_shards() {
    use engine::campaign::{CampaignSnapshot, SnapshotOrder};
    use engine::domain::{ConfirmOutcome, EventId, PaymentStatus};
    use engine::rebuild::{Rebuilt, ShardState};
    use engine::scripts::moves::{self, Move, Step};

    let ns = Ns::new();
    let e = ns.engine();
    let spec = sharded("one", 60, 2, 3);
    launch(&e, &spec).await;
    let (c, hot) = (cid("one"), sku("hot"));
    let map = ShardMap::new(&c, 3);
    let one = lines(&[("hot", 1)]);
    // What MySQL would hold: every order as the outbox told it, with its key and the
    // payment event that paid it.
    let mut snapshot = CampaignSnapshot { launch: spec.clone(), orders: Vec::new() };
    let mut in_lost = Vec::new();
    for i in 0..24 {
        let (u, k) = (user(&format!("b{i}")), key(&format!("k-{i}")));
        let ReserveOutcome::Reserved(r) = e.reserve(&c, &u, &k, &one).await.unwrap() else { panic!() };
        let mut event = None;
        if i % 3 == 0 {
            let ev = EventId::parse(&format!("pay-{i}")).unwrap();
            assert_eq!(
                e.confirm(&r.order_id, &ev, r.total_cents, PaymentStatus::Succeeded).await.unwrap(),
                ConfirmOutcome::Paid
            );
            event = Some(ev);
        } else if i % 3 == 1 {
            e.release(&r.order_id, ReleaseReason::Cancelled).await.unwrap();
        }
        let o = e.order(&r.order_id).await.unwrap().unwrap();
        snapshot.orders.push(SnapshotOrder {
            order_id: o.order_id,
            user: u.clone(),
            status: o.status,
            items: o.items,
            total_cents: o.total_cents,
            created_ms: o.created_ms,
            expires_ms: o.expires_ms,
            paid_ms: o.paid_ms,
            idempotency_key: Some(k.clone()),
            payment_event: event.clone(),
        });
        if map.of_order(&r.order_id) == 1 {
            in_lost.push((u, k, r, event));
        }
    }
    assert!(in_lost.iter().any(|(_, _, _, ev)| ev.is_some()), "a paid order in the shard that is lost");
    // Units in transit: taken from shard 2 for shard 0 and from shard 0 for shard 1.
    let script = moves::script();
    let mut raw = ns.raw().await;
    for (id, from, to, n) in [("to-0", 2, 0, 3), ("to-1", 0, 1, 2)] {
        let m = Move { id, campaign: &c, sku: &hot, from: map.tag(from), to: map.tag(to), to_shard: to };
        let step =
            moves::decode(moves::take(&script, &ns.keys(), &m, n, 1).invoke_async(&mut raw).await.unwrap());
        assert_eq!(step.unwrap(), Step::Taken(n));
    }

    testkit::lose_shard(&ns.settings.redis, &ns.settings.namespace, map.tag(1).as_str()).await;
    let states = e.shard_states(&[(c.clone(), 3)]).await.unwrap();
    assert_eq!(states, vec![vec![ShardState::Live, ShardState::Missing, ShardState::Live]]);
    let (u, k, _, _) = &in_lost[0];
    let r = e.reserve(&c, u, k, &one).await;
    assert!(is_unavailable(&r), "its buyers get 503, never a 404 or a new order: {r:?}");

    let rebuilt = e.rebuild(&snapshot, &[1], 1).await.unwrap();
    assert!(matches!(&rebuilt, Rebuilt::Shards { shards, .. } if shards == &vec![1]), "{rebuilt:?}");
    assert_eq!(e.shard_states(&[(c.clone(), 3)]).await.unwrap(), vec![vec![ShardState::Live; 3]]);
    assert_eq!(e.rebuild(&snapshot, &[1], 1).await.unwrap(), Rebuilt::Nothing, "a redo never overwrites");

    for (u, k, r, event) in &in_lost {
        let again = e.reserve(&c, u, k, &one).await.unwrap();
        assert!(matches!(&again, ReserveOutcome::Replayed(x) if x.order_id == r.order_id), "{again:?}");
        if let Some(ev) = event {
            let again = e.confirm(&r.order_id, ev, r.total_cents, PaymentStatus::Succeeded).await.unwrap();
            assert!(matches!(again, ConfirmOutcome::Duplicate(_)), "{again:?}");
        }
    }
    // The moves left in transit arrive (one into the rebuilt shard); then every unit is
    // in exactly one shard.
    assert_eq!(e.finish_moves(&c, -1).await.unwrap(), 2);
    let mut units = 0;
    for tag in map.tags() {
        let (a, r, s): (i64, i64, i64) = redis::cmd("HMGET")
            .arg(ns.keys().stock(tag, &hot))
            .arg("avail")
            .arg("resv")
            .arg("sold")
            .query_async(&mut raw)
            .await
            .unwrap();
        units += a + r + s;
    }
    assert_eq!(units, 60, "Σ shards (available + reserved + sold) = stock");
    let view = e.counters(&c, std::slice::from_ref(&hot)).await.unwrap();
    assert_eq!(view[0].total, 60);
    assert_eq!(view[0].available + view[0].reserved + view[0].sold, 60);

    // Demand above what is left: exactly the rest sells, then sold_out.
    let left = view[0].available;
    let buyers: Vec<UserId> = (0..left + 20).map(|i| user(&format!("late{i}"))).collect();
    let answers = sale(std::slice::from_ref(&e), "one", buyers, 8).await;
    let won = answers.iter().filter(|(_, _, _, r)| matches!(r, ReserveOutcome::Reserved(_))).count() as u64;
    assert_eq!(won, left, "every unit left sold once, none left unsold");
    let view = e.counters(&c, std::slice::from_ref(&hot)).await.unwrap();
    assert_eq!((view[0].available, view[0].reserved + view[0].sold), (0, 60));
}

/// A user's order over their limit is refused before stock is looked at: it moves no
/// unit between shards, however often it is sent, and the other buyers meanwhile get
/// 201 or `sold_out`, never a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_over_the_limit_moves_no_unit_between_shards() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &sharded("lim", 12, 2, 3)).await;
    let c = cid("lim");
    let map = ShardMap::new(&c, 3);
    let before = shelves(&ns, &map).await;
    let greedy = user("greedy");
    let refusals = {
        let e = e.clone();
        let c = c.clone();
        tokio::spawn(async move {
            let mut refused = 0;
            for i in 0..200 {
                match e.reserve(&c, &greedy, &key(&format!("g{i}")), &lines(&[("hot", 5)])).await {
                    Ok(ReserveOutcome::LimitExceeded { .. }) => refused += 1,
                    other => panic!("an order of 5 against a limit of 2: {other:?}"),
                }
            }
            refused
        })
    };
    assert_eq!(refusals.await.unwrap(), 200);
    assert_eq!(shelves(&ns, &map).await, before, "no unit moved for a refused order");
    let buyers: Vec<UserId> = (0..300).map(|i| user(&format!("other{i}"))).collect();
    let answers = sale(std::slice::from_ref(&e), "lim", buyers, 16).await;
    for (_, _, u, r) in &answers {
        assert!(matches!(r, ReserveOutcome::Reserved(_) | ReserveOutcome::SoldOut(_)), "{u}: {r:?}");
    }
}

/// One clock for moves: a move's taken-at time is Redis's, whatever the clock of the
/// process that took it (here one running a minute ahead), so a move left half done is
/// finished once it is older than the stale age by Redis's clock.
#[tokio::test]
async fn a_move_taken_by_a_process_whose_clock_runs_ahead_is_finished_on_time() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &sharded("clk", 30, 1, 3)).await;
    let (c, hot) = (cid("clk"), sku("hot"));
    let map = ShardMap::new(&c, 3);
    let k = ns.keys();
    // A take as a process a minute ahead would send it (its clock as the last argument).
    let script = engine::scripts::moves::script();
    let mut take = script.prepare_invoke();
    take.key(k.meta(map.tag(0))).key(k.stock(map.tag(0), &hot)).key(k.moves_out(map.tag(0)));
    take.arg("take").arg("skewed").arg(2).arg("hot").arg(4).arg(1).arg(engine::clock::now_ms() + 60_000);
    let mut raw = ns.raw().await;
    let _: redis::Value = take.invoke_async(&mut raw).await.unwrap();
    assert_eq!(shelves(&ns, &map).await, vec![6, 10, 10], "taken");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(e.finish_moves(&c, 200).await.unwrap(), 1, "older than 200 ms by Redis's clock: finished");
    assert_eq!(shelves(&ns, &map).await, vec![6, 10, 14]);
}

/// Sold-out flags across shards: with a 3-shard sku sold out on two engines (two
/// gateways' worth), a unit released on each shard in turn is sold again through
/// either engine within 1 s of its release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_released_on_any_shard_sells_again_everywhere_within_a_second() {
    let ns = Ns::new();
    let (e1, e2) = (ns.engine(), ns.engine());
    until_live(&e1).await;
    until_live(&e2).await;
    launch(&e1, &sharded("rel", 9, 1, 3)).await;
    let c = cid("rel");
    let map = ShardMap::new(&c, 3);
    let buyers: Vec<UserId> = (0..40).map(|i| user(&format!("b{i}"))).collect();
    let answers = sale(&[e1.clone(), e2.clone()], "rel", buyers, 8).await;
    let won: Vec<(UserId, engine::domain::OrderId)> = answers
        .iter()
        .filter_map(|(_, _, u, r)| match r {
            ReserveOutcome::Reserved(res) => Some((u.clone(), res.order_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(won.len(), 9);
    let mut next = 0;
    for shard in 0..3 {
        // Both engines say sold out now (flags set).
        for e in [&e1, &e2] {
            let r = e
                .reserve(&c, &user(&format!("probe{shard}")), &key("p"), &lines(&[("hot", 1)]))
                .await
                .unwrap();
            assert!(matches!(r, ReserveOutcome::SoldOut(_)), "{r:?}");
        }
        let (_, order) = won.iter().find(|(_, o)| map.of_order(o) == shard).unwrap();
        e1.release(order, ReleaseReason::Cancelled).await.unwrap();
        let released = Instant::now();
        // Through the engine that did not release it, a new buyer gets the unit within 1 s.
        loop {
            next += 1;
            let r = e2
                .reserve(&c, &user(&format!("late{next}")), &key("k"), &lines(&[("hot", 1)]))
                .await
                .unwrap();
            if matches!(r, ReserveOutcome::Reserved(_)) {
                break;
            }
            assert!(
                released.elapsed() < std::time::Duration::from_secs(1),
                "shard {shard}: still {r:?} after 1 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// `max_orders_per_sec` holds for the campaign, not per shard: with 4 shards, a
/// threshold of 50/s and 500 requests/s through two engines, no second of Redis time
/// grants more than 54 (at most one order per shard over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_orders_per_sec_holds_for_the_whole_sharded_campaign() {
    let ns = Ns::new();
    let (e1, e2) = (ns.engine(), ns.engine());
    let mut spec = sharded("rate", 100_000, 1, 4);
    spec.max_orders_per_sec = Some(50);
    launch(&e1, &spec).await;
    let c = cid("rate");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..10 {
        let e = if w % 2 == 0 { e1.clone() } else { e2.clone() };
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut granted = Vec::new();
            let mut i = 0;
            // 10 workers x 50/s = 500 requests/s for 3 s.
            while started.elapsed() < std::time::Duration::from_secs(3) {
                i += 1;
                let u = user(&format!("w{w}-{i}"));
                if let Ok(ReserveOutcome::Reserved(r)) =
                    e.reserve(&c, &u, &key("k"), &lines(&[("hot", 1)])).await
                {
                    granted.push(r.created_ms / 1000);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            granted
        }));
    }
    let mut per_second = std::collections::BTreeMap::new();
    for t in tasks {
        for s in t.await.unwrap() {
            *per_second.entry(s).or_insert(0) += 1;
        }
    }
    let most = per_second.values().copied().max().unwrap_or(0);
    assert!(most <= 54, "grants per Redis second: {per_second:?}");
    assert!(most >= 40, "the threshold is used, not starved: {per_second:?}");
}

/// Honest sold-out and ended answers with shards and two gateways: every winner who
/// retries on the other engine after the sell-out, and again after the end, gets their
/// order back, never `sold_out` or `campaign_not_active`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn winners_retrying_on_another_gateway_after_sell_out_and_end_get_their_orders() {
    let ns = Ns::new();
    let (e1, e2) = (ns.engine(), ns.engine());
    until_live(&e1).await;
    until_live(&e2).await;
    launch(&e1, &sharded("hon", 30, 1, 3)).await;
    let c = cid("hon");
    let buyers: Vec<UserId> = (0..90).map(|i| user(&format!("b{i}"))).collect();
    let answers = sale(&[e1.clone(), e2.clone()], "hon", buyers, 16).await;
    let winners: Vec<(UserId, engine::domain::OrderId)> = answers
        .iter()
        .filter_map(|(_, _, u, r)| match r {
            ReserveOutcome::Reserved(res) => Some((u.clone(), res.order_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 30);
    let retry_all = |when: &'static str| {
        let (e1, e2, c, winners) = (e1.clone(), e2.clone(), c.clone(), winners.clone());
        async move {
            for (i, (u, order)) in winners.iter().enumerate() {
                let e = if i % 2 == 0 { &e2 } else { &e1 };
                let r = e.reserve(&c, u, &key("k1"), &lines(&[("hot", 1)])).await.unwrap();
                assert!(
                    matches!(&r, ReserveOutcome::Replayed(x) if &x.order_id == order),
                    "{when}, {u}: {r:?}"
                );
            }
        }
    };
    retry_all("after the sell-out").await;
    let end =
        engine::campaign::CampaignTuning { ends_ms: Some(engine::clock::now_ms()), ..Default::default() };
    e1.tune(&c, &end).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    retry_all("after the end").await;
}

/// The ids a shard has received keep a day, not a campaign's whole life: an id older
/// than that leaves with the next move in, a recent one still stops a repeated give;
/// a set written before times were kept still works.
#[tokio::test]
async fn received_move_ids_are_kept_a_day() {
    use engine::scripts::moves::{self, Move, Step};
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &sharded("mi", 30, 1, 3)).await;
    let (c, hot) = (cid("mi"), sku("hot"));
    let map = ShardMap::new(&c, 3);
    let k = ns.keys();
    let mut raw = ns.raw().await;
    let _: () = redis::cmd("ZADD")
        .arg(k.moves_in(map.tag(2)))
        .arg(0)
        .arg("ancient")
        .query_async(&mut raw)
        .await
        .unwrap();
    let script = moves::script();
    let m = Move { id: "fresh", campaign: &c, sku: &hot, from: map.tag(0), to: map.tag(2), to_shard: 2 };
    let step =
        moves::decode(moves::take(&script, &k, &m, 2, 1).invoke_async(&mut raw).await.unwrap()).unwrap();
    assert_eq!(step, Step::Taken(2));
    for _ in 0..2 {
        let step =
            moves::decode(moves::give(&script, &k, &m, 2).invoke_async(&mut raw).await.unwrap()).unwrap();
        assert_eq!(step, Step::Given);
    }
    let ids: Vec<String> =
        redis::cmd("ZRANGE").arg(k.moves_in(map.tag(2))).arg(0).arg(-1).query_async(&mut raw).await.unwrap();
    assert_eq!(ids, ["fresh"], "the day-old id left, the new one stays");
    assert_eq!(shelves(&ns, &map).await, vec![8, 10, 12], "given once");
    // A set from before: ids kept without times still stop a repeated give.
    let _: () =
        redis::cmd("SADD").arg(k.moves_in(map.tag(1))).arg("old").query_async(&mut raw).await.unwrap();
    let old = Move { id: "old", campaign: &c, sku: &hot, from: map.tag(0), to: map.tag(1), to_shard: 1 };
    let step =
        moves::decode(moves::give(&script, &k, &old, 2).invoke_async(&mut raw).await.unwrap()).unwrap();
    assert_eq!(step, Step::Given, "already received: nothing given again");
    assert_eq!(shelves(&ns, &map).await, vec![8, 10, 12]);
}

/// What every node of the cluster has spent so far: (CPU µs, user and system, of all
/// redis-server threads; messages sent on the cluster bus to forward a PUBLISH or an
/// SPUBLISH).
async fn node_costs(seeds: &[String]) -> (f64, u64) {
    let (mut cpu_us, mut bus) = (0.0, 0);
    for node in seeds {
        let client = redis::Client::open(node.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut c).await.unwrap();
        let cluster: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await.unwrap();
        let field = |text: &str, name: &str| -> Option<String> {
            text.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).map(|v| v.trim().to_owned())
        };
        for f in ["used_cpu_user", "used_cpu_sys"] {
            cpu_us += field(&info, f).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) * 1e6;
        }
        for f in ["cluster_stats_messages_publish_sent", "cluster_stats_messages_publishshard_sent"] {
            bus += field(&cluster, f).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    (cpu_us, bus)
}

/// The cost of the notices on the 3-master cluster: the same sale (3 shards, two
/// engines, 32 in flight) with shard notices (`SPUBLISH` to the shard's channel) and
/// with every notice broadcast (`PUBLISH`, `redis.shard_notices = false`), in turns,
/// per reservation: the CPU of every redis-server, the time inside scripts and the
/// messages the cluster bus carried. Needs the cluster to itself (`scripts/test.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run alone against the Redis Cluster (scripts/test.sh)"]
async fn shard_notices_cost_the_cluster_less_than_broadcast_ones() {
    const ORDERS: usize = 4000;
    let seeds = Ns::new().settings.redis.cluster_seeds();
    assert_eq!(seeds.len(), 3, "needs FLASHSALE__REDIS__CLUSTER_NODES with the three masters");
    let mut per_mode: [(f64, f64, f64); 2] = [(0.0, 0.0, 0.0); 2];
    for turn in 0..4 {
        let sharded_notices = turn % 2 == 0;
        let ns = Ns::with(|s| s.redis.shard_notices = sharded_notices);
        let engines = [ns.engine(), ns.engine()];
        launch(&engines[0], &sharded("cost", ORDERS as u64, 1, 3)).await;
        for e in &engines {
            e.campaign(&cid("cost")).await.unwrap();
        }
        // Both engines' subscriptions confirmed before the sale.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (cpu0, bus0) = node_costs(&seeds).await;
        let scripts0: u64 = script_stats(&seeds).await.iter().map(|s| s.1).sum();
        let buyers: Vec<UserId> = (0..ORDERS).map(|i| user(&format!("n{i}"))).collect();
        let answers = sale(&engines, "cost", buyers, 32).await;
        assert!(answers.iter().all(|(_, _, _, r)| matches!(r, ReserveOutcome::Reserved(_))));
        let (cpu1, bus1) = node_costs(&seeds).await;
        let scripts1: u64 = script_stats(&seeds).await.iter().map(|s| s.1).sum();
        let m = &mut per_mode[usize::from(!sharded_notices)];
        m.0 += (cpu1 - cpu0) / ORDERS as f64 / 2.0;
        m.1 += (scripts1 - scripts0) as f64 / ORDERS as f64 / 2.0;
        m.2 += (bus1 - bus0) as f64 / ORDERS as f64 / 2.0;
    }
    let [(s_cpu, s_script, s_bus), (b_cpu, b_script, b_bus)] = per_mode;
    println!("per reservation, 3 masters, 3 shards, 2 turns each:");
    println!(
        "  shard notices:     Redis CPU {s_cpu:.1} µs, in scripts {s_script:.1} µs, bus messages {s_bus:.3}"
    );
    println!(
        "  broadcast notices: Redis CPU {b_cpu:.1} µs, in scripts {b_script:.1} µs, bus messages {b_bus:.3}"
    );
    println!(
        "  ratio shard/broadcast: Redis CPU {:.3}, bus messages {:.3}",
        s_cpu / b_cpu,
        s_bus / b_bus.max(1e-9)
    );
    assert!(
        s_bus < b_bus / 10.0,
        "shard notices still crossed the bus: {s_bus:.3} vs {b_bus:.3} per reservation"
    );
}
