//! OpenTelemetry traces, from outside: the gateway and sync-worker binaries export to
//! an OTLP/HTTP receiver run here (it decodes each `ExportTraceServiceRequest` with the
//! `opentelemetry-proto` definitions), and one order sent with a storefront's sampled
//! `traceparent` must come back as one trace: the gateway's HTTP span (child of the
//! storefront's span), the relay's and the persister's spans (children of it), and the
//! spans of the batches they were in, linking it. The sampler is
//! `parentbased_traceidratio` at 0, so an order sent without a sampled parent yields no
//! span at all.
//!
//! Runs the binaries: `cargo test --workspace` builds the sync-worker's next to the
//! gateway's.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use common::config::{ExposeSecret, Settings};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use reqwest::StatusCode;
use serde_json::json;
use support::*;

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace: String,
    span: String,
    parent: String,
    start_ns: u64,
    /// (trace id, span id) of each span it links to.
    links: Vec<(String, String)>,
}

type Received = Arc<Mutex<Vec<Got>>>;

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) on a free port: its endpoint
/// and what it received.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let sink = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = Arc::clone(&sink);
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let mut spans = sink.lock().unwrap();
                for rs in request.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(AnyValue::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                        spans.push(Got {
                            service: service.clone(),
                            name: s.name,
                            trace: hex(&s.trace_id),
                            span: hex(&s.span_id),
                            parent: hex(&s.parent_span_id),
                            start_ns: s.start_time_unix_nano,
                            links: s.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                        });
                    }
                }
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), got)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A binary of the workspace with the test's namespace, database and secrets, exporting
/// traces to `endpoint`.
fn spawn(bin: &std::path::Path, settings: &Settings, endpoint: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(bin);
    cmd.env("FLASHSALE__NAMESPACE", &settings.namespace)
        .env("FLASHSALE__MYSQL__URL", &settings.mysql.url)
        .env("FLASHSALE__AUTH__JWT_SECRET", settings.auth.jwt_secret.expose_secret())
        .env("FLASHSALE__ADMIN__TOKEN", settings.admin.token.expose_secret())
        .env("FLASHSALE__WORKER__METRICS_LISTEN", "127.0.0.1:0")
        .env("FLASHSALE__GATEWAY__METRICS_LISTEN", "127.0.0.1:0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        .env("OTEL_TRACES_SAMPLER_ARG", "0")
        // Export every 100 ms instead of every 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sampled_order_is_one_trace_from_the_storefront_to_the_mysql_commit() {
    let settings = test_settings();
    let (endpoint, got) = receiver().await;
    let gateway_bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_gateway"));
    let worker_bin = gateway_bin.with_file_name("sync-worker");
    assert!(worker_bin.exists(), "{worker_bin:?}: build the workspace's binaries (cargo test --workspace)");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let _running = Killed(vec![
        spawn(
            &gateway_bin,
            &settings,
            &endpoint,
            &[("FLASHSALE__GATEWAY__LISTEN", format!("127.0.0.1:{port}"))],
        ),
        spawn(&worker_bin, &settings, &endpoint, &[]),
    ]);
    let http = reqwest::Client::new();
    let started = Instant::now();
    while !http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == StatusCode::OK) {
        assert!(started.elapsed() < Duration::from_secs(30), "gateway not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let launched = http
        .post(format!("{base}/admin/v1/campaigns"))
        .bearer_auth(settings.admin.token.expose_secret())
        .json(&campaign("traced", json!([{"sku_id": "a", "stock": 10, "price_cents": 100}]), 5))
        .send()
        .await
        .unwrap();
    assert_eq!(launched.status(), StatusCode::CREATED);

    let order = |user: &str, traceparent: Option<&str>| {
        let token = token_with(
            settings.auth.jwt_secret.expose_secret(),
            json!({"sub": user, "exp": now_secs() + 600}),
        );
        let mut req = http
            .post(format!("{base}/api/v1/campaigns/traced/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", format!("key-{user}"))
            .json(&json!({"items": [{"sku_id": "a", "quantity": 1}]}));
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        req.send()
    };
    // The storefront's span: a trace id and span id of its own, sampled.
    let (trace, storefront) = (format!("{:032x}", now_secs() as u128 * 7919 + 1), "00f067aa0ba902b7");
    let sampled = order("traced-buyer", Some(&format!("00-{trace}-{storefront}-01"))).await.unwrap();
    assert_eq!(sampled.status(), StatusCode::CREATED);
    // Not sampled: no parent, and the ratio is 0.
    let unsampled = order("plain-buyer", None).await.unwrap();
    assert_eq!(unsampled.status(), StatusCode::CREATED);

    let spans = {
        let started = Instant::now();
        loop {
            let spans = got.lock().unwrap().clone();
            if ["persist order", "persist orders"].iter().all(|n| spans.iter().any(|s| &s.name == n)) {
                break spans;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no persister span after 20 s: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let one = |name: &str| {
        let found: Vec<&Got> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name:?} span: {spans:#?}");
        found[0].clone()
    };
    let http_span = one("POST /api/v1/campaigns/{campaign_id}/orders");
    assert_eq!(http_span.service, "gateway");
    assert_eq!((http_span.trace.as_str(), http_span.parent.as_str()), (trace.as_str(), storefront));
    for name in ["relay order", "persist order"] {
        let s = one(name);
        assert_eq!(s.service, "sync-worker", "{name}");
        assert_eq!(
            (s.trace.as_str(), s.parent.as_str()),
            (trace.as_str(), http_span.span.as_str()),
            "{name}"
        );
        assert!(s.start_ns >= http_span.start_ns, "{name} starts after the HTTP span");
    }
    // Each batch (the published message, the persister's transaction) links the order.
    for name in ["publish orders", "persist orders"] {
        let s = one(name);
        assert_eq!(s.trace, trace, "{name}");
        assert!(s.links.contains(&(trace.clone(), http_span.span.clone())), "{name} links the order: {s:?}");
    }
    // Every span is of that one trace: the unsampled order made none.
    assert!(spans.iter().all(|s| s.trace == trace), "{spans:#?}");
    drop(_running);
    cleanup_settings(&settings).await;
}
