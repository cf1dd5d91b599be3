//! The api service: `taskwire.v1.TaskService`, the front door.
//!
//! It validates every request at the edge, stores the task and its outbox row in one
//! transaction, publishes it to TASKWIRE_TASKS and answers with the id at once. It also
//! serves gRPC server reflection (v1 and v1alpha, so grpcurl needs no proto files) and
//! `grpc.health.v1`.
//!
//! # Layout
//! - [`config`]: flags and `TASKWIRE_*` variables.
//! - `service`: the RPC handlers; request parsing.
//! - `submit`, `cancel`: the two operations with a protocol of their own.
//! - `relay`: publishes outbox rows whose submitter died.
//! - `error`: the one mapping from errors to gRPC codes.
#![forbid(unsafe_code)]

mod cancel;
pub mod config;
mod error;
mod relay;
mod service;
mod submit;

use std::{sync::Arc, time::Duration};

use taskwire::{
    nats,
    pb::{self, v1::task_service_server::TaskServiceServer},
    store::{self, Store},
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

pub use config::Config;
pub use service::TaskApi;

/// Why the api could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Nats(#[from] nats::Error),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// How often readiness is re-checked for grpc.health.v1.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the api on `listener` until `shutdown` is cancelled, then drains in-flight
/// calls and stops. Connects to the database (applying migrations) and NATS (creating
/// streams and consumers) first.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate().map_err(Error::Config)?;
    let store = Store::connect(
        &config.database.database_url,
        &config.database.store_options(),
    )
    .await?;
    let client = nats::connect(
        &config.nats.nats_url,
        "taskwire-api",
        config.nats.nats_timeout,
    )
    .await?;
    // A task message carries the whole input: NATS must take the largest one.
    let max_request = config.max_input_bytes as usize + 64 * 1024;
    let max_payload = client.server_info().max_payload;
    if max_payload < max_request {
        return Err(Error::Config(format!(
            "NATS max_payload is {max_payload} bytes, below the {max_request} a task of \
             --max-input-bytes {} needs: set max_payload (e.g. 8MB) in nats-server's config",
            config.max_input_bytes
        )));
    }
    let js = nats::jetstream(client.clone(), config.nats.nats_timeout);
    nats::setup_streams(&js, &config.streams.settings()).await?;
    let events = js
        .get_stream(nats::EVENTS_STREAM)
        .await
        .map_err(|e| nats::Error::Unavailable(e.to_string()))?;

    let api = TaskApi {
        shared: Arc::new(service::Shared {
            store: store.clone(),
            nats: client.clone(),
            js: js.clone(),
            events,
            max_input_bytes: config.max_input_bytes as usize,
            default_max_attempts: config.default_max_attempts,
            outbox_lease: config.outbox_lease,
            fault: config.fault,
        }),
    };
    let relay = relay::Relay {
        store: store.clone(),
        nats: client.clone(),
        js,
        lease: config.outbox_lease,
        poll: config.outbox_poll,
    };
    let relay = tokio::spawn(relay.run(shutdown.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TaskServiceServer<TaskApi>>().await;
    let readiness = tokio::spawn(report_readiness(
        health,
        store.clone(),
        client,
        shutdown.clone(),
    ));

    // Both reflection versions: grpcurl 1.8 speaks only v1alpha, newer tools v1.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;

    // `max_request`: room for the largest input plus the rest of the request; anything
    // larger is answered RESOURCE_EXHAUSTED by the layer below.
    tracing::info!(addr = %listener.local_addr().map_err(|e| Error::Config(e.to_string()))?, "api listening");
    let served = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            error::oversize_is_resource_exhausted,
        ))
        .add_service(TaskServiceServer::new(api).max_decoding_message_size(max_request))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        )
        .await;
    shutdown.cancel();
    let _ = relay.await;
    let _ = readiness.await;
    store.close().await;
    served?;
    Ok(())
}

/// Keeps grpc.health.v1 honest: NOT_SERVING while NATS or the database is down.
async fn report_readiness(
    health: tonic_health::server::HealthReporter,
    store: Store,
    client: async_nats::Client,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                health.set_not_serving::<TaskServiceServer<TaskApi>>().await;
                return;
            }
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
        let ready = nats::is_connected(&client) && store.ping().await.is_ok();
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health
            .set_service_status(
                <TaskServiceServer<TaskApi> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
        health.set_service_status("", status).await;
    }
}
