//! Notices: the pub/sub channel `<ns>:events` that keeps every process's local cache
//! in step with Redis (distinct from order events, which travel through the outbox).
//!
//! - The listener subscribes to `<ns>:events`. After each (re)subscription it forgets
//!   every sold-out flag and reloads every cached campaign with its buyers, because
//!   notices sent while it was away are lost; only then does it mark the cache live.
//!   A link can die without closing (a half-open TCP connection): the listener PINGs
//!   the subscription every [`PING_EVERY`] and drops to "not live" (no local sold-out
//!   or ended answers) when a PING goes unanswered for [`PING_TIMEOUT`].
//! - `outbox <c>` notices (a campaign's outbox went from empty to non-empty) are passed
//!   on as [`WorkSignal`]s to whoever relays; after a resubscription a
//!   [`WorkSignal::Resync`] says that some may have been missed.
//! - The refresher reloads every cached campaign's window, limit and thresholds every
//!   `campaign_refresh_ms`, so tuning reaches this process within that bound even if a
//!   `meta` notice is lost.

use std::sync::Weak;
use std::time::Duration;

use deadpool_redis::redis;
use futures_util::StreamExt;

use crate::domain::{CampaignId, SkuId};
use crate::outbox::WorkSignal;
use crate::state::Shared;

/// How often the subscription is PINGed: with [`PING_TIMEOUT`], a dead link stops
/// local answers within 1.5 s.
pub const PING_EVERY: Duration = Duration::from_millis(500);
/// A PING unanswered this long means the link is dead.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Listens on `nodes` in turn: one Redis, or any node of a Redis Cluster (a cluster
/// passes every PUBLISH on to every node, so one subscription hears them all).
pub(crate) async fn listen(engine: Weak<Shared>, nodes: Vec<String>, channel: String, timeout: Duration) {
    let mut backoff = common::backoff::DEPENDENCY;
    let mut turn = 0usize;
    loop {
        let url = &nodes[turn % nodes.len().max(1)];
        turn = turn.wrapping_add(1);
        match subscribe(url, &channel, timeout).await {
            Ok(pubsub) => {
                backoff.reset();
                {
                    let Some(inner) = engine.upgrade() else { return };
                    inner.cache.forget_sold_out();
                    let failed = inner.reload_all(true).await;
                    if failed > 0 {
                        tracing::warn!(
                            failed,
                            "campaigns not reloaded after subscribing; dropped from the local cache"
                        );
                    }
                    inner.cache.set_live(true);
                    let _ = inner.work.send(WorkSignal::Resync);
                    tracing::debug!(%channel, "cache notices live");
                }
                let (sink, mut messages) = pubsub.split();
                let (dead_tx, mut dead) = tokio::sync::oneshot::channel::<()>();
                let heartbeat = tokio::spawn(heartbeat(sink, dead_tx));
                loop {
                    let msg = tokio::select! {
                        m = messages.next() => m,
                        _ = &mut dead => {
                            tracing::warn!(%channel, "notice link unanswered; resubscribing");
                            break;
                        }
                    };
                    let Some(msg) = msg else {
                        tracing::warn!(%channel, "cache notice stream ended; resubscribing");
                        break;
                    };
                    let Some(inner) = engine.upgrade() else { return };
                    if let Ok(text) = msg.get_payload::<String>() {
                        apply(&inner, &text).await;
                    }
                }
                heartbeat.abort();
                if let Some(inner) = engine.upgrade() {
                    inner.cache.set_live(false);
                }
            }
            Err(e) => {
                if engine.strong_count() == 0 {
                    return;
                }
                tracing::warn!(error = %e, "cannot subscribe to cache notices");
            }
        }
        tokio::time::sleep(backoff.next_pause()).await;
    }
}

/// PINGs the subscription until a PING goes unanswered, then says so.
async fn heartbeat(mut sink: redis::aio::PubSubSink, dead: tokio::sync::oneshot::Sender<()>) {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        match tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
            Ok(Ok(_)) => {}
            _ => {
                let _ = dead.send(());
                return;
            }
        }
    }
}

async fn subscribe(url: &str, channel: &str, timeout: Duration) -> redis::RedisResult<redis::aio::PubSub> {
    let client = redis::Client::open(url)?;
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribe timed out",
        ))),
    }
}

