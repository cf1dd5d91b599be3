//! SubmitTask: store the task with its outbox row, publish it, answer.
//!
//! The guarantee (docs/architecture.md, guarantee 1): an OK answer means the task is in the
//! database and in TASKWIRE_TASKS. The outbox closes the crash window between commit
//! and publish (see `taskwire::store` outbox docs); an UNAVAILABLE answer means the task
//! was withdrawn, so a caller retrying without an idempotency key does not get a twin.

use std::time::Duration;

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

/// How many times a submit starts over when the task its key named was withdrawn
/// meanwhile (a concurrent identical submit whose publish failed).
const MAX_TRIES: usize = 3;

impl TaskApi {
    pub(crate) async fn submit(&self, req: ValidSubmit) -> Result<SubmitTaskResponse, ApiError> {
        for _ in 0..MAX_TRIES {
            if let Some(resp) = self.try_submit(&req).await? {
                return Ok(resp);
            }
        }
        Err(
            nats::Error::unavailable("submitting", "an identical submit kept being withdrawn")
                .into(),
        )
    }

    /// One try; `None` when the key named a task that has since been withdrawn.
    async fn try_submit(&self, req: &ValidSubmit) -> Result<Option<SubmitTaskResponse>, ApiError> {
        let s = &self.shared;
        // Fail fast, before writing anything, when NATS is known to be down.
        if !nats::is_connected(&s.nats) {
            return Err(nats::Error::unavailable("submitting", "not connected").into());
        }
        let now = json::now_micros();
        let task = NewTask {
            id: TaskId::new(),
            created_at_us: now,
            ..req.0.clone()
        };
        let traceparent = trace::current_traceparent();
        let outbox = OutboxEntry {
            subject: nats::task_subject(task.kind.as_str()),
            payload: task_message(&task, traceparent.clone()).encode_to_vec(),
            lease_until_us: now + s.outbox_lease.as_micros() as i64,
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
            Inserted::Duplicate(id) => {
                metrics::task_event(metrics::TASKS_DEDUPLICATED, label);
                return Ok(self
                    .await_enqueued(id)
                    .await?
                    .then_some(SubmitTaskResponse {
                        task_id: id.to_string(),
                        state: TaskState::Queued as i32,
                        deduplicated: true,
                        warning,
                    }));
            }
        }
        if s.fault == Some(Fault::AbortAfterCommit) {
            std::process::abort();
        }

        let id = task.id;
        match nats::publish_task(
            &s.js,
            outbox.subject,
            &id.to_string(),
            Bytes::from(outbox.payload),
            traceparent.as_deref(),
        )
        .await
        {
            Ok(_) => {
                if s.fault == Some(Fault::AbortAfterPublish) {
                    std::process::abort();
                }
                s.outbox_cleaner.forget(id);
            }
            Err(publish_err) => match s
                .store
                .withdraw_unpublished(id, outbox.lease_until_us)
                .await
            {
                Ok(true) => return Err(publish_err.into()),
                // The lease ran out and the relay owns the row: the task will be
                // enqueued, so it is accepted.
                Ok(false) => tracing::info!(task_id = %id, "publish failed; the relay took over"),
                Err(e) => {
                    // Neither publish nor withdraw worked: the relay will enqueue the task
                    // when NATS is back. The caller hears UNAVAILABLE and is told to
                    // retry with the same key, which then finds this task.
                    tracing::error!(task_id = %id, error = %chain(&e), "withdraw failed after publish failed");
                    return Err(publish_err.into());
                }
            },
        }
        metrics::task_event(metrics::TASKS_SUBMITTED, label);
        tracing::info!(task_id = %id, "task accepted");
        Ok(Some(SubmitTaskResponse {
            task_id: id.to_string(),
            state: TaskState::Queued as i32,
            deduplicated: false,
            warning,
        }))
    }

    /// A repeat of a submit whose first call may still be publishing: waits until the
    /// first task is confirmed enqueued (true) or withdrawn (false), so a repeat never
    /// answers OK for a task that is then withdrawn.
    async fn await_enqueued(&self, id: TaskId) -> Result<bool, ApiError> {
        let s = &self.shared;
        let deadline = tokio::time::Instant::now() + s.outbox_lease;
        loop {
            if !s.store.in_outbox(id).await? {
                return Ok(s.store.get_task(id).await?.is_some());
            }
            if tokio::time::Instant::now() >= deadline {
                // The lease ran out: the relay owns the row and will publish it.
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
    }
}
