//! The gateway: storefront ordering, the order and payment service, the operator
//! API, health and metrics, over the engine's hot path.
//!
//! # Layout
//! - [`app`]: shared state, router, the guard middleware (in-flight bound, request
//!   timeout, metrics), serving with graceful shutdown.
//! - [`routes`]: one module per audience: `orders`, `payments`, `admin`, `health`.
//! - [`auth`]: storefront JWTs, the operator token, callback signatures.
//! - [`body`]: JSON bodies with the contract's errors.
//! - [`error`]: [`error::AppError`], the one error type, mapped to status and code.
//! - [`limits`]: per-user request rate limits.
//! - [`metrics`]: Prometheus metrics.
//! - [`openapi`]: the OpenAPI document, generated from the code.
//! - [`view`]: response bodies and time formatting.
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod body;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod view;
