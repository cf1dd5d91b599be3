//! The backstop for tasks JetStream stopped delivering. When a task's message reaches
//! its consumer's max_deliver without an ack (every worker holding it died), JetStream
//! stops redelivering it and emits a MAX_DELIVERIES advisory, which TASKWIRE_ADVISORIES
//! keeps (advisories are at-most-once core messages; the stream makes them durable).
//! The recorder fails such a task: a FAILED event (through the one conditional append,
//! unless the task already finished), the DLQ copy, and the message removed from the
//! work stream.

use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::pull,
    stream::{LastRawMessageErrorKind, Stream},
};
use futures::StreamExt;
use prost::Message as _;
use taskwire::{
    domain::TaskId,
    nats::{self, Appended, History, Start},
    pb::{
        internal::v1::TaskMessage,
        v1::{TaskError, TaskState},
    },
    telemetry::{chain, metrics},
};
use tokio_util::sync::CancellationToken;

/// What the advisory loop needs.
#[derive(Debug)]
pub(crate) struct Advisories {
    js: jetstream::Context,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    tasks: Stream,
    history: History,
}

impl Advisories {
    pub(crate) async fn build(js: jetstream::Context) -> Result<Self, nats::Error> {
        Ok(Self {
            consumer: nats::setup_advisory_consumer(&js).await?,
            tasks: nats::open_stream(&js, nats::TASKS_STREAM).await?,
            history: History::open(&js).await?,
            js,
        })
    }

    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut messages = match self.consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %chain(&e), "cannot consume advisories");
                return;
            }
        };
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = messages.next() => match m { Some(Ok(m)) => m, Some(Err(_)) => continue, None => return },
            };
            match self.handle(&msg.payload).await {
                Ok(()) => {
                    let _ = msg.ack().await;
                }
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "advisory not handled yet; retrying");
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
            }
        }
    }

    async fn handle(&self, advisory: &[u8]) -> Result<(), nats::Error> {
        let v: serde_json::Value = serde_json::from_slice(advisory)
            .map_err(|e| nats::Error::bad_message("a MAX_DELIVERIES advisory", e))?;
        let Some(seq) = v["stream_seq"].as_u64() else {
            return Err(nats::Error::bad_message(
                "a MAX_DELIVERIES advisory",
                "it has no stream_seq",
            ));
        };
        let deliveries = v["deliveries"].as_u64().unwrap_or(0);
        let raw = match self.tasks.get_raw_message(seq).await {
            Ok(m) => m,
            // Acked meanwhile (a late ack from a slow worker): nothing to do.
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(e) => {
                return Err(nats::Error::unavailable(
                    format!("reading task message {seq}"),
                    e,
                ));
            }
        };
        let body = TaskMessage::decode(raw.payload)
            .map_err(|e| nats::Error::bad_message(format!("task message {seq}"), e))?;
        let id = TaskId::parse(&body.task_id)
            .map_err(|e| nats::Error::bad_message(format!("task message {seq}"), e))?;
        let error = TaskError {
            code: "MAX_DELIVERIES".into(),
            message: format!("JetStream gave up after {deliveries} deliveries without an outcome"),
            retryable: false,
        };
        let appended = self
            .history
            .append_unless_finished(id, Start::Read, |last| {
                let attempt = last.map_or(0, |l| l.event.attempt);
                let mut ev = nats::new_event(id, &body.kind, TaskState::Failed, attempt);
                ev.error = Some(error.clone());
                ev
            })
            .await?;
        match appended {
            Appended::Appended(_) => {
                tracing::warn!(task_id = %id, deliveries, "task failed: deliveries exhausted");
                metrics::task_event(metrics::TASKS_FAILED, &body.kind);
                nats::publish_dead_letter(&self.js, &body, Some(&error)).await?;
                metrics::task_event(metrics::TASKS_DEAD_LETTERED, &body.kind);
            }
            // A task that failed must be in the DLQ (its worker may have died before
            // copying it; the copy is stored once by Nats-Msg-Id). One that succeeded
            // or was cancelled is not a dead letter.
            Appended::Finished(last) if last.state() == TaskState::Failed => {
                nats::publish_dead_letter(&self.js, &body, last.event.error.as_ref()).await?;
            }
            Appended::Finished(_) => {}
        }
        // Out of the work queue: nobody will ack it now.
        self.tasks
            .delete_message(seq)
            .await
            .map_err(|e| nats::Error::unavailable(format!("deleting task message {seq}"), e))?;
        Ok(())
    }
}