pub(crate) async fn refresh(engine: Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = engine.upgrade() else { return };
        inner.prune();
        let failed = inner.reload_all(false).await;
        if failed > 0 {
            tracing::debug!(failed, "campaigns not refreshed this round");
        }
    }
}

/// Applies one notice to this process's cache (or passes it on to the relay).
pub(crate) async fn apply(shared: &Shared, text: &str) {
    match Notice::parse(text) {
        Some(Notice::Restock { campaign, sku, gen }) => shared.cache.restock(&campaign, &sku, gen),
        Some(Notice::Buyer { campaign, user }) => shared.cache.add_buyer(&campaign, &user),
        Some(Notice::Buyers { campaign, users }) => {
            users.iter().for_each(|user| shared.cache.add_buyer(&campaign, user));
        }
        Some(Notice::Outbox { campaign }) => {
            let _ = shared.work.send(WorkSignal::Outbox(campaign));
        }
        // Only a campaign this process serves is reloaded; others load on first use.
        Some(Notice::Meta { campaign }) if shared.cache.contains(campaign.as_str()) => {
            if let Err(e) = shared.reload(&campaign, false).await {
                tracing::warn!(error = %e, %campaign, "reload on notice failed");
            }
        }
        Some(Notice::Meta { campaign }) => {
            shared.cache.unmark_missing(campaign.as_str());
            shared.watch_launched(&campaign);
        }
        None => tracing::debug!(notice = text, "ignored unknown cache notice"),
    }
}

/// A notice parsed; unknown or malformed notices are ignored.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Notice {
    Restock {
        campaign: String,
        sku: SkuId,
        gen: u64,
    },
    Meta {
        campaign: CampaignId,
    },
    Buyer {
        campaign: String,
        user: String,
    },
    /// Every new buyer of one reservation call (`buyers <c> <json array>`).
    Buyers {
        campaign: String,
        users: Vec<String>,
    },
    Outbox {
        campaign: CampaignId,
    },
}

impl Notice {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, ' ');
        let kind = parts.next()?;
        let campaign = parts.next()?;
        match kind {
            "restock" => {
                let rest = parts.next()?;
                let (sku, gen) = rest.split_once(' ')?;
                Some(Self::Restock {
                    campaign: campaign.to_owned(),
                    sku: SkuId::parse(sku).ok()?,
                    gen: gen.parse().ok()?,
                })
            }
            "meta" => Some(Self::Meta { campaign: CampaignId::parse(campaign).ok()? }),
            "buyer" => Some(Self::Buyer { campaign: campaign.to_owned(), user: parts.next()?.to_owned() }),
            "buyers" => Some(Self::Buyers {
                campaign: campaign.to_owned(),
                users: serde_json::from_str(parts.next()?).ok()?,
            }),
            // A campaign's outbox, or one shard's (`shards.rs`).
            "outbox" => Some(Self::Outbox { campaign: CampaignId::parse_tag(campaign).ok()? }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_and_user_ids_may_hold_spaces() {
        assert_eq!(
            Notice::parse("restock c1 sku-1 7"),
            Some(Notice::Restock { campaign: "c1".into(), sku: SkuId::parse("sku-1").unwrap(), gen: 7 })
        );
        assert_eq!(
            Notice::parse("buyer c1 jane doe"),
            Some(Notice::Buyer { campaign: "c1".into(), user: "jane doe".into() })
        );
        assert!(matches!(Notice::parse("meta c1"), Some(Notice::Meta { .. })));
        assert!(matches!(Notice::parse("outbox c1"), Some(Notice::Outbox { .. })));
        assert!(matches!(Notice::parse("outbox c1/2.17"), Some(Notice::Outbox { .. })));
        assert_eq!(Notice::parse("outbox c1/x"), None);
        assert_eq!(
            Notice::parse(r#"buyers c1 ["jane doe","u2"]"#),
            Some(Notice::Buyers { campaign: "c1".into(), users: vec!["jane doe".into(), "u2".into()] })
        );
        assert_eq!(Notice::parse("restock c1 sku"), None);
        assert_eq!(Notice::parse("bogus c1"), None);
        assert_eq!(Notice::parse(""), None);
    }
}
