//! The OpenAPI document, generated from the handlers' annotations and the body types,
//! served at `GET /openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use crate::routes::{admin, health, orders, payments};
use crate::view;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Flash-sale engine",
        description = "Storefront ordering (Bearer JWT, HS256), payment callbacks (Flashsale-Signature), \
operator API (Bearer admin token). Errors are {\"error\": {\"code\", \"message\"}}."
    ),
    paths(
        orders::create, orders::get, orders::cancel, payments::callback,
        admin::launch, admin::list, admin::view, admin::tune, admin::reconciliation, admin::live,
        health::healthz, health::readyz
    ),
    components(schemas(
        orders::OrderRequest, orders::LineRequest, view::ReservationView, view::OrderView,
        view::ErrorBody, view::ErrorDetail, view::CampaignView, view::CampaignList, admin::LiveView, crate::metrics::LiveCounters, view::CampaignItemView, view::Thresholds,
        admin::LaunchRequest, admin::LaunchItemRequest, admin::TuneRequest, admin::ThresholdsRequest,
        payments::Callback, engine::domain::PaymentStatus, payments::CallbackAnswer,
        common::message::OrderItem, common::message::OrderStatus,
        ledger::reconcile::Reconciliation, ledger::reconcile::ReconciliationItem
    )),
    tags(
        (name = "storefront"), (name = "payments"), (name = "operator"), (name = "health")
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
