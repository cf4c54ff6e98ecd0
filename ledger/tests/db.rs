//! MySQL layer against the real MariaDB, each test in a database of its own.
#![allow(clippy::unwrap_used)]

use common::config::MysqlSettings;
use common::message::{OrderEvent, OrderItem, OrderStatus};
use ledger::{CampaignItemRow, CampaignRow, Db, DbError, InsertCampaign};

struct TestDb {
    db: Db,
    settings: MysqlSettings,
    /// For the test's own queries.
    pool: sqlx::MySqlPool,
}

impl TestDb {
    async fn new() -> Self {
        let settings = testkit::isolate("ld").mysql;
        let db = Db::connect(&settings).await.unwrap();
        let pool = sqlx::MySqlPool::connect(&settings.url).await.unwrap();
        Self { db, settings, pool }
    }
}

impl TestDb {
    /// Closes the pool, then drops the database.
    async fn cleanup(self) {
        self.pool.close().await;
        self.db.close().await;
        testkit::drop_database(&self.settings.url).await;
    }
}

fn campaign(id: &str, stock: i64) -> CampaignRow {
    CampaignRow {
        campaign_id: id.into(),
        name: "Test".into(),
        starts_ms: 0,
        ends_ms: 10,
        per_user_limit: 2,
        payment_window_secs: 60,
        max_orders_per_sec: None,
        max_user_requests_per_sec: None,
        shards: 1,
        items: vec![
            CampaignItemRow { sku_id: "a".into(), price_cents: 100, stock_total: stock },
            CampaignItemRow { sku_id: "b".into(), price_cents: 50, stock_total: stock },
        ],
    }
}

fn event(order: &str, status: OrderStatus, qty: u64) -> OrderEvent {
    OrderEvent {
        order_id: order.into(),
        campaign_id: "c".into(),
        user_id: "u".into(),
        status,
        items: vec![
            OrderItem { sku_id: "a".into(), quantity: qty, price_cents: 100 },
            OrderItem { sku_id: "b".into(), quantity: 1, price_cents: 50 },
        ],
        total_cents: qty as i64 * 100 + 50,
        created_ms: 1,
        expires_ms: 60_001,
        paid_ms: if status == OrderStatus::Paid { 5 } else { 0 },
        payment_window_secs: 60,
        event_ms: 5,
        idempotency_key: None,
        payment_event: None,
        trace: None,
    }
}

async fn buckets(db: &Db, sku: &str) -> (i64, i64, i64) {
    let rows = db.stock("c").await.unwrap();
    let r = rows.iter().find(|r| r.sku_id == sku).unwrap();
    assert_eq!(r.available + r.reserved + r.sold, r.stock_total);
    (r.available, r.reserved, r.sold)
}

#[tokio::test]
async fn campaigns_insert_once_and_report_the_existing_one() {
    let t = TestDb::new().await;
    assert_eq!(t.db.insert_campaign(&campaign("c", 10), 1).await.unwrap(), InsertCampaign::Created);
    match t.db.insert_campaign(&campaign("c", 99), 2).await.unwrap() {
        InsertCampaign::Exists(row) => assert_eq!(row, campaign("c", 10)),
        other => panic!("{other:?}"),
    }
    t.db.tune_campaign("c", (Some(20), Some(5)), (Some(Some(100)), None), ("admin", 3)).await.unwrap();
    let row = t.db.campaign("c").await.unwrap().unwrap();
    assert_eq!((row.ends_ms, row.per_user_limit, row.max_orders_per_sec), (20, 5, Some(100)));
    assert!(t.db.campaign("zz").await.unwrap().is_none());
    t.cleanup().await;
}

#[tokio::test]
async fn migrations_are_safe_when_several_processes_start_at_once() {
    let t = TestDb::new().await;
    let s = t.settings.clone();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { Db::connect(&s).await.map(|_| ()) })
        })
        .collect();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    t.cleanup().await;
}

