//! The watch service: `taskwire.v1.WatchService`, a task's progress as it happens, as
//! gRPC streams and (tonic-web) grpc-web streams for browsers.
//!
//! # Layout
//! - `hub`: one NATS subscription per process, fanned out in memory.
//! - `service`: WatchTask's stream semantics: snapshot, refill, live, end.
#![forbid(unsafe_code)]

mod hub;
mod service;

use std::{net::SocketAddr, sync::Arc};

use clap::Parser;
use taskwire::{
    config::{DatabaseArgs, NatsArgs, ServeArgs, StreamArgs},
    nats,
    pb::v1::watch_service_server::WatchServiceServer,
    serve,
    store::{self, Store},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use service::{CLIENT_BUFFER, HUB_BUFFER, WatchApi};

/// taskwire watch: streams task progress (taskwire.v1.WatchService) over gRPC and
/// grpc-web.
#[derive(Debug, Clone, Parser)]
#[command(name = "taskwire-watch", version)]
pub struct Config {
    /// Address to serve gRPC and grpc-web on.
    #[arg(long, env = "TASKWIRE_WATCH_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub streams: StreamArgs,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Nats(#[from] nats::Error),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The watch service, connected, its hub subscribed.
#[derive(Debug)]
pub struct Watch {
    pub service: WatchServiceServer<WatchApi>,
    api: WatchApi,
}

impl Watch {
    /// Connects to the database and NATS and subscribes the hub; the hub runs until
    /// `shutdown`.
    pub async fn build(config: &Config, shutdown: CancellationToken) -> Result<Self, Error> {
        let store = Store::connect(
            &config.database.database_url,
            &config.database.store_options(),
        )
        .await?;
        let (client, js) = nats::join(&config.nats, &config.streams, "taskwire-watch").await?;
        let events = nats::open_stream(&js, nats::EVENTS_STREAM).await?;
        let hub = hub::Hub::start(&client, shutdown.clone()).await?;
        let api = WatchApi {
            hub,
            shutdown,
            store,
            events: Arc::new(events),
        };
        Ok(Self {
            service: WatchServiceServer::new(api.clone()),
            api,
        })
    }

    /// How many streams are attached now.
    pub fn watchers(&self) -> usize {
        self.api.hub.watchers()
    }
}

/// Runs the watch service alone on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let watch = Watch::build(&config, shutdown.clone()).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WatchServiceServer<WatchApi>>().await;
    let routes = serve::with_introspection(Routes::new(watch.service), health_service);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "watch listening");
    }
    serve::serve(routes, listener, &config.serve.cors, shutdown).await?;
    Ok(())
}
