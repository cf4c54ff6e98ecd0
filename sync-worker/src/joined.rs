//! Outbox entries joined into AMQP messages: every event of several entries of one
//! stream in one body, so the broker, the confirms and the persister pay per message
//! for many script calls' orders. A campaign of N shards has N outboxes and smaller
//! entries; joining wins that back.
//!
//! The bodies are joined as text: the scripts write a reservation entry as
//! `{"version":3,"reserved":[...]}` (compact rows), any other version 2 entry as
//! `{"version":2,"events":[...]}` and a version 1 entry as one event object. A message
//! is version 3 (`{"version":3,"events":[...],"reserved":[...]}`) when it carries rows,
//! version 2 otherwise. Every entry is checked to be well-formed JSON first; one that
//! is not, or has another shape, is sent alone, as before, so a bad entry can only ever
//! dead-letter itself.

use engine::outbox::OutboxEntry;

/// Largest joined body: well under RabbitMQ's frame and message limits, and a
/// persister transaction stays bounded by events anyway.
pub const MESSAGE_BYTES_MAX: usize = 256 * 1024;

const V2_HEAD: &str = "{\"version\":2,\"events\":[";
const V3_HEAD: &str = "{\"version\":3,\"reserved\":[";
const TAIL: &str = "]}";

/// One message to publish: its body and the outbox entry ids it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub body: String,
    pub ids: Vec<String>,
}

/// What is gathered for the next message.
#[derive(Default)]
struct Gathered<'a> {
    events: Vec<&'a str>,
    rows: Vec<&'a str>,
    ids: Vec<String>,
    bytes: usize,
}

impl<'a> Gathered<'a> {
    /// Adds a well-formed entry's list (nothing when it is empty).
    fn add(&mut self, inner: Inner<'a>) {
        let (list, to) = match inner {
            Inner::Events(list) => (list, &mut self.events),
            Inner::Rows(list) => (list, &mut self.rows),
        };
        if !list.is_empty() {
            to.push(list);
            self.bytes += list.len() + 1;
        }
    }

    fn flush(&mut self, out: &mut Vec<Joined>) {
        if self.ids.is_empty() {
            return;
        }
        let events = self.events.join(",");
        let body = if self.rows.is_empty() {
            format!("{V2_HEAD}{events}{TAIL}")
        } else {
            format!("{{\"version\":3,\"events\":[{events}],\"reserved\":[{}]}}", self.rows.join(","))
        };
        out.push(Joined { body, ids: std::mem::take(&mut self.ids) });
        self.events.clear();
        self.rows.clear();
        self.bytes = 0;
    }
}

/// The entries as messages, in stream order. Entries without a document are left out
/// (they stay pending; the caller logs them).
pub fn join(entries: &[OutboxEntry]) -> Vec<Joined> {
    let mut out: Vec<Joined> = Vec::new();
    let mut next = Gathered::default();
    for entry in entries {
        let Some(doc) = &entry.doc else { continue };
        let Some(inner) = inner_of(doc) else {
            next.flush(&mut out);
            out.push(Joined { body: doc.clone(), ids: vec![entry.id.clone()] });
            continue;
        };
        let (Inner::Events(list) | Inner::Rows(list)) = inner;
        if next.bytes + list.len() > MESSAGE_BYTES_MAX {
            next.flush(&mut out);
        }
        next.add(inner);
        next.ids.push(entry.id.clone());
    }
    next.flush(&mut out);
    out
}

/// An entry's top level, read only as far as joining needs: well-formed JSON, an
/// object, and its `version` (none: one event).
#[derive(serde::Deserialize)]
struct Shape {
    version: Option<u32>,
}

/// A well-formed entry's comma-separated list: events (a version 2 body's, or a
/// version 1 body, which is one event) or rows (a version 3 reservation entry).
enum Inner<'a> {
    Events(&'a str),
    Rows(&'a str),
}

/// The list of a well-formed entry in the scripts' exact form; `None` for anything
/// else.
fn inner_of(doc: &str) -> Option<Inner<'_>> {
    // serde would also read a struct from a JSON list: only an object is an entry.
    if !doc.starts_with('{') {
        return None;
    }
    let shape: Shape = serde_json::from_str(doc).ok()?;
    match shape.version {
        Some(2) => doc.strip_prefix(V2_HEAD).and_then(|d| d.strip_suffix(TAIL)).map(Inner::Events),
        Some(3) => doc.strip_prefix(V3_HEAD).and_then(|d| d.strip_suffix(TAIL)).map(Inner::Rows),
        Some(_) => None,
        None => Some(Inner::Events(doc)),
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
        format!("{V2_HEAD}{}{TAIL}", events.join(","))
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
            assert!(j.body.len() <= MESSAGE_BYTES_MAX + V2_HEAD.len() + TAIL.len(), "{}", j.body.len());
            assert_eq!(OrderMessage::parse(j.body.as_bytes()).unwrap().len(), 300 * j.ids.len());
        }
        let empty = join(&[entry("1-0", Some(&format!("{V2_HEAD}{TAIL}")))]);
        assert_eq!((empty.len(), OrderMessage::parse(empty[0].body.as_bytes()).unwrap().len()), (1, 0));
    }

    fn v3(orders: &[&str]) -> String {
        let rows: Vec<String> = orders
            .iter()
            .map(|o| format!(r#"["c.0193a0b1c2d38{o:0>19}","u","k","a:1:5",5,1,2,1]"#))
            .collect();
        format!("{V3_HEAD}{}{TAIL}", rows.join(","))
    }

    #[test]
    fn reservation_rows_and_whole_events_become_one_version_3_message() {
        let entries = vec![
            entry("1-0", Some(&v3(&["1", "2"]))),
            entry("2-0", Some(&v2(&["a"]))),
            entry("3-0", Some(&event("b"))),
            entry("4-0", Some(&v3(&[]))),
            entry("5-0", Some(&v3(&["3"]))),
        ];
        let joined = join(&entries);
        assert_eq!(joined.len(), 1);
        assert_eq!(joined[0].ids, vec!["1-0", "2-0", "3-0", "4-0", "5-0"]);
        assert!(joined[0].body.starts_with(r#"{"version":3,"events":[{"#), "{}", joined[0].body);
        let ids: Vec<String> =
            OrderMessage::parse(joined[0].body.as_bytes()).unwrap().into_iter().map(|e| e.order_id).collect();
        let row = |o: &str| format!("c.0193a0b1c2d38{o:0>19}");
        assert_eq!(ids, vec!["c.a".into(), "c.b".into(), row("1"), row("2"), row("3")]);
        // Without rows, a message stays version 2.
        assert!(join(&entries[1..3])[0].body.starts_with(V2_HEAD));
        // A version 3 entry of another shape, or of an unknown version, travels alone.
        let odd = [r#"{"version":3,"events":[]}"#, r#"{"version":4,"reserved":[]}"#];
        let joined =
            join(&[entry("1-0", Some(&v3(&["1"]))), entry("2-0", Some(odd[0])), entry("3-0", Some(odd[1]))]);
        assert_eq!(joined.iter().map(|j| j.body.as_str()).skip(1).collect::<Vec<_>>(), odd);
    }
}
