//! Storefront: reserve, read and cancel orders.

use std::time::Instant;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::message::OrderStatus;
use engine::domain::{
    CampaignId, IdempotencyKey, OrderId, OrderLines, ReleaseOutcome, ReleaseReason, Reservation,
    ReserveOutcome, UserId,
};
use serde::Deserialize;
use tracing::Instrument;

use crate::auth::Buyer;
use crate::body::RawBody;
use crate::error::{AppError, ErrorBody};
use crate::state::AppState;
use crate::view::{rfc3339, OrderView, ReservationView};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// 1..=16 lines, distinct skus.
    #[schema(min_items = 1, max_items = 16)]
    items: Vec<LineRequest>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    sku_id: String,
    quantity: u64,
}

/// `POST /api/v1/campaigns/{id}/orders`
#[utoipa::path(post, path = "/api/v1/campaigns/{campaign_id}/orders", tag = "storefront",
    params(("campaign_id" = String, Path), ("Idempotency-Key" = String, Header, description = "1..=128 of [A-Za-z0-9_.:-]")),
    request_body = OrderRequest,
    responses((status = 201, body = ReservationView, description = "reserved"),
        (status = 200, body = ReservationView, description = "same key, same body: the first answer again"),
        (status = 400, body = ErrorBody, description = "invalid_request"), (status = 404, body = ErrorBody, description = "campaign_not_found / sku_not_found"), (status = 409, body = ErrorBody, description = "sold_out / purchase_limit_exceeded / campaign_not_active"), (status = 413, body = ErrorBody, description = "payload_too_large"), (status = 422, body = ErrorBody, description = "idempotency_key_reused"), (status = 429, body = ErrorBody, description = "rate_limited (Retry-After)")))]
pub async fn create(
    State(state): State<AppState>,
    Path(campaign): Path<String>,
    Buyer(user): Buyer,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    TraceParentHeader(parent): TraceParentHeader,
    RawBody(body): RawBody,
) -> Response {
    // Traced (an OTLP endpoint is set, and the sampler takes this order, a storefront's
    // `traceparent` its parent): the request's span, whose context travels on with the
    // order. Otherwise no span at all.
    let parent = parent.as_ref().and_then(|p| p.to_str().ok());
    if !common::telemetry::sampled(parent) {
        return reserve(&state, campaign, &user, key.as_ref(), &body, None).await.into_response();
    }
    let span = tracing::info_span!(
        target: common::telemetry::TARGET,
        "POST /api/v1/campaigns/{campaign_id}/orders",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/api/v1/campaigns/{campaign_id}/orders",
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(parent) = parent {
        common::telemetry::set_parent(&span, parent);
    }
    let trace = common::telemetry::traceparent(&span);
    let answer = reserve(&state, campaign, &user, key.as_ref(), &body, trace.as_deref())
        .instrument(span.clone())
        .await
        .into_response();
    span.record("http.response.status_code", answer.status().as_u16());
    answer
}

async fn reserve(
    state: &AppState,
    campaign: String,
    user: &UserId,
    key: Option<&HeaderValue>,
    body: &[u8],
    trace: Option<&str>,
) -> Result<Response, AppError> {
    let ParsedOrder { campaign, key, lines } = parse_order(campaign, key, body)?;

    let started = Instant::now();
    let outcome = state
        .engine
        .reserve_admitted(&campaign, user, &key, (&lines, trace), |meta| {
            let retry_after_secs =
                state.user_rates.check(&campaign, meta.max_user_requests_per_sec, user).err()?;
            Some(ReserveOutcome::RateLimited { retry_after_ms: retry_after_secs.saturating_mul(1000) })
        })
        .await;
    let label = match &outcome {
        Ok(o) => outcome_label(o),
        Err(_) => "unavailable",
    };
    state.metrics.reservation(label, started.elapsed().as_secs_f64());

    match outcome? {
        ReserveOutcome::Reserved(r) => {
            Ok((StatusCode::CREATED, Json(reservation_view(&campaign, r))).into_response())
        }
        ReserveOutcome::Replayed(r) => {
            Ok((StatusCode::OK, Json(reservation_view(&campaign, r))).into_response())
        }
        ReserveOutcome::KeyReused => Err(AppError::IdempotencyKeyReused),
        // Redis does not know it; MySQL may (a lost shard 0 being rebuilt): then 503.
        // Boxed, as rare: the MySQL query's future would make every request's larger.
        ReserveOutcome::CampaignNotFound if Box::pin(state.launched(campaign.as_str())).await? => {
            Err(AppError::Unavailable(format!("campaign {campaign} is being rebuilt")))
        }
        ReserveOutcome::CampaignNotFound => Err(AppError::CampaignNotFound(campaign.to_string())),
        ReserveOutcome::SkuNotFound(s) => Err(AppError::SkuNotFound(s.to_string())),
        ReserveOutcome::NotActive => Err(AppError::CampaignNotActive),
        ReserveOutcome::SoldOut(s) => Err(AppError::SoldOut(s.to_string())),
        ReserveOutcome::LimitExceeded { held, limit } => Err(AppError::PurchaseLimitExceeded { held, limit }),
        ReserveOutcome::RateLimited { retry_after_ms } => {
            Err(AppError::RateLimited { retry_after_secs: retry_after_ms.div_ceil(1000).max(1) })
        }
    }
}

/// A storefront's W3C `traceparent` header, taken only while traces are exported.
pub struct TraceParentHeader(pub Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for TraceParentHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(common::telemetry::on().then(|| parts.headers.get("traceparent").cloned()).flatten()))
    }
}

