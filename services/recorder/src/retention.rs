//! Deletes terminal tasks past their retention age (`--retain-succeeded`,
//! `--retain-failed`, `--retain-cancelled`), every `--retention-interval`, in batches
//! of `--retention-batch` with a pause between them: a backlog of expired tasks (the
//! first run on an old database) is worked off without holding the tasks table, and
//! the projection's writes go on between batches.
//!
//! Every recorder replica runs it; two deleting at once delete disjoint rows or
//! nothing, so no coordination is needed.

use std::time::Duration;

use taskwire::{
    store::{Retention, Store},
    telemetry::{chain, metrics},
};
use tokio_util::sync::CancellationToken;

/// The pause between two batches of one pass.
const BETWEEN_BATCHES: Duration = Duration::from_millis(100);

/// Runs retention passes until `shutdown`.
pub async fn run(
    store: Store,
    retention: Retention,
    interval: Duration,
    batch: u32,
    shutdown: CancellationToken,
) {
    if retention.ages().next().is_none() {
        return;
    }
    loop {
        if let Err(e) = pass(&store, &retention, batch, &shutdown).await {
            tracing::warn!(error = %chain(&e), "retention pass failed; trying again next interval");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One pass: every expired task of every state, a batch at a time; returns how many
/// were deleted.
pub async fn pass(
    store: &Store,
    retention: &Retention,
    batch: u32,
    shutdown: &CancellationToken,
) -> Result<u64, taskwire::store::Error> {
    let now_us = taskwire::json::now_micros();
    let mut total = 0;
    for (state, age) in retention.ages() {
        let before_us = now_us - i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
        loop {
            let deleted = store.expire_tasks(state, before_us, batch).await?;
            total += deleted;
            if deleted > 0 {
                let label = state.as_str_name().trim_start_matches("TASK_STATE_");
                metrics::counter!(metrics::TASKS_EXPIRED, "state" => label.to_ascii_lowercase())
                    .increment(deleted);
                tracing::debug!(?state, deleted, "expired tasks deleted");
            }
            if deleted < u64::from(batch) || shutdown.is_cancelled() {
                break;
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
    }
    Ok(total)
}
