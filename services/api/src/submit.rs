//! SubmitTask: store the task with its outbox row, publish it, answer. A delayed task
//! (delay or run_at ahead) is stored SCHEDULED and not published: its outbox row is
//! leased until it is due, and the relay enqueues it then (`relay.rs`).
//!
//! The guarantee (docs/architecture.md, guarantee 1): an OK answer means the task is
//! committed with its outbox row, so it reaches TASKWIRE_TASKS: published by this call
//! (normally before the answer) or, if that publish is not confirmed, by the outbox
//! relay. UNAVAILABLE is answered only before anything is written, so a caller told
//! UNAVAILABLE has no task, and no task it was told about can run.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use futures::future::join_all;
use prost::Message;
use taskwire::{
    domain::{TaskId, TaskKind},
    json,
    nats::{self, Appended, Start, Stored},
    pb::v1::{SubmitTaskResponse, TaskState},
    store::{Inserted, NewTask, OutboxEntry},
    telemetry::{chain, metrics, trace},
};

use crate::{config::Fault, error::ApiError, service::TaskApi};

/// A SubmitTaskRequest whose every field has been checked: the task to insert, but for
/// its id and time, which each try of the submit gives it afresh.
#[derive(Debug, Clone)]
pub struct ValidSubmit(pub NewTask);

impl TaskApi {
    /// SubmitTask: one task through [`TaskApi::submit_all`].
    pub(crate) async fn submit(&self, req: ValidSubmit) -> Result<SubmitTaskResponse, ApiError> {
        let mut answers = self.submit_all(vec![req]).await?;
        answers.pop().expect("an answer per task")
    }

    /// Stores the tasks with their outbox rows (sharing commits with each other and
    /// with concurrent calls), publishes the due ones with pipelined acks, and answers
    /// each, in order. The whole call is UNAVAILABLE only before anything is written
    /// (NATS known down); a task whose insert fails gets its own error, and its caller
    /// has no such task.
    pub(crate) async fn submit_all(
        &self,
        reqs: Vec<ValidSubmit>,
    ) -> Result<Vec<Result<SubmitTaskResponse, ApiError>>, ApiError> {
        let s = &self.shared;
        // Fail fast, before writing anything, when NATS is known to be down.
        if !nats::is_connected(&s.nats) {
            return Err(nats::Error::unavailable("submitting", "not connected").into());
        }
        let now = json::now_micros();
        let traceparent = trace::current_traceparent();
        let (tasks, outboxes): (Vec<NewTask>, Vec<OutboxEntry>) = reqs
            .into_iter()
            .map(|req| {
                let task = NewTask {
                    id: TaskId::new(),
                    created_at_us: now,
                    ..req.0
                };
                // A delayed task's row is leased until it is due: the relay enqueues
                // it then.
                let outbox = OutboxEntry {
                    subject: nats::task_subject(task.kind.as_str()),
                    payload: task.message(traceparent.clone()).encode_to_vec(),
                    lease_until_us: task
                        .run_at_us
                        .unwrap_or(now + s.outbox_lease.as_micros() as i64),
                };
                (task, outbox)
            })
            .unzip();

        // Whether a worker serves each kind is asked while the tasks are written.
        // A child is inserted only once its parent is known to take it.
        let kinds: BTreeSet<&TaskKind> = tasks.iter().map(|t| &t.kind).collect();
        let (inserted, warnings) = tokio::join!(
            join_all(tasks.iter().zip(&outboxes).map(|(t, o)| async move {
                if let Some(parent) = t.parent_id {
                    self.open_parent(parent, t).await?;
                }
                s.inserter.insert(t.clone(), o.clone()).await
            })),
            join_all(kinds.into_iter().map(|k| async move {
                s.kinds
                    .warning(k)
                    .await
                    .map(|w| (k.as_str().to_string(), w))
            }))
        );
        let warnings: HashMap<String, String> = warnings.into_iter().flatten().collect();
        if s.fault == Some(Fault::AbortAfterCommit) && inserted.iter().any(|r| r.is_ok()) {
            std::process::abort();
        }

        // Publish every new, due task before waiting for any ack: a batch costs about
        // one JetStream round trip, not one per task. Each message is moved, not copied.
        join_all(
            tasks
                .iter()
                .zip(outboxes)
                .zip(&inserted)
                .filter(|((task, _), inserted)| {
                    task.run_at_us.is_none() && matches!(inserted, Ok(Inserted::New))
                })
                .map(|((task, outbox), _)| self.publish(task.id, outbox, traceparent.as_deref())),
        )
        .await;

        let mut answers = Vec::with_capacity(tasks.len());
        for (task, inserted) in tasks.iter().zip(inserted) {
            let warning = warnings.get(task.kind.as_str()).cloned();
            // Metrics label kinds no worker serves as one value: a caller inventing
            // kinds must not grow the label set.
            let label = if warning.is_some() {
                metrics::UNSERVED_KIND
            } else {
                task.kind.as_str()
            };
            let answer =
                |task_id: TaskId, state: TaskState, deduplicated: bool| SubmitTaskResponse {
                    task_id: task_id.to_string(),
                    state: state as i32,
                    deduplicated,
                    warning: warning.clone().unwrap_or_default(),
                };
            answers.push(match inserted {
                Err(e) => Err(e),
                // The first task is committed with its outbox row: enqueued by its own
                // call or by the relay, never withdrawn.
                Ok(Inserted::Duplicate(id)) => {
                    metrics::task_event(metrics::TASKS_DEDUPLICATED, label);
                    Ok(answer(id, TaskState::Queued, true))
                }
                Ok(Inserted::New) if task.run_at_us.is_some() => {
                    metrics::task_event(metrics::TASKS_SUBMITTED, label);
                    tracing::info!(task_id = %task.id, "task scheduled");
                    Ok(answer(task.id, TaskState::Scheduled, false))
                }
                Ok(Inserted::New) => {
                    metrics::task_event(metrics::TASKS_SUBMITTED, label);
                    tracing::info!(task_id = %task.id, "task accepted");
                    Ok(answer(task.id, TaskState::Queued, false))
                }
            });
        }
        Ok(answers)
    }