#[tokio::test]
async fn the_same_event_three_times_is_one_order() {
    let t = TestDb::new().await;
    t.db.insert_campaign(&campaign("c", 10), 1).await.unwrap();
    let e = event("o1", OrderStatus::PendingPayment, 2);
    let applied = t.db.apply_events(&[e.clone(), e.clone()]).await.unwrap();
    assert_eq!((applied.inserted, applied.unchanged), (1, 1));
    let applied = t.db.apply_events(std::slice::from_ref(&e)).await.unwrap();
    assert_eq!((applied.inserted, applied.unchanged), (0, 1));
    assert_eq!(testkit::count_orders(&t.pool, "c").await, 1);
    assert_eq!(buckets(&t.db, "a").await, (8, 2, 0));
    assert_eq!(buckets(&t.db, "b").await, (9, 1, 0));
    let row = t.db.order("o1").await.unwrap().unwrap();
    assert_eq!(row.status, OrderStatus::PendingPayment);
    assert_eq!(row.items.len(), 2);
    t.cleanup().await;
}

#[tokio::test]
async fn events_in_any_order_end_in_the_furthest_state() {
    use OrderStatus::*;
    let t = TestDb::new().await;
    t.db.insert_campaign(&campaign("c", 10), 1).await.unwrap();
    // Paid seen before created, in separate batches.
    t.db.apply_events(&[event("p", Paid, 1)]).await.unwrap();
    t.db.apply_events(&[event("p", PendingPayment, 1)]).await.unwrap();
    // Cancelled, then a late payment, arriving refund first.
    t.db.apply_events(&[event("r", RefundRequired, 3), event("r", PendingPayment, 3)]).await.unwrap();
    t.db.apply_events(&[event("r", Cancelled, 3)]).await.unwrap();
    // Created and expired in one batch.
    t.db.apply_events(&[event("x", PendingPayment, 2), event("x", Expired, 2)]).await.unwrap();
    // Created, then cancelled in a later batch.
    t.db.apply_events(&[event("q", PendingPayment, 4)]).await.unwrap();
    assert_eq!(buckets(&t.db, "a").await, (5, 4, 1));
    t.db.apply_events(&[event("q", Cancelled, 4), event("q", PendingPayment, 4)]).await.unwrap();

    let status = |id: &'static str| {
        let db = t.db.clone();
        async move { db.order(id).await.unwrap().unwrap().status }
    };
    assert_eq!(status("p").await, Paid);
    assert_eq!(status("r").await, RefundRequired);
    assert_eq!(status("x").await, Expired);
    assert_eq!(status("q").await, Cancelled);
    assert_eq!(buckets(&t.db, "a").await, (9, 0, 1));
    assert_eq!(buckets(&t.db, "b").await, (9, 0, 1));
    let rows = t.db.stock("c").await.unwrap();
    assert_eq!((rows[0].pending_units, rows[0].paid_units), (0, 1));
    t.cleanup().await;
}

#[tokio::test]
async fn a_move_past_the_stock_fails_the_batch_and_changes_nothing() {
    let t = TestDb::new().await;
    t.db.insert_campaign(&campaign("c", 3), 1).await.unwrap();
    let ok = event("ok", OrderStatus::PendingPayment, 1);
    let too_big = event("big", OrderStatus::PendingPayment, 5);
    let err = t.db.apply_events(&[ok.clone(), too_big]).await.unwrap_err();
    assert!(matches!(err, DbError::StockGuard { ref sku, .. } if sku == "a"), "{err:?}");
    assert_eq!(testkit::count_orders(&t.pool, "c").await, 0);
    assert_eq!(buckets(&t.db, "a").await, (3, 0, 0));
    t.db.apply_events(&[ok]).await.unwrap();
    assert_eq!(buckets(&t.db, "a").await, (2, 1, 0));
    t.cleanup().await;
}

#[tokio::test]
async fn overdue_pending_orders_are_listed_oldest_first_per_campaign() {
    let t = TestDb::new().await;
    t.db.insert_campaign(&campaign("c", 10), 1).await.unwrap();
    t.db.insert_campaign(&campaign("d", 10), 1).await.unwrap();
    let mut a = event("a", OrderStatus::PendingPayment, 1);
    a.expires_ms = 100;
    let mut b = event("b", OrderStatus::PendingPayment, 1);
    b.expires_ms = 50;
    let mut c = event("c", OrderStatus::Paid, 1);
    c.expires_ms = 10;
    // Another campaign's overdue order is not this campaign's.
    let mut d = event("d", OrderStatus::PendingPayment, 1);
    d.campaign_id = "d".into();
    d.expires_ms = 20;
    t.db.apply_events(&[a, b, c, d]).await.unwrap();
    let ids = |rows: Vec<(i64, String)>| rows.into_iter().map(|(_, id)| id).collect::<Vec<_>>();
    assert_eq!(
        ids(t.db.overdue_orders("c", 101, None, 10).await.unwrap()),
        vec!["b".to_owned(), "a".to_owned()]
    );
    assert_eq!(ids(t.db.overdue_orders("c", 60, None, 10).await.unwrap()), vec!["b".to_owned()]);
    assert_eq!(ids(t.db.overdue_orders("d", 101, None, 10).await.unwrap()), vec!["d".to_owned()]);
    assert!(t.db.overdue_orders("e", 101, None, 10).await.unwrap().is_empty());
    // From a cursor on: the rows behind it, never the ones before.
    let first = t.db.overdue_orders("c", 101, None, 1).await.unwrap();
    assert_eq!(ids(t.db.overdue_orders("c", 101, first.last(), 10).await.unwrap()), vec!["a".to_owned()]);
    t.cleanup().await;
}

