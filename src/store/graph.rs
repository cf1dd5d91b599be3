//! Task graphs in the database: a parent's children, the counts and progress of its
//! tree, and the steps the api's graph loop takes a waiting parent through
//! (`services/api/src/graph.rs`): create its children, then run its fan-in (or fail
//! it) once they are done, and cancel the children of a cancelled or failed parent.
//!
//! Every step is guarded by a seq column on the parent row, so two api replicas (or a
//! restarted one) doing the same step do it once: the UPDATE that moves the guard is
//! the claim.

use std::collections::HashMap;

use sqlx::Row;

use super::{
    Error, NewTask, OutboxEntry, Store, TaskRecord,
    read::{state_of, stored_error, stored_state},
};
use crate::{
    domain::TaskId,
    pb::v1::{ChildCounts, ChildFailurePolicy, TaskError, TaskState},
};

/// States a child can still leave: it holds its parent's fan-in back.
const ACTIVE: &str = "(1, 2, 3, 7, 8)";

/// What a parent's graph loop step needs of one child.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    /// The child's id.
    pub id: TaskId,
    /// Its kind.
    pub kind: String,
    /// Its state.
    pub state: TaskState,
    /// Its output (JSON text), if it succeeded.
    pub output: Option<String>,
    /// Its error, if it failed.
    pub error: Option<TaskError>,
    /// What its failure does to the parent.
    pub child_failure: ChildFailurePolicy,
}

/// A parent's children counted by state, with the sum of their progress (a terminal
/// child counts 1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    /// The counts.
    pub counts: ChildCounts,
    /// Σ progress over the children, terminal ones as 1.
    pub done: f64,
}

impl Store {
    /// WAITING parents whose children are still to create: each with the seq of its
    /// WAITING event (the row's last_seq).
    pub async fn parents_to_spawn(&self, limit: u32) -> Result<Vec<(TaskId, u64)>, Error> {
        self.waiting_parents(
            "SELECT id, last_seq FROM tasks WHERE state = $1 AND spawned_seq < last_seq LIMIT $2",
            limit,
        )
        .await
    }

    /// WAITING parents whose children are created and either all terminal or one of
    /// them failed with the FAIL_PARENT policy, each with its WAITING event's seq.
    pub async fn parents_to_fan_in(&self, limit: u32) -> Result<Vec<(TaskId, u64)>, Error> {
        self.waiting_parents(
            &format!(
                "SELECT p.id, p.last_seq FROM tasks p \
                 WHERE p.state = $1 AND p.spawned_seq = p.last_seq AND p.fan_in_seq < p.last_seq \
                 AND (NOT EXISTS (SELECT 1 FROM tasks c WHERE c.parent_id = p.id AND c.state IN {ACTIVE}) \
                   OR EXISTS (SELECT 1 FROM tasks c WHERE c.parent_id = p.id AND c.state IN (5, 6) \
                              AND c.child_failure IN (0, 1))) \
                 LIMIT $2"
            ),
            limit,
        )
        .await
    }

