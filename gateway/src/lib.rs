//! The gateway: storefront ordering, the order and payment service, the operator
//! API, health and metrics, over the engine's hot path.
//!
//! # Layout
//! - [`server`]: the router, the guard middleware (in-flight bound, request timeout,
//!   metrics), serving with graceful shutdown.
//! - [`state`]: [`state::AppState`], what every handler shares.
//! - [`routes`]: one module per audience: `orders`, `payments`, `admin`, `dead_letters`,
//!   `health`.
//! - [`auth`]: storefront JWTs, the operator token, callback signatures.
//! - [`body`]: JSON bodies with the contract's errors.
//! - [`error`]: [`error::AppError`], the one error type, mapped to status and code.
//! - [`user_rate`]: per-user request rate limits (`max_user_requests_per_sec`).
//! - [`metrics`]: Prometheus metrics.
//! - [`openapi`]: the OpenAPI document, generated from the code.
//! - [`view`]: response bodies and time formatting.
#![forbid(unsafe_code)]

pub mod auth;
pub mod body;
pub mod dashboard;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod state;
pub mod user_rate;
pub mod view;
