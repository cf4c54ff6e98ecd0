//! Every outcome of every script, against the real Redis.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;

use common::message::{OrderEvent, OrderStatus};
use engine::campaign::{CampaignTuning, LaunchOutcome, SkuCounters, TuneOutcome};
use engine::clock::now_ms;
use engine::domain::{CampaignId, IdempotencyKey, OrderLines, UserId};
use engine::domain::{
    ConfirmOutcome, EventId, OrderId, PaymentStatus, ReleaseOutcome, ReleaseReason, Reservation,
    ReserveOutcome,
};
use engine::{Engine, EngineError};
use support::*;

async fn counters(engine: &Engine, c: &str, skus: &[&str]) -> Vec<SkuCounters> {
    let skus: Vec<_> = skus.iter().map(|s| sku(s)).collect();
    engine.counters(&cid(c), &skus).await.unwrap()
}

async fn available(engine: &Engine, c: &str, s: &str) -> u64 {
    counters(engine, c, &[s]).await[0].available
}

fn reserved(outcome: ReserveOutcome) -> Reservation {
    match outcome {
        ReserveOutcome::Reserved(r) => r,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

async fn outbox(ns: &Ns, c: &str) -> Vec<OrderEvent> {
    let mut raw = ns.raw().await;
    let key = ns.keys().outbox(&cid(c));
    let entries: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(&mut raw).await.unwrap();
    entries
        .ids
        .iter()
        .flat_map(|e| {
            let doc: String = e.get("orders").or_else(|| e.get("order")).unwrap();
            common::message::OrderMessage::parse(doc.as_bytes()).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn reserve_then_replay_then_reuse() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("phone", 10, 99_900), ("case", 10, 1_500)], 5)).await;
    let first = reserved(
        e.reserve(&cid("c"), &user("u1"), &key("k1"), &lines(&[("phone", 1), ("case", 2)])).await.unwrap(),
    );
    assert_eq!(first.total_cents, 99_900 + 2 * 1_500);
    assert_eq!(first.items.len(), 2);
    assert!(first.expires_ms - first.created_ms == 900_000);
    assert_eq!(first.order_id.campaign(), cid("c"));

    // Same key, same lines in another order: the first answer again, nothing taken twice.
    let again =
        e.reserve(&cid("c"), &user("u1"), &key("k1"), &lines(&[("case", 2), ("phone", 1)])).await.unwrap();
    assert_eq!(again, ReserveOutcome::Replayed(first.clone()));
    assert_eq!(available(&e, "c", "phone").await, 9);
    assert_eq!(available(&e, "c", "case").await, 8);

    // Same key, other lines: refused, nothing changed.
    let reuse = e.reserve(&cid("c"), &user("u1"), &key("k1"), &lines(&[("phone", 2)])).await.unwrap();
    assert_eq!(reuse, ReserveOutcome::KeyReused);
    assert_eq!(available(&e, "c", "phone").await, 9);

    // The key is the user's own: another user's identical key is a new order.
    // (A user id is any text: it is escaped in the outbox entry.)
    let odd_user = "u\"2\\/é";
    let other =
        reserved(e.reserve(&cid("c"), &user(odd_user), &key("k1"), &lines(&[("phone", 1)])).await.unwrap());
    assert_ne!(other.order_id, first.order_id);

    // One outbox entry per reservation, carrying the whole order.
    let events = outbox(&ns, "c").await;
    assert_eq!(events.len(), 2);
    let item = |sku: &str, quantity: u64, price_cents: i64| common::message::OrderItem {
        sku_id: sku.into(),
        quantity,
        price_cents,
    };
    assert_eq!(
        events[0],
        OrderEvent {
            order_id: first.order_id.as_str().into(),
            campaign_id: "c".into(),
            user_id: "u1".into(),
            status: OrderStatus::PendingPayment,
            items: vec![item("phone", 1, 99_900), item("case", 2, 1_500)],
            total_cents: first.total_cents,
            created_ms: first.created_ms,
            expires_ms: first.expires_ms,
            paid_ms: 0,
            payment_window_secs: 900,
            event_ms: first.created_ms,
            idempotency_key: Some("k1".into()),
            payment_event: None,
            trace: None,
        }
    );
    assert_eq!(
        (events[1].order_id.as_str(), events[1].user_id.as_str()),
        (other.order_id.as_str(), odd_user)
    );
}

/// With `engine.compact_events` off (a rolling upgrade from a build whose workers read
/// only version 2), a reservation's outbox entry is a version 2 body of whole events;
/// on, a version 3 body of rows. Both read as the same event.
#[tokio::test]
async fn reservations_are_written_as_rows_or_whole_events_as_the_setting_says() {
    let mut seen = Vec::new();
    for compact in [true, false] {
        let ns = Ns::with(|s| s.engine.compact_events = compact);
        let e = ns.engine();
        launch(&e, &open_campaign("c", &[("a", 10, 250), ("b", 10, 5)], 5)).await;
        let r = reserved(
            e.reserve(&cid("c"), &user("u\"1"), &key("k.1:x"), &lines(&[("a", 2), ("b", 1)])).await.unwrap(),
        );
        let mut raw = ns.raw().await;
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(ns.keys().outbox(&cid("c")))
            .arg("-")
            .arg("+")
            .query_async(&mut raw)
            .await
            .unwrap();
        let docs: Vec<String> = entries.ids.iter().filter_map(|e| e.get("orders")).collect();
        assert_eq!(docs.len(), 1);
        let head = if compact { r#"{"version":3,"reserved":[["# } else { r#"{"version":2,"events":[{"# };
        assert!(docs[0].starts_with(head), "{}", docs[0]);
        let mut events = common::message::OrderMessage::parse(docs[0].as_bytes()).unwrap();
        assert_eq!(events.len(), 1);
        let mut event = events.remove(0);
        assert_eq!((event.order_id.as_str(), event.created_ms), (r.order_id.as_str(), r.created_ms));
        // What differs between the two runs: the order's id and times.
        event.order_id.clear();
        (event.created_ms, event.expires_ms, event.event_ms) =
            (0, event.expires_ms - event.created_ms, event.event_ms - r.created_ms);
        seen.push(event);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].idempotency_key.as_deref(), Some("k.1:x"));
    assert_eq!(seen[0].user_id, "u\"1");
    assert_eq!(seen[0].total_cents, 505);
}

#[tokio::test]
async fn unknown_campaign_and_sku_are_named() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 10, 100)], 5)).await;
    let r = e.reserve(&cid("nope"), &user("u"), &key("k"), &lines(&[("a", 1)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::CampaignNotFound);
    let r = e.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("a", 1), ("zzz", 1)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::SkuNotFound(sku("zzz")));
    // The script says the same without the cache.
    let order = order_ref(&cid("c"), &user("u"), &key("k"));
    let r = ns.reserve_in_script(&cid("c"), &order, &user("u"), &key("k"), &lines(&[("zzz", 1)])).await;
    assert_eq!(r.outcome, ReserveOutcome::SkuNotFound(sku("zzz")));
    let elsewhere = order_ref(&cid("nope"), &user("u"), &key("k"));
    let r = ns.reserve_in_script(&cid("nope"), &elsewhere, &user("u"), &key("k"), &lines(&[("a", 1)])).await;
    assert_eq!(r.outcome, ReserveOutcome::CampaignNotFound);
    assert_eq!(available(&e, "c", "a").await, 10);
}

