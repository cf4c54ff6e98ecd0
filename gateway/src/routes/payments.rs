//! Payment provider callbacks, signed with HMAC-SHA256.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use common::config::ExposeSecret;
use common::message::OrderStatus;
use engine::domain::{ConfirmOutcome, EventId, OrderId, PaymentStatus};
use serde::{Deserialize, Serialize};

use crate::auth::{verify_signature, SIGNATURE_HEADER};
use crate::body::{parse, RawBody};
use crate::error::{AppError, ErrorBody};
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Callback {
    event_id: String,
    order_id: String,
    amount_cents: i64,
    status: PaymentStatus,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallbackAnswer {
    event_id: String,
    order_id: String,
    /// The order's status after this event.
    order_status: String,
    /// What this event did: `paid`, `refund_required`, `failed_noted`, `duplicate`, `no_effect`.
    result: &'static str,
}

/// `POST /api/v1/payments/callback`
#[utoipa::path(post, path = "/api/v1/payments/callback", tag = "payments",
    params(("Flashsale-Signature" = String, Header, description = "t=<unix secs>,v1=<hex HMAC-SHA256(secret, \"<t>.<raw body>\")>[,v1=...]")),
    request_body = Callback,
    responses((status = 200, body = CallbackAnswer), (status = 400, body = ErrorBody, description = "invalid_request"), (status = 401, body = ErrorBody, description = "invalid_signature"), (status = 404, body = ErrorBody, description = "order_not_found"), (status = 409, body = ErrorBody, description = "event_id_conflict"), (status = 422, body = ErrorBody, description = "amount_mismatch")))]
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<CallbackAnswer>, AppError> {
    let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let now_secs = engine::clock::now_ms() / 1000;
    let p = &state.settings.payments;
    verify_signature(header, &body, p.webhook_secret.expose_secret(), now_secs, p.signature_tolerance_secs)?;
    let cb: Callback = parse(&body)?;
    let event = EventId::parse(&cb.event_id)?;
    let order = OrderId::parse(&cb.order_id).map_err(|_| AppError::OrderNotFound)?;
    let (result, order_status) =
        match state.engine.confirm(&order, &event, cb.amount_cents, cb.status).await? {
            ConfirmOutcome::Paid => ("paid", OrderStatus::Paid),
            ConfirmOutcome::RefundRequired => ("refund_required", OrderStatus::RefundRequired),
            ConfirmOutcome::FailedNoted(s) => ("failed_noted", s),
            ConfirmOutcome::Duplicate(s) => ("duplicate", s),
            ConfirmOutcome::AlreadySettled(s) => ("no_effect", s),
            ConfirmOutcome::AmountMismatch { total_cents } => {
                return Err(AppError::AmountMismatch { got: cb.amount_cents, expected: total_cents })
            }
            ConfirmOutcome::EventConflict => return Err(AppError::EventIdConflict),
            ConfirmOutcome::NotFound => return Err(AppError::OrderNotFound),
        };
    let order_status = order_status.as_str().to_owned();
    Ok(Json(CallbackAnswer { event_id: cb.event_id, order_id: cb.order_id, order_status, result }))
}
