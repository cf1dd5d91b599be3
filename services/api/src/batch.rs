//! Group commit: concurrent SubmitTask calls share database transactions.
//!
//! One inserter task takes whatever submits are waiting (at least one, at most
//! `MAX_BATCH`) and writes them in one transaction, so under load many tasks share a
//! commit (PostgreSQL: ~3,000 single-row commits/s, but tens of thousands of rows/s in
//! shared ones; SQLite: one writer anyway). An idle api writes each submit at once: no
//! timer, no added latency. Outbox rows of published tasks are deleted the same way,
//! off the answer's path (the relay covers a delete that never happens).

use std::{sync::Arc, time::Duration};

use taskwire::{
    domain::TaskId,
    store::{self, Inserted, NewTask, OutboxEntry, Store},
};
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;

/// Most submits in one transaction.
const MAX_BATCH: usize = 512;
/// How long the inserter keeps its database connection with nothing to write.
const HOLD_IDLE_CONNECTION: Duration = Duration::from_millis(100);

struct Job {
    task: NewTask,
    outbox: OutboxEntry,
    reply: oneshot::Sender<Result<Inserted, store::Error>>,
}

/// The front of the inserter; cheap to clone.
#[derive(Debug, Clone)]
pub struct Inserter {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("task", &self.task.id).finish()
    }
}

impl Inserter {
    /// Starts the inserter; it stops when every `Inserter` is dropped.
    pub fn spawn(store: Store) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut writer = store.writer();
            loop {
                // The writer keeps its connection while submits keep coming, and gives
                // it back once idle (closing the pool waits for it).
                let first = match tokio::time::timeout(HOLD_IDLE_CONNECTION, rx.recv()).await {
                    Ok(first) => first,
                    Err(_) => {
                        writer.release();
                        rx.recv().await
                    }
                };
                let Some(first) = first else { break };
                let mut jobs = vec![first];
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let rows: Vec<(NewTask, OutboxEntry)> = jobs
                    .iter()
                    .map(|j| (j.task.clone(), j.outbox.clone()))
                    .collect();
                match writer.insert_tasks(&rows).await {
                    Ok(results) => {
                        for (job, r) in jobs.into_iter().zip(results) {
                            let _ = job.reply.send(Ok(r));
                        }
                    }
                    Err(e) => {
                        let e = Arc::new(e);
                        for job in jobs {
                            let _ = job.reply.send(Err(store::Error::Batch(e.clone())));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Inserts one task (with others waiting at the same time) and answers for it.
    pub async fn insert(&self, task: NewTask, outbox: OutboxEntry) -> Result<Inserted, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job {
                task,
                outbox,
                reply,
            })
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        Ok(answer.await.map_err(|_| ApiError::ShuttingDown)??)
    }
}

/// Deletes outbox rows of published tasks in batches, in the background.
#[derive(Debug, Clone)]
pub struct OutboxCleaner {
    tx: mpsc::UnboundedSender<TaskId>,
}

impl OutboxCleaner {
    pub fn spawn(store: Store) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<TaskId>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut ids = vec![first];
                while ids.len() < 4 * MAX_BATCH {
                    match rx.try_recv() {
                        Ok(id) => ids.push(id),
                        Err(_) => break,
                    }
                }
                // A failure leaves rows for the relay, which re-publishes them and
                // JetStream drops the duplicates: a warning, not an error.
                if let Err(e) = store.delete_outbox_rows(&ids).await {
                    tracing::warn!(error = %taskwire::telemetry::chain(&e), rows = ids.len(), "outbox rows left for the relay");
                }
            }
        });
        Self { tx }
    }

    pub fn forget(&self, id: TaskId) {
        let _ = self.tx.send(id);
    }
}
