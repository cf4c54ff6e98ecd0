//! Criterion benches of the gateway's whole router in one process, without sockets: what
//! a request costs the gateway besides HTTP parsing and the network (the guard, the
//! token, the body, the engine's local answer, the metrics, the answer's body).
//!
//! - `router/sold_out`: a storefront order for a sold-out sku, answered from the local
//!   cache (409 `sold_out`), with one of 20,000 buyers' tokens per request (as the load
//!   runner sends them);
//! - `router/constant`: the constant ceiling's handler (`loadtest/src/bin/ceiling.rs`)
//!   in a bare router, given the same requests: the floor any route pays here.
//!
//! The difference of the two is the gateway's own work per sold-out answer.
//! Needs Redis and MariaDB (as the test suite does). Run:
//! `cargo bench -p flashsale-benches --bench router`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use common::config::ExposeSecret;
use criterion::{criterion_group, criterion_main, Criterion};
use engine::domain::{CampaignId, SkuId};
use tower::Service;

/// The gateway binary's allocator: the router's cost depends on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USERS: usize = 20_000;
const BODY: &str = r#"{"items":[{"sku_id":"sku0","quantity":1}]}"#;

fn request(path: &str, token: &str, n: u64) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("idempotency-key", format!("bench-{n}"))
        .body(Body::from(BODY))
        .unwrap()
}

async fn constant(_body: Bytes) -> impl IntoResponse {
    (
        StatusCode::CONFLICT,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":{"code":"sold_out","message":"sku sku is sold out"}}"#,
    )
}

/// `iters` requests through `app`, one after another, each answered `expect`.
async fn drive<S>(app: &S, path: &str, tokens: &[String], iters: u64, expect: StatusCode) -> Duration
where
    S: Service<Request<Body>, Response = axum::response::Response, Error = std::convert::Infallible> + Clone,
{
    let started = Instant::now();
    for n in 0..iters {
        let token = &tokens[(n as usize).wrapping_mul(7919) % tokens.len()];
        let mut app = app.clone();
        std::future::poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut app, cx)).await.unwrap();
        let res = Service::<Request<Body>>::call(&mut app, request(path, token, n)).await.unwrap();
        assert_eq!(res.status(), expect);
    }
    started.elapsed()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let settings = testkit::isolate("benchrouter");
    let secret = settings.auth.jwt_secret.expose_secret().to_owned();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let tokens: Vec<String> = (0..USERS)
        .map(|i| testkit::token(&secret, &serde_json::json!({"sub": format!("u{i}"), "exp": exp})))
        .collect();
    let state = rt.block_on(async {
        let state = gateway::state::AppState::connect(settings.clone()).await.expect("Redis and MariaDB");
        let now = engine::clock::now_ms();
        let spec = flashsale_benches::one_sku_campaign(
            CampaignId::parse("gone").unwrap(),
            SkuId::parse("sku0").unwrap(),
            0,
            (now - 1000, now + 7_200_000),
            1,
        );
        state.engine.launch(&spec).await.expect("launch");
        flashsale_benches::until_cache_live(&state.engine, Duration::from_secs(5)).await;
        state
    });
    // What the gateway serves: the order POST ahead of the router.
    let gateway = gateway::server::app(state);
    let ceiling = Router::new().fallback(constant);
    let path = "/api/v1/campaigns/gone/orders";
    // The first answer from Redis marks the sku sold out; every later one is local.
    rt.block_on(drive(&gateway, path, &tokens, 2, StatusCode::CONFLICT));

    let mut g = c.benchmark_group("router");
    g.bench_function("sold_out", |b| {
        b.iter_custom(|iters| rt.block_on(drive(&gateway, path, &tokens, iters, StatusCode::CONFLICT)))
    });
    g.bench_function("constant", |b| {
        b.iter_custom(|iters| rt.block_on(drive(&ceiling, path, &tokens, iters, StatusCode::CONFLICT)))
    });
    g.finish();
    rt.block_on(testkit::cleanup(&settings));
}

criterion_group!(router, benches);
criterion_main!(router);
