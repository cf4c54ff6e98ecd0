//! Outbox entries joined into AMQP messages: every event of several entries of one
//! stream in one version 2 body, so the broker, the confirms and the persister pay per
//! message for many script calls' orders. A campaign of N shards has N outboxes and
//! smaller entries; joining wins that back.
//!
//! The bodies are joined as text: the scripts write a version 2 entry as
//! `{"version":2,"events":[...]}` and a version 1 entry as one event object. Every
//! entry is checked to be well-formed JSON first; one that is not is sent alone, as
//! before, so a bad entry can only ever dead-letter itself.

use engine::outbox::OutboxEntry;

/// Largest joined body: well under RabbitMQ's frame and message limits, and a
/// persister transaction stays bounded by events anyway.
pub const MESSAGE_BYTES_MAX: usize = 256 * 1024;

const V2_HEAD: &str = "{\"version\":2,\"events\":[";
const V2_TAIL: &str = "]}";

/// One message to publish: its body and the outbox entry ids it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub body: String,
    pub ids: Vec<String>,
}

/// The entries as messages, in stream order. Entries without a document are left out
/// (they stay pending; the caller logs them).
pub fn join(entries: &[OutboxEntry]) -> Vec<Joined> {
    let mut out: Vec<Joined> = Vec::new();
    let mut events: Vec<&str> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut bytes = 0;
    let flush = |events: &mut Vec<&str>, ids: &mut Vec<String>, bytes: &mut usize, out: &mut Vec<Joined>| {
        if !ids.is_empty() {
            let body = format!("{V2_HEAD}{}{V2_TAIL}", events.join(","));
            out.push(Joined { body, ids: std::mem::take(ids) });
            events.clear();
            *bytes = 0;
        }
    };
    for entry in entries {
        let Some(doc) = &entry.doc else { continue };
        let Some(inner) = events_of(doc) else {
            flush(&mut events, &mut ids, &mut bytes, &mut out);
            out.push(Joined { body: doc.clone(), ids: vec![entry.id.clone()] });
            continue;
        };
        if bytes + inner.len() > MESSAGE_BYTES_MAX {
            flush(&mut events, &mut ids, &mut bytes, &mut out);
        }
        if !inner.is_empty() {
            events.push(inner);
            bytes += inner.len() + 1;
        }
        ids.push(entry.id.clone());
    }
    flush(&mut events, &mut ids, &mut bytes, &mut out);
    out
}

/// An entry's top level, read only as far as joining needs: well-formed JSON, an
/// object, and whether it has a `version` (a version 2 body) or not (one event).
#[derive(serde::Deserialize)]
struct Shape {
    version: Option<serde::de::IgnoredAny>,
}

/// The comma-separated events of a well-formed entry (a version 2 body's list in the
/// scripts' exact form, or a version 1 body, which is one event); `None` for anything
/// else.
fn events_of(doc: &str) -> Option<&str> {
    // serde would also read a struct from a JSON list: only an object is an entry.
    if !doc.starts_with('{') {
        return None;
    }
    let shape: Shape = serde_json::from_str(doc).ok()?;
    match shape.version {
        Some(_) => doc.strip_prefix(V2_HEAD).and_then(|d| d.strip_suffix(V2_TAIL)),
        None => Some(doc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::message::OrderMessage;

    fn entry(id: &str, doc: Option<&str>) -> OutboxEntry {
        OutboxEntry { id: id.into(), doc: doc.map(str::to_owned) }
    }

    fn event(order: &str) -> String {
        format!(
            r#"{{"order_id":"c.{order}","campaign_id":"c","user_id":"u","status":"pending_payment","items":[{{"sku_id":"a","quantity":1,"price_cents":5}}],"total_cents":5,"created_ms":1,"expires_ms":2,"paid_ms":0,"payment_window_secs":1,"event_ms":1}}"#
        )
    }

    fn v2(orders: &[&str]) -> String {
        let events: Vec<String> = orders.iter().map(|o| event(o)).collect();
        format!("{V2_HEAD}{}{V2_TAIL}", events.join(","))
    }

    #[test]
    fn entries_of_both_versions_become_one_message_with_every_event_in_order() {
        let entries = vec![
            entry("1-0", Some(&v2(&["a", "b"]))),
            entry("2-0", Some(&event("c"))),
            entry("3-0", None),
            entry("4-0", Some(&v2(&["d"]))),
        ];
        let joined = join(&entries);
        assert_eq!(joined.len(), 1);
        assert_eq!(joined[0].ids, vec!["1-0", "2-0", "4-0"]);
        let events = OrderMessage::parse(joined[0].body.as_bytes()).unwrap();
        let ids: Vec<&str> = events.iter().map(|e| e.order_id.as_str()).collect();
        assert_eq!(ids, vec!["c.a", "c.b", "c.c", "c.d"]);
    }

    #[test]
    fn a_malformed_entry_travels_alone() {
        let entries = vec![
            entry("1-0", Some(&v2(&["a"]))),
            entry("2-0", Some("{\"version\":2,\"events\":[{")),
            entry("3-0", Some(&v2(&["b"]))),
        ];
        let joined = join(&entries);
        assert_eq!(joined.len(), 3);
        assert_eq!(joined[1].body, "{\"version\":2,\"events\":[{");
        assert!(OrderMessage::parse(joined[0].body.as_bytes()).is_ok());
        assert!(OrderMessage::parse(joined[2].body.as_bytes()).is_ok());
    }

    #[test]
    fn bodies_stay_under_the_size_bound() {
        let big = v2(&["x"; 300]);
        let entries: Vec<OutboxEntry> = (0..20).map(|i| entry(&format!("{i}-0"), Some(&big))).collect();
        let joined = join(&entries);
        assert!(joined.len() > 1);
        assert_eq!(joined.iter().map(|j| j.ids.len()).sum::<usize>(), 20);
        for j in &joined {
            assert!(j.body.len() <= MESSAGE_BYTES_MAX + V2_HEAD.len() + V2_TAIL.len(), "{}", j.body.len());
            assert_eq!(OrderMessage::parse(j.body.as_bytes()).unwrap().len(), 300 * j.ids.len());
        }
        let empty = join(&[entry("1-0", Some(&format!("{V2_HEAD}{V2_TAIL}")))]);
        assert_eq!((empty.len(), OrderMessage::parse(empty[0].body.as_bytes()).unwrap().len()), (1, 0));
    }
}
