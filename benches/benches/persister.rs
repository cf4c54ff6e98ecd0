//! Criterion benches of the persister's MySQL write: one `Db::apply_events` call (one
//! transaction) per batch, against the local MariaDB, in a database of its own.
//!
//! - `persister/new_orders_{1,100,1000}`: batches of new orders (two lines each): order
//!   and item rows inserted, stock moved from available to reserved;
//! - `persister/paid_1000`: a batch of 1,000 payments for orders already stored.
//!
//! Criterion's time is per batch; divide by the batch size for the cost of one order.
//! Run: `cargo bench -p flashsale-benches --bench persister`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use common::config::Settings;
use common::message::{OrderEvent, OrderItem, OrderStatus};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ledger::{CampaignItemRow, CampaignRow, Db};

const STOCK: i64 = 1_000_000_000;

fn event(n: u64, status: OrderStatus) -> OrderEvent {
    OrderEvent {
        order_id: format!("bench.{n:032x}"),
        campaign_id: "bench".into(),
        user_id: format!("u{}", n % 10_000),
        status,
        items: vec![
            OrderItem { sku_id: "a".into(), quantity: 1, price_cents: 100 },
            OrderItem { sku_id: "b".into(), quantity: 2, price_cents: 50 },
        ],
        total_cents: 200,
        created_ms: 1,
        expires_ms: 900_001,
        paid_ms: if status == OrderStatus::Paid { 5 } else { 0 },
        payment_window_secs: 900,
        event_ms: if status == OrderStatus::Paid { 5 } else { 1 },
        idempotency_key: None,
        payment_event: None,
        trace: None,
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut s = Settings::load(None).expect("settings");
    let base = s.mysql.url.rsplit_once('/').unwrap().0.to_owned();
    let name = format!("fs_bench_persist_{}", std::process::id());
    s.mysql.url = format!("{base}/{name}");
    let db = rt.block_on(Db::connect(&s.mysql)).expect("mysql: is MariaDB running?");
    let item = |sku: &str| CampaignItemRow { sku_id: sku.into(), price_cents: 100, stock_total: STOCK };
    let campaign = CampaignRow {
        campaign_id: "bench".into(),
        name: "bench".into(),
        starts_ms: 0,
        ends_ms: i64::MAX / 2,
        per_user_limit: 10_000,
        payment_window_secs: 900,
        max_orders_per_sec: None,
        max_user_requests_per_sec: None,
        shards: 1,
        items: vec![item("a"), item("b")],
    };
    rt.block_on(db.insert_campaign(&campaign, 0)).unwrap();
    let mut next = 0u64;

    let mut g = c.benchmark_group("persister");
    for size in [1u64, 100, 1000] {
        g.bench_function(format!("new_orders_{size}"), |b| {
            b.iter_batched(
                || {
                    next += size;
                    (next - size..next).map(|n| event(n, OrderStatus::PendingPayment)).collect::<Vec<_>>()
                },
                |batch| rt.block_on(db.apply_events(&batch)).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    g.bench_function("paid_1000", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let ids = next..next + 1000;
                next += 1000;
                let new: Vec<_> = ids.clone().map(|n| event(n, OrderStatus::PendingPayment)).collect();
                rt.block_on(db.apply_events(&new)).unwrap();
                let paid: Vec<_> = ids.map(|n| event(n, OrderStatus::Paid)).collect();
                let started = Instant::now();
                rt.block_on(db.apply_events(&paid)).unwrap();
                spent += started.elapsed();
            }
            spent
        })
    });
    g.finish();

    rt.block_on(async {
        db.close().await;
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::MySqlConnection::connect(&format!("{base}/mysql")).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`")).execute(&mut conn).await;
        }
    });
}

criterion_group! {
    name = persister_benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(persister_benches);
