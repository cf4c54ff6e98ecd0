//! The reservation hot path as a library: no HTTP, no MySQL.
//!
//! # Layout
//! - [`domain`]: ids and order lines, parsed once at the edge; outcomes as enums.
//! - [`keys`]: the Redis key layout (one hash tag per campaign).
//! - [`link`]: shared multiplexed Redis connections with a timeout on every call.
//! - [`store`]: the Redis stock store: the Lua scripts and the reads beside them.
//! - [`outbox`]: the outbox protocol, the worker's pipelined campaign-wide reads,
//!   and restoring or retiring a whole campaign.
//! - [`cache`]: the local sharded cache answering sold-out, not-started and unknown
//!   requests without Redis.
//! - [`events`]: the pub/sub listener that keeps every process's cache fresh.
//! - [`engine`]: [`Engine`], the cache in front of the store.
//! - [`error`]: [`EngineError`], the one error type of this layer.
#![forbid(unsafe_code)]

pub mod cache;
pub mod domain;
pub mod engine;
pub mod error;
pub mod events;
pub mod keys;
pub mod link;
pub mod outbox;
pub mod store;

pub use engine::{Engine, EngineStats};
pub use error::EngineError;
