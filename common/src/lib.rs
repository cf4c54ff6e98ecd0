//! What the gateway and the sync-worker share.
//!
//! # Layout
//! - [`cli`]: settings from the command line, the shutdown signal.
//! - [`config`]: layered settings (embedded `config/default.toml` → file → `FLASHSALE__*`).
//! - [`telemetry`]: `tracing` subscriber set-up.
//! - [`message`]: the order event carried from the outbox stream to MySQL.
//! - [`db`]: MySQL schema, campaigns, guarded application of order events.
//! - [`http`]: serving a router until asked to stop.
//! - [`reconcile`]: Redis against MySQL, per sku.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod db;
pub mod http;
pub mod message;
pub mod reconcile;
pub mod telemetry;
