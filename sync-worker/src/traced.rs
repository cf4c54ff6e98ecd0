//! The worker's spans of sampled orders (API.md, "Tracing"): an order whose request
//! was sampled carries its `traceparent` in its outbox event, and each step that handles
//! it adds a span to that trace (the relay's publish, the persister's transaction). A
//! batch is one more span, a child of its first sampled order, linking every sampled
//! order it holds. Nothing is made while traces are not exported, or for a batch with no
//! sampled order (the common case: one order in a hundred by default).

use common::telemetry::{add_link, on, sampled, set_parent, TARGET};
use tracing::Span;

/// A batch's span and one span per sampled order in it: they end when this is dropped.
pub(crate) struct Spans {
    pub(crate) batch: Span,
    _orders: Vec<Span>,
}

impl Spans {
    fn new(batch: Span, order: impl Fn() -> Span, traces: &[&str]) -> Self {
        if let Some(first) = traces.first() {
            set_parent(&batch, first);
        }
        for t in traces {
            add_link(&batch, t);
        }
        let orders = traces
            .iter()
            .map(|t| {
                let span = order();
                set_parent(&span, t);
                span
            })
            .collect();
        Self { batch, _orders: orders }
    }
}

/// The spans of one published message (its body's sampled orders: `traces`).
pub(crate) fn relaying(traces: &[&str]) -> Option<Spans> {
    (on() && !traces.is_empty()).then(|| {
        let batch = tracing::info_span!(target: TARGET, "publish orders", otel.kind = "producer",
            messaging.system = "rabbitmq", messaging.batch.message_count = traces.len());
        Spans::new(
            batch,
            || tracing::info_span!(target: TARGET, "relay order", otel.kind = "producer"),
            traces,
        )
    })
}

/// The spans of one persister transaction (its events' sampled orders: `traces`).
pub(crate) fn persisting(traces: &[&str]) -> Option<Spans> {
    (on() && !traces.is_empty()).then(|| {
        let batch = tracing::info_span!(target: TARGET, "persist orders", otel.kind = "consumer",
            db.system.name = "mysql", orders = traces.len());
        Spans::new(
            batch,
            || tracing::info_span!(target: TARGET, "persist order", otel.kind = "consumer"),
            traces,
        )
    })
}

/// The `traceparent`s of a message body's events, as the scripts write them
/// (`"trace":"00-…"`), that this process's sampler takes; empty while traces are not
/// exported.
pub(crate) fn traces_in(body: &str) -> Vec<&str> {
    if on() {
        taken(traces_of(body))
    } else {
        Vec::new()
    }
}

/// The `traceparent`s the events carry that this process's sampler takes; empty while
/// traces are not exported.
pub(crate) fn traces_of_events(events: &[common::message::OrderEvent]) -> Vec<&str> {
    if on() {
        taken(events.iter().filter_map(|e| e.trace.as_deref()))
    } else {
        Vec::new()
    }
}

fn taken<'a>(traces: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    traces.into_iter().filter(|t| sampled(Some(t))).collect()
}

fn traces_of(body: &str) -> Vec<&str> {
    const FIELD: &str = "\"trace\":\"";
    let mut found = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find(FIELD) {
        rest = &rest[at + FIELD.len()..];
        let Some(end) = rest.find('"') else { break };
        found.push(&rest[..end]);
        rest = &rest[end..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bodys_traces_are_found_in_order() {
        let tp = |n: u8| format!("00-{:032x}-{:016x}-01", n, n);
        let body = format!(
            r#"{{"version":2,"events":[{{"order_id":"c.1","trace":"{}"}},{{"order_id":"c.2"}},{{"order_id":"c.3","idempotency_key":"k","trace":"{}"}}]}}"#,
            tp(1),
            tp(3)
        );
        assert_eq!(traces_of(&body), vec![tp(1), tp(3)]);
        assert!(traces_of(r#"{"version":2,"events":[{"order_id":"c.1"}]}"#).is_empty());
        // A version 3 row carries its trace in a trailing object.
        let rows = format!(
            r#"{{"version":3,"reserved":[["c.1","u","k","a:1:1",1,1,2,1,{{"trace":"{}"}}],["c.2","u","k","a:1:1",1,1,2,1]]}}"#,
            tp(2)
        );
        assert_eq!(traces_of(&rows), vec![tp(2)]);
        assert!(traces_of(r#"{"trace":"unterminated"#).is_empty());
        // Traces are not exported in unit tests: nothing is looked for.
        assert!(traces_in(&body).is_empty());
    }
}
