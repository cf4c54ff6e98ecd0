//! What every task of the worker shares.

use std::time::Duration;

use common::config::Settings;
use common::db::Db;
use engine::Engine;

use crate::metrics::Metrics;
use crate::topology::{DelayQueues, Names};

pub struct Ctx {
    pub settings: Settings,
    pub engine: Engine,
    pub db: Db,
    pub names: Names,
    pub metrics: Metrics,
    pub delay_queues: DelayQueues,
    /// This process's name in the outbox consumer group.
    pub consumer: String,
}

impl Ctx {
    pub fn broker_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.amqp.call_timeout_ms)
    }
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
