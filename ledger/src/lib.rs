//! The ledger: MySQL as the projection of what the engine decided in Redis.
//!
//! # Layout
//! - [`db`]: the connection pool, migrations (`migrations/` at the workspace root),
//!   [`DbError`], the timeout on every call.
//! - [`rows`]: the row types (campaigns, stock, orders) and what applying did.
//! - [`campaigns`]: campaign rows: launch, tuning, rebuild and retirement marks.
//! - [`orders`]: order and stock reads (views, sweeps, rebuilds).
//! - [`fold`]: the pure fold of a batch of order events into row changes: unit-tested
//!   without MySQL.
//! - [`apply`]: the SQL that applies a fold in one transaction, stock moves guarded.
//! - [`lines`]: an order's lines inline in its row, and the per-sku unit sums of
//!   pending and paid orders.
//! - [`units`]: `order_units`, those sums kept in MySQL (reconciliation reads them), and
//!   the one-time count of a campaign launched before they were kept.
//! - [`reconcile`]: a campaign's Redis counters against MySQL.
//! - [`dead`]: dead-lettered orders, kept to be listed and sent back.
//! - [`relayed`]: the newest outbox id relayed per stream (finds a shard behind MySQL).
//!
//! The ledger speaks the engine's domain types (it records what the engine decided);
//! the engine never sees the ledger.
#![forbid(unsafe_code)]

pub mod apply;
pub mod campaigns;
pub mod db;
pub mod dead;
pub mod fold;
pub mod lines;
pub mod orders;
pub mod reconcile;
pub mod relayed;
pub mod rows;
mod shapes;
pub mod units;

pub use db::{Db, DbError, Result};
pub use rows::{Applied, CampaignItemRow, CampaignRow, InsertCampaign, OrderRow, StockRow};
