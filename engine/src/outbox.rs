//! The outbox protocol and the campaign-wide reads the sync-worker's loops make:
//! consumer-group reads of a campaign's outbox stream, acknowledgement, and the
//! pipelined look-ups that let an idle worker cost almost nothing (one round trip for
//! many streams' outbox lengths or next payment deadlines, not one per stream).
//! Also the two whole-campaign operations: [`StockStore::restore`] (Redis lost the
//! campaign; MySQL's copy is loaded back) and [`StockStore::retire`] (a finished
//! campaign's per-order data leaves Redis once MySQL holds all of it).

use deadpool_redis::redis::{self, streams::StreamAutoClaimReply, streams::StreamReadReply, Value};

use crate::campaign::{CampaignSnapshot, RestoredStock};
use crate::domain::{CampaignId, OrderId, SkuId, UserId};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;
use crate::scripts;
use crate::shards::ShardMap;
use crate::store::StockStore;

/// The consumer group every relay reads campaign outboxes through.
pub const RELAY_GROUP: &str = "relay";
/// Keys named by one delete or one restore step of user counts at most.
const PIPELINE_MAX: usize = 500;
/// Orders written by one restore step at most.
const RESTORE_ORDERS_PER_CALL: usize = 200;

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
        let claimed: StreamAutoClaimReply = self
            .parts()
            .link
            .call(|mut c| async move {
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
                .call(|mut c| async move {
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
        // `orders`: a version 2 entry (every order of one script call); `order`: version 1.
        Ok(entries
            .into_iter()
            .map(|e| OutboxEntry {
                doc: e.get::<String>("orders").or_else(|| e.get::<String>("order")),
                id: e.id,
            })
            .collect())
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
        let rows: Vec<Vec<(String, i64)>> = self
            .per_campaign(campaigns, |k, c| {
                redis::cmd("ZRANGE").arg(k.pending(c)).arg(0).arg(0).arg("WITHSCORES").clone()
            })
            .await?;
        Ok(rows.into_iter().map(|r| r.first().map(|(_, score)| *score)).collect())
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

    /// Sets the marker whose disappearance says Redis lost its data; returns whether it
    /// was there already.
    pub async fn data_marker_present(&self) -> Result<bool> {
        let key = format!("{}:data-marker", self.parts().keys.namespace());
        let created: Option<String> =
            self.parts()
                .link
                .call(|mut c| async move {
                    redis::cmd("SET").arg(key).arg("1").arg("NX").query_async(&mut c).await
                })
                .await?;
        Ok(created.is_none())
    }

    /// Deletes the data marker, so the next check looks at every campaign again.
    pub async fn clear_data_marker(&self) -> Result<()> {
        let key = format!("{}:data-marker", self.parts().keys.namespace());
        self.parts()
            .link
            .call(|mut c| async move { redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await })
            .await
    }

    /// Loads a campaign Redis lost back from MySQL's copy (`restore.lua`, in steps;
    /// the campaign goes live in the last one: shard 0's `finish`). Returns `None` if
    /// the campaign exists in Redis after all, else what was loaded per sku (the
    /// campaign's sums). A sharded campaign gets each order back in its shard, each
    /// user's count in the user's home shard, and the available units split over the
    /// shards as at launch.
    pub async fn restore(
        &self,
        snap: &CampaignSnapshot,
        stock_generation: u64,
    ) -> Result<Option<RestoredStock>> {
        let (stock, _) = snap.tally()?;
        let spec = &snap.launch;
        let map = ShardMap::new(&spec.campaign, usize::from(spec.shards));
        if self.campaigns_present(std::slice::from_ref(&spec.campaign)).await?.first() == Some(&true) {
            return Ok(None);
        }
        self.clear_unfinished_restore(&map).await?;
        let (k, script) = (self.parts().keys, &self.parts().scripts.restore);
        self.list_campaign(&spec.campaign).await?;
        for shard in (0..map.len()).rev() {
            let tag = map.tag(shard);
            let part = CampaignSnapshot {
                launch: spec.clone(),
                orders: snap.orders.iter().filter(|o| map.of_order(&o.order_id) == shard).cloned().collect(),
            };
            let (held, users) = part.tally()?;
            let mut ran = true;
            for chunk in part.orders.chunks(RESTORE_ORDERS_PER_CALL) {
                ran &= self.restore_step(scripts::restore::orders(script, k, (spec, tag), chunk)?).await?;
            }
            let users: Vec<(&UserId, u64)> = users.into_iter().collect();
            for chunk in users.chunks(PIPELINE_MAX) {
                ran &= self.restore_step(scripts::restore::users(script, k, tag, chunk)).await?;
            }
            let levels = |sku: &SkuId| {
                let (_, resv, sold) = held.get(sku).copied().unwrap_or((0, 0, 0));
                let avail = stock.get(sku).map_or(0, |(avail, _, _)| map.share(*avail, shard));
                (avail + resv + sold, avail, resv, sold)
            };
            let finish =
                scripts::restore::finish(script, k, (spec, tag, shard > 0), stock_generation, levels);
            ran &= self.restore_step(finish).await?;
            if !ran {
                if shard == 0 {
                    return Ok(None);
                }
                return Err(EngineError::Unavailable(format!("shard {tag} appeared during its restore")));
            }
        }
        let live: Vec<redis::Cmd> = map.tags()[1..]
            .iter()
            .map(|t| redis::cmd("HDEL").arg(k.meta(t)).arg("restoring").clone())
            .collect();
        let _: Vec<Value> = self.parts().link.each(live).await?;
        Ok(Some(stock))
    }

    /// Before a sharded campaign is restored: a shard other than 0 left by an earlier,
    /// interrupted restore (its meta says `restoring`) is emptied so the steps can run
    /// again. A shard that holds live data while shard 0 lost its own (one master of
    /// several lost its data) is not touched: that needs an operator, and the restore
    /// stops with `Unavailable`.
    async fn clear_unfinished_restore(&self, map: &ShardMap) -> Result<()> {
        if map.len() < 2 {
            return Ok(());
        }
        let k = self.parts().keys;
        let reads = map.tags()[1..]
            .iter()
            .map(|t| redis::cmd("HMGET").arg(k.meta(t)).arg("starts").arg("restoring").clone())
            .collect();
        let metas: Vec<(Option<String>, Option<String>)> = self.parts().link.each(reads).await?;
        for (tag, (starts, restoring)) in map.tags()[1..].iter().zip(metas) {
            match (starts, restoring) {
                (None, _) => {}
                (Some(_), Some(_)) => {
                    let key = k.meta(tag);
                    self.parts()
                        .link
                        .call(|mut c| async move { redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await })
                        .await?;
                }
                (Some(_), None) => {
                    return Err(EngineError::Unavailable(format!(
                        "shard {tag} still holds live data while shard 0 lost its own; not restored automatically"
                    )))
                }
            }
        }
        Ok(())
    }

    async fn restore_step(&self, inv: redis::ScriptInvocation<'_>) -> Result<bool> {
        scripts::restore::decode(self.run(inv).await?)
    }

    /// Drops a finished campaign's per-order data (orders, user counts, buyers, pending
    /// set, outbox, rate) and takes it off the index. Its meta and stock stay, so the
    /// campaign still answers "ended" and its counters still show. The caller makes
    /// sure MySQL holds everything first.
    pub async fn retire(&self, campaign: &CampaignId, map: &ShardMap, orders: &[OrderId]) -> Result<()> {
        let k = &self.parts().keys;
        for (shard, tag) in map.tags().iter().enumerate() {
            let buyers: Vec<String> = {
                let key = k.buyers(tag);
                self.parts()
                    .link
                    .call(|mut c| async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await })
                    .await?
            };
            let mut doomed: Vec<String> =
                orders.iter().filter(|o| map.of_order(o) == shard).map(|o| k.order_at(tag, o)).collect();
            for b in &buyers {
                if let Ok(user) = UserId::parse(b) {
                    doomed.push(k.user(tag, &user));
                }
            }
            doomed.extend([k.pending(tag), k.outbox(tag), k.order_rate(tag), k.buyers(tag), k.moves_in(tag)]);
            // One slot per call: every key here carries this shard's tag.
            for chunk in doomed.chunks(PIPELINE_MAX) {
                let chunk = chunk.to_vec();
                self.parts()
                    .link
                    .call(|mut c| async move { redis::cmd("UNLINK").arg(chunk).query_async::<()>(&mut c).await })
                    .await?;
            }
        }
        // Two keys in two slots (the campaign's and the index's): two commands.
        let mut retired = redis::cmd("HSET");
        retired.arg(k.meta(campaign)).arg("retired").arg(1);
        let mut unlisted = redis::cmd("SREM");
        unlisted.arg(k.campaigns()).arg(campaign.as_str());
        let _: Vec<Value> = self.parts().link.each(vec![retired, unlisted]).await?;
        Ok(())
    }
}
