//! The transactional outbox: closes the crash window between committing a task and
//! publishing it to JetStream (guarantee 1).
//!
//! SubmitTask writes the task and its outbox row in one transaction, with a lease
//! held by the submitting call. After JetStream acknowledges the publish the row is
//! deleted. If the process dies in between, the lease runs out and a relay (in any
//! api replica) claims the row and publishes it again; JetStream drops a duplicate by
//! its Nats-Msg-Id (the task id). If the publish is not confirmed (NATS down, an ack
//! lost), the submitter still answers OK and leaves the row: the relay publishes it
//! when the lease runs out. A committed task is never withdrawn, so no caller hears
//! "no" about a task that then runs.

use super::{Error, Store};
use crate::{domain::TaskId, pb::v1::TaskState};

/// The message to publish for a task, written with it.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    /// Where to publish: the task's `taskwire.tasks.<kind>`.
    pub subject: String,
    /// The encoded task message.
    pub payload: Vec<u8>,
    /// Until then the row belongs to the submitting call; after it, to the relay.
    pub lease_until_us: i64,
}

/// A claimed row, for the relay to publish.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// The task it publishes.
    pub task_id: TaskId,
    /// Where to publish.
    pub subject: String,
    /// The encoded task message.
    pub payload: Vec<u8>,
}

impl Store {
    /// Forgets the outbox row of a task that JetStream has acknowledged.
    pub async fn delete_outbox(&self, id: TaskId) -> Result<(), Error> {
        self.delete_outbox_rows(&[id]).await
    }

    /// Forgets the outbox rows of many acknowledged tasks in one statement.
    #[tracing::instrument(skip_all, fields(rows = ids.len()), err)]
    pub async fn delete_outbox_rows(&self, ids: &[TaskId]) -> Result<(), Error> {
        self.deadline(async {
            for chunk in ids.chunks(500) {
                let params: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
                let sql = format!(
                    "DELETE FROM outbox WHERE task_id IN ({})",
                    params.join(", ")
                );
                // Safe: only `$n` placeholders were formatted into the statement.
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    q = q.bind(id.to_string());
                }
                q.execute(&self.pool).await?;
            }
            Ok(())
        })
        .await
    }

    /// Claims up to `limit` rows whose lease ran out before `now_us`, extending their
    /// lease to `lease_until_us`. The outer `lease_until_us < now` re-check makes two
    /// concurrent relays claim disjoint rows (PostgreSQL re-evaluates it on the locked
    /// row; SQLite has one writer).
    #[tracing::instrument(skip_all, err)]
    pub async fn claim_outbox(
        &self,
        now_us: i64,
        lease_until_us: i64,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, Error> {
        self.deadline(async {
            let rows = sqlx::query_as::<_, (String, String, Vec<u8>)>(
                "UPDATE outbox SET lease_until_us = $1 \
                 WHERE lease_until_us < $2 AND task_id IN \
                 (SELECT task_id FROM outbox WHERE lease_until_us < $2 \
                  ORDER BY lease_until_us LIMIT $3) \
                 RETURNING task_id, subject, payload",
            )
            .bind(lease_until_us)
            .bind(now_us)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|(id, subject, payload)| {
                    Ok(OutboxRow {
                        task_id: TaskId::parse(&id)
                            .map_err(|_| Error::Corrupt("outbox task id".into()))?,
                        subject,
                        payload,
                    })
                })
                .collect()
        })
        .await
    }

    /// How many outbox rows are due (every row but delayed tasks not yet due), and when
    /// the oldest of them became due (microseconds since the epoch; `None` when none).
    pub async fn outbox_stats(&self) -> Result<(u64, Option<i64>), Error> {
        self.deadline(async {
            // A delayed task's row waits for its time by design: only rows due count,
            // aged from when they became due.
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, MIN(COALESCE(t.run_at_us, t.created_at_us)) AS oldest \
                 FROM outbox o JOIN tasks t ON t.id = o.task_id \
                 WHERE t.run_at_us IS NULL OR t.run_at_us <= $1",
            )
            .bind(crate::json::now_micros())
            .fetch_one(&self.pool)
            .await?;
            use sqlx::Row;
            Ok((
                row.try_get::<i64, _>("n")? as u64,
                row.try_get::<Option<i64>, _>("oldest")?,
            ))
        })
        .await
    }

    /// Writes one outbox row for an existing task (a retry's new run); a row already
    /// there (an unfinished retry of the same run) is kept.
    pub async fn insert_outbox_row(&self, id: TaskId, entry: &OutboxEntry) -> Result<(), Error> {
        self.deadline(async {
            sqlx::query(
                "INSERT INTO outbox (task_id, subject, payload, lease_until_us) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (task_id) DO NOTHING",
            )
            .bind(id.to_string())
            .bind(entry.subject.clone())
            .bind(entry.payload.clone())
            .bind(entry.lease_until_us)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// A delayed task was enqueued: SCHEDULED becomes QUEUED (unless an event already
    /// moved it on: the projection owns every later state).
    pub async fn mark_enqueued(&self, id: TaskId, now_us: i64) -> Result<(), Error> {
        self.deadline(async {
            sqlx::query(
                "UPDATE tasks SET state = $1, updated_at_us = $2 \
                 WHERE id = $3 AND state = $4 AND last_seq = 0",
            )
            .bind(TaskState::Queued as i64)
            .bind(now_us)
            .bind(id.to_string())
            .bind(TaskState::Scheduled as i64)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// Whether a task still waits in the outbox (published but not yet confirmed).
    pub async fn in_outbox(&self, id: TaskId) -> Result<bool, Error> {
        self.deadline(async {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE task_id = $1")
                .bind(id.to_string())
                .fetch_one(&self.pool)
                .await?;
            Ok(n > 0)
        })
        .await
    }
}
