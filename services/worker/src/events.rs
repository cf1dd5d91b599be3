//! Appending one attempt's events to its task's history in TASKWIRE_EVENTS.
//!
//! Every event is published with Nats-Expected-Last-Subject-Sequence = the seq of the
//! previous event this worker knows of, so the history stays linear: if anyone else
//! wrote in between (the api cancelling, another worker that took the task over), the
//! publish is rejected and this attempt knows it lost the task. Seqs are JetStream
//! stream sequences, so they strictly increase across attempts and redeliveries.

use bytes::Bytes;
use prost::Message;
use taskwire::{
    domain::TaskId,
    json, nats,
    pb::{
        internal::v1::Event,
        v1::{Progress, TaskError, TaskState},
    },
};
use tokio::sync::Mutex;

/// The fields of one event besides the task and attempt.
#[derive(Debug, Clone, Default)]
pub(crate) struct Update {
    pub state: TaskState,
    pub progress: Option<Progress>,
    pub output: Option<prost_types::Value>,
    pub error: Option<TaskError>,
    pub message: String,
}

impl Update {
    pub fn running() -> Self {
        Self {
            state: TaskState::Running,
            ..Default::default()
        }
    }
}

#[derive(Debug)]
pub(crate) struct EventWriter {
    js: async_nats::jetstream::Context,
    task_id: TaskId,
    kind: String,
    attempt: u32,
    /// The newest seq of the task's history this attempt knows; the lock also keeps
    /// one attempt's events in order.
    last_seq: Mutex<u64>,
}

impl EventWriter {
    pub fn new(
        js: async_nats::jetstream::Context,
        task_id: TaskId,
        kind: &str,
        attempt: u32,
        last_seq: u64,
    ) -> Self {
        Self {
            js,
            task_id,
            kind: kind.to_string(),
            attempt,
            last_seq: Mutex::new(last_seq),
        }
    }

    pub fn task_id(&self) -> TaskId {
        self.task_id
    }

    /// Appends an event; returns its seq. `Conflict` means someone else wrote first.
    pub async fn write(&self, u: Update) -> Result<u64, nats::Error> {
        let event = Event {
            task_id: self.task_id.to_string(),
            time: Some(json::micros_to_timestamp(json::now_micros())),
            state: u.state as i32,
            progress: u.progress,
            attempt: self.attempt,
            output: u.output,
            error: u.error,
            message: u.message,
            kind: self.kind.clone(),
        };
        let mut last = self.last_seq.lock().await;
        let seq = nats::publish(
            &self.js,
            nats::event_subject(self.task_id),
            Bytes::from(event.encode_to_vec()),
            None,
            Some(*last),
        )
        .await?;
        *last = seq;
        Ok(seq)
    }
}
