//! Criterion benches of the engine's hot path against the local Redis.
//!
//! - `ceiling/evalsha_return_1`: one trivial script call on the same shared
//!   multiplexed connection: the most any script-per-request path can do here.
//! - `reserve/script`: a full reservation (lines, limit, idempotency, outbox entry)
//!   through the engine, each call a new buyer.
//! - `reserve/local_sold_out`, `reserve/local_not_started`: requests the local cache
//!   answers without Redis.
//! - `reserve_batch/orders_<n>`: one `reserve.lua` call deciding `n` orders (what
//!   coalescing sends); criterion's "time" is per order.
//! - `release/batch_<n>`: cancelling pending orders `n` per `release.lua` call (the
//!   sweep's burst path); criterion's "time" is per order.
//!
//! Each group runs sequentially (latency of one call) and with 64 calls in flight
//! (`x64`, throughput; criterion's "time" is then per call). Compare each path with the
//! ceiling from the same run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::Settings;
use criterion::{criterion_group, criterion_main, Criterion};
use engine::clock::now_ms;
use engine::domain::{CampaignId, IdempotencyKey, OrderLines, ReleaseReason, ReserveOutcome, UserId};
use engine::Engine;
use tokio::runtime::Runtime;

const IN_FLIGHT: u64 = 64;

struct Bench {
    rt: Runtime,
    engine: Engine,
    /// A bare multiplexed connection for the ceiling (the engine's own link is not
    /// reachable from outside, by design).
    raw: redis::aio::MultiplexedConnection,
    settings: Settings,
    seq: AtomicU64,
}

impl Bench {
    fn new() -> Arc<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut settings = Settings::load(None).expect("settings");
        settings.namespace = format!("bench{}", std::process::id());
        let engine = rt.block_on(async {
            let e = Engine::start(&settings).unwrap();
            let now = now_ms();
            for (id, stock, starts) in [
                ("open", 1_000_000_000, now - 1000),
                ("empty", 0, now - 1000),
                ("later", 10, now + 3_600_000),
            ] {
                let spec = flashsale_benches::one_sku_campaign(
                    CampaignId::parse(id).unwrap(),
                    engine::domain::SkuId::parse("sku").unwrap(),
                    stock,
                    (starts, now + 7_200_000),
                    1,
                );
                e.launch(&spec).await.expect("launch: is Redis running?");
            }
            flashsale_benches::until_cache_live(&e, Duration::from_secs(2)).await;
            e
        });
        let raw = rt.block_on(async {
            redis::Client::open(settings.redis.url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap()
        });
        Arc::new(Self { rt, engine, raw, settings, seq: AtomicU64::new(0) })
    }

    async fn reserve(&self, campaign: &CampaignId, lines: &OrderLines) -> ReserveOutcome {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let user = UserId::parse(&format!("u{n}")).unwrap();
        let key = IdempotencyKey::parse("k").unwrap();
        self.engine.reserve(campaign, &user, &key, lines).await.unwrap()
    }

