//! Prometheus metrics of the gateway, served on the separate metrics listener.
//! Names follow `flashsale_<name>_<unit>_total`; labels are bounded (route
//! templates, methods, status codes, outcome names), never user or order ids.

use engine::EngineStats;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Latency buckets in seconds: fine below 10 ms, where the hot path lives.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 3.0];

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub reservations: IntCounterVec,
    pub reserve_latency: HistogramVec,
    pub in_flight: IntGauge,
    answered_locally: IntCounter,
    sent_to_redis: IntCounter,
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
        let answered_locally = IntCounter::new(
            "flashsale_cache_answers_total",
            "Reservation requests answered by the local cache without Redis",
        )?;
        let sent_to_redis = IntCounter::new(
            "flashsale_redis_reservations_total",
            "Reservation requests sent to the Redis reservation script",
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_latency.clone()))?;
        registry.register(Box::new(reservations.clone()))?;
        registry.register(Box::new(reserve_latency.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(answered_locally.clone()))?;
        registry.register(Box::new(sent_to_redis.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            http_latency,
            reservations,
            reserve_latency,
            in_flight,
            answered_locally,
            sent_to_redis,
        })
    }

    /// The text exposition, after catching the engine's counters up.
    pub fn render(&self, stats: EngineStats) -> String {
        catch_up(&self.answered_locally, stats.answered_locally);
        catch_up(&self.sent_to_redis, stats.sent_to_redis);
        serve::metrics_text(&self.registry)
    }
}

fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}
