//! The server: the router, the guard middleware (in-flight bound, request timeout,
//! metrics) and serving both listeners until stopped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::handler::Handler;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use common::config::Settings;
use futures_util::future::Either;
use tokio::net::TcpListener;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::body::MAX_BODY_BYTES;
use crate::error::AppError;
use crate::metrics::HttpSeries;
use crate::routes::{admin, dead_letters, health, orders, payments};
use crate::state::AppState;

/// The order POST's route template (its metrics label).
const ORDERS_ROUTE: &str = "/api/v1/campaigns/{campaign_id}/orders";

/// The public service: the storefront's order POST, the one request a sale is made of,
/// recognised by its path ahead of the router ([`orders::plain_order_campaign`]: an id
/// with nothing to decode) and handled by the same handler behind the same guard and
/// body limit; every other request (other methods on that path included) goes to
/// [`router`]. The router's table walk, `MatchedPath` and path parameters were 7 % of
/// the gateway's CPU on a sold-out answer under wrk.
#[derive(Clone)]
pub struct App {
    orders: BoxCloneSyncService<Request, Response, Infallible>,
    rest: Router,
}

pub fn app(state: AppState) -> App {
    let (rest, guard) = routed(state.clone());
    let orders = tower::ServiceBuilder::new()
        .layer(guard.for_route(ORDERS_ROUTE))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .service(orders::create.with_state(state));
    App { orders: BoxCloneSyncService::new(orders), rest }
}

impl Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        <BoxCloneSyncService<Request, Response, Infallible> as Service<Request>>::Future,
        <Router as Service<Request>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready (a handler and a router).
        match self.orders.poll_ready(cx) {
            Poll::Ready(Ok(())) => Service::<Request>::poll_ready(&mut self.rest, cx),
            other => other,
        }
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if req.method() == Method::POST && orders::plain_order_campaign(req.uri().path()).is_some() {
            Either::Left(self.orders.call(req))
        } else {
            Either::Right(self.rest.call(req))
        }
    }
}

/// Every route through the generic router (the order POST included: [`app`] takes it
/// first).
pub fn router(state: AppState) -> Router {
    routed(state).0
}

