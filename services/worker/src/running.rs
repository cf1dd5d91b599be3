//! The attempts running in this worker process, as the rest of the system sees them:
//! one core subscription on `taskwire.cancel.>` routes cancel signals to them, and one
//! on `taskwire.running.>` answers "who runs this task?" for them (docs/protocol.md §5).
//!
//! Core NATS is at-most-once, which is enough for both. The api has already appended
//! CANCELLED to the task's history, so a missed signal only delays the stop until the
//! attempt's next event is rejected. A missed answer makes the asking worker take the
//! task over, and the attempt running here stops at its next rejected event: the task
//! runs again, but nothing is lost.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::StreamExt;
use taskwire::{domain::TaskId, nats};
use tokio_util::sync::CancellationToken;

/// An attempt running here: how to stop it, and its number once it has claimed the
/// task. `token` tells one registration from a later one of the same task.
#[derive(Debug)]
struct Entry {
    token: u64,
    stop: CancellationToken,
    attempt: Option<u32>,
}

type Table = Arc<Mutex<HashMap<TaskId, Entry>>>;

#[derive(Debug, Clone, Default)]
pub(crate) struct Running {
    attempts: Table,
    next_token: Arc<AtomicU64>,
}

impl Running {
    /// Subscribes to cancel signals and running-queries, and serves them until
    /// `shutdown`.
    pub(crate) async fn start(
        client: &async_nats::Client,
        shutdown: CancellationToken,
    ) -> Result<Self, nats::Error> {
        let subscribe = |subject: &'static str| async move {
            client
                .subscribe(subject)
                .await
                .map_err(|e| nats::Error::unavailable(format!("subscribing to {subject}"), e))
        };
        let mut cancels = subscribe(nats::subjects::CANCEL_ALL).await?;
        let mut queries = subscribe(nats::subjects::RUNNING_ALL).await?;
        let running = Self::default();
        let attempts = running.attempts.clone();
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    m = cancels.next() => match m {
                        Some(m) => cancel(&attempts, &m.subject),
                        None => return,
                    },
                    m = queries.next() => match m {
                        Some(m) => answer(&client, &attempts, m).await,
                        None => return,
                    },
                }
            }
        });
        Ok(running)
    }

    /// Routes cancel signals for `id` to `stop` until the guard is dropped. Register
    /// before claiming the task, so a cancel that follows the claim is not missed.
    pub(crate) fn register(&self, id: TaskId, stop: CancellationToken) -> Registration {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.attempts.lock().expect("lock").insert(
            id,
            Entry {
                token,
                stop,
                attempt: None,
            },
        );
        Registration {
            id,
            token,
            attempts: self.attempts.clone(),
        }
    }

    /// The attempt of `id` running here, once it has claimed the task.
    pub(crate) fn attempt_of(&self, id: TaskId) -> Option<u32> {
        self.attempts
            .lock()
            .expect("lock")
            .get(&id)
            .and_then(|e| e.attempt)
    }
}

fn cancel(attempts: &Table, subject: &str) {
    let id = nats::subjects::task_of_cancel(subject);
    let stop = id.and_then(|id| {
        attempts
            .lock()
            .expect("lock")
            .get(&id)
            .map(|e| e.stop.clone())
    });
    if let Some(stop) = stop {
        tracing::info!(task_id = ?id, "cancel signal");
        stop.cancel();
    }
}

/// Answers a running-query with the attempt number, if that task runs here; says
/// nothing otherwise (the asker's timeout is the "no").
async fn answer(client: &async_nats::Client, attempts: &Table, query: async_nats::Message) {
    let attempt = nats::subjects::task_of_running(&query.subject).and_then(|id| {
        attempts
            .lock()
            .expect("lock")
            .get(&id)
            .and_then(|e| e.attempt)
    });
    if let (Some(attempt), Some(reply)) = (attempt, query.reply)
        && let Err(e) = client.publish(reply, attempt.to_string().into()).await
    {
        tracing::debug!(error = %e, "cannot answer a running-query");
    }
}

/// An attempt's place in [`Running`]: removed when dropped.
pub(crate) struct Registration {
    id: TaskId,
    token: u64,
    attempts: Table,
}

impl Registration {
    /// Records the attempt's number once it has claimed the task: from now on this
    /// process answers running-queries for it.
    pub(crate) fn claimed(&self, attempt: u32) {
        if let Some(e) = self.attempts.lock().expect("lock").get_mut(&self.id)
            && e.token == self.token
        {
            e.attempt = Some(attempt);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut attempts = self.attempts.lock().expect("lock");
        // A later registration of the same task (a redelivery taking it over here)
        // owns the entry now.
        if attempts
            .get(&self.id)
            .is_some_and(|e| e.token == self.token)
        {
            attempts.remove(&self.id);
        }
    }
}

/// Asks whether a live worker runs `id`; returns the attempt it runs, or None if no
/// worker answered within `wait` (or NATS could not be asked).
pub(crate) async fn ask(
    client: &async_nats::Client,
    id: TaskId,
    wait: std::time::Duration,
) -> Option<u32> {
    let reply = tokio::time::timeout(wait, client.request(nats::running_subject(id), "".into()))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(&reply.payload).ok()?.parse().ok()
}
