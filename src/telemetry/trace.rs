//! Distributed tracing: one trace per task, from the caller through the api, the
//! task's NATS message, the worker's attempt, its events, to the recorder and the
//! watch service. W3C `traceparent` carries the context: in gRPC metadata (the
//! caller's), in `TaskMessage.traceparent` (durable with the outbox, so a task the
//! relay publishes keeps its trace) and as the `traceparent` header of task messages
//! and events.
//!
//! Spans are exported over OTLP when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with `OTEL_EXPORTER_OTLP_PROTOCOL`
//! `grpc` or `http/protobuf` (the default) and `OTEL_SERVICE_NAME` (default: the
//! binary's name). When it is not set, nothing here does any work: [`enabled`] is
//! false and no context is read, made or carried.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::{
    Context,
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (gRPC metadata and NATS) that carries a W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: only then is trace context read and carried.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter")]
pub struct SetupError(#[source] opentelemetry_otlp::ExporterBuildError);

/// The tracer provider of a process that exports spans, if it does; flushes on drop.
#[derive(Debug)]
pub struct Exporter(SdkTracerProvider);

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("taskwire: flushing traces: {e}");
        }
    }
}

/// The OTLP exporter the environment asks for, or `None` when no endpoint is set.
pub(crate) fn exporter(service: &str) -> Result<Option<Exporter>, SetupError> {
    let endpoint_set = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if !endpoint_set {
        return Ok(None);
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    let exporter = match protocol.as_str() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(Protocol::Grpc)
            .build(),
        _ => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build(),
    }
    .map_err(SetupError)?;
    let resource = if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        Resource::builder().build()
    } else {
        Resource::builder()
            .with_service_name(service.to_string())
            .build()
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(Exporter(provider)))
}

impl Exporter {
    /// The tracing layer that turns spans into OpenTelemetry spans.
    pub(crate) fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.0.tracer("taskwire"))
    }
}

/// The `traceparent` of `span` (the current span if `None`), when tracing is enabled
/// and the span belongs to a trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The current span's `traceparent` (see [`traceparent_of`]).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// Makes `span` a child of the remote span a `traceparent` names (nothing when tracing
/// is off, or the value is empty or malformed).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if !enabled() || traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let cx: Context = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Records the trace id of `span` in its `trace_id` field (declared empty), so log
/// lines in it carry it; nothing when tracing is off.
pub fn record_trace_id(span: &tracing::Span) {
    if !enabled() {
        return;
    }
    let id = span.context().span().span_context().trace_id();
    if id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(id));
    }
}
