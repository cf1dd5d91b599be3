//! Appending one attempt's events to its task's history, through the one conditional
//! append ([`History::append`]).
//!
//! Every event is published expecting the seq of the previous event this attempt
//! knows of, so if anyone else wrote in between (the api cancelling, another worker
//! that took the task over), the publish is rejected and this attempt knows it lost
//! the task.

use taskwire::{
    domain::TaskId,
    nats::{self, History},
    pb::v1::{Progress, TaskError, TaskState},
};
use tokio::sync::Mutex;

/// This process as a task's attempt history names it: `taskwire-worker@<host>:<pid>`.
/// Sent on an attempt's claim (its first RUNNING event) only: the history needs it
/// once per attempt, and progress events stay small.
pub(crate) static WORKER_NAME: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    format!("taskwire-worker@{host}:{}", std::process::id())
});
/// The fields of one event besides the task and attempt.
#[derive(Debug, Clone, Default)]
pub(crate) struct Update {
    pub state: TaskState,
    pub progress: Option<Progress>,
    pub output: Option<prost_types::Value>,
    pub error: Option<TaskError>,
    pub message: String,
    /// On a WAITING event: the children the step started, and the fan-in's kind.
    pub children: Vec<taskwire::pb::internal::v1::TaskMessage>,
    pub fan_in_kind: String,
}

impl Update {
    pub(crate) fn running() -> Self {
        Self {
            state: TaskState::Running,
            ..Default::default()
        }
    }
}

/// How many times a write continues after an event it did not know was stored: one
/// of its own attempt's (a cut-off append), or the api's announcement of a child a
/// client added (which keeps the attempt and state), several when children are
/// added at once.
const OWN_EVENT_RESYNCS: usize = 16;

/// One attempt's writer of its task's history.
#[derive(Debug)]
pub(crate) struct EventWriter {
    history: History,
    task_id: TaskId,
    kind: String,
    attempt: u32,
    /// In a fan-in step: the seq of the WAITING event it follows (every event says so).
    fan_in_of: u64,
    /// The newest seq of the task's history this attempt knows; the lock also keeps
    /// one attempt's events in order.
    last_seq: Mutex<u64>,
}

impl EventWriter {
    /// A writer for `attempt` of a task whose newest event is `last_seq` (of its
    /// fan-in step after the WAITING event at `fan_in_of`, if not 0).
    pub(crate) fn new(
        history: History,
        task_id: TaskId,
        kind: &str,
        (attempt, fan_in_of): (u32, u64),
        last_seq: u64,
    ) -> Self {
        Self {
            history,
            task_id,
            kind: kind.to_string(),
            attempt,
            fan_in_of,
            last_seq: Mutex::new(last_seq),
        }
    }

    /// Appends an event; returns its seq. `Conflict` means someone else wrote first.
    pub(crate) async fn write(&self, u: Update) -> Result<u64, nats::Error> {
        let mut event = nats::new_event(self.task_id, &self.kind, u.state, self.attempt);
        event.progress = u.progress;
        event.output = u.output;
        event.error = u.error;
        event.message = u.message;
        event.children = u.children;
        event.fan_in_kind = u.fan_in_kind;
        event.fan_in_of = self.fan_in_of;
        let mut last = self.last_seq.lock().await;
        for _ in 0..OWN_EVENT_RESYNCS {
            match self.history.append(&event, *last).await {
                Ok(seq) => {
                    *last = seq;
                    return Ok(seq);
                }
                // An append of this attempt's own may have been stored without `last`
                // learning of it: a handler stopped mid-append (hand-back, timeout,
                // cancel) leaves its progress event in the history; and the api
                // announces children a client adds with the attempt's own state. If the
                // newest event is still this attempt running, continue after it.
                // Another worker's claim carries a higher attempt and a cancel is
                // terminal, so those stay conflicts.
                Err(nats::Error::Conflict) => match self.history.last(self.task_id).await? {
                    Some(newest)
                        if newest.seq > *last
                            && newest.event.attempt == self.attempt
                            && newest.event.fan_in_of == self.fan_in_of
                            && newest.state() == TaskState::Running =>
                    {
                        *last = newest.seq;
                    }
                    _ => return Err(nats::Error::Conflict),
                },
                Err(e) => return Err(e),
            }
        }
        Err(nats::Error::Conflict)
    }
}
