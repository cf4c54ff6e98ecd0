//! The application: shared state, the router, the guard middleware and serving.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use common::config::Settings;
use common::db::Db;
use common::http::serve_until_stopped;
use engine::Engine;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};
use tracing::Instrument;

use crate::auth::JwtVerifier;
use crate::body::MAX_BODY_BYTES;
use crate::error::AppError;
use crate::limits::UserLimits;
use crate::metrics::Metrics;
use crate::routes::{admin, health, orders, payments};

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub settings: Settings,
    pub engine: Engine,
    pub db: Db,
    pub amqp: AmqpCheck,
    pub jwt: JwtVerifier,
    pub metrics: Metrics,
    pub user_limits: UserLimits,
    in_flight: Arc<Semaphore>,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Connects to MySQL (creating the database and migrating) and starts the engine.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        let db = Db::connect_retrying(&settings.mysql, DB_STARTUP_PATIENCE).await?;
        let engine = Engine::start(&settings)?;
        let jwt = JwtVerifier::new(&settings.auth.jwt_secret, settings.auth.leeway_secs);
        let amqp = AmqpCheck::new(&settings.amqp.url, Duration::from_millis(settings.amqp.call_timeout_ms));
        let in_flight = Arc::new(Semaphore::new(settings.gateway.max_in_flight));
        Ok(Self(Arc::new(Shared {
            engine,
            db,
            amqp,
            jwt,
            metrics: Metrics::new()?,
            user_limits: UserLimits::default(),
            in_flight,
            settings,
        })))
    }
}

/// How long start-up keeps trying to reach MySQL before giving up.
pub const DB_STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// Whether RabbitMQ answers (readiness): one connection, reopened when lost, and a
/// real round trip on it (a channel opened and closed) every check, bounded by the
/// AMQP call timeout: a connection that still claims to be open proves nothing when
/// the broker is blackholed.
pub struct AmqpCheck {
    url: String,
    timeout: Duration,
    conn: Mutex<Option<lapin::Connection>>,
}

impl AmqpCheck {
    pub fn new(url: &str, timeout: Duration) -> Self {
        Self { url: url.to_owned(), timeout, conn: Mutex::new(None) }
    }

    pub async fn check(&self) -> Result<(), String> {
        let mut conn = self.conn.lock().await;
        let result = tokio::time::timeout(self.timeout, async {
            if !conn.as_ref().is_some_and(|c| c.status().connected()) {
                let fresh =
                    lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default()).await?;
                *conn = Some(fresh);
            }
            if let Some(c) = conn.as_ref() {
                let ch = c.create_channel().await?;
                ch.close(200, "readiness".into()).await?;
            }
            Ok::<(), lapin::Error>(())
        })
        .await;
        let outcome = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        // A connection that failed a round trip is not trusted again.
        *conn = None;
        Err(outcome)
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/campaigns/{campaign_id}/orders", post(orders::create))
        .route("/api/v1/orders/{order_id}", get(orders::get))
        .route("/api/v1/orders/{order_id}/cancel", post(orders::cancel))
        .route("/api/v1/payments/callback", post(payments::callback))
        .route("/admin/v1/campaigns", post(admin::launch))
        .route("/admin/v1/campaigns/{campaign_id}", get(admin::view).patch(admin::tune))
        .route("/admin/v1/campaigns/{campaign_id}/reconciliation", get(admin::reconciliation))
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
    let response = match Arc::clone(&state.in_flight).try_acquire_owned() {
        Err(_) => AppError::Unavailable("too many requests in flight".into()).into_response(),
        Ok(_permit) => {
            // Decremented on drop: also when the client goes away mid-request and
            // this future is dropped.
            let _in_flight = InFlight::enter(&state.metrics.in_flight);
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

/// One request counted in the in-flight gauge for as long as it lives.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A running gateway (tests start several in one process).
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub state: AppState,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits for both listeners.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Binds both listeners and serves until [`Running::shutdown`].
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(settings.gateway.listen).await?;
    let metrics_listener = TcpListener::bind(settings.gateway.metrics_listen).await?;
    let state = AppState::connect(settings).await?;
    let addr = listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);

    let api = serve_until_stopped("public", listener, router(state.clone()), stopped.clone());
    let metrics_app = Router::new().route("/metrics", get(health::metrics)).with_state(state.clone());
    let metrics = serve_until_stopped("metrics", metrics_listener, metrics_app, stopped.clone());
    let pruner_state = state.clone();
    let mut rx = stopped;
    let pruner = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => pruner_state.user_limits.prune(),
                _ = rx.wait_for(|s| *s) => return,
            }
        }
    });
    tracing::info!(%addr, %metrics_addr, "gateway listening");
    Ok(Running { addr, metrics_addr, state, stop, tasks: vec![api, metrics, pruner] })
}
