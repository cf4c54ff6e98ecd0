//! The outbox protocol and the campaign-wide reads the sync-worker's loops make:
//! consumer-group reads of a campaign's outbox stream, acknowledgement, and the
//! pipelined look-ups that let an idle worker cost almost nothing (one round trip for
//! many streams' outbox lengths or next payment deadlines, not one per stream).
//! Also retirement ([`StockStore::retire_orders`], [`StockStore::retire_finish`]): a
//! finished campaign's per-order data leaves Redis once MySQL holds all of it, a page
//! at a time (rebuilding lost shards is `rebuild.rs`).

use deadpool_redis::redis::{self, streams::StreamAutoClaimReply, streams::StreamReadReply, Value};

use crate::domain::{CampaignId, OrderId, UserId};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;
use crate::shards::ShardMap;
use crate::store::StockStore;

/// The consumer group every relay reads campaign outboxes through.
pub const RELAY_GROUP: &str = "relay";
/// The field of an outbox entry that carries its order message: `orders` (version 3 or
/// 2, every order of one script call), or `order` (version 1), in that order of
/// preference.
pub(crate) const DOC_FIELDS: [&str; 2] = ["orders", "order"];
/// Entries a shard's `outbox-dead` stream keeps at most (the oldest leave first).
const OUTBOX_DEAD_MAX: usize = 10_000;
/// Keys named by one delete at most.
const PIPELINE_MAX: usize = 500;

/// What the notice stream tells the relays (an `outbox <c>` notice, or a gap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkSignal {
    /// This outbox stream has entries again: a campaign's, or a shard's (its tag).
    Outbox(CampaignId),
    /// The notice stream was interrupted: notices may have been lost, look at every
    /// campaign.
    Resync,
}

/// One outbox entry: its stream id and the order message it carries (published as is).
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub id: String,
    /// `None` for a malformed entry (left pending, never published).
    pub doc: Option<String>,
}

