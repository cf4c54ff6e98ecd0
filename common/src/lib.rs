//! What the gateway and the sync-worker share.
//!
//! # Layout
//! - [`backoff`]: the one retry schedule (doubling pauses between bounds).
//! - [`cli`]: settings from the command line, the shutdown signal.
//! - [`config`]: layered settings (embedded `config/default.toml` → file → `FLASHSALE__*`).
//! - [`telemetry`]: `tracing` subscriber set-up.
//! - [`message`]: the order event carried from the outbox stream to MySQL.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod cli;
pub mod config;
pub mod message;
pub mod telemetry;
