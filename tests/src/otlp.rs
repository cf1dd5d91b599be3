//! An OTLP trace receiver for tests (no collector binary is needed): gRPC
//! (`TraceService/Export`) and HTTP (`POST /v1/traces`, protobuf) on free loopback
//! ports, keeping every span it receives with its service's name.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use prost::Message;
use tokio_util::sync::CancellationToken;

/// One received span and the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The sender's `service.name`.
    pub service: String,
    /// The span.
    pub span: Span,
}

type Store = Arc<Mutex<Vec<Received>>>;

/// A receiver on two ports; stops on drop.
#[derive(Debug)]
pub struct OtlpReceiver {
    /// `http://127.0.0.1:<port>` of the gRPC receiver (OTEL_EXPORTER_OTLP_ENDPOINT for
    /// `grpc`).
    pub grpc_endpoint: String,
    /// `http://127.0.0.1:<port>` of the HTTP receiver (OTEL_EXPORTER_OTLP_ENDPOINT for
    /// `http/protobuf`; the exporter appends /v1/traces).
    pub http_endpoint: String,
    spans: Store,
    stop: CancellationToken,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn keep(store: &Store, req: ExportTraceServiceRequest) {
    let mut spans = store.lock().expect("lock");
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                spans.push(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Grpc(Store);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl OtlpReceiver {
    /// Starts both receivers.
    pub async fn start() -> Self {
        let spans: Store = Arc::default();
        let stop = CancellationToken::new();

        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let grpc_addr: SocketAddr = grpc.local_addr().expect("addr");
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream_incoming(grpc),
                    stop.clone().cancelled_owned(),
                ),
        );

        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http_addr: SocketAddr = http.local_addr().expect("addr");
        let store = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(req) => {
                            keep(&store, req);
                            (
                                axum::http::StatusCode::OK,
                                [("content-type", "application/x-protobuf")],
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(_) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            [("content-type", "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(tonic::service::Routes::from(app))
                .serve_with_incoming_shutdown(
                    tokio_stream_incoming(http),
                    stop.clone().cancelled_owned(),
                ),
        );
        Self {
            grpc_endpoint: format!("http://{grpc_addr}"),
            http_endpoint: format!("http://{http_addr}"),
            spans,
            stop,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("lock").clone()
    }
}

fn tokio_stream_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    taskwire::serve::incoming(listener)
}
