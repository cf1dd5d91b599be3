//! Dead letters: retrying a FAILED task (a new run of the same task id), retrying or
//! discarding many by filter after a dry run, and a task's attempt history.
//!
//! A retry is durable before it is visible: the new run's task message goes into the
//! outbox first, then the QUEUED event that starts the run is appended, conditional on
//! the task's newest event being its FAILED one (so two retries, or a retry and
//! anything else, cannot both win), then the message is published (Nats-Msg-Id
//! `<id>:<run>`, so JetStream's duplicate window never swallows a later run). If the
//! api dies in between, the relay publishes the row; a worker handed a run whose event
//! was never appended finds the history ended and drops it.

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use taskwire::{
    auth::Scope,
    domain::{InvalidInput, Labels, TaskId, TaskKind},
    json, nats,
    pb::v1::{Attempt, BulkTasksRequest, BulkTasksResponse, Task, TaskState},
    store::{DeadLetterFilter, OutboxEntry},
    telemetry::{chain, metrics, trace},
};

use crate::{error::ApiError, service::TaskApi};

/// Most tasks one bulk call changes.
pub const MAX_BULK: u32 = 1000;
/// Retries of one bulk call in flight at once.
const PARALLEL_RETRIES: usize = 16;
/// Lost races before a retry gives up (UNAVAILABLE: try again).
const TRIES: usize = 20;
/// Most events read to build one task's attempt history (the stream keeps at most
/// 100,000 per task).
const MAX_HISTORY: usize = 100_000;

