//! The operator files under `ops/`: every metric the Grafana dashboard and the alert
//! rules query is one the gateway or the sync-worker exports (`promtool check rules`
//! checks the rules' syntax in scripts/test.sh).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

/// Metric families the two binaries export, every labelled family touched once so it
/// shows in the text exposition.
fn exported() -> BTreeSet<String> {
    let g = gateway::metrics::Metrics::new().unwrap();
    g.http_requests.with_label_values(&["/r", "GET", "200"]).inc();
    g.http_latency.with_label_values(&["/r"]).observe(0.001);
    g.reservation("reserved", 0.001);
    g.ready.with_label_values(&["redis"]).set(1);
    let w = sync_worker::metrics::Metrics::new().unwrap();
    w.persisted.with_label_values(&["inserted"]).inc();
    w.dead_lettered.with_label_values(&["corrupt"]).inc();
    w.dead_lettered_orders.with_label_values(&["rejected"]).inc();
    w.expired.with_label_values(&["timer"]).inc();
    w.sweep_repairs.with_label_values(&["released"]).inc();
    let text = g.render(engine::EngineStats::default()) + &w.render();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Every `flashsale_*` name in `text`, less the histogram series suffixes.
fn named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(i) = text[at..].find("flashsale_") {
        let start = at + i;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        // `flashsale-gateway` job names and the like are not metric names.
        if start == 0 || !bytes[start - 1].is_ascii_alphanumeric() {
            names.insert(base.to_owned());
        }
        at = end.max(start + 1);
    }
    names
}

fn ops_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../ops/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_dashboard_and_the_alerts_query_exported_metrics() {
    let exported = exported();
    assert!(
        exported.contains("flashsale_reservations_total") && exported.contains("flashsale_outbox_entries")
    );
    let dashboard = ops_file("grafana/flashsale.json");
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let panels = json["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "an operator's view of a sale");
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = named(expr);
            assert!(!names.is_empty(), "panel {}: {expr} names no flashsale metric", p["title"]);
            for n in names {
                assert!(exported.contains(&n), "panel {}: {n} is not exported ({exported:?})", p["title"]);
            }
        }
    }
    let rules = ops_file("alerts.yml");
    let in_rules = named(&rules);
    for needed in [
        "flashsale_outbox_entries",
        "flashsale_reconciliation_drift_units",
        "flashsale_ready",
        "flashsale_reserve_duration_seconds",
        "flashsale_dead_lettered_orders_total",
        "flashsale_campaign_errors_total",
        "flashsale_restored_shards_total",
    ] {
        assert!(in_rules.contains(needed), "an alert on {needed}");
    }
    for n in in_rules {
        assert!(exported.contains(&n), "alerts.yml: {n} is not exported");
    }
}

#[test]
fn names_are_read_whole() {
    assert_eq!(
        named("rate(flashsale_x_bucket[1m]) + flashsale_y_total job=\"flashsale-gateway\""),
        BTreeSet::from(["flashsale_x".to_owned(), "flashsale_y_total".to_owned()])
    );
}