    /// Checks that `parent` takes a child `task` (the same tenant's, its own step not
    /// yet ended) and announces the child in the parent's history, before the child
    /// exists: a tree watch then follows it from its first event. The announcement
    /// keeps the parent's state and attempt (a worker running the parent continues
    /// after it, as after an event of its own), and it is conditional: once the parent
    /// WAITS for its children, or runs its fan-in, or has ended, no child is added.
    async fn open_parent(&self, parent: TaskId, task: &NewTask) -> Result<(), ApiError> {
        let s = &self.shared;
        let record = s
            .store
            .get_task(parent)
            .await?
            .filter(|r| r.tenant == task.tenant)
            .ok_or(ApiError::NotFound(parent))?;
        let closed =
            |last: &Stored| last.state() == TaskState::Waiting || last.event.fan_in_of != 0;
        let appended = s
            .history
            .append_unless(parent, Start::Read, closed, |last| {
                let (state, attempt) =
                    last.map_or((TaskState::Queued, 0), |l| (l.state(), l.event.attempt));
                let mut ev = nats::new_event(parent, &record.kind, state, attempt);
                ev.message = format!("child {} added", task.id);
                ev.children = vec![task.message(None)];
                ev
            })
            .await?;
        if let Appended::Finished(last) = appended {
            let why = if last.is_terminal() {
                "finished"
            } else {
                "waiting for its children or in its fan-in"
            };
            return Err(ApiError::ParentClosed { parent, why });
        }
        s.store.mark_has_children(parent).await?;
        Ok(())
    }

    /// Publishes a committed task. Whatever the outcome, the task is accepted: once
    /// the publish is confirmed its outbox row is deleted (in the background); if not,
    /// the relay publishes it once this call's lease runs out (JetStream drops a second
    /// copy by its id, if the first did arrive). An UNAVAILABLE answer here could be
    /// followed by the task running anyway (the publish may have arrived with its ack
    /// lost), which a caller must never see.
    pub(crate) async fn publish(&self, id: TaskId, outbox: OutboxEntry, traceparent: Option<&str>) {
        let s = &self.shared;
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
                    traceparent,
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
            Err(e) => tracing::warn!(
                task_id = %id,
                error = %chain(&e),
                "publish not confirmed; the outbox relay enqueues the task"
            ),
        }
    }
}