impl StockStore {
    /// Creates the relay group on a campaign's outbox (and the stream), if missing.
    pub async fn outbox_ensure_group(&self, campaign: &CampaignId) -> Result<()> {
        let key = self.parts().keys.outbox(campaign);
        let created = self
            .parts()
            .link
            .call(|mut c| async move {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(key)
                    .arg(RELAY_GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        match created {
            Err(EngineError::Unavailable(msg)) if msg.contains("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Up to `max` entries for `consumer`: first those another consumer left pending
    /// for over `claim_idle_ms` (it died), then new ones.
    pub async fn outbox_take(
        &self,
        campaign: &CampaignId,
        consumer: &str,
        claim_idle_ms: u64,
        max: usize,
    ) -> Result<Vec<OutboxEntry>> {
        let key = self.parts().keys.outbox(campaign);
        let (k, me) = (key.clone(), consumer.to_owned());
        // Both reads are acknowledged by the replicas (`redis.replica_acks`): the read is
        // itself a write, so once replicas hold it they hold every entry it returned,
        // and MySQL never learns of an order a failover could still drop. Entries read
        // but not acknowledged stay pending and are claimed again.
        let slot = crate::keys::hash_slot(&key);
        let claimed: StreamAutoClaimReply = self
            .parts()
            .link
            .call_acked(slot, |mut c| async move {
                redis::cmd("XAUTOCLAIM")
                    .arg(k)
                    .arg(RELAY_GROUP)
                    .arg(me)
                    .arg(claim_idle_ms)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut entries = claimed.claimed;
        if entries.len() < max {
            let (me, n) = (consumer.to_owned(), max - entries.len());
            let fresh: Option<StreamReadReply> = self
                .parts()
                .link
                .call_acked(slot, |mut c| async move {
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(RELAY_GROUP)
                        .arg(me)
                        .arg("COUNT")
                        .arg(n)
                        .arg("STREAMS")
                        .arg(key)
                        .arg(">")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            entries.extend(fresh.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids));
        }
        Ok(entries
            .into_iter()
            .map(|e| OutboxEntry { doc: DOC_FIELDS.iter().find_map(|f| e.get::<String>(f)), id: e.id })
            .collect())
    }

    /// Moves entries that carry no order (nothing a consumer could read) out of the
    /// outbox into the shard's `outbox-dead` stream (kept, with the id they had), and
    /// acknowledges them: a malformed entry never stays pending, keeping its stream in
    /// the relay's work and its campaign from retiring.
    pub async fn outbox_set_aside(&self, campaign: &CampaignId, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let k = self.parts().keys;
        let (outbox, dead) = (k.outbox(campaign), k.outbox_dead(campaign));
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XADD")
                .arg(&dead)
                .arg("MAXLEN")
                .arg("~")
                .arg(OUTBOX_DEAD_MAX)
                .arg("*")
                .arg("id")
                .arg(id)
                .ignore();
        }
        pipe.cmd("XACK").arg(&outbox).arg(RELAY_GROUP).arg(ids).ignore();
        pipe.cmd("XDEL").arg(&outbox).arg(ids).ignore();
        self.parts().link.call(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await
    }

    /// Acknowledges and deletes relayed entries; returns the entries left in the stream.
    pub async fn outbox_ack(&self, campaign: &CampaignId, ids: &[String]) -> Result<u64> {
        let key = self.parts().keys.outbox(campaign);
        let mut pipe = redis::pipe();
        if !ids.is_empty() {
            pipe.cmd("XACK").arg(&key).arg(RELAY_GROUP).arg(ids).ignore();
            pipe.cmd("XDEL").arg(&key).arg(ids).ignore();
        }
        pipe.cmd("XLEN").arg(&key);
        let (left,): (u64,) =
            self.parts().link.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        Ok(left)
    }

    /// Every campaign in the index.
    pub async fn campaign_ids(&self) -> Result<Vec<CampaignId>> {
        let key = self.parts().keys.campaigns();
        let ids: Vec<String> = self
            .parts()
            .link
            .call(|mut c| async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await })
            .await?;
        Ok(ids.iter().filter_map(|s| CampaignId::parse(s).ok()).collect())
    }

    /// Each campaign's outbox length.
    pub async fn outbox_lengths(&self, campaigns: &[CampaignId]) -> Result<Vec<u64>> {
        self.per_campaign(campaigns, |k, c| redis::cmd("XLEN").arg(k.outbox(c)).clone()).await
    }

    /// Each campaign's earliest pending payment deadline (`None`: nothing pending).
    pub async fn next_deadlines(&self, campaigns: &[CampaignId]) -> Result<Vec<Option<i64>>> {
        let rows = self.deadlines(campaigns, crate::clock::now_ms(), 0).await?;
        Ok(rows.into_iter().map(|(next, _)| next).collect())
    }

    /// Whether Redis holds these campaigns (their meta).
    pub async fn campaigns_present(&self, campaigns: &[CampaignId]) -> Result<Vec<bool>> {
        self.per_campaign(campaigns, |k, c| redis::cmd("EXISTS").arg(k.meta(c)).clone()).await
    }

    /// One command per campaign, pipelined ([`crate::link::RedisLink::each`]).
    async fn per_campaign<T: redis::FromRedisValue>(
        &self,
        campaigns: &[CampaignId],
        command: impl Fn(&KeySpace, &CampaignId) -> redis::Cmd,
    ) -> Result<Vec<T>> {
        let commands = campaigns.iter().map(|c| command(self.parts().keys, c)).collect();
        self.parts().link.each(commands).await
    }

    /// Drops one page of a finished campaign's orders from Redis (each in its shard);
    /// [`StockStore::retire_finish`] follows once every page is gone. The caller makes
    /// sure MySQL holds everything first.
    pub async fn retire_orders(&self, map: &ShardMap, orders: &[OrderId]) -> Result<()> {
        let k = &self.parts().keys;
        for (shard, tag) in map.tags().iter().enumerate() {
            let doomed: Vec<String> =
                orders.iter().filter(|o| map.of_order(o) == shard).map(|o| k.order_at(tag, o)).collect();
            self.unlink(doomed).await?;
        }
        Ok(())
    }

    /// The rest of a finished campaign's per-order data (user counts, buyers, pending
    /// set, outbox, rate, received moves), a bounded page of buyers at a time, then the
    /// campaign leaves the index. Its meta and stock stay, so the campaign still answers
    /// "ended" and its counters still show.
    pub async fn retire_finish(&self, campaign: &CampaignId, map: &ShardMap) -> Result<()> {
        let k = &self.parts().keys;
        for tag in map.tags() {
            let mut cursor = 0u64;
            loop {
                let key = k.buyers(tag);
                let (next, buyers): (u64, Vec<String>) = self
                    .parts()
                    .link
                    .call(|mut c| async move {
                        redis::cmd("SSCAN")
                            .arg(key)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(PIPELINE_MAX)
                            .query_async(&mut c)
                            .await
                    })
                    .await?;
                let users =
                    buyers.iter().filter_map(|b| UserId::parse(b).ok()).map(|u| k.user(tag, &u)).collect();
                self.unlink(users).await?;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            let rest = vec![
                k.pending(tag),
                k.deadlines(tag),
                k.outbox(tag),
                k.order_rate(tag),
                k.buyers(tag),
                k.users(tag),
                k.moves_in(tag),
            ];
            self.unlink(rest).await?;
        }
        // Two keys in two slots (the campaign's and the index's): two commands, the mark
        // first. A relist that put the campaign back meanwhile sees the mark after its
        // SADD and takes it off again (`relist`), so a retired campaign never stays listed.
        let mut retired = redis::cmd("HSET");
        retired.arg(k.meta(campaign)).arg("retired").arg(1);
        let _: Vec<Value> = self.parts().link.each(vec![retired]).await?;
        let mut unlisted = redis::cmd("SREM");
        unlisted.arg(k.campaigns()).arg(campaign.as_str());
        let _: Vec<Value> = self.parts().link.each(vec![unlisted]).await?;
        Ok(())
    }

    /// UNLINKs keys of one shard ([`PIPELINE_MAX`] per call: one slot per call).
    async fn unlink(&self, keys: Vec<String>) -> Result<()> {
        for chunk in keys.chunks(PIPELINE_MAX) {
            let chunk = chunk.to_vec();
            self.parts()
                .link
                .call(|mut c| async move { redis::cmd("UNLINK").arg(chunk).query_async::<()>(&mut c).await })
                .await?;
        }
        Ok(())
    }
}