#[tokio::test]
async fn outside_the_window_is_not_active_in_the_cache_and_in_the_script() {
    let ns = Ns::new();
    let e = ns.engine();
    let now = now_ms();
    launch(&e, &window_campaign("later", &[("a", 5, 100)], 5, now + 60_000, now + 120_000)).await;
    launch(&e, &window_campaign("over", &[("a", 5, 100)], 5, now - 120_000, now - 60_000)).await;
    for c in ["later", "over"] {
        let r = e.reserve(&cid(c), &user("u"), &key("k"), &lines(&[("a", 1)])).await.unwrap();
        assert_eq!(r, ReserveOutcome::NotActive, "{c}");
        let order = order_ref(&cid(c), &user("u"), &key("k"));
        let r = ns.reserve_in_script(&cid(c), &order, &user("u"), &key("k"), &lines(&[("a", 1)])).await;
        assert_eq!(r.outcome, ReserveOutcome::NotActive, "{c} (script)");
        assert_eq!(available(&e, c, "a").await, 5);
    }
}

#[tokio::test]
async fn a_short_second_line_changes_nothing() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 10, 100), ("b", 1, 100)], 10)).await;
    let r = e.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("a", 3), ("b", 2)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::SoldOut(sku("b")));
    let c = counters(&e, "c", &["a", "b"]).await;
    assert_eq!((c[0].available, c[0].reserved), (10, 0));
    assert_eq!((c[1].available, c[1].reserved), (1, 0));
    assert!(outbox(&ns, "c").await.is_empty());
    // The user's count was not touched either: the full limit is still there.
    let r = e.reserve(&cid("c"), &user("u"), &key("k2"), &lines(&[("a", 9), ("b", 1)])).await.unwrap();
    assert!(matches!(r, ReserveOutcome::Reserved(_)), "{r:?}");
}

#[tokio::test]
async fn per_user_limit_counts_across_orders_and_frees_on_release() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 100, 100), ("b", 100, 100)], 3)).await;
    let first = reserved(e.reserve(&cid("c"), &user("u"), &key("k1"), &lines(&[("a", 2)])).await.unwrap());
    let r = e.reserve(&cid("c"), &user("u"), &key("k2"), &lines(&[("a", 1), ("b", 1)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::LimitExceeded { held: 2, limit: 3 });
    assert_eq!(available(&e, "c", "b").await, 100);
    reserved(e.reserve(&cid("c"), &user("u"), &key("k3"), &lines(&[("b", 1)])).await.unwrap());
    // Released units no longer count against the user.
    assert_eq!(e.release(&first.order_id, ReleaseReason::Cancelled).await.unwrap(), ReleaseOutcome::Released);
    reserved(e.reserve(&cid("c"), &user("u"), &key("k4"), &lines(&[("a", 2)])).await.unwrap());
}

/// The users hash's fields and the buyers they name, as Redis holds them.
async fn users_hash(ns: &Ns, c: &str) -> std::collections::BTreeMap<String, String> {
    let mut raw = ns.raw().await;
    redis::cmd("HGETALL").arg(ns.keys().users(&cid(c))).query_async(&mut raw).await.unwrap()
}

/// A refused order leaves every user's count as it was: over the limit with units held
/// (counted, then taken back), over it alone, or sold out (never counted). No refused
/// user becomes a field of the users hash, so the buyer count gateways wait for names
/// only users who got a reservation.
#[tokio::test]
async fn a_refused_order_leaves_the_users_counts_and_buyers_as_they_were() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 100, 100), ("b", 1, 1)], 3)).await;
    reserved(e.reserve(&cid("c"), &user("u"), &key("k1"), &lines(&[("a", 2)])).await.unwrap());
    let before = users_hash(&ns, "c").await;
    assert_eq!(before.get("u").map(String::as_str), Some("2"));
    // Over the limit with units held, stock to spare.
    let r = e.reserve(&cid("c"), &user("u"), &key("k2"), &lines(&[("a", 2)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::LimitExceeded { held: 2, limit: 3 });
    // Over the limit by itself: a user who holds nothing.
    let r = e.reserve(&cid("c"), &user("v"), &key("k1"), &lines(&[("a", 4)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::LimitExceeded { held: 0, limit: 3 });
    // Over the limit and sold out: the limit answers.
    let r = e.reserve(&cid("c"), &user("u"), &key("k3"), &lines(&[("b", 2)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::LimitExceeded { held: 2, limit: 3 });
    // Within the limit but sold out.
    let r = e.reserve(&cid("c"), &user("w"), &key("k1"), &lines(&[("b", 2)])).await.unwrap();
    assert!(matches!(r, ReserveOutcome::SoldOut(_)), "{r:?}");
    assert_eq!(users_hash(&ns, "c").await, before);
    assert_eq!(available(&e, "c", "a").await, 98);
    // And the limit still holds exactly: one more unit fits, then none.
    reserved(e.reserve(&cid("c"), &user("u"), &key("k4"), &lines(&[("a", 1)])).await.unwrap());
    let r = e.reserve(&cid("c"), &user("u"), &key("k5"), &lines(&[("b", 1)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::LimitExceeded { held: 3, limit: 3 });
    assert_eq!(users_hash(&ns, "c").await.get("u").map(String::as_str), Some("3"));
}

/// What Redis holds of a user in campaign `c`: (their count string, their field of the
/// users hash, whether the buyer set names them).
async fn user_state(ns: &Ns, c: &str, u: &str) -> (Option<String>, Option<String>, bool) {
    let mut raw = ns.raw().await;
    let k = ns.keys();
    let string: Option<String> =
        redis::cmd("GET").arg(k.user(&cid(c), &user(u))).query_async(&mut raw).await.unwrap();
    let field: Option<String> =
        redis::cmd("HGET").arg(k.users(&cid(c))).arg(u).query_async(&mut raw).await.unwrap();
    let in_set: bool =
        redis::cmd("SISMEMBER").arg(k.buyers(&cid(c))).arg(u).query_async(&mut raw).await.unwrap();
    (string, field, in_set)
}

#[tokio::test]
async fn a_campaign_keeps_the_users_layout_it_was_launched_with() {
    for launched_with_hash in [true, false] {
        let ns = Ns::with(|s| s.engine.users_hash = launched_with_hash);
        launch(&ns.engine(), &open_campaign("c", &[("a", 100, 100)], 3)).await;
        // Served by a process of the other setting: the campaign's layout decides.
        let mut other = ns.settings.clone();
        other.engine.users_hash = !launched_with_hash;
        let e = Engine::start(&other).unwrap();
        let first =
            reserved(e.reserve(&cid("c"), &user("u"), &key("k1"), &lines(&[("a", 2)])).await.unwrap());
        reserved(e.reserve(&cid("c"), &user("v"), &key("k1"), &lines(&[("a", 1)])).await.unwrap());
        let r = e.reserve(&cid("c"), &user("u"), &key("k2"), &lines(&[("a", 2)])).await.unwrap();
        assert_eq!(r, ReserveOutcome::LimitExceeded { held: 2, limit: 3 });
        let held = |n: &str| {
            if launched_with_hash {
                (None, Some(n.to_owned()), false)
            } else {
                (Some(n.to_owned()), None, true)
            }
        };
        assert_eq!(user_state(&ns, "c", "u").await, held("2"), "hash: {launched_with_hash}");
        assert_eq!(user_state(&ns, "c", "v").await, held("1"), "hash: {launched_with_hash}");
        assert_eq!(
            e.release(&first.order_id, ReleaseReason::Cancelled).await.unwrap(),
            ReleaseOutcome::Released
        );
        // Released: the string goes; the hash keeps the user's field (still a buyer) at 0.
        let gone = if launched_with_hash { (None, Some("0".to_owned()), false) } else { (None, None, true) };
        assert_eq!(user_state(&ns, "c", "u").await, gone, "hash: {launched_with_hash}");
        reserved(e.reserve(&cid("c"), &user("u"), &key("k3"), &lines(&[("a", 3)])).await.unwrap());
        assert_eq!(user_state(&ns, "c", "u").await, held("3"), "hash: {launched_with_hash}");
    }
}

#[tokio::test]
async fn release_twice_restores_units_once() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 5, 100)], 5)).await;
    let r = reserved(e.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("a", 3)])).await.unwrap());
    assert_eq!(available(&e, "c", "a").await, 2);
    assert_eq!(e.release(&r.order_id, ReleaseReason::Cancelled).await.unwrap(), ReleaseOutcome::Released);
    assert_eq!(
        e.release(&r.order_id, ReleaseReason::Cancelled).await.unwrap(),
        ReleaseOutcome::NotPending(OrderStatus::Cancelled)
    );
    assert_eq!(
        e.release(&r.order_id, ReleaseReason::Expired).await.unwrap(),
        ReleaseOutcome::NotPending(OrderStatus::Cancelled)
    );
    let c = &counters(&e, "c", &["a"]).await[0];
    assert_eq!((c.available, c.reserved, c.sold), (5, 0, 0));
    let events = outbox(&ns, "c").await;
    assert_eq!(
        events.iter().map(|e| e.status).collect::<Vec<_>>(),
        [OrderStatus::PendingPayment, OrderStatus::Cancelled]
    );
    let unknown = OrderId::generate(&cid("c"));
    assert_eq!(e.release(&unknown, ReleaseReason::Cancelled).await.unwrap(), ReleaseOutcome::NotFound);
}

