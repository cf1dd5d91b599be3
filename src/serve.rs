//! Serving gRPC the same way in every process: native gRPC and grpc-web (HTTP/1.1
//! accepted, tonic-web) on one port, CORS for browser origins, server reflection (v1
//! and v1alpha: grpcurl 1.8 speaks only v1alpha) and grpc.health.v1.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, service::Routes};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::pb;

/// Which browser origins may call: none (the default for servers), a list, or any
/// (`*`, for `taskwire dev`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cors {
    /// No browser origin may call (the default for servers).
    #[default]
    None,
    /// These origins may call.
    Origins(Vec<String>),
    /// Any origin may call (`taskwire dev`).
    Any,
}

impl Cors {
    /// Parses `--cors-origins`: empty = none, `*` = any, else a comma-separated list.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self::None);
        }
        if s == "*" {
            return Ok(Self::Any);
        }
        let origins: Vec<String> = s.split(',').map(|o| o.trim().to_string()).collect();
        for o in &origins {
            if !(o.starts_with("http://") || o.starts_with("https://"))
                || HeaderValue::from_str(o).is_err()
            {
                return Err(format!(
                    "{o:?} is not an origin like https://app.example.com"
                ));
            }
        }
        Ok(Self::Origins(origins))
    }

    fn layer(&self) -> CorsLayer {
        let allow = match self {
            Cors::None => AllowOrigin::list(Vec::<HeaderValue>::new()),
            Cors::Origins(list) => {
                AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
            }
            Cors::Any => AllowOrigin::any(),
        };
        let h = HeaderName::from_static;
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::POST, Method::OPTIONS])
            .allow_headers([
                h("content-type"),
                h("x-grpc-web"),
                h("x-user-agent"),
                h("grpc-timeout"),
                h("authorization"),
                h("taskwire-caller"),
            ])
            .expose_headers([
                h("grpc-status"),
                h("grpc-message"),
                h("grpc-status-details-bin"),
            ])
            .max_age(Duration::from_secs(24 * 3600))
    }
}

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct BindError {
    /// The address asked for.
    pub addr: std::net::SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Binds a TCP listener, saying which address failed.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Adds reflection (v1 and v1alpha) and the given health service to `routes`.
pub fn with_introspection(
    routes: Routes,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Routes {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder()
        .build_v1()
        .expect("embedded descriptor sets are valid");
    let v1alpha = builder()
        .build_v1alpha()
        .expect("embedded descriptor sets are valid");
    routes
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
}

/// Serves `routes` on `listener` until `shutdown`, then drains in-flight calls.
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    cors: &Cors,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(cors.layer())
        .layer(tonic_web::GrpcWebLayer::new())
        // Inside grpc-web's: it sees native gRPC, whatever the client spoke; outside
        // the oversize rewrite: it counts the code the client gets.
        .layer(crate::telemetry::grpc::GrpcMetricsLayer)
        .layer(tower::util::MapResponseLayer::new(
            oversize_is_resource_exhausted,
        ))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming(listener), shutdown.cancelled_owned())
        .await
}

/// Accepted connections with Nagle's algorithm off: small gRPC frames (a submit's
/// answer, one progress event) must leave at once, not wait for a delayed ACK (~40 ms).
pub fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// tonic rejects a request larger than the server's decoding limit with OUT_OF_RANGE
/// before our code sees it; the contract says an oversize input is RESOURCE_EXHAUSTED.
/// This rewrites exactly that status (a trailers-only response) on the way out.
pub fn oversize_is_resource_exhausted<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers();
    let out_of_range = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
    // grpc-message is percent-encoded on the wire.
    let too_large = h.get("grpc-message").is_some_and(|v| {
        let m = String::from_utf8_lossy(v.as_bytes());
        m.contains("length too large") || m.contains("length%20too%20large")
    });
    if out_of_range && too_large {
        let code = (Code::ResourceExhausted as i32).to_string();
        resp.headers_mut().insert(
            "grpc-status",
            HeaderValue::from_str(&code).expect("digits are a valid header value"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_parsing() {
        assert_eq!(Cors::parse(""), Ok(Cors::None));
        assert_eq!(Cors::parse("*"), Ok(Cors::Any));
        assert_eq!(
            Cors::parse("https://a.example, http://localhost:5173"),
            Ok(Cors::Origins(vec![
                "https://a.example".into(),
                "http://localhost:5173".into()
            ]))
        );
        assert!(Cors::parse("a.example").is_err());
    }
}
