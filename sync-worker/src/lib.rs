//! The sync-worker: makes MySQL agree with what buyers were told, and gives unpaid
//! stock back.
//!
//! # Layout
//! - [`supervisor`]: starts the tasks, reconnects to the broker, drains on shutdown.
//! - [`relay`]: outbox streams → RabbitMQ with publisher confirms; [`joined`]: many
//!   entries of a stream in one message.
//! - [`persister`]: RabbitMQ → MySQL in batches; schedules payment timers.
//! - [`expiry`]: payment timers, the Redis sweep and the MySQL sweep.
//! - [`reconcile`]: Redis against MySQL, as a metric and a warning.
//! - [`restore`]: finds campaign shards Redis lost (every second) and rebuilds them.
//! - [`dead`]: keeps every dead-lettered order in MySQL (logged, counted) and sends
//!   back those an operator asks to replay.
//! - [`retire`]: drops a finished, settled campaign's per-order data from Redis.
//! - [`topology`]: exchange and queue names and declarations.
//! - `traced`: the spans of sampled orders (relay, persister) when traces are exported.
//! - [`context`], [`metrics`], [`error`]: what the tasks share.
#![forbid(unsafe_code)]

pub mod context;
pub mod dead;
pub mod error;
pub mod expiry;
pub mod joined;
pub mod metrics;
pub mod persister;
pub mod reconcile;
pub mod relay;
pub mod restore;
pub mod retire;
pub mod supervisor;
pub mod topology;
mod traced;
