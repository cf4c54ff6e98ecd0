//! What every task of the worker shares.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::config::Settings;
use engine::domain::CampaignId;
use engine::Engine;
use ledger::Db;

use crate::metrics::Metrics;
use crate::topology::{DelayQueues, Names};

pub struct Ctx {
    /// Campaigns with recent outbox work, shared by the relay (which records it) and
    /// the sweep and reconciliation (which look only there between full scans).
    pub activity: Activity,
    pub settings: Settings,
    pub engine: Engine,
    pub db: Db,
    pub names: Names,
    pub metrics: Metrics,
    pub delay_queues: DelayQueues,
    /// This process's name in the outbox consumer group.
    pub consumer: String,
    /// Wakes the restore check at once (the relay found a shard behind MySQL): the
    /// sooner it is held, the fewer orders it grants that no longer fit.
    pub restore_now: tokio::sync::Notify,
}

/// When each campaign last had outbox work (by this process's clock).
#[derive(Default)]
pub struct Activity {
    seen: std::sync::Mutex<HashMap<CampaignId, Instant>>,
}

impl Activity {
    pub fn touch(&self, campaign: &CampaignId) {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.insert(campaign.clone(), Instant::now());
    }

    /// Campaigns active within `window`; older entries are forgotten.
    pub fn within(&self, window: Duration) -> Vec<CampaignId> {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.retain(|_, at| at.elapsed() < window);
        seen.keys().cloned().collect()
    }
}

impl Ctx {
    /// One campaign's error met by a loop over campaigns (`task` names the loop): logged
    /// and counted, and the loop goes on with the next campaign.
    pub fn campaign_failed(&self, task: &'static str, campaign: &CampaignId, error: &dyn std::fmt::Display) {
        self.metrics.campaign_errors.with_label_values(&[task]).inc();
        tracing::warn!(%campaign, task, error = %error, "one campaign's work failed; the others go on");
    }

    pub fn broker_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.amqp.call_timeout_ms)
    }
}

/// Starts consuming `queue` on `ch` as `<role>-<this worker>`.
pub async fn consume(
    ctx: &Ctx,
    ch: &lapin::Channel,
    queue: &str,
    role: &str,
) -> crate::error::Result<lapin::Consumer> {
    crate::error::bounded(
        ctx.broker_timeout(),
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            format!("{role}-{}", ctx.consumer).as_str().into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        ),
    )
    .await
}

/// Sleeps for `d` unless asked to stop first; returns whether to stop.
pub async fn pause(d: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