fn routed(state: AppState) -> (Router, GuardLayer) {
    let routes: [(&'static str, MethodRouter<AppState>); 16] = [
        (ORDERS_ROUTE, post(orders::create)),
        ("/api/v1/orders/{order_id}", get(orders::get)),
        ("/api/v1/orders/{order_id}/cancel", post(orders::cancel)),
        ("/api/v1/payments/callback", post(payments::callback)),
        ("/admin/v1/campaigns", post(admin::launch).get(admin::list)),
        ("/admin/v1/campaigns/{campaign_id}", get(admin::view).patch(admin::tune)),
        ("/admin/v1/campaigns/{campaign_id}/reconciliation", get(admin::reconciliation)),
        ("/admin/v1/campaigns/{campaign_id}/live", get(admin::live)),
        ("/admin/v1/campaigns/{campaign_id}/history", get(admin::history)),
        ("/admin/v1/dead-letters", get(dead_letters::list)),
        ("/admin/v1/dead-letters/replay", post(dead_letters::replay)),
        ("/admin/", get(crate::dashboard::page)),
        ("/admin/dashboard.js", get(crate::dashboard::script)),
        ("/openapi.json", get(crate::openapi::document)),
        ("/healthz", get(health::healthz)),
        ("/readyz", get(health::readyz)),
    ];
    let guard = GuardLayer {
        guarded: Arc::new(Guarded {
            series: state.metrics.http_series(routes.iter().map(|(path, _)| *path)),
            state: state.clone(),
        }),
        route: None,
    };
    let mut router = Router::new();
    for (path, endpoint) in routes {
        router = router.route(path, endpoint);
    }
    let router = router
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(guard.clone())
        .with_state(state);
    (router, guard)
}

/// The guard around every route: bounds in-flight work (past `gateway.max_in_flight`:
/// 503 at once, never a queue) and each request's time (`gateway.request_timeout_ms`:
/// 503), and records the HTTP metrics. A tower layer of its own rather than
/// `middleware::from_fn`, which clones and boxes the route's service and its future on
/// every request.
#[derive(Clone)]
struct GuardLayer {
    guarded: Arc<Guarded>,
    /// The route's template when the service it wraps serves one route only (else the
    /// router's `MatchedPath` names it).
    route: Option<&'static str>,
}

impl GuardLayer {
    fn for_route(&self, route: &'static str) -> Self {
        Self { guarded: Arc::clone(&self.guarded), route: Some(route) }
    }
}

struct Guarded {
    state: AppState,
    series: HttpSeries,
}

#[derive(Clone)]
struct Guard<S> {
    inner: S,
    guarded: Arc<Guarded>,
    route: Option<&'static str>,
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard { inner, guarded: self.guarded.clone(), route: self.route }
    }
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        // MatchedPath is shared (Arc), Method is cheap: no per-request string copies.
        let (fixed, matched) = match self.route {
            Some(route) => (Some(route), None),
            None => (None, req.extensions().get::<MatchedPath>().cloned()),
        };
        let method = req.method().clone();
        // Made ready by `poll_ready`; the handler's future does nothing until polled,
        // so a request refused below never runs.
        let handled = self.inner.call(req);
        let guarded = self.guarded.clone();
        Box::pin(async move {
            let route = fixed.or_else(|| matched.as_ref().map(MatchedPath::as_str));
            let response = match guarded.state.in_flight.try_acquire() {
                Err(_) => AppError::Unavailable("too many requests in flight".into()).into_response(),
                // Given back on drop: also when the client goes away mid-request and
                // this future is dropped. The in-flight gauge is read off the permits.
                Ok(_permit) => {
                    let limit = Duration::from_millis(guarded.state.settings.gateway.request_timeout_ms);
                    // Debug level: at `info` the log layer would make and format a
                    // span for every request (RUST_LOG=info,gateway=debug shows it).
                    let span = tracing::debug_span!("request", method = %method, route = route.unwrap_or(""));
                    match within(limit, handled.instrument(span)).await {
                        Ok(Ok(res)) => res,
                        Ok(Err(never)) => match never {},
                        Err(_) => {
                            AppError::Unavailable(format!("request took over {limit:?}")).into_response()
                        }
                    }
                }
            };
            guarded.series.record(route, &method, response.status(), started.elapsed().as_secs_f64());
            Ok(response)
        })
    }
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

    tasks.push(serve::until_stopped("public", listener, app(state.clone()), stopped.clone()));
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

/// `fut`'s output, or `Elapsed` once `limit` has passed. Polled once before the timer is
/// armed: a request answered without waiting (a sold-out or ended answer from the local
/// cache) never registers a timer with the runtime, nor takes it out again.
async fn within<F: Future>(limit: Duration, fut: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut fut = std::pin::pin!(fut);
    match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        Poll::Ready(done) => Ok(done),
        Poll::Pending => tokio::time::timeout(limit, fut).await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn an_answer_ready_at_once_or_in_time_is_returned_and_a_late_one_times_out() {
        let limit = Duration::from_millis(50);
        // Ready on the first poll.
        assert_eq!(within(limit, async { 7 }).await.unwrap(), 7);
        // Pending first, ready well within the limit.
        let later = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            8
        };
        assert_eq!(within(limit, later).await.unwrap(), 8);
        // Pending past the limit: elapsed, measured from the first poll.
        let started = Instant::now();
        assert!(within(limit, std::future::pending::<()>()).await.is_err());
        assert!(started.elapsed() >= limit);
        let too_late = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            9
        };
        assert!(within(limit, too_late).await.is_err());
    }
}