#[tokio::test]
async fn expiry_waits_for_the_deadline() {
    let ns = Ns::new();
    let e = ns.engine();
    let mut spec = open_campaign("c", &[("a", 5, 100)], 5);
    spec.payment_window_secs = 1;
    launch(&e, &spec).await;
    let r = reserved(e.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("a", 1)])).await.unwrap());
    assert_eq!(
        e.release(&r.order_id, ReleaseReason::Expired).await.unwrap(),
        ReleaseOutcome::NotDue { expires_ms: r.expires_ms }
    );
    assert!(e.due_orders(&cid("c"), now_ms(), 10).await.unwrap().is_empty());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(e.due_orders(&cid("c"), now_ms(), 10).await.unwrap(), vec![r.order_id.clone()]);
    assert_eq!(e.release(&r.order_id, ReleaseReason::Expired).await.unwrap(), ReleaseOutcome::Released);
    assert!(e.due_orders(&cid("c"), now_ms(), 10).await.unwrap().is_empty());
    assert_eq!(available(&e, "c", "a").await, 5);
}

#[tokio::test]
async fn confirm_pays_once_and_never_resells_a_released_order() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 5, 250)], 5)).await;
    let paid = reserved(e.reserve(&cid("c"), &user("u"), &key("k1"), &lines(&[("a", 2)])).await.unwrap());
    let ev = |s: &str| EventId::parse(s).unwrap();

    let r = e.confirm(&paid.order_id, &ev("e0"), 499, PaymentStatus::Succeeded).await.unwrap();
    assert_eq!(r, ConfirmOutcome::AmountMismatch { total_cents: 500 });
    let r = e.confirm(&paid.order_id, &ev("e1"), 500, PaymentStatus::Failed).await.unwrap();
    assert_eq!(r, ConfirmOutcome::FailedNoted(OrderStatus::PendingPayment));
    assert_eq!(
        e.confirm(&paid.order_id, &ev("e2"), 500, PaymentStatus::Succeeded).await.unwrap(),
        ConfirmOutcome::Paid
    );
    assert_eq!(
        e.confirm(&paid.order_id, &ev("e2"), 500, PaymentStatus::Succeeded).await.unwrap(),
        ConfirmOutcome::Duplicate(OrderStatus::Paid)
    );
    assert_eq!(
        e.confirm(&paid.order_id, &ev("e3"), 500, PaymentStatus::Succeeded).await.unwrap(),
        ConfirmOutcome::AlreadySettled(OrderStatus::Paid)
    );
    // A paid order cannot be cancelled.
    assert_eq!(
        e.release(&paid.order_id, ReleaseReason::Cancelled).await.unwrap(),
        ReleaseOutcome::NotPending(OrderStatus::Paid)
    );

    let late = reserved(e.reserve(&cid("c"), &user("u"), &key("k2"), &lines(&[("a", 1)])).await.unwrap());
    e.release(&late.order_id, ReleaseReason::Cancelled).await.unwrap();
    // An event id already applied to another order is refused and changes nothing.
    let r = e.confirm(&late.order_id, &ev("e2"), 250, PaymentStatus::Succeeded).await.unwrap();
    assert_eq!(r, ConfirmOutcome::EventConflict);
    assert_eq!(e.order(&late.order_id).await.unwrap().unwrap().status, OrderStatus::Cancelled);
    let r = e.confirm(&late.order_id, &ev("e4"), 250, PaymentStatus::Succeeded).await.unwrap();
    assert_eq!(r, ConfirmOutcome::RefundRequired);
    let c = &counters(&e, "c", &["a"]).await[0];
    assert_eq!((c.available, c.reserved, c.sold), (3, 0, 2), "the late payment took no unit");
    let rec = e.order(&late.order_id).await.unwrap().unwrap();
    assert_eq!(rec.status, OrderStatus::RefundRequired);
    let unknown = OrderId::generate(&cid("c"));
    assert_eq!(
        e.confirm(&unknown, &ev("e5"), 1, PaymentStatus::Succeeded).await.unwrap(),
        ConfirmOutcome::NotFound
    );

    let statuses: Vec<_> = outbox(&ns, "c").await.iter().map(|e| e.status).collect();
    use OrderStatus::*;
    assert_eq!(statuses, [PendingPayment, Paid, PendingPayment, Cancelled, RefundRequired]);
}