    async fn waiting_parents(&self, sql: &str, limit: u32) -> Result<Vec<(TaskId, u64)>, Error> {
        self.deadline(async {
            // Safe: the callers pass fixed SQL.
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .bind(TaskState::Waiting as i64)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| {
                    let id: String = r.try_get("id")?;
                    Ok((
                        super::stored_id(&id)?,
                        r.try_get::<i64, _>("last_seq")? as u64,
                    ))
                })
                .collect()
        })
        .await
    }

    /// Creates the children a parent's WAITING event (at `seq`) started, with their
    /// outbox rows, and marks the parent's children created, in one transaction; the
    /// children inherit the parent's caller and tenant. Returns false (writing
    /// nothing) if they were created already (another api replica, an earlier round).
    pub async fn create_children(
        &self,
        parent: TaskId,
        seq: u64,
        spawn_progress: f64,
        children: &[(NewTask, OutboxEntry)],
    ) -> Result<bool, Error> {
        self.deadline(async {
            let mut tx = self.pool.begin().await?;
            let claimed = sqlx::query(
                "UPDATE tasks SET spawned_seq = $1, spawn_progress = $2, has_children = $3 \
                 WHERE id = $4 AND spawned_seq < $1",
            )
            .bind(seq as i64)
            .bind(spawn_progress)
            .bind(i64::from(!children.is_empty()))
            .bind(parent.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                return Ok(false);
            }
            self.insert_tasks_on(&mut tx, children).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Marks a parent as having children (a client submitted one), so reads count them.
    pub async fn mark_has_children(&self, parent: TaskId) -> Result<(), Error> {
        self.deadline(async {
            sqlx::query("UPDATE tasks SET has_children = 1 WHERE id = $1 AND has_children = 0")
                .bind(parent.to_string())
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// Claims a parent's fan-in (or failure) for its WAITING event at `seq`, writing
    /// the fan-in's outbox row (if any) in the same transaction, so a crash after the
    /// claim leaves the relay to publish it. False (writing nothing) if another round
    /// claimed it.
    pub async fn claim_fan_in(
        &self,
        parent: TaskId,
        seq: u64,
        outbox: Option<&OutboxEntry>,
    ) -> Result<bool, Error> {
        self.deadline(async {
            let mut tx = self.pool.begin().await?;
            let n =
                sqlx::query("UPDATE tasks SET fan_in_seq = $1 WHERE id = $2 AND fan_in_seq < $1")
                    .bind(seq as i64)
                    .bind(parent.to_string())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if n == 0 {
                return Ok(false);
            }
            if let Some(o) = outbox {
                // The parent's own first message was published long ago; a row left
                // from it (unconfirmed publish) would only be republished, harmlessly.
                sqlx::query("DELETE FROM outbox WHERE task_id = $1")
                    .bind(parent.to_string())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO outbox (task_id, subject, payload, lease_until_us) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(parent.to_string())
                .bind(o.subject.clone())
                .bind(o.payload.clone())
                .bind(o.lease_until_us)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// A parent's children in the order they were created.
    pub async fn children(&self, parent: TaskId) -> Result<Vec<Child>, Error> {
        self.deadline(async {
            let rows = sqlx::query(
                "SELECT id, kind, state, output, error_code, error_message, error_retryable, \
                 child_failure FROM tasks WHERE parent_id = $1 ORDER BY created_at_us, id",
            )
            .bind(parent.to_string())
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let id: String = r.try_get("id")?;
                    let policy = r.try_get::<i64, _>("child_failure")?;
                    Ok(Child {
                        id: super::stored_id(&id)?,
                        kind: r.try_get("kind")?,
                        state: stored_state(r)?,
                        output: r.try_get("output")?,
                        error: stored_error(r)?,
                        child_failure: i32::try_from(policy)
                            .ok()
                            .and_then(|p| ChildFailurePolicy::try_from(p).ok())
                            .unwrap_or_default(),
                    })
                })
                .collect()
        })
        .await
    }

    /// The children of `parent` not yet terminal.
    pub async fn active_children(&self, parent: TaskId) -> Result<Vec<TaskId>, Error> {
        self.deadline(async {
            let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM tasks WHERE parent_id = $1 AND state IN {ACTIVE}"
            )))
            .bind(parent.to_string())
            .fetch_all(&self.pool)
            .await?;
            ids.iter().map(|s| super::stored_id(s)).collect()
        })
        .await
    }

    /// Marks (or clears) a parent whose children are being cancelled with it: set
    /// before its terminal event is appended, cleared once they are, so that
    /// [`Store::pending_cascades`] finds what a crash cut short.
    pub async fn mark_cascade(&self, parent: TaskId, pending: bool) -> Result<(), Error> {
        self.deadline(async {
            sqlx::query("UPDATE tasks SET cascade_pending = $1 WHERE id = $2")
                .bind(i64::from(pending))
                .bind(parent.to_string())
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// Parents marked by [`Store::mark_cascade`] (`tasks_cascade_pending`, a partial
    /// index that is almost always empty).
    pub async fn pending_cascades(&self, limit: u32) -> Result<Vec<TaskId>, Error> {
        self.deadline(async {
            let ids: Vec<String> =
                sqlx::query_scalar("SELECT id FROM tasks WHERE cascade_pending = 1 LIMIT $1")
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
            ids.iter().map(|s| super::stored_id(s)).collect()
        })
        .await
    }

    /// The trees of those `records` that have children, by parent.
    pub async fn trees(&self, records: &[&TaskRecord]) -> Result<HashMap<TaskId, Tree>, Error> {
        let parents: Vec<TaskId> = records
            .iter()
            .filter(|r| r.has_children)
            .map(|r| r.id)
            .collect();
        let mut trees: HashMap<TaskId, Tree> = HashMap::new();
        if parents.is_empty() {
            return Ok(trees);
        }
        self.deadline(async {
            for chunk in parents.chunks(500) {
                let params: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
                let sql = format!(
                    "SELECT parent_id, state, COUNT(*) AS n, SUM(progress_fraction) AS p \
                     FROM tasks WHERE parent_id IN ({}) GROUP BY parent_id, state",
                    params.join(", ")
                );
                // Safe: only `$n` placeholders were formatted into the statement.
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    q = q.bind(id.to_string());
                }
                for r in q.fetch_all(&self.pool).await? {
                    let parent: String = r.try_get("parent_id")?;
                    let tree = trees.entry(super::stored_id(&parent)?).or_default();
                    let n = r.try_get::<i64, _>("n")? as u32;
                    let progress: f64 = r.try_get::<Option<f64>, _>("p")?.unwrap_or(0.0);
                    let c = &mut tree.counts;
                    c.total += n;
                    match state_of(r.try_get("state")?) {
                        Some(TaskState::Succeeded) => c.succeeded += n,
                        Some(TaskState::Failed) => c.failed += n,
                        Some(TaskState::Cancelled) => c.cancelled += n,
                        _ => {
                            c.active += n;
                            tree.done += progress.clamp(0.0, f64::from(n));
                            continue;
                        }
                    }
                    tree.done += f64::from(n);
                }
            }
            Ok(trees)
        })
        .await
    }
}
