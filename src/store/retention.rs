//! Retention: terminal tasks expire after an age per state (SUCCEEDED, FAILED,
//! CANCELLED each their own), deleted in small batches so the hot path does not wait
//! behind one long delete. The recorder runs it (services/recorder/src/retention.rs).

use std::time::Duration;

use super::{Error, Store};
use crate::pb::v1::TaskState;

/// How long terminal tasks are kept, per state; `None` keeps them for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// SUCCEEDED tasks.
    pub succeeded: Option<Duration>,
    /// FAILED tasks (the dead letters: usually kept longer).
    pub failed: Option<Duration>,
    /// CANCELLED tasks.
    pub cancelled: Option<Duration>,
}

impl Retention {
    /// Each terminal state with its age, if it expires.
    pub fn ages(&self) -> impl Iterator<Item = (TaskState, Duration)> {
        [
            (TaskState::Succeeded, self.succeeded),
            (TaskState::Failed, self.failed),
            (TaskState::Cancelled, self.cancelled),
        ]
        .into_iter()
        .filter_map(|(state, age)| age.map(|a| (state, a)))
    }
}

impl Store {
    /// Deletes up to `batch` tasks in the terminal `state` that finished before
    /// `before_us`, oldest first, with their labels and any outbox row; returns how many
    /// it deleted. Their idempotency keys are free again afterwards.
    pub async fn expire_tasks(
        &self,
        state: TaskState,
        before_us: i64,
        batch: u32,
    ) -> Result<u64, Error> {
        assert!(state.is_terminal(), "only finished tasks expire");
        self.deadline(async {
            // `finished_at_us IS NOT NULL` lets PostgreSQL use the partial index
            // tasks_by_finished; labels and outbox rows go by ON DELETE CASCADE.
            let done = sqlx::query(
                "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
                 WHERE finished_at_us IS NOT NULL AND finished_at_us < $1 AND state = $2 \
                 ORDER BY finished_at_us LIMIT $3)",
            )
            .bind(before_us)
            .bind(state as i64)
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected())
        })
        .await
    }
}