/// The orders table has one secondary index, (campaign, status, deadline): the expiry
/// sweep's and a campaign's reads use it, and no order row writes a second one.
#[tokio::test]
async fn orders_have_one_secondary_index() {
    let t = TestDb::new().await;
    let rows: Vec<(String, u64, String)> = sqlx::query_as(
        "SELECT index_name, seq_in_index, column_name FROM information_schema.statistics \
         WHERE table_schema = DATABASE() AND table_name = 'orders' AND index_name <> 'PRIMARY' \
         ORDER BY index_name, seq_in_index",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    let named = |n: &str| rows.iter().filter(|r| r.0 == n).map(|r| r.2.clone()).collect::<Vec<_>>();
    assert_eq!(named("orders_campaign_due"), ["campaign_id", "status", "expires_ms"]);
    assert_eq!(rows.len(), 3, "{rows:?}");
    t.cleanup().await;
}

#[tokio::test]
async fn after_a_rebuild_mysql_refuses_orders_redis_lost_before_it_heard_of_them() {
    let t = TestDb::new().await;
    t.db.insert_campaign(&campaign("c", 10), 1).await.unwrap();
    let mut known = event("known", OrderStatus::PendingPayment, 1);
    known.created_ms = 1_000;
    t.db.apply_events(&[known]).await.unwrap();
    t.db.mark_restored("c", 5_000).await.unwrap();
    let mut lost = event("lost", OrderStatus::PendingPayment, 2);
    lost.created_ms = 4_000;
    let mut lost_cancel = lost.clone();
    lost_cancel.status = OrderStatus::Cancelled;
    let mut fresh = event("fresh", OrderStatus::PendingPayment, 1);
    fresh.created_ms = 6_000;
    let mut known_paid = event("known", OrderStatus::Paid, 1);
    known_paid.created_ms = 1_000;
    let applied = t.db.apply_events(&[lost.clone(), fresh, known_paid, lost_cancel]).await.unwrap();
    assert_eq!(applied.lost, vec!["lost".to_owned()]);
    assert_eq!((applied.inserted, applied.advanced), (1, 1), "the new order and the known one's payment");
    assert!(t.db.order("lost").await.unwrap().is_none());
    assert_eq!(buckets(&t.db, "a").await, (8, 1, 1));
    // The same order, known to be held by Redis (the mark was wrong about it): applied.
    let applied = t.db.apply_events_held_by_redis(&[lost]).await.unwrap();
    assert_eq!((applied.inserted, applied.lost.len()), (1, 0));
    assert_eq!(t.db.order("lost").await.unwrap().unwrap().status, OrderStatus::PendingPayment);
    assert_eq!(buckets(&t.db, "a").await, (6, 3, 1));
    t.cleanup().await;
}

#[tokio::test]
async fn new_orders_batched_with_one_mysql_holds_are_inserted_once_and_move_stock_once() {
    let t = TestDb::new().await;
    t.db.insert_campaign(&campaign("c", 10), 1).await.unwrap();
    // Reservations are inserted without a look-up; "o3" is already held, so the
    // insert of the batch's second chunk (rows in id order: [o1, o2], [o3]) fails after
    // the first went in, and the batch must be applied again from scratch.
    t.db.apply_events(&[event("o3", OrderStatus::PendingPayment, 1)]).await.unwrap();
    let batch = [
        event("o1", OrderStatus::PendingPayment, 1),
        event("o3", OrderStatus::PendingPayment, 1),
        event("o2", OrderStatus::PendingPayment, 1),
    ];
    let applied = t.db.apply_events(&batch).await.unwrap();
    assert_eq!((applied.inserted, applied.unchanged), (2, 1));
    assert_eq!(testkit::count_orders(&t.pool, "c").await, 3);
    assert_eq!(buckets(&t.db, "a").await, (7, 3, 0));
    let rows = t.db.stock("c").await.unwrap();
    assert_eq!((rows[0].pending_units, rows[0].paid_units), (3, 0));
    t.cleanup().await;
}

#[tokio::test]
async fn after_a_rebuild_a_redelivered_reservation_of_an_order_mysql_holds_is_not_taken_for_lost() {
    let t = TestDb::new().await;
    t.db.insert_campaign(&campaign("c", 10), 1).await.unwrap();
    let mut held = event("held", OrderStatus::PendingPayment, 1);
    held.created_ms = 1_000;
    t.db.apply_events(std::slice::from_ref(&held)).await.unwrap();
    t.db.mark_restored("c", 5_000).await.unwrap();
    // Its reservation again, alone (not looked up on the first try) and then with a
    // later event of its own.
    let applied = t.db.apply_events(std::slice::from_ref(&held)).await.unwrap();
    assert_eq!((applied.lost.len(), applied.unchanged), (0, 1), "{applied:?}");
    let mut paid = held.clone();
    paid.status = OrderStatus::Paid;
    let applied = t.db.apply_events(&[held, paid]).await.unwrap();
    assert_eq!((applied.lost.len(), applied.advanced), (0, 1), "{applied:?}");
    assert_eq!(t.db.order("held").await.unwrap().unwrap().status, OrderStatus::Paid);
    assert_eq!(buckets(&t.db, "a").await, (9, 0, 1));
    t.cleanup().await;
}

/// Eight processes' worth of start-ups on a fresh database at once, twenty times: every
/// one connects and finds the schema whole (migrations are serialised, never seen half
/// applied by another starter).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_starts_at_once_on_a_fresh_database_all_succeed_twenty_times() {
    for round in 0..20 {
        let settings = testkit::isolate("mg").mysql;
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let s = settings.clone();
                tokio::spawn(async move {
                    let db = Db::connect(&s).await?;
                    db.close().await;
                    Ok::<(), DbError>(())
                })
            })
            .collect();
        let mut failed = Vec::new();
        for s in starts {
            if let Err(e) = s.await.unwrap() {
                failed.push(e.to_string());
            }
        }
        testkit::drop_database(&settings.url).await;
        assert!(failed.is_empty(), "round {round}: {failed:?}");
    }
}

