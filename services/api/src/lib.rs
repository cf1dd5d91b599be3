//! The api service: `taskwire.v1.TaskService`, the front door.
//!
//! It validates every request at the edge, stores the task and its outbox row in one
//! transaction, publishes it to TASKWIRE_TASKS and answers with the id at once. Served
//! alone by `taskwire-api` (with reflection, health and grpc-web) or beside the other
//! services by `taskwire dev`.
//!
//! # Layout
//! - [`config`]: flags and `TASKWIRE_*` variables.
//! - `service`: the RPC handlers; request parsing.
//! - `submit`, `cancel`: the two operations with a protocol of their own.
//! - `reads`: GetStatus and ListTasks, never older than what watchers have seen.
//! - `kinds`: whether a worker serves a submitted kind (SubmitTask's warning).
//! - `stats`: GetQueueStats, and the queue and outbox gauges.
//! - `batch`: group commit of concurrent submits, batched outbox cleanup.
//! - `relay`: publishes outbox rows whose submitter died.
//! - `graph`: takes waiting parents through their children and fan-in.
//! - `error`: the one mapping from errors to gRPC codes.
#![forbid(unsafe_code)]

mod batch;
mod cancel;
pub mod config;
pub mod dead_letters;
mod error;
mod graph;
mod kinds;
mod reads;
mod relay;
mod service;
mod stats;
mod submit;

use std::sync::Arc;

/// The largest request the api decodes when --max-input-bytes asks for less: room for
/// a SubmitTasks batch of 1,000 tasks of 8 KiB.
const MAX_BATCH_REQUEST_BYTES: usize = 8 << 20;

use taskwire::{
    admin::{Admin, Checks},
    config::ConfigError,
    nats,
    pb::v1::task_service_server::TaskServiceServer,
    serve,
    store::Store,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

pub use config::Config;
pub use service::TaskApi;
pub use taskwire::service::Error;

/// The api, connected and set up, not yet serving.
#[derive(Debug)]
pub struct Api {
    /// The gRPC service, to add to a server's routes.
    pub service: TaskServiceServer<TaskApi>,
    relay: relay::Relay,
    graph: graph::Graph,
    store: Store,
    client: async_nats::Client,
}

impl Api {
    /// Connects to the database (applying migrations) and NATS (creating streams).
    pub async fn build(config: &Config) -> Result<Self, Error> {
        config.validate()?;
        let store = Store::connect(
            &config.database.database_url,
            &config.database.store_options(),
        )
        .await?;
        let (client, js) = nats::join(&config.nats, &config.streams, "taskwire-api").await?;
        // A task message carries the whole input: NATS must take the largest one.
        let max_request = config.max_input_bytes as usize + 64 * 1024;
        let max_payload = client.server_info().max_payload;
        if max_payload < max_request {
            return Err(ConfigError::new(
                "--max-input-bytes",
                format!(
                    "{} needs NATS to take messages of {max_request} bytes, but its \
                     max_payload is {max_payload}: set max_payload (e.g. 8MB) in \
                     nats-server's config",
                    config.max_input_bytes
                ),
            )
            .into());
        }
        let history = nats::History::open(&js).await?;
        let api = TaskApi {
            shared: Arc::new(service::Shared {
                store: store.clone(),
                nats: client.clone(),
                js: js.clone(),
                history,
                kinds: kinds::KnownKinds::new(js.clone()),
                max_input_bytes: config.max_input_bytes as usize,
                default_max_attempts: config.default_max_attempts,
                outbox_lease: config.outbox_lease,
                fault: config.fault,
                inserter: batch::Inserter::spawn(store.clone()),
                submit_rate: taskwire::limits::RateLimit::per_second(config.tenant_submit_rate),
                outbox_cleaner: batch::OutboxCleaner::spawn(store.clone()),
            }),
        };
        let graph = graph::Graph {
            api: api.clone(),
            poll: config.graph_poll,
        };
        let relay = relay::Relay {
            store: store.clone(),
            nats: client.clone(),
            js,
            lease: config.outbox_lease,
            poll: config.outbox_poll,
        };
        // Room for the largest input plus the rest of the request, or for a SubmitTasks
        // batch of many smaller ones; anything larger is answered RESOURCE_EXHAUSTED
        // (`serve::oversize_is_resource_exhausted`). Each task's input is checked
        // against --max-input-bytes on its own.
        let service = TaskServiceServer::new(api)
            .max_decoding_message_size(max_request.max(MAX_BATCH_REQUEST_BYTES));
        Ok(Self {
            service,
            relay,
            graph,
            store,
            client,
        })
    }

    /// What the api's readiness depends on (NATS and the database), reported to
    /// `health` too.
    pub fn checks(&self, health: Vec<(HealthReporter, Vec<&'static str>)>) -> Checks {
        Checks {
            nats: self.client.clone(),
            store: Some(self.store.clone()),
            health,
        }
    }

    /// Runs what the api does besides answering calls (the outbox relay, the queue
    /// gauges) until `shutdown`, then closes the database pool.
    pub async fn run(self, shutdown: CancellationToken) {
        let gauges = tokio::spawn(stats::report_gauges(
            self.relay.js.clone(),
            self.store.clone(),
            shutdown.clone(),
        ));
        let graph = tokio::spawn(self.graph.run(shutdown.clone()));
        self.relay.run(shutdown).await;
        let _ = graph.await;
        let _ = gauges.await;
        self.store.close().await;
    }
}

/// Runs the api alone on `listener` until `shutdown`, then drains in-flight calls; its
/// admin listener (metrics, liveness, readiness) beside it.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let admin = Admin::bind(config.admin_listen).await?;
    let api = Api::build(&config).await?;
    let addr = listener.local_addr().map_err(|source| serve::BindError {
        addr: config.listen,
        source,
    })?;
    let serving = config.serve.serving(addr, &api.store)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let checks = api.checks(vec![(
        health,
        vec![<TaskServiceServer<TaskApi> as tonic::server::NamedService>::NAME],
    )]);
    let admin = tokio::spawn(admin.run(checks, shutdown.clone()));
    let routes = serve::with_introspection(Routes::new(api.service.clone()), health_service);
    let relay = tokio::spawn(api.run(shutdown.clone()));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "api listening");
    }
    let served = serve::serve(
        routes,
        &[<TaskServiceServer<TaskApi> as tonic::server::NamedService>::NAME],
        listener,
        &serving,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = relay.await;
    let _ = admin.await;
    served?;
    Ok(())
}
