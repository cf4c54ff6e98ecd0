//! Prometheus metrics of the gateway, served on the separate metrics listener.
//! Names follow `flashsale_<name>_<unit>_total`; labels are bounded (route
//! templates, methods, status codes, outcome names), never user or order ids.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use axum::http::{Method, StatusCode};

use engine::EngineStats;
use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use serde::Serialize;

/// Every outcome label a reservation request can end with.
pub const OUTCOMES: [&str; 10] = [
    "reserved",
    "replayed",
    "key_reused",
    "campaign_not_found",
    "sku_not_found",
    "not_active",
    "sold_out",
    "limit_exceeded",
    "rate_limited",
    "unavailable",
];

/// Latency buckets in seconds: fine below 10 ms, where the hot path lives.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 3.0];

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    reservations: IntCounterVec,
    reserve_latency: HistogramVec,
    /// The two reservation series of every outcome in [`OUTCOMES`], resolved once:
    /// `with_label_values` hashes the label and takes a lock shared by every request.
    by_outcome: Vec<(&'static str, IntCounter, Histogram)>,
    pub in_flight: IntGauge,
    /// 1 when the last readiness check found the dependency answering, else 0.
    pub ready: IntGaugeVec,
    answered_locally: IntCounter,
    sent_to_redis: IntCounter,
    buyer_loads: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("flashsale_http_requests_total", "HTTP requests by route, method and status"),
            &["route", "method", "status"],
        )?;
        let http_latency = HistogramVec::new(
            HistogramOpts::new("flashsale_http_request_duration_seconds", "HTTP request latency by route")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let reservations = IntCounterVec::new(
            Opts::new("flashsale_reservations_total", "Reservation requests by outcome"),
            &["outcome"],
        )?;
        let reserve_latency = HistogramVec::new(
            HistogramOpts::new(
                "flashsale_reserve_duration_seconds",
                "Time in the engine per reservation request, by outcome",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )?;
        let in_flight = IntGauge::new("flashsale_http_in_flight_requests", "Requests being handled")?;
        let ready = IntGaugeVec::new(
            Opts::new("flashsale_ready", "Last readiness check per dependency: 1 answering, 0 not"),
            &["dependency"],
        )?;
        let answered_locally = IntCounter::new(
            "flashsale_cache_answers_total",
            "Reservation requests answered by the local cache without Redis",
        )?;
        let sent_to_redis = IntCounter::new(
            "flashsale_redis_reservations_total",
            "Reservation requests sent to the Redis reservation script",
        )?;
        let buyer_loads = IntCounter::new(
            "flashsale_cache_buyer_loads_total",
            "Whole buyer sets read from Redis into the local cache (a campaign's first request, a reconnect)",
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_latency.clone()))?;
        registry.register(Box::new(reservations.clone()))?;
        registry.register(Box::new(reserve_latency.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(answered_locally.clone()))?;
        registry.register(Box::new(sent_to_redis.clone()))?;
        registry.register(Box::new(buyer_loads.clone()))?;
        let by_outcome = OUTCOMES
            .iter()
            .map(|o| {
                let count = reservations.get_metric_with_label_values(&[o])?;
                Ok((*o, count, reserve_latency.get_metric_with_label_values(&[o])?))
            })
            .collect::<Result<_, prometheus::Error>>()?;
        Ok(Self {
            registry,
            http_requests,
            http_latency,
            reservations,
            reserve_latency,
            by_outcome,
            in_flight,
            ready,
            answered_locally,
            sent_to_redis,
            buyer_loads,
        })
    }

    /// One reservation request that ended with `outcome` after `secs` in the engine.
    pub fn reservation(&self, outcome: &'static str, secs: f64) {
        match self.by_outcome.iter().find(|(o, _, _)| *o == outcome) {
            Some((_, count, latency)) => {
                count.inc();
                latency.observe(secs);
            }
            None => {
                self.reservations.with_label_values(&[outcome]).inc();
                self.reserve_latency.with_label_values(&[outcome]).observe(secs);
            }
        }
    }

    /// The HTTP series of `routes` (the router's path templates), each resolved on its
    /// first request (see [`HttpSeries`]).
    pub fn http_series(&self, routes: impl IntoIterator<Item = &'static str>) -> HttpSeries {
        HttpSeries {
            routes: routes.into_iter().map(|r| (r, RouteSeries::new(r))).collect(),
            unmatched: RouteSeries::new(UNMATCHED),
            requests: self.http_requests.clone(),
            latency: self.http_latency.clone(),
        }
    }

    /// The text exposition, after catching the engine's counters up.
    pub fn render(&self, stats: EngineStats) -> String {
        catch_up(&self.answered_locally, stats.answered_locally);
        catch_up(&self.sent_to_redis, stats.sent_to_redis);
        catch_up(&self.buyer_loads, stats.buyer_loads);
        serve::metrics_text(&self.registry)
    }
}

