//! The local cache across processes sharing one Redis, and script-cache loss.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::domain::{ReleaseReason, ReserveOutcome};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_clears_the_sold_out_flag_on_every_process_within_a_second() {
    let ns = Ns::new();
    let a = ns.engine();
    let b = ns.engine();
    launch(&a, &open_campaign("c", &[("x", 1, 100)], 1)).await;
    until_live(&a).await;
    until_live(&b).await;

    let won = match b.reserve(&cid("c"), &user("w"), &key("k"), &lines(&[("x", 1)])).await.unwrap() {
        ReserveOutcome::Reserved(r) => r,
        other => panic!("{other:?}"),
    };
    // A's failed reservation sets its flag; A answers from its cache once it has heard
    // of the winner (at once on one Redis; on a cluster the buyer notice crosses the
    // cluster bus, so it may come a moment after the reply).
    let r = a.reserve(&cid("c"), &user("u1"), &key("k"), &lines(&[("x", 1)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::SoldOut(sku("x")));
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let local_before = a.stats().answered_locally;
        let redis_before = a.stats().sent_to_redis;
        let r = a.reserve(&cid("c"), &user("u2"), &key("k"), &lines(&[("x", 1)])).await.unwrap();
        assert_eq!(r, ReserveOutcome::SoldOut(sku("x")));
        if a.stats().answered_locally == local_before + 1 {
            assert_eq!(a.stats().sent_to_redis, redis_before);
            break;
        }
        assert!(Instant::now() < deadline, "sold out never answered from the local cache");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // B releases; A must sell the unit again within 1 s.
    b.release(&won.order_id, ReleaseReason::Cancelled).await.unwrap();
    let released_at = Instant::now();
    loop {
        let r = a.reserve(&cid("c"), &user("u3"), &key("k"), &lines(&[("x", 1)])).await.unwrap();
        match r {
            ReserveOutcome::Reserved(_) => break,
            ReserveOutcome::SoldOut(_) => {
                assert!(released_at.elapsed() < Duration::from_secs(1), "flag not cleared within 1 s");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    let elapsed = released_at.elapsed();
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_flush_in_the_middle_of_traffic_fails_no_request() {
    let ns = Ns::new();
    let e = ns.engine();
    launch(&e, &open_campaign("c", &[("x", 100_000, 100)], 1)).await;
    let ok = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let e = e.clone();
            let ok = Arc::clone(&ok);
            tokio::spawn(async move {
                for i in 0..150 {
                    let u = user(&format!("w{w}-{i}"));
                    let r = e.reserve(&cid("c"), &u, &key("k"), &lines(&[("x", 1)])).await;
                    match r {
                        Ok(ReserveOutcome::Reserved(_)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("request failed during SCRIPT FLUSH: {other:?}"),
                    }
                }
            })
        })
        .collect();
    let mut raw = ns.raw().await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw).await.unwrap();
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), 8 * 150);
}

/// A flush can land between the reload of a script and the call that uses it (another
/// test's flushes once failed a campaign launch that way): under a storm of flushes,
/// launches, reservations, releases and views all still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_script_flushes_fails_no_launch_reservation_or_release() {
    let ns = Ns::new();
    let e = ns.engine();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = {
        let stop = Arc::clone(&stop);
        let mut raw = ns.raw().await;
        tokio::spawn(async move {
            let mut flushes = 0u32;
            while !stop.load(Ordering::Relaxed) && flushes < 2_000 {
                let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw).await.unwrap();
                flushes += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            flushes
        })
    };
    for i in 0..120 {
        let c = format!("storm{i}");
        launch(&e, &open_campaign(&c, &[("a", 5, 100)], 1)).await;
        let r = e.reserve(&cid(&c), &user("u"), &key("k"), &lines(&[("a", 1)])).await.unwrap();
        let ReserveOutcome::Reserved(r) = r else { panic!("{r:?}") };
        e.release(&r.order_id, ReleaseReason::Cancelled).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(storm.await.unwrap() > 10, "the storm flushed too little to mean anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_launched_elsewhere_is_seen_and_tuning_reaches_others_within_a_second() {
    let ns = Ns::new();
    let a = ns.engine();
    let b = ns.engine();
    until_live(&b).await;
    // B looks first: unknown.
    let r = b.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("x", 1)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::CampaignNotFound);
    launch(&a, &open_campaign("c", &[("x", 10, 100)], 1)).await;
    let t0 = Instant::now();
    loop {
        match b.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("x", 1)])).await.unwrap() {
            ReserveOutcome::Reserved(_) => break,
            ReserveOutcome::CampaignNotFound if t0.elapsed() < Duration::from_secs(1) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => panic!("after {:?}: {other:?}", t0.elapsed()),
        }
    }
    // A ends the sale now; B stops selling within 1 s.
    let end =
        engine::campaign::CampaignTuning { ends_ms: Some(engine::clock::now_ms()), ..Default::default() };
    a.tune(&cid("c"), &end).await.unwrap();
    let t0 = Instant::now();
    loop {
        let meta = b.campaign(&cid("c")).await.unwrap().unwrap();
        if meta.ends_ms <= engine::clock::now_ms() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "tuning not seen within 1 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = b.reserve(&cid("c"), &user("v"), &key("k"), &lines(&[("x", 1)])).await.unwrap();
    assert_eq!(r, ReserveOutcome::NotActive);
}

