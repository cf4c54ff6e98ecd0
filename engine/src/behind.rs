//! Campaign shards that came back **behind** MySQL: a failover to a replica that had
//! not received the last writes leaves a shard with its data of a moment ago, while the
//! relay may already have passed the newer orders on to MySQL. Such a shard would sell
//! again the units of the orders it forgot, and answer a retry of one of them with a
//! second order.
//!
//! The relay records the newest stream id it takes, per stream, in MySQL before
//! publishing (`ledger::relayed`). Only the relay's reads move its consumer group's
//! position (`last-delivered-id`), and a read always comes before its record, so a
//! shard whose group position is older than the recorded id lost reads Redis had
//! acknowledged: it is behind, however much it was written to since (a stream's last
//! id would not tell: new entries take new ids). The relay checks this before each
//! read, so it never moves a behind shard's position past the evidence, and the
//! sync-worker's check finds it within a second. It then holds the shard (`restoring`:
//! 503 on every path, its data kept), gives the persister a moment for what is on its
//! way, applies the orders of the shard's outbox that MySQL lacks (each alone: one that
//! no longer fits, because it sold a unit MySQL had already given to an order the shard
//! forgot, is dropped from the shard, logged and counted), clears that outbox and
//! rebuilds the shard as a lost one (`rebuild.rs`), its stream and group raised to the
//! recorded id.

use std::fmt;

use common::message::{OrderEvent, OrderMessage};
use deadpool_redis::redis::{self, Value};

use crate::domain::{CampaignId, IdempotencyKey, OrderId, UserId};
use crate::error::{EngineError, Result};
use crate::outbox::{DOC_FIELDS, RELAY_GROUP};
use crate::rebuild::REBUILD_LEASE_MS;
use crate::scripts::restore::{self as script, Lease, Step};
use crate::store::StockStore;

/// A stream entry id (`<ms>-<seq>`), ordered as Redis orders them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One outbox entry: its stream id and the order events it carries.
#[derive(Debug, Clone)]
pub struct OutboxEvents {
    pub id: String,
    pub events: Vec<OrderEvent>,
}

/// A stream entry as `XRANGE` returns it: its id and its field-value pairs.
type RawEntry = (String, Vec<(String, String)>);

/// A flat RESP2 pair list or a RESP3 map, as pairs.
fn pairs(v: Value) -> Vec<(String, Value)> {
    let raw: Vec<(Value, Value)> = match v {
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            let mut it = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        _ => Vec::new(),
    };
    raw.into_iter().filter_map(|(k, v)| Some((redis::from_redis_value::<String>(k).ok()?, v))).collect()
}

/// The `last-generated-id` of an `XINFO STREAM` reply.
fn last_generated(v: Value) -> Option<StreamId> {
    let (_, id) = pairs(v).into_iter().find(|(k, _)| k == "last-generated-id")?;
    StreamId::parse(&redis::from_redis_value::<String>(id).ok()?)
}

/// The relay group's `last-delivered-id` in an `XINFO GROUPS` reply (`None`: no such
/// group).
fn relay_position(v: Value) -> Option<StreamId> {
    let Value::Array(groups) = v else { return None };
    groups.into_iter().find_map(|g| {
        let fields = pairs(g);
        let name = fields.iter().find(|(k, _)| k == "name")?;
        if redis::from_redis_value::<String>(name.1.clone()).ok()? != RELAY_GROUP {
            return None;
        }
        let (_, id) = fields.into_iter().find(|(k, _)| k == "last-delivered-id")?;
        StreamId::parse(&redis::from_redis_value::<String>(id).ok()?)
    })
}

impl StockStore {
    /// Each outbox stream's relay group position (`last-delivered-id`; `None`: no
    /// stream or no group), one result per stream. Only the relay's reads move it: a
    /// position older than the id the relay recorded means Redis lost reads it made,
    /// whatever was written since.
    pub(crate) async fn relay_positions(&self, tags: &[CampaignId]) -> Vec<Result<Option<StreamId>>> {
        self.xinfo_each(tags, "GROUPS")
            .await
            .into_iter()
            .map(|r| r.map(|v| v.and_then(relay_position)))
            .collect()
    }

