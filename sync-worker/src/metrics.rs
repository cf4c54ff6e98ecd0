//! Prometheus metrics of the sync-worker. Labels are bounded (effects, sources,
//! reasons): no campaign, user or order ids, so thousands of campaigns cost no series.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct Metrics {
    registry: Registry,
    pub relayed: IntCounter,
    pub relay_failures: IntCounter,
    pub publish_seconds: Histogram,
    pub outbox_length: IntGauge,
    pub relay_lag_seconds: prometheus::Gauge,
    pub persisted: IntCounterVec,
    pub persist_batch_size: Histogram,
    pub persist_seconds: Histogram,
    pub poisoned: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub dead_lettered_orders: IntCounterVec,
    pub persist_retries: IntCounter,
    pub expired: IntCounterVec,
    /// Orders of payment timers dropped: neither Redis nor MySQL knows their campaign.
    pub timer_orders_dropped: IntCounter,
    pub drift_units: IntGauge,
    pub inconsistent_campaigns: IntGauge,
    pub restored_campaigns: IntCounter,
    pub restored_shards: IntCounter,
    pub behind_shards: IntCounter,
    pub forgotten_orders: IntCounter,
    pub campaign_errors: IntCounterVec,
    pub retired_campaigns: IntCounter,
    pub sweep_repairs: IntCounterVec,
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> Result<Histogram, prometheus::Error> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let seconds = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
        let outbox_length = gauge(
            &r,
            "flashsale_outbox_entries",
            "Outbox stream entries not yet relayed, summed over the campaigns with work",
        )?;
        let relay_lag_seconds = prometheus::Gauge::new(
            "flashsale_relay_lag_seconds",
            "Age of the oldest entry relayed in the last round",
        )?;
        r.register(Box::new(relay_lag_seconds.clone()))?;
        let persisted = IntCounterVec::new(
            Opts::new("flashsale_persisted_events_total", "Order events applied to MySQL, by effect"),
            &["effect"],
        )?;
        r.register(Box::new(persisted.clone()))?;
        let expired = IntCounterVec::new(
            Opts::new("flashsale_expired_orders_total", "Orders expired and released, by what found them"),
            &["source"],
        )?;
        r.register(Box::new(expired.clone()))?;
        let drift_units = gauge(
            &r,
            "flashsale_reconciliation_drift_units",
            "Sum over recently active campaigns and skus of |Redis available - MySQL available|",
        )?;
        let inconsistent_campaigns = gauge(
            &r,
            "flashsale_reconciliation_inconsistent_campaigns",
            "Recently active campaigns whose Redis and MySQL disagree",
        )?;
        let me = Self {
            relayed: counter(&r, "flashsale_relayed_events_total", "Outbox entries confirmed by the broker")?,
            relay_failures: counter(
                &r,
                "flashsale_relay_failures_total",
                "Publishes nacked, returned or timed out",
            )?,
            publish_seconds: histogram(
                &r,
                "flashsale_publish_duration_seconds",
                "Publish-to-confirm time of a relay batch",
                seconds.clone(),
            )?,
            persist_batch_size: histogram(
                &r,
                "flashsale_persist_batch_size",
                "Order events per MySQL transaction",
                vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
            )?,
            persist_seconds: histogram(
                &r,
                "flashsale_persist_duration_seconds",
                "MySQL time per batch",
                seconds,
            )?,
            timer_orders_dropped: counter(
                &r,
                "flashsale_expiry_timer_orders_dropped_total",
                "Orders of payment timers dropped because neither Redis nor MySQL knows their campaign",
            )?,
            poisoned: counter(
                &r,
                "flashsale_poison_messages_total",
                "Messages sent to the dead-letter queue",
            )?,
            dead_lettered: counter_vec(
                &r,
                "flashsale_dead_lettered_events_total",
                "Order events that can never apply, sent to the dead-letter queue, by reason",
                "reason",
            )?,
            dead_lettered_orders: counter_vec(
                &r,
                "flashsale_dead_lettered_orders_total",
                "Orders in messages that reached the dead-letter queue, logged by id and kept in MySQL, by reason",
                "reason",
            )?,
            persist_retries: counter(
                &r,
                "flashsale_persist_retries_total",
                "Order events set aside to apply later (a stock move waiting for an event behind it)",
            )?,
            restored_campaigns: counter(
                &r,
                "flashsale_restored_campaigns_total",
                "Campaigns with at least one shard Redis had lost, rebuilt",
            )?,
            restored_shards: counter(
                &r,
                "flashsale_restored_shards_total",
                "Campaign shards Redis had lost, rebuilt from MySQL and the surviving shards",
            )?,
            behind_shards: counter(
                &r,
                "flashsale_behind_shards_total",
                "Campaign shards found behind MySQL (a failover to a replica that missed the last writes), held and rebuilt",
            )?,
            forgotten_orders: counter(
                &r,
                "flashsale_forgotten_orders_total",
                "Orders a shard found behind MySQL had granted that MySQL never took, dropped before its rebuild",
            )?,
            campaign_errors: counter_vec(
                &r,
                "flashsale_campaign_errors_total",
                "Errors met in one campaign by a loop over campaigns (logged, counted, the loop goes on), by task",
                "task",
            )?,
            retired_campaigns: counter(
                &r,
                "flashsale_retired_campaigns_total",
                "Finished campaigns whose per-order data left Redis",
            )?,
            sweep_repairs: counter_vec(
                &r,
                "flashsale_sweep_repairs_total",
                "Overdue MySQL orders the MySQL sweep settled, by what it took the state from",
                "source",
            )?,
            outbox_length,
            relay_lag_seconds,
            persisted,
            expired,
            drift_units,
            inconsistent_campaigns,
            registry: r,
        };
        for task in Self::CAMPAIGN_TASKS {
            me.campaign_errors.with_label_values(&[task]);
        }
        Ok(me)
    }

    /// Every task of a loop over campaigns, exported at 0 from the start (an alert's
    /// `increase` needs the series before the first error).
    pub const CAMPAIGN_TASKS: [&'static str; 8] = [
        "rebuild",
        "expiry_timer",
        "expiry_sweep",
        "mysql_sweep",
        "finish_moves",
        "relay",
        "reconcile",
        "retire",
    ];

    pub fn render(&self) -> String {
        serve::metrics_text(&self.registry)
    }
}
