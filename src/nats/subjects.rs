//! Subject names, headers, and the republished (live) event message.

use async_nats::header::{NATS_LAST_SEQUENCE, NATS_SEQUENCE};
use prost::Message;

use super::Error;
use crate::{domain::TaskId, pb::internal::v1::Event};

/// Every task message: `taskwire.tasks.<kind>`.
pub const TASKS_ALL: &str = "taskwire.tasks.>";
/// Every event: `taskwire.events.<task_id>`.
pub const EVENTS_ALL: &str = "taskwire.events.>";
/// Every republished event: `taskwire.live.<task_id>`.
pub const LIVE_ALL: &str = "taskwire.live.>";
/// Every cancel signal: `taskwire.cancel.<task_id>`.
pub const CANCEL_ALL: &str = "taskwire.cancel.>";
/// Every "who runs this task?" request: `taskwire.running.<task_id>`.
pub const RUNNING_ALL: &str = "taskwire.running.>";
/// Every dead letter: `taskwire.dlq.<kind>`.
pub const DLQ_ALL: &str = "taskwire.dlq.>";
/// JetStream's MAX_DELIVERIES advisories for TASKWIRE_TASKS' consumers.
pub const MAX_DELIVERIES_ADVISORIES: &str =
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.TASKWIRE_TASKS.*";

/// Header naming the version of the `taskwire.internal.v1` body layout.
pub const SCHEMA_HEADER: &str = "Taskwire-Schema";
/// The body layout this code writes and reads.
pub const SCHEMA_VERSION: &str = "1";
/// On a dead letter: the error code the task failed with.
pub const ERROR_CODE_HEADER: &str = "Taskwire-Error-Code";
/// On a dead letter: whether that error was retryable (`true`/`false`).
pub const ERROR_RETRYABLE_HEADER: &str = "Taskwire-Error-Retryable";

/// Where a task of `kind` is enqueued.
pub fn task_subject(kind: &str) -> String {
    format!("taskwire.tasks.{kind}")
}

/// Where a task's events are appended.
pub fn event_subject(id: TaskId) -> String {
    format!("taskwire.events.{id}")
}

/// Where the events stream republishes a task's stored events.
pub fn live_subject(id: TaskId) -> String {
    format!("taskwire.live.{id}")
}

/// Where the api signals the worker running a task to stop.
pub fn cancel_subject(id: TaskId) -> String {
    format!("taskwire.cancel.{id}")
}

/// Where a worker asks whether a live worker runs a task (docs/protocol.md §5).
pub fn running_subject(id: TaskId) -> String {
    format!("taskwire.running.{id}")
}

/// Where failed tasks of `kind` are copied.
pub fn dlq_subject(kind: &str) -> String {
    format!("taskwire.dlq.{kind}")
}

/// The task a cancel signal's subject names.
pub fn task_of_cancel(subject: &str) -> Option<TaskId> {
    TaskId::parse(subject.strip_prefix("taskwire.cancel.")?).ok()
}

/// The task a "who runs this task?" request's subject names.
pub fn task_of_running(subject: &str) -> Option<TaskId> {
    TaskId::parse(subject.strip_prefix("taskwire.running.")?).ok()
}

/// One stored event as the events stream republished it on `taskwire.live.<task_id>`.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// The task it belongs to (from the subject).
    pub task: TaskId,
    /// Its seq: the stream sequence it is stored at (Nats-Sequence).
    pub seq: u64,
    /// The seq of the task's previous event (Nats-Last-Sequence; 0 for the first): a
    /// watcher that sent less than this missed an event (core delivery is
    /// at-most-once) and refills from the stream.
    pub prev_seq: u64,
    /// The event.
    pub event: Event,
    /// The trace context of the span that appended it (its `traceparent` header).
    pub traceparent: Option<String>,
}

impl LiveEvent {
    /// Reads a message received on [`LIVE_ALL`].
    pub fn parse(msg: &async_nats::Message) -> Result<Self, Error> {
        let bad = |why: &str| Error::bad_message(format!("live event on {}", msg.subject), why);
        let task = msg
            .subject
            .strip_prefix("taskwire.live.")
            .and_then(|id| TaskId::parse(id).ok())
            .ok_or_else(|| bad("the subject names no task"))?;
        let headers = msg.headers.as_ref().ok_or_else(|| bad("no headers"))?;
        let number = |name| {
            headers
                .get(name)
                .and_then(|v| v.as_str().parse::<u64>().ok())
        };
        let seq = number(NATS_SEQUENCE).ok_or_else(|| bad("no Nats-Sequence"))?;
        let prev_seq = number(NATS_LAST_SEQUENCE).unwrap_or(0);
        let traceparent = headers
            .get(crate::telemetry::trace::TRACEPARENT)
            .map(|v| v.as_str().to_string());
        let event = Event::decode(msg.payload.clone())
            .map_err(|e| Error::bad_message(format!("live event of task {task}"), e))?;
        Ok(Self {
            task,
            seq,
            prev_seq,
            event,
            traceparent,
        })
    }
}
