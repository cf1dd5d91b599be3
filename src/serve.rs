//! Serving gRPC the same way in every process: native gRPC, grpc-web (HTTP/1.1
//! accepted, tonic-web) and REST/JSON with Server-Sent Events ([`crate::rest`]) on one
//! port, CORS for browser origins, server reflection (v1
//! and v1alpha: grpcurl 1.8 speaks only v1alpha) and grpc.health.v1; callers
//! authenticated ([`crate::auth`]) and, when configured, TLS ([`crate::tls`]).
//!
//! Safe by default, as Redis's protected mode is: a server without authentication
//! and TLS serves loopback only, unless told `--insecure` ([`check_exposure`]).

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, service::Routes};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{auth::AuthLayer, config::ConfigError, pb, tls::ServerTls};

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
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                h("content-type"),
                h("x-grpc-web"),
                h("x-user-agent"),
                h("grpc-timeout"),
                h("authorization"),
                h("taskwire-caller"),
                h("idempotency-key"),
                h("last-event-id"),
                h("cache-control"),
            ])
            .expose_headers([
                h("grpc-status"),
                h("grpc-message"),
                h("grpc-status-details-bin"),
                h("retry-after"),
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

/// How a server faces its callers: browsers' origins, authentication, TLS.
#[derive(Debug, Clone)]
pub struct Serving {
    /// Browser origins allowed over grpc-web.
    pub cors: Cors,
    /// Who may call what.
    pub auth: AuthLayer,
    /// TLS, or plaintext.
    pub tls: Option<ServerTls>,
    /// The longest a call may take to be answered (a stream: to start).
    pub request_timeout: std::time::Duration,
}

impl Serving {
    /// No authentication, plaintext: `taskwire dev` and tests, on loopback.
    pub fn open(cors: Cors) -> Self {
        Self {
            cors,
            auth: AuthLayer::open(),
            tls: None,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Refuses to serve a non-loopback address without both authentication and TLS,
/// unless `insecure` (then it is logged as a warning).
pub fn check_exposure(
    setting: &'static str,
    addr: std::net::SocketAddr,
    auth: bool,
    tls: bool,
    insecure: bool,
) -> Result<(), ConfigError> {
    if addr.ip().is_loopback() || (auth && tls) {
        return Ok(());
    }
    let missing = match (auth, tls) {
        (false, false) => "authentication (--auth keys) and TLS (--tls-cert, --tls-key)",
        (false, true) => "authentication (--auth keys)",
        _ => "TLS (--tls-cert, --tls-key)",
    };
    if insecure {
        tracing::warn!(%addr, "serving off loopback without {missing} (--insecure)");
        return Ok(());
    }
    Err(ConfigError::new(
        setting,
        format!(
            "{addr} is not a loopback address and the server has no {missing}: anyone \
             who reaches it could read and run tasks. Configure them, listen on \
             127.0.0.1, or pass --insecure (e.g. behind a proxy that terminates TLS and \
             checks callers)"
        ),
    ))
}

/// Serves `routes` (holding the gRPC services named in `services`, whose REST routes
/// are served beside them) on `listener` until `shutdown`, then drains in-flight calls.
pub async fn serve(
    routes: Routes,
    services: &[&str],
    listener: TcpListener,
    serving: &Serving,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        // Also caps a caller's grpc-timeout; a stream's handler returns once it has
        // started, so this never ends a long watch.
        .timeout(serving.request_timeout)
        .layer(serving.cors.layer())
        // REST requests become native gRPC calls through everything below.
        .layer(crate::rest::RestLayer::new(services))
        .layer(tonic_web::GrpcWebLayer::new())
        // Inside grpc-web's: it sees native gRPC, whatever the client spoke; outside
        // the oversize rewrite and authentication: it counts the code the client gets.
        .layer(crate::telemetry::grpc::GrpcMetricsLayer)
        .layer(tower::util::MapResponseLayer::new(
            oversize_is_resource_exhausted,
        ))
        .layer(serving.auth.clone())
        .add_routes(routes);
    let stop = shutdown.cancelled_owned();
    match &serving.tls {
        None => {
            router
                .serve_with_incoming_shutdown(incoming(listener), stop)
                .await
        }
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls.incoming(listener), stop)
                .await
        }
    }
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

    #[test]
    fn off_loopback_needs_auth_and_tls_or_insecure() {
        let lo: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let lo6: std::net::SocketAddr = "[::1]:1".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert!(check_exposure("--listen", lo, false, false, false).is_ok());
        assert!(check_exposure("--listen", lo6, false, false, false).is_ok());
        assert!(check_exposure("--listen", any, false, false, false).is_err());
        assert!(check_exposure("--listen", any, true, false, false).is_err());
        assert!(check_exposure("--listen", any, false, true, false).is_err());
        assert!(check_exposure("--listen", any, true, true, false).is_ok());
        assert!(check_exposure("--listen", any, false, false, true).is_ok());
    }
}
