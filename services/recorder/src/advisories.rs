//! The backstop for tasks JetStream stopped delivering. When a task's message reaches
//! its consumer's max_deliver without an ack (every worker holding it died), JetStream
//! stops redelivering it and emits a MAX_DELIVERIES advisory, which TASKWIRE_ADVISORIES
//! keeps (advisories are at-most-once core messages; the stream makes them durable).
//! The recorder fails such a task: a FAILED event (conditional, like every writer's),
//! the DLQ copy, and the message removed from the work stream.

use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, pull},
    stream::{Info, LastRawMessageErrorKind, Stream},
};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use taskwire::{
    domain::TaskId,
    json, nats,
    pb::{
        internal::v1::{Event, TaskMessage},
        v1::{TaskError, TaskState},
    },
};
use tokio_util::sync::CancellationToken;

/// What the advisory loop needs.
#[derive(Debug)]
pub struct Advisories {
    js: jetstream::Context,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    tasks: Stream<Info>,
    events: Stream<Info>,
}

impl Advisories {
    pub async fn start(js: jetstream::Context) -> Result<Self, nats::Error> {
        let consumer = nats::open_stream(&js, nats::ADVISORIES_STREAM)
            .await?
            .create_consumer(pull::Config {
                durable_name: Some(nats::ADVISORY_CONSUMER.to_string()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .map_err(|e| nats::Error::Unavailable(format!("advisory consumer: {e}")))?;
        Ok(Self {
            tasks: nats::open_stream(&js, nats::TASKS_STREAM).await?,
            events: nats::open_stream(&js, nats::EVENTS_STREAM).await?,
            consumer,
            js,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut messages = match self.consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot consume advisories");
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
                    tracing::warn!(error = %e, "advisory not handled yet; retrying");
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
            }
        }
    }

    async fn handle(&self, advisory: &[u8]) -> Result<(), nats::Error> {
        let v: serde_json::Value =
            serde_json::from_slice(advisory).map_err(|e| nats::Error::BadMessage(e.to_string()))?;
        let Some(seq) = v["stream_seq"].as_u64() else {
            return Err(nats::Error::BadMessage(
                "advisory without stream_seq".into(),
            ));
        };
        let deliveries = v["deliveries"].as_u64().unwrap_or(0);
        let raw = match self.tasks.get_raw_message(seq).await {
            Ok(m) => m,
            // Acked meanwhile (a late ack from a slow worker): nothing to do.
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(e) => return Err(nats::Error::Unavailable(e.to_string())),
        };
        let body =
            TaskMessage::decode(raw.payload).map_err(|e| nats::Error::BadMessage(e.to_string()))?;
        let id =
            TaskId::parse(&body.task_id).map_err(|e| nats::Error::BadMessage(e.to_string()))?;
        let error = TaskError {
            code: "MAX_DELIVERIES".into(),
            message: format!("JetStream gave up after {deliveries} deliveries without an outcome"),
            retryable: false,
        };
        for _ in 0..5 {
            let last = nats::last_event(&self.events, id).await?;
            let (last_seq, attempt) = match &last {
                Some((_, ev))
                    if TaskState::try_from(ev.state).is_ok_and(TaskState::is_terminal) =>
                {
                    break;
                }
                Some((s, ev)) => (*s, ev.attempt),
                None => (0, 0),
            };
            let failed = Event {
                task_id: id.to_string(),
                time: Some(json::micros_to_timestamp(json::now_micros())),
                state: TaskState::Failed as i32,
                attempt,
                error: Some(error.clone()),
                kind: body.kind.clone(),
                ..Default::default()
            };
            let payload = Bytes::from(failed.encode_to_vec());
            match nats::publish(
                &self.js,
                nats::event_subject(id),
                payload,
                None,
                Some(last_seq),
            )
            .await
            {
                Ok(_) => {
                    tracing::warn!(task_id = %id, deliveries, "task failed: deliveries exhausted");
                    break;
                }
                Err(nats::Error::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        nats::publish_dead_letter(&self.js, &body, Some(&error)).await?;
        // Out of the work queue: nobody will ack it now.
        self.tasks
            .delete_message(seq)
            .await
            .map_err(|e| nats::Error::Unavailable(e.to_string()))?;
        Ok(())
    }
}
