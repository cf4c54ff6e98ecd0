//! The fault matrix: real traffic through in-process gateways and workers while the
//! test injects a fault (a proxy it owns between a service and its dependency, a
//! private redis-server it kills), then the invariants after the worker has drained:
//! `available + reserved + sold = stock_total` in Redis and MySQL, one MySQL order per
//! 201, nobody over the limit, Redis and MySQL reconcile, expired orders released once.
//!
//! Short by default (outages of a few seconds, hundreds of orders);
//! `FLASHSALE_FAULTS_FULL=1` runs the full version (the 10 s / 5 s outages,
//! thousands of orders).
#![allow(clippy::unwrap_used)]

#[path = "../../gateway/tests/support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::Settings;
use faults::{Mode, Proxy, RedisCluster, RedisServer};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::Row;
use support::*;

extern crate flashsale_faults as faults;

fn full() -> bool {
    std::env::var("FLASHSALE_FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// The outage length: the in the full run, a short one otherwise.
fn outage(short_secs: u64, full_secs: u64) -> Duration {
    Duration::from_secs(if full() { full_secs } else { short_secs })
}

fn scale(short: usize, full_n: usize) -> usize {
    if full() {
        full_n
    } else {
        short
    }
}

fn addr_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split('/').next().unwrap();
    hostport.parse().unwrap()
}

async fn start_worker(settings: &Settings) -> sync_worker::supervisor::Running {
    let mut s = settings.clone();
    s.worker.metrics_listen = "127.0.0.1:0".parse().unwrap();
    s.worker.relay_claim_idle_ms = 1000;
    sync_worker::supervisor::start(s).await.unwrap()
}

fn sale(id: &str, stock: usize, limit: i64, window_secs: u64) -> Value {
    let mut c = campaign(id, json!([{"sku_id": "a", "stock": stock, "price_cents": 500}]), limit);
    c["payment_window_secs"] = json!(window_secs);
    c
}

#[derive(Default)]
struct Outcomes {
    /// (user, order id, total cents) of every 201.
    created: Vec<(String, String, i64)>,
    statuses: HashMap<u16, usize>,
}

/// `users` buyers of one unit each, `concurrency` at a time, spread over the gateways.
async fn buy(env: &Env, campaign: &str, users: std::ops::Range<usize>, concurrency: usize) -> Outcomes {
    let mut out = Outcomes::default();
    let users: Vec<usize> = users.collect();
    for chunk in users.chunks(concurrency) {
        let answers = join_all(chunk.iter().map(|&u| async move {
            let user = format!("user-{u}");
            let gw = u % env.gateways.len();
            let (s, v) = env
                .order_on(gw, campaign, &user, &format!("k{u}"), json!([{"sku_id": "a", "quantity": 1}]))
                .await;
            (user, s, v)
        }))
        .await;
        for (user, s, v) in answers {
            *out.statuses.entry(s.as_u16()).or_default() += 1;
            if s == StatusCode::CREATED {
                out.created.push((
                    user,
                    v["order_id"].as_str().unwrap().to_owned(),
                    v["total_cents"].as_i64().unwrap(),
                ));
            }
        }
    }
    out
}

/// Waves of `step` new buyers (from user `first` on) every 200 ms for `how_long`; the
/// reservations are added to `o`. Returns the next unused user number.
async fn buy_for(env: &Env, o: &mut Outcomes, first: usize, step: usize, how_long: Duration) -> usize {
    let started = Instant::now();
    let mut next = first;
    while started.elapsed() < how_long {
        o.created.extend(buy(env, "c", next..next + step, 32).await.created);
        next += step;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    next
}

async fn pool(env: &Env) -> sqlx::MySqlPool {
    sqlx::mysql::MySqlPoolOptions::new().max_connections(2).connect(&env.settings.mysql.url).await.unwrap()
}

/// Waits (up to `patience`) until MySQL holds `orders` orders of the campaign, nothing
/// is left reserved when `settled`, and reconciliation is consistent.
async fn drained(
    env: &Env,
    db: &sqlx::MySqlPool,
    campaign: &str,
    orders: usize,
    settled: bool,
    patience: Duration,
) {
    let started = Instant::now();
    // MySQL is a projection that converges: a check taken while an event waits in the
    // retry queue can pass for a moment. Drained means the same answer twice, 500 ms apart.
    let mut seen_once = false;
    loop {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE campaign_id = ?")
            .bind(campaign)
            .fetch_one(db)
            .await
            .unwrap();
        let mut now_ok = false;
        if n as usize == orders {
            let (_, recon) =
                env.admin(Method::GET, &format!("/admin/v1/campaigns/{campaign}/reconciliation"), None).await;
            let reserved = env.item(campaign, "a").await["reserved"].as_i64().unwrap();
            now_ok = recon["consistent"] == json!(true) && (!settled || reserved == 0);
        }
        if now_ok && seen_once {
            return;
        }
        seen_once = now_ok;
        if now_ok {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        assert!(
            started.elapsed() < patience,
            "not drained after {patience:?}: {n} of {orders} orders in MySQL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The invariants, once drained. `paid`: order ids the test saw paid.
async fn assert_invariants(
    env: &Env,
    db: &sqlx::MySqlPool,
    campaign: &str,
    o: &Outcomes,
    limit: i64,
    paid: &HashSet<String>,
) {
    let item = env.item(campaign, "a").await;
    let (avail, resv, sold, total) = (
        item["available"].as_i64().unwrap(),
        item["reserved"].as_i64().unwrap(),
        item["sold"].as_i64().unwrap(),
        item["stock_total"].as_i64().unwrap(),
    );
    assert_eq!(avail + resv + sold, total, "Redis: available + reserved + sold = stock_total ({item})");
    assert!(avail >= 0 && resv >= 0 && sold >= 0, "Redis: nothing negative ({item})");
    let row = sqlx::query(
        "SELECT available, reserved, sold, stock_total FROM campaign_items WHERE campaign_id = ?",
    )
    .bind(campaign)
    .fetch_one(db)
    .await
    .unwrap();
    let m: Vec<i64> = (0..4).map(|i| row.get::<i64, _>(i)).collect();
    assert_eq!(m[0] + m[1] + m[2], m[3], "MySQL: available + reserved + sold = stock_total");
    if (m[0], m[1], m[2]) != (avail, resv, sold) {
        let pending: Vec<(Vec<u8>, i64, i64, i64)> = sqlx::query_as(
            "SELECT order_id, created_ms, expires_ms, updated_ms FROM orders WHERE campaign_id = ? AND status = 'pending_payment'",
        )
        .bind(campaign)
        .fetch_all(db)
        .await
        .unwrap();
        let pending: Vec<String> = pending
            .into_iter()
            .map(|(id, c, e, u)| {
                format!("{} created {c} expires {e} updated {u}", String::from_utf8_lossy(&id))
            })
            .collect();
        panic!("MySQL buckets {m:?} differ from Redis's ({avail}, {resv}, {sold}); pending in MySQL: {pending:?}");
    }
    let ids: Vec<Vec<u8>> = sqlx::query_scalar("SELECT order_id FROM orders WHERE campaign_id = ?")
        .bind(campaign)
        .fetch_all(db)
        .await
        .unwrap();
    let mysql: HashSet<String> = ids.into_iter().map(|b| String::from_utf8(b).unwrap()).collect();
    let answered: HashSet<String> = o.created.iter().map(|(_, id, _)| id.clone()).collect();
    assert_eq!(answered.len(), o.created.len(), "no order id answered twice");
    assert_eq!(mysql, answered, "exactly one MySQL order per 201");
    let units = order_units(db, campaign).await;
    let mut per_user: HashMap<&str, i64> = HashMap::new();
    for (user, status, n) in &units {
        if status == "pending_payment" || status == "paid" {
            *per_user.entry(user.as_str()).or_default() += n;
        }
    }
    let over = per_user.iter().find(|(_, n)| **n > limit);
    assert_eq!(over, None, "no user above the limit of {limit}");
    let paid_units: i64 = units.iter().filter(|(_, s, _)| s == "paid").map(|(_, _, n)| n).sum();
    assert_eq!(sold, paid_units, "units sold = units of paid orders (no unit taken twice)");
    assert_eq!(sold as usize, paid.len(), "every payment the test saw succeed, and no other");
}

/// (user, status, units) of every order of a campaign, its lines read from the row.
async fn order_units(db: &sqlx::MySqlPool, campaign: &str) -> Vec<(String, String, i64)> {
    let utf8 = |r: &sqlx::mysql::MySqlRow, i: usize| String::from_utf8(r.get::<Vec<u8>, _>(i)).unwrap();
    sqlx::query("SELECT user_id, status, items FROM orders WHERE campaign_id = ?")
        .bind(campaign)
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let items = ledger::lines::decode(&utf8(r, 2)).unwrap();
            (utf8(r, 0), utf8(r, 1), items.iter().map(|i| i.quantity as i64).sum())
        })
        .collect()
}

async fn cleanup(env: Env, workers: Vec<sync_worker::supervisor::Running>, db: sqlx::MySqlPool) {
    for w in workers {
        w.shutdown().await;
    }
    db.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_unreachable_during_the_sale_loses_nothing() {
    let env = Env::start().await;
    let proxy = Proxy::start(addr_of(&env.settings.amqp.url)).await.unwrap();
    let mut ws = env.settings.clone();
    ws.amqp.url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    ws.amqp.call_timeout_ms = 2000;
    let workers = vec![start_worker(&ws).await];
    let db = pool(&env).await;
    let n = scale(300, 3000);
    assert_eq!(env.launch(sale("c", n * 2, 1, 900)).await.0, StatusCode::CREATED);

    let mut o = buy(&env, "c", 0..n / 3, 32).await;
    drained(&env, &db, "c", o.created.len(), false, Duration::from_secs(30)).await;

    proxy.cut();
    let wave = buy_for(&env, &mut o, n / 3, n / 30, outage(3, 10)).await;
    // Reservations went on while the broker was away: their outbox entries wait in Redis.
    let mut redis = redis::Client::open(env.settings.redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = engine::keys::KeySpace::new(&env.settings.namespace);
    let backlog: i64 = redis::cmd("XLEN")
        .arg(keys.outbox(&engine::domain::CampaignId::parse("c").unwrap()))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(backlog > 0, "the outbox holds what the broker could not take");
    proxy.restore();

    let rest = buy(&env, "c", wave..wave + n / 3, 32).await;
    o.created.extend(rest.created);
    drained(&env, &db, "c", o.created.len(), false, Duration::from_secs(60)).await;
    assert_invariants(&env, &db, "c", &o, 1, &HashSet::new()).await;
    cleanup(env, workers, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_unreachable_holds_messages_until_it_is_back() {
    let env = Env::start().await;
    let proxy = Proxy::start(addr_of(&env.settings.mysql.url)).await.unwrap();
    let mut ws = env.settings.clone();
    let db_name = env.settings.mysql.url.rsplit_once('/').unwrap().1.to_owned();
    ws.mysql.url = format!("mysql://root@{}/{db_name}", proxy.addr());
    ws.mysql.call_timeout_ms = 1000;
    let workers = vec![start_worker(&ws).await];
    let db = pool(&env).await;
    let n = scale(300, 3000);
    assert_eq!(env.launch(sale("c", n * 2, 1, 900)).await.0, StatusCode::CREATED);

    let mut o = buy(&env, "c", 0..n / 3, 32).await;
    drained(&env, &db, "c", o.created.len(), false, Duration::from_secs(30)).await;

    proxy.cut();
    let wave = buy_for(&env, &mut o, n / 3, n / 30, outage(3, 10)).await;
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE campaign_id = 'c'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!((stored as usize) < o.created.len(), "orders made during the outage are not in MySQL yet");
    proxy.restore();

    let rest = buy(&env, "c", wave..wave + n / 3, 32).await;
    o.created.extend(rest.created);
    drained(&env, &db, "c", o.created.len(), false, Duration::from_secs(60)).await;
    assert_invariants(&env, &db, "c", &o, 1, &HashSet::new()).await;
    cleanup(env, workers, db).await;
}

/// One order attempt by a new buyer: its status and how long the answer took.
async fn timed_order(env: &Env, user: &str) -> (StatusCode, Duration) {
    let started = Instant::now();
    let (s, _) = env.order("c", user, user, json!([{"sku_id": "a", "quantity": 1}])).await;
    (s, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_unreachable_gives_fast_503s_and_recovers_by_itself() {
    let redis_addr = addr_of(&Settings::load(None).unwrap().redis.url);
    let proxy = Arc::new(Proxy::start(redis_addr).await.unwrap());
    let p = Arc::clone(&proxy);
    let env = Env::start_many(1, move |s| s.redis.url = format!("redis://{}", p.addr())).await;
    let mut ws = env.settings.clone();
    ws.redis.url = format!("redis://{redis_addr}");
    let workers = vec![start_worker(&ws).await];
    let db = pool(&env).await;
    assert_eq!(env.launch(sale("c", 10_000, 1, 900)).await.0, StatusCode::CREATED);
    let mut o = buy(&env, "c", 0..50, 16).await;
    let budget = Duration::from_millis(env.settings.redis.call_timeout_ms + 1500);

    // Refused (connections reset) and blackholed (connections open, no answer: only
    // timeouts save a request from hanging).
    let mut n = 1000;
    for mode in [Mode::Refuse, Mode::Blackhole] {
        proxy.set(mode);
        let started = Instant::now();
        while started.elapsed() < outage(2, 5) / 2 {
            let answers = join_all((0..16).map(|i| {
                let user = format!("during-{n}-{i}");
                let env = &env;
                async move { timed_order(env, &user).await }
            }))
            .await;
            n += 1;
            for (s, took) in answers {
                assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{mode:?}: a dependency down is 503");
                assert!(took < budget, "{mode:?}: answered in {took:?}, over {budget:?}");
            }
            let ready = env.http.get(env.url(0, "/readyz")).send().await.unwrap().status();
            assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE, "{mode:?}: not ready without Redis");
        }
    }
    proxy.restore();
    // Recovers by itself: no restart, the next requests succeed within seconds.
    let started = Instant::now();
    loop {
        let (s, _) = timed_order(&env, "after-0").await;
        if s == StatusCode::CREATED {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still {s} 10 s after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = buy(&env, "c", 2000..2100, 16).await;
    assert_eq!(after.statuses.get(&201), Some(&100), "{:?}", after.statuses);
    o.created.extend(after.created);
    let (_, v) = env.get_order("after-0", "nonexistent.0").await;
    assert_eq!(code(&v), "order_not_found");
    // The first order after the outage, found through its replay.
    let (s, v) = env.order("c", "after-0", "after-0", json!([{"sku_id": "a", "quantity": 1}])).await;
    assert_eq!(s, StatusCode::OK);
    o.created.push(("after-0".into(), v["order_id"].as_str().unwrap().to_owned(), 500));
    drained(&env, &db, "c", o.created.len(), false, Duration::from_secs(30)).await;
    assert_invariants(&env, &db, "c", &o, 1, &HashSet::new()).await;
    cleanup(env, workers, db).await;
}

/// A private redis-server that the test may kill, a gateway and a worker on it, and a
/// MySQL pool.
async fn on_private_redis() -> (RedisServer, Env, Vec<sync_worker::supervisor::Running>, sqlx::MySqlPool) {
    let Some(server) = RedisServer::start().await else {
        panic!("redis-server is needed for this test (scripts/ensure-services.sh installs it)");
    };
    let url = server.url();
    let env = Env::start_many(1, move |s| s.redis.url = url).await;
    let workers = vec![start_worker(&env.settings).await];
    let db = pool(&env).await;
    (server, env, workers, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_empties_the_script_cache_and_nothing_breaks() {
    let (mut server, env, workers, db) = on_private_redis().await;
    let n = scale(200, 2000);
    assert_eq!(env.launch(sale("c", n * 2, 1, 900)).await.0, StatusCode::CREATED);
    let mut o = buy(&env, "c", 0..n / 2, 32).await;

    server.kill();
    let (s, took) = timed_order(&env, "while-down").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    assert!(server.restart().await, "redis-server restarts");
    let mut conn =
        redis::Client::open(server.url().as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let cached: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(redis::Script::new("return 1").get_hash())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(cached, vec![false]);

    // Every script runs again (NOSCRIPT → reload), the data came back from the AOF.
    let started = Instant::now();
    loop {
        if timed_order(&env, "after-0").await.0 == StatusCode::CREATED {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no reservation 10 s after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, v) = env.order("c", "after-0", "after-0", json!([{"sku_id": "a", "quantity": 1}])).await;
    o.created.push(("after-0".into(), v["order_id"].as_str().unwrap().to_owned(), 500));
    let rest = buy(&env, "c", n / 2..n, 32).await;
    assert_eq!(rest.statuses.get(&201), Some(&(n - n / 2)), "{:?}", rest.statuses);
    o.created.extend(rest.created);
    drained(&env, &db, "c", o.created.len(), false, Duration::from_secs(60)).await;
    assert_invariants(&env, &db, "c", &o, 1, &HashSet::new()).await;
    cleanup(env, workers, db).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_racing_the_timeout_has_one_winner() {
    let env = Env::start().await;
    let workers = vec![start_worker(&env.settings).await];
    let db = pool(&env).await;
    let n = scale(150, 1000);
    assert_eq!(env.launch(sale("c", n, 1, 1)).await.0, StatusCode::CREATED);
    let o = buy(&env, "c", 0..n, 64).await;
    assert_eq!(o.created.len(), n);

    // Each payment lands between 300 ms before and 300 ms after its order's deadline,
    // while the sweeper and the payment timers expire the same orders.
    let env_ref = &env;
    let answers = join_all(o.created.iter().enumerate().map(|(i, (user, id, total))| async move {
        let offset_ms = (i as i64 * 37) % 600 - 300;
        let (_, v) = env_ref.get_order(user, id).await;
        let expires = v["expires_at"].as_str().unwrap().to_owned();
        let expires_ms = time_ms(&expires);
        let wait = expires_ms + offset_ms - engine::clock::now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        let (s, v) = env_ref.pay(&format!("evt-{id}"), id, *total, "succeeded").await;
        (id.clone(), s, v["order_status"].as_str().unwrap_or("").to_owned())
    }))
    .await;
    let mut paid = HashSet::new();
    for (id, s, status) in &answers {
        assert_eq!(*s, StatusCode::OK, "{id}: {status}");
        match status.as_str() {
            "paid" => {
                paid.insert(id.clone());
            }
            "refund_required" => {}
            other => panic!("{id}: a payment answered {other}"),
        }
    }
    drained(&env, &db, "c", n, true, Duration::from_secs(30)).await;
    // One winner each: the final state is the one the payment answer announced (the
    // refund_required events may land in MySQL just after the stock has reconciled).
    let started = Instant::now();
    loop {
        let mut wrong = Vec::new();
        for (id, _, status) in &answers {
            let got: Vec<u8> = sqlx::query_scalar("SELECT status FROM orders WHERE order_id = ?")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap();
            let got = String::from_utf8(got).unwrap();
            let expected = if status == "paid" { "paid" } else { "refund_required" };
            if got != expected {
                wrong.push(format!("{id}: {got}, announced {expected}"));
            }
        }
        if wrong.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{wrong:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!paid.is_empty() && paid.len() < n, "the race went both ways: {} of {n} paid", paid.len());
    assert_invariants(&env, &db, "c", &o, 1, &paid).await;
    let item = env.item("c", "a").await;
    assert_eq!(item["available"].as_i64().unwrap(), (n - paid.len()) as i64, "units released at most once");
    cleanup(env, workers, db).await;
}

fn time_ms(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_storm_of_ten_identical_requests_reserves_once() {
    let env = Env::start_many(2, |_| {}).await;
    let workers = vec![start_worker(&env.settings).await];
    let db = pool(&env).await;
    let n = scale(100, 1000);
    let stock = n * 2 / 3;
    assert_eq!(env.launch(sale("c", stock, 1, 900)).await.0, StatusCode::CREATED);
    let mut o = Outcomes::default();
    for chunk in (0..n).collect::<Vec<_>>().chunks(20) {
        let groups = join_all(chunk.iter().map(|&u| {
            let env = &env;
            async move {
                let user = format!("user-{u}");
                let tries = join_all((0..10).map(|t| {
                    let user = user.clone();
                    async move {
                        env.order_on(
                            t % 2,
                            "c",
                            &user,
                            &format!("k{u}"),
                            json!([{"sku_id": "a", "quantity": 1}]),
                        )
                        .await
                    }
                }))
                .await;
                (user, tries)
            }
        }))
        .await;
        for (user, tries) in groups {
            let created: Vec<&Value> =
                tries.iter().filter(|(s, _)| *s == StatusCode::CREATED).map(|(_, v)| v).collect();
            let replayed = tries.iter().filter(|(s, _)| *s == StatusCode::OK).count();
            let sold_out =
                tries.iter().filter(|(s, v)| *s == StatusCode::CONFLICT && code(v) == "sold_out").count();
            match created.as_slice() {
                [first] => {
                    let statuses: Vec<_> = tries.iter().map(|(s, v)| format!("{s} {}", code(v))).collect();
                    assert_eq!(replayed, 9, "{user}: one 201, nine replays: {statuses:?}");
                    let id = first["order_id"].as_str().unwrap();
                    assert!(
                        tries.iter().all(|(_, v)| v["order_id"] == id),
                        "{user}: the same order every time"
                    );
                    o.created.push((user, id.to_owned(), 500));
                }
                [] => assert_eq!(sold_out, 10, "{user}: all ten sold out"),
                many => panic!("{user}: {} reservations for one key", many.len()),
            }
        }
    }
    assert_eq!(o.created.len(), stock, "every unit sold, once");
    drained(&env, &db, "c", stock, false, Duration::from_secs(30)).await;
    assert_invariants(&env, &db, "c", &o, 1, &HashSet::new()).await;
    cleanup(env, workers, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_and_two_workers_sell_pay_cancel_and_expire_consistently() {
    let env = Env::start_many(2, |_| {}).await;
    let workers = vec![start_worker(&env.settings).await, start_worker(&env.settings).await];
    let db = pool(&env).await;
    let n = scale(600, 6000);
    let stock = n / 3;
    // The window must outlast paying and cancelling the lot: 2,000 orders in the full run.
    let window = scale(2, 10) as u64;
    assert_eq!(env.launch(sale("c", stock, 1, window)).await.0, StatusCode::CREATED);
    let o = buy(&env, "c", 0..n, 64).await;
    assert_eq!(o.created.len(), stock, "{:?}", o.statuses);
    let mut paid = HashSet::new();
    let numbered: Vec<_> = o.created.iter().enumerate().collect();
    for chunk in numbered.chunks(64) {
        let answers = join_all(chunk.iter().map(|(i, (user, id, total))| {
            let env = &env;
            async move {
                match i % 4 {
                    0 | 1 => {
                        let (s, v) = env.pay(&format!("evt-{id}"), id, *total, "succeeded").await;
                        assert_eq!(s, StatusCode::OK, "{v}");
                        (v["order_status"] == "paid").then(|| id.clone())
                    }
                    2 => {
                        assert_eq!(env.cancel(i % 2, user, id).await.0, StatusCode::OK);
                        None
                    }
                    _ => None, // left to expire
                }
            }
        }))
        .await;
        paid.extend(answers.into_iter().flatten());
    }
    drained(&env, &db, "c", stock, true, Duration::from_secs(30 + window)).await;
    assert_invariants(&env, &db, "c", &o, 1, &paid).await;
    let expired: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE campaign_id = 'c' AND status = 'expired'")
            .fetch_one(&db)
            .await
            .unwrap();
    let paid_late = o.created.len() / 2 - paid.len();
    assert_eq!(expired as usize + paid_late, o.created.len() / 4, "every unpaid order expired, once");
    cleanup(env, workers, db).await;
}

/// A hot sku over three shards, sold through two gateways with one worker: exactly
/// the stock, nobody over the limit, retries replayed, every 201 in MySQL and Redis
/// and MySQL reconciled; then cancellations that all land on one shard, and buyers
/// homed on the other two take every freed unit. Runs on the one Redis here and on
/// the local Redis Cluster in the test script.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sharded_sale_through_two_gateways_sells_exactly_the_stock() {
    let env = Env::start_many(2, |_| {}).await;
    let workers = vec![start_worker(&env.settings).await];
    let db = pool(&env).await;
    let stock = 200;
    let mut spec = sale("hot", stock, 1, 900);
    spec["shards"] = json!(3);
    assert_eq!(env.launch(spec).await.0, StatusCode::CREATED);
    let mut o = buy(&env, "hot", 0..3 * stock, 48).await;
    assert_eq!(o.created.len(), stock, "{:?}", o.statuses);
    assert_eq!(
        o.statuses.keys().copied().collect::<HashSet<u16>>(),
        HashSet::from([201, 409]),
        "{:?}",
        o.statuses
    );
    assert_eq!(env.item("hot", "a").await["available"], json!(0));

    // Retries with the same key, on the other gateway: the same order.
    for (user, id, _) in o.created.iter().take(20) {
        let u: usize = user.trim_start_matches("user-").parse().unwrap();
        let (s, v) = env
            .order_on((u + 1) % 2, "hot", user, &format!("k{u}"), json!([{"sku_id": "a", "quantity": 1}]))
            .await;
        assert_eq!((s, v["order_id"].as_str().unwrap()), (StatusCode::OK, id.as_str()));
    }

    // Every cancellation lands on shard 1; new buyers are homed on shards 0 and 2.
    let map = engine::shards::ShardMap::new(&engine::domain::CampaignId::parse("hot").unwrap(), 3);
    let home = |u: usize| map.home(&engine::domain::UserId::parse(&format!("user-{u}")).unwrap());
    let on_one: Vec<(String, String)> = o
        .created
        .iter()
        .filter(|(user, _, _)| home(user[5..].parse().unwrap()) == 1)
        .map(|(u, id, _)| (u.clone(), id.clone()))
        .collect();
    for (user, id) in &on_one {
        assert_eq!(env.cancel(0, user, id).await.0, StatusCode::OK);
    }
    // Within the contract's second, every gateway has heard of the release.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let elsewhere: Vec<usize> = (3 * stock..).filter(|u| home(*u) != 1).take(3 * on_one.len()).collect();
    let mut again = Outcomes::default();
    for u in &elsewhere {
        let more = buy(&env, "hot", *u..*u + 1, 1).await;
        again.created.extend(more.created);
    }
    assert_eq!(
        again.created.len(),
        on_one.len(),
        "every unit freed on shard 1 sold to buyers homed elsewhere"
    );
    o.created.extend(again.created);
    assert_eq!(env.item("hot", "a").await["available"], json!(0));

    drained(&env, &db, "hot", o.created.len(), false, Duration::from_secs(60)).await;
    assert_invariants(&env, &db, "hot", &o, 1, &HashSet::new()).await;
    cleanup(env, workers, db).await;
}

/// A sharded campaign's orders are paid, cancelled and left to expire, each in its own
/// shard: the worker's timers and sweeps release the unpaid ones once, the operator
/// view and MySQL agree, nothing is left reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sharded_campaign_pays_cancels_and_expires_per_shard() {
    let env = Env::start_many(2, |_| {}).await;
    let workers = vec![start_worker(&env.settings).await];
    let db = pool(&env).await;
    let stock = 90;
    let mut spec = sale("px", stock, 1, 2);
    spec["shards"] = json!(3);
    assert_eq!(env.launch(spec).await.0, StatusCode::CREATED);
    let o = buy(&env, "px", 0..stock, 32).await;
    assert_eq!(o.created.len(), stock, "{:?}", o.statuses);
    let mut paid = HashSet::new();
    for (i, (user, id, total)) in o.created.iter().enumerate() {
        match i % 3 {
            0 => {
                let (s, v) = env.pay(&format!("evt-{id}"), id, *total, "succeeded").await;
                assert_eq!(s, StatusCode::OK, "{v}");
                if v["order_status"] == "paid" {
                    paid.insert(id.clone());
                }
            }
            1 => assert_eq!(env.cancel(i % 2, user, id).await.0, StatusCode::OK),
            _ => {} // left to expire
        }
    }
    drained(&env, &db, "px", stock, true, Duration::from_secs(40)).await;
    assert_invariants(&env, &db, "px", &o, 1, &paid).await;
    let item = env.item("px", "a").await;
    assert_eq!((item["reserved"].clone(), item["sold"].clone()), (json!(0), json!(paid.len())));
    cleanup(env, workers, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_notice_link_stops_local_answers_within_two_seconds() {
    let mut s = Settings::load(None).unwrap();
    let redis_addr = addr_of(&s.redis.url);
    let proxy = Proxy::start(redis_addr).await.unwrap();
    s.namespace = format!("fpub{}", std::process::id());
    s.redis.url = format!("redis://{}", proxy.addr());
    let engine = engine::Engine::start(&s).unwrap();
    let started = Instant::now();
    while !engine.cache_is_live() {
        assert!(started.elapsed() < Duration::from_secs(5), "notices never became live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Connections stay open, nothing arrives: no FIN, no RST, only silence.
    proxy.set(Mode::Blackhole);
    let cut = Instant::now();
    while engine.cache_is_live() {
        assert!(cut.elapsed() < Duration::from_secs(2), "still answering locally 2 s into a dead link");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.restore();
    let back = Instant::now();
    while !engine.cache_is_live() {
        assert!(back.elapsed() < Duration::from_secs(10), "notices did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_mid_sale_is_rebuilt_from_mysql_and_sells_on() {
    let (mut server, env, workers, db) = on_private_redis().await;
    let stock = scale(200, 2000);
    assert_eq!(env.launch(sale("c", stock, 1, 900)).await.0, StatusCode::CREATED);
    let mut o = buy(&env, "c", 0..stock / 2, 32).await;
    assert_eq!(o.created.len(), stock / 2);
    // Some settled before the crash: paid and cancelled.
    let mut paid = HashSet::new();
    for (i, (user, id, total)) in o.created.iter().enumerate().take(20) {
        if i % 2 == 0 {
            let (s, v) = env.pay(&format!("evt-{id}"), id, *total, "succeeded").await;
            assert_eq!((s, v["order_status"].as_str()), (StatusCode::OK, Some("paid")));
            paid.insert(id.clone());
        } else {
            assert_eq!(env.cancel(0, user, id).await.0, StatusCode::OK);
        }
    }
    drained(&env, &db, "c", o.created.len(), false, Duration::from_secs(30)).await;

    // Redis dies and comes back with nothing: no AOF, no RDB.
    assert!(server.restart_empty().await, "redis-server restarts");
    let crashed = Instant::now();
    let mut next = stock;
    loop {
        let (s, v) = env
            .order("c", &format!("user-{next}"), &format!("k{next}"), json!([{"sku_id": "a", "quantity": 1}]))
            .await;
        if s == StatusCode::CREATED {
            o.created.push((format!("user-{next}"), v["order_id"].as_str().unwrap().to_owned(), 500));
            next += 1;
            break;
        }
        assert!(
            crashed.elapsed() < Duration::from_secs(5),
            "the campaign did not sell again within 5 s: {s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back_after = crashed.elapsed();
    // A pending order from before the crash can still be paid; a paid one is still paid.
    let (_, pending_id, total) = o.created[30].clone();
    let (s, v) = env.pay(&format!("evt-{pending_id}"), &pending_id, total, "succeeded").await;
    assert_eq!((s, v["order_status"].as_str()), (StatusCode::OK, Some("paid")), "{v}");
    paid.insert(pending_id);
    // Demand above what is left: exactly the stock sells, counted against MySQL.
    let rest = buy(&env, "c", next..next + stock, 32).await;
    o.created.extend(rest.created);
    let cancelled = 10;
    assert_eq!(o.created.len(), stock + cancelled, "every unit sold once, the cancelled ones again");
    drained(&env, &db, "c", o.created.len(), false, Duration::from_secs(60)).await;
    assert_invariants(&env, &db, "c", &o, 1, &paid).await;
    let held: i64 = order_units(&db, "c")
        .await
        .iter()
        .filter(|(_, s, _)| s == "pending_payment" || s == "paid")
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(held as usize, stock, "MySQL never holds more units than stock");
    println!("sold again {back_after:?} after Redis came back empty");
    cleanup(env, workers, db).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_relay_with_a_thousand_finished_campaigns_of_three_shards_makes_a_handful_of_calls() {
    let Some(server) = RedisServer::start().await else {
        panic!("redis-server is needed for this test (scripts/ensure-services.sh installs it)");
    };
    let url = server.url();
    let env = Env::start_many(1, move |s| s.redis.url = url).await;
    let engine = engine::Engine::start(&env.settings).unwrap();
    let now = engine::clock::now_ms();
    let specs: Vec<_> = (0..1000)
        .map(|i| engine::campaign::CampaignLaunch {
            campaign: engine::domain::CampaignId::parse(&format!("old-{i}")).unwrap(),
            starts_ms: now - 7_200_000,
            ends_ms: now - 3_600_000,
            per_user_limit: 1,
            payment_window_secs: 900,
            max_orders_per_sec: None,
            max_user_requests_per_sec: None,
            shards: 3,
            items: vec![engine::campaign::LaunchItem {
                sku: engine::domain::SkuId::parse("a").unwrap(),
                stock: 10,
                price_cents: 100,
            }],
        })
        .collect();
    for chunk in specs.chunks(100) {
        for r in join_all(chunk.iter().map(|spec| engine.launch(spec))).await {
            r.unwrap();
        }
    }
    drop(engine);
    let workers = vec![start_worker(&env.settings).await];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut conn =
        redis::Client::open(server.url().as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut conn).await.unwrap();
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    let mut calls = 0u64;
    let mut seen = Vec::new();
    for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
        let name = line.split(':').next().unwrap().trim_start_matches("cmdstat_");
        let n: u64 = line.split("calls=").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
        if name != "info" && name != "config|resetstat" {
            calls += n;
            seen.push(format!("{name}={n}"));
        }
    }
    let per_sec = calls as f64 / window.as_secs_f64();
    println!("idle worker, 1000 finished campaigns x 3 shards: {per_sec:.1} Redis calls/s ({seen:?})");
    assert!(per_sec <= 10.0, "an idle worker made {per_sec:.1} Redis calls/s: {seen:?}");
    let metrics = workers[0].ctx.metrics.render();
    assert!(!metrics.contains("campaign=\""), "no campaign ids in metric labels");
    let db = pool(&env).await;
    cleanup(env, workers, db).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_broker_makes_readiness_fail_within_its_timeout() {
    let amqp = addr_of(&Settings::load(None).unwrap().amqp.url);
    let proxy = Arc::new(Proxy::start(amqp).await.unwrap());
    let p = Arc::clone(&proxy);
    let env = Env::start_many(1, move |s| {
        s.amqp.url = format!("amqp://guest:guest@{}/%2f", p.addr());
        s.amqp.call_timeout_ms = 1000;
    })
    .await;
    let ready = || async { env.http.get(env.url(0, "/readyz")).send().await.unwrap().status() };
    assert_eq!(ready().await, StatusCode::OK);
    // The cached connection still says "connected": only a round trip tells.
    proxy.set(Mode::Blackhole);
    let cut = Instant::now();
    assert_eq!(ready().await, StatusCode::SERVICE_UNAVAILABLE, "a blackholed broker is not ready");
    assert!(cut.elapsed() < Duration::from_secs(3), "readiness answered in {:?}", cut.elapsed());
    proxy.restore();
    let back = Instant::now();
    while ready().await != StatusCode::OK {
        assert!(back.elapsed() < Duration::from_secs(10), "readiness did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_gone_mid_request_leaves_the_in_flight_gauge() {
    let redis_addr = addr_of(&Settings::load(None).unwrap().redis.url);
    let proxy = Arc::new(Proxy::start(redis_addr).await.unwrap());
    let p = Arc::clone(&proxy);
    let env = Env::start_many(1, move |s| {
        s.redis.url = format!("redis://{}", p.addr());
        s.redis.call_timeout_ms = 2000;
    })
    .await;
    assert_eq!(env.launch(sale("c", 100, 1, 900)).await.0, StatusCode::CREATED);
    proxy.set(Mode::Delay(Duration::from_millis(1500)));
    // Clients that give up after 200 ms, while their requests wait on Redis.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let gone = join_all((0..8).map(|u| {
        let req = impatient
            .post(env.url(0, "/api/v1/campaigns/c/orders"))
            .bearer_auth(env.token(&format!("u{u}")))
            .header("Idempotency-Key", format!("k{u}"))
            .json(&json!({"items": [{"sku_id": "a", "quantity": 1}]}))
            .send();
        async move { req.await.is_err() }
    }))
    .await;
    assert!(gone.iter().all(|g| *g), "every client gave up");
    proxy.restore();
    let metrics = format!("http://{}/metrics", env.gateways[0].metrics_addr);
    let started = Instant::now();
    loop {
        let text = env.http.get(&metrics).send().await.unwrap().text().await.unwrap();
        let in_flight = text
            .lines()
            .find(|l| l.starts_with("flashsale_http_in_flight_requests "))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse::<i64>().ok());
        if in_flight == Some(0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "in flight stuck at {in_flight:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.cleanup().await;
}

/// A private 3-master Redis Cluster, two gateways and a worker on it, and a MySQL pool.
async fn on_private_cluster() -> (RedisCluster, Env, Vec<sync_worker::supervisor::Running>, sqlx::MySqlPool) {
    let Some(cluster) = RedisCluster::start(3).await else {
        panic!(
            "redis-server and redis-cli are needed for this test (scripts/ensure-services.sh installs them)"
        );
    };
    let seeds = cluster.seeds();
    let env = Env::start_many(2, move |s| s.redis.cluster_nodes = seeds).await;
    let workers = vec![start_worker(&env.settings).await];
    let db = pool(&env).await;
    (cluster, env, workers, db)
}

/// The cluster node holding a campaign shard's keys.
fn node_of(cluster: &RedisCluster, tag: &engine::domain::CampaignId) -> usize {
    cluster.node_of_slot(engine::keys::hash_slot(&format!("{{c:{tag}}}"))).unwrap()
}

/// A campaign id for each master of the cluster (by node index).
fn one_campaign_per_master(cluster: &RedisCluster) -> Vec<String> {
    let mut solo: Vec<String> = vec![String::new(); 3];
    for j in 0.. {
        let id = format!("m{j}");
        let node = node_of(cluster, &engine::domain::CampaignId::parse(&id).unwrap());
        if solo[node].is_empty() {
            solo[node] = id;
        }
        if solo.iter().all(|s| !s.is_empty()) {
            return solo;
        }
    }
    solo
}

/// Every 201 of `o` asked again with its key, on the other gateway: the same order.
async fn replays_return_their_orders(env: &Env, campaign: &str, o: &Outcomes) {
    for (user, id, _) in &o.created {
        let u: usize = user.trim_start_matches("user-").parse().unwrap();
        let (s, v) = env
            .order_on(
                (u + 1) % env.gateways.len(),
                campaign,
                user,
                &format!("k{u}"),
                json!([{"sku_id": "a", "quantity": 1}]),
            )
            .await;
        assert_eq!(
            (s, v["order_id"].as_str()),
            (StatusCode::OK, Some(id.as_str())),
            "{campaign} {user}: {v}"
        );
    }
}

/// One master of a 3-master Redis Cluster is SIGKILLed mid-sale and comes back with no
/// data (its cluster configuration kept), with an unsharded campaign on every master
/// and a campaign of three shards, one on each. The lost master's campaign and shard
/// are rebuilt per shard from MySQL and the surviving shards and sell again within 5 s
/// of the node answering, never 404; the campaigns on the other masters sell on with
/// no answer slower than the call timeout; the campaign list answers 200 throughout;
/// after a sell-out with demand above stock every campaign has sold exactly its stock
/// in Redis and MySQL, reconciled, and every answered key replays its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_master_restarted_empty_mid_sale_is_rebuilt_shard_by_shard() {
    use engine::domain::CampaignId;
    let (mut cluster, env, workers, db) = on_private_cluster().await;
    let stock = scale(120, 600);
    // One unsharded campaign per master, and one spread over the three.
    let solo = one_campaign_per_master(&cluster);
    let mut spread = sale("spread", stock, 1, 900);
    spread["shards"] = json!(3);
    let (s, v) = env.launch(spread).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for id in &solo {
        assert_eq!(env.launch(sale(id, stock, 1, 900)).await.0, StatusCode::CREATED);
    }
    let victim = 1;
    let map = engine::shards::ShardMap::new(&CampaignId::parse("spread").unwrap(), 3);
    assert!(map.tags().iter().any(|t| node_of(&cluster, t) == victim), "a shard of 'spread' on the victim");
    let campaigns: Vec<String> = solo.iter().cloned().chain(["spread".to_owned()]).collect();
    // Users of each campaign are their own range: campaign i has users i*100000...
    let base = |i: usize| i * 100_000;
    let mut outcomes: Vec<Outcomes> = Vec::new();
    let mut paid: Vec<HashSet<String>> = vec![HashSet::new(); campaigns.len()];
    for (i, c) in campaigns.iter().enumerate() {
        let o = buy(&env, c, base(i)..base(i) + stock / 2, 16).await;
        assert_eq!(o.created.len(), stock / 2, "{c}: {:?}", o.statuses);
        for (_, id, total) in o.created.iter().take(6) {
            let (s, v) = env.pay(&format!("evt-{id}"), id, *total, "succeeded").await;
            assert_eq!((s, v["order_status"].as_str()), (StatusCode::OK, Some("paid")), "{v}");
            paid[i].insert(id.clone());
        }
        outcomes.push(o);
    }
    for (c, o) in campaigns.iter().zip(&outcomes) {
        drained(&env, &db, c, o.created.len(), false, Duration::from_secs(30)).await;
    }

    // The kill, while the list is read, the lost master's campaign is asked for orders
    // and another master's campaign sells.
    let victim_campaign = solo[victim].clone();
    let other = (victim + 1) % 3;
    let done = std::sync::atomic::AtomicBool::new(false);
    // The lost master's campaign is asked only once its master is dead: an order it
    // answered just before a crash that the relay had not passed on yet is lost with
    // the node (no replica here; docs/reliability.md), which is not what this tests.
    let killed = std::sync::atomic::AtomicBool::new(false);
    let restarted: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let stopped = || done.load(std::sync::atomic::Ordering::Relaxed);
    let lister = async {
        let mut bad = Vec::new();
        while !stopped() {
            let (s, v) = env.admin(Method::GET, "/admin/v1/campaigns", None).await;
            if s != StatusCode::OK {
                bad.push((s, v));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bad
    };
    let vi = campaigns.iter().position(|c| *c == victim_campaign).unwrap();
    let asker = async {
        let (mut answers, mut u) = (Vec::new(), base(vi) + 50_000);
        while !killed.load(std::sync::atomic::Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while !stopped() {
            let (s, v) = env
                .order_on(
                    u % 2,
                    &victim_campaign,
                    &format!("user-{u}"),
                    &format!("k{u}"),
                    json!([{"sku_id": "a", "quantity": 1}]),
                )
                .await;
            if s == StatusCode::CREATED {
                let id = v["order_id"].as_str().unwrap().to_owned();
                answers.push((Instant::now(), s, Some((format!("user-{u}"), id, 500))));
                u += 1;
                if restarted.lock().unwrap().is_some() {
                    break;
                }
            } else {
                answers.push((Instant::now(), s, None));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answers
    };
    let oi = other;
    let seller = async {
        let (mut answers, mut u) = (Vec::new(), base(oi) + 60_000);
        while !stopped() {
            let asked = Instant::now();
            let (s, v) = env
                .order_on(
                    u % 2,
                    &solo[oi],
                    &format!("user-{u}"),
                    &format!("k{u}"),
                    json!([{"sku_id": "a", "quantity": 1}]),
                )
                .await;
            let id = (s == StatusCode::CREATED).then(|| v["order_id"].as_str().unwrap().to_owned());
            answers.push((asked.elapsed(), s, id.map(|id| (format!("user-{u}"), id, 500))));
            u += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        answers
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.kill(victim);
        killed.store(true, std::sync::atomic::Ordering::Release);
        assert!(cluster.restart_empty(victim).await, "the master restarts and the cluster is healthy");
        *restarted.lock().unwrap() = Some(Instant::now());
        tokio::time::sleep(Duration::from_secs(6)).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (bad_lists, asked, sold_elsewhere, ()) = tokio::join!(lister, asker, seller, killer);
    assert!(bad_lists.is_empty(), "the list answered 200 throughout: {bad_lists:?}");
    assert!(asked.iter().all(|(_, s, _)| *s != StatusCode::NOT_FOUND), "never a 404 for a live campaign");
    let back_at = restarted.lock().unwrap().unwrap();
    let sold_again = asked.iter().find(|(at, s, _)| *at > back_at && *s == StatusCode::CREATED);
    let (at, _, _) = sold_again.expect("the lost master's campaign sells again");
    println!(
        "the lost master's campaign sold again {:?} after the node answered",
        at.duration_since(back_at)
    );
    assert!(at.duration_since(back_at) < Duration::from_secs(5), "sold again within 5 s");
    outcomes[vi].created.extend(asked.into_iter().filter_map(|(_, _, c)| c));
    let slowest = sold_elsewhere.iter().map(|(d, _, _)| *d).max().unwrap();
    assert!(
        sold_elsewhere.iter().all(|(_, s, _)| *s == StatusCode::CREATED),
        "another master's campaign sold throughout: {:?}",
        sold_elsewhere.iter().map(|(_, s, _)| s.as_u16()).collect::<Vec<_>>()
    );
    assert!(slowest < Duration::from_millis(1500), "no answer slower than the call timeout: {slowest:?}");
    outcomes[oi].created.extend(sold_elsewhere.into_iter().filter_map(|(_, _, c)| c));

    // Demand above what is left, everywhere: exactly the stock sells.
    for (i, c) in campaigns.iter().enumerate() {
        let rest = buy(&env, c, base(i) + 70_000..base(i) + 70_000 + stock, 16).await;
        outcomes[i].created.extend(rest.created);
        assert_eq!(outcomes[i].created.len(), stock, "{c}: every unit sold once, none left unsold");
    }
    for (i, c) in campaigns.iter().enumerate() {
        drained(&env, &db, c, outcomes[i].created.len(), false, Duration::from_secs(60)).await;
        assert_invariants(&env, &db, c, &outcomes[i], 1, &paid[i]).await;
        replays_return_their_orders(&env, c, &outcomes[i]).await;
    }
    cleanup(env, workers, db).await;
    drop(cluster);
}

/// The campaign index lives in one slot and is lost with its master (the restore check
/// lists its campaigns again). A relay that rescans meanwhile (here: its broadcast
/// notice link dropped) must go on hearing the `outbox` notices of every live shard: on
/// a cluster they come on each shard's own channel, subscribed for the campaigns the
/// rescan names. Orders taken after the rescan reach MySQL within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_rescan_that_meets_a_lost_campaign_index_still_hears_every_shard() {
    let (cluster, env, workers, db) = on_private_cluster().await;
    let mut spread = sale("spread", 60, 1, 900);
    spread["shards"] = json!(3);
    let (s, v) = env.launch(spread).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let first = buy(&env, "spread", 0..12, 4).await;
    assert_eq!(first.created.len(), 12, "{:?}", first.statuses);
    drained(&env, &db, "spread", 12, false, Duration::from_secs(30)).await;
    // The index is lost (as with its node), then every RESP2 subscriber's link drops:
    // the worker's broadcast notice link comes back with a resync, and its relay rescans.
    let index = format!("{}:campaigns", env.settings.namespace);
    let node = cluster.node_of_slot(engine::keys::hash_slot(&index)).unwrap();
    assert!(cluster.cli(node, &["del", &index]).is_some_and(|o| o.contains('1')), "the index deleted");
    for i in 0..3 {
        assert!(cluster.cli(i, &["client", "kill", "type", "pubsub"]).is_some());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let more = buy(&env, "spread", 100..112, 4).await;
    assert_eq!(more.created.len(), 12, "{:?}", more.statuses);
    drained(&env, &db, "spread", 24, false, Duration::from_secs(10)).await;
    cleanup(env, workers, db).await;
    drop(cluster);
}

/// One master of the cluster stops answering (SIGSTOP: its connections stay open,
/// nothing comes back) for longer than the cluster's node timeout: requests for its
/// campaign answer 503 within the call timeout, never hang; the other masters'
/// campaigns sell on; the list answers 200 (the silent master's campaign from MySQL).
/// Once it answers again its campaign sells again, and every campaign sells exactly its
/// stock, reconciled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_cluster_master_costs_only_its_own_campaigns() {
    let (cluster, env, workers, db) = on_private_cluster().await;
    let stock = scale(40, 400);
    let solo = one_campaign_per_master(&cluster);
    for id in &solo {
        assert_eq!(env.launch(sale(id, stock, 1, 900)).await.0, StatusCode::CREATED);
    }
    let (victim, other) = (0, 1);
    let base = |i: usize| i * 100_000;
    let mut outcomes = Vec::new();
    for (i, c) in solo.iter().enumerate() {
        outcomes.push(buy(&env, c, base(i)..base(i) + stock / 4, 8).await);
    }
    cluster.freeze(victim);
    let frozen = Instant::now();
    let mut silent = Vec::new();
    let mut elsewhere = Vec::new();
    let mut u = 0;
    while frozen.elapsed() < Duration::from_secs(3) {
        u += 1;
        let asked = Instant::now();
        let user = base(victim) + 50_000 + u;
        let (s, _) = env
            .order_on(
                u % 2,
                &solo[victim],
                &format!("user-{user}"),
                &format!("k{user}"),
                json!([{"sku_id": "a", "quantity": 1}]),
            )
            .await;
        silent.push((asked.elapsed(), s, user));
        let asked = Instant::now();
        let user = base(other) + 50_000 + u;
        let (s, v) = env
            .order_on(
                u % 2,
                &solo[other],
                &format!("user-{user}"),
                &format!("k{user}"),
                json!([{"sku_id": "a", "quantity": 1}]),
            )
            .await;
        elsewhere.push((asked.elapsed(), s));
        if s == StatusCode::CREATED {
            outcomes[other].created.push((
                format!("user-{user}"),
                v["order_id"].as_str().unwrap().to_owned(),
                500,
            ));
        }
    }
    let (s, v) = env.admin(Method::GET, "/admin/v1/campaigns", None).await;
    assert_eq!(s, StatusCode::OK, "the list answers while a master is silent: {v}");
    let listed = v["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["campaign_id"] == solo[victim].as_str())
        .cloned();
    assert_eq!(listed.unwrap()["restoring"], json!(true), "the silent master's campaign, from MySQL");
    cluster.thaw(victim);
    assert!(cluster.healthy(Duration::from_secs(20)).await);

    let call_timeout = Duration::from_millis(env.settings.redis.call_timeout_ms);
    let slack = Duration::from_millis(700);
    assert!(
        silent.iter().all(|(d, s, _)| *s == StatusCode::SERVICE_UNAVAILABLE && *d < call_timeout + slack),
        "503 within the call timeout: {silent:?}"
    );
    assert!(
        elsewhere.iter().all(|(d, s)| *s == StatusCode::CREATED && *d < call_timeout + slack),
        "another master sells on: {elsewhere:?}"
    );
    // Its campaign sells again; then every campaign sells exactly its stock.
    let back = Instant::now();
    loop {
        let user = base(victim) + 60_000 + back.elapsed().as_millis() as usize;
        let (s, v) = env
            .order(
                &solo[victim],
                &format!("user-{user}"),
                &format!("k{user}"),
                json!([{"sku_id": "a", "quantity": 1}]),
            )
            .await;
        if s == StatusCode::CREATED {
            outcomes[victim].created.push((
                format!("user-{user}"),
                v["order_id"].as_str().unwrap().to_owned(),
                500,
            ));
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(10), "sells again once it answers: {s} {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A 503 may hide a reservation the silent master made once it ran again: the same
    // request again (same key) says which, as the contract promises.
    for (_, _, user) in &silent {
        let (s, v) = env
            .order(
                &solo[victim],
                &format!("user-{user}"),
                &format!("k{user}"),
                json!([{"sku_id": "a", "quantity": 1}]),
            )
            .await;
        assert!(s == StatusCode::OK || s == StatusCode::CREATED, "the retry resolves the 503: {s} {v}");
        outcomes[victim].created.push((
            format!("user-{user}"),
            v["order_id"].as_str().unwrap().to_owned(),
            500,
        ));
    }
    for (i, c) in solo.iter().enumerate() {
        let rest = buy(&env, c, base(i) + 70_000..base(i) + 70_000 + stock, 16).await;
        outcomes[i].created.extend(rest.created);
        assert_eq!(outcomes[i].created.len(), stock, "{c}: every unit sold once");
        drained(&env, &db, c, stock, false, Duration::from_secs(60)).await;
        assert_invariants(&env, &db, c, &outcomes[i], 1, &HashSet::new()).await;
    }
    cleanup(env, workers, db).await;
    drop(cluster);
}

/// `SCRIPT FLUSH` on one master of the cluster mid-sale: the scripts are loaded again
/// where they are missing (EVALSHA, NOSCRIPT, reload), no request fails, and the sale
/// sells exactly its stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_script_flush_on_one_cluster_master_breaks_nothing() {
    let (cluster, env, workers, db) = on_private_cluster().await;
    let stock = scale(90, 900);
    let mut spec = sale("spread", stock, 1, 900);
    spec["shards"] = json!(3);
    assert_eq!(env.launch(spec).await.0, StatusCode::CREATED);
    let mut o = buy(&env, "spread", 0..stock / 3, 16).await;
    let victim = node_of(&cluster, &engine::domain::CampaignId::parse("spread").unwrap());
    assert!(cluster.script_flush(victim), "SCRIPT FLUSH answered OK");
    let rest = buy(&env, "spread", stock..3 * stock, 16).await;
    assert!(
        rest.statuses.keys().all(|s| *s == 201 || *s == 409),
        "nothing but 201 and sold_out: {:?}",
        rest.statuses
    );
    o.created.extend(rest.created);
    assert_eq!(o.created.len(), stock, "every unit sold once");
    drained(&env, &db, "spread", stock, false, Duration::from_secs(60)).await;
    assert_invariants(&env, &db, "spread", &o, 1, &HashSet::new()).await;
    cleanup(env, workers, db).await;
    drop(cluster);
}

/// A private cluster of 3 masters with a replica each; two gateways and a worker on it
/// whose changes wait for `acks` replicas.
async fn on_private_replicated_cluster(
    acks: u32,
) -> (RedisCluster, Env, Vec<sync_worker::supervisor::Running>, sqlx::MySqlPool) {
    let Some(cluster) = RedisCluster::start_with_replicas(3, 1).await else {
        panic!(
            "redis-server and redis-cli are needed for this test (scripts/ensure-services.sh installs them)"
        );
    };
    let seeds = cluster.seeds();
    let env = Env::start_many(2, move |s| {
        s.redis.cluster_nodes = seeds;
        s.redis.replica_acks = acks;
        // Generous for a loaded test machine: what is measured is what survives, not speed.
        s.redis.replica_ack_timeout_ms = 500;
    })
    .await;
    let workers = vec![start_worker(&env.settings).await];
    let db = pool(&env).await;
    (cluster, env, workers, db)
}

/// `users` buyers of one unit each, `concurrency` at a time, every 503 asked again with
/// the same key until it settles (the contract's way): the 201s and 200s of the buyers.
async fn buy_settled(
    env: &Env,
    campaign: &str,
    users: std::ops::Range<usize>,
    concurrency: usize,
) -> Outcomes {
    let mut out = Outcomes::default();
    let users: Vec<usize> = users.collect();
    for chunk in users.chunks(concurrency) {
        let answers = join_all(chunk.iter().map(|&u| async move {
            let (user, key) = (format!("user-{u}"), format!("k{u}"));
            let started = Instant::now();
            loop {
                let (s, v) = env
                    .order_on(
                        u % env.gateways.len(),
                        campaign,
                        &user,
                        &key,
                        json!([{"sku_id": "a", "quantity": 1}]),
                    )
                    .await;
                if s != StatusCode::SERVICE_UNAVAILABLE || started.elapsed() > Duration::from_secs(30) {
                    return (user, s, v);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
        .await;
        for (user, s, v) in answers {
            *out.statuses.entry(s.as_u16()).or_default() += 1;
            if s == StatusCode::CREATED || s == StatusCode::OK {
                out.created.push((
                    user,
                    v["order_id"].as_str().unwrap().to_owned(),
                    v["total_cents"].as_i64().unwrap(),
                ));
            }
        }
    }
    out
}

/// A launch, asked again while it answers 503 (a replica slow to acknowledge). A 503
/// can come after the launch was written (the acknowledgement was late): the repeat
/// then answers 409 `campaign_exists`, and the campaign is there.
async fn launch_settled(env: &Env, body: Value) {
    let started = Instant::now();
    let mut unavailable = false;
    loop {
        let (s, v) = env.launch(body.clone()).await;
        if s == StatusCode::CREATED {
            return;
        }
        if s == StatusCode::CONFLICT && unavailable {
            let id = body["campaign_id"].as_str().unwrap();
            let (s, v) = env.admin(Method::GET, &format!("/admin/v1/campaigns/{id}"), None).await;
            assert_eq!(
                (s, &v["items"][0]["stock_total"]),
                (StatusCode::OK, &body["items"][0]["stock"]),
                "{v}"
            );
            return;
        }
        unavailable = s == StatusCode::SERVICE_UNAVAILABLE;
        assert!(
            s == StatusCode::SERVICE_UNAVAILABLE && started.elapsed() < Duration::from_secs(30),
            "{s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a failover did to one campaign's sale.
struct Failover {
    campaign: String,
    /// Every answer a buyer got (201 or 200), after the retries of the 503s.
    o: Outcomes,
    /// The 201s answered while the replica was cut off: (user, order id).
    cut_off: Vec<(String, String)>,
}

/// One master's replica misses its last writes (frozen with SIGSTOP), the master is
/// SIGKILLed, the replica is promoted; meanwhile buyers of the master's campaign and of
/// a 3-shard campaign retry every 503 with the same key. Returns, per campaign, every
/// order a buyer was answered (201 or 200 once settled).
async fn sale_through_a_failover(
    cluster: &mut RedisCluster,
    env: &Env,
    db: &sqlx::MySqlPool,
    stock: usize,
) -> Vec<Failover> {
    use engine::domain::CampaignId;
    let solo = one_campaign_per_master(cluster);
    let victim = 0;
    let replica = cluster.replica_of(victim).expect("the master has a replica");
    let mut spread = sale("spread", stock, 1, 900);
    spread["shards"] = json!(3);
    launch_settled(env, spread).await;
    launch_settled(env, sale(&solo[victim], stock, 1, 900)).await;
    let campaigns = [solo[victim].clone(), "spread".to_owned()];
    assert!(
        engine::shards::ShardMap::new(&CampaignId::parse("spread").unwrap(), 3)
            .tags()
            .iter()
            .any(|t| node_of(cluster, t) == victim),
        "a shard of 'spread' on the master that fails"
    );
    let base = |i: usize| i * 100_000;
    let mut out: Vec<Failover> = Vec::new();
    for (i, c) in campaigns.iter().enumerate() {
        let o = buy_settled(env, c, base(i)..base(i) + stock / 4, 16).await;
        out.push(Failover { campaign: c.clone(), o, cut_off: Vec::new() });
    }
    for f in &out {
        drained(env, db, &f.campaign, f.o.created.len(), false, Duration::from_secs(30)).await;
    }
    // The replica stops taking the master's writes; buyers go on; the master dies with
    // writes its replica never saw; the replica comes back and is promoted.
    cluster.freeze(replica);
    assert!(cluster.cut_replication(victim), "the master's link to its replica is cut");
    let mut asked: Vec<(usize, usize)> = Vec::new();
    for (i, c) in campaigns.iter().enumerate() {
        let users = base(i) + 40_000..base(i) + 40_000 + 24;
        let o = buy(env, c, users.clone(), 8).await;
        asked.extend(users.map(|u| (i, u)));
        out[i].o.statuses.extend(o.statuses);
        out[i].cut_off = o.created.into_iter().map(|(u, id, _)| (u, id)).collect();
    }
    // Long enough for the relay to pass on what it would.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill(victim);
    cluster.thaw(replica);
    assert!(cluster.promoted(replica, Duration::from_secs(30)).await, "the replica is promoted");
    assert!(cluster.healthy(Duration::from_secs(30)).await, "the cluster serves every slot again");
    // The dead master comes back (no data) and rejoins as the new master's replica.
    assert!(cluster.restart_empty(victim).await && cluster.replicas_synced().await, "a replica again");
    // Every request asked around the failover, again with its key, until it settles:
    // the order if it survived, a fresh decision if it did not.
    for (i, u) in asked {
        let (user, key) = (format!("user-{u}"), format!("k{u}"));
        let started = Instant::now();
        loop {
            let (s, v) = env
                .order_on(u % 2, &campaigns[i], &user, &key, json!([{"sku_id": "a", "quantity": 1}]))
                .await;
            if s == StatusCode::CREATED || s == StatusCode::OK {
                out[i].o.created.push((user, v["order_id"].as_str().unwrap().to_owned(), 500));
                break;
            }
            if s == StatusCode::CONFLICT {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "{user} never settled: {s} {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Demand above what is left.
    for (i, c) in campaigns.iter().enumerate() {
        let rest = buy_settled(env, c, base(i) + 70_000..base(i) + 70_000 + stock, 16).await;
        out[i].o.created.extend(rest.created);
    }
    out
}

/// With `redis.replica_acks = 1`, a failover to a replica that missed the master's
/// last writes loses no answered order: every change a buyer was told of was on the
/// replica first, the relay passed on only what the replica held, so after the sale
/// each campaign sold exactly its stock, every order answered 201 or 200 is in MySQL,
/// MySQL holds no order no buyer was told of, and every answered key replays its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_with_replica_acks_loses_no_answered_order() {
    let (mut cluster, env, workers, db) = on_private_replicated_cluster(1).await;
    let stock = scale(60, 600);
    let sales = sale_through_a_failover(&mut cluster, &env, &db, stock).await;
    for f in &sales {
        // What was answered while the replica was cut off (a shard on another master)
        // survived: the retry with the same key returns that very order.
        let settled: HashMap<&str, &str> =
            f.o.created.iter().map(|(u, id, _)| (u.as_str(), id.as_str())).collect();
        for (user, id) in &f.cut_off {
            assert_eq!(
                settled.get(user.as_str()),
                Some(&id.as_str()),
                "{}: {user}'s 201 survived",
                f.campaign
            );
        }
        let mut seen = HashSet::new();
        let mut o = Outcomes::default();
        // A request retried after a 503 may be answered 200 with the same order.
        for c in &f.o.created {
            if seen.insert(c.1.clone()) {
                o.created.push(c.clone());
            }
        }
        assert_eq!(o.created.len(), stock, "{}: exactly the stock sold", f.campaign);
        drained(&env, &db, &f.campaign, stock, false, Duration::from_secs(60)).await;
        assert_invariants(&env, &db, &f.campaign, &o, 1, &HashSet::new()).await;
        replays_return_their_orders(&env, &f.campaign, &o).await;
    }
    cleanup(env, workers, db).await;
    drop(cluster);
}

/// The same failover with `redis.replica_acks = 0` (the default): the promoted replica
/// comes back behind MySQL (the relay had passed on what it missed), is found behind
/// and rebuilt from MySQL, so nothing answered is lost here. What the setting still
/// risks: orders answered and not yet relayed when the master dies (counted and
/// printed for the fault table in docs/reliability.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_without_replica_acks_is_repaired_from_what_the_relay_passed_on() {
    let (mut cluster, env, workers, db) = on_private_replicated_cluster(0).await;
    let stock = scale(60, 600);
    let sales = sale_through_a_failover(&mut cluster, &env, &db, stock).await;
    // Let the worker settle what it can.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for f in &sales {
        // A buyer answered 201 while the replica was cut off, whose retry got another
        // order (or sold_out): that first answer was lost with the old master.
        let settled: HashMap<&str, &str> =
            f.o.created.iter().map(|(u, id, _)| (u.as_str(), id.as_str())).collect();
        let lost_answers =
            f.cut_off.iter().filter(|(u, id)| settled.get(u.as_str()) != Some(&id.as_str())).count();
        let mut answered: HashSet<String> = f.o.created.iter().map(|(_, id, _)| id.clone()).collect();
        answered.extend(f.cut_off.iter().map(|(_, id)| id.clone()));
        let ids: Vec<Vec<u8>> = sqlx::query_scalar("SELECT order_id FROM orders WHERE campaign_id = ?")
            .bind(&f.campaign)
            .fetch_all(&db)
            .await
            .unwrap();
        let mysql: HashSet<String> = ids.into_iter().map(|b| String::from_utf8(b).unwrap()).collect();
        let held: i64 = sqlx::query_scalar(
            "SELECT CAST(reserved + sold AS SIGNED) FROM campaign_items WHERE campaign_id = ?",
        )
        .bind(&f.campaign)
        .fetch_one(&db)
        .await
        .unwrap();
        assert!(held as usize <= stock, "{}: MySQL never holds more units than stock", f.campaign);
        let item = env.item(&f.campaign, "a").await;
        let redis_held = item["reserved"].as_i64().unwrap() + item["sold"].as_i64().unwrap();
        // The shard that came back behind MySQL was found and rebuilt from it: the two
        // stores agree, MySQL holds no order no buyer was told about, and, as the relay
        // had passed every answered order on in the 300 ms before the kill, every answer
        // survived and every retry found its order (before: the shard sold those units
        // again, 24 and 10 answers lost, Redis and MySQL holding different orders).
        assert_eq!(redis_held, held, "{}: Redis and MySQL hold the same units", f.campaign);
        assert_eq!(mysql.difference(&answered).count(), 0, "{}: MySQL orders no buyer holds", f.campaign);
        assert_eq!(answered.difference(&mysql).count(), 0, "{}: answered orders not in MySQL", f.campaign);
        assert_eq!(lost_answers, 0, "{}: retries that got another answer", f.campaign);
        println!(
            "replica_acks=0, {}: {} answered 201 while the replica was cut off, {lost_answers} of them lost \
             (the retry with the same key got another answer); {} orders answered in all, {} of them not in \
             MySQL, {} MySQL orders no buyer holds; units answered {} for a stock of {stock}; Redis holds \
             {redis_held}, MySQL {held}",
            f.campaign,
            f.cut_off.len(),
            answered.len(),
            answered.difference(&mysql).count(),
            mysql.difference(&answered).count(),
            answered.len(),
        );
    }
    cleanup(env, workers, db).await;
    drop(cluster);
}

/// A sold-out reservation answered from `engine`'s own cache within `patience`.
async fn until_answered_locally(engine: &engine::Engine, campaign: &str, patience: Duration) -> bool {
    use engine::domain::{CampaignId, IdempotencyKey, OrderLines, ReserveOutcome, UserId};
    let deadline = Instant::now() + patience;
    let lines = OrderLines::parse(vec![("a".to_owned(), 1)]).unwrap();
    let (c, u, k) = (
        CampaignId::parse(campaign).unwrap(),
        UserId::parse("asker").unwrap(),
        IdempotencyKey::parse("k").unwrap(),
    );
    while Instant::now() < deadline {
        let before = engine.stats().answered_locally;
        if let Ok(ReserveOutcome::SoldOut(_)) = engine.reserve(&c, &u, &k, &lines).await {
            if engine.stats().answered_locally == before + 1 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Sharded notices follow their slot: after the master serving a campaign's slot dies
/// and its replica takes over, each process subscribes again on the new master, answers
/// from its cache again, and a restock sent from the new master reaches it (sold-out
/// flags are trusted for a minute here, so only the notice can clear one in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_notices_are_subscribed_again_on_the_master_a_failover_promotes() {
    use engine::campaign::{CampaignLaunch, LaunchItem};
    use engine::domain::{
        CampaignId, IdempotencyKey, OrderLines, ReleaseReason, ReserveOutcome, SkuId, UserId,
    };
    let Some(mut cluster) = RedisCluster::start_with_replicas(3, 1).await else {
        panic!(
            "redis-server and redis-cli are needed for this test (scripts/ensure-services.sh installs them)"
        );
    };
    let mut settings = testkit::isolate("sn");
    settings.redis.cluster_nodes = cluster.seeds();
    settings.engine.sold_out_ttl_ms = 60_000;
    let (a, b) = (engine::Engine::start(&settings).unwrap(), engine::Engine::start(&settings).unwrap());
    let c = CampaignId::parse("c").unwrap();
    let now = engine::clock::now_ms();
    let spec = CampaignLaunch {
        campaign: c.clone(),
        starts_ms: now - 1_000,
        ends_ms: now + 3_600_000,
        per_user_limit: 1,
        payment_window_secs: 600,
        max_orders_per_sec: None,
        max_user_requests_per_sec: None,
        items: vec![LaunchItem { sku: SkuId::parse("a").unwrap(), stock: 1, price_cents: 100 }],
        shards: 1,
    };
    a.launch(&spec).await.unwrap();
    let lines = OrderLines::parse(vec![("a".to_owned(), 1)]).unwrap();
    let reserve = |e: &engine::Engine, u: &str| {
        let (e, u, lines, c) = (e.clone(), UserId::parse(u).unwrap(), lines.clone(), c.clone());
        async move { e.reserve(&c, &u, &IdempotencyKey::parse("k").unwrap(), &lines).await.unwrap() }
    };
    let ReserveOutcome::Reserved(first) = reserve(&b, "w1").await else { panic!("the unit is sold") };
    assert!(until_answered_locally(&a, "c", Duration::from_secs(5)).await, "sold out answered locally");

    let keys = engine::keys::KeySpace::new(&settings.namespace);
    let victim = cluster.node_of_slot(engine::keys::hash_slot(&keys.meta(&c))).unwrap();
    let replica = cluster.replica_of(victim).unwrap();
    // The replica holds the launch and the sale (no worker here rebuilds what it missed).
    assert!(cluster.replica_caught_up(victim, Duration::from_secs(10)).await, "the replica caught up");
    cluster.kill(victim);
    assert!(cluster.promoted(replica, Duration::from_secs(30)).await, "the replica is promoted");
    // The shard's channel is heard again, from the new master.
    assert!(
        until_answered_locally(&a, "c", Duration::from_secs(15)).await,
        "local answers never came back after the failover"
    );
    let released_at = Instant::now();
    loop {
        match b.release(&first.order_id, ReleaseReason::Cancelled).await {
            Ok(_) => break,
            Err(e) => assert!(released_at.elapsed() < Duration::from_secs(10), "release: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let released_at = Instant::now();
    loop {
        match reserve(&a, "w2").await {
            ReserveOutcome::Reserved(_) => break,
            ReserveOutcome::SoldOut(_) => {
                assert!(released_at.elapsed() < Duration::from_secs(2), "the restock notice never arrived");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    drop((a, b));
    drop(cluster);
}
