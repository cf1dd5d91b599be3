//! The web dashboard, served by `taskwire dev` on a plain-HTTP listener of its own
//! (tonic-web answers plain HTTP/1.1 GETs on the gRPC port with 400): the files built
//! into the binary (clients/cli/build.rs), or a directory given with `--web-dir`
//! (for working on the dashboard), and `/config.js` telling the page where the gRPC
//! services are.

use std::{net::SocketAddr, path::PathBuf};

use axum::{
    Router,
    http::{StatusCode, Uri, header},
    response::IntoResponse,
    routing::get,
};
use taskwire::serve;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/dashboard.rs"));
}

/// Where the dashboard's files come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Built into this binary.
    Embedded,
    /// A directory (`--web-dir`).
    Dir(PathBuf),
}

impl Source {
    /// `--web-dir` if given, else the embedded files if this binary has them.
    pub fn pick(web_dir: Option<PathBuf>) -> Option<Self> {
        match web_dir {
            Some(dir) => Some(Source::Dir(dir)),
            None => (!embedded::FILES.is_empty()).then_some(Source::Embedded),
        }
    }
}

/// Serves the dashboard on `listener` until `shutdown`.
pub fn spawn(
    source: Source,
    listener: TcpListener,
    grpc: SocketAddr,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let config = format!("window.TASKWIRE_GRPC_URL = \"http://{grpc}\";\n");
    let router = Router::new().route(
        "/config.js",
        get(move || {
            let config = config.clone();
            async move { ([(header::CONTENT_TYPE, "text/javascript")], config) }
        }),
    );
    let router = match source {
        Source::Embedded => router.fallback(get(embedded_file)),
        Source::Dir(dir) => router.fallback_service(tower_http::services::ServeDir::new(dir)),
    };
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(Routes::from(router))
            .serve_with_incoming_shutdown(serve::incoming(listener), shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %taskwire::telemetry::chain(&e), "dashboard server stopped");
        }
    })
}

async fn embedded_file(uri: Uri) -> impl IntoResponse {
    let path = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        p => p,
    };
    match embedded::FILES.iter().find(|(name, _)| *name == path) {
        Some((_, body)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, content_type(path))],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("map" | "json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}
