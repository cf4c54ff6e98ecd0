//! Operator API: dead-lettered orders, listed and sent back to be applied.

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::auth::Operator;
use crate::body::JsonBody;
use crate::error::{AppError, ErrorBody};
use crate::state::AppState;
use crate::view::rfc3339;

/// Dead letters per page: default and most.
pub const PAGE_DEFAULT: u32 = 50;
pub const PAGE_MAX: u32 = 200;
/// Order ids one replay request may name at most.
pub const REPLAY_MAX_IDS: usize = 1000;
/// Longest order id (as MySQL keeps them).
const ORDER_ID_MAX: usize = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// Dead letters per page.
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<u32>,
    /// The `next` of the previous page.
    #[param(pattern = "^-?[0-9]{1,18}~[A-Za-z0-9_.-]{1,100}$")]
    cursor: Option<String>,
}

/// One dead-lettered order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    order_id: String,
    campaign_id: String,
    /// Why: `rejected` (the persister refused it for good), `delivery_limit` (RabbitMQ
    /// gave up on it), `unknown_sku`, `retries_exhausted`, `lost_by_redis`, `unreadable`.
    reason: String,
    /// When it was dead-lettered.
    at: String,
}

/// `GET /admin/v1/dead-letters`: newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterList {
    orders: Vec<DeadLetterView>,
    /// Pass as `?cursor=` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The orders to send back; absent: every dead letter.
    #[schema(max_items = 1000)]
    #[serde(default)]
    order_ids: Option<Vec<String>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayAnswer {
    /// Dead letters sent back (the sync-worker publishes them within a second).
    replayed: u64,
}

fn invalid(msg: impl Into<String>) -> AppError {
    AppError::InvalidRequest(msg.into())
}

fn order_id_ok(id: &str) -> bool {
    (1..=ORDER_ID_MAX).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), AppError> {
    let bad = || invalid("cursor is not one this API gives out");
    let (at, id) = cursor.split_once('~').ok_or_else(bad)?;
    if at.trim_start_matches('-').len() > 18 || !order_id_ok(id) {
        return Err(bad());
    }
    Ok((at.parse().map_err(|_| bad())?, id.to_owned()))
}

#[utoipa::path(get, path = "/admin/v1/dead-letters", tag = "operator", params(DeadLetterQuery),
    responses((status = 200, body = DeadLetterList), (status = 400, body = ErrorBody, description = "invalid_request")))]
pub async fn list(
    State(state): State<AppState>,
    _: Operator,
    query: Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeadLetterList>, AppError> {
    let Query(q) = query.map_err(|e| invalid(format!("query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(invalid(format!("limit must be 1..={PAGE_MAX}")));
    }
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let (page, more) =
        state.db.dead_letter_page(after.as_ref().map(|(at, id)| (*at, id.as_str())), limit).await?;
    let next = if more { page.last().map(|l| format!("{}~{}", l.at_ms, l.order_id)) } else { None };
    let orders = page
        .into_iter()
        .map(|l| DeadLetterView {
            order_id: l.order_id,
            campaign_id: l.campaign_id,
            reason: l.reason,
            at: rfc3339(l.at_ms),
        })
        .collect();
    Ok(Json(DeadLetterList { orders, next }))
}

#[utoipa::path(post, path = "/admin/v1/dead-letters/replay", tag = "operator", request_body = ReplayRequest,
    responses((status = 200, body = ReplayAnswer), (status = 400, body = ErrorBody, description = "invalid_request")))]
pub async fn replay(
    State(state): State<AppState>,
    _: Operator,
    JsonBody(body): JsonBody<ReplayRequest>,
) -> Result<Json<ReplayAnswer>, AppError> {
    // An id that names no dead letter sends nothing back (`replayed` says how many did).
    if body.order_ids.as_ref().is_some_and(|ids| ids.len() > REPLAY_MAX_IDS) {
        return Err(invalid(format!("at most {REPLAY_MAX_IDS} order_ids")));
    }
    let replayed = state.db.request_replay(body.order_ids.as_deref()).await?;
    Ok(Json(ReplayAnswer { replayed }))
}
