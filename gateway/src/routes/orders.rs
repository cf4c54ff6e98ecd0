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
    ReserveOutcome, UserId, MAX_LINES,
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

impl OrderRequest {
    /// The lines as sent, before their rules are checked.
    fn into_lines(self) -> Vec<(String, u64)> {
        self.items.into_iter().map(|l| (l.sku_id, l.quantity)).collect()
    }
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
    OrderCampaign(campaign): OrderCampaign,
    Buyer(user): Buyer,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    TraceParentHeader(parent): TraceParentHeader,
    RawBody(body): RawBody,
) -> Response {
    create_order(&state, campaign, &user, key, parent, &body).await
}

/// The campaign id of an order POST: read off the path when it has nothing to decode
/// ([`plain_order_campaign`]; how the server takes the order POST ahead of the
/// router, `server::App`), else the router's decoded `Path`.
pub struct OrderCampaign(String);

impl<S: Send + Sync> FromRequestParts<S> for OrderCampaign {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        if let Some(id) = plain_order_campaign(parts.uri.path()) {
            return Ok(Self(id.to_owned()));
        }
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(rejection) => Err(rejection.into_response()),
        }
    }
}

/// The id in `/api/v1/campaigns/{id}/orders` when it is there as it is: not empty,
/// no `/` and nothing percent-encoded (what the router's `Path` would decode). Any
/// other path is the router's.
pub fn plain_order_campaign(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/api/v1/campaigns/")?.strip_suffix("/orders")?;
    (!id.is_empty() && !id.bytes().any(|b| b == b'/' || b == b'%')).then_some(id)
}

