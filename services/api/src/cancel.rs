//! CancelTask. The task's history in TASKWIRE_EVENTS decides: the api appends a
//! CANCELLED event through the one conditional append ([`nats::History`]), so the
//! cancel and a worker's next event cannot both win. A queued or scheduled task is
//! then never run (a worker's RUNNING event is rejected; a scheduled one's outbox row
//! is dropped too); a running one is also signalled on
//! `taskwire.cancel.<id>` so its handler stops at once.

use bytes::Bytes;
use taskwire::{
    auth::Scope,
    domain::TaskId,
    nats::{self, Appended, Start, Stored},
    pb::v1::{Task, TaskState},
    telemetry::metrics,
};

use crate::{error::ApiError, service::TaskApi};

/// Most unseen events a cancel applies before its own (a task whose record trails by
/// more is left to the recorder for the rest).
const MAX_PROJECTED: usize = 1000;

impl TaskApi {
    pub(crate) async fn cancel(&self, id: TaskId, scope: &Scope) -> Result<Task, ApiError> {
        let s = &self.shared;
        let record = self.visible(id, scope).await?;
        finished(id, record.state)?;
        if record.state == TaskState::Cancelled {
            return Ok(record.to_proto());
        }
        let appended = s
            .history
            .append_unless_finished(id, Start::Read, |last| {
                let attempt = last.map_or(0, |l| l.event.attempt);
                let mut ev = nats::new_event(id, &record.kind, TaskState::Cancelled, attempt);
                ev.message = "cancelled by request".to_string();
                ev
            })
            .await?;
        match appended {
            Appended::Appended(stored) => {
                // A delayed task not yet due need never be enqueued. Best effort: if
                // the relay publishes it anyway, the worker finds it CANCELLED.
                if record.state == TaskState::Scheduled
                    && let Err(e) = s.store.delete_outbox(id).await
                {
                    tracing::warn!(task_id = %id, error = %taskwire::telemetry::chain(&e), "outbox row of a cancelled delayed task kept");
                }
                // Tell a worker running it to stop now; core NATS, best effort: the
                // worker also learns it from its next rejected event.
                if let Err(e) = s.nats.publish(nats::cancel_subject(id), Bytes::new()).await {
                    tracing::warn!(task_id = %id, error = %taskwire::telemetry::chain(&e), "cancel signal not sent");
                }
                self.project(id, record.last_seq, &stored).await?;
                metrics::task_event(metrics::TASKS_CANCELLED, &s.kinds.label(&record.kind));
                tracing::info!(task_id = %id, seq = stored.seq, "task cancelled");
                self.current(id).await
            }
            Appended::Finished(stored) => {
                // The stream is ahead of the database: project the terminal event so
                // the answer and the record agree, then answer.
                self.project(id, record.last_seq, &stored).await?;
                finished(id, stored.state())?;
                self.current(id).await
            }
        }
    }

    /// Applies the task's events after `recorded` through `last` to its record now
    /// rather than waiting for the recorder (whose later copies change nothing, by
    /// seq). All of them, in one batch: applying only `last` would make the recorder
    /// skip an unrecorded RUNNING event and lose the task's start time.
    pub(crate) async fn project(
        &self,
        id: TaskId,
        recorded: u64,
        last: &Stored,
    ) -> Result<(), ApiError> {
        let history = &self.shared.history;
        let mut events = Vec::new();
        let mut after = recorded;
        while events.len() < MAX_PROJECTED {
            match history.next_after(id, after).await? {
                Some(next) if next.seq < last.seq => {
                    after = next.seq;
                    events.push((id, next.to_update()?));
                }
                _ => break,
            }
        }
        events.push((id, last.to_update()?));
        self.shared.store.apply_events(&events).await?;
        Ok(())
    }

    pub(crate) async fn current(&self, id: TaskId) -> Result<Task, ApiError> {
        let rec = self
            .shared
            .store
            .get_task(id)
            .await?
            .ok_or(ApiError::NotFound(id))?;
        Ok(rec.to_proto())
    }
}

/// SUCCEEDED and FAILED cannot be cancelled; anything else can (CANCELLED is a no-op).
fn finished(id: TaskId, state: TaskState) -> Result<(), ApiError> {
    match state {
        TaskState::Succeeded => Err(ApiError::AlreadyFinished {
            id,
            state: "succeeded",
        }),
        TaskState::Failed => Err(ApiError::AlreadyFinished {
            id,
            state: "failed",
        }),
        TaskState::Unspecified
        | TaskState::Scheduled
        | TaskState::Queued
        | TaskState::Running
        | TaskState::Retrying
        | TaskState::Cancelled => Ok(()),
    }
}