/// The kept sums as `stock` reads them, then the sums of the orders themselves (the
/// campaign marked uncounted, so `stock` scans): (pending, paid) per sku a and b.
async fn kept_and_scanned(t: &TestDb) -> (Vec<(i64, i64)>, Vec<(i64, i64)>) {
    let units = |rows: Vec<ledger::StockRow>| rows.iter().map(|r| (r.pending_units, r.paid_units)).collect();
    let kept = units(t.db.stock("c").await.unwrap());
    let mark: Option<i64> =
        sqlx::query_scalar("SELECT units_counted_ms FROM campaigns WHERE campaign_id = 'c'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    sqlx::query("UPDATE campaigns SET units_counted_ms = NULL WHERE campaign_id = 'c'")
        .execute(&t.pool)
        .await
        .unwrap();
    let scanned = units(t.db.stock("c").await.unwrap());
    sqlx::query("UPDATE campaigns SET units_counted_ms = ? WHERE campaign_id = 'c'")
        .bind(mark)
        .execute(&t.pool)
        .await
        .unwrap();
    (kept, scanned)
}

#[tokio::test]
async fn the_kept_unit_sums_follow_every_transition_and_match_the_orders() {
    use OrderStatus::*;
    let t = TestDb::new().await;
    t.db.insert_campaign(&campaign("c", 100), 1).await.unwrap();
    // Redeliveries, events out of order, every final state, in several batches.
    t.db.apply_events(&[event("p", Paid, 1), event("q", PendingPayment, 4)]).await.unwrap();
    t.db.apply_events(&[event("p", PendingPayment, 1), event("q", PendingPayment, 4)]).await.unwrap();
    t.db.apply_events(&[
        event("r", PendingPayment, 3),
        event("x", PendingPayment, 2),
        event("x", Expired, 2),
    ])
    .await
    .unwrap();
    t.db.apply_events(&[
        event("r", Cancelled, 3),
        event("s", RefundRequired, 2),
        event("s", PendingPayment, 2),
    ])
    .await
    .unwrap();
    t.db.apply_events(&[event("q", Paid, 4), event("t", PendingPayment, 5)]).await.unwrap();
    let (kept, scanned) = kept_and_scanned(&t).await;
    // Pending: t (5 a, 1 b); paid: p (1 a, 1 b) and q (4 a, 1 b).
    assert_eq!(kept, vec![(5, 5), (1, 2)]);
    assert_eq!(kept, scanned);
    let r = t.db.order("q").await.unwrap().unwrap();
    assert_eq!(r.items, event("q", Paid, 4).items, "the lines read back from the row");
    let all = t.db.campaign_orders("c").await.unwrap();
    assert_eq!(all.len(), 6);
    assert!(all.iter().all(|o| o.items.len() == 2));
    t.cleanup().await;
}

/// A campaign whose first orders were written before lines were inline and sums kept
/// (rows in `order_items`, `units_counted_ms` NULL): read and reconciled by scanning,
/// then counted once; its later orders keep the sums, old rows advance, all agree.
#[tokio::test]
async fn a_campaign_from_before_the_sums_is_read_and_counted_once() {
    use OrderStatus::*;
    let t = TestDb::new().await;
    t.db.insert_campaign(&campaign("c", 100), 1).await.unwrap();
    sqlx::query("UPDATE campaigns SET units_counted_ms = NULL WHERE campaign_id = 'c'")
        .execute(&t.pool)
        .await
        .unwrap();
    // Two orders as the previous build wrote them: lines in order_items, buckets moved.
    for (id, status, qty) in [("old1", "pending_payment", 2), ("old2", "paid", 3)] {
        sqlx::query(
            "INSERT INTO orders (order_id, campaign_id, user_id, status, total_cents, created_ms, expires_ms, \
             updated_ms) VALUES (?, 'c', 'u', ?, 0, 1, 60001, 5)",
        )
        .bind(id)
        .bind(status)
        .execute(&t.pool)
        .await
        .unwrap();
        for (sku, q, price) in [("a", qty, 100), ("b", 1, 50)] {
            sqlx::query(
                "INSERT INTO order_items (order_id, sku_id, quantity, price_cents) VALUES (?, ?, ?, ?)",
            )
            .bind(id)
            .bind(sku)
            .bind(q)
            .bind(price)
            .execute(&t.pool)
            .await
            .unwrap();
        }
    }
    for (sku, avail, resv, sold) in [("a", -5, 2, 3), ("b", -2, 1, 1)] {
        sqlx::query(
            "UPDATE campaign_items SET available = available + ?, reserved = reserved + ?, sold = sold + ? \
             WHERE campaign_id = 'c' AND sku_id = ?",
        )
        .bind(avail)
        .bind(resv)
        .bind(sold)
        .bind(sku)
        .execute(&t.pool)
        .await
        .unwrap();
    }
    // A new order arrives before the count.
    t.db.apply_events(&[event("new1", PendingPayment, 1)]).await.unwrap();
    let before = t.db.stock("c").await.unwrap();
    assert_eq!(
        (before[0].pending_units, before[0].paid_units),
        (2 + 1, 3),
        "scanned: old rows and inline ones"
    );
    let old = t.db.order("old1").await.unwrap().unwrap();
    assert_eq!(old.items.len(), 2, "an old row's lines come from order_items");
    assert_eq!(t.db.campaign_orders("c").await.unwrap().iter().map(|o| o.items.len()).sum::<usize>(), 6);

    assert_eq!(t.db.count_uncounted().await.unwrap(), 1);
    assert_eq!(t.db.count_uncounted().await.unwrap(), 0, "counted once");
    let counted = t.db.stock("c").await.unwrap();
    assert_eq!(
        counted.iter().map(|r| (r.pending_units, r.paid_units)).collect::<Vec<_>>(),
        before.iter().map(|r| (r.pending_units, r.paid_units)).collect::<Vec<_>>()
    );
    // An old row advances (paid), a new one is cancelled: the kept sums follow.
    let mut paid_old = event("old1", Paid, 2);
    paid_old.paid_ms = 9;
    t.db.apply_events(&[paid_old, event("new1", Cancelled, 1)]).await.unwrap();
    let (kept, scanned) = kept_and_scanned(&t).await;
    assert_eq!(kept, vec![(0, 5), (0, 2)]);
    assert_eq!(kept, scanned);
    t.cleanup().await;
}
