//! Criterion bench of the persister's decode of one order message: a version 2 body of
//! 64 events (what one relay round of a busy shard joins), decoded by
//! `OrderMessage::parse` (each event straight into its struct) and, in the same run,
//! by an untagged enum of the two versions (what the persister did before: serde
//! buffers the whole body as a JSON tree, then decodes the tree).
//!
//! Run: `cargo bench --workspace --bench message`.
#![allow(clippy::unwrap_used)]

use common::message::{OrderEvent, OrderItem, OrderMessage, OrderStatus};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::Deserialize;

/// The decode the persister used before: tried as each version through a JSON tree.
#[derive(Deserialize)]
#[serde(untagged)]
enum Untagged {
    Batch {
        #[allow(dead_code)]
        version: u32,
        events: Vec<OrderEvent>,
    },
    Single(OrderEvent),
}

fn event(n: u64) -> OrderEvent {
    OrderEvent {
        order_id: format!("spring.{n:032x}"),
        campaign_id: "spring".into(),
        user_id: format!("user-{n}"),
        status: OrderStatus::PendingPayment,
        items: vec![OrderItem { sku_id: "phone".into(), quantity: 1, price_cents: 19_900 }],
        total_cents: 19_900,
        created_ms: 1_764_000_000_000,
        expires_ms: 1_764_000_900_000,
        paid_ms: 0,
        payment_window_secs: 900,
        event_ms: 1_764_000_000_000,
        idempotency_key: Some(format!("key-{n}")),
        payment_event: None,
        trace: None,
    }
}

fn benches(c: &mut Criterion) {
    let body = serde_json::to_vec(&OrderMessage::Batch { version: 2, events: (0..64).map(event).collect() })
        .unwrap();
    let mut g = c.benchmark_group("message");
    g.throughput(Throughput::Elements(64));
    g.bench_function("parse_64_events", |b| {
        b.iter(|| OrderMessage::parse(std::hint::black_box(&body)).unwrap())
    });
    g.bench_function("untagged_64_events", |b| {
        b.iter(|| match serde_json::from_slice::<Untagged>(std::hint::black_box(&body)).unwrap() {
            Untagged::Batch { events, .. } => events,
            Untagged::Single(e) => vec![e],
        })
    });
    g.finish();
}

criterion_group!(message, benches);
criterion_main!(message);
