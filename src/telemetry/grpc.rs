//! RED metrics and trace context of gRPC servers: every call counted by service,
//! method and status code, and timed ([`super::metrics::GRPC_HANDLED`], [`super::metrics::GRPC_SECONDS`]). A
//! tower layer inside grpc-web's, so it sees native gRPC: the status comes from the
//! trailers at the end of the body (streaming RPCs report theirs when the stream
//! ends), or from the headers of a trailers-only answer; a call whose client left
//! before the end counts as CANCELLED. When tracing is on, each call gets a server span,
//! a child of the caller's `traceparent`.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use prost::Message;
use tonic::Code;

use super::metrics::{GRPC_HANDLED, GRPC_SECONDS};

/// Adds RED metrics to a gRPC server (`Server::builder().layer(GrpcMetricsLayer)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for GrpcMetrics<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    ResB: Body + Send + 'static,
{
    type Response = Response<Observed<ResB>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let call = Call::of(req.uri().path());
        // Tracing on: a server span per call, a child of the caller's traceparent, in
        // which the handler's spans run.
        let span = if super::trace::enabled() {
            let span = tracing::info_span!(
                "grpc",
                otel.name = %format!("{}/{}", call.service, call.method),
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = call.service,
                rpc.method = call.method,
                trace_id = tracing::field::Empty,
            );
            if let Some(tp) = req
                .headers()
                .get(super::trace::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
            {
                super::trace::set_parent(&span, tp);
            }
            super::trace::record_trace_id(&span);
            span
        } else {
            tracing::Span::none()
        };
        let response = span.in_scope(|| self.inner.call(req));
        Box::pin(tracing::Instrument::instrument(
            async move {
                let response = response.await?;
                // A trailers-only answer (an error before any message) has its status in
                // the headers; otherwise it comes in the trailers.
                let early = code_in(response.headers());
                Ok(response.map(|body| Observed {
                    body: Box::pin(body),
                    call: Some(call),
                    early,
                }))
            },
            span,
        ))
    }
}

/// The labels and start of one call.
#[derive(Debug)]
struct Call {
    service: &'static str,
    method: &'static str,
    started: Instant,
}

impl Call {
    /// The call to `path` (`/package.Service/Method`), labelled only if the method is
    /// one this binary's descriptor sets define: a client cannot grow the label set.
    fn of(path: &str) -> Self {
        let (service, method) = known_methods()
            .get(path)
            .copied()
            .unwrap_or(("unknown", "unknown"));
        Self {
            service,
            method,
            started: Instant::now(),
        }
    }

    fn finish(self, code: Code) {
        let code = format!("{code:?}");
        metrics::counter!(GRPC_HANDLED, "service" => self.service, "method" => self.method, "code" => code)
            .increment(1);
        metrics::histogram!(GRPC_SECONDS, "service" => self.service, "method" => self.method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// `/service/method` paths of every RPC in the embedded descriptor sets (taskwire's,
/// health's), as leaked static strings for labels.
fn known_methods() -> &'static std::collections::HashMap<String, (&'static str, &'static str)> {
    static METHODS: OnceLock<std::collections::HashMap<String, (&'static str, &'static str)>> =
        OnceLock::new();
    METHODS.get_or_init(|| {
        let mut seen = HashSet::new();
        let mut out = std::collections::HashMap::new();
        for set in [
            crate::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    let full = format!("{}.{}", file.package(), service.name());
                    let service_label: &'static str = Box::leak(full.clone().into_boxed_str());
                    for m in &service.method {
                        let path = format!("/{full}/{}", m.name());
                        if seen.insert(path.clone()) {
                            let method: &'static str =
                                Box::leak(m.name().to_string().into_boxed_str());
                            out.insert(path, (service_label, method));
                        }
                    }
                }
            }
        }
        out
    })
}

fn code_in(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// A response body that records its call's metrics when the status is known: at the
/// trailers, at the end of a trailers-only answer, or (client gone) when dropped.
pub struct Observed<B> {
    body: Pin<Box<B>>,
    call: Option<Call>,
    early: Option<Code>,
}

impl<B> std::fmt::Debug for Observed<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed")
            .field("call", &self.call)
            .finish()
    }
}

impl<B> Observed<B> {
    fn finish(&mut self, code: Code) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl<B: Body> Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = self.body.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(code_in) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Code::Internal),
            Poll::Ready(None) => {
                let code = self.early.unwrap_or(Code::Ok);
                self.finish(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        // Dropped before its status was sent: the client went away (or the server shut
        // down mid-stream).
        let code = self.early.unwrap_or(Code::Cancelled);
        self.finish(code);
    }
}