async fn create_order(
    state: &AppState,
    campaign: String,
    user: &UserId,
    key: Option<HeaderValue>,
    parent: Option<HeaderValue>,
    body: &[u8],
) -> Response {
    // Traced (an OTLP endpoint is set, and the sampler takes this order, a storefront's
    // `traceparent` its parent): the request's span, whose context travels on with the
    // order. Otherwise no span at all.
    let parent = parent.as_ref().and_then(|p| p.to_str().ok());
    if !common::telemetry::sampled(parent) {
        return reserve(state, campaign, user, key.as_ref(), body, None).await.into_response();
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
    let answer = reserve(state, campaign, user, key.as_ref(), body, trace.as_deref())
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
        ReserveOutcome::SkuNotFound(s) => Err(AppError::SkuNotFound(s)),
        ReserveOutcome::NotActive => Err(AppError::CampaignNotActive),
        ReserveOutcome::SoldOut(s) => Err(AppError::SoldOut(s)),
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
    let mut found = [("", 0); MAX_LINES];
    let lines = match compact_lines(body, &mut found) {
        Some(n) => OrderLines::parse_from(&found[..n])?,
        None => OrderLines::parse(crate::body::parse::<OrderRequest>(body)?.into_lines())?,
    };
    let campaign = CampaignId::parse(&campaign).map_err(|_| AppError::CampaignNotFound(campaign))?;
    Ok(ParsedOrder { campaign, key, lines })
}

/// The body storefronts send, `{"items":[{"sku_id":"…","quantity":N},…]}` with no
/// spaces, read without serde into `found`: how many lines, or `None` for any other
/// text (then serde reads it and decides, as for every body). A sku's text is taken
/// only if it has nothing to unescape, a quantity only as plain digits, so what this
/// reads is what serde reads from the same body (a test compares the two); the lines'
/// own rules are [`OrderLines::parse_from`]'s either way.
fn compact_lines<'b>(body: &'b [u8], found: &mut [(&'b str, u64); MAX_LINES]) -> Option<usize> {
    let mut rest = body.strip_prefix(br#"{"items":["#)?;
    let mut n = 0;
    loop {
        rest = rest.strip_prefix(br#"{"sku_id":""#)?;
        let len = rest.iter().position(|&b| b == b'"')?;
        let (sku, after) = rest.split_at(len);
        if !sku.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'\\') {
            return None;
        }
        rest = after.strip_prefix(br#"","quantity":"#)?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        // JSON has no leading zeros; 15 digits stay far inside a u64.
        if digits == 0 || digits > 15 || (digits > 1 && rest[0] == b'0') {
            return None;
        }
        let quantity = rest[..digits].iter().fold(0u64, |q, d| q * 10 + u64::from(d - b'0'));
        *found.get_mut(n)? = (std::str::from_utf8(sku).ok()?, quantity);
        n += 1;
        rest = rest[digits..].strip_prefix(b"}")?;
        match rest {
            b"]}" => return Some(n),
            [b',', more @ ..] => rest = more,
            _ => return None,
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn only_an_order_path_whose_id_needs_no_decoding_is_read_as_it_is() {
        assert_eq!(plain_order_campaign("/api/v1/campaigns/c-1_x/orders"), Some("c-1_x"));
        for path in [
            "/api/v1/campaigns//orders",
            "/api/v1/campaigns/%63/orders",
            "/api/v1/campaigns/a/b/orders",
            "/api/v1/campaigns/c/orders/",
            "/api/v1/campaigns/c/order",
            "/api/v1/campaigns/c",
            "/api/v2/campaigns/c/orders",
            "/api/v1/orders/c",
        ] {
            assert_eq!(plain_order_campaign(path), None, "{path}");
        }
    }

    /// The lines serde reads from a body (every body's way), before the lines' rules.
    fn by_serde(body: &[u8]) -> Result<Vec<(String, u64)>, String> {
        crate::body::parse::<OrderRequest>(body).map(OrderRequest::into_lines).map_err(|e| e.to_string())
    }

    /// The lines [`compact_lines`] reads: `None` when it leaves the body to serde.
    fn by_scanner(body: &[u8]) -> Option<Vec<(String, u64)>> {
        let mut found = [("", 0); MAX_LINES];
        let n = compact_lines(body, &mut found)?;
        Some(found[..n].iter().map(|(s, q)| (s.to_string(), *q)).collect())
    }

    fn compact(lines: &[(&str, &str)]) -> Vec<u8> {
        let items: Vec<String> =
            lines.iter().map(|(sku, q)| format!(r#"{{"sku_id":"{sku}","quantity":{q}}}"#)).collect();
        format!(r#"{{"items":[{}]}}"#, items.join(",")).into_bytes()
    }

    #[test]
    fn the_compact_body_is_read_as_serde_reads_it() {
        let sixteen: Vec<(String, &str)> = (0..16).map(|i| (format!("s{i}"), "2")).collect();
        let sixteen: Vec<(&str, &str)> = sixteen.iter().map(|(s, q)| (s.as_str(), *q)).collect();
        for lines in [
            vec![("sku0", "1")],
            vec![("a", "3"), ("b-2_X", "1000000000")],
            sixteen.clone(),
            vec![("a", "0")],
            vec![("a", "1000000001")],
            vec![("a", "1"), ("a", "2")],
            vec![("", "1")],
            vec![("a.b", "1")],
            vec![("a b</script>", "1")],
        ] {
            let body = compact(&lines);
            let read = by_scanner(&body).unwrap_or_else(|| panic!("left to serde: {lines:?}"));
            assert_eq!(Ok(read), by_serde(&body), "{lines:?}");
        }
        let mut seventeen = sixteen;
        seventeen.push(("s16", "1"));
        for left in [
            compact(&seventeen),
            compact(&[]),
            compact(&[("a", "01")]),
            compact(&[("a", "-1")]),
            compact(&[("a", "1.0")]),
            compact(&[("a", "1e3")]),
            compact(&[("a", "1234567890123456")]),
            compact(&[(r"a\u0062", "1")]),
            compact(&[("a\tb", "1")]),
            br#"{"items": [{"sku_id":"a","quantity":1}]}"#.to_vec(),
            br#"{"items":[{"quantity":1,"sku_id":"a"}]}"#.to_vec(),
            br#"{"items":[{"sku_id":"a","quantity":1}]} "#.to_vec(),
            br#"{"items":[{"sku_id":"a","quantity":1}],"x":1}"#.to_vec(),
            br#"{"items":[{"sku_id":"a","quantity":1}"#.to_vec(),
            b"{\"items\":[{\"sku_id\":\"\xff\",\"quantity\":1}]}".to_vec(),
        ] {
            assert_eq!(by_scanner(&left), None, "{}", String::from_utf8_lossy(&left));
        }
    }

    proptest! {
        /// Whatever the scanner takes, with any one byte of a compact body changed or the
        /// body cut short, it reads as serde does.
        #[test]
        fn a_changed_body_is_read_as_serde_reads_it_or_left_to_serde(
            lines in prop::collection::vec(("[a-c0-9\"\\\\ .-]{0,3}", "[0-9]{1,3}"), 0..4),
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(b"{}[],:\"\\ 0129-.xaq".to_vec()),
            cut in any::<bool>(),
        ) {
            let lines: Vec<(&str, &str)> = lines.iter().map(|(s, q)| (s.as_str(), q.as_str())).collect();
            let mut body = compact(&lines);
            let i = at.index(body.len());
            if cut { body.truncate(i) } else { body[i] = byte }
            if let Some(read) = by_scanner(&body) {
                prop_assert_eq!(Ok(read), by_serde(&body), "{}", String::from_utf8_lossy(&body));
            }
        }
    }
}
