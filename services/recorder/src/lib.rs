//! The recorder: projects TASKWIRE_EVENTS into the database, so GetStatus and
//! ListTasks show each task's state, progress, output, error, attempt and times.
//!
//! It is a durable pull consumer (`taskwire-recorder`) that takes events in batches
//! and applies each batch in one transaction, then acks it. Applying is idempotent:
//! an event whose seq is at most the task's `last_seq` changes nothing, so a restart,
//! a redelivery or a full replay of the stream leaves the database as it was.
//!
//! It also deletes terminal tasks past their retention age (`retention`).
#![forbid(unsafe_code)]

mod advisories;
pub mod config;
pub mod retention;

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::{FutureExt, StreamExt};
use prost::Message as _;
use taskwire::{
    admin::{Admin, Checks},
    domain::TaskId,
    nats::{self, Stored},
    pb::internal::v1::Event,
    store::{EventUpdate, Store},
    telemetry::{chain, metrics, trace},
};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use taskwire::service::Error;

/// A recorder connected to the database and NATS, its consumers set up.
#[derive(Debug)]
pub struct Recorder {
    store: Store,
    client: async_nats::Client,
    js: jetstream::Context,
    advisories: advisories::Advisories,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    batch: usize,
    retention: taskwire::store::Retention,
    retention_interval: std::time::Duration,
    retention_batch: u32,
}

impl Recorder {
    /// Connects to the database (applying migrations) and NATS (creating streams and
    /// the recorder's consumers).
    pub async fn build(config: &Config) -> Result<Self, Error> {
        config.validate()?;
        let store = Store::connect(
            &config.database.database_url,
            &config.database.store_options(),
        )
        .await?;
        let (client, js) = nats::join(&config.nats, &config.streams, "taskwire-recorder").await?;
        Ok(Self {
            store,
            client,
            js: js.clone(),
            advisories: advisories::Advisories::build(js.clone()).await?,
            consumer: nats::setup_recorder_consumer(&js).await?,
            batch: config.batch as usize,
            retention: config.retention(),
            retention_interval: config.retention_interval,
            retention_batch: config.retention_batch,
        })
    }

    /// What the recorder's readiness depends on: NATS and the database.
    pub fn checks(&self) -> Checks {
        Checks {
            nats: self.client.clone(),
            store: Some(self.store.clone()),
            health: Vec::new(),
        }
    }

    /// Runs until `shutdown`; the batch in hand is finished first. Each batch is
    /// whatever has arrived when the previous one is done (at least one event, at most
    /// `--batch`): one event at a time when idle, large commits under load.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!("recorder running");
        let advisories = tokio::spawn(self.advisories.run(shutdown.clone()));
        let lag = tokio::spawn(report_lag(self.js.clone(), shutdown.clone()));
        let retention = tokio::spawn(retention::run(
            self.store.clone(),
            self.retention,
            self.retention_interval,
            self.retention_batch,
            shutdown.clone(),
        ));
        let mut messages = match self.consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %chain(&e), "cannot consume events");
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
                    tracing::warn!(error = %chain(&e), "bad delivery");
                    continue;
                }
                None => break,
            };
            while batch.len() < self.batch {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    Some(Some(Err(e))) => tracing::warn!(error = %chain(&e), "bad delivery"),
                    _ => break,
                }
            }
            record(&self.store, &batch).await;
        }
        let _ = advisories.await;
        let _ = lag.await;
        let _ = retention.await;
        self.store.close().await;
    }
}

/// Builds a recorder and runs it until `shutdown`, its admin listener (metrics,
/// liveness, readiness) beside it.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let admin = Admin::bind(config.admin_listen).await?;
    let recorder = Recorder::build(&config).await?;
    let admin = tokio::spawn(admin.run(recorder.checks(), shutdown.clone()));
    recorder.run(shutdown).await;
    let _ = admin.await;
    Ok(())
}

/// How often the recorder's lag is measured for its gauges.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps the lag gauges current (while metrics are on) until `shutdown`.
async fn report_lag(js: jetstream::Context, shutdown: CancellationToken) {
    if !metrics::enabled() {
        return;
    }
    loop {
        match nats::streams::recorder_lag(&js).await {
            Ok((position, age)) => {
                metrics::gauge!(metrics::RECORDER_LAG_EVENTS).set(position.behind() as f64);
                metrics::gauge!(metrics::RECORDER_LAG_SECONDS)
                    .set(age.map_or(0.0, |a| a.as_secs_f64()));
            }
            Err(e) => tracing::debug!(error = %chain(&e), "recorder lag unknown"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(LAG_INTERVAL) => {}
        }
    }
}

/// Applies one batch in one transaction, then acks it; on a database error, NAKs it
/// with a delay so it comes back once the database does.
async fn record(store: &Store, messages: &[jetstream::Message]) {
    // Tracing on: recording an event is a span of its trace (the appender's context is
    // in its traceparent header).
    let _spans: Vec<tracing::Span> = if trace::enabled() {
        messages
            .iter()
            .filter_map(|m| {
                let tp = m.headers.as_ref()?.get(trace::TRACEPARENT)?;
                let span = tracing::info_span!("record", subject = %m.subject);
                trace::set_parent(&span, tp.as_str());
                Some(span)
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut updates = Vec::with_capacity(messages.len());
    for m in messages {
        match decode(m) {
            Ok(u) => updates.push(u),
            // A body no version of taskwire wrote: skip it rather than block the rest.
            Err(e) => {
                tracing::error!(subject = %m.subject, error = %chain(&e), "undecodable event skipped")
            }
        }
    }
    match store.apply_events(&updates).await {
        Ok(applied) => {
            metrics::counter!(metrics::RECORDER_EVENTS).increment(applied as u64);
            tracing::debug!(received = messages.len(), applied, "batch recorded");
            for m in messages {
                if let Err(e) = m.ack().await {
                    // Redelivered later and applied again: a no-op by seq.
                    tracing::warn!(error = %chain(&*e), "ack failed");
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %chain(&e), "batch not recorded; will be redelivered");
            for m in messages {
                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }
}

fn decode(m: &jetstream::Message) -> Result<(TaskId, EventUpdate), nats::Error> {
    let seq = m
        .info()
        .map_err(|e| nats::Error::bad_message(format!("delivery on {}", m.subject), e))?
        .stream_sequence;
    let event = Event::decode(m.payload.clone())
        .map_err(|e| nats::Error::bad_message(format!("event {seq}"), e))?;
    let id = TaskId::parse(&event.task_id)
        .map_err(|e| nats::Error::bad_message(format!("event {seq}"), e))?;
    Ok((id, Stored { seq, event }.to_update()?))
}