#[tokio::test]
async fn warmup_refuses_to_overwrite_a_live_campaign() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 5, 100)], 5)).await;
    reserved(e.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("a", 1)])).await.unwrap());
    let again = e.launch(&open_campaign("c", &[("a", 500, 100)], 5)).await.unwrap();
    assert_eq!(again, LaunchOutcome::AlreadyExists);
    assert_eq!(available(&e, "c", "a").await, 4);
    assert_eq!(e.campaign_ids().await.unwrap(), vec![cid("c")]);
}

#[tokio::test]
async fn tuning_changes_limit_end_and_thresholds() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 50, 100)], 1)).await;
    reserved(e.reserve(&cid("c"), &user("u"), &key("k1"), &lines(&[("a", 1)])).await.unwrap());
    let t =
        CampaignTuning { per_user_limit: Some(3), max_orders_per_sec: Some(Some(500)), ..Default::default() };
    assert_eq!(e.tune(&cid("c"), &t).await.unwrap(), TuneOutcome::Tuned);
    let meta = e.campaign(&cid("c")).await.unwrap().unwrap();
    assert_eq!((meta.per_user_limit, meta.max_orders_per_sec), (3, Some(500)));
    reserved(e.reserve(&cid("c"), &user("u"), &key("k2"), &lines(&[("a", 2)])).await.unwrap());

    let bad = CampaignTuning { ends_ms: Some(meta.starts_ms - 1), ..Default::default() };
    assert_eq!(e.tune(&cid("c"), &bad).await.unwrap(), TuneOutcome::EndsBeforeStart);
    let end_now =
        CampaignTuning { ends_ms: Some(now_ms()), max_orders_per_sec: Some(None), ..Default::default() };
    assert_eq!(e.tune(&cid("c"), &end_now).await.unwrap(), TuneOutcome::Tuned);
    assert_eq!(e.campaign(&cid("c")).await.unwrap().unwrap().max_orders_per_sec, None);
    let r = e.reserve(&cid("c"), &user("v"), &key("k"), &lines(&[("a", 1)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::NotActive);
    assert_eq!(e.tune(&cid("zz"), &CampaignTuning::default()).await.unwrap(), TuneOutcome::NotFound);
}

#[tokio::test]
async fn a_full_outbox_refuses_new_reservations() {
    let ns = Ns::with(|s| s.engine.outbox_max_len = 2);
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 50, 100)], 50)).await;
    for i in 0..2 {
        reserved(
            e.reserve(&cid("c"), &user("u"), &key(&format!("k{i}")), &lines(&[("a", 1)])).await.unwrap(),
        );
    }
    let err = e.reserve(&cid("c"), &user("u"), &key("k9"), &lines(&[("a", 1)])).await.unwrap_err();
    assert!(matches!(err, EngineError::Backpressure(2)), "{err:?}");
    assert_eq!(available(&e, "c", "a").await, 48);
}

#[tokio::test]
async fn max_orders_per_sec_caps_reservations_granted_per_second() {
    let ns = Ns::new();
    let e = ns.engine();
    let mut spec = open_campaign("c", &[("a", 100, 100)], 5);
    spec.max_orders_per_sec = Some(3);
    launch(&e, &spec).await;
    // Align to the start of a second so the burst cannot straddle two.
    let ms = now_ms() % 1000;
    if ms > 500 {
        tokio::time::sleep(std::time::Duration::from_millis(1000 - ms as u64 + 10)).await;
    }
    let mut granted = 0;
    let mut limited = 0;
    for i in 0..6 {
        match e.reserve(&cid("c"), &user(&format!("u{i}")), &key("k"), &lines(&[("a", 1)])).await.unwrap() {
            ReserveOutcome::Reserved(_) => granted += 1,
            ReserveOutcome::RateLimited { retry_after_ms } => {
                assert!((1..=1000).contains(&retry_after_ms));
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((granted, limited), (3, 3));
    assert_eq!(available(&e, "c", "a").await, 97);
    // The next second grants again.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let r = e.reserve(&cid("c"), &user("late"), &key("k"), &lines(&[("a", 1)])).await.unwrap();
    assert!(matches!(r, ReserveOutcome::Reserved(_)), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_buyers_for_a_hundred_units_buy_exactly_a_hundred() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 100, 100)], 1)).await;
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move {
                e.reserve(&cid("c"), &user(&format!("u{i}")), &key("k"), &lines(&[("a", 1)])).await.unwrap()
            })
        })
        .collect();
    let mut won = HashSet::new();
    let mut sold_out = 0;
    for t in tasks {
        match t.await.unwrap() {
            ReserveOutcome::Reserved(r) => assert!(won.insert(r.order_id)),
            ReserveOutcome::SoldOut(s) => {
                assert_eq!(s, sku("a"));
                sold_out += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((won.len(), sold_out), (100, 900));
    let c = &counters(&e, "c", &["a"]).await[0];
    assert_eq!((c.available, c.reserved, c.sold, c.total), (0, 100, 0, 100));
    assert_eq!(outbox(&ns, "c").await.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_with_one_key_make_one_reservation() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 100, 100)], 5)).await;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let e = e.clone();
            tokio::spawn(async move {
                e.reserve(&cid("c"), &user("u"), &key("same"), &lines(&[("a", 2)])).await.unwrap()
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut fresh = 0;
    for t in tasks {
        match t.await.unwrap() {
            ReserveOutcome::Reserved(r) => {
                fresh += 1;
                ids.insert(r.order_id);
            }
            ReserveOutcome::Replayed(r) => {
                ids.insert(r.order_id);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((fresh, ids.len()), (1, 1));
    assert_eq!(available(&e, "c", "a").await, 98);
    assert_eq!(outbox(&ns, "c").await.len(), 1);
}

#[tokio::test]
async fn a_winner_retrying_after_sell_out_gets_the_replay_not_sold_out() {
    let ns = Ns::new();
    let e = ns.engine();
    let other = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 1, 100)], 1)).await;
    until_live(&e).await;
    until_live(&other).await;
    until_trusted(&e, &cid("c")).await;
    until_trusted(&other, &cid("c")).await;
    let won = reserved(e.reserve(&cid("c"), &user("winner"), &key("k"), &lines(&[("a", 1)])).await.unwrap());
    // Both processes learn the sku is sold out.
    for p in [&e, &other] {
        let r = p.reserve(&cid("c"), &user("loser"), &key("k"), &lines(&[("a", 1)])).await.unwrap();
        assert_eq!(r, ReserveOutcome::SoldOut(sku("a")));
    }
    let before = other.stats();
    let r = other.reserve(&cid("c"), &user("loser"), &key("k"), &lines(&[("a", 1)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::SoldOut(sku("a")));
    assert_eq!(other.stats().answered_locally, before.answered_locally + 1, "answered from the cache");
    // The winner's retry, on either process, is a replay.
    for p in [&e, &other] {
        let r = p.reserve(&cid("c"), &user("winner"), &key("k"), &lines(&[("a", 1)])).await.unwrap();
        assert_eq!(r, ReserveOutcome::Replayed(won.clone()));
    }
}

#[tokio::test]
async fn redis_down_is_unavailable_fast() {
    let ns = Ns::with(|s| {
        s.redis.url = "redis://127.0.0.1:1".into();
        if !s.redis.cluster_seeds().is_empty() {
            s.redis.cluster_nodes = "redis://127.0.0.1:1".into();
        }
        s.redis.call_timeout_ms = 300;
        s.redis.connect_timeout_ms = 300;
    });
    let e = ns.engine();
    let started = std::time::Instant::now();
    let err = e.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("a", 1)])).await.unwrap_err();
    assert!(matches!(err, EngineError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(e.probe().await.is_err());
}

#[tokio::test]
async fn the_readiness_probe_runs_the_reservation_script() {
    let ns = Ns::new();
    let e = ns.engine();
    e.probe().await.unwrap();
    let mut raw = ns.raw().await;
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw).await.unwrap();
    e.probe().await.unwrap();
}

