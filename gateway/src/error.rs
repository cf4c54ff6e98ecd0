//! The gateway's one error type: every failure a handler can have, mapped once to
//! the contract's status and `{"error": {"code", "message"}}` body. Internal details
//! are logged here, never sent.

use std::fmt;

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use engine::domain::SkuId;
use engine::EngineError;
use ledger::DbError;

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("authentication required")]
    Unauthenticated,
    #[error("invalid signature")]
    InvalidSignature,
    #[error("campaign {0} not found")]
    CampaignNotFound(String),
    #[error("sku {0} not found")]
    SkuNotFound(SkuId),
    #[error("order not found")]
    OrderNotFound,
    #[error("campaign {0} already exists")]
    CampaignExists(String),
    #[error("sku {0} is sold out")]
    SoldOut(SkuId),
    #[error("per-user limit of {limit} units reached ({held} held)")]
    PurchaseLimitExceeded { held: u64, limit: u64 },
    #[error("campaign is not active")]
    CampaignNotActive,
    #[error("order is {0} and cannot be cancelled")]
    OrderNotCancellable(&'static str),
    #[error("payment event id already used for another order")]
    EventIdConflict,
    #[error("idempotency key already used with another request")]
    IdempotencyKeyReused,
    #[error("amount {got} does not match the order total {expected}")]
    AmountMismatch { got: i64, expected: i64 },
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("a dependency is unavailable")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        use AppError::*;
        match self {
            InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Unauthenticated | InvalidSignature => StatusCode::UNAUTHORIZED,
            CampaignNotFound(_) | SkuNotFound(_) | OrderNotFound | NotFound => StatusCode::NOT_FOUND,
            CampaignExists(_)
            | SoldOut(_)
            | PurchaseLimitExceeded { .. }
            | CampaignNotActive
            | OrderNotCancellable(_)
            | EventIdConflict => StatusCode::CONFLICT,
            IdempotencyKeyReused | AmountMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        use AppError::*;
        match self {
            InvalidRequest(_) => "invalid_request",
            Unauthenticated => "unauthenticated",
            InvalidSignature => "invalid_signature",
            CampaignNotFound(_) => "campaign_not_found",
            SkuNotFound(_) => "sku_not_found",
            OrderNotFound => "order_not_found",
            CampaignExists(_) => "campaign_exists",
            SoldOut(_) => "sold_out",
            PurchaseLimitExceeded { .. } => "purchase_limit_exceeded",
            CampaignNotActive => "campaign_not_active",
            OrderNotCancellable(_) => "order_not_cancellable",
            EventIdConflict => "event_id_conflict",
            IdempotencyKeyReused => "idempotency_key_reused",
            AmountMismatch { .. } => "amount_mismatch",
            RateLimited { .. } => "rate_limited",
            PayloadTooLarge => "payload_too_large",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            Unavailable(_) => "unavailable",
            Internal(_) => "internal",
        }
    }
}

/// Every error: `{"error": {"code": "<snake_case>", "message": "..."}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let message: &dyn fmt::Display = match &self {
            AppError::Unavailable(detail) => {
                tracing::warn!(%detail, "dependency unavailable");
                &"a dependency is unavailable; retry later"
            }
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                &"internal error"
            }
            other => other,
        };
        let json = HeaderValue::from_static("application/json");
        let mut res =
            (self.status(), [(header::CONTENT_TYPE, json)], body(self.code(), message)).into_response();
        let retry = match &self {
            AppError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            AppError::Unavailable(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// An [`ErrorBody`]'s JSON text, written straight into one buffer: the text serde makes
/// of it (a test holds the two equal), without a serializer for the whole body, a
/// growing buffer or the message formatted into a `String` of its own first (serde's
/// `collect_str` escapes it as it is written).
fn body(code: &'static str, message: &dyn fmt::Display) -> Bytes {
    let mut text = Vec::with_capacity(128);
    text.extend_from_slice(br#"{"error":{"code":""#);
    // Codes are the snake_case constants of `code`: nothing to escape.
    text.extend_from_slice(code.as_bytes());
    text.extend_from_slice(br#"","message":"#);
    // Escaped: a message may quote the client's input. Writing to a Vec cannot fail.
    let _ = serde::Serializer::collect_str(&mut serde_json::Serializer::new(&mut text), message);
    text.extend_from_slice(b"}}");
    Bytes::from(text)
}

impl From<EngineError> for AppError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Unavailable(d) => AppError::Unavailable(d),
            EngineError::Backpressure(n) => AppError::Unavailable(format!("outbox backlog {n}")),
            EngineError::Protocol(d) => AppError::Internal(d),
        }
    }
}

impl From<DbError> for AppError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(_) | DbError::Timeout(_) | DbError::Statement(_) => {
                AppError::Unavailable(e.to_string())
            }
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<ledger::reconcile::ReconcileError> for AppError {
    fn from(e: ledger::reconcile::ReconcileError) -> Self {
        match e {
            ledger::reconcile::ReconcileError::Redis(e) => e.into(),
            ledger::reconcile::ReconcileError::Db(e) => e.into(),
        }
    }
}

impl From<engine::domain::InvalidInput> for AppError {
    fn from(e: engine::domain::InvalidInput) -> Self {
        AppError::InvalidRequest(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_error_body_is_the_text_serde_makes_of_it() {
        for message in [
            "sku sku-1 is sold out",
            "",
            "a \"quoted\" \\ path\n\ttab \u{1}\u{8}\u{c}\r\u{1f}\u{7f}",
            "naïve ✓ 🚀",
            "</script>",
        ] {
            let code = "invalid_request";
            let serde = serde_json::to_vec(&ErrorBody { error: ErrorDetail { code, message } }).unwrap();
            assert_eq!(body(code, &message).as_ref(), serde.as_slice(), "{message:?}");
        }
    }

    #[tokio::test]
    async fn an_answer_carries_its_status_type_retry_and_body() {
        let res = AppError::RateLimited { retry_after_secs: 3 }.into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(res.headers()[header::RETRY_AFTER], "3");
        let bytes = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(v["error"]["message"], "too many requests");
    }
}
