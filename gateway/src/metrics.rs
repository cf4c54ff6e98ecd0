//! Prometheus metrics of the gateway, served on the separate metrics listener.
//! Names follow `flashsale_<name>_<unit>_total`; labels are bounded (route
//! templates, methods, status codes, outcome names), never user or order ids.

use std::collections::BTreeMap;

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
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_latency.clone()))?;
        registry.register(Box::new(reservations.clone()))?;
        registry.register(Box::new(reserve_latency.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(answered_locally.clone()))?;
        registry.register(Box::new(sent_to_redis.clone()))?;
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

    /// The text exposition, after catching the engine's counters up.
    pub fn render(&self, stats: EngineStats) -> String {
        catch_up(&self.answered_locally, stats.answered_locally);
        catch_up(&self.sent_to_redis, stats.sent_to_redis);
        serve::metrics_text(&self.registry)
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
}
