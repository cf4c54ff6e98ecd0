//! Criterion benches of what the gateway does to an order request before the engine
//! sees it (no I/O):
//!
//! - `request/jwt_verify`: the storefront token (HS256 signature, `exp`, `sub`);
//! - `request/jwt_verify_remembered`: the same token again, from the verified-token memory;
//! - `request/parse_order_1_line`, `request/parse_order_16_lines`: path id,
//!   `Idempotency-Key` and JSON body checked against the contract (`parse_order`);
//!   storefronts' compact body, which a scanner reads without serde;
//! - `request/parse_order_1_line_spaced`: the one-line body with a space after its
//!   first colon, which serde reads (the scanner's saving is the difference);
//! - `request/reject_unknown_field`: a body the contract refuses (400), to show that a
//!   hostile body costs no more than a good one;
//! - `request/script_call_11_orders`: the `reserve.lua` call of a coalesced batch of 11
//!   one-line orders (a `ratios` run's mean), keys, arguments and the `EVALSHA` command
//!   as sent; criterion's "time" is per call.
//!
//! Run: `cargo bench -p flashsale-benches --bench request`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use axum::http::HeaderValue;
use criterion::{criterion_group, criterion_main, Criterion};
use engine::domain::{CampaignId, IdempotencyKey, OrderLines, UserId};
use gateway::auth::JwtVerifier;
use gateway::routes::orders::parse_order;

fn token(secret: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: "user-123456", exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn body(lines: usize) -> Vec<u8> {
    let items: Vec<String> =
        (0..lines).map(|i| format!(r#"{{"sku_id":"sku-{i:04}","quantity":{}}}"#, 1 + i % 3)).collect();
    format!(r#"{{"items":[{}]}}"#, items.join(",")).into_bytes()
}

fn benches(c: &mut Criterion) {
    let verifier = JwtVerifier::new("bench-secret", 60, 1000);
    let checks_all = JwtVerifier::new("bench-secret", 60, 0);
    let jwt = token("bench-secret");
    let key = HeaderValue::from_static("order-2027-03-01:abc.123");
    let key = Some(&key);
    let (one, sixteen) = (body(1), body(16));
    let hostile = br#"{"items":[{"sku_id":"a","quantity":1}],"price_cents":0}"#;

    let mut g = c.benchmark_group("request");
    g.bench_function("jwt_verify", |b| b.iter(|| checks_all.verify(black_box(&jwt)).unwrap()));
    g.bench_function("jwt_verify_remembered", |b| b.iter(|| verifier.verify(black_box(&jwt)).unwrap()));
    g.bench_function("parse_order_1_line", |b| {
        b.iter(|| parse_order(black_box("spring-sale".to_owned()), key, black_box(&one)).unwrap())
    });
    let spaced = String::from_utf8(one.clone()).unwrap().replacen(':', ": ", 1).into_bytes();
    g.bench_function("parse_order_1_line_spaced", |b| {
        b.iter(|| parse_order(black_box("spring-sale".to_owned()), key, black_box(&spaced)).unwrap())
    });
    g.bench_function("parse_order_16_lines", |b| {
        b.iter(|| parse_order(black_box("spring-sale".to_owned()), key, black_box(&sixteen)).unwrap())
    });
    g.bench_function("reject_unknown_field", |b| {
        b.iter(|| parse_order(black_box("spring-sale".to_owned()), key, black_box(hostile)).unwrap_err())
    });
    let (script, keys) = (engine::scripts::reserve::script(), engine::keys::KeySpace::new("fs"));
    let campaign = CampaignId::parse("spring-sale").unwrap();
    let (idem, lines) =
        (IdempotencyKey::parse("k-1").unwrap(), OrderLines::parse(vec![("sku-0001".into(), 1)]).unwrap());
    let derive = engine::order_ids::OrderIds::new(b"bench").unwrap();
    let users: Vec<UserId> = (0..11).map(|i| UserId::parse(&format!("user-{i:06}")).unwrap()).collect();
    let refs: Vec<_> = users.iter().map(|u| derive.derive(&campaign, 0, u, &idem)).collect();
    let batch: Vec<_> = users
        .iter()
        .zip(&refs)
        .map(|(user, order)| engine::scripts::reserve::Request {
            campaign: &campaign,
            tag: &campaign,
            order,
            user,
            key: &idem,
            lines: &lines,
            trace: None,
            idempotency_ttl_secs: 900,
            outbox_max_len: 1_000_000,
            idempotency_records: false,
            compact_events: true,
        })
        .collect();
    g.bench_function("script_call_11_orders", |b| {
        b.iter(|| engine::scripts::reserve::invocation(&script, &keys, black_box(&batch)).evalsha())
    });
    g.finish();
}

criterion_group! {
    name = request_benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = benches
}
criterion_main!(request_benches);
