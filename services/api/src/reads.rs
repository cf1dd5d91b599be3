//! GetStatus and ListTasks, consistent with what watchers have seen.
//!
//! The database trails the event stream by the recorder's lag (milliseconds), so a
//! client that watched a task to its end and then read it could be told it is still
//! running. Reads therefore never show less than the stream holds:
//! - A non-terminal record is shown with the events it has not seen folded in, as the
//!   recorder will apply them (a read of the stream's newest event per such task, and
//!   one per unseen event; a terminal record is final and read as is).
//! - A list filtered by a terminal state cannot see, in the database, a task whose
//!   end is not recorded yet; such a list first waits (at most [`CATCH_UP`]) until the
//!   recorder has recorded every event the stream held when the call came in.
//! - A list filtered by another state drops tasks whose newest event moved them out
//!   of it.
//!
//! If NATS cannot be read, the record is answered as it is: reads stay available.

use std::time::Duration;

use futures::StreamExt;
use taskwire::{
    auth::Scope,
    domain::TaskId,
    nats,
    pb::v1::{ListTasksResponse, Task},
    store::{ListQuery, TaskRecord},
    telemetry::chain,
};

use crate::{error::ApiError, service::TaskApi};

/// The longest a terminal-state list waits for the recorder to catch up.
const CATCH_UP: Duration = Duration::from_secs(5);
/// Unseen events a read folds one by one before it folds only the newest.
const FOLD_LIMIT: usize = 8;
/// Stream reads in flight at once while freshening a page.
const PARALLEL_READS: usize = 64;

impl TaskApi {
    pub(crate) async fn status(&self, id: TaskId, scope: &Scope) -> Result<Task, ApiError> {
        let record = self.visible(id, scope).await?;
        let mut records = [self.fresh(record).await];
        self.count_children(&mut records).await?;
        Ok(records[0].to_proto())
    }

    /// Counts the children of those records that have some ([`TaskRecord::tree`]),
    /// once the recorder has recorded what the stream holds now: the counts are never
    /// older than the stream, as the records are.
    pub(crate) async fn count_children(&self, records: &mut [TaskRecord]) -> Result<(), ApiError> {
        if !records.iter().any(|r| r.has_children) {
            return Ok(());
        }
        self.await_recorder().await;
        let mut trees = self
            .shared
            .store
            .trees(&records.iter().collect::<Vec<_>>())
            .await?;
        for r in records {
            r.tree = trees.remove(&r.id);
        }
        Ok(())
    }

    /// The task's record if `scope` sees it; another tenant's task is NOT_FOUND, as a
    /// missing one is (one read either way: the answers cannot be told apart).
    pub(crate) async fn visible(&self, id: TaskId, scope: &Scope) -> Result<TaskRecord, ApiError> {
        self.shared
            .store
            .get_task(id)
            .await?
            .filter(|r| scope.sees(&r.tenant))
            .ok_or(ApiError::NotFound(id))
    }

    pub(crate) async fn list(&self, q: &ListQuery) -> Result<ListTasksResponse, ApiError> {
        if q.state.is_some_and(|s| s.is_terminal()) {
            self.await_recorder().await;
        }
        let (records, next) = self.shared.store.list_tasks(q).await?;
        let mut records: Vec<TaskRecord> = futures::stream::iter(records)
            .map(|r| self.fresh(r))
            .buffered(PARALLEL_READS)
            .filter(|r| std::future::ready(q.state.is_none_or(|s| r.state == s)))
            .collect()
            .await;
        self.count_children(&mut records).await?;
        let tasks: Vec<Task> = records.iter().map(TaskRecord::to_proto).collect();
        Ok(ListTasksResponse {
            tasks,
            next_page_token: next.map(|t| t.encode()).unwrap_or_default(),
        })
    }

    /// The record as of its task's newest event ([`nats::History::catch_up`]): exact
    /// when it trails by up to [`FOLD_LIMIT`] events (the recorder's usual lag is one
    /// or two); beyond, those and the newest are folded.
    pub(crate) async fn fresh(&self, mut record: TaskRecord) -> TaskRecord {
        if record.state.is_terminal() {
            return record;
        }
        let history = &self.shared.history;
        let caught_up = match history.last(record.id).await {
            Ok(newest) => history.catch_up(&mut record, newest, FOLD_LIMIT).await,
            Err(e) => Err(e),
        };
        if let Err(e) = caught_up {
            tracing::debug!(task_id = %record.id, error = %chain(&e), "answering from the record alone");
        }
        record
    }

    /// Waits until the recorder has recorded what the event stream holds now.
    pub(crate) async fn await_recorder(&self) {
        let js = &self.shared.js;
        let wait = async {
            let target = nats::streams::recorder_position(js).await?.stream_last;
            while nats::streams::recorder_position(js).await?.recorded_through < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<_, nats::Error>(())
        };
        match tokio::time::timeout(CATCH_UP, wait).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %chain(&e), "recorder position unknown"),
            Err(_) => tracing::info!(
                "the recorder is more than {CATCH_UP:?} behind; listing what it has recorded"
            ),
        }
    }
}