    /// Each outbox stream's last generated id (`None`: no such stream), one result per
    /// stream.
    pub(crate) async fn stream_last_ids(&self, tags: &[CampaignId]) -> Vec<Result<Option<StreamId>>> {
        let no_id = || EngineError::Protocol("XINFO STREAM: no last-generated-id".into());
        let infos = self.xinfo_each(tags, "STREAM").await.into_iter();
        infos.map(|r| r.and_then(|v| v.map(|v| last_generated(v).ok_or_else(no_id)).transpose())).collect()
    }

    /// `XINFO <what>` of each outbox stream that exists (`None` where none does), one
    /// result per stream: a node that does not answer costs only its own.
    async fn xinfo_each(&self, tags: &[CampaignId], what: &str) -> Vec<Result<Option<Value>>> {
        let (k, link) = (self.parts().keys, self.parts().link);
        let exists = link
            .each_settled::<bool>(
                tags.iter().map(|t| redis::cmd("EXISTS").arg(k.outbox(t)).clone()).collect(),
            )
            .await;
        let present: Vec<usize> =
            (0..tags.len()).filter(|&i| matches!(exists.get(i), Some(Ok(true)))).collect();
        let infos = link
            .each_settled::<Value>(
                present
                    .iter()
                    .map(|&i| redis::cmd("XINFO").arg(what).arg(k.outbox(&tags[i])).clone())
                    .collect(),
            )
            .await;
        let mut out: Vec<Result<Option<Value>>> = exists.into_iter().map(|r| r.map(|_| None)).collect();
        for (i, info) in present.into_iter().zip(infos) {
            out[i] = info.map(Some);
        }
        out
    }

    /// Holds a live shard (`hold` in `restore.lua`): `Ok(true)` once it is ours, `false`
    /// when another rebuilder holds it or it has no meta (a lost shard, rebuilt as such).
    pub(crate) async fn hold(&self, tag: &CampaignId, token: &str) -> Result<bool> {
        let lease = Lease { token, ms: REBUILD_LEASE_MS };
        let s = &self.parts().scripts.restore;
        Ok(script::decode(self.run(script::hold(s, self.parts().keys, tag, lease), tag).await?)? == Step::Ok)
    }

    /// Drops this token's hold: the shard answers again as it was.
    pub(crate) async fn unhold(&self, tag: &CampaignId, token: &str) -> Result<()> {
        let s = &self.parts().scripts.restore;
        self.run(script::unhold(s, self.parts().keys, tag, token), tag).await.map(|_| ())
    }

