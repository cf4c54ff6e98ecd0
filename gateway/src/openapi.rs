//! The OpenAPI document, generated from the handlers' annotations and the body types,
//! served at `GET /openapi.json`.

use std::sync::OnceLock;

use axum::Json;
use engine::domain::{
    MAX_ID_LEN, MAX_LINES, MAX_QUANTITY, MAX_TOKEN_LEN, OPERATOR_ID_PATTERN, ORDER_ID_PATTERN, TOKEN_PATTERN,
};
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::routes::{admin, dead_letters, health, orders, payments};
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
        admin::launch, admin::list, admin::view, admin::tune, admin::reconciliation, admin::live, admin::history,
        dead_letters::list, dead_letters::replay,
        health::healthz, health::readyz
    ),
    components(schemas(
        orders::OrderRequest, orders::LineRequest, view::ReservationView, view::OrderView,
        crate::error::ErrorBody, crate::error::ErrorDetail, view::CampaignView, view::CampaignList, admin::LiveView, crate::metrics::LiveCounters, view::CampaignItemView, view::Thresholds,
        admin::LaunchRequest, admin::LaunchItemRequest, admin::TuneRequest, admin::ThresholdsRequest,
        payments::Callback, engine::domain::PaymentStatus, payments::CallbackAnswer,
        common::message::OrderItem, common::message::OrderStatus,
        ledger::reconcile::Reconciliation, ledger::reconcile::ReconciliationItem,
        admin::History, admin::ChangeView, dead_letters::DeadLetterList, dead_letters::DeadLetterView, dead_letters::ReplayRequest, dead_letters::ReplayAnswer
    )),
    tags(
        (name = "storefront"), (name = "payments"), (name = "operator"), (name = "health")
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`
pub async fn document() -> Json<Value> {
    static DOC: OnceLock<Value> = OnceLock::new();
    Json(DOC.get_or_init(described).clone())
}

/// The generated document, completed with what the derives cannot say (and what
/// every route shares, so the handlers' annotations list only their own answers): the id
/// patterns and number ranges the parsers enforce (taken from their constants), who
/// may call what (security), the answers every route can give (400 for a bad body or
/// parameter, 401, 413, 503 with `Retry-After`), and the links a client follows from
/// a reservation to its order and from a launch to the campaign.
pub fn described() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    unsigned_32(&mut doc);
    constrain_schemas(&mut doc);
    let paths: Vec<String> =
        doc["paths"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
    for path in paths {
        let Some(ops) = doc["paths"][&path].as_object_mut() else { continue };
        for (method, op) in ops.iter_mut() {
            describe_operation(&path, method, op);
        }
    }
    doc["components"]["securitySchemes"] = json!({
        "storefront": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                       "description": "HS256 JWT of the buyer (`sub` = user id, `exp` required)"},
        "operator": {"type": "http", "scheme": "bearer", "description": "the admin token (`admin.token`)"}
    });
    doc
}

/// utoipa writes a `u32` as `format: int32, minimum: 0`, but `int32` stops at 2³¹−1
/// and the server takes (and answers) values up to 2³²−1: say `int64` with the `u32`
/// maximum instead, everywhere (bodies, answers, parameters).
fn unsigned_32(v: &mut Value) {
    match v {
        Value::Object(o) => {
            let unsigned = o.get("format").and_then(Value::as_str) == Some("int32")
                && o.get("minimum").and_then(Value::as_i64).is_some_and(|m| m >= 0);
            if unsigned {
                o.insert("format".into(), json!("int64"));
                o.entry("maximum").or_insert(json!(u32::MAX));
            }
            o.values_mut().for_each(unsigned_32);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_32),
        _ => {}
    }
}

/// Field constraints of the request and response bodies, by schema and field.
fn constrain_schemas(doc: &mut Value) {
    let id = json!({"pattern": OPERATOR_ID_PATTERN, "minLength": 1, "maxLength": MAX_ID_LEN});
    let token = json!({"pattern": TOKEN_PATTERN, "minLength": 1, "maxLength": MAX_TOKEN_LEN});
    let order_id = json!({"pattern": ORDER_ID_PATTERN});
    let rules: &[(&str, &str, Value)] = &[
        (
            "OrderRequest",
            "items",
            json!({"minItems": 1, "maxItems": MAX_LINES, "uniqueItems": true,
                                         "description": "distinct skus"}),
        ),
        ("LineRequest", "sku_id", id.clone()),
        ("LineRequest", "quantity", json!({"minimum": 1, "maximum": MAX_QUANTITY})),
        ("LaunchRequest", "campaign_id", id.clone()),
        (
            "LaunchRequest",
            "name",
            json!({"minLength": 1, "maxLength": admin::MAX_NAME_CHARS,
                                         "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"}),
        ),
        ("LaunchRequest", "starts_at", json!({"format": "date-time"})),
        ("LaunchRequest", "ends_at", json!({"format": "date-time", "description": "after starts_at"})),
        ("LaunchRequest", "per_user_limit", json!({"minimum": 1, "maximum": admin::MAX_PER_USER_LIMIT})),
        ("LaunchRequest", "payment_window_secs", json!({"minimum": 1, "maximum": 86_400})),
        (
            "LaunchRequest",
            "items",
            json!({"minItems": 1, "maxItems": admin::MAX_SKUS, "uniqueItems": true,
                                          "description": "distinct skus"}),
        ),
        (
            "LaunchRequest",
            "shards",
            json!({"minimum": 1, "maximum": engine::shards::MAX_SHARDS,
                   "description": "Redis shards of every sku's stock (default 1)"}),
        ),
        ("LaunchItemRequest", "sku_id", id.clone()),
        ("LaunchItemRequest", "stock", json!({"minimum": 0, "maximum": admin::MAX_STOCK})),
        ("LaunchItemRequest", "price_cents", json!({"minimum": 0, "maximum": admin::MAX_PRICE_CENTS})),
        ("ThresholdsRequest", "max_orders_per_sec", json!({"minimum": 1, "maximum": u32::MAX})),
        ("ThresholdsRequest", "max_user_requests_per_sec", json!({"minimum": 1, "maximum": u32::MAX})),
        ("TuneRequest", "ends_at", json!({"format": "date-time", "description": "after starts_at"})),
        ("TuneRequest", "per_user_limit", json!({"minimum": 1, "maximum": admin::MAX_PER_USER_LIMIT})),
        ("Callback", "event_id", token),
        ("Callback", "order_id", order_id.clone()),
        ("Callback", "amount_cents", json!({"minimum": 0, "maximum": i64::MAX})),
        ("ReservationView", "order_id", order_id.clone()),
        ("OrderView", "order_id", order_id),
    ];
    // Examples name the campaign of the documentation (and of the fuzzing run, which
    // launches it), so generated requests also reach a live sale.
    doc["components"]["schemas"]["OrderRequest"]["example"] =
        json!({"items": [{"sku_id": "phone-128g", "quantity": 1}]});
    doc["components"]["schemas"]["LineRequest"]["example"] = json!({"sku_id": "phone-128g", "quantity": 1});
    for (schema, field, add) in rules {
        let target = &mut doc["components"]["schemas"][*schema]["properties"][*field];
        // Nullable fields come as `oneOf [null, {...}]`, or a type list.
        let target = match target.get_mut("oneOf").and_then(Value::as_array_mut) {
            Some(alts) => match alts.iter_mut().find(|a| a.get("type").is_some_and(|t| t != "null")) {
                Some(t) => t,
                None => continue,
            },
            None => target,
        };
        if let (Some(obj), Some(add)) = (target.as_object_mut(), add.as_object()) {
            for (k, v) in add {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
}

fn describe_operation(path: &str, method: &str, op: &mut Value) {
    let error = |what: &str| json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    let retry_after = json!({"Retry-After": {"description": "seconds to wait before trying again",
                                               "schema": {"type": "integer", "minimum": 1}}});
    let storefront = path.starts_with("/api/v1/") && !path.starts_with("/api/v1/payments");
    let operator = path.starts_with("/admin/v1/");
    if storefront {
        op["security"] = json!([{"storefront": []}]);
    } else if operator {
        op["security"] = json!([{"operator": []}]);
    }
    let responses = &mut op["responses"];
    let mut add = |code: &str, body: Value| {
        if responses.get(code).is_none() {
            responses[code] = body;
        }
    };
    if storefront || operator {
        add("401", error("unauthenticated"));
    }
    if op_has_input(path, method) {
        add("400", error("invalid_request: a parameter or the body breaks the constraints stated here"));
    }
    if method != "get" {
        add("413", error("payload_too_large: the body exceeds gateway.max_body_bytes"));
    }
    add("503", error("unavailable: a dependency is down or the gateway is at gateway.max_in_flight"));
    if let Some(r) = responses.get_mut("503") {
        r["headers"] = retry_after.clone();
    }
    if let Some(r) = responses.get_mut("429") {
        r["headers"] = retry_after;
    }
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        for p in params {
            let name = p["name"].as_str().unwrap_or("").to_owned();
            let schema = &mut p["schema"];
            match name.as_str() {
                "campaign_id" => {
                    schema["pattern"] = json!(OPERATOR_ID_PATTERN);
                    schema["maxLength"] = json!(MAX_ID_LEN);
                    p["example"] = json!("spring-sale");
                }
                "order_id" => schema["pattern"] = json!(ORDER_ID_PATTERN),
                "Idempotency-Key" => {
                    p["required"] = json!(true);
                    let schema = &mut p["schema"];
                    schema["pattern"] = json!(TOKEN_PATTERN);
                    schema["minLength"] = json!(1);
                    schema["maxLength"] = json!(MAX_TOKEN_LEN);
                }
                "Flashsale-Signature" => {
                    p["required"] = json!(true);
                    let schema = &mut p["schema"];
                    schema["pattern"] = json!("^t=[0-9]{1,12}(,v1=[0-9a-f]{64}){1,8}$");
                    schema["maxLength"] = json!(1024);
                }
                _ => {}
            }
        }
    }
    let links = match (method, path) {
        ("post", "/api/v1/campaigns/{campaign_id}/orders") => json!({
            "ReadOrder": {"operationId": "get", "parameters": {"order_id": "$response.body#/order_id"},
                          "description": "the order just reserved"},
            "CancelOrder": {"operationId": "cancel", "parameters": {"order_id": "$response.body#/order_id"},
                            "description": "release its units"}
        }),
        ("post", "/admin/v1/campaigns") => json!({
            "ViewCampaign": {"operationId": "view", "parameters": {"campaign_id": "$response.body#/campaign_id"}},
            "TuneCampaign": {"operationId": "tune", "parameters": {"campaign_id": "$response.body#/campaign_id"}},
            "LiveCampaign": {"operationId": "live", "parameters": {"campaign_id": "$response.body#/campaign_id"}},
            "ReconcileCampaign": {"operationId": "reconciliation",
                                  "parameters": {"campaign_id": "$response.body#/campaign_id"}},
            "OrderInCampaign": {"operationId": "create", "parameters": {"campaign_id": "$response.body#/campaign_id"}}
        }),
        _ => Value::Null,
    };
    if !links.is_null() {
        for code in ["200", "201"] {
            if let Some(r) = op["responses"].get_mut(code) {
                r["links"] = links.clone();
            }
        }
    }
}

/// Whether a request can carry something to refuse with 400 (a body, a query or a
/// constrained header).
fn op_has_input(path: &str, method: &str) -> bool {
    method != "get" || path == "/admin/v1/campaigns"
}
