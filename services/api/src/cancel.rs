//! CancelTask. The task's history in TASKWIRE_EVENTS decides: the api appends a
//! CANCELLED event with Nats-Expected-Last-Subject-Sequence = the newest seq it saw,
//! so the cancel and a worker's next event cannot both win. A queued task is then
//! never run (a worker's RUNNING event is rejected); a running one is also signalled on
//! `taskwire.cancel.<id>` so its handler stops at once.

use bytes::Bytes;
use prost::Message;
use taskwire::{
    domain::TaskId,
    json, nats,
    pb::{
        internal::v1::Event,
        v1::{Task, TaskState},
    },
    store::EventUpdate,
};

use crate::{error::ApiError, service::TaskApi};

/// Tries before a cancel gives up on a task whose events keep arriving (UNAVAILABLE).
const MAX_TRIES: usize = 20;

impl TaskApi {
    pub(crate) async fn cancel(&self, id: TaskId) -> Result<Task, ApiError> {
        let s = &self.shared;
        let record = s.store.get_task(id).await?.ok_or(ApiError::NotFound(id))?;
        finished(id, record.state)?;
        if record.state == TaskState::Cancelled {
            return Ok(record.to_proto());
        }
        for _ in 0..MAX_TRIES {
            let last = nats::last_event(&s.events, id).await?;
            let (last_seq, attempt) = match &last {
                Some((seq, ev)) => {
                    let state = TaskState::try_from(ev.state).unwrap_or(TaskState::Unspecified);
                    if state.is_terminal() {
                        // The stream is ahead of the database: project the terminal
                        // event so the answer and the record agree, then answer.
                        self.project(id, *seq, ev).await?;
                        finished(id, state)?;
                        return self.current(id).await;
                    }
                    (*seq, ev.attempt)
                }
                None => (0, 0),
            };
            let event = Event {
                task_id: id.to_string(),
                time: Some(json::micros_to_timestamp(json::now_micros())),
                state: TaskState::Cancelled as i32,
                progress: None,
                attempt,
                output: None,
                error: None,
                message: "cancelled by request".to_string(),
                kind: record.kind.clone(),
            };
            match nats::publish(
                &s.js,
                nats::event_subject(id),
                Bytes::from(event.encode_to_vec()),
                None,
                Some(last_seq),
            )
            .await
            {
                Ok(seq) => {
                    // Tell a worker running it to stop now; core NATS, best effort: the
                    // worker also learns it from its next rejected event.
                    if let Err(e) = s.nats.publish(nats::cancel_subject(id), Bytes::new()).await {
                        tracing::warn!(task_id = %id, error = %e, "cancel signal not sent");
                    }
                    self.project(id, seq, &event).await?;
                    tracing::info!(task_id = %id, seq, "task cancelled");
                    return self.current(id).await;
                }
                Err(nats::Error::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(nats::Error::Conflict.into())
    }

    /// Applies an event to the record now rather than waiting for the recorder; the
    /// recorder's later copy changes nothing (seq <= last_seq).
    async fn project(&self, id: TaskId, seq: u64, ev: &Event) -> Result<(), ApiError> {
        let update =
            EventUpdate::from_event(seq, ev).map_err(|e| nats::Error::BadMessage(e.to_string()))?;
        self.shared.store.apply_event(id, &update).await?;
        Ok(())
    }

    async fn current(&self, id: TaskId) -> Result<Task, ApiError> {
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
        | TaskState::Queued
        | TaskState::Running
        | TaskState::Retrying
        | TaskState::Cancelled => Ok(()),
    }
}
