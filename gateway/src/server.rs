//! The server: the router, the guard middleware (in-flight bound, request timeout,
//! metrics) and serving both listeners until stopped.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use common::config::Settings;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::body::MAX_BODY_BYTES;
use crate::error::AppError;
use crate::routes::{admin, dead_letters, health, orders, payments};
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/campaigns/{campaign_id}/orders", post(orders::create))
        .route("/api/v1/orders/{order_id}", get(orders::get))
        .route("/api/v1/orders/{order_id}/cancel", post(orders::cancel))
        .route("/api/v1/payments/callback", post(payments::callback))
        .route("/admin/v1/campaigns", post(admin::launch).get(admin::list))
        .route("/admin/v1/campaigns/{campaign_id}", get(admin::view).patch(admin::tune))
        .route("/admin/v1/campaigns/{campaign_id}/reconciliation", get(admin::reconciliation))
        .route("/admin/v1/campaigns/{campaign_id}/live", get(admin::live))
        .route("/admin/v1/campaigns/{campaign_id}/history", get(admin::history))
        .route("/admin/v1/dead-letters", get(dead_letters::list))
        .route("/admin/v1/dead-letters/replay", post(dead_letters::replay))
        .route("/admin/", get(crate::dashboard::page))
        .route("/admin/dashboard.js", get(crate::dashboard::script))
        .route("/openapi.json", get(crate::openapi::document))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Bounds in-flight work (past `gateway.max_in_flight`: 503 at once, never a queue)
/// and each request's time (`gateway.request_timeout_ms`: 503), and records metrics.
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // MatchedPath is shared (Arc), Method is cheap: no per-request string copies.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    let started = Instant::now();
    let response = match state.in_flight.try_acquire() {
        Err(_) => AppError::Unavailable("too many requests in flight".into()).into_response(),
        // Given back on drop: also when the client goes away mid-request and this
        // future is dropped. The in-flight gauge is read off the permits.
        Ok(_permit) => {
            let limit = Duration::from_millis(state.settings.gateway.request_timeout_ms);
            let span = tracing::info_span!("request", method = %method, route = %route);
            match tokio::time::timeout(limit, next.run(req).instrument(span)).await {
                Ok(res) => res,
                Err(_) => AppError::Unavailable(format!("request took over {limit:?}")).into_response(),
            }
        }
    };
    let status = response.status();
    state.metrics.http_requests.with_label_values(&[route, method.as_str(), status.as_str()]).inc();
    state.metrics.http_latency.with_label_values(&[route]).observe(started.elapsed().as_secs_f64());
    response
}

/// A running gateway (tests start several in one process).
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub state: AppState,
    tasks: serve::Tasks,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits for both listeners.
    pub async fn shutdown(self) {
        self.tasks.shutdown().await;
    }
}

/// Binds both listeners and serves until [`Running::shutdown`].
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(settings.gateway.listen).await?;
    let metrics_listener = TcpListener::bind(settings.gateway.metrics_listen).await?;
    let state = AppState::connect(settings).await?;
    let addr = listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;
    let (mut tasks, stopped) = serve::Tasks::new();

    tasks.push(serve::until_stopped("public", listener, router(state.clone()), stopped.clone()));
    let metrics_app = Router::new().route("/metrics", get(health::metrics)).with_state(state.clone());
    tasks.push(serve::until_stopped("metrics", metrics_listener, metrics_app, stopped.clone()));
    let pruner_state = state.clone();
    let mut rx = stopped;
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => pruner_state.user_rates.prune(),
                _ = rx.wait_for(|s| *s) => return,
            }
        }
    }));
    tracing::info!(%addr, %metrics_addr, "gateway listening");
    Ok(Running { addr, metrics_addr, state, tasks })
}
