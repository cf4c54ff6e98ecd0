//! Liveness, readiness and the metrics exposition.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::state::AppState;

/// `GET /healthz`: the process runs.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "running")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: Redis runs the reservation script, MySQL and RabbitMQ answer.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "every dependency answers"), (status = 503, description = "names what is down")))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (redis, mysql, amqp) = tokio::join!(state.engine.probe(), state.db.ping(), state.amqp.check());
    let checks = [
        ("redis", redis.map_err(|e| e.to_string())),
        ("mysql", mysql.map_err(|e| e.to_string())),
        ("rabbitmq", amqp),
    ];
    let mut body = serde_json::Map::new();
    let mut ready = true;
    for (name, result) in checks {
        state.metrics.ready.with_label_values(&[name]).set(i64::from(result.is_ok()));
        let word = match result {
            Ok(()) => "ok",
            Err(e) => {
                tracing::warn!(dependency = name, error = %e, "not ready");
                ready = false;
                "unavailable"
            }
        };
        body.insert(name.to_owned(), json!(word));
    }
    body.insert("status".to_owned(), json!(if ready { "ok" } else { "unavailable" }));
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::Value::Object(body))).into_response()
}

/// `GET /metrics` on the metrics listener.
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.in_flight.set(state.requests_in_flight());
    let text = state.metrics.render(state.engine.stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