#[tokio::test]
async fn a_burst_of_due_orders_is_released_in_few_calls_each_exactly_once() {
    let ns = Ns::new();
    let e = ns.engine();
    let n = engine::scripts::release::BATCH_MAX * 2 + 7;
    let mut spec = open_campaign("c", &[("a", n as u64, 100), ("b", n as u64, 50)], 5);
    spec.payment_window_secs = 1;
    launch(&e, &spec).await;
    let mut ids = Vec::new();
    for i in 0..n {
        let l = if i % 3 == 0 { lines(&[("a", 1), ("b", 2)]) } else { lines(&[("a", 1)]) };
        let r = reserved(e.reserve(&cid("c"), &user(&format!("u{i}")), &key("k"), &l).await.unwrap());
        ids.push(r.order_id);
    }
    // One already cancelled, and a pending id whose order hash is gone (Redis lost it).
    e.release(&ids[5], ReleaseReason::Cancelled).await.unwrap();
    let ghost = OrderId::generate(&cid("c"));
    let mut raw = ns.raw().await;
    let pending = ns.keys().pending(&cid("c"));
    let _: () =
        redis::cmd("ZADD").arg(&pending).arg(0).arg(ghost.as_str()).query_async(&mut raw).await.unwrap();
    // The newest three: reserving all n can itself take longer than the 1 s window on
    // a loaded machine, so the oldest ones may be due already.
    let early = e.release_many(&cid("c"), &ids[n - 3..], ReleaseReason::Expired).await.unwrap();
    assert!(early.iter().all(|(_, o)| matches!(o, ReleaseOutcome::NotDue { .. })), "{early:?}");

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut due = e.due_orders(&cid("c"), now_ms(), 10 * n).await.unwrap();
    assert_eq!(due.len(), n, "every pending order and the ghost are due");
    due.push(ids[7].clone()); // asked twice in one burst: released once
    let out = e.release_many(&cid("c"), &due, ReleaseReason::Expired).await.unwrap();
    let released = out.iter().filter(|(_, o)| *o == ReleaseOutcome::Released).count();
    assert_eq!(released, n - 1);
    assert_eq!(
        out.iter().find(|(id, _)| *id == ghost).map(|(_, o)| o.clone()),
        Some(ReleaseOutcome::NotFound)
    );
    assert_eq!(out.last().map(|(_, o)| o.clone()), Some(ReleaseOutcome::NotPending(OrderStatus::Expired)));
    assert!(e.due_orders(&cid("c"), now_ms(), 10).await.unwrap().is_empty(), "the ghost left too");
    let c = counters(&e, "c", &["a", "b"]).await;
    assert_eq!((c[0].available, c[0].reserved), (n as u64, 0));
    assert_eq!((c[1].available, c[1].reserved), (n as u64, 0));
    let expired = outbox(&ns, "c").await.iter().filter(|ev| ev.status == OrderStatus::Expired).count();
    assert_eq!(expired, n - 1, "one outbox entry per released order");
}

#[tokio::test]
async fn a_launch_lists_the_campaign_and_a_second_launch_changes_nothing() {
    let ns = Ns::new();
    let e = ns.engine();
    let mut raw = ns.raw().await;
    let keys = ns.keys();
    launch(&e, &open_campaign("c", &[("a", 5, 100)], 1)).await;
    let listed: Vec<String> =
        redis::cmd("SMEMBERS").arg(keys.campaigns()).query_async(&mut raw).await.unwrap();
    assert_eq!(listed, vec!["c".to_owned()]);
    let r = e.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("a", 1)])).await.unwrap();
    assert!(matches!(r, ReserveOutcome::Reserved(_)), "{r:?}");
    // The script alone refuses to touch a campaign that exists: stock stays as sold.
    let script = engine::scripts::warmup::script();
    let inv = engine::scripts::warmup::invocation(&script, &keys, &open_campaign("c", &[("a", 5, 100)], 1));
    let reply = engine::scripts::warmup::decode(inv.invoke_async(&mut raw).await.unwrap()).unwrap();
    assert_eq!(reply, LaunchOutcome::AlreadyExists);
    assert_eq!(available(&e, "c", "a").await, 4);
}

#[tokio::test]
async fn an_idempotency_record_written_as_a_hash_before_an_upgrade_still_replays() {
    // A campaign of a build before the users hash (only such campaigns hold records).
    let ns = Ns::with(|s| s.engine.users_hash = false);
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 5, 100)], 5)).await;
    let old = OrderId::generate(&cid("c"));
    let l = lines(&[("a", 1)]);
    let key_name = ns.keys().idempotency(&cid("c"), &user("u"), &key("k"));
    let mut raw = ns.raw().await;
    let _: () = redis::cmd("HSET")
        .arg(&key_name)
        .arg("fp")
        .arg(l.fingerprint())
        .arg("order")
        .arg(old.as_str())
        .arg("items")
        .arg(r#"[{"sku_id":"a","quantity":1,"price_cents":100}]"#)
        .arg("total")
        .arg(100)
        .arg("created")
        .arg(1)
        .arg("expires")
        .arg(2)
        .query_async(&mut raw)
        .await
        .unwrap();
    let fresh = order_ref(&cid("c"), &user("u"), &key("k"));
    let r = ns.reserve_in_script(&cid("c"), &fresh, &user("u"), &key("k"), &l).await;
    match r.outcome {
        ReserveOutcome::Replayed(res) => assert_eq!((res.order_id, res.total_cents), (old, 100)),
        other => panic!("{other:?}"),
    }
    let r = ns.reserve_in_script(&cid("c"), &fresh, &user("u"), &key("k"), &lines(&[("a", 2)])).await;
    assert_eq!(r.outcome, ReserveOutcome::KeyReused);
    assert_eq!(available(&e, "c", "a").await, 5, "nothing reserved");
}

