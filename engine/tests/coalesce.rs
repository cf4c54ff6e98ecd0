//! The coalescer's calls in flight, seen through a slow link to the real Redis: with
//! `engine.reserve_calls_in_flight` 2, an order that finds one call out and nothing
//! queued leaves at once in a second call, and what arrives while both are out leaves
//! together in the next.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use engine::domain::ReserveOutcome;
use flashsale_faults::{Mode, Proxy};
use support::*;

/// Each chunk through the proxy is held this long: a call is out for at least twice it.
const HOP: Duration = Duration::from_millis(150);

/// Script calls (outbox entries: one per call that granted) for ten orders: the first
/// alone, the second 40 ms later, the other eight 40 ms after that, all while the
/// first call is still out. `None` on a cluster (a proxy before one node is no cluster).
async fn calls_for_ten_orders(calls_in_flight: usize) -> Option<i64> {
    let ns = Ns::with(|s| s.engine.reserve_calls_in_flight = calls_in_flight);
    if !ns.settings.redis.cluster_seeds().is_empty() {
        return None;
    }
    let upstream: SocketAddr = ns.settings.redis.url.trim_start_matches("redis://").parse().unwrap();
    let proxy = Proxy::start(upstream).await.unwrap();
    // The engine talks through the proxy; the test's own connections do not.
    let mut through = ns.settings.clone();
    through.redis.url = format!("redis://{}", proxy.addr());
    let e = engine::Engine::start(&through).unwrap();
    launch(&e, &open_campaign("c", &[("x", 100, 100)], 1)).await;
    until_live(&e).await;
    // Cached, so each order's only Redis call is its batch's.
    let r = e.reserve(&cid("c"), &user("warm"), &key("k"), &lines(&[("x", 1)])).await.unwrap();
    assert!(matches!(r, ReserveOutcome::Reserved(_)), "{r:?}");

    proxy.set(Mode::Delay(HOP));
    let mut asked = Vec::new();
    for (i, pause) in [(0, 40), (1, 40)].into_iter().chain((2..10).map(|i| (i, 0))) {
        let e = e.clone();
        asked.push(tokio::spawn(async move {
            e.reserve(&cid("c"), &user(&format!("u{i}")), &key("k"), &lines(&[("x", 1)])).await
        }));
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    for a in asked {
        let r = a.await.unwrap().unwrap();
        assert!(matches!(r, ReserveOutcome::Reserved(_)), "{r:?}");
    }
    proxy.set(Mode::Pass);
    let outbox = ns.keys().outbox(&cid("c"));
    let entries: i64 = redis::cmd("XLEN").arg(&outbox).query_async(&mut ns.raw().await).await.unwrap();
    // Less the warm-up order's.
    Some(entries - 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_call_in_flight_the_nine_orders_behind_the_first_leave_together() {
    if let Some(calls) = calls_for_ten_orders(1).await {
        assert_eq!(calls, 2, "the first order alone, then the nine queued behind it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_calls_in_flight_the_second_order_does_not_wait_for_the_first() {
    if let Some(calls) = calls_for_ten_orders(2).await {
        assert_eq!(calls, 3, "the first and second orders each at once, then the eight queued behind them");
    }
}
