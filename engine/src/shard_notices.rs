//! Shard notices on a Redis Cluster: each shard's scripts send their `buyers`,
//! `restock` and `outbox` notices with `SPUBLISH` to the shard's own channel (`keys.rs`),
//! which only the master and replicas of its slot see, instead of a `PUBLISH` the
//! cluster forwards to every node. `meta` notices stay on the broadcast channel
//! (`notices.rs`).
//!
//! This listener holds one `SSUBSCRIBE` per shard of every campaign this process needs:
//! the campaigns its cache holds (a gateway) and, once [`Shared::watch_outbox_notices`]
//! was called, every live campaign (a relay). It uses the `redis` crate's cluster client
//! over RESP3, which sends each subscription to the node serving its slot and, after a
//! reconnect or a change of the slot map (a failover), subscribes again on the node that
//! serves the slot now.
//!
//! Notices sent while a subscription was down are lost, so a campaign's local answers
//! (sold out, ended) are trusted only once every shard channel of the campaign has been
//! confirmed *and* the campaign was reloaded with its buyers after that. Anything that
//! may have lost notices (a disconnection, an `sunsubscribe` the server sent when a slot
//! moved, a PING unanswered for [`PING_TIMEOUT`], a full push buffer, fewer shard
//! channels held by the nodes than confirmed: `ssub` of `CLIENT INFO`, asked with
//! every PING) takes that trust
//! away and forgets the sold-out flags until the channels are confirmed again. Each
//! confirmation also tells the relay to look at the shard's outbox (a
//! [`WorkSignal::Outbox`]), so an `outbox` notice missed meanwhile costs nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use deadpool_redis::redis::cluster::ClusterClientBuilder;
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use deadpool_redis::redis::{self, PushInfo, PushKind};
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};

use crate::domain::CampaignId;
use crate::notices::{apply, PING_EVERY, PING_TIMEOUT};
use crate::outbox::WorkSignal;
use crate::state::Shared;

/// How often the wanted channels are compared with the subscribed ones.
const TICK: Duration = Duration::from_millis(200);
/// A subscription asked for and not confirmed within this is asked for again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(1);
/// Pushes (notices and confirmations) buffered between the client and this listener;
/// past this they are dropped and counted as a loss.
const PUSH_BUFFER: usize = 65_536;
/// Subscriptions asked for at once.
const ASK_IN_FLIGHT: usize = 64;

