//! The graph loop: takes waiting parents through their steps. Every api replica runs
//! one, beside the outbox relay; each step is claimed by a guarded UPDATE on the
//! parent's row (`src/store/graph.rs`), so replicas and restarts do each step once.
//!
//! A handler that spawns children ends its step with a WAITING event carrying them.
//! Then, each round:
//! 1. Parents WAITING whose children are not yet created: the children named by the
//!    WAITING event are written (rows and outbox rows, one transaction), then
//!    published like submits (the relay publishes what a crash left).
//! 2. Parents whose children are all terminal: the fan-in message, carrying every
//!    child's result, is written to the outbox with the claim and published on the
//!    fan-in kind's subject. Or, if a child with the FAIL_PARENT policy failed, the
//!    parent's FAILED event is appended (conditionally: a cancel may have won) and its
//!    other children are cancelled.
//! 3. Now and then, the cascades a crash cut short (parents marked as cancelling
//!    their children) are finished.

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use prost::Message as _;
use taskwire::{
    domain::{Caller, Labels, TaskId, TaskKind},
    json,
    nats::{self, Appended, Start, Stored},
    pb::{
        internal::v1::{ChildResult, FanIn, TaskMessage},
        v1::{CancelPolicy, ChildFailurePolicy, TaskError, TaskState},
    },
    store::{Child, NewTask, OutboxEntry, TaskRecord},
    telemetry::chain,
};
use tokio_util::sync::CancellationToken;

use crate::{error::ApiError, service::TaskApi};

/// Parents taken per step and round.
const BATCH: u32 = 100;
/// Every this many rounds, the sweep for children of cancelled parents.
const SWEEP_EVERY: u32 = 20;

/// The graph loop of one api replica.
#[derive(Debug)]
pub struct Graph {
    pub api: TaskApi,
    pub poll: Duration,
}

impl Graph {
    /// Runs until `shutdown`; a failed round is logged and tried again next time.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut rounds = 0_u32;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.poll) => {}
            }
            if !nats::is_connected(&self.api.shared.nats) {
                continue;
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %chain(&e), "graph round failed");
            }
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(SWEEP_EVERY)
                && let Err(e) = self.sweep().await
            {
                tracing::warn!(error = %chain(&e), "sweep of cancelled trees failed");
            }
        }
    }

    async fn round(&self) -> Result<(), ApiError> {
        let store = &self.api.shared.store;
        for (parent, seq) in store.parents_to_spawn(BATCH).await? {
            if let Err(e) = self.spawn(parent, seq).await {
                tracing::warn!(task_id = %parent, error = %chain(&e), "children not created; retrying");
            }
        }
        for (parent, seq) in store.parents_to_fan_in(BATCH).await? {
            if let Err(e) = self.fan_in(parent, seq).await {
                tracing::warn!(task_id = %parent, error = %chain(&e), "fan-in not started; retrying");
            }
        }
        Ok(())
    }

    /// Creates and enqueues the children the WAITING event at `seq` names.
    async fn spawn(&self, parent: TaskId, seq: u64) -> Result<(), ApiError> {
        let s = &self.api.shared;
        let Some(record) = s.store.get_task(parent).await? else {
            return Ok(());
        };
        let waiting = s
            .history
            .next_after(parent, seq - 1)
            .await?
            .filter(|e| e.seq == seq && e.state() == TaskState::Waiting);
        let Some(Stored { event, .. }) = waiting else {
            // The row says WAITING at a seq the stream does not: nothing to create.
            s.store.create_children(parent, seq, 0.0, &[]).await?;
            return Ok(());
        };
        let now = json::now_micros();
        let lease = now + s.outbox_lease.as_micros() as i64;
        let (children, traceparents): (Vec<(NewTask, OutboxEntry)>, Vec<String>) = event
            .children
            .iter()
            .filter_map(|m| child_task(&record, m, now).map_err(|why| {
                tracing::warn!(task_id = %parent, child = %m.task_id, %why, "a child the handler started is malformed; skipped");
            }).ok())
            .map(|(task, traceparent)| {
                let outbox = OutboxEntry {
                    subject: nats::task_subject(task.kind.as_str()),
                    payload: task.message(Some(traceparent.clone())).encode_to_vec(),
                    lease_until_us: lease,
                };
                ((task, outbox), traceparent)
            })
            .unzip();
        let spawn_progress = event.progress.as_ref().map_or(0.0, |p| p.fraction);
        if !s
            .store
            .create_children(parent, seq, spawn_progress, &children)
            .await?
        {
            return Ok(());
        }
        tracing::info!(task_id = %parent, children = children.len(), "children created");
        // As a submit's tasks: what is not confirmed stays in the outbox for the relay.
        let traced = taskwire::telemetry::trace::enabled();
        join_all(
            children
                .into_iter()
                .zip(&traceparents)
                .map(|((task, outbox), traceparent)| {
                    self.api
                        .publish(task.id, outbox, traced.then_some(traceparent.as_str()))
                }),
        )
        .await;
        Ok(())
    }

    /// Starts the fan-in of a parent whose children are done, or fails it if one
    /// failed under the FAIL_PARENT policy.
    async fn fan_in(&self, parent: TaskId, seq: u64) -> Result<(), ApiError> {
        let s = &self.api.shared;
        let Some(record) = s.store.get_task(parent).await? else {
            return Ok(());
        };
        let children = s.store.children(parent).await?;
        if let Some(failed) = children.iter().find(|c| fails_parent(c)) {
            return self.fail(record, seq, failed).await;
        }
        let waiting = s
            .history
            .next_after(parent, seq - 1)
            .await?
            .filter(|e| e.seq == seq);
        let Some(Stored { event, .. }) = waiting else {
            s.store.claim_fan_in(parent, seq, None).await?;
            return Ok(());
        };
        let kind = match event.fan_in_kind.as_str() {
            "" => record.kind.clone(),
            k => k.to_string(),
        };
        let body = TaskMessage {
            kind: kind.clone(),
            fan_in: Some(FanIn {
                children: children
                    .iter()
                    .filter(|c| {
                        c.state == TaskState::Succeeded
                            || c.child_failure != ChildFailurePolicy::Ignore
                    })
                    .map(child_result)
                    .collect(),
                step_output: event.output.clone(),
                waiting_seq: seq,
            }),
            ..record.message(record.run, json::now_micros(), None)
        };
        let outbox = OutboxEntry {
            subject: nats::task_subject(&kind),
            payload: body.encode_to_vec(),
            lease_until_us: json::now_micros() + s.outbox_lease.as_micros() as i64,
        };
        if !s.store.claim_fan_in(parent, seq, Some(&outbox)).await? {
            return Ok(());
        }
        nats::publish_task(
            &s.js,
            outbox.subject,
            &nats::message_id(&body),
            Bytes::from(outbox.payload),
            None,
        )
        .await?;
        s.store.delete_outbox(parent).await?;
        tracing::info!(task_id = %parent, %kind, children = children.len(), "fan-in enqueued");
        Ok(())
    }

    /// Fails a parent one of whose children failed under FAIL_PARENT, then cancels
    /// its other children (by its cancel policy).
    async fn fail(&self, record: TaskRecord, seq: u64, child: &Child) -> Result<(), ApiError> {
        let s = &self.api.shared;
        let parent = record.id;
        let cascades = record.cancel_policy != CancelPolicy::Abandon as i32;
        if cascades {
            s.store.mark_cascade(parent, true).await?;
        }
        let appended = s
            .history
            .append_unless_finished(parent, Start::Read, |last| {
                let attempt = last.map_or(0, |l| l.event.attempt);
                let mut ev = nats::new_event(parent, &record.kind, TaskState::Failed, attempt);
                ev.error = Some(TaskError {
                    code: "CHILD_FAILED".into(),
                    message: format!(
                        "child {} ({}) {}{}",
                        child.id,
                        child.kind,
                        if child.state == TaskState::Cancelled {
                            "was cancelled"
                        } else {
                            "failed"
                        },
                        child
                            .error
                            .as_ref()
                            .map(|e| format!(": {}: {}", e.code, e.message))
                            .unwrap_or_default()
                    ),
                    retryable: false,
                });
                ev
            })
            .await?;
        if let Appended::Appended(stored) = &appended {
            tracing::info!(task_id = %parent, child = %child.id, "parent failed with its child");
            self.api.project(parent, record.last_seq, stored).await?;
        }
        s.store.claim_fan_in(parent, seq, None).await?;
        if cascades {
            self.api.cascade(parent).await;
        }
        Ok(())
    }

    /// Finishes the cascades a crash cut short: the children of parents marked as
    /// cancelling theirs. A parent that did not end after all (its cancel lost to
    /// its success) is unmarked.
    async fn sweep(&self) -> Result<(), ApiError> {
        let store = &self.api.shared.store;
        for parent in store.pending_cascades(BATCH).await? {
            match store.get_task(parent).await? {
                Some(r) if matches!(r.state, TaskState::Cancelled | TaskState::Failed) => {
                    tracing::info!(task_id = %parent, "cancelling the children of a cancelled parent");
                    self.api.cascade(parent).await;
                }
                // Terminal only once the recorder has its event: next round.
                Some(r)
                    if !r.state.is_terminal()
                        && self
                            .api
                            .shared
                            .history
                            .last(parent)
                            .await?
                            .is_some_and(|l| l.is_terminal()) => {}
                _ => store.mark_cascade(parent, false).await?,
            }
        }
        Ok(())
    }
}

