//! Criterion bench of the persister's decode of one order message: a version 2 body of
//! 64 events (what one relay round of a busy shard joins), decoded by
//! `OrderMessage::parse` (each event straight into its struct) and, in the same run,
//! by an untagged enum of the two versions (what the persister did before: serde
//! buffers the whole body as a JSON tree, then decodes the tree); and the same 64
//! reservations as a version 3 body (compact rows, what the reservation script writes
//! now). The two bodies' sizes are printed first.
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

/// The reservation's row as `lua/reserve.lua` writes it.
fn row(e: &OrderEvent) -> String {
    format!(
        r#"[{},{},{},"{}",{},{},{},{}]"#,
        serde_json::to_string(&e.order_id).unwrap(),
        serde_json::to_string(&e.user_id).unwrap(),
        serde_json::to_string(&e.idempotency_key).unwrap(),
        common::message::encode_lines(&e.items),
        e.total_cents,
        e.created_ms,
        e.expires_ms,
        e.payment_window_secs
    )
}

fn benches(c: &mut Criterion) {
    let events: Vec<OrderEvent> = (0..64).map(event).collect();
    let body = serde_json::to_vec(&OrderMessage::Batch { version: 2, events: events.clone() }).unwrap();
    let rows: Vec<String> = events.iter().map(row).collect();
    let compact = format!(r#"{{"version":3,"reserved":[{}]}}"#, rows.join(","));
    assert_eq!(OrderMessage::parse(compact.as_bytes()).unwrap(), events);
    eprintln!("64 reservations: version 2 body {} bytes, version 3 body {} bytes", body.len(), compact.len());
    let mut g = c.benchmark_group("message");
    g.throughput(Throughput::Elements(64));
    g.bench_function("parse_64_events", |b| {
        b.iter(|| OrderMessage::parse(std::hint::black_box(&body)).unwrap())
    });
    g.bench_function("parse_64_rows", |b| {
        b.iter(|| OrderMessage::parse(std::hint::black_box(compact.as_bytes())).unwrap())
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