impl TaskApi {
    /// Starts the next run of a FAILED task; answers the task as it is then.
    pub(crate) async fn retry(&self, id: TaskId, scope: &Scope) -> Result<Task, ApiError> {
        let s = &self.shared;
        let record = self.fresh(self.visible(id, scope).await?).await;
        if record.state != TaskState::Failed {
            return Err(ApiError::NotRetryable {
                id,
                state: state_name(record.state),
            });
        }
        if record.has_children {
            // A new run would start new children beside the old ones, whose failure
            // failed it: not supported yet.
            return Err(ApiError::NotRetryable {
                id,
                state: "a parent with children (retry its failed children instead)",
            });
        }
        let run = record.run + 1;
        let now = json::now_micros();
        let traceparent = trace::current_traceparent();
        let body = record.message(run, now, traceparent.clone());
        let outbox = OutboxEntry {
            subject: nats::task_subject(&record.kind),
            payload: body.encode_to_vec(),
            lease_until_us: now + s.outbox_lease.as_micros() as i64,
        };
        // First durable, then visible: the row outlives a crash after the event.
        s.store.insert_outbox_row(id, &outbox).await?;
        let stored = 'append: {
            for _ in 0..TRIES {
                let Some(last) = s.history.last(id).await? else {
                    return Err(ApiError::NotRetryable {
                        id,
                        state: "without history",
                    });
                };
                match last.state() {
                    TaskState::Failed => {}
                    // Someone else's retry of the same run won: that is this one's answer.
                    TaskState::Queued if last.event.run == run => {
                        return self.answer(id, record.last_seq, &last).await;
                    }
                    other => {
                        return Err(ApiError::NotRetryable {
                            id,
                            state: state_name(other),
                        });
                    }
                }
                let mut ev = nats::new_event(id, &record.kind, TaskState::Queued, 0);
                ev.run = run;
                ev.message = format!("retried by request: run {run}");
                match s.history.append(&ev, last.seq).await {
                    Ok(seq) => break 'append nats::Stored { seq, event: ev },
                    Err(nats::Error::Conflict) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            return Err(nats::Error::Conflict.into());
        };
        match nats::publish_task(
            &s.js,
            outbox.subject,
            &nats::task_msg_id(&id.to_string(), run),
            Bytes::from(outbox.payload),
            traceparent.as_deref(),
        )
        .await
        {
            Ok(_) => s.outbox_cleaner.forget(id),
            Err(e) => tracing::warn!(
                task_id = %id,
                error = %chain(&e),
                "retry's publish not confirmed; the outbox relay enqueues it"
            ),
        }
        metrics::task_event(
            metrics::TASKS_RETRIED_BY_REQUEST,
            &s.kinds.label(&record.kind),
        );
        tracing::info!(task_id = %id, run, "task retried by request");
        self.answer(id, record.last_seq, &stored).await
    }

    /// Projects the task's events up to `last` into its record (as cancel does), and
    /// answers the record.
    async fn answer(
        &self,
        id: TaskId,
        recorded: u64,
        last: &nats::Stored,
    ) -> Result<Task, ApiError> {
        self.project(id, recorded, last).await?;
        self.current(id).await
    }

    /// RetryTasks and DiscardTasks: a dry run counts; a real run changes at most
    /// `limit` tasks that failed before the dry run's moment.
    pub(crate) async fn bulk(
        &self,
        req: BulkTasksRequest,
        scope: &Scope,
        discard: bool,
    ) -> Result<BulkTasksResponse, ApiError> {
        let s = &self.shared;
        let (mut filter, limit, dry_run) = parse_bulk(req)?;
        filter.tenant = scope.tenant().cloned();
        // Tasks are FAILED in the database only once the recorder applied their end:
        // count and choose from what the event stream held when the call came in.
        self.await_recorder().await;
        if dry_run {
            let matched = s.store.count_dead_letters(&filter).await?;
            return Ok(BulkTasksResponse {
                matched,
                remaining: matched,
                finished_before: Some(json::micros_to_timestamp(filter.finished_before_us)),
                task_ids: Vec::new(),
            });
        }
        let changed: Vec<TaskId> = if discard {
            let ids = s.store.discard_dead_letters(&filter, limit).await?;
            tracing::info!(tasks = ids.len(), "dead letters discarded by request");
            ids
        } else {
            let ids = s.store.dead_letters(&filter, limit).await?;
            let results: Vec<(TaskId, Result<Task, ApiError>)> = futures::stream::iter(ids)
                .map(|id| async move { (id, self.retry(id, scope).await) })
                .buffer_unordered(PARALLEL_RETRIES)
                .collect()
                .await;
            let mut retried = Vec::new();
            for (id, result) in results {
                match result {
                    Ok(_) => retried.push(id),
                    // Retried (or discarded) by someone else since it was chosen.
                    Err(ApiError::NotRetryable { .. } | ApiError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            retried
        };
        let remaining = s.store.count_dead_letters(&filter).await?;
        Ok(BulkTasksResponse {
            matched: changed.len() as u64,
            remaining,
            finished_before: Some(json::micros_to_timestamp(filter.finished_before_us)),
            task_ids: changed.iter().map(ToString::to_string).collect(),
        })
    }

    /// The task's attempts in every run, from its history in the event stream.
    pub(crate) async fn attempts(
        &self,
        id: TaskId,
        scope: &Scope,
    ) -> Result<Vec<Attempt>, ApiError> {
        self.visible(id, scope).await?;
        let mut events = Vec::new();
        let mut after = 0;
        while events.len() < MAX_HISTORY {
            match self.shared.history.next_after(id, after).await? {
                Some(next) => {
                    after = next.seq;
                    events.push(next.event);
                }
                None => break,
            }
        }
        Ok(attempts_of(&events))
    }
}

/// Builds the attempts from a task's events, oldest first: an attempt starts at its
/// first RUNNING event and ends at the event that gives its outcome (RETRYING, FAILED,
/// SUCCEEDED, CANCELLED); one that never got an outcome before the next attempt
/// started lost its worker (outcome UNSPECIFIED, no end).
pub fn attempts_of(events: &[taskwire::pb::internal::v1::Event]) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = Vec::new();
    let mut run = 1;
    let mut open: Option<Attempt> = None;
    for ev in events {
        let state = TaskState::try_from(ev.state).unwrap_or(TaskState::Unspecified);
        if ev.run > 1 {
            run = ev.run;
            out.extend(open.take());
            continue;
        }
        match state {
            TaskState::Running => {
                if open.as_ref().is_some_and(|a| a.attempt == ev.attempt) {
                    continue;
                }
                out.extend(open.take());
                open = Some(Attempt {
                    run,
                    attempt: ev.attempt,
                    started_at: ev.time,
                    ended_at: None,
                    outcome: TaskState::Running as i32,
                    error: None,
                    worker: ev.worker.clone(),
                });
            }
            TaskState::Retrying
            | TaskState::Waiting
            | TaskState::Failed
            | TaskState::Succeeded
            | TaskState::Cancelled => {
                if let Some(mut a) = open.take() {
                    a.ended_at = ev.time;
                    a.outcome = state as i32;
                    a.error = ev.error.clone();
                    out.push(a);
                }
            }
            TaskState::Unspecified | TaskState::Queued | TaskState::Scheduled => {}
        }
    }
    out.extend(open);
    // An attempt that was superseded without an outcome lost its worker.
    let n = out.len();
    for (i, a) in out.iter_mut().enumerate() {
        if i + 1 < n && a.outcome == TaskState::Running as i32 {
            a.outcome = TaskState::Unspecified as i32;
        }
    }
    out
}

fn state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Unspecified => "in no state",
        TaskState::Queued => "queued",
        TaskState::Running => "running",
        TaskState::Retrying => "retrying",
        TaskState::Succeeded => "succeeded",
        TaskState::Failed => "failed",
        TaskState::Cancelled => "cancelled",
        TaskState::Scheduled => "scheduled",
        TaskState::Waiting => "waiting",
    }
}

fn parse_bulk(req: BulkTasksRequest) -> Result<(DeadLetterFilter, u32, bool), InvalidInput> {
    let BulkTasksRequest {
        kind,
        labels,
        error_code,
        dry_run,
        finished_before,
        limit,
    } = req;
    let limit = match limit {
        0 => MAX_BULK,
        n if n <= MAX_BULK => n,
        n => {
            return Err(InvalidInput::Malformed {
                field: "limit",
                reason: format!("must be 0 (= {MAX_BULK}) to {MAX_BULK}, got {n}"),
            });
        }
    };
    let finished_before_us = match (dry_run, finished_before) {
        (true, _) => json::now_micros(),
        (false, Some(t)) => json::timestamp_to_micros(&t),
        (false, None) => {
            return Err(InvalidInput::Malformed {
                field: "finished_before",
                reason: "is required: run with dry_run first and pass its finished_before back"
                    .into(),
            });
        }
    };
    let error_code = if error_code.is_empty() {
        None
    } else if error_code.len() <= 128 && error_code.bytes().all(|b| b.is_ascii_graphic()) {
        Some(error_code)
    } else {
        return Err(InvalidInput::Malformed {
            field: "error_code",
            reason: "must be up to 128 printable ASCII characters".into(),
        });
    };
    let filter = DeadLetterFilter {
        kind: if kind.is_empty() {
            None
        } else {
            Some(TaskKind::parse(&kind)?)
        },
        labels: Labels::parse(&labels)?,
        error_code,
        tenant: None,
        finished_before_us,
    };
    Ok((filter, limit, dry_run))
}

#[cfg(test)]
mod tests {
    use taskwire::pb::{internal::v1::Event, v1::TaskError};

