//! The worker against the real RabbitMQ, MariaDB and Redis.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::config::Settings;
use common::message::{OrderEvent, OrderStatus};
use engine::campaign::{CampaignLaunch, LaunchItem};
use engine::clock::now_ms;
use engine::domain::{
    CampaignId, ConfirmOutcome, EventId, IdempotencyKey, OrderId, OrderLines, PaymentStatus, ReleaseReason,
    ReserveOutcome, SkuId, UserId,
};
use engine::Engine;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use ledger::Db;

struct Env {
    settings: Settings,
    engine: Engine,
    db: Db,
    /// For the test's own queries.
    pool: sqlx::MySqlPool,
}

impl Env {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut s = testkit::isolate("wk");
        tweak(&mut s);
        s.mysql.max_connections = 4;
        s.worker.metrics_listen = "127.0.0.1:0".parse().unwrap();
        s.worker.reconcile_interval_ms = 200;
        s.worker.relay_claim_idle_ms = 1000;
        let db = Db::connect(&s.mysql).await.unwrap();
        let pool = sqlx::MySqlPool::connect(&s.mysql.url).await.unwrap();
        let engine = Engine::start(&s).unwrap();
        Self { settings: s, engine, db, pool }
    }

    /// Launches in MySQL and Redis, as the operator API does.
    async fn launch(&self, id: &str, stock: u64, window_secs: u32, limit: u64) -> CampaignId {
        let now = now_ms();
        let spec = CampaignLaunch {
            campaign: CampaignId::parse(id).unwrap(),
            starts_ms: now - 1000,
            ends_ms: now + 3_600_000,
            per_user_limit: limit,
            payment_window_secs: window_secs,
            max_orders_per_sec: None,
            max_user_requests_per_sec: None,
            shards: 1,
            items: vec![LaunchItem { sku: SkuId::parse("a").unwrap(), stock, price_cents: 100 }],
        };
        self.db.insert_campaign(&ledger::CampaignRow::from_launch(&spec, "t"), now).await.unwrap();
        self.engine.launch(&spec).await.unwrap();
        self.wait_until_live(&spec.campaign, spec.shards).await;
        spec.campaign
    }

    /// A campaign of `shards` shards, launched as the operator API does.
    async fn launch_sharded(&self, id: &str, stock: u64, limit: u64, shards: u16) -> CampaignId {
        let now = now_ms();
        let spec = CampaignLaunch {
            campaign: CampaignId::parse(id).unwrap(),
            starts_ms: now - 1000,
            ends_ms: now + 3_600_000,
            per_user_limit: limit,
            payment_window_secs: 900,
            max_orders_per_sec: None,
            max_user_requests_per_sec: None,
            shards,
            items: vec![LaunchItem { sku: SkuId::parse("a").unwrap(), stock, price_cents: 100 }],
        };
        self.db.insert_campaign(&ledger::CampaignRow::from_launch(&spec, "t"), now).await.unwrap();
        self.engine.launch(&spec).await.unwrap();
        self.wait_until_live(&spec.campaign, spec.shards).await;
        spec.campaign
    }

    /// A worker's rebuild check that falls between a launch's MySQL row and its Redis
    /// write rebuilds the campaign from that row, its shards answering 503 meanwhile
    /// (as a buyer's retry would, the tests wait that out).
    async fn wait_until_live(&self, c: &CampaignId, shards: u16) {
        self.wait_for("the launched campaign's shards live", Duration::from_secs(10), async || {
            let states = self.engine.shard_states(&[(c.clone(), shards)]).await.unwrap();
            states[0].iter().all(|s| *s == engine::rebuild::ShardState::Live)
        })
        .await;
    }

    async fn reserve(&self, c: &CampaignId, user: &str) -> OrderId {
        let lines = OrderLines::parse(vec![("a".into(), 1)]).unwrap();
        let r = self
            .engine
            .reserve(c, &UserId::parse(user).unwrap(), &IdempotencyKey::parse("k").unwrap(), &lines)
            .await
            .unwrap();
        match r {
            ReserveOutcome::Reserved(r) => r.order_id,
            other => panic!("{other:?}"),
        }
    }

    /// One reservation each for users `u0..u<n>`.
    async fn reserve_many(&self, c: &CampaignId, n: usize) -> Vec<OrderId> {
        let mut orders = Vec::with_capacity(n);
        for i in 0..n {
            orders.push(self.reserve(c, &format!("u{i}")).await);
        }
        orders
    }

    /// Pays order `o` (100 cents) with event `e<i>`.
    async fn pay(&self, o: &OrderId, i: usize) -> ConfirmOutcome {
        let ev = EventId::parse(&format!("e{i}")).unwrap();
        self.engine.confirm(o, &ev, 100, PaymentStatus::Succeeded).await.unwrap()
    }

    /// Looks until `ok` or `limit`, a look that is still running at the limit included.
    async fn wait_for(&self, what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) {
        let until = tokio::time::Instant::now() + limit;
        while !tokio::time::timeout_at(until, ok())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        {
            assert!(tokio::time::Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connection of the test's own, for looking under the engine.
    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.settings.redis.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn consistent(&self, c: &CampaignId) -> bool {
        ledger::reconcile::check(&self.engine, &self.db, c).await.unwrap().unwrap().consistent
    }

    /// Once the worker's queues exist, order `a` of `user` reserves a unit in MySQL
    /// (its event published straight to the orders exchange).
    /// Waits until the worker declared its queues (the retry queue comes last), so a
    /// message published now is routed, not dropped.
    async fn wait_for_topology(&self) {
        self.wait_for("topology", Duration::from_secs(10), async || {
            self.try_queue_len(&format!("{}.retry", self.settings.namespace)).await == Some(0)
        })
        .await;
    }

    async fn holds_a_unit(&self, a: &OrderId, user: &str, expires: i64) {
        self.wait_for_topology().await;
        self.publish_raw(
            &serde_json::to_vec(&order_event(a, user, OrderStatus::PendingPayment, expires)).unwrap(),
        )
        .await;
        self.wait_for("A in MySQL", Duration::from_secs(10), async || {
            self.db.order(a.as_str()).await.unwrap().is_some()
        })
        .await;
    }

    async fn publish_raw(&self, body: &[u8]) {
        let exchange = format!("{}.orders", self.settings.namespace);
        self.publish_to(&exchange, sync_worker::topology::ORDER_ROUTING_KEY, body).await;
    }

    /// Publishes `body` to the timeouts exchange, as an expired payment timer arrives.
    async fn publish_due_timer(&self, body: &[u8]) {
        let exchange = format!("{}.timeouts", self.settings.namespace);
        self.publish_to(&exchange, sync_worker::topology::TIMEOUT_ROUTING_KEY, body).await;
    }

    async fn publish_to(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        broker("publishing a message", async {
            let conn =
                Connection::connect(&self.settings.amqp.url, ConnectionProperties::default()).await.unwrap();
            let ch = conn.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
            // Mandatory and confirmed: a message the exchange could not route comes back
            // (the worker's queues not declared yet) and fails the test here.
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                    body,
                    BasicProperties::default(),
                )
                .await
                .unwrap();
            assert!(matches!(confirm.await.unwrap(), lapin::Confirmation::Ack(None)), "published and routed");
            conn.close(200, "done".into()).await.unwrap();
        })
        .await;
    }

    async fn queue_len(&self, queue: &str) -> u32 {
        self.try_queue_len(queue).await.unwrap()
    }

    /// `None` while the queue does not exist.
    async fn try_queue_len(&self, queue: &str) -> Option<u32> {
        // Read-only, so tried again on a fresh connection when one does not answer.
        for _ in 0..3 {
            if let Ok(len) = tokio::time::timeout(Duration::from_secs(10), self.queue_len_once(queue)).await {
                return len;
            }
        }
        panic!("RabbitMQ: reading the length of {queue} took over 10 s three times")
    }

    async fn queue_len_once(&self, queue: &str) -> Option<u32> {
        let conn =
            Connection::connect(&self.settings.amqp.url, ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let declared = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await;
        let _ = conn.close(200, "done".into()).await;
        declared.ok().map(|q| q.message_count())
    }

    /// The reason an order is in the dead-letter list for, if it is.
    async fn dead_lettered(&self, order: &OrderId) -> Option<String> {
        let (listed, _) = self.db.dead_letter_page(None, 200).await.unwrap();
        listed.into_iter().find(|l| l.order_id == order.as_str()).map(|l| l.reason)
    }

    async fn count_orders(&self, campaign: &str) -> i64 {
        testkit::count_orders(&self.pool, campaign).await
    }

    async fn cleanup(self) {
        self.pool.close().await;
        self.db.close().await;
        testkit::cleanup(&self.settings).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reservation_becomes_exactly_one_mysql_order_in_its_final_state() {
    let env = Env::new().await;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let c = env.launch("c", 500, 900, 1).await;
    let orders = env.reserve_many(&c, 200).await;
    for (i, o) in orders.iter().enumerate().take(50) {
        assert_eq!(env.pay(o, i).await, ConfirmOutcome::Paid);
    }
    for o in &orders[50..100] {
        env.engine.release(o, ReleaseReason::Cancelled).await.unwrap();
    }
    env.wait_for("200 orders, consistent", Duration::from_secs(20), async || {
        env.count_orders("c").await == 200 && env.consistent(&c).await
    })
    .await;
    for (i, o) in orders.iter().enumerate() {
        let row = env.db.order(o.as_str()).await.unwrap().unwrap();
        let expected = match i {
            0..50 => OrderStatus::Paid,
            50..100 => OrderStatus::Cancelled,
            _ => OrderStatus::PendingPayment,
        };
        assert_eq!(row.status, expected, "order {i}");
    }
    let stock = env.db.stock("c").await.unwrap();
    assert_eq!((stock[0].available, stock[0].reserved, stock[0].sold), (350, 100, 50));
    worker.shutdown().await;
    env.cleanup().await;
}

/// Reservations trickling in one at a time, 20 ms apart, for about a second: each one
/// finds the outbox empty and wakes the relay. With `worker.relay_pace_ms` the relay
/// waits after a round in which no stream gave a full batch, so they travel in a few rounds (each
/// round pays a MySQL record, Redis reads and a publish), and every one still reaches
/// MySQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_relay_carries_a_trickle_of_reservations_in_few_rounds() {
    let env = Env::with(|s| s.worker.relay_pace_ms = 250).await;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let c = env.launch("c", 100, 900, 1).await;
    for i in 0..50 {
        env.reserve(&c, &format!("u{i}")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.wait_for("50 orders in MySQL", Duration::from_secs(20), async || env.count_orders("c").await == 50)
        .await;
    let rounds = worker.ctx.metrics.publish_seconds.get_sample_count();
    assert!((1..=12).contains(&rounds), "{rounds} relay rounds for 50 reservations over about a second");
    worker.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_expire_once_in_both_stores_and_late_payments_need_a_refund() {
    let env = Env::new().await;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let c = env.launch("c", 20, 1, 1).await;
    let orders = env.reserve_many(&c, 10).await;
    for (i, o) in orders.iter().enumerate().take(5) {
        env.pay(o, i).await;
    }
    let deadline = now_ms() + 1000;
    env.wait_for("expiry in redis and mysql", Duration::from_secs(10), async || {
        let mut ok = true;
        for o in &orders[5..] {
            ok &= env.engine.order(o).await.unwrap().unwrap().status == OrderStatus::Expired;
            ok &= env.db.order(o.as_str()).await.unwrap().is_some_and(|r| r.status == OrderStatus::Expired);
        }
        ok && env.consistent(&c).await
    })
    .await;
    // Expired within the contract's 2 s of the deadline.
    assert!(now_ms() - deadline < 4000);
    let counters = env.engine.counters(&c, &[SkuId::parse("a").unwrap()]).await.unwrap();
    assert_eq!((counters[0].available, counters[0].reserved, counters[0].sold), (15, 0, 5));
    // A payment after expiry: refund_required, no unit taken again, no second release.
    let ev = EventId::parse("late").unwrap();
    let late = env.engine.confirm(&orders[9], &ev, 100, PaymentStatus::Succeeded).await.unwrap();
    assert_eq!(late, ConfirmOutcome::RefundRequired);
    assert_eq!(
        env.engine.release(&orders[9], ReleaseReason::Expired).await.unwrap(),
        engine::domain::ReleaseOutcome::NotPending(OrderStatus::RefundRequired)
    );
    env.wait_for("refund_required in mysql", Duration::from_secs(10), async || {
        env.db.order(orders[9].as_str()).await.unwrap().unwrap().status == OrderStatus::RefundRequired
    })
    .await;
    let stock = env.db.stock("c").await.unwrap();
    assert_eq!((stock[0].available, stock[0].reserved, stock[0].sold), (15, 0, 5));
    assert!(env.consistent(&c).await);
    worker.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_three_times_and_a_poison_message() {
    let env = Env::new().await;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    env.launch("c", 10, 900, 5).await;
    let event = OrderEvent {
        order_id: OrderId::generate(&CampaignId::parse("c").unwrap()).to_string(),
        campaign_id: "c".into(),
        user_id: "u".into(),
        status: OrderStatus::PendingPayment,
        items: vec![common::message::OrderItem { sku_id: "a".into(), quantity: 2, price_cents: 100 }],
        total_cents: 200,
        created_ms: now_ms(),
        expires_ms: now_ms() + 900_000,
        paid_ms: 0,
        payment_window_secs: 900,
        event_ms: now_ms(),
        idempotency_key: None,
        payment_event: None,
        trace: None,
    };
    env.wait_for_topology().await;
    env.publish_raw(b"{ not an order").await;
    let body = serde_json::to_vec(&event).unwrap();
    for _ in 0..3 {
        env.publish_raw(&body).await;
    }
    env.wait_for("one order", Duration::from_secs(10), async || env.count_orders("c").await == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.count_orders("c").await, 1);
    let stock = env.db.stock("c").await.unwrap();
    assert_eq!((stock[0].available, stock[0].reserved), (8, 2), "moved once");
    env.wait_for("the poison kept in the dead-letter list", Duration::from_secs(10), async || {
        let (listed, _) = env.db.dead_letter_page(None, 10).await.unwrap();
        listed.len() == 1 && listed[0].reason == "unreadable"
    })
    .await;
    worker.shutdown().await;
    env.cleanup().await;
}

/// A payment timer whose campaign neither Redis nor MySQL knows (its data deleted, or
/// a database dropped under a worker) has nothing to release: it is dropped and
/// counted, not requeued every half second forever. A timer whose campaign MySQL knows
/// is still kept while Redis cannot answer for it.
#[tokio::test]
async fn a_payment_timer_of_a_campaign_nobody_knows_is_dropped_not_requeued_forever() {
    let env = Env::new().await;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    env.wait_for_topology().await;
    let gone = OrderId::generate(&CampaignId::parse("gone").unwrap()).to_string();
    let body = serde_json::to_vec(&sync_worker::persister::Timer { order_ids: vec![gone] }).unwrap();
    env.publish_due_timer(&body).await;
    let dropped = || counter(&worker.ctx.metrics.render(), "flashsale_expiry_timer_orders_dropped_total");
    env.wait_for("the timer dropped and counted", Duration::from_secs(10), async || dropped() >= 1.0).await;
    // Acknowledged: not seen again (a requeued timer comes back within a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(dropped(), 1.0);
    let queue = format!("{}.timeouts", env.settings.namespace);
    assert_eq!(env.queue_len(&queue).await, 0);
    worker.shutdown().await;
    env.cleanup().await;
}

/// A test's own exchange with RabbitMQ, bounded: a broker that does not answer fails
/// the test with what it was doing instead of holding it (and the suite) for good.
async fn broker<T>(what: &str, exchange: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_else(|_| panic!("RabbitMQ: {what} took over 20 s"))
}

fn spawn_worker(settings: &Settings) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sync-worker"))
        .env("FLASHSALE__NAMESPACE", &settings.namespace)
        .env("FLASHSALE__MYSQL__URL", &settings.mysql.url)
        .env("FLASHSALE__WORKER__METRICS_LISTEN", "127.0.0.1:0")
        .env("FLASHSALE__WORKER__RELAY_CLAIM_IDLE_MS", "1000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_loses_and_duplicates_nothing() {
    let env = Env::new().await;
    let c = env.launch("c", 20_000, 900, 1).await;
    let mut worker = spawn_worker(&env.settings);
    let total = 10_000;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let engine = env.engine.clone();
            let c = c.clone();
            tokio::spawn(async move {
                let lines = OrderLines::parse(vec![("a".into(), 1)]).unwrap();
                let key = IdempotencyKey::parse("k").unwrap();
                for i in (w..total).step_by(8) {
                    let user = UserId::parse(&format!("u{i}")).unwrap();
                    let r = engine.reserve(&c, &user, &key, &lines).await.unwrap();
                    assert!(matches!(r, ReserveOutcome::Reserved(_)), "{r:?}");
                }
            })
        })
        .collect();
    // Kill it once part of the stream is in MySQL.
    env.wait_for("some orders persisted", Duration::from_secs(30), async || {
        env.count_orders("c").await > 500
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    let at_kill = env.count_orders("c").await;
    for w in writers {
        w.await.unwrap();
    }
    let mut worker = spawn_worker(&env.settings);
    env.wait_for("all 10,000 orders, consistent", Duration::from_secs(60), async || {
        env.count_orders("c").await == total as i64 && env.consistent(&c).await
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(at_kill < total as i64, "the kill happened mid-stream ({at_kill} persisted)");
    let stock = env.db.stock("c").await.unwrap();
    assert_eq!((stock[0].available, stock[0].reserved), (10_000, 10_000));
    env.cleanup().await;
}

fn order_event(id: &OrderId, user: &str, status: OrderStatus, expires_ms: i64) -> OrderEvent {
    OrderEvent {
        order_id: id.to_string(),
        campaign_id: id.campaign().to_string(),
        user_id: user.into(),
        status,
        items: vec![common::message::OrderItem { sku_id: "a".into(), quantity: 1, price_cents: 100 }],
        total_cents: 100,
        created_ms: now_ms(),
        expires_ms,
        paid_ms: 0,
        payment_window_secs: 900,
        event_ms: now_ms(),
        idempotency_key: None,
        payment_event: None,
        trace: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_reaching_mysql_before_the_release_it_needs_waits_for_it() {
    let env = Env::new().await;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let c = env.launch("c", 1, 900, 5).await;
    let a = OrderId::generate(&c);
    let b = OrderId::generate(&c);
    let expires = now_ms() + 900_000;
    // A holds the only unit; A is cancelled and B reserves the freed unit, but B's
    // event reaches MySQL first (a second worker, a relay retry, a redelivery).
    env.holds_a_unit(&a, "ua", expires).await;
    env.publish_raw(
        &serde_json::to_vec(&order_event(&b, "ub", OrderStatus::PendingPayment, expires)).unwrap(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    env.publish_raw(&serde_json::to_vec(&order_event(&a, "ua", OrderStatus::Cancelled, expires)).unwrap())
        .await;
    env.wait_for("B applied after A's release", Duration::from_secs(10), async || {
        env.db.order(b.as_str()).await.unwrap().is_some_and(|r| r.status == OrderStatus::PendingPayment)
    })
    .await;
    assert_eq!(env.db.order(a.as_str()).await.unwrap().unwrap().status, OrderStatus::Cancelled);
    let stock = env.db.stock("c").await.unwrap();
    assert_eq!((stock[0].available, stock[0].reserved, stock[0].sold), (0, 1, 0));
    assert_eq!(env.queue_len(&format!("{}.dead", env.settings.namespace)).await, 0, "nothing dead-lettered");
    assert!(worker.ctx.metrics.render().contains("flashsale_persist_retries_total"));
    worker.shutdown().await;
    env.cleanup().await;
}

/// A message of many events (the relay joins entries) refused by the stock guard is
/// taken apart: the events that can apply do at once, only the refused one waits (in
/// a message of its own), and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_message_refused_by_the_guard_is_taken_apart() {
    let env = Env::new().await;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let c = env.launch("c", 2, 900, 5).await;
    let (a, b, x) = (OrderId::generate(&c), OrderId::generate(&c), OrderId::generate(&c));
    let expires = now_ms() + 900_000;
    env.holds_a_unit(&a, "ua", expires).await;
    // One message: X takes the second unit (fine), B the unit A will release (too early).
    let joined = common::message::OrderMessage::Batch {
        version: 2,
        events: vec![
            order_event(&x, "ux", OrderStatus::PendingPayment, expires),
            order_event(&b, "ub", OrderStatus::PendingPayment, expires),
        ],
    };
    env.publish_raw(&serde_json::to_vec(&joined).unwrap()).await;
    env.wait_for("X applied without waiting for B", Duration::from_secs(10), async || {
        env.db.order(x.as_str()).await.unwrap().is_some()
    })
    .await;
    assert!(env.db.order(b.as_str()).await.unwrap().is_none(), "B waits for A's release");
    env.publish_raw(&serde_json::to_vec(&order_event(&a, "ua", OrderStatus::Cancelled, expires)).unwrap())
        .await;
    env.wait_for("B applied after A's release", Duration::from_secs(10), async || {
        env.db.order(b.as_str()).await.unwrap().is_some()
    })
    .await;
    let stock = env.db.stock("c").await.unwrap();
    assert_eq!((stock[0].available, stock[0].reserved, stock[0].sold), (0, 2, 0));
    assert_eq!(env.queue_len(&format!("{}.dead", env.settings.namespace)).await, 0, "nothing dead-lettered");
    worker.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mysql_sweep_settles_rows_redis_moved_on_from_and_reaches_the_rows_behind() {
    let env = Env::new().await;
    let c = env.launch("c", 2000, 1, 1).await;
    // Orders in Redis and in MySQL as pending; then Redis moves on and MySQL never
    // hears of it (the events are lost): 600 paid (more than one sweep page, at the
    // head of the overdue list), 30 lost by Redis, and behind them 20 still pending.
    let mut paid = Vec::new();
    let mut lost = Vec::new();
    let mut pending = Vec::new();
    for i in 0..650 {
        let o = env.reserve(&c, &format!("u{i}")).await;
        let rec = env.engine.order(&o).await.unwrap().unwrap();
        let mut ev = order_event(&o, &format!("u{i}"), OrderStatus::PendingPayment, rec.expires_ms);
        ev.created_ms = rec.created_ms;
        env.db.apply_events(&[ev]).await.unwrap();
        match i {
            0..600 => {
                env.pay(&o, i).await;
                paid.push(o);
            }
            600..630 => lost.push(o),
            _ => pending.push(o),
        }
    }
    let mut raw = env.raw().await;
    let keys = engine::keys::KeySpace::new(&env.settings.namespace);
    for o in &lost {
        let _: () = redis::cmd("DEL").arg(keys.order(o)).query_async(&mut raw).await.unwrap();
    }
    // A worker that never reaches the broker: only the sweeps can settle these.
    let mut ws = env.settings.clone();
    ws.amqp.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    ws.amqp.call_timeout_ms = 500;
    let worker = sync_worker::supervisor::start(ws).await.unwrap();
    env.wait_for("every overdue row settled", Duration::from_secs(30), async || {
        let mut ok = true;
        for o in &paid {
            ok &= env.db.order(o.as_str()).await.unwrap().unwrap().status == OrderStatus::Paid;
            if !ok {
                return false;
            }
        }
        for o in lost.iter().chain(&pending) {
            ok &= env.db.order(o.as_str()).await.unwrap().unwrap().status == OrderStatus::Expired;
        }
        ok
    })
    .await;
    let stock = env.db.stock("c").await.unwrap();
    assert_eq!((stock[0].reserved, stock[0].sold), (0, 600));
    worker.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_deadlines_in_the_same_seconds_are_all_released_within_two_seconds() {
    let env = Env::new().await;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let total = 10_000;
    let c = env.launch("c", total as u64, 3, 1).await;
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let engine = env.engine.clone();
            let c = c.clone();
            tokio::spawn(async move {
                let lines = OrderLines::parse(vec![("a".into(), 1)]).unwrap();
                let key = IdempotencyKey::parse("k").unwrap();
                let mut last_expiry = 0;
                for i in (w..total).step_by(16) {
                    let user = UserId::parse(&format!("u{i}")).unwrap();
                    match engine.reserve(&c, &user, &key, &lines).await.unwrap() {
                        ReserveOutcome::Reserved(r) => last_expiry = last_expiry.max(r.expires_ms),
                        other => panic!("{other:?}"),
                    }
                }
                last_expiry
            })
        })
        .collect();
    let mut last_expiry = 0;
    for w in writers {
        last_expiry = last_expiry.max(w.await.unwrap());
    }
    env.wait_for("every unit back", Duration::from_secs(30), async || {
        env.engine.counters(&c, &[SkuId::parse("a").unwrap()]).await.unwrap()[0].available == total as u64
    })
    .await;
    let late_ms = now_ms() - last_expiry;
    println!("released {total} orders; the last one {late_ms} ms after the last deadline");
    assert!(late_ms <= 2000, "the last release came {late_ms} ms after the last deadline");
    worker.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_settled_campaign_is_retired_from_redis_after_its_retention() {
    let mut env = Env::new().await;
    env.settings.worker.retain_finished_secs = 1;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let now = now_ms();
    let spec = CampaignLaunch {
        campaign: CampaignId::parse("c").unwrap(),
        starts_ms: now - 1000,
        ends_ms: now + 1500,
        per_user_limit: 1,
        payment_window_secs: 1,
        max_orders_per_sec: None,
        max_user_requests_per_sec: None,
        shards: 1,
        items: vec![LaunchItem { sku: SkuId::parse("a").unwrap(), stock: 10, price_cents: 100 }],
    };
    env.db.insert_campaign(&ledger::CampaignRow::from_launch(&spec, "t"), now).await.unwrap();
    env.engine.launch(&spec).await.unwrap();
    let c = spec.campaign.clone();
    env.wait_until_live(&c, 1).await;
    let paid = env.reserve(&c, "u1").await;
    env.engine.confirm(&paid, &EventId::parse("e1").unwrap(), 100, PaymentStatus::Succeeded).await.unwrap();
    let cancelled = env.reserve(&c, "u2").await;
    env.engine.release(&cancelled, ReleaseReason::Cancelled).await.unwrap();
    env.reserve(&c, "u3").await; // left to expire
    env.wait_for("retired", Duration::from_secs(20), async || {
        let row: Option<i64> = sqlx::query_scalar("SELECT retired_ms FROM campaigns WHERE campaign_id = 'c'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        row.is_some()
    })
    .await;
    let mut raw = env.raw().await;
    let mut left = testkit::keys_matching(&mut raw, &format!("{}:{{c:c}}:*", env.settings.namespace)).await;
    left.retain(|k| !k.contains(":payevt:") && !k.contains(":idem:")); // expire by their own TTLs
    left.sort();
    let prefix = format!("{}:{{c:c}}:", env.settings.namespace);
    assert_eq!(left, vec![format!("{prefix}meta"), format!("{prefix}stock:a")], "only meta and stock stay");
    let campaigns: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{}:campaigns", env.settings.namespace))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(campaigns.is_empty(), "off the index: {campaigns:?}");
    // Still answers as an ended campaign, and its counters still show.
    let lines = OrderLines::parse(vec![("a".into(), 1)]).unwrap();
    let (late, k) = (UserId::parse("late").unwrap(), IdempotencyKey::parse("k").unwrap());
    assert_eq!(env.engine.reserve(&c, &late, &k, &lines).await.unwrap(), ReserveOutcome::NotActive);
    let counters = env.engine.counters(&c, &[SkuId::parse("a").unwrap()]).await.unwrap();
    assert_eq!((counters[0].available, counters[0].sold), (9, 1));
    worker.shutdown().await;
    env.cleanup().await;
}

/// Cancel-and-resell churn on one hot sku, two worker processes on one queue, one of
/// them SIGKILLed and restarted mid-way: every reservation ends in MySQL with the
/// state its buyer was told, nothing is dead-lettered, Redis and MySQL reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_churn_on_one_hot_sku_and_a_kill_lose_nothing() {
    let full = std::env::var("FLASHSALE_FAULTS_FULL").is_ok_and(|v| v == "1");
    let churn_for = Duration::from_secs(if full { 20 } else { 8 });
    let env = Env::new().await;
    let c = env.launch("c", 20, 900, 1).await;
    let mut workers = vec![spawn_worker(&env.settings), spawn_worker(&env.settings)];
    let started = Instant::now();
    let buyers: Vec<_> = (0..8)
        .map(|w| {
            let engine = env.engine.clone();
            let c = c.clone();
            tokio::spawn(async move {
                let lines = OrderLines::parse(vec![("a".into(), 1)]).unwrap();
                let key = IdempotencyKey::parse("k").unwrap();
                let mut told: Vec<(OrderId, OrderStatus)> = Vec::new();
                let mut i = w;
                while started.elapsed() < churn_for {
                    let user = UserId::parse(&format!("u{i}")).unwrap();
                    i += 8;
                    match engine.reserve(&c, &user, &key, &lines).await.unwrap() {
                        ReserveOutcome::Reserved(r) => {
                            // Most give the unit straight back; a few keep it.
                            if i % 5 != 0 {
                                let out =
                                    engine.release(&r.order_id, ReleaseReason::Cancelled).await.unwrap();
                                assert_eq!(out, engine::domain::ReleaseOutcome::Released);
                                told.push((r.order_id, OrderStatus::Cancelled));
                            } else {
                                told.push((r.order_id, OrderStatus::PendingPayment));
                            }
                        }
                        ReserveOutcome::SoldOut(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                        other => panic!("{other:?}"),
                    }
                }
                told
            })
        })
        .collect();
    tokio::time::sleep(churn_for / 2).await;
    workers[0].kill().unwrap();
    workers[0].wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    workers[0] = spawn_worker(&env.settings);
    let mut told = Vec::new();
    for b in buyers {
        told.extend(b.await.unwrap());
    }
    assert!(told.len() > 50, "churn happened: {} reservations", told.len());
    println!("{} reservations churned", told.len());
    let told: HashMap<String, OrderStatus> =
        told.into_iter().map(|(id, s)| (id.as_str().to_owned(), s)).collect();
    // One read of the campaign's orders per look: thousands of orders churn through,
    // and a look that asked for each on its own could outlast the wait many times.
    env.wait_for("every reservation in MySQL as told, consistent", Duration::from_secs(60), async || {
        let rows = env.db.campaign_orders("c").await.unwrap();
        let held: HashMap<String, OrderStatus> = rows.into_iter().map(|r| (r.order_id, r.status)).collect();
        held == told && env.consistent(&c).await
    })
    .await;
    assert_eq!(env.queue_len(&format!("{}.dead", env.settings.namespace)).await, 0, "nothing dead-lettered");
    for mut w in workers {
        w.kill().unwrap();
        w.wait().unwrap();
    }
    env.cleanup().await;
}

/// Redis loses a campaign; the worker rebuilds it from MySQL, and an order that was
/// relayed before the loss but reaches MySQL only after the rebuild is refused and
/// dead-lettered (its unit went back on sale), never applied on top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_redis_lost_is_rebuilt_and_orders_lost_with_it_are_refused() {
    let mut env = Env::new().await;
    env.settings.worker.restore_check_ms = 100;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let c = env.launch("c", 3, 900, 1).await;
    let kept = env.reserve(&c, "u1").await;
    env.wait_for("u1 in MySQL", Duration::from_secs(10), async || env.count_orders("c").await == 1).await;
    // An order granted and relayed, its message not yet persisted, when Redis loses
    // everything (here: the message is published only after the rebuild).
    let lost = OrderId::generate(&c);
    let lost_event = order_event(&lost, "u2", OrderStatus::PendingPayment, now_ms() + 900_000);
    let mut raw = env.raw().await;
    let keys = testkit::keys_matching(&mut raw, &format!("{}:*", env.settings.namespace)).await;
    let _: () = redis::cmd("DEL").arg(keys).query_async(&mut raw).await.unwrap();
    // Rebuilt, not just begun: the rebuild writes the meta first, with `restoring` set,
    // and every script answers 503 until it is cleared.
    let a = SkuId::parse("a").unwrap();
    env.wait_for("rebuilt", Duration::from_secs(5), async || {
        env.engine.counters(&c, std::slice::from_ref(&a)).await.is_ok()
    })
    .await;
    let counters = env.engine.counters(&c, std::slice::from_ref(&a)).await.unwrap();
    assert_eq!((counters[0].available, counters[0].reserved), (2, 1), "u1's unit still held");
    assert_eq!(env.engine.order(&kept).await.unwrap().unwrap().status, OrderStatus::PendingPayment);
    env.publish_raw(&serde_json::to_vec(&lost_event).unwrap()).await;
    env.wait_for("the lost order dead-lettered and listed", Duration::from_secs(10), async || {
        env.dead_lettered(&lost).await.as_deref() == Some("lost_by_redis")
    })
    .await;
    assert!(env.db.order(lost.as_str()).await.unwrap().is_none(), "never applied");
    // The sale goes on: the two units left sell, once each, and MySQL agrees.
    env.reserve(&c, "u3").await;
    env.reserve(&c, "u4").await;
    env.wait_for("consistent", Duration::from_secs(10), async || {
        env.count_orders("c").await == 3 && env.consistent(&c).await
    })
    .await;
    assert!(worker
        .ctx
        .metrics
        .render()
        .contains("flashsale_dead_lettered_events_total{reason=\"lost_by_redis\"} 1"));
    worker.shutdown().await;
    env.cleanup().await;
}

/// A rebuild mark can be later than orders Redis holds: a rebuild check that saw a
/// campaign in MySQL but not yet in Redis (its launch under way) marks it after the
/// launch's first orders, or its clock runs ahead of Redis's. Those orders still
/// reach MySQL; only an order Redis does not hold is refused as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_redis_holds_are_applied_whatever_a_rebuild_mark_says() {
    let env = Env::new().await;
    let c = env.launch("c", 10, 900, 1).await;
    let held = env.reserve_many(&c, 3).await;
    env.db.mark_restored("c", now_ms() + 60_000).await.unwrap();
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let lost = OrderId::generate(&c);
    env.wait_for_topology().await;
    env.publish_raw(
        &serde_json::to_vec(&order_event(&lost, "x", OrderStatus::PendingPayment, now_ms() + 900_000))
            .unwrap(),
    )
    .await;
    env.wait_for(
        "the held orders in MySQL, the other one dead-lettered",
        Duration::from_secs(20),
        async || {
            env.count_orders("c").await == 3
                && env.dead_lettered(&lost).await.as_deref() == Some("lost_by_redis")
        },
    )
    .await;
    for o in &held {
        assert_eq!(env.db.order(o.as_str()).await.unwrap().unwrap().status, OrderStatus::PendingPayment);
    }
    assert!(env.db.order(lost.as_str()).await.unwrap().is_none());
    assert!(env.consistent(&c).await);
    worker.shutdown().await;
    env.cleanup().await;
}

/// The same, when the held orders' stock moves do not fit MySQL yet: B holds the unit
/// A's cancellation freed, and B's event comes first. B waits in the retry queue until
/// A's cancellation is applied, then is applied too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_order_whose_move_does_not_fit_yet_waits_for_the_event_it_needs() {
    let mut env = Env::new().await;
    // Long enough for the test to see both events waiting before either comes back.
    env.settings.worker.persist_retry_ms = 3000;
    let c = env.launch("c", 1, 900, 1).await;
    let a = env.reserve(&c, "ua").await;
    env.engine.release(&a, ReleaseReason::Cancelled).await.unwrap();
    let b = env.reserve(&c, "ub").await;
    // The relay must not send these: the test sends them itself, in the order it needs.
    let mut raw = env.raw().await;
    let outboxes = testkit::keys_matching(&mut raw, &format!("{}:*outbox", env.settings.namespace)).await;
    assert!(!outboxes.is_empty());
    let _: () = redis::cmd("DEL").arg(outboxes).query_async(&mut raw).await.unwrap();
    env.db.mark_restored("c", now_ms() + 60_000).await.unwrap();
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    env.wait_for_topology().await;
    let pending = |o: &OrderId, u: &str| order_event(o, u, OrderStatus::PendingPayment, now_ms() + 900_000);
    let both = common::message::OrderMessage::Batch {
        version: 2,
        events: vec![pending(&a, "ua"), pending(&b, "ub")],
    };
    env.publish_raw(&serde_json::to_vec(&both).unwrap()).await;
    env.wait_for("the pair set aside", Duration::from_secs(10), async || {
        counter(&worker.ctx.metrics.render(), "flashsale_persist_retries_total") >= 2.0
    })
    .await;
    assert_eq!(env.count_orders("c").await, 0);
    let mut cancelled = pending(&a, "ua");
    cancelled.status = OrderStatus::Cancelled;
    env.publish_raw(&serde_json::to_vec(&cancelled).unwrap()).await;
    env.wait_for("A cancelled and B pending in MySQL", Duration::from_secs(20), async || {
        env.db.order(a.as_str()).await.unwrap().map(|r| r.status) == Some(OrderStatus::Cancelled)
            && env.db.order(b.as_str()).await.unwrap().map(|r| r.status) == Some(OrderStatus::PendingPayment)
    })
    .await;
    let stock = env.db.stock("c").await.unwrap();
    assert_eq!((stock[0].available, stock[0].reserved), (0, 1));
    assert_eq!(env.queue_len(&format!("{}.dead", env.settings.namespace)).await, 0, "nothing dead-lettered");
    worker.shutdown().await;
    env.cleanup().await;
}

/// The value of an unlabelled metric in a Prometheus text rendering (0 when absent).
fn counter(rendered: &str, name: &str) -> f64 {
    rendered
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Redis's keys of one campaign shard are gone (its master restarted empty) while the
/// campaign's other shards keep theirs: the worker finds that shard within its check
/// interval and rebuilds it from MySQL and the surviving shards; its buyers' retries
/// and repeated payment events are answered as before the loss; the sale goes on to
/// sell exactly the stock, and Redis and MySQL agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lost_shard_is_found_and_rebuilt_while_the_others_sell() {
    let mut env = Env::new().await;
    env.settings.worker.restore_check_ms = 200;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let c = env.launch_sharded("sh", 90, 1, 3).await;
    let map = engine::shards::ShardMap::new(&c, 3);
    let lines = OrderLines::parse(vec![("a".into(), 1)]).unwrap();
    let mut lost = Vec::new();
    for i in 0..30 {
        let (user, key) =
            (UserId::parse(&format!("u{i}")).unwrap(), IdempotencyKey::parse(&format!("k{i}")).unwrap());
        let ReserveOutcome::Reserved(r) = env.engine.reserve(&c, &user, &key, &lines).await.unwrap() else {
            panic!("reserved")
        };
        let mut event = None;
        if i % 2 == 0 {
            let ev = EventId::parse(&format!("pay-{i}")).unwrap();
            assert_eq!(
                env.engine.confirm(&r.order_id, &ev, 100, PaymentStatus::Succeeded).await.unwrap(),
                ConfirmOutcome::Paid
            );
            event = Some(ev);
        }
        if map.of_order(&r.order_id) == 1 {
            lost.push((user, key, r.order_id, event));
        }
    }
    assert!(lost.len() > 2, "orders in the shard about to be lost");
    env.wait_for("every order and payment in MySQL", Duration::from_secs(10), async || {
        env.count_orders("sh").await == 30 && env.db.stock("sh").await.unwrap()[0].sold == 15
    })
    .await;

    testkit::lose_shard(&env.settings.redis, &env.settings.namespace, map.tag(1).as_str()).await;
    let lost_at = Instant::now();
    env.wait_for("the lost shard rebuilt", Duration::from_secs(5), async || {
        let states = env.engine.shard_states(&[(c.clone(), 3)]).await.unwrap();
        states[0].iter().all(|s| *s == engine::rebuild::ShardState::Live)
    })
    .await;
    println!("shard rebuilt {:?} after its data was lost", lost_at.elapsed());
    for (user, key, order, event) in &lost {
        let again = env.engine.reserve(&c, user, key, &lines).await.unwrap();
        assert!(matches!(&again, ReserveOutcome::Replayed(r) if &r.order_id == order), "{again:?}");
        if let Some(ev) = event {
            let again = env.engine.confirm(order, ev, 100, PaymentStatus::Succeeded).await.unwrap();
            assert!(matches!(again, ConfirmOutcome::Duplicate(_)), "{again:?}");
        }
    }
    // Demand above what is left: exactly the stock sells.
    let mut sold = 30;
    for i in 30..140 {
        let user = UserId::parse(&format!("u{i}")).unwrap();
        match env.engine.reserve(&c, &user, &IdempotencyKey::parse("k").unwrap(), &lines).await.unwrap() {
            ReserveOutcome::Reserved(_) => sold += 1,
            ReserveOutcome::SoldOut(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sold, 90, "every unit sold once, none left unsold");
    env.wait_for("consistent", Duration::from_secs(15), async || {
        env.count_orders("sh").await == 90 && env.consistent(&c).await
    })
    .await;
    assert!(counter(&worker.ctx.metrics.render(), "flashsale_restored_shards_total") >= 1.0);
    worker.shutdown().await;
    env.cleanup().await;
}

/// A lost shard's meta is gone with it, so it comes back in the layout the rebuilding
/// worker's `engine.users_hash` names, whichever it was launched with; its users' units
/// and its buyers come back with it, so the per-user limit holds across the rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_shard_comes_back_with_its_users_units_in_the_layout_the_worker_names() {
    for launched_with_hash in [false, true] {
        let mut env = Env::with(|s| s.engine.users_hash = launched_with_hash).await;
        env.settings.worker.restore_check_ms = 200;
        env.settings.engine.users_hash = !launched_with_hash;
        let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
        let c = env.launch("ul", 20, 900, 2).await;
        let one = OrderLines::parse(vec![("a".into(), 1)]).unwrap();
        let buy = async |u: &str, k: &str| {
            env.engine
                .reserve(&c, &UserId::parse(u).unwrap(), &IdempotencyKey::parse(k).unwrap(), &one)
                .await
                .unwrap()
        };
        let mut cancelled = None;
        for u in ["u0", "u1", "u2", "u3"] {
            let ReserveOutcome::Reserved(r) = buy(u, "k1").await else { panic!("reserved") };
            if u == "u1" {
                cancelled = Some(r.order_id);
            }
        }
        assert!(matches!(buy("u0", "k2").await, ReserveOutcome::Reserved(_)));
        let cancelled = cancelled.unwrap();
        assert_eq!(
            env.engine.release(&cancelled, ReleaseReason::Cancelled).await.unwrap(),
            engine::domain::ReleaseOutcome::Released
        );
        env.wait_for("every order and the cancel in MySQL", Duration::from_secs(10), async || {
            env.count_orders("ul").await == 5 && env.consistent(&c).await
        })
        .await;

        testkit::lose_shard(&env.settings.redis, &env.settings.namespace, c.as_str()).await;
        env.wait_for("the lost shard rebuilt", Duration::from_secs(5), async || {
            let states = env.engine.shard_states(&[(c.clone(), 1)]).await.unwrap();
            states[0].iter().all(|s| *s == engine::rebuild::ShardState::Live)
        })
        .await;
        let mut raw = env.raw().await;
        let keys = engine::keys::KeySpace::new(&env.settings.namespace);
        let layout: Option<String> =
            redis::cmd("HGET").arg(keys.meta(&c)).arg("layout").query_async(&mut raw).await.unwrap();
        let mut buyers: Vec<String> = if launched_with_hash {
            assert_eq!(layout, None, "rebuilt with strings");
            redis::cmd("SMEMBERS").arg(keys.buyers(&c)).query_async(&mut raw).await.unwrap()
        } else {
            assert_eq!(layout.as_deref(), Some("2"), "rebuilt with the users hash");
            redis::cmd("HKEYS").arg(keys.users(&c)).query_async(&mut raw).await.unwrap()
        };
        buyers.sort();
        assert_eq!(buyers, ["u0", "u1", "u2", "u3"], "launched with the hash: {launched_with_hash}");
        // The limit (2) counts what MySQL says each user holds: u0 two units, u1 none.
        assert_eq!(buy("u0", "k3").await, ReserveOutcome::LimitExceeded { held: 2, limit: 2 });
        assert!(matches!(buy("u1", "k3").await, ReserveOutcome::Reserved(_)));
        assert!(matches!(buy("u1", "k4").await, ReserveOutcome::Reserved(_)));
        assert_eq!(buy("u1", "k5").await, ReserveOutcome::LimitExceeded { held: 2, limit: 2 });
        assert!(matches!(buy("u2", "k3").await, ReserveOutcome::Reserved(_)));
        worker.shutdown().await;
        env.cleanup().await;
    }
}

/// A failover to a replica that missed the last writes: one shard of a campaign comes
/// back as it was a moment ago (its orders, stock and outbox stream of then), while
/// MySQL already holds the orders relayed since. The worker finds that the shard's
/// outbox no longer knows ids MySQL recorded as relayed, holds the shard (503), lets
/// what it still has reach MySQL and rebuilds it from MySQL and the other shard: every
/// order answered before replays as itself, and the sale sells exactly the stock (the
/// shard as it came back would have sold again the units of the orders it forgot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_comes_back_behind_mysql_is_found_and_rebuilt() {
    let mut env = Env::new().await;
    env.settings.worker.restore_check_ms = 200;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let c = env.launch_sharded("bh", 60, 1, 2).await;
    let map = engine::shards::ShardMap::new(&c, 2);
    let lines = OrderLines::parse(vec![("a".into(), 1)]).unwrap();
    let mut answered = Vec::new();
    let buy = async |i: usize, answered: &mut Vec<(UserId, IdempotencyKey, OrderId)>| {
        let (user, key) =
            (UserId::parse(&format!("u{i}")).unwrap(), IdempotencyKey::parse(&format!("k{i}")).unwrap());
        let ReserveOutcome::Reserved(r) = env.engine.reserve(&c, &user, &key, &lines).await.unwrap() else {
            panic!("reserved")
        };
        if i.is_multiple_of(2) {
            let ev = EventId::parse(&format!("pay-{i}")).unwrap();
            assert_eq!(
                env.engine.confirm(&r.order_id, &ev, 100, PaymentStatus::Succeeded).await.unwrap(),
                ConfirmOutcome::Paid
            );
        }
        answered.push((user, key, r.order_id));
    };
    for i in 0..20 {
        buy(i, &mut answered).await;
    }
    env.wait_for("the first 20 orders in MySQL", Duration::from_secs(10), async || {
        env.count_orders("bh").await == 20 && env.db.stock("bh").await.unwrap()[0].sold == 10
    })
    .await;
    let then =
        testkit::snapshot_shard(&env.settings.redis, &env.settings.namespace, map.tag(1).as_str()).await;
    for i in 20..40 {
        buy(i, &mut answered).await;
    }
    let forgotten = answered[20..].iter().filter(|(_, _, o)| map.of_order(o) == 1).count();
    assert!(forgotten > 2, "orders the shard will forget: {forgotten}");
    env.wait_for("all 40 orders in MySQL", Duration::from_secs(10), async || {
        env.count_orders("bh").await == 40 && env.db.stock("bh").await.unwrap()[0].sold == 20
    })
    .await;

    testkit::roll_back_shard(&env.settings.redis, &env.settings.namespace, map.tag(1).as_str(), &then).await;
    let behind_at = Instant::now();
    env.wait_for("the shard found behind and rebuilt", Duration::from_secs(5), async || {
        counter(&worker.ctx.metrics.render(), "flashsale_restored_shards_total") >= 1.0
            && env.engine.shard_states(&[(c.clone(), 2)]).await.unwrap()[0]
                .iter()
                .all(|s| *s == engine::rebuild::ShardState::Live)
    })
    .await;
    println!("shard found behind and rebuilt {:?} after it came back", behind_at.elapsed());
    for (i, (user, key, order)) in answered.iter().enumerate() {
        let again = env.engine.reserve(&c, user, key, &lines).await.unwrap();
        if !matches!(&again, ReserveOutcome::Replayed(r) if &r.order_id == order) {
            let row = env.db.order(order.as_str()).await.unwrap();
            let m = worker.ctx.metrics.render();
            panic!(
                "answered order {i} ({order}, shard {}) not replayed: {again:?}; MySQL holds {row:?}; \
                 shards restored {}, found behind {}",
                map.of_order(order),
                counter(&m, "flashsale_restored_shards_total"),
                counter(&m, "flashsale_behind_shards_total")
            );
        }
    }
    // Demand above what is left: exactly the stock sells, on both shards.
    let mut sold = 40;
    for i in 40..150 {
        let user = UserId::parse(&format!("u{i}")).unwrap();
        match env.engine.reserve(&c, &user, &IdempotencyKey::parse("k").unwrap(), &lines).await.unwrap() {
            ReserveOutcome::Reserved(_) => sold += 1,
            ReserveOutcome::SoldOut(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sold, 60, "every unit sold once, none left unsold");
    env.wait_for("consistent", Duration::from_secs(15), async || {
        env.count_orders("bh").await == 60 && env.consistent(&c).await
    })
    .await;
    let (dead, _) = env.db.dead_letter_page(None, 10).await.unwrap();
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    worker.shutdown().await;
    env.cleanup().await;
}

/// The shard that came back behind sells, before it is found, units MySQL has already
/// given to the orders it forgot. The relay, visiting the shard's outbox for them, finds
/// it behind and wakes the check, which holds it within milliseconds; the orders it
/// granted that MySQL cannot fit are dropped from it (logged, counted) and listed as
/// dead letters lost with Redis's data; the rebuilt shard holds exactly MySQL's orders,
/// every earlier answer replays as itself, and nothing more sells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_a_shard_behind_mysql_sold_again_are_dropped_and_dead_lettered() {
    let mut env = Env::new().await;
    // The timed check runs once at start, then not for an hour: what finds the shard
    // behind here is the relay, which wakes the check at once.
    env.settings.worker.restore_check_ms = 3_600_000;
    env.settings.worker.persist_retry_ms = 100;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    // One shard: units a behind shard moved to another before it was found are the
    // limit written in docs/reliability.md.
    let c = env.launch("bs", 40, 900, 1).await;
    let map = engine::shards::ShardMap::new(&c, 1);
    let lines = OrderLines::parse(vec![("a".into(), 1)]).unwrap();
    let buy_on = async |engine: &Engine, i: usize| -> Option<(UserId, IdempotencyKey, OrderId)> {
        let (user, key) =
            (UserId::parse(&format!("u{i}")).unwrap(), IdempotencyKey::parse(&format!("k{i}")).unwrap());
        match engine.reserve(&c, &user, &key, &lines).await {
            Ok(ReserveOutcome::Reserved(r)) => Some((user, key, r.order_id)),
            Ok(ReserveOutcome::SoldOut(_)) | Err(engine::EngineError::Unavailable(_)) => None,
            other => panic!("{other:?}"),
        }
    };
    let buy = async |i: usize| buy_on(&env.engine, i).await;
    let mut answered = Vec::new();
    for i in 0..10 {
        answered.extend(buy(i).await);
    }
    env.wait_for("10 orders in MySQL", Duration::from_secs(10), async || env.count_orders("bs").await == 10)
        .await;
    let then =
        testkit::snapshot_shard(&env.settings.redis, &env.settings.namespace, map.tag(0).as_str()).await;
    let mut i = 10;
    while answered.len() < 40 {
        answered.extend(buy(i).await);
        i += 1;
    }
    env.wait_for("the sale sold out in MySQL", Duration::from_secs(10), async || {
        env.count_orders("bs").await == 40
    })
    .await;
    testkit::roll_back_shard(&env.settings.redis, &env.settings.namespace, map.tag(0).as_str(), &then).await;
    // Before anyone notices: the shard sells its old stock again (to a process whose
    // cache never saw the sale sell out).
    let elsewhere = Engine::start(&env.settings).unwrap();
    let mut again = Vec::new();
    for j in 0..60 {
        again.extend(buy_on(&elsewhere, 1000 + j).await);
    }
    assert!(!again.is_empty(), "units sold again by the shard behind before it was held");
    println!("{} units sold again before the shard was held", again.len());
    env.wait_for("the shard behind found by the relay and rebuilt", Duration::from_secs(10), async || {
        counter(&worker.ctx.metrics.render(), "flashsale_restored_shards_total") >= 1.0
    })
    .await;
    let metrics = worker.ctx.metrics.render();
    assert_eq!(counter(&metrics, "flashsale_behind_shards_total"), 1.0);
    assert_eq!(counter(&metrics, "flashsale_forgotten_orders_total"), again.len() as f64);
    for (_, _, order) in &again {
        env.wait_for("the order sold again dead-lettered", Duration::from_secs(10), async || {
            env.dead_lettered(order).await.as_deref() == Some("lost_by_redis")
        })
        .await;
        assert!(env.db.order(order.as_str()).await.unwrap().is_none(), "never applied");
    }
    for (user, key, order) in &answered {
        let r = env.engine.reserve(&c, user, key, &lines).await.unwrap();
        assert!(matches!(&r, ReserveOutcome::Replayed(r) if &r.order_id == order), "{r:?}");
    }
    for j in 0..20 {
        assert!(buy_on(&elsewhere, 2000 + j).await.is_none(), "nothing more sells");
    }
    env.wait_for("consistent", Duration::from_secs(15), async || {
        env.count_orders("bs").await == 40 && env.consistent(&c).await
    })
    .await;
    worker.shutdown().await;
    env.cleanup().await;
}

/// One campaign Redis cannot answer for (its data gone, not rebuilt yet) does not stop
/// the MySQL sweep: the overdue orders of the campaigns behind it are settled, the
/// error is counted, and the troubled campaign's rows come round again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mysql_sweep_goes_past_a_campaign_redis_cannot_answer_for() {
    let mut env = Env::new().await;
    // No rebuild during the test: the trouble must last.
    env.settings.worker.restore_check_ms = 3_600_000;
    let troubled = env.launch("a-troubled", 10, 1, 1).await;
    let fine = env.launch("b-fine", 10, 1, 1).await;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let overdue = now_ms() - 60_000;
    let mut ids = Vec::new();
    for (c, user) in [(&troubled, "ta"), (&fine, "fb")] {
        let o = OrderId::generate(c);
        let mut ev = order_event(&o, user, OrderStatus::PendingPayment, overdue);
        ev.created_ms = overdue - 1000;
        env.db.apply_events(&[ev]).await.unwrap();
        ids.push(o);
    }
    let mut raw = env.raw().await;
    let meta = engine::keys::KeySpace::new(&env.settings.namespace).meta(&troubled);
    let _: () = redis::cmd("DEL").arg(meta).query_async(&mut raw).await.unwrap();

    let settled = sync_worker::expiry::sweep_mysql_once(&worker.ctx).await.unwrap();
    assert_eq!(settled, 1, "the campaign behind the troubled one is settled");
    assert_eq!(env.db.order(ids[1].as_str()).await.unwrap().unwrap().status, OrderStatus::Expired);
    assert_eq!(env.db.order(ids[0].as_str()).await.unwrap().unwrap().status, OrderStatus::PendingPayment);
    let errors = worker.ctx.metrics.render();
    assert!(errors.contains("flashsale_campaign_errors_total{task=\"mysql_sweep\"} 1"), "{errors}");
    worker.shutdown().await;
    env.cleanup().await;
}

/// A worker SIGKILLed in the middle of rebuilding a lost shard leaves it `restoring`
/// (503 on every path, nothing half-live); the next worker takes the rebuild over once
/// the dead one's lease lapses, redoes it whole, and overwrites nothing of the shards
/// that kept their data. Runs on the one Redis and on the local Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_rebuild_leaves_the_shard_restoring_and_the_next_one_finishes_it() {
    use engine::rebuild::ShardState;
    let env = Env::new().await;
    let per_shard = 20_000;
    let c = env.launch_sharded("kr", 3 * per_shard, 1, 3).await;
    let map = engine::shards::ShardMap::new(&c, 3);
    // MySQL holds 15,000 pending orders of shard 1 (many restore steps: the rebuild
    // takes a while), one unit each, and Redis loses shard 1.
    let pending = 15_000;
    let events: Vec<OrderEvent> = (0..pending)
        .map(|i| {
            let mut e = order_event(
                &OrderId::generate_in(&c, 1),
                &format!("u{i}"),
                OrderStatus::PendingPayment,
                now_ms() + 900_000,
            );
            e.campaign_id = "kr".into();
            e
        })
        .collect();
    for chunk in events.chunks(2000) {
        env.db.apply_events(chunk).await.unwrap();
    }
    testkit::lose_shard(&env.settings.redis, &env.settings.namespace, map.tag(1).as_str()).await;
    let states = || async { env.engine.shard_states(&[(c.clone(), 3)]).await.unwrap().remove(0) };

    let mut settings = env.settings.clone();
    settings.worker.restore_check_ms = 50;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sync-worker"))
        .env("FLASHSALE__NAMESPACE", &settings.namespace)
        .env("FLASHSALE__MYSQL__URL", &settings.mysql.url)
        .env("FLASHSALE__WORKER__METRICS_LISTEN", "127.0.0.1:0")
        .env("FLASHSALE__WORKER__RESTORE_CHECK_MS", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if states().await[1] == ShardState::Restoring {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the worker never began the rebuild");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        states().await,
        vec![ShardState::Live, ShardState::Restoring, ShardState::Live],
        "left restoring"
    );
    let lines = OrderLines::parse(vec![("a".into(), 1)]).unwrap();
    let homed = (0..).map(|i| UserId::parse(&format!("h{i}")).unwrap()).find(|u| map.home(u) == 1).unwrap();
    let r = env.engine.reserve(&c, &homed, &IdempotencyKey::parse("k").unwrap(), &lines).await;
    assert!(
        matches!(r, Err(engine::EngineError::Unavailable(_))),
        "a half-rebuilt shard sells nothing: {r:?}"
    );

    let killed = Instant::now();
    let worker = sync_worker::supervisor::start(settings).await.unwrap();
    env.wait_for("the next worker finished the rebuild", Duration::from_secs(10), async || {
        states().await.iter().all(|s| *s == ShardState::Live)
    })
    .await;
    println!("rebuild finished {:?} after the first worker was killed", killed.elapsed());
    let view = env.engine.counters(&c, &[SkuId::parse("a").unwrap()]).await.unwrap();
    assert_eq!(
        (view[0].total, view[0].available, view[0].reserved, view[0].sold),
        (3 * per_shard, 3 * per_shard - pending as u64, pending as u64, 0),
        "the survivors' units untouched, the lost shard's orders back, nothing sold twice"
    );
    let r = env.engine.reserve(&c, &homed, &IdempotencyKey::parse("k").unwrap(), &lines).await.unwrap();
    assert!(matches!(r, ReserveOutcome::Reserved(_)), "{r:?}");
    worker.shutdown().await;
    env.cleanup().await;
}

/// Dead letters are never silent: a joined message with an event that can never apply
/// (a sku MySQL does not have) and a message RabbitMQ gave up on (published straight to
/// the dead-letter exchange, as after its delivery limit) both end in MySQL's
/// dead-letter list, every order by id, counted by reason; the good orders beside the
/// bad one are applied; an operator's replay sends the second back and it applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_kept_listed_and_replayed() {
    let env = Env::new().await;
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    let c = env.launch("dl", 10, 900, 1).await;
    env.wait_for_topology().await;
    let expires = now_ms() + 900_000;
    let good: Vec<OrderId> = (0..3).map(|_| OrderId::generate(&c)).collect();
    let mut events: Vec<OrderEvent> = good
        .iter()
        .enumerate()
        .map(|(i, o)| order_event(o, &format!("g{i}"), OrderStatus::PendingPayment, expires))
        .collect();
    let poison = OrderId::generate(&c);
    let mut bad = order_event(&poison, "bad", OrderStatus::PendingPayment, expires);
    bad.items[0].sku_id = "no-such-sku".into();
    events.push(bad);
    env.publish_raw(
        &serde_json::to_vec(&common::message::OrderMessage::Batch { version: 2, events }).unwrap(),
    )
    .await;
    // A message RabbitMQ dead-lettered after its delivery limit.
    let given_up = OrderId::generate(&c);
    let body =
        serde_json::to_vec(&order_event(&given_up, "late", OrderStatus::PendingPayment, expires)).unwrap();
    broker("publishing a dead letter", async {
        let conn =
            Connection::connect(&env.settings.amqp.url, ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let mut headers = FieldTable::default();
        headers.insert(
            "x-flashsale-reason".into(),
            lapin::types::AMQPValue::LongString("delivery_limit".into()),
        );
        let confirm = ch
            .basic_publish(
                format!("{}.dlx", env.settings.namespace).as_str().into(),
                "dead".into(),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                &body,
                BasicProperties::default().with_headers(headers),
            )
            .await
            .unwrap();
        assert!(matches!(confirm.await.unwrap(), lapin::Confirmation::Ack(None)));
        conn.close(200, "done".into()).await.unwrap();
    })
    .await;

    env.wait_for("both dead letters listed", Duration::from_secs(10), async || {
        env.db.dead_letter_page(None, 10).await.unwrap().0.len() == 2
    })
    .await;
    let (listed, _) = env.db.dead_letter_page(None, 10).await.unwrap();
    let reasons: std::collections::HashMap<String, String> =
        listed.into_iter().map(|l| (l.order_id, l.reason)).collect();
    assert_eq!(reasons.get(poison.as_str()).map(String::as_str), Some("unknown_sku"));
    assert_eq!(reasons.get(given_up.as_str()).map(String::as_str), Some("delivery_limit"));
    for o in &good {
        assert!(
            env.db.order(o.as_str()).await.unwrap().is_some(),
            "the good orders beside the bad one applied"
        );
    }
    let m = worker.ctx.metrics.render();
    assert!(m.contains("flashsale_dead_lettered_orders_total{reason=\"unknown_sku\"} 1"), "{m}");
    assert!(m.contains("flashsale_dead_lettered_orders_total{reason=\"delivery_limit\"} 1"), "{m}");
    assert_eq!(env.queue_len(&format!("{}.dead", env.settings.namespace)).await, 0, "nothing left unread");

    assert_eq!(env.db.request_replay(Some(&[given_up.as_str().to_owned()])).await.unwrap(), 1);
    env.wait_for("the replayed order applied and forgotten", Duration::from_secs(10), async || {
        env.db.order(given_up.as_str()).await.unwrap().is_some()
            && env.db.dead_letter_page(None, 10).await.unwrap().0.len() == 1
    })
    .await;
    worker.shutdown().await;
    env.cleanup().await;
}

/// An outbox entry that carries no order is set aside, not left pending for ever: it
/// moves to the shard's `outbox-dead` stream (logged), so its stream leaves the relay's
/// work and its campaign can retire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_outbox_entry_is_set_aside() {
    let env = Env::new().await;
    let c = env.launch("mal", 10, 900, 1).await;
    let keys = engine::keys::KeySpace::new(&env.settings.namespace);
    let mut raw = env.raw().await;
    let _: String = redis::cmd("XADD")
        .arg(keys.outbox(&c))
        .arg("*")
        .arg("junk")
        .arg("1")
        .query_async(&mut raw)
        .await
        .unwrap();
    let worker = sync_worker::supervisor::start(env.settings.clone()).await.unwrap();
    env.wait_for("the entry set aside", Duration::from_secs(10), async || {
        let mut raw = raw.clone();
        let (left, dead): (u64, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(keys.outbox(&c))
            .cmd("XLEN")
            .arg(keys.outbox_dead(&c))
            .query_async(&mut raw)
            .await
            .unwrap();
        left == 0 && dead == 1
    })
    .await;
    // And the stream is idle: a reservation after it is relayed as usual.
    env.reserve(&c, "u1").await;
    env.wait_for("the next order in MySQL", Duration::from_secs(10), async || {
        env.count_orders("mal").await == 1
    })
    .await;
    worker.shutdown().await;
    env.cleanup().await;
}

/// Two workers apply overlapping joined messages whose orders come in opposite orders
/// (the shape in which two transactions inserting the same rows deadlock): rows go in
/// by order id and a refused statement is tried again in place, so every order is
/// applied exactly once, the stock buckets agree, and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_applying_overlapping_batches_in_opposite_orders_lose_nothing() {
    let env = Env::new().await;
    let c = env.launch("ov", 10_000, 900, 1).await;
    let workers = [
        sync_worker::supervisor::start(env.settings.clone()).await.unwrap(),
        sync_worker::supervisor::start(env.settings.clone()).await.unwrap(),
    ];
    env.wait_for_topology().await;
    let expires = now_ms() + 900_000;
    let rounds = 10;
    for round in 0..rounds {
        let events: Vec<OrderEvent> = (0..100)
            .map(|i| {
                order_event(
                    &OrderId::generate(&c),
                    &format!("r{round}u{i}"),
                    OrderStatus::PendingPayment,
                    expires,
                )
            })
            .collect();
        let mut reversed = events.clone();
        reversed.reverse();
        for batch in [events, reversed] {
            let body = common::message::OrderMessage::Batch { version: 2, events: batch };
            env.publish_raw(&serde_json::to_vec(&body).unwrap()).await;
        }
    }
    env.wait_for("every order applied once", Duration::from_secs(30), async || {
        env.count_orders("ov").await == 100 * rounds
            && env.db.stock("ov").await.unwrap()[0].reserved == 100 * rounds
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stock = env.db.stock("ov").await.unwrap();
    assert_eq!(
        (stock[0].available, stock[0].reserved),
        (10_000 - 100 * rounds, 100 * rounds),
        "each moved once"
    );
    assert!(env.db.dead_letter_page(None, 10).await.unwrap().0.is_empty(), "nothing dead-lettered");
    for w in workers {
        w.shutdown().await;
    }
    env.cleanup().await;
}
