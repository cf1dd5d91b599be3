//! CancelTask. The task's history in TASKWIRE_EVENTS decides: the api appends a
//! CANCELLED event through the one conditional append ([`nats::History`]), so the
//! cancel and a worker's next event cannot both win. A queued or scheduled task is
//! then never run (a worker's RUNNING event is rejected; a scheduled one's outbox row
//! is dropped too); a running one is also signalled on
//! `taskwire.cancel.<id>` so its handler stops at once. A cancelled parent's children
//! are cancelled too (its CASCADE policy, the default), and theirs.

use bytes::Bytes;
use futures::future::{BoxFuture, join_all};
use taskwire::{
    auth::Scope,
    domain::TaskId,
    nats::{self, Appended, Start, Stored},
    pb::v1::{CancelPolicy, Task, TaskState},
    store::TaskRecord,
    telemetry::{chain, metrics},
};

use crate::{error::ApiError, service::TaskApi};

/// Most unseen events a cancel applies before its own (a task whose record trails by
/// more is left to the recorder for the rest).
const MAX_PROJECTED: usize = 1000;

impl TaskApi {
    pub(crate) async fn cancel(&self, id: TaskId, scope: &Scope) -> Result<Task, ApiError> {
        let record = self.visible(id, scope).await?;
        self.cancel_record(record).await
    }

    /// Cancels the task `record` is of, then (by its cancel policy) its children.
    pub(crate) async fn cancel_record(&self, record: TaskRecord) -> Result<Task, ApiError> {
        let s = &self.shared;
        let id = record.id;
        finished(id, record.state)?;
        if record.state == TaskState::Cancelled {
            return Ok(record.to_proto());
        }
        // Its children are cancelled after it: marked first, so that a crash in
        // between leaves the graph loop's sweep to finish.
        let cascades = record.has_children && record.cancel_policy != CancelPolicy::Abandon as i32;
        if cascades {
            s.store.mark_cascade(id, true).await?;
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
                    tracing::warn!(task_id = %id, error = %chain(&e), "outbox row of a cancelled delayed task kept");
                }
                // Tell a worker running it to stop now; core NATS, best effort: the
                // worker also learns it from its next rejected event.
                if let Err(e) = s.nats.publish(nats::cancel_subject(id), Bytes::new()).await {
                    tracing::warn!(task_id = %id, error = %chain(&e), "cancel signal not sent");
                }
                self.project(id, record.last_seq, &stored).await?;
                metrics::task_event(metrics::TASKS_CANCELLED, &s.kinds.label(&record.kind));
                tracing::info!(task_id = %id, seq = stored.seq, "task cancelled");
                if cascades {
                    self.cascade(id).await;
                }
                self.current(id).await
            }
            Appended::Finished(stored) => {
                if cascades {
                    // It ended otherwise; its own end decides about its children.
                    s.store.mark_cascade(id, false).await?;
                }
                // The stream is ahead of the database: project the terminal event so
                // the answer and the record agree, then answer.
                self.project(id, record.last_seq, &stored).await?;
                finished(id, stored.state())?;
                self.current(id).await
            }
        }
    }

    /// Cancels the children of a cancelled (or failed) parent that have not ended,
    /// and theirs, then clears the parent's mark ([`Store::mark_cascade`]); if any
    /// could not be cancelled, the mark stays and the graph loop's sweep tries again.
    /// The caller checked the parent's cancel policy.
    pub(crate) fn cascade(&self, parent: TaskId) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let store = &self.shared.store;
            let children = match store.active_children(parent).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(task_id = %parent, error = %chain(&e), "children not cancelled; the graph loop will");
                    return;
                }
            };
            let done = join_all(children.into_iter().map(|child| self.cancel_child(child))).await;
            if done.into_iter().all(|ok| ok)
                && let Err(e) = store.mark_cascade(parent, false).await
            {
                tracing::warn!(task_id = %parent, error = %chain(&e), "cascade not marked done; the graph loop will check again");
            }
        })
    }

    /// Cancels one child of a cancelled parent (and its own children); whether it
    /// has ended now.
    pub(crate) async fn cancel_child(&self, child: TaskId) -> bool {
        let cancelled = match self.shared.store.get_task(child).await {
            Ok(Some(record)) if !record.state.is_terminal() => self.cancel_record(record).await,
            Ok(_) => return true,
            Err(e) => Err(e.into()),
        };
        match cancelled {
            Ok(_) | Err(ApiError::AlreadyFinished { .. }) => true,
            Err(e) => {
                tracing::warn!(task_id = %child, error = %chain(&e), "child not cancelled; the graph loop will retry");
                false
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
        | TaskState::Waiting
        | TaskState::Cancelled => Ok(()),
    }
}