    use super::*;

    fn ev(state: TaskState, attempt: u32, t: i64) -> Event {
        Event {
            state: state as i32,
            attempt,
            time: Some(json::micros_to_timestamp(t)),
            worker: "w".into(),
            ..Default::default()
        }
    }

    #[test]
    fn attempts_across_runs_and_a_lost_worker() {
        let err = |code: &str| TaskError {
            code: code.into(),
            ..Default::default()
        };
        let mut failed1 = ev(TaskState::Retrying, 1, 30);
        failed1.error = Some(err("E1"));
        let mut failed3 = ev(TaskState::Failed, 3, 80);
        failed3.error = Some(err("E3"));
        let mut retry = ev(TaskState::Queued, 0, 90);
        retry.run = 2;
        let events = vec![
            ev(TaskState::Running, 1, 10),
            ev(TaskState::Running, 1, 20), // progress of the same attempt
            failed1,
            ev(TaskState::Running, 2, 40), // its worker dies: no outcome
            ev(TaskState::Running, 3, 60),
            failed3,
            retry,
            ev(TaskState::Running, 1, 100),
            ev(TaskState::Succeeded, 1, 120),
        ];
        let a = attempts_of(&events);
        let summary: Vec<(u32, u32, i32, Option<String>)> = a
            .iter()
            .map(|a| {
                (
                    a.run,
                    a.attempt,
                    a.outcome,
                    a.error.as_ref().map(|e| e.code.clone()),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, 1, TaskState::Retrying as i32, Some("E1".into())),
                (1, 2, TaskState::Unspecified as i32, None),
                (1, 3, TaskState::Failed as i32, Some("E3".into())),
                (2, 1, TaskState::Succeeded as i32, None),
            ]
        );
        assert_eq!(a[0].started_at, Some(json::micros_to_timestamp(10)));
        assert_eq!(a[0].ended_at, Some(json::micros_to_timestamp(30)));
        assert_eq!(a[1].ended_at, None);
        assert_eq!(a[3].worker, "w");
    }
}
