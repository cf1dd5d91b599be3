//! SubmitTask: store the task with its outbox row, publish it, answer. A delayed task
//! (delay or run_at ahead) is stored SCHEDULED and not published: its outbox row is
//! leased until it is due, and the relay enqueues it then (`relay.rs`).
//!
//! The guarantee (docs/architecture.md, guarantee 1): an OK answer means the task is
//! committed with its outbox row, so it reaches TASKWIRE_TASKS: published by this call
//! (normally before the answer) or, if that publish is not confirmed, by the outbox
//! relay. UNAVAILABLE is answered only before anything is written, so a caller told
//! UNAVAILABLE has no task, and no task it was told about can run.

use bytes::Bytes;
use prost::Message;
use taskwire::{
    domain::TaskId,
    json, nats,
    pb::{
        internal::v1::TaskMessage,
        v1::{SubmitTaskResponse, TaskState},
    },
    store::{Inserted, NewTask, OutboxEntry},
    telemetry::{chain, metrics, trace},
};

use crate::{config::Fault, error::ApiError, service::TaskApi};

/// A SubmitTaskRequest whose every field has been checked: the task to insert, but for
/// its id and time, which each try of the submit gives it afresh.
#[derive(Debug, Clone)]
pub struct ValidSubmit(pub NewTask);

impl TaskApi {
    /// Stores the task with its outbox row, publishes it, answers. UNAVAILABLE only
    /// before anything is written (NATS known down, or the database failed), so a
    /// caller told UNAVAILABLE has no task.
    pub(crate) async fn submit(&self, req: ValidSubmit) -> Result<SubmitTaskResponse, ApiError> {
        let s = &self.shared;
        // Fail fast, before writing anything, when NATS is known to be down.
        if !nats::is_connected(&s.nats) {
            return Err(nats::Error::unavailable("submitting", "not connected").into());
        }
        let now = json::now_micros();
        let task = NewTask {
            id: TaskId::new(),
            created_at_us: now,
            ..req.0
        };
        let traceparent = trace::current_traceparent();
        // A delayed task's row is leased until it is due: the relay enqueues it then.
        let outbox = OutboxEntry {
            subject: nats::task_subject(task.kind.as_str()),
            payload: task_message(&task, traceparent.clone()).encode_to_vec(),
            lease_until_us: task
                .run_at_us
                .unwrap_or(now + s.outbox_lease.as_micros() as i64),
        };

        // Whether a worker serves the kind is asked while the task is written.
        let (inserted, warning) = tokio::join!(
            s.inserter.insert(task.clone(), outbox.clone()),
            s.kinds.warning(&task.kind)
        );
        // Metrics label kinds no worker serves as one value: a caller inventing kinds
        // must not grow the label set.
        let label = if warning.is_some() {
            metrics::UNSERVED_KIND
        } else {
            task.kind.as_str()
        };
        let warning = warning.unwrap_or_default();
        match inserted? {
            Inserted::New => {}
            // The first task is committed with its outbox row: enqueued by its own call
            // or by the relay, never withdrawn.
            Inserted::Duplicate(id) => {
                metrics::task_event(metrics::TASKS_DEDUPLICATED, label);
                return Ok(SubmitTaskResponse {
                    task_id: id.to_string(),
                    state: TaskState::Queued as i32,
                    deduplicated: true,
                    warning,
                });
            }
        }
        if s.fault == Some(Fault::AbortAfterCommit) {
            std::process::abort();
        }

        let id = task.id;
        if task.run_at_us.is_some() {
            metrics::task_event(metrics::TASKS_SUBMITTED, label);
            tracing::info!(task_id = %id, "task scheduled");
            return Ok(SubmitTaskResponse {
                task_id: id.to_string(),
                state: TaskState::Scheduled as i32,
                deduplicated: false,
                warning,
            });
        }
        let published = match s.fault {
            // Tests: NATS took nothing, or took it and the ack was lost.
            Some(Fault::FailPublish) => {
                Err(nats::Error::unavailable("publishing", "fault injected"))
            }
            _ => {
                nats::publish_task(
                    &s.js,
                    outbox.subject,
                    &id.to_string(),
                    Bytes::from(outbox.payload),
                    traceparent.as_deref(),
                )
                .await
            }
        };
        let published = match (published, s.fault) {
            (Ok(_), Some(Fault::LosePublishAck)) => Err(nats::Error::unavailable(
                "publishing",
                "ack lost (fault injected)",
            )),
            (other, _) => other,
        };
        match published {
            Ok(_) => {
                if s.fault == Some(Fault::AbortAfterPublish) {
                    std::process::abort();
                }
                s.outbox_cleaner.forget(id);
            }
            // The task is committed with its outbox row: the relay publishes it once
            // this call's lease runs out (JetStream drops a second copy by its id, if
            // the first did arrive). So the task is accepted, and the answer is OK: an
            // UNAVAILABLE here could be followed by the task running anyway (the
            // publish may have arrived with its ack lost), which a caller must never see.
            Err(e) => tracing::warn!(
                task_id = %id,
                error = %chain(&e),
                "publish not confirmed; the outbox relay enqueues the task"
            ),
        }
        metrics::task_event(metrics::TASKS_SUBMITTED, label);
        tracing::info!(task_id = %id, "task accepted");
        Ok(SubmitTaskResponse {
            task_id: id.to_string(),
            state: TaskState::Queued as i32,
            deduplicated: false,
            warning,
        })
    }
}

/// The body published on `taskwire.tasks.<kind>`.
fn task_message(t: &NewTask, traceparent: Option<String>) -> TaskMessage {
    TaskMessage {
        task_id: t.id.to_string(),
        kind: t.kind.to_string(),
        input: Some(json::text_to_value(&t.input)),
        max_attempts: t.max_attempts,
        timeout: t.timeout.map(|d| prost_types::Duration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }),
        labels: t.labels.clone().into_map().into_iter().collect(),
        created_at: Some(json::micros_to_timestamp(t.created_at_us)),
        traceparent: traceparent.unwrap_or_default(),
        run_at: t.run_at_us.map(json::micros_to_timestamp),
        // The first run (RetryTask publishes later ones).
        run: 0,
    }
}