/// Redis memory per pending order: `used_memory` before and after 100,000 one-line
/// reservations of distinct buyers (what a pending order leaves behind once the relay
/// took its outbox entry: its keys, its pending and buyer set members), and the
/// `MEMORY USAGE` of each of one order's own keys. Run alone (`scripts/test.sh`):
/// another namespace writing meanwhile would count here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run alone (scripts/test.sh): reads the server's used_memory"]
async fn redis_memory_per_pending_order() {
    const ORDERS: usize = 100_000;
    let ns = Ns::new();
    let e = ns.engine();
    let campaign = std::env::var("MEMORY_CAMPAIGN").unwrap_or_else(|_| "mem".into());
    launch(&e, &open_campaign(&campaign, &[("phone", ORDERS as u64, 19_900)], 1)).await;
    let c = cid(&campaign);
    let derive = engine::order_ids::OrderIds::new(b"memory").unwrap();
    let mut conn = ns.raw().await;
    let used = |info: String| -> i64 {
        info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
    };
    let before = used(redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap());
    let one_line = lines(&[("phone", 1)]);
    let mut first = None;
    for chunk in 0..ORDERS / 100 {
        let ids: Vec<(engine::domain::OrderRef, engine::domain::UserId, engine::domain::IdempotencyKey)> = (0
            ..100)
            .map(|i| {
                let n = chunk * 100 + i;
                let (u, k) =
                    (user(&format!("buyer-{n:06}")), key(&format!("0b8f5c1e-4a7d-4c1b-9d2e-{n:012}")));
                (derive.derive(&c, 0, &u, &k), u, k)
            })
            .collect();
        let batch: Vec<_> = ids.iter().map(|(o, u, k)| (o, u, k, &one_line)).collect();
        for (i, r) in ns.reserve_batch_in_script(&c, &batch).await.into_iter().enumerate() {
            let ReserveOutcome::Reserved(res) = r.unwrap().outcome else { panic!("not reserved") };
            if first.is_none() {
                first = Some((res.order_id, ids[i].1.clone(), ids[i].2.clone()));
            }
        }
        // What the relay does to each entry once the broker has it.
        let _: () = redis::cmd("XTRIM")
            .arg(ns.keys().outbox(&c))
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let after = used(redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap());
    let per_order = (after - before) as f64 / ORDERS as f64;
    let (order, u, k) = first.unwrap();
    let keys = ns.keys();
    let mut usage = Vec::new();
    for (what, key) in [
        ("order hash (the idempotency record too)", keys.order(&order)),
        ("idempotency record (builds before derived ids)", keys.idempotency(&c, &u, &k)),
        ("user count", keys.user(&c, &u)),
    ] {
        let bytes: Option<i64> =
            redis::cmd("MEMORY").arg("USAGE").arg(&key).query_async(&mut conn).await.unwrap();
        usage.push(format!("{what} {} B", bytes.unwrap_or(0)));
    }
    let users: Option<i64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(keys.users(&c))
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    usage.push(format!("users hash per buyer {} B", users.unwrap_or(0) / ORDERS as i64));
    println!(
        "Redis memory per pending order ({ORDERS} orders, campaign {campaign:?}, namespace {:?}): \
         {per_order:.0} bytes; one order's keys: {usage:?}",
        ns.settings.namespace
    );
    assert!(per_order > 0.0);
}

#[tokio::test]
async fn the_order_hash_is_the_idempotency_record_and_a_key_used_after_its_window_makes_a_new_order() {
    // A window of 2 s, so the test can outlast it.
    let ns = Ns::with(|s| s.engine.idempotency_ttl_secs = 2);
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 10, 100), ("b", 10, 50)], 10)).await;
    let l = lines(&[("a", 1), ("b", 2)]);
    let first = reserved(e.reserve(&cid("c"), &user("u"), &key("k"), &l).await.unwrap());
    // One key per order: no idempotency record of its own.
    let mut raw = ns.raw().await;
    let record: bool = redis::cmd("EXISTS")
        .arg(ns.keys().idempotency(&cid("c"), &user("u"), &key("k")))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!record, "no idempotency record beside the order");
    let again = e.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("b", 2), ("a", 1)])).await.unwrap();
    assert_eq!(again, ReserveOutcome::Replayed(first.clone()));
    for other in [lines(&[("a", 1)]), lines(&[("a", 1), ("b", 1)]), lines(&[("b", 2)])] {
        assert_eq!(
            e.reserve(&cid("c"), &user("u"), &key("k"), &other).await.unwrap(),
            ReserveOutcome::KeyReused
        );
    }
    // Another user's identical key is another order.
    let theirs = reserved(e.reserve(&cid("c"), &user("v"), &key("k"), &l).await.unwrap());
    assert_ne!(theirs.order_id, first.order_id);

    // The window passes: the key makes a new order, and never meets the old one,
    // whatever the lines; the old order is untouched.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let second = reserved(e.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("a", 3)])).await.unwrap());
    assert_ne!(second.order_id, first.order_id);
    assert_eq!(second.order_id.shard_hint(), first.order_id.shard_hint());
    assert_eq!(
        e.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("a", 3)])).await.unwrap(),
        ReserveOutcome::Replayed(second.clone())
    );
    assert_eq!(e.reserve(&cid("c"), &user("u"), &key("k"), &l).await.unwrap(), ReserveOutcome::KeyReused);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let third = reserved(e.reserve(&cid("c"), &user("u"), &key("k"), &l).await.unwrap());
    assert!(third.order_id != first.order_id && third.order_id != second.order_id);
    let old = e.order(&first.order_id).await.unwrap().unwrap();
    assert_eq!((old.status, old.total_cents), (OrderStatus::PendingPayment, 200));
    let c = counters(&e, "c", &["a", "b"]).await;
    assert_eq!((c[0].available, c[1].available), (10 - 1 - 1 - 3 - 1, 10 - 2 - 2 - 2));
    assert_eq!(outbox(&ns, "c").await.len(), 4);
}

/// `reserve.lua` as the build before derived order ids had it: random ids, and an
/// idempotency record of its own beside each order.
const RESERVE_RANDOM_IDS: &str =
    concat!(include_str!("../../lua/prelude.lua"), "\n", include_str!("fixtures/reserve_random_ids.lua"));

