//! The watch service: `taskwire.v1.WatchService`, a task's progress as it happens, as
//! gRPC streams and (tonic-web) grpc-web streams for browsers.
//!
//! # Layout
//! - [`config`]: flags and `TASKWIRE_*` variables.
//! - `hub`: one NATS subscription per process, fanned out in memory.
//! - `service`: WatchTask's stream semantics (snapshot, refill, live, end) and
//!   WatchTasks' live feed.
//! - `error`: the one mapping from errors to gRPC codes.
#![forbid(unsafe_code)]

pub mod config;
mod error;
mod hub;
mod service;
mod tree;

use taskwire::{
    admin::{Admin, Checks},
    nats::{self, History},
    pb::v1::watch_service_server::WatchServiceServer,
    serve,
    store::Store,
    telemetry::metrics,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

pub use config::Config;
pub use service::{CLIENT_BUFFER, HUB_BUFFER, WatchApi};
pub use taskwire::service::Error;

/// The watch service, connected, its hub subscribed.
#[derive(Debug)]
pub struct Watch {
    /// The gRPC service, to add to a server's routes.
    pub service: WatchServiceServer<WatchApi>,
    api: WatchApi,
    client: async_nats::Client,
}

impl Watch {
    /// Connects to the database and NATS and subscribes the hub.
    pub async fn build(config: &Config) -> Result<Self, Error> {
        config.validate()?;
        let store = Store::connect(
            &config.database.database_url,
            &config.database.store_options(),
        )
        .await?;
        let (client, js) = nats::join(&config.nats, &config.streams, "taskwire-watch").await?;
        let stop = CancellationToken::new();
        let hub = hub::Hub::start(&client, stop.clone()).await?;
        // Every watch series exists from the start, at zero, so dashboards and alerts
        // see the family before the first stream.
        for rpc in ["WatchTask", "WatchTasks"] {
            metrics::gauge!(metrics::WATCH_STREAMS, "rpc" => rpc).increment(0.0);
            metrics::counter!(metrics::WATCH_EVENTS_SENT, "rpc" => rpc).increment(0);
            metrics::counter!(metrics::WATCH_SLOW_DROPPED, "rpc" => rpc).increment(0);
        }
        metrics::counter!(metrics::WATCH_RESUMES).increment(0);
        let api = WatchApi {
            hub,
            stop,
            store,
            history: History::open(&js).await?,
            js: js.clone(),
            quotas: service::Quotas {
                tenant_streams: taskwire::limits::Quota::new(config.tenant_max_streams),
                watch_all_per_key: taskwire::limits::Quota::new(config.max_watch_all_per_key),
            },
        };
        Ok(Self {
            // Requests are a task id or a filter: a few KiB at most.
            service: WatchServiceServer::new(api.clone()).max_decoding_message_size(64 * 1024),
            api,
            client,
        })
    }

    /// What the watch service's readiness depends on (NATS and the database),
    /// reported to `health` too.
    pub fn checks(&self, health: Vec<(HealthReporter, Vec<&'static str>)>) -> Checks {
        Checks {
            nats: self.client.clone(),
            store: Some(self.api.store.clone()),
            health,
        }
    }

    /// How many WatchTask streams are attached now.
    pub fn watchers(&self) -> usize {
        self.api.hub.watchers()
    }

    /// Keeps the hub routing until `shutdown`; then ends every open stream with a
    /// status the client can resume from, so a server's drain does not wait for
    /// clients to leave, and unsubscribes.
    pub async fn run(self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
        self.api.stop.cancel();
        self.api.store.close().await;
    }
}

/// Runs the watch service alone on `listener` until `shutdown`; its admin listener
/// (metrics, liveness, readiness) beside it.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let admin = Admin::bind(config.admin_listen).await?;
    let watch = Watch::build(&config).await?;
    let addr = listener.local_addr().map_err(|source| serve::BindError {
        addr: config.listen,
        source,
    })?;
    let serving = config.serve.serving(addr, &watch.api.store)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let checks = watch.checks(vec![(
        health,
        vec![<WatchServiceServer<WatchApi> as tonic::server::NamedService>::NAME],
    )]);
    let admin = tokio::spawn(admin.run(checks, shutdown.clone()));
    let routes = serve::with_introspection(Routes::new(watch.service.clone()), health_service);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "watch listening");
    }
    let running = tokio::spawn(watch.run(shutdown.clone()));
    let served = serve::serve(
        routes,
        &[<WatchServiceServer<WatchApi> as tonic::server::NamedService>::NAME],
        listener,
        &serving,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = running.await;
    let _ = admin.await;
    served?;
    Ok(())
}