/// Runs until the engine is dropped; builds the cluster client again when it fails.
pub(crate) async fn listen(engine: Weak<Shared>, wanted: Arc<Notify>, seeds: Vec<String>, timeout: Duration) {
    let mut backoff = common::backoff::DEPENDENCY;
    loop {
        let (tx, rx) = mpsc::channel::<PushInfo>(PUSH_BUFFER);
        let overflow = Arc::new(AtomicBool::new(false));
        let full = Arc::clone(&overflow);
        let client = ClusterClientBuilder::new(seeds.clone())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .push_sender(move |push: PushInfo| -> Result<(), ()> {
                if tx.try_send(push).is_err() {
                    full.store(true, Ordering::Release);
                }
                Ok(())
            })
            .build();
        let connected = match client {
            Ok(client) => tokio::time::timeout(timeout, client.get_async_connection())
                .await
                .unwrap_or_else(|_| Err(timed_out("connect")))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match connected {
            Ok(conn) => {
                backoff.reset();
                let mut listener = Listener {
                    conn,
                    rx,
                    overflow,
                    timeout,
                    wanted: Arc::clone(&wanted),
                    subs: Subscriptions::default(),
                };
                if listener.run(&engine).await {
                    return;
                }
            }
            Err(error) => {
                if engine.strong_count() == 0 {
                    return;
                }
                tracing::warn!(%error, "cannot connect for shard notices");
            }
        }
        tokio::time::sleep(backoff.next_pause()).await;
    }
}

fn timed_out(what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out")))
}

/// The shard channel of a tag's scripts, and back (`<ns>:{c:<tag>}:events`).
fn tag_of(channel: &str) -> Option<CampaignId> {
    let open = channel.find("{c:")?;
    let rest = &channel[open + 3..];
    CampaignId::parse_tag(&rest[..rest.find('}')?]).ok()
}

/// What this listener asked for and what the server confirmed.
#[derive(Default)]
struct Subscriptions {
    /// Every shard channel wanted now, with its campaign.
    wanted: HashMap<String, CampaignId>,
    /// Channels confirmed since the last loss.
    confirmed: HashSet<String>,
    /// Channels asked for and not confirmed yet, with when.
    asked: HashMap<String, Instant>,
}

struct Listener {
    conn: ClusterConnection,
    rx: mpsc::Receiver<PushInfo>,
    overflow: Arc<AtomicBool>,
    timeout: Duration,
    /// Woken when a campaign enters the cache or the watch list.
    wanted: Arc<Notify>,
    subs: Subscriptions,
}

impl Listener {
    /// Returns whether the engine is gone (`false`: the client failed, build another).
    async fn run(&mut self, engine: &Weak<Shared>) -> bool {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ping = Instant::now();
        loop {
            tokio::select! {
                push = self.rx.recv() => {
                    let Some(push) = push else { return false };
                    let Some(inner) = engine.upgrade() else { return true };
                    self.on_push(&inner, push).await;
                }
                _ = tick.tick() => {
                    let Some(inner) = engine.upgrade() else { return true };
                    self.tick(&inner, &mut last_ping).await;
                }
                () = self.wanted.notified() => {
                    let Some(inner) = engine.upgrade() else { return true };
                    self.reconcile(&inner).await;
                }
            }
        }
    }

    /// The periodic round: a lost push, a PING, then [`Self::reconcile`].
    async fn tick(&mut self, inner: &Shared, last_ping: &mut Instant) {
        if self.overflow.swap(false, Ordering::AcqRel) {
            tracing::warn!("shard notices arrived faster than they were applied; resubscribing");
            self.lost_all(inner);
        }
        if last_ping.elapsed() >= PING_EVERY {
            *last_ping = Instant::now();
            if !self.ping().await {
                tracing::warn!("a node of the shard notices did not answer a PING in time");
                self.lost_all(inner);
            } else if let Some(held) = self.held().await {
                let confirmed = self.subs.confirmed.len();
                tracing::trace!(held, confirmed, "shard notice subscriptions held");
                if held < confirmed {
                    tracing::warn!(
                        held,
                        confirmed,
                        "shard notice subscriptions gone without a word; subscribing again"
                    );
                    self.lost_all(inner);
                }
            }
        }
        self.reconcile(inner).await;
    }

    async fn on_push(&mut self, shared: &Shared, push: PushInfo) {
        let channel = || push.data.first().and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                if let Some(text) =
                    push.data.get(1).and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                {
                    tracing::trace!(%text, "shard notice");
                    apply(shared, &text).await;
                }
            }
            PushKind::SSubscribe => {
                if let Some(ch) = channel() {
                    tracing::debug!(channel = %ch, "shard notices subscribed");
                    self.subs.asked.remove(&ch);
                    if let Some(tag) = tag_of(&ch) {
                        // Anything this shard's outbox was told meanwhile was missed.
                        let _ = shared.work.send(WorkSignal::Outbox(tag));
                    }
                    self.subs.confirmed.insert(ch);
                }
            }
            PushKind::SUnsubscribe => {
                // Sent by the server too, when the slot moved away from the node.
                if let Some(ch) = channel() {
                    tracing::debug!(channel = %ch, "shard notices unsubscribed");
                    self.subs.confirmed.remove(&ch);
                    self.subs.asked.remove(&ch);
                    if let Some(campaign) = self.subs.wanted.get(&ch) {
                        shared.cache.set_notices_live(campaign.as_str(), false);
                    }
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("a shard notice link dropped; subscribing again");
                self.lost_all(shared);
            }
            _ => {}
        }
    }

    /// Notices may have been lost on any channel: nothing is trusted until each is
    /// confirmed again (the client subscribes again by itself; asking again is harmless).
    fn lost_all(&mut self, shared: &Shared) {
        self.subs.confirmed.clear();
        self.subs.asked.clear();
        for campaign in shared.cache.cached_campaigns() {
            shared.cache.set_notices_live(campaign.as_str(), false);
        }
    }

    async fn ping(&mut self) -> bool {
        let all =
            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::AllSucceeded)));
        matches!(
            tokio::time::timeout(PING_TIMEOUT, self.conn.route_command(redis::cmd("PING"), all)).await,
            Ok(Ok(_))
        )
    }

    /// How many shard channels the nodes hold for this client (`ssub` of `CLIENT INFO`
    /// on every node), `None` if the call failed or no reply carried the count. A subscription can vanish with no
    /// push to tell: the client may replace a node's connection (a slot-map refresh
    /// around a restart) and resubscribe on a node that does not own the slot yet,
    /// which refuses it. Fewer held than confirmed is treated as a loss.
    async fn held(&mut self) -> Option<usize> {
        let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("INFO");
        let info = self.conn.route_command(cmd, all);
        let value = tokio::time::timeout(PING_TIMEOUT, info).await.ok()?.ok()?;
        shard_channels_held(&value)
    }

    /// Subscribes what is wanted and not asked for, unsubscribes what is no longer
    /// wanted, and makes live each campaign whose channels are all confirmed.
    async fn reconcile(&mut self, shared: &Shared) {
        let wanted = wanted_channels(shared).await;
        let gone: Vec<String> = self
            .subs
            .confirmed
            .iter()
            .chain(self.subs.asked.keys())
            .filter(|ch| !wanted.contains_key(*ch))
            .cloned()
            .collect();
        for ch in &gone {
            self.subs.confirmed.remove(ch);
            self.subs.asked.remove(ch);
        }
        let ask: Vec<String> = wanted
            .keys()
            .filter(|ch| {
                !self.subs.confirmed.contains(*ch)
                    && self.subs.asked.get(*ch).is_none_or(|at| at.elapsed() >= ASK_AGAIN_AFTER)
            })
            .cloned()
            .collect();
        self.subs.wanted = wanted;
        let now = Instant::now();
        for ch in &ask {
            self.subs.asked.insert(ch.clone(), now);
        }
        let timeout = self.timeout;
        // Confirmations arrive as pushes ([`Self::on_push`]); a failure is asked again.
        let conn = &self.conn;
        let calls = ask.into_iter().map(|ch| (ch, true)).chain(gone.into_iter().map(|ch| (ch, false)));
        futures_util::stream::iter(calls.map(|(ch, subscribe)| {
            let mut conn = conn.clone();
            async move {
                let call = async {
                    if subscribe {
                        conn.ssubscribe(&ch).await
                    } else {
                        conn.sunsubscribe(&ch).await
                    }
                };
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(())) => {
                        tracing::trace!(channel = %ch, subscribe, "shard notice (un)subscription sent")
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(channel = %ch, error = %e, "shard notice (un)subscription failed")
                    }
                    Err(_) => tracing::debug!(channel = %ch, "shard notice (un)subscription timed out"),
                }
            }
        }))
        .buffer_unordered(ASK_IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
        self.make_live(shared).await;
    }

    /// Each cached campaign that is not live and whose channels are all confirmed is
    /// reloaded with its buyers, then trusted (a loss met meanwhile is applied after it).
    async fn make_live(&mut self, shared: &Shared) {
        let mut ready: HashMap<&CampaignId, bool> = HashMap::new();
        for (ch, campaign) in &self.subs.wanted {
            let confirmed = self.subs.confirmed.contains(ch);
            ready.entry(campaign).and_modify(|all| *all &= confirmed).or_insert(confirmed);
        }
        for (campaign, all) in ready {
            if !all || shared.cache.notices_live(campaign.as_str()) != Some(false) {
                continue;
            }
            shared.cache.set_notices_live(campaign.as_str(), false);
            match shared.reload(campaign, true).await {
                Ok(()) => shared.cache.set_notices_live(campaign.as_str(), true),
                Err(e) => tracing::debug!(%campaign, error = %e, "campaign not reloaded for its notices"),
            }
        }
    }
}

