//! The reservation hot path as a library: no HTTP, no MySQL.
//!
//! # Layout
//! - [`domain`]: ids and order lines, parsed once at the edge; outcomes as enums.
//! - [`keys`]: the Redis key layout (one hash tag per campaign).
//! - [`link`]: shared multiplexed Redis connections with a timeout on every call, and
//!   the replicas' acknowledgement (`WAIT`) of every change when asked for.
//! - [`campaign`]: a campaign's data as launched, tuned and held in Redis.
//! - [`scripts`]: each Lua script's keys, arguments and reply, beside `lua/<name>.lua`.
//! - [`store`]: runs the scripts and the plain reads; reached only through [`Engine`].
//! - [`outbox`]: the outbox protocol, the worker's pipelined campaign-wide reads,
//!   and retiring a finished campaign a page at a time.
//! - [`rebuild`]: campaign shards whose data Redis lost, found (each shard's meta is
//!   its marker) and rebuilt from MySQL and the surviving shards.
//! - [`behind`]: shards that came back behind MySQL (a failover to a replica that
//!   missed the last writes): the stream ids that show it, and the hold and clean-up
//!   before such a shard is rebuilt.
//! - [`order_ids`]: order ids derived from (campaign, user, idempotency key) with a
//!   server secret, so a retry finds its order with one lookup.
//! - [`cache`]: the local sharded cache answering sold-out, not-started and unknown
//!   requests without Redis.
//! - [`notices`]: the pub/sub listener that keeps every process's cache fresh.
//! - `shard_notices`: on a cluster, the per-shard (`SSUBSCRIBE`) listener for the
//!   notices each shard's scripts send, followed across failovers.
//! - [`state`]: what the engine's clones and tasks share.
//! - [`engine`]: [`Engine`], the cache in front of the store, and the only way to it.
//! - [`clock`]: the process's clock in ms.
//! - `coalesce`: concurrent reservations of one campaign decided by one script call.
//! - [`error`]: [`EngineError`], the one error type of this layer.
#![forbid(unsafe_code)]

pub mod behind;
pub mod cache;
pub mod campaign;
pub mod clock;
mod coalesce;
pub mod domain;
pub mod engine;
pub mod error;
pub mod keys;
pub mod link;
pub mod notices;
pub mod order_ids;
pub mod outbox;
mod rebalance;
pub mod rebuild;
pub mod scripts;
mod shard_notices;
pub mod shards;
mod state;
pub mod store;

pub use engine::{Engine, EngineStats};
pub use error::EngineError;
