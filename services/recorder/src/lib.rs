//! The recorder: projects TASKWIRE_EVENTS into the database, so GetStatus and
//! ListTasks show each task's state, progress, output, error, attempt and times.
//!
//! It is a durable pull consumer (`taskwire-recorder`) that takes events in batches
//! and applies each batch in one transaction, then acks it. Applying is idempotent:
//! an event whose seq is at most the task's `last_seq` changes nothing, so a restart,
//! a redelivery or a full replay of the stream leaves the database as it was.
#![forbid(unsafe_code)]

mod advisories;

use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use clap::Parser;
use futures::{FutureExt, StreamExt};
use prost::Message as _;
use taskwire::{
    config::{DatabaseArgs, NatsArgs, StreamArgs},
    domain::TaskId,
    nats,
    pb::internal::v1::Event,
    store::{self, EventUpdate, Store},
};
use tokio_util::sync::CancellationToken;

/// taskwire recorder: projects task events from NATS into the database.
#[derive(Debug, Clone, Parser)]
#[command(name = "taskwire-recorder", version)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub streams: StreamArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Most events applied in one transaction.
    #[arg(long, env = "TASKWIRE_RECORDER_BATCH", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Nats(#[from] nats::Error),
}

/// A recorder connected to the database and NATS, its consumer set up.
#[derive(Debug)]
pub struct Recorder {
    store: Store,
    advisories: advisories::Advisories,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    batch: usize,
}

impl Recorder {
    pub async fn start(config: &Config) -> Result<Self, Error> {
        let store = Store::connect(
            &config.database.database_url,
            &config.database.store_options(),
        )
        .await?;
        let (_, js) = nats::join(&config.nats, &config.streams, "taskwire-recorder").await?;
        Ok(Self {
            store,
            advisories: advisories::Advisories::start(js.clone()).await?,
            consumer: consumer(&js).await?,
            batch: config.batch as usize,
        })
    }

    /// Runs until `shutdown`; the batch in hand is finished first. Each batch is
    /// whatever has arrived when the previous one is done (at least one event, at most
    /// `--batch`): one event at a time when idle, large commits under load.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!("recorder running");
        let advisories = tokio::spawn(self.advisories.run(shutdown.clone()));
        let mut messages = match self.consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot consume events");
                return;
            }
        };
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = messages.next() => m,
            };
            let mut batch = match first {
                Some(Ok(m)) => vec![m],
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "bad delivery");
                    continue;
                }
                None => break,
            };
            while batch.len() < self.batch {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    Some(Some(Err(e))) => tracing::warn!(error = %e, "bad delivery"),
                    _ => break,
                }
            }
            record(&self.store, &batch).await;
        }
        let _ = advisories.await;
        self.store.close().await;
    }
}

/// Starts a recorder and runs it until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    Recorder::start(&config).await?.run(shutdown).await;
    Ok(())
}

/// The recorder's durable consumer, created or updated (idempotent).
async fn consumer(
    js: &jetstream::Context,
) -> Result<jetstream::consumer::Consumer<pull::Config>, nats::Error> {
    nats::open_stream(js, nats::EVENTS_STREAM)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some(nats::RECORDER_CONSUMER.to_string()),
            filter_subject: "taskwire.events.>".to_string(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 50_000,
            ..Default::default()
        })
        .await
        .map_err(|e| nats::Error::Unavailable(format!("recorder consumer: {e}")))
}

/// Applies one batch in one transaction, then acks it; on a database error, NAKs it
/// with a delay so it comes back once the database does.
async fn record(store: &Store, messages: &[jetstream::Message]) {
    let mut updates = Vec::with_capacity(messages.len());
    for m in messages {
        match decode(m) {
            Ok(u) => updates.push(u),
            // A body no version of taskwire wrote: skip it rather than block the rest.
            Err(why) => tracing::error!(subject = %m.subject, why, "undecodable event skipped"),
        }
    }
    match store.apply_events(&updates).await {
        Ok(applied) => {
            tracing::debug!(received = messages.len(), applied, "batch recorded");
            for m in messages {
                if let Err(e) = m.ack().await {
                    // Redelivered later and applied again: a no-op by seq.
                    tracing::warn!(error = %e, "ack failed");
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "batch not recorded; will be redelivered");
            for m in messages {
                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }
}

fn decode(m: &jetstream::Message) -> Result<(TaskId, EventUpdate), String> {
    let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
    let ev = Event::decode(m.payload.clone()).map_err(|e| e.to_string())?;
    let id = TaskId::parse(&ev.task_id).map_err(|e| e.to_string())?;
    let update = EventUpdate::from_event(seq, &ev).map_err(|e| e.to_string())?;
    Ok((id, update))
}