/// The sum of `ssub=` over the `CLIENT INFO` replies of every node; `None` if none
/// carries it.
fn shard_channels_held(value: &redis::Value) -> Option<usize> {
    let mut texts = Vec::new();
    texts_of(value, &mut texts);
    let counts: Vec<usize> = texts
        .iter()
        .filter_map(|t| t.split_whitespace().find_map(|f| f.strip_prefix("ssub=")?.parse().ok()))
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// Every text in a reply, however nested (a multi-node reply is a map by node).
fn texts_of(value: &redis::Value, out: &mut Vec<String>) {
    match value {
        redis::Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => out.push(s.clone()),
        redis::Value::VerbatimString { text, .. } => out.push(text.clone()),
        redis::Value::Array(items) | redis::Value::Set(items) => items.iter().for_each(|v| texts_of(v, out)),
        redis::Value::Map(pairs) => pairs.iter().for_each(|(_, v)| texts_of(v, out)),
        _ => {}
    }
}

/// Every shard channel this process needs now: those of the campaigns its cache holds
/// and of the campaigns it watches for outbox work.
async fn wanted_channels(shared: &Shared) -> HashMap<String, CampaignId> {
    let keys = shared.store.parts().keys;
    let mut wanted = HashMap::new();
    for campaign in shared.cache.cached_campaigns() {
        if let Some(shards) = shared.cache.shard_count(campaign.as_str()) {
            for tag in shared.map_of(&campaign, shards).tags() {
                wanted.insert(keys.shard_notice_channel(tag), campaign.clone());
            }
        }
    }
    let watched = shared.watched_campaigns();
    if !watched.is_empty() {
        match shared.shard_maps(&watched).await {
            Ok(maps) => {
                for (campaign, map) in watched.iter().zip(maps) {
                    for tag in map.tags() {
                        wanted.entry(keys.shard_notice_channel(tag)).or_insert_with(|| campaign.clone());
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "shard counts of the watched campaigns not read"),
        }
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySpace;

    #[test]
    fn the_shard_channels_held_add_up_over_the_nodes() {
        use redis::Value;
        let info = |ssub: u32| Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text: format!("id=7 addr=127.0.0.1:1 flags=N sub=0 psub=0 ssub={ssub} multi=-1 resp=3\n"),
        };
        let nodes = Value::Map(vec![
            (Value::SimpleString("127.0.0.1:7001".into()), info(2)),
            (Value::SimpleString("127.0.0.1:7002".into()), info(0)),
            (Value::SimpleString("127.0.0.1:7003".into()), info(3)),
        ]);
        assert_eq!(shard_channels_held(&nodes), Some(5));
        assert_eq!(shard_channels_held(&Value::BulkString(b"id=1 ssub=4".to_vec())), Some(4));
        assert_eq!(shard_channels_held(&Value::Okay), None);
    }

    #[test]
    fn a_shard_channel_names_its_tag() {
        let keys = KeySpace::new("fs").with_shard_channels(true);
        let tag = CampaignId::parse_tag("spring/2.17").unwrap();
        assert_eq!(tag_of(&keys.shard_notice_channel(&tag)), Some(tag));
        assert_eq!(tag_of("fs:events"), None);
    }
}