/// Whether a child's end fails its parent: FAILED or CANCELLED under FAIL_PARENT.
fn fails_parent(c: &Child) -> bool {
    matches!(c.state, TaskState::Failed | TaskState::Cancelled)
        && matches!(
            c.child_failure,
            ChildFailurePolicy::Unspecified | ChildFailurePolicy::FailParent
        )
}

fn child_result(c: &Child) -> ChildResult {
    ChildResult {
        task_id: c.id.to_string(),
        kind: c.kind.clone(),
        state: c.state as i32,
        output: c.output.as_deref().map(json::text_to_value),
        error: c.error.clone(),
    }
}

/// The task row of a child a handler started (`m`, from the WAITING event), in its
/// parent's tenant; with the trace context to publish it with.
fn child_task(parent: &TaskRecord, m: &TaskMessage, now: i64) -> Result<(NewTask, String), String> {
    let input = json::value_to_json(m.input.as_ref())
        .map_err(|e| e.to_string())?
        .to_string();
    Ok((
        NewTask {
            id: TaskId::parse(&m.task_id).map_err(|e| e.to_string())?,
            kind: TaskKind::parse(&m.kind).map_err(|e| e.to_string())?,
            // Children have no idempotency key: the WAITING event's ids are theirs.
            caller: Caller::default(),
            tenant: parent.tenant.clone(),
            idempotency_key: None,
            input,
            labels: Labels::parse(&m.labels).map_err(|e| e.to_string())?,
            max_attempts: m.max_attempts.clamp(1, 100),
            // As a submit's (the worker checked it; another SDK may not have).
            timeout: taskwire::domain::parse_timeout(m.timeout.as_ref())
                .map_err(|e| e.to_string())?,
            created_at_us: now,
            run_at_us: None,
            parent_id: Some(parent.id),
            child_failure: m.child_failure,
            cancel_policy: m.cancel_policy,
        },
        m.traceparent.clone(),
    ))
}