/// One call of the previous build's `reserve.lua` (its keys and arguments: no
/// write_records argument), one order per user, each with the given id.
async fn reserve_as_before(
    ns: &Ns,
    c: &CampaignId,
    ids: &[OrderId],
    users: &[UserId],
    keys: &[IdempotencyKey],
    l: &OrderLines,
) -> Vec<ReserveOutcome> {
    let old_script = engine::scripts::lua::Script::new(RESERVE_RANDOM_IDS);
    let k = ns.keys();
    let mut inv = old_script.prepare_invoke();
    inv.key(k.meta(c)).key(k.outbox(c)).key(k.pending(c)).key(k.buyers(c)).key(k.order_rate(c));
    inv.arg(c.as_str()).arg(60).arg(1_000_000).arg(k.shard_notice_channel(c));
    for i in 0..ids.len() {
        inv.key(k.user(c, &users[i])).key(k.idempotency(c, &users[i], &keys[i])).key(k.order(&ids[i]));
        for line in l.iter() {
            inv.key(k.stock(c, &line.sku));
        }
        inv.arg(ids[i].as_str())
            .arg(users[i].as_str())
            .arg(l.fingerprint())
            .arg(keys[i].as_str())
            .arg(l.len());
        for line in l.iter() {
            inv.arg(line.sku.as_str()).arg(line.quantity);
        }
    }
    let v: redis::Value = inv.invoke_async(&mut ns.raw().await).await.unwrap();
    engine::scripts::reserve::decode_whole(v, ids.len())
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().outcome)
        .collect()
}

#[tokio::test]
async fn during_a_rolling_upgrade_the_build_before_replays_the_new_builds_orders_only_with_records_on() {
    for records in [true, false] {
        // The campaign is the previous build's (no users hash): a rolling upgrade.
        let ns = Ns::with(|s| {
            s.engine.idempotency_records = records;
            s.engine.users_hash = false;
        });
        let e = ns.engine();
        launch(&e, &open_campaign("c", &[("a", 10, 100)], 10)).await;
        let c = cid("c");
        let one = lines(&[("a", 1)]);
        let new = reserved(e.reserve(&c, &user("u"), &key("k"), &one).await.unwrap());
        // The buyer's retry reaches a gateway of the previous build, which names a
        // fresh random id.
        let retry =
            reserve_as_before(&ns, &c, &[OrderId::generate(&c)], &[user("u")], &[key("k")], &one).await;
        if records {
            assert_eq!(retry, vec![ReserveOutcome::Replayed(new.clone())]);
            assert_eq!(available(&e, "c", "a").await, 9);
            let again = e.reserve(&c, &user("u"), &key("k"), &one).await.unwrap();
            assert_eq!(again, ReserveOutcome::Replayed(new));
        } else {
            // What the switch is for: without the record that build makes a second order.
            assert!(
                matches!(&retry[0], ReserveOutcome::Reserved(r) if r.order_id != new.order_id),
                "{retry:?}"
            );
            assert_eq!(available(&e, "c", "a").await, 8);
        }
    }
}

#[tokio::test]
async fn orders_reserved_by_the_build_before_derived_ids_are_replayed_read_cancelled_paid_and_expired() {
    // A campaign of that build: its users' units in strings, its buyers in a set.
    let ns = Ns::with(|s| s.engine.users_hash = false);
    let e = ns.engine();
    let mut spec = open_campaign("c", &[("a", 10, 100)], 10);
    spec.payment_window_secs = 1;
    launch(&e, &spec).await;
    let c = cid("c");
    let one = lines(&[("a", 1)]);
    let (ids, users, keys): (Vec<OrderId>, Vec<_>, Vec<_>) = (
        (0..3).map(|_| OrderId::generate(&c)).collect(),
        (0..3).map(|i| user(&format!("u{i}"))).collect(),
        (0..3).map(|i| key(&format!("k{i}"))).collect(),
    );
    let before: Vec<Reservation> =
        reserve_as_before(&ns, &c, &ids, &users, &keys, &one).await.into_iter().map(reserved).collect();
    assert_eq!(before.iter().map(|r| r.order_id.clone()).collect::<Vec<_>>(), ids);

    // The new build replays them (their ids are not the derived ones) and refuses
    // their keys with other lines.
    for i in 0..3 {
        let r = e.reserve(&c, &users[i], &keys[i], &one).await.unwrap();
        assert_eq!(r, ReserveOutcome::Replayed(before[i].clone()));
        let r = e.reserve(&c, &users[i], &keys[i], &lines(&[("a", 2)])).await.unwrap();
        assert_eq!(r, ReserveOutcome::KeyReused);
    }
    // Read, cancelled, paid, expired.
    let rec = e.order(&ids[0]).await.unwrap().unwrap();
    assert_eq!((rec.status, rec.total_cents, rec.user.as_str()), (OrderStatus::PendingPayment, 100, "u0"));
    assert_eq!(e.release(&ids[0], ReleaseReason::Cancelled).await.unwrap(), ReleaseOutcome::Released);
    let paid = e.confirm(&ids[1], &EventId::parse("ev-1").unwrap(), 100, PaymentStatus::Succeeded).await;
    assert_eq!(paid.unwrap(), ConfirmOutcome::Paid);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(e.due_orders(&c, now_ms(), 10).await.unwrap(), vec![ids[2].clone()]);
    assert_eq!(e.release(&ids[2], ReleaseReason::Expired).await.unwrap(), ReleaseOutcome::Released);
    let states: Vec<_> = futures_util::future::join_all(ids.iter().map(|id| e.order(id))).await;
    let states: Vec<_> = states.into_iter().map(|r| r.unwrap().unwrap().status).collect();
    assert_eq!(states, [OrderStatus::Cancelled, OrderStatus::Paid, OrderStatus::Expired]);
    let k = &counters(&e, "c", &["a"]).await[0];
    assert_eq!((k.available, k.reserved, k.sold), (9, 0, 1));
    // A replay after the release still answers the first answer, as before.
    let r = e.reserve(&c, &users[0], &keys[0], &one).await.unwrap();
    assert_eq!(r, ReserveOutcome::Replayed(before[0].clone()));
}

/// The restore check relists the live campaigns MySQL named a moment earlier; one
/// retired in between (its meta marked, then taken off the index) must not stay listed.
#[tokio::test]
async fn a_relist_from_a_stale_list_never_keeps_a_retired_campaign_listed() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("gone", &[("a", 1, 100)], 1)).await;
    launch(&e, &open_campaign("live", &[("a", 1, 100)], 1)).await;
    e.retire_finish(&cid("gone")).await.unwrap();
    let mut raw = ns.raw().await;
    let _: () =
        redis::cmd("SREM").arg(ns.keys().campaigns()).arg("live").query_async(&mut raw).await.unwrap();
    // The list read before the retirement names both.
    e.relist(&[cid("gone"), cid("live")]).await.unwrap();
    let mut listed = e.campaign_ids().await.unwrap();
    listed.sort();
    assert_eq!(listed, vec![cid("live")]);
}