/// The `Idempotency-Key` header as sent, checked by [`parse_order`] (only this header is
/// taken from the request: extracting the whole `HeaderMap` would copy every header).
pub struct IdempotencyKeyHeader(pub Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get("idempotency-key").cloned()))
    }
}

/// An order request checked against the contract, before anything is reserved.
#[derive(Debug)]
pub struct ParsedOrder {
    pub campaign: CampaignId,
    pub key: IdempotencyKey,
    pub lines: OrderLines,
}

/// Validates an order request's path id, `Idempotency-Key` header (`None`: absent) and
/// JSON body (the body within the size limit already): 400 `invalid_request`, or 404 for
/// a campaign id outside the alphabet (it cannot name a campaign).
pub fn parse_order(
    campaign: String,
    key: Option<&HeaderValue>,
    body: &[u8],
) -> Result<ParsedOrder, AppError> {
    let key = key
        .ok_or_else(|| AppError::InvalidRequest("Idempotency-Key header is required".into()))?
        .to_str()
        .map_err(|_| AppError::InvalidRequest("Idempotency-Key must be ASCII".into()))?;
    let key = IdempotencyKey::parse(key)?;
    let body: OrderRequest = crate::body::parse(body)?;
    let lines = OrderLines::parse(body.items.into_iter().map(|l| (l.sku_id, l.quantity)).collect())?;
    let campaign = CampaignId::parse(&campaign).map_err(|_| AppError::CampaignNotFound(campaign))?;
    Ok(ParsedOrder { campaign, key, lines })
}

fn outcome_label(o: &ReserveOutcome) -> &'static str {
    match o {
        ReserveOutcome::Reserved(_) => "reserved",
        ReserveOutcome::Replayed(_) => "replayed",
        ReserveOutcome::KeyReused => "key_reused",
        ReserveOutcome::CampaignNotFound => "campaign_not_found",
        ReserveOutcome::SkuNotFound(_) => "sku_not_found",
        ReserveOutcome::NotActive => "not_active",
        ReserveOutcome::SoldOut(_) => "sold_out",
        ReserveOutcome::LimitExceeded { .. } => "limit_exceeded",
        ReserveOutcome::RateLimited { .. } => "rate_limited",
    }
}

fn reservation_view(campaign: &CampaignId, r: Reservation) -> ReservationView {
    ReservationView {
        order_id: r.order_id.to_string(),
        campaign_id: campaign.to_string(),
        status: OrderStatus::PendingPayment.as_str(),
        items: r.items,
        total_cents: r.total_cents,
        expires_at: rfc3339(r.expires_ms),
    }
}

/// The order as its owner may see it: Redis holds it from the moment of the 201;
/// MySQL answers for orders Redis no longer has. Another user's order is not found.
pub async fn load_order(state: &AppState, order_id: &str, owner: &UserId) -> Result<OrderView, AppError> {
    let id = OrderId::parse(order_id).map_err(|_| AppError::OrderNotFound)?;
    if let Some(o) = state.engine.order(&id).await? {
        if o.user != owner.as_str() {
            return Err(AppError::OrderNotFound);
        }
        return Ok(o.into());
    }
    match state.db.order(id.as_str()).await? {
        Some(o) if o.user_id == owner.as_str() => Ok(o.into()),
        _ => Err(AppError::OrderNotFound),
    }
}

/// `GET /api/v1/orders/{order_id}`
#[utoipa::path(get, path = "/api/v1/orders/{order_id}", tag = "storefront", params(("order_id" = String, Path)),
    responses((status = 200, body = OrderView), (status = 404, body = ErrorBody, description = "order_not_found (also another user's order)")))]
pub async fn get(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    Buyer(user): Buyer,
) -> Result<Json<OrderView>, AppError> {
    load_order(&state, &order_id, &user).await.map(Json)
}

/// `POST /api/v1/orders/{order_id}/cancel`: pending → cancelled, units back at once;
/// cancelling a cancelled order answers the order again.
#[utoipa::path(post, path = "/api/v1/orders/{order_id}/cancel", tag = "storefront", params(("order_id" = String, Path)),
    responses((status = 200, body = OrderView), (status = 404, body = ErrorBody, description = "order_not_found"), (status = 409, body = ErrorBody, description = "order_not_cancellable")))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    Buyer(user): Buyer,
) -> Result<Json<OrderView>, AppError> {
    let order = load_order(&state, &order_id, &user).await?;
    let id = OrderId::parse(&order.order_id).map_err(|_| AppError::OrderNotFound)?;
    match state.engine.release(&id, ReleaseReason::Cancelled).await? {
        ReleaseOutcome::Released | ReleaseOutcome::NotPending(OrderStatus::Cancelled) => {}
        ReleaseOutcome::NotPending(other) => return Err(AppError::OrderNotCancellable(other.as_str())),
        ReleaseOutcome::NotFound if order.status == OrderStatus::Cancelled => {}
        ReleaseOutcome::NotFound => return Err(AppError::OrderNotCancellable(order.status.as_str())),
        ReleaseOutcome::NotDue { .. } => return Err(AppError::Internal("cancel answered not_due".into())),
    }
    load_order(&state, &order_id, &user).await.map(Json)
}