/// Bounded growth: a process that reserved once in each of 300 campaigns holds no
/// coalescer lane for them once they are idle (a lane per campaign in use, not per
/// campaign ever seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_campaigns_leave_no_coalescer_lane_behind() {
    let ns = Ns::new();
    let e = ns.engine();
    for i in 0..300 {
        let spec = open_campaign(&format!("many{i}"), &[("a", 5, 100)], 1);
        launch(&e, &spec).await;
        let r =
            e.reserve(&cid(&format!("many{i}")), &user("u"), &key("k"), &lines(&[("a", 1)])).await.unwrap();
        assert!(matches!(r, engine::domain::ReserveOutcome::Reserved(_)), "{r:?}");
    }
    let started = std::time::Instant::now();
    while e.footprint().lanes > 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(3), "lanes left: {:?}", e.footprint());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let f = e.footprint();
    assert!(f.shard_maps <= f.cached_campaigns.max(1024), "{f:?}");
}

/// Notices on the broadcast channel of a namespace, as a classic subscriber hears them.
async fn broadcast_notices(ns: &Ns) -> Arc<std::sync::Mutex<Vec<String>>> {
    use futures_util::StreamExt;
    let node = ns.settings.redis.nodes().into_iter().next().unwrap();
    let mut pubsub = redis::Client::open(node).unwrap().get_async_pubsub().await.unwrap();
    pubsub.subscribe(ns.keys().notice_channel()).await.unwrap();
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&heard);
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(m) = messages.next().await {
            sink.lock().unwrap().push(m.get_payload::<String>().unwrap());
        }
    });
    heard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_notices_stay_in_their_slot_on_a_cluster_and_still_reach_every_process() {
    let ns = Ns::new();
    let cluster = !ns.settings.redis.cluster_seeds().is_empty();
    let heard = broadcast_notices(&ns).await;
    let a = ns.engine();
    let b = ns.engine();
    let mut spec = open_campaign("c", &[("x", 3, 100)], 1);
    spec.shards = 3;
    launch(&a, &spec).await;
    until_live(&a).await;
    until_live(&b).await;
    // A relay that watches the campaign hears of work on every shard's outbox.
    let watcher = ns.engine();
    watcher.watch_outbox_notices(&[cid("c")]);
    let mut work = watcher.work_signals();
    tokio::time::sleep(Duration::from_millis(500)).await;
    while work.try_recv().is_ok() {}

    let mut won = Vec::new();
    for u in ["w1", "w2", "w3"] {
        match b.reserve(&cid("c"), &user(u), &key("k"), &lines(&[("x", 1)])).await.unwrap() {
            ReserveOutcome::Reserved(r) => won.push(r),
            other => panic!("{other:?}"),
        }
    }
    let signal = tokio::time::timeout(Duration::from_secs(1), work.recv()).await;
    assert!(
        matches!(signal, Ok(Ok(engine::outbox::WorkSignal::Outbox(_)))),
        "no outbox notice reached the watching relay: {signal:?}"
    );
    // A hears every buyer (the buyer notices of each shard) and answers from its cache.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let local_before = a.stats().answered_locally;
        let r = a.reserve(&cid("c"), &user("u"), &key("k"), &lines(&[("x", 1)])).await.unwrap();
        assert_eq!(r, ReserveOutcome::SoldOut(sku("x")));
        if a.stats().answered_locally == local_before + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "sold out never answered from the local cache");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A restock on one shard reaches A within a second.
    b.release(&won[0].order_id, ReleaseReason::Cancelled).await.unwrap();
    let released_at = Instant::now();
    loop {
        match a.reserve(&cid("c"), &user("u2"), &key("k"), &lines(&[("x", 1)])).await.unwrap() {
            ReserveOutcome::Reserved(_) => break,
            ReserveOutcome::SoldOut(_) => {
                assert!(released_at.elapsed() < Duration::from_secs(1), "flag not cleared within 1 s");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heard = heard.lock().unwrap().clone();
    let shard_kinds = |n: &&String| ["buyers ", "restock ", "outbox "].iter().any(|k| n.starts_with(k));
    let broadcast: Vec<&String> = heard.iter().filter(shard_kinds).collect();
    if cluster {
        // Sharded: not one of them crossed the cluster to every node.
        assert!(broadcast.is_empty(), "shard notices broadcast on a cluster: {broadcast:?}");
        assert!(heard.iter().any(|n| n.starts_with("meta ")), "the launch's meta notice is still broadcast");
    } else {
        assert!(broadcast.len() >= 3, "one Redis: every notice on the one channel: {heard:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_together_for_an_uncached_campaign_load_its_buyers_once() {
    let ns = Ns::new();
    let a = ns.engine();
    launch(&a, &open_campaign("c", &[("x", 10_000, 100)], 1)).await;
    for i in 0..300 {
        let r =
            a.reserve(&cid("c"), &user(&format!("early{i}")), &key("k"), &lines(&[("x", 1)])).await.unwrap();
        assert!(matches!(r, ReserveOutcome::Reserved(_)), "{r:?}");
    }
    // A process started mid-sale: the campaign is not in its cache, and 64 requests
    // for it arrive at once.
    let b = ns.engine();
    until_live(&b).await;
    let before = b.stats().buyer_loads;
    let requests: Vec<_> = (0..64)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                b.reserve(&cid("c"), &user(&format!("late{i}")), &key("k"), &lines(&[("x", 1)]))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for r in requests {
        let r = r.await.unwrap();
        assert!(matches!(r, ReserveOutcome::Reserved(_)), "{r:?}");
    }
    // On a cluster the shard-notice listener reads the buyers once more, by design, as
    // soon as the campaign's shard channels are confirmed (`shard_notices.rs`,
    // `make_live`): that read lands before this count or after it.
    let loads = b.stats().buyer_loads - before;
    let cluster = !ns.settings.redis.cluster_seeds().is_empty();
    assert!(
        loads == 1 || (cluster && loads == 2),
        "the buyer set is read once (and once more for a cluster's notices), not once per request: {loads}"
    );
    // And the one load holds every buyer: an early buyer's retry reaches the script
    // (a replay), never a local answer.
    let replay = b.reserve(&cid("c"), &user("early7"), &key("k"), &lines(&[("x", 1)])).await.unwrap();
    assert!(matches!(replay, ReserveOutcome::Replayed(_)), "{replay:?}");
}
