//! The admin listener every process serves beside its work, plain HTTP on loopback
//! unless told otherwise (`--admin-listen`, `off` for none):
//! - `/metrics`: Prometheus text exposition of this process (taskwire's metrics, gRPC
//!   RED, process CPU, memory and file descriptors);
//! - `/livez`: 200 while the process runs (for an orchestrator's liveness probe);
//! - `/readyz`: 200 while it can do its work (NATS and, where it has one, the database
//!   answer), else 503, both with a JSON body saying which;
//! - grpc.health.v1 with the same readiness, for gRPC-aware probes.
//!
//! Readiness is checked every [`CHECK_INTERVAL`] and also drives the health service of
//! the process's own gRPC port (api, watch).

use std::{
    fmt,
    net::SocketAddr,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    nats,
    serve::{self, BindError},
    store::Store,
    telemetry::metrics,
};

/// How often readiness is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Where the admin listener listens, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// No admin listener (and no metrics recorded: nothing could read them).
    Off,
    /// Listen here.
    At(SocketAddr),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" | "" => Ok(Listen::Off),
            addr => addr
                .parse()
                .map(Listen::At)
                .map_err(|_| format!("{addr:?} is neither an address like 127.0.0.1:9501 nor off")),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Off => f.write_str("off"),
            Listen::At(a) => write!(f, "{a}"),
        }
    }
}

/// What a process's readiness depends on, and the health services that report it.
#[derive(Debug, Clone)]
pub struct Checks {
    /// The process's NATS connection.
    pub nats: async_nats::Client,
    /// Its database, if it has one.
    pub store: Option<Store>,
    /// gRPC health reporters, with the service names each reports for (`""`, the
    /// whole server, is always set too).
    pub health: Vec<(HealthReporter, Vec<&'static str>)>,
}

impl Checks {
    /// Whether NATS and the database answer now.
    async fn ready(&self) -> Readiness {
        let nats = nats::is_connected(&self.nats);
        let database = match &self.store {
            Some(store) => Some(store.ping().await.is_ok()),
            None => None,
        };
        Readiness { nats, database }
    }
}

/// The last readiness check, as `/readyz` says it.
#[derive(Debug, Clone, Copy, Default)]
struct Readiness {
    nats: bool,
    /// `None`: the process has no database.
    database: Option<bool>,
}

impl Readiness {
    fn ok(&self) -> bool {
        self.nats && self.database.unwrap_or(true)
    }

    fn json(&self) -> serde_json::Value {
        let mut checks = serde_json::json!({"nats": self.nats});
        if let Some(db) = self.database {
            checks["database"] = db.into();
        }
        serde_json::json!({"ready": self.ok(), "checks": checks})
    }
}

/// An admin listener, bound (so a busy address fails before anything starts).
#[derive(Debug)]
pub struct Admin {
    listener: Option<TcpListener>,
}

impl Admin {
    /// Binds `listen` (nothing for `off`), and installs the metrics recorder if it
    /// serves: with no listener, metrics cost nothing.
    pub async fn bind(listen: Listen) -> Result<Self, BindError> {
        let listener = match listen {
            Listen::Off => None,
            Listen::At(addr) => {
                metrics::install();
                Some(serve::bind(addr).await?)
            }
        };
        Ok(Self { listener })
    }

    /// Where it listens, if it does.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Checks readiness until `shutdown` (reporting it to `checks.health` even with no
    /// listener), and serves the admin endpoints if bound.
    pub async fn run(self, checks: Checks, shutdown: CancellationToken) {
        let ready = Arc::new(AtomicBool::new(false));
        let last = Arc::new(std::sync::Mutex::new(Readiness::default()));
        let (own_health, own_health_service) = tonic_health::server::health_reporter();
        let mut reporters = checks.health.clone();
        reporters.push((own_health, Vec::new()));
        let checking = tokio::spawn(check_loop(
            checks,
            reporters,
            ready.clone(),
            last.clone(),
            shutdown.clone(),
        ));
        if let Some(listener) = self.listener {
            let handle = metrics::install();
            let router = Router::new()
                .route(
                    "/metrics",
                    get(move || {
                        let text = metrics::render(&handle);
                        async move {
                            (
                                [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                                text,
                            )
                        }
                    }),
                )
                .route(
                    "/livez",
                    get(|| async { Json(serde_json::json!({"live": true})) }),
                )
                .route(
                    "/readyz",
                    get(move || {
                        let now = *last.lock().expect("lock");
                        async move {
                            let status = if now.ok() {
                                StatusCode::OK
                            } else {
                                StatusCode::SERVICE_UNAVAILABLE
                            };
                            (status, Json(now.json())).into_response()
                        }
                    }),
                );
            let routes = Routes::from(router).add_service(own_health_service);
            let served = tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(routes)
                .serve_with_incoming_shutdown(serve::incoming(listener), shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %crate::telemetry::chain(&e), "admin listener stopped");
            }
        }
        let _ = checking.await;
    }
}

async fn check_loop(
    checks: Checks,
    reporters: Vec<(HealthReporter, Vec<&'static str>)>,
    ready: Arc<AtomicBool>,
    last: Arc<std::sync::Mutex<Readiness>>,
    shutdown: CancellationToken,
) {
    loop {
        let now = checks.ready().await;
        *last.lock().expect("lock") = now;
        let was = ready.swap(now.ok(), Ordering::Relaxed);
        if was != now.ok() {
            tracing::info!(?now, "readiness changed");
        }
        ::metrics::gauge!(metrics::READY).set(if now.ok() { 1.0 } else { 0.0 });
        let status = if now.ok() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for (reporter, services) in &reporters {
            for name in services.iter().copied().chain([""]) {
                reporter.set_service_status(name, status).await;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
    }
    // Stopping: no longer ready, so balancers stop sending before the listener closes.
    for (reporter, services) in &reporters {
        for name in services.iter().copied().chain([""]) {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    }
}