/// New orders' deadlines are a list in reservation order: the sweep gets the due ones
/// oldest first, stops at the first pending order not yet due, skips settled ones
/// (dropping them once they reach the head), and still reads the sorted set the build
/// before wrote.
#[tokio::test]
async fn the_deadline_list_gives_due_orders_in_order_and_drops_settled_ones_from_its_head() {
    let ns = Ns::new();
    let e = ns.engine();
    let mut spec = open_campaign("c", &[("a", 20, 100)], 20);
    spec.payment_window_secs = 1;
    launch(&e, &spec).await;
    let c = cid("c");
    let one = lines(&[("a", 1)]);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(reserved(e.reserve(&c, &user(&format!("u{i}")), &key("k"), &one).await.unwrap()).order_id);
    }
    // One order of the build before, in its sorted set.
    let old = OrderId::generate(&c);
    let made =
        reserve_as_before(&ns, &c, std::slice::from_ref(&old), &[user("old")], &[key("k")], &one).await;
    assert!(matches!(&made[0], ReserveOutcome::Reserved(_)), "{made:?}");
    let ev = EventId::parse("pay-0").unwrap();
    assert_eq!(e.confirm(&ids[0], &ev, 100, PaymentStatus::Succeeded).await.unwrap(), ConfirmOutcome::Paid);
    assert_eq!(e.release(&ids[2], ReleaseReason::Cancelled).await.unwrap(), ReleaseOutcome::Released);

    let mut raw = ns.raw().await;
    let list = ns.keys().deadlines(&c);
    let len = async |raw: &mut engine::link::Conn| -> usize {
        redis::cmd("LLEN").arg(&list).query_async(raw).await.unwrap()
    };
    let first = e.order(&ids[1]).await.unwrap().unwrap().expires_ms;
    // Nothing due yet: the next deadline is the first pending order's; the paid one at
    // the head is gone, the cancelled one behind a pending order stays for now.
    assert_eq!(e.next_deadlines(std::slice::from_ref(&c)).await.unwrap(), vec![Some(first)]);
    assert!(e.due_orders(&c, now_ms(), 100).await.unwrap().is_empty());
    assert_eq!(len(&mut raw).await, 4);

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let due = e.due_orders(&c, now_ms(), 2).await.unwrap();
    assert_eq!(due, vec![ids[1].clone(), ids[3].clone()], "oldest first, at most as many as asked");
    let due = e.due_orders(&c, now_ms(), 100).await.unwrap();
    assert_eq!(due, vec![ids[1].clone(), ids[3].clone(), ids[4].clone(), old.clone()]);
    let out = e.release_many(&c, &due, ReleaseReason::Expired).await.unwrap();
    assert!(out.iter().all(|(_, o)| *o == ReleaseOutcome::Released), "{out:?}");
    assert_eq!(e.next_deadlines(std::slice::from_ref(&c)).await.unwrap(), vec![None]);
    assert_eq!(len(&mut raw).await, 0, "every settled order left the list");
    assert_eq!(available(&e, "c", "a").await, 20 - 1);
}

/// More settled orders at the head of the deadline list than one call scans: the next
/// deadline is "now" (look again), never "nothing pending", and the calls that follow
/// drop the settled run and reach the unpaid order behind it.
#[tokio::test]
async fn a_long_run_of_paid_orders_never_hides_an_unpaid_one_behind_it() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 10, 100)], 10)).await;
    let c = cid("c");
    let unpaid = reserved(e.reserve(&c, &user("u"), &key("k"), &lines(&[("a", 1)])).await.unwrap());
    let expires = unpaid.expires_ms;
    // 5,000 settled ids ahead of it (orders Redis no longer holds count as settled).
    let mut raw = ns.raw().await;
    let list = ns.keys().deadlines(&c);
    let ghosts: Vec<String> = (0..5000).map(|_| OrderId::generate(&c).to_string()).collect();
    let _: () = redis::cmd("LPUSH").arg(&list).arg(&ghosts).query_async(&mut raw).await.unwrap();
    let before = now_ms();
    let first = e.next_deadlines(std::slice::from_ref(&c)).await.unwrap()[0];
    assert!(first.is_some_and(|ms| ms >= before && ms < expires), "look again now: {first:?}");
    assert_eq!(e.next_deadlines(std::slice::from_ref(&c)).await.unwrap(), vec![Some(expires)]);
    let left: usize = redis::cmd("LLEN").arg(&list).query_async(&mut raw).await.unwrap();
    assert_eq!(left, 1, "only the unpaid order is left");
}

/// Order ids carry their creation time in front of the derived ref: later orders sort
/// after earlier ones (MySQL inserts them at the end of its primary key), and the ref
/// still names the order's key.
#[tokio::test]
async fn order_ids_grow_with_time_and_end_with_the_ref_a_retry_derives() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 100, 100)], 100)).await;
    let mut last = String::new();
    for i in 0..20 {
        let r = reserved(
            e.reserve(&cid("c"), &user(&format!("u{i}")), &key("k"), &lines(&[("a", 1)])).await.unwrap(),
        );
        let suffix = r.order_id.as_str().rsplit_once('.').unwrap().1.to_owned();
        assert_eq!(i64::from_str_radix(&suffix[..12], 16).unwrap(), r.created_ms, "{suffix}");
        assert!(suffix > last, "{suffix} after {last}");
        assert_eq!(r.order_id.key_part(), &suffix[12..]);
        last = suffix;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// A lost shard forgot an order; the buyer's retry took its ref (and so its key)
/// again, as a new order with a new id. The forgotten id reaches none of it: not the
/// owner's view, not a cancel, not a payment, not the persister's "does Redis hold it".
#[tokio::test]
async fn an_id_whose_ref_a_later_order_took_again_is_not_that_order() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("a", 10, 100)], 10)).await;
    let c = cid("c");
    let now = reserved(e.reserve(&c, &user("u"), &key("k"), &lines(&[("a", 1)])).await.unwrap());
    let suffix = now.order_id.as_str().rsplit_once('.').unwrap().1;
    let forgotten = OrderId::parse(&format!("c.{:012x}{}", now.created_ms - 5_000, &suffix[12..])).unwrap();
    assert_eq!(forgotten.key_part(), now.order_id.key_part());
    assert_eq!(e.order(&forgotten).await.unwrap(), None);
    assert_eq!(e.release(&forgotten, ReleaseReason::Cancelled).await.unwrap(), ReleaseOutcome::NotFound);
    let ev = EventId::parse("pay-forgotten").unwrap();
    assert_eq!(
        e.confirm(&forgotten, &ev, 100, PaymentStatus::Succeeded).await.unwrap(),
        ConfirmOutcome::NotFound
    );
    // The order that holds the key is untouched.
    let held = e.order(&now.order_id).await.unwrap().unwrap();
    assert_eq!(held.status, OrderStatus::PendingPayment);
    assert_eq!(available(&e, "c", "a").await, 9);
}