    /// How many entries the shard's outbox holds, and its first `max` entries with their
    /// order events.
    pub(crate) async fn outbox_backlog(
        &self,
        tag: &CampaignId,
        max: usize,
    ) -> Result<(u64, Vec<OutboxEvents>)> {
        let key = self.parts().keys.outbox(tag);
        let (len, entries): (u64, Vec<RawEntry>) = self
            .parts()
            .link
            .call(|mut c| async move {
                redis::pipe()
                    .cmd("XLEN")
                    .arg(&key)
                    .cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let entries = entries
            .into_iter()
            .map(|(id, fields)| OutboxEvents {
                id,
                events: fields
                    .into_iter()
                    .filter(|(f, _)| DOC_FIELDS.contains(&f.as_str()))
                    .filter_map(|(_, doc)| OrderMessage::parse(doc.as_bytes()).ok())
                    .flatten()
                    .collect(),
            })
            .collect();
        Ok((len, entries))
    }

    /// Drops the given orders of a held shard: their hashes, idempotency records, places
    /// in the pending set and their users' counts (the rebuild writes back the counts of
    /// users MySQL knows).
    pub(crate) async fn forget_orders(&self, tag: &CampaignId, events: &[OrderEvent]) -> Result<()> {
        let k = self.parts().keys;
        let mut commands = Vec::new();
        for e in events {
            let (Ok(order), Ok(user)) = (OrderId::parse(&e.order_id), UserId::parse(&e.user_id)) else {
                continue;
            };
            commands.push(redis::cmd("DEL").arg(k.order_at(tag, &order)).clone());
            commands.push(redis::cmd("ZREM").arg(k.pending(tag)).arg(order.as_str()).clone());
            commands.push(redis::cmd("DEL").arg(k.user(tag, &user)).clone());
            if let Some(key) = e.idempotency_key.as_deref().and_then(|key| IdempotencyKey::parse(key).ok()) {
                commands.push(redis::cmd("DEL").arg(k.idempotency(tag, &user, &key)).clone());
            }
        }
        self.parts().link.each::<Value>(commands).await.map(|_| ())
    }

    /// Makes the shard's outbox stream and the relay's group exist, the stream's last id
    /// and the group's position at least `id`: a shard rebuilt after the relay recorded
    /// `id` is not behind, and its new entries come after it.
    pub(crate) async fn raise_stream_id(&self, tag: &CampaignId, id: StreamId) -> Result<()> {
        self.outbox_ensure_group(tag).await?;
        let key = self.parts().keys.outbox(tag);
        let last = self.stream_last_ids(std::slice::from_ref(tag)).await.pop().unwrap_or(Ok(None))?;
        if last.is_none_or(|last| last < id) {
            let key = key.clone();
            self.parts()
                .link
                .call(|mut c| async move {
                    redis::cmd("XSETID").arg(key).arg(id.to_string()).query_async::<()>(&mut c).await
                })
                .await?;
        }
        let position = self.relay_positions(std::slice::from_ref(tag)).await.pop().unwrap_or(Ok(None))?;
        if position.is_none_or(|p| p < id) {
            self.parts()
                .link
                .call(|mut c| async move {
                    redis::cmd("XGROUP")
                        .arg("SETID")
                        .arg(key)
                        .arg(RELAY_GROUP)
                        .arg(id.to_string())
                        .query_async::<()>(&mut c)
                        .await
                })
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_as_redis_orders_them() {
        let a = StreamId::parse("1700000000000-5").unwrap_or_default();
        let b = StreamId::parse("1700000000000-12").unwrap_or_default();
        let c = StreamId::parse("1700000000001-0").unwrap_or_default();
        assert!(a < b && b < c);
        assert_eq!(c.to_string(), "1700000000001-0");
        assert_eq!(StreamId::parse("12"), None);
        assert_eq!(StreamId::parse("a-1"), None);
    }

    #[test]
    fn the_last_generated_id_is_read_from_either_protocol() {
        let field = |k: &str| Value::BulkString(k.as_bytes().to_vec());
        let resp2 =
            Value::Array(vec![field("length"), Value::Int(0), field("last-generated-id"), field("5-3")]);
        assert_eq!(last_generated(resp2), Some(StreamId { ms: 5, seq: 3 }));
        let resp3 = Value::Map(vec![(field("last-generated-id"), field("7-0"))]);
        assert_eq!(last_generated(resp3), Some(StreamId { ms: 7, seq: 0 }));
        assert_eq!(last_generated(Value::Nil), None);
    }

    #[test]
    fn the_relay_groups_position_is_found_among_the_groups() {
        let field = |k: &str| Value::BulkString(k.as_bytes().to_vec());
        let group = |name: &str, id: &str| {
            Value::Array(vec![
                field("name"),
                field(name),
                field("pending"),
                Value::Int(0),
                field("last-delivered-id"),
                field(id),
            ])
        };
        let reply = Value::Array(vec![group("other", "9-9"), group(RELAY_GROUP, "4-2")]);
        assert_eq!(relay_position(reply), Some(StreamId { ms: 4, seq: 2 }));
        assert_eq!(relay_position(Value::Array(vec![group("other", "9-9")])), None);
    }
}