/// The route label of requests no route matched.
const UNMATCHED: &str = "unmatched";
/// Methods whose HTTP series a route resolves once (any other: a label lookup).
const METHODS: [Method; 3] = [Method::GET, Method::POST, Method::PATCH];
/// Statuses whose HTTP series a route resolves once (any other: a label lookup).
const STATUSES: [StatusCode; 17] = [
    StatusCode::OK,
    StatusCode::CREATED,
    StatusCode::ACCEPTED,
    StatusCode::NO_CONTENT,
    StatusCode::BAD_REQUEST,
    StatusCode::UNAUTHORIZED,
    StatusCode::FORBIDDEN,
    StatusCode::NOT_FOUND,
    StatusCode::METHOD_NOT_ALLOWED,
    StatusCode::CONFLICT,
    StatusCode::PAYLOAD_TOO_LARGE,
    StatusCode::UNSUPPORTED_MEDIA_TYPE,
    StatusCode::UNPROCESSABLE_ENTITY,
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::INTERNAL_SERVER_ERROR,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// The HTTP series (`flashsale_http_requests_total`, `..._request_duration_seconds`)
/// of every route, for the guard around each request. A series is resolved on the
/// route's first request with it and kept: `with_label_values` hashes every label and
/// takes a lock shared by all requests, and no series appears before its first request.
pub struct HttpSeries {
    routes: HashMap<&'static str, RouteSeries>,
    unmatched: RouteSeries,
    requests: IntCounterVec,
    latency: HistogramVec,
}

struct RouteSeries {
    route: &'static str,
    latency: OnceLock<Histogram>,
    /// By [`METHODS`] × [`STATUSES`].
    requests: Vec<OnceLock<IntCounter>>,
}

impl RouteSeries {
    fn new(route: &'static str) -> Self {
        let requests = (0..METHODS.len() * STATUSES.len()).map(|_| OnceLock::new()).collect();
        Self { route, latency: OnceLock::new(), requests }
    }
}

impl HttpSeries {
    /// One request to `route` (its template; `None`: no route matched) answered with
    /// `status` after `secs`.
    pub fn record(&self, route: Option<&str>, method: &Method, status: StatusCode, secs: f64) {
        let Some(series) = route.map_or(Some(&self.unmatched), |r| self.routes.get(r)) else {
            // A template this gateway was not built with (a test's own router).
            let route = route.unwrap_or(UNMATCHED);
            self.requests.with_label_values(&[route, method.as_str(), status.as_str()]).inc();
            self.latency.with_label_values(&[route]).observe(secs);
            return;
        };
        let label = || [series.route, method.as_str(), status.as_str()];
        let at = METHODS.iter().position(|m| m == method).zip(STATUSES.iter().position(|s| *s == status));
        match at.and_then(|(m, s)| series.requests.get(m * STATUSES.len() + s)) {
            Some(slot) => slot.get_or_init(|| self.requests.with_label_values(&label())).inc(),
            None => self.requests.with_label_values(&label()).inc(),
        }
        series.latency.get_or_init(|| self.latency.with_label_values(&[series.route])).observe(secs);
    }
}

/// This gateway's answers since it started, for the operator dashboard (which turns
/// two readings into rates). Every campaign together: metrics carry no campaign label.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LiveCounters {
    /// Reservation requests by outcome (`reserved`, `sold_out`, `rate_limited`, ...).
    pub reservations: BTreeMap<String, u64>,
    /// Answers by HTTP status, every route.
    pub http_status: BTreeMap<String, u64>,
    /// Reservation latency in the engine: cumulative counts per upper bound (seconds),
    /// every outcome.
    pub reserve_latency_le: Vec<f64>,
    pub reserve_latency_counts: Vec<u64>,
}

