//! The worker runtime: a [`Worker`] connects, sets up one consumer per kind it has a
//! handler for, pulls tasks (`pull`) and runs each delivery's attempt (`attempt`);
//! on shutdown it drains. docs/protocol.md is the language-neutral description.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::pull};
use taskwire::{
    admin::{Admin, Checks},
    config::ConfigError,
    nats::{self, History},
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{Config, Error, running::Running, sdk::Registry};

/// How long a stopping worker waits for NATS to take what it published last.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// What every attempt of this process shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) js: jetstream::Context,
    pub(crate) history: History,
    pub(crate) registry: Registry,
    pub(crate) config: Config,
    /// The attempts running here: cancel signals and running-queries.
    pub(crate) running: Running,
    /// For running-queries to other workers.
    pub(crate) client: async_nats::Client,
    /// One permit per task this process may run at once.
    pub(crate) permits: Arc<Semaphore>,
    /// Fires when a shutdown's grace period is over: running attempts hand their
    /// tasks back.
    pub(crate) hand_back: CancellationToken,
}

/// A worker connected to NATS with its consumers set up, ready to run.
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Shared>,
    client: async_nats::Client,
    consumers: Vec<jetstream::consumer::Consumer<pull::Config>>,
    /// Stops answering cancel signals and running-queries once the worker is done.
    router_stop: CancellationToken,
}

impl Worker {
    /// Connects, creates the streams and one consumer per registered kind.
    pub async fn build(config: Config, registry: Registry) -> Result<Self, Error> {
        config.validate()?;
        if registry.kinds().is_empty() {
            return Err(ConfigError::new("kinds", "no task kinds registered").into());
        }
        let (client, js) = nats::join(&config.nats, &config.streams, "taskwire-worker").await?;
        let history = History::open(&js).await?;
        let router_stop = CancellationToken::new();
        let running = Running::start(&client, router_stop.clone()).await?;
        let mut consumers = Vec::new();
        for kind in registry.kinds() {
            consumers.push(
                nats::setup_kind_consumer(
                    &js,
                    &kind,
                    config.ack_wait,
                    config.max_deliver,
                    config.max_running_of(&kind),
                )
                .await?,
            );
        }
        taskwire::telemetry::metrics::gauge!(taskwire::telemetry::metrics::WORKER_SLOTS, "state" => "free")
            .increment(f64::from(config.concurrency));
        let shared = Arc::new(Shared {
            js,
            history,
            permits: Arc::new(Semaphore::new(config.concurrency as usize)),
            registry,
            config,
            running,
            client: client.clone(),
            hand_back: CancellationToken::new(),
        });
        Ok(Self {
            shared,
            client,
            consumers,
            router_stop,
        })
    }

    /// What the worker's readiness depends on: NATS.
    pub fn checks(&self) -> Checks {
        Checks {
            nats: self.client.clone(),
            store: None,
            health: Vec::new(),
        }
    }

    /// Runs until `shutdown`, then drains: stops pulling, lets running handlers finish
    /// within the grace period, and hands the rest back (NAK, no delay).
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            shared,
            client,
            consumers,
            router_stop,
        } = self;
        tracing::info!(kinds = ?shared.registry.kinds(), concurrency = shared.config.concurrency, "worker running");
        let attempts = TaskTracker::new();
        let loops = TaskTracker::new();
        // `consumers` were made in the order of the registry's kinds.
        for (consumer, kind) in consumers.into_iter().zip(shared.registry.kinds()) {
            loops.spawn(crate::pull::pull_loop(
                shared.clone(),
                consumer,
                kind,
                attempts.clone(),
                shutdown.clone(),
            ));
        }
        loops.close();
        loops.wait().await;

        // Shutting down: nothing new is pulled; give running handlers the grace period.
        attempts.close();
        if tokio::time::timeout(shared.config.shutdown_grace, attempts.wait())
            .await
            .is_err()
        {
            tracing::info!(
                running = attempts.len(),
                "grace period over; handing tasks back"
            );
            shared.hand_back.cancel();
            attempts.wait().await;
        }
        router_stop.cancel();
        nats::flush(&client, FLUSH_TIMEOUT).await;
    }
}

/// Builds a worker and runs it until `shutdown` (see [`Worker`]), its admin listener
/// (metrics, liveness, readiness) beside it.
pub async fn run(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let admin = Admin::bind(config.admin_listen).await?;
    let worker = Worker::build(config, registry).await?;
    let admin = tokio::spawn(admin.run(worker.checks(), shutdown.clone()));
    worker.run(shutdown).await;
    let _ = admin.await;
    Ok(())
}
