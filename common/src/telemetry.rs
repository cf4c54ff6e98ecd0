//! Logging and tracing set-up shared by the binaries.
//!
//! Logs go to stderr (`RUST_LOG`, default `info`). Traces are exported only when the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set: OTLP over HTTP with protobuf bodies, `OTEL_SERVICE_NAME` (default: the
//! binary's name), `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default
//! `parentbased_traceidratio` at 0.01), W3C trace context. Only spans of the target
//! [`TARGET`] are exported, so the `debug` spans of the code cost nothing more; with no
//! endpoint there is no exporter and no tracing layer at all, and [`on`] is false, so
//! the callers skip even reading a `traceparent`.
//!
//! The sampler decides before a span is made ([`sampled`]), where an order enters (the
//! gateway) and, for the worker's spans, on the order's own `traceparent`: an order
//! that is not sampled costs no span at all (a span made only to be dropped costs the
//! gateway a few µs per request). The provider then keeps every span it is given.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use std::sync::OnceLock;

use opentelemetry::trace::{SamplingDecision, SpanKind, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler, SdkTracerProvider, ShouldSample};
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The target of the spans that are exported (an order's path through the system).
pub const TARGET: &str = "flashsale::trace";

/// Sampling ratio when `OTEL_TRACES_SAMPLER_ARG` does not say.
const DEFAULT_RATIO: f64 = 0.01;

static ON: AtomicBool = AtomicBool::new(false);

/// The sampler `OTEL_TRACES_SAMPLER` names, set once traces are exported.
static SAMPLER: OnceLock<Sampler> = OnceLock::new();

/// Whether traces are exported (an OTLP endpoint was given at start-up).
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Keeps the exporter alive; dropping it sends what is buffered (bounded by the
/// exporter's timeout).
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("trace exporter shutdown: {e}");
            }
        }
    }
}

/// Installs the `tracing` subscriber: logs to stderr, and spans of [`TARGET`] to an
/// OTLP/HTTP collector when one is configured. Calling it twice is harmless (the
/// second call installs nothing). A bad OTEL setting is reported and tracing stays off:
/// it never stops a binary.
pub fn init(service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter);
    let provider = if endpoint_given() {
        let configured = sampler(
            std::env::var("OTEL_TRACES_SAMPLER").ok().as_deref(),
            std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().as_deref(),
        );
        match configured.and_then(|s| provider(service).map(|p| (s, p))) {
            Ok((s, p)) => {
                let _ = SAMPLER.set(s);
                Some(p)
            }
            Err(e) => {
                eprintln!("tracing stays off: {e}");
                None
            }
        }
    } else {
        None
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("flashsale"))
            .with_filter(filter_fn(|meta| meta.target() == TARGET))
    });
    if tracing_subscriber::registry().with(logs).with(traces).try_init().is_err() {
        return Telemetry::default();
    }
    if provider.is_some() {
        ON.store(true, Ordering::Relaxed);
    }
    Telemetry { provider }
}

fn endpoint_given() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

fn provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| e.to_string())?;
    let name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.trim().is_empty());
    let resource = Resource::builder().with_service_name(name.unwrap_or_else(|| service.to_owned())).build();
    // Every span reaching the provider was sampled already (`sampled`).
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build())
}

/// Whether an order entering with this `traceparent` (`None`: none, or unreadable) is
/// traced: the configured sampler's decision (a sampled parent samples it under the
/// default `parentbased_*`; a root, a fresh trace id's ratio). False while traces are
/// not exported.
pub fn sampled(traceparent: Option<&str>) -> bool {
    let Some(sampler) = SAMPLER.get() else {
        return false;
    };
    let parent = traceparent.and_then(context_of);
    let trace_id = match &parent {
        Some(cx) => cx.span().span_context().trace_id(),
        None => RandomIdGenerator::default().new_trace_id(),
    };
    let result = sampler.should_sample(parent.as_ref(), trace_id, "order", &SpanKind::Server, &[], &[]);
    result.decision == SamplingDecision::RecordAndSample
}

/// The sampler `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name (the
/// specification's names; unset: `parentbased_traceidratio`, ratio 0.01).
fn sampler(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, String> {
    let ratio = match arg.map(str::trim).filter(|a| !a.is_empty()) {
        None => DEFAULT_RATIO,
        Some(a) => match a.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => return Err(format!("OTEL_TRACES_SAMPLER_ARG must be a ratio in [0, 1], not {a:?}")),
        },
    };
    let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
    Ok(match name.map(str::trim).unwrap_or("") {
        "" | "parentbased_traceidratio" => parent_based(Sampler::TraceIdRatioBased(ratio)),
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "parentbased_always_on" => parent_based(Sampler::AlwaysOn),
        "parentbased_always_off" => parent_based(Sampler::AlwaysOff),
        other => return Err(format!("OTEL_TRACES_SAMPLER {other:?} is not supported")),
    })
}

/// The context a W3C `traceparent` names (`None`: malformed).
fn context_of(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of the span a `traceparent` names (a storefront's, or an
/// order's carried through the outbox); a malformed one is ignored.
pub fn set_parent(span: &Span, traceparent: &str) {
    if let Some(cx) = context_of(traceparent) {
        let _ = span.set_parent(cx);
    }
}

/// Adds a link from `span` to the span a `traceparent` names (a batch to each sampled
/// order it handles).
pub fn add_link(span: &Span, traceparent: &str) {
    if let Some(cx) = context_of(traceparent) {
        span.add_link(cx.span().span_context().clone());
    }
}

/// `span`'s W3C `traceparent` when it is sampled (what travels on with an order), else
/// `None`.
pub fn traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled())
        .then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_follow_the_specification_names() {
        assert!(matches!(sampler(None, None), Ok(Sampler::ParentBased(_))));
        assert!(matches!(sampler(Some("always_on"), None), Ok(Sampler::AlwaysOn)));
        assert!(
            matches!(sampler(Some("traceidratio"), Some("0.5")), Ok(Sampler::TraceIdRatioBased(r)) if r == 0.5)
        );
        assert!(
            matches!(sampler(Some("traceidratio"), None), Ok(Sampler::TraceIdRatioBased(r)) if r == DEFAULT_RATIO)
        );
        assert!(sampler(Some("jaeger_remote"), None).is_err());
        assert!(sampler(None, Some("2")).is_err());
    }

    #[test]
    fn a_traceparent_names_a_context_or_nothing() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = context_of(tp).unwrap();
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(cx.span().span_context().is_sampled());
        assert!(context_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(context_of("nonsense").is_none());
    }
}