impl Metrics {
    pub fn live(&self) -> LiveCounters {
        let mut reservations = BTreeMap::new();
        for m in self.reservations.collect().iter().flat_map(|f| f.get_metric()) {
            let outcome = m.get_label().first().map(|l| l.value().to_owned()).unwrap_or_default();
            *reservations.entry(outcome).or_insert(0) += m.get_counter().get_value() as u64;
        }
        let mut http_status = BTreeMap::new();
        for m in self.http_requests.collect().iter().flat_map(|f| f.get_metric()) {
            if let Some(status) = m.get_label().iter().find(|l| l.name() == "status") {
                *http_status.entry(status.value().to_owned()).or_insert(0) +=
                    m.get_counter().get_value() as u64;
            }
        }
        let mut counts = vec![0u64; LATENCY_BUCKETS.len()];
        for m in self.reserve_latency.collect().iter().flat_map(|f| f.get_metric()) {
            for (i, b) in m.get_histogram().get_bucket().iter().enumerate().take(counts.len()) {
                counts[i] += b.cumulative_count();
            }
        }
        LiveCounters {
            reservations,
            http_status,
            reserve_latency_le: LATENCY_BUCKETS.to_vec(),
            reserve_latency_counts: counts,
        }
    }
}

fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_is_counted_in_its_own_series() {
        let m = Metrics::new().unwrap();
        m.reservation("sold_out", 0.0001);
        m.reservation("sold_out", 0.0001);
        m.reservation("reserved", 0.004);
        m.reservation("a_label_not_listed", 0.0001);
        let live = m.live();
        assert_eq!(live.reservations.get("sold_out"), Some(&2));
        assert_eq!(live.reservations.get("reserved"), Some(&1));
        assert_eq!(live.reservations.get("a_label_not_listed"), Some(&1), "unlisted labels still count");
        assert_eq!(
            live.reservations.get("replayed"),
            Some(&0),
            "listed outcomes are exported from the start"
        );
        // 0.0001 s falls in the first bucket (0.2 ms): three of the four; 4 ms by 5 ms.
        assert_eq!(live.reserve_latency_counts[0], 3);
        assert_eq!(live.reserve_latency_counts[5], 4);
    }

    /// The series of one route, method and status in the text exposition, or 0.
    fn requests(m: &Metrics, route: &str, method: &str, status: &str) -> u64 {
        let want = [("route", route), ("method", method), ("status", status)];
        m.http_requests
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .filter(|s| {
                want.iter().all(|(k, v)| s.get_label().iter().any(|l| l.name() == *k && l.value() == *v))
            })
            .map(|s| s.get_counter().get_value() as u64)
            .sum()
    }

    #[test]
    fn http_series_count_each_route_method_and_status_apart_and_resolve_nothing_before_use() {
        let m = Metrics::new().unwrap();
        let series = m.http_series(["/a/{id}", "/b"]);
        assert!(m.http_requests.collect().iter().all(|f| f.get_metric().is_empty()), "no series before use");
        let post = Method::POST;
        series.record(Some("/a/{id}"), &post, StatusCode::CREATED, 0.001);
        series.record(Some("/a/{id}"), &post, StatusCode::CREATED, 0.001);
        series.record(Some("/a/{id}"), &post, StatusCode::CONFLICT, 0.001);
        series.record(Some("/a/{id}"), &Method::GET, StatusCode::CREATED, 0.001);
        // Not in the resolved tables: a method, a status, a template and no route.
        series.record(Some("/a/{id}"), &Method::DELETE, StatusCode::METHOD_NOT_ALLOWED, 0.001);
        series.record(Some("/b"), &post, StatusCode::IM_A_TEAPOT, 0.001);
        series.record(Some("/c"), &post, StatusCode::OK, 0.001);
        series.record(None, &post, StatusCode::NOT_FOUND, 0.001);
        series.record(None, &post, StatusCode::NOT_FOUND, 0.001);
        assert_eq!(requests(&m, "/a/{id}", "POST", "201"), 2);
        assert_eq!(requests(&m, "/a/{id}", "POST", "409"), 1);
        assert_eq!(requests(&m, "/a/{id}", "GET", "201"), 1);
        assert_eq!(requests(&m, "/a/{id}", "DELETE", "405"), 1);
        assert_eq!(requests(&m, "/b", "POST", "418"), 1);
        assert_eq!(requests(&m, "/c", "POST", "200"), 1);
        assert_eq!(requests(&m, "unmatched", "POST", "404"), 2);
        assert_eq!(m.live().http_status.get("201"), Some(&3));
        let latency: u64 = m
            .http_latency
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|s| s.get_histogram().get_sample_count())
            .sum();
        assert_eq!(latency, 9, "every request's latency is observed");
    }
}
