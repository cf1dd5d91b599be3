//! Cancel signals: one core subscription on `taskwire.cancel.>` per worker process,
//! routed to the attempts running here. Core NATS is at-most-once, which is enough:
//! the api has already appended CANCELLED to the task's history, so a missed signal
//! only delays the stop until the attempt's next event is rejected.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use taskwire::{domain::TaskId, nats};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub(crate) struct Cancels {
    running: Arc<Mutex<HashMap<TaskId, CancellationToken>>>,
}

impl Cancels {
    /// Subscribes and routes signals until `shutdown`.
    pub(crate) async fn start(
        client: &async_nats::Client,
        shutdown: CancellationToken,
    ) -> Result<Self, nats::Error> {
        let mut sub = client
            .subscribe(nats::subjects::CANCEL_ALL)
            .await
            .map_err(|e| nats::Error::unavailable("subscribing to cancel signals", e))?;
        let cancels = Self::default();
        let running = cancels.running.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    m = sub.next() => match m { Some(m) => m, None => return },
                };
                let id = nats::subjects::task_of_cancel(&msg.subject);
                if let Some(token) =
                    id.and_then(|id| running.lock().expect("lock").get(&id).cloned())
                {
                    tracing::info!(task_id = ?id, "cancel signal");
                    token.cancel();
                }
            }
        });
        Ok(cancels)
    }

    /// Routes signals for `id` to `token` until the guard is dropped.
    pub(crate) fn register(&self, id: TaskId, token: CancellationToken) -> Registration {
        self.running.lock().expect("lock").insert(id, token);
        Registration {
            id,
            running: self.running.clone(),
        }
    }
}

pub(crate) struct Registration {
    id: TaskId,
    running: Arc<Mutex<HashMap<TaskId, CancellationToken>>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.running.lock().expect("lock").remove(&self.id);
    }
}
