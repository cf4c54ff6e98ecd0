//! Can the sync-worker keep up with a sale? Measures, in one run on this machine:
//!
//! 1. the reservation rate: N reservations through the engine, 64 in flight, with the
//!    worker stopped (the Redis side alone);
//! 2. the drain rate: the worker started on that backlog, until all N orders are in
//!    MySQL and reconciliation is consistent (relay → RabbitMQ with confirms →
//!    persister → MariaDB, payment timers included).
//!
//! `drain / reserve >= 1` means a backlog cannot grow during a sale.
//! Run: `cargo bench -p flashsale-benches --bench pipeline` (`PIPELINE_ORDERS` to size,
//! `PIPELINE_SHARDS` for a sharded campaign).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use common::config::Settings;
use engine::clock::now_ms;
use engine::domain::{CampaignId, IdempotencyKey, OrderLines, ReserveOutcome, SkuId, UserId};
use engine::Engine;
use ledger::Db;

const IN_FLIGHT: usize = 64;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("pipeline: bench");
        return;
    }
    let orders: usize = std::env::var("PIPELINE_ORDERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    // Shards of the campaign (one outbox each); the Redis is whatever the settings name
    // (FLASHSALE__REDIS__CLUSTER_NODES for a cluster).
    let shards: u16 = std::env::var("PIPELINE_SHARDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut s = Settings::load(None).expect("settings");
    s.namespace = format!("pipe{}", std::process::id());
    let base = s.mysql.url.rsplit_once('/').unwrap().0.to_owned();
    s.mysql.url = format!("{base}/fs_bench_{}", std::process::id());
    s.worker.metrics_listen = "127.0.0.1:0".parse().unwrap();
    s.engine.outbox_max_len = 10_000_000;
    let db = Db::connect(&s.mysql).await.expect("mysql");
    let engine = Engine::start(&s).expect("engine");
    let c = CampaignId::parse("bench").unwrap();
    let now = now_ms();
    let stock = orders as u64 * 2;
    let spec = flashsale_benches::one_sku_campaign(
        c.clone(),
        SkuId::parse("a").unwrap(),
        stock,
        (now - 1000, now + 3_600_000),
        shards,
    );
    db.insert_campaign(&ledger::CampaignRow::from_launch(&spec, "bench"), now).await.unwrap();
    engine.launch(&spec).await.unwrap();

    let cpu_at_start = cpu_ticks();
    let started = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|w| {
            let (engine, c) = (engine.clone(), c.clone());
            tokio::spawn(async move {
                let lines = OrderLines::parse(vec![("a".into(), 1)]).unwrap();
                let key = IdempotencyKey::parse("k").unwrap();
                for i in (w..orders).step_by(IN_FLIGHT) {
                    let user = UserId::parse(&format!("u{i}")).unwrap();
                    let r = engine.reserve(&c, &user, &key, &lines).await.unwrap();
                    assert!(matches!(r, ReserveOutcome::Reserved(_)));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let reserve_secs = started.elapsed().as_secs_f64();
    let cpu_reserved = cpu_ticks();

    let started = Instant::now();
    let worker = sync_worker::supervisor::start(s.clone()).await.expect("worker");
    loop {
        // Every order is pending: all are in MySQL once they hold every reserved unit.
        if db.stock("bench").await.unwrap()[0].reserved == orders as i64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "drain took over 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = started.elapsed().as_secs_f64();
    let cpu_drained = cpu_ticks();
    worker.shutdown().await;

    let reserve_rate = orders as f64 / reserve_secs;
    let drain_rate = orders as f64 / drain_secs;
    println!("pipeline/orders            {orders} ({shards} shard(s))");
    println!("pipeline/reserve_rate      {reserve_rate:.0} orders/s ({reserve_secs:.2} s, {IN_FLIGHT} in flight, worker stopped)");
    println!("pipeline/drain_rate        {drain_rate:.0} orders/s ({drain_secs:.2} s: relay + broker + MariaDB + timers)");
    println!("pipeline/drain_vs_reserve  {:.2}", drain_rate / reserve_rate);
    // CPU per order of each process (this one is the engine while reserving, the worker
    // while draining): the capacity model's per-message costs (docs/capacity.md).
    for (phase, before, after) in
        [("reserve", &cpu_at_start, &cpu_reserved), ("drain", &cpu_reserved, &cpu_drained)]
    {
        let per_order: Vec<String> = after
            .iter()
            .map(|(name, t)| {
                let spent = t - before.iter().find(|(n, _)| n == name).map_or(0, |(_, b)| *b);
                format!("{name} {:.1}", spent as f64 * 1e6 / TICKS_PER_SEC / orders as f64)
            })
            .collect();
        println!("pipeline/cpu_us_per_order/{phase}  {}", per_order.join(", "));
    }

    db.close().await;
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::MySqlConnection::connect(&format!("{base}/mysql")).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `fs_bench_{}`", std::process::id()))
            .execute(&mut conn)
            .await;
    }
    cleanup_broker_and_redis(&s).await;
}

const TICKS_PER_SEC: f64 = 100.0;

/// CPU time (user + system, clock ticks) of this process and of the services, summed
/// by name, read from /proc (Linux): `bench` (this process), `redis-server` (every
/// one: a cluster's masters too), `beam.smp` (RabbitMQ), `mariadbd`.
fn cpu_ticks() -> Vec<(String, u64)> {
    let me = std::process::id().to_string();
    let mut out: Vec<(String, u64)> =
        ["bench", "redis-server", "beam.smp", "mariadbd"].iter().map(|n| ((*n).to_owned(), 0)).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        let comm = head.split_once(" (").map_or("", |(_, c)| c);
        let name = if pid == me { "bench" } else { comm };
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if let Some(slot) = out.iter_mut().find(|(n, _)| n == name) {
            slot.1 += ticks;
        }
    }
    out
}

async fn cleanup_broker_and_redis(s: &Settings) {
    testkit::delete_broker_objects(&s.amqp.url, &s.namespace).await;
    testkit::delete_keys(&s.redis, &s.namespace).await;
}