    /// Runs `iters` calls of `f`, `IN_FLIGHT` at a time, and returns the elapsed time.
    fn concurrent<F, Fut>(self: &Arc<Self>, iters: u64, f: F) -> Duration
    where
        F: Fn(Arc<Self>) -> Fut + Send + Sync + Copy + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        self.rt.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..IN_FLIGHT)
                .map(|w| {
                    let me = Arc::clone(self);
                    let share = iters / IN_FLIGHT + u64::from(w < iters % IN_FLIGHT);
                    tokio::spawn(async move {
                        for _ in 0..share {
                            f(Arc::clone(&me)).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            start.elapsed()
        })
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        testkit::delete_keys_blocking(&self.settings.redis, &self.settings.namespace);
    }
}

fn lines() -> OrderLines {
    OrderLines::parse(vec![("sku".to_owned(), 1)]).unwrap()
}

fn benches(c: &mut Criterion) {
    let b = Bench::new();
    let open = CampaignId::parse("open").unwrap();
    let empty = CampaignId::parse("empty").unwrap();
    let later = CampaignId::parse("later").unwrap();
    let ceiling = &redis::Script::new("return 1");

    let mut g = c.benchmark_group("ceiling");
    g.bench_function("evalsha_return_1", |bn| {
        bn.to_async(&b.rt).iter(|| async {
            let _: i64 = ceiling.invoke_async(&mut b.raw.clone()).await.unwrap();
        })
    });
    g.bench_function("evalsha_return_1_x64", |bn| {
        bn.iter_custom(|iters| {
            b.concurrent(iters, |me| async move {
                let s = redis::Script::new("return 1");
                let _: i64 = s.invoke_async(&mut me.raw.clone()).await.unwrap();
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("reserve");
    g.bench_function("script", |bn| {
        bn.to_async(&b.rt).iter(|| async {
            assert!(matches!(b.reserve(&open, &lines()).await, ReserveOutcome::Reserved(_)));
        })
    });
    g.bench_function("script_x64", |bn| {
        bn.iter_custom(|iters| {
            b.concurrent(iters, |me| async move {
                let open = CampaignId::parse("open").unwrap();
                assert!(matches!(me.reserve(&open, &lines()).await, ReserveOutcome::Reserved(_)));
            })
        })
    });
    // Prime the sold-out flag.
    b.rt.block_on(b.reserve(&empty, &lines()));
    g.bench_function("local_sold_out", |bn| {
        bn.to_async(&b.rt).iter(|| async {
            assert!(matches!(b.reserve(&empty, &lines()).await, ReserveOutcome::SoldOut(_)));
        })
    });
    g.bench_function("local_sold_out_x64", |bn| {
        bn.iter_custom(|iters| {
            b.concurrent(iters, |me| async move {
                let empty = CampaignId::parse("empty").unwrap();
                assert!(matches!(me.reserve(&empty, &lines()).await, ReserveOutcome::SoldOut(_)));
            })
        })
    });
    g.bench_function("local_not_started", |bn| {
        bn.to_async(&b.rt).iter(|| async {
            assert!(matches!(b.reserve(&later, &lines()).await, ReserveOutcome::NotActive));
        })
    });
    g.finish();

    // One reserve.lua call deciding n orders (what coalescing sends), on a bare
    // connection; criterion's "time" is per order.
    let mut g = c.benchmark_group("reserve_batch");
    let script = engine::scripts::reserve::script();
    let keys = engine::keys::KeySpace::new(&b.settings.namespace);
    let (k, one) = (IdempotencyKey::parse("k").unwrap(), lines());
    for n in [1usize, 8, 32, 128] {
        g.bench_function(format!("orders_{n}"), |bn| {
            bn.iter_custom(|iters| {
                b.rt.block_on(async {
                    let users: Vec<UserId> = (0..iters)
                        .map(|_| {
                            UserId::parse(&format!("u{}", b.seq.fetch_add(1, Ordering::Relaxed))).unwrap()
                        })
                        .collect();
                    let derive = engine::order_ids::OrderIds::new(b"bench").unwrap();
                    let ids: Vec<engine::domain::OrderRef> =
                        users.iter().map(|u| derive.derive(&open, 0, u, &k)).collect();
                    let start = Instant::now();
                    for (us, os) in users.chunks(n).zip(ids.chunks(n)) {
                        let batch: Vec<_> = us
                            .iter()
                            .zip(os)
                            .map(|(user, order)| engine::scripts::reserve::Request {
                                campaign: &open,
                                tag: &open,
                                order,
                                user,
                                key: &k,
                                lines: &one,
                                trace: None,
                                idempotency_ttl_secs: 60,
                                outbox_max_len: u64::MAX,
                                idempotency_records: false,
                                compact_events: true,
                            })
                            .collect();
                        let inv = engine::scripts::reserve::invocation(&script, &keys, &batch);
                        let v: redis::Value = inv.invoke_async(&mut b.raw.clone()).await.unwrap();
                        let replies = engine::scripts::reserve::decode(v, &batch).unwrap();
                        assert!(replies
                            .iter()
                            .all(|r| matches!(r, Ok(x) if matches!(x.outcome, ReserveOutcome::Reserved(_)))));
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("release");
    for n in [1usize, 32, 256] {
        g.bench_function(format!("batch_{n}"), |bn| {
            bn.iter_custom(|iters| {
                b.rt.block_on(async {
                    let mut orders = Vec::with_capacity(iters as usize);
                    for _ in 0..iters {
                        match b.reserve(&open, &lines()).await {
                            ReserveOutcome::Reserved(r) => orders.push(r.order_id),
                            other => panic!("{other:?}"),
                        }
                    }
                    let start = Instant::now();
                    for chunk in orders.chunks(n) {
                        b.engine.release_many(&open, chunk, ReleaseReason::Cancelled).await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    let stats = b.engine.stats();
    eprintln!(
        "engine stats: {} answered locally, {} sent to redis",
        stats.answered_locally, stats.sent_to_redis
    );
}

criterion_group! {
    name = engine_benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(engine_benches);
