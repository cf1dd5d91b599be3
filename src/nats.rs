//! taskwire's protocol on NATS, spelled out in one place: subjects, streams, the worker
//! consumer, headers, and the few calls every process makes. docs/protocol.md is the
//! prose twin of this module.
//!
//! | subject                     | stream          | carries                          |
//! |-----------------------------|-----------------|----------------------------------|
//! | `taskwire.tasks.<kind>`     | TASKWIRE_TASKS  | one message per task (work queue)|
//! | `taskwire.events.<task_id>` | TASKWIRE_EVENTS | every state change and progress  |
//! | `taskwire.live.<task_id>`   | (republished)   | stored events only, for watchers |
//! | `taskwire.cancel.<task_id>` | core NATS       | cancel signal to the worker      |
//! | `taskwire.dlq.<kind>`       | TASKWIRE_DLQ    | dead tasks, for inspection/replay|

use std::time::Duration;

use async_nats::{
    Client, ConnectOptions,
    connection::State,
    jetstream::{
        self, Context,
        consumer::{AckPolicy, pull},
        context::PublishErrorKind,
        message::PublishMessage,
        stream::{self, DiscardPolicy, LastRawMessageErrorKind, RetentionPolicy, StorageType},
    },
};
use bytes::Bytes;
use prost::Message;

use crate::{domain::TaskId, pb::internal::v1::Event};

pub const TASKS_STREAM: &str = "TASKWIRE_TASKS";
pub const EVENTS_STREAM: &str = "TASKWIRE_EVENTS";
pub const DLQ_STREAM: &str = "TASKWIRE_DLQ";
/// Captures JetStream's MAX_DELIVERIES advisories for the task stream. Advisories are
/// core (at-most-once) messages; a stream keeps them until the recorder handles them.
pub const ADVISORIES_STREAM: &str = "TASKWIRE_ADVISORIES";
pub const MAX_DELIVERIES_SUBJECT: &str =
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.TASKWIRE_TASKS.*";
/// The recorder's durable consumer on TASKWIRE_ADVISORIES.
pub const ADVISORY_CONSUMER: &str = "taskwire-recorder-advisories";
/// The recorder's durable consumer on TASKWIRE_EVENTS.
pub const RECORDER_CONSUMER: &str = "taskwire-recorder";

/// Header naming the version of the `taskwire.internal.v1` body layout.
pub const SCHEMA_HEADER: &str = "Taskwire-Schema";
pub const SCHEMA_VERSION: &str = "1";

pub fn task_subject(kind: &str) -> String {
    format!("taskwire.tasks.{kind}")
}
pub fn event_subject(id: TaskId) -> String {
    format!("taskwire.events.{id}")
}
pub fn live_subject(id: TaskId) -> String {
    format!("taskwire.live.{id}")
}
pub fn cancel_subject(id: TaskId) -> String {
    format!("taskwire.cancel.{id}")
}
pub fn dlq_subject(kind: &str) -> String {
    format!("taskwire.dlq.{kind}")
}

/// Why a NATS call failed, as callers need to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS could not be reached, or did not answer within the deadline; retryable.
    #[error("NATS unavailable: {0}")]
    Unavailable(String),
    /// A conditional publish lost: someone else wrote to the task's subject first
    /// (Nats-Expected-Last-Subject-Sequence did not match).
    #[error("another writer changed the task first")]
    Conflict,
    /// A message body that does not decode: a protocol bug or a foreign writer.
    #[error("bad message: {0}")]
    BadMessage(String),
    #[error("NATS error: {0}")]
    Other(String),
}

/// Settings of the streams, shared by every process (the same flags with the same
/// defaults everywhere), so that whichever starts first creates them and a restart or
/// another replica leaves them as they are.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// JetStream drops a second message with the same Nats-Msg-Id within this window;
    /// it must outlast the api's outbox lease so a relayed duplicate is dropped.
    pub duplicate_window: Duration,
    /// How long task events are kept, for watchers that resume late and for replay.
    pub events_max_age: Duration,
    /// Replicas per stream (R3 on a production cluster).
    pub replicas: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            duplicate_window: Duration::from_secs(10 * 60),
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            replicas: 1,
        }
    }
}

/// Connects to NATS with a deadline; the client reconnects by itself afterwards.
pub async fn connect(url: &str, name: &str, timeout: Duration) -> Result<Client, Error> {
    ConnectOptions::new()
        .name(name)
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .connect(url)
        .await
        .map_err(|e| Error::Unavailable(format!("connecting to {url}: {e}")))
}

/// What every process does first: connect (as `name`), and create or update the
/// streams. Returns the client and a JetStream context with the same deadline.
pub async fn join(
    nats: &crate::config::NatsArgs,
    streams: &crate::config::StreamArgs,
    name: &str,
) -> Result<(Client, Context), Error> {
    let client = connect(&nats.nats_url, name, nats.nats_timeout).await?;
    let js = jetstream(client.clone(), nats.nats_timeout);
    setup_streams(&js, &streams.settings()).await?;
    Ok((client, js))
}

/// Opens one of taskwire's streams (they exist once `setup_streams` ran).
pub async fn open_stream(js: &Context, name: &str) -> Result<stream::Stream<stream::Info>, Error> {
    js.get_stream(name)
        .await
        .map_err(|e| Error::Unavailable(format!("opening stream {name}: {e}")))
}

/// A JetStream context whose every request and publish ack has `timeout`.
pub fn jetstream(client: Client, timeout: Duration) -> Context {
    jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client)
}

/// Whether the client is connected now: checked before side effects, so that a call
/// made while NATS is down fails fast with UNAVAILABLE and changes nothing.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == State::Connected
}

/// Creates or updates the streams. Idempotent: every process calls it at start-up.
pub async fn setup_streams(js: &Context, s: &StreamSettings) -> Result<(), Error> {
    let file = |name: &str, subjects: &str| stream::Config {
        name: name.to_string(),
        subjects: vec![subjects.to_string()],
        storage: StorageType::File,
        duplicate_window: s.duplicate_window,
        num_replicas: s.replicas,
        ..Default::default()
    };
    let tasks = stream::Config {
        // Work queue: a task's message is gone once a worker acks it. Each kind has its
        // own consumer (see `kind_consumer`), so kinds served by different workers, in
        // any language, never take each other's tasks.
        retention: RetentionPolicy::WorkQueue,
        ..file(TASKS_STREAM, "taskwire.tasks.>")
    };
    let events = stream::Config {
        retention: RetentionPolicy::Limits,
        max_age: s.events_max_age,
        max_messages_per_subject: EVENTS_PER_TASK,
        discard: DiscardPolicy::Old,
        // Watchers follow the republished subject: it carries only events JetStream
        // stored, each with Nats-Sequence and Nats-Last-Sequence to detect a gap.
        republish: Some(stream::Republish {
            source: "taskwire.events.>".to_string(),
            destination: "taskwire.live.>".to_string(),
            headers_only: false,
        }),
        allow_direct: true,
        ..file(EVENTS_STREAM, "taskwire.events.>")
    };
    let dlq = stream::Config {
        retention: RetentionPolicy::Limits,
        max_age: Duration::from_secs(30 * 24 * 3600),
        ..file(DLQ_STREAM, "taskwire.dlq.>")
    };
    let advisories = stream::Config {
        retention: RetentionPolicy::Limits,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..file(ADVISORIES_STREAM, MAX_DELIVERIES_SUBJECT)
    };
    for config in [tasks, events, dlq, advisories] {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|e| Error::Unavailable(format!("setting up stream {name}: {e}")))?;
    }
    Ok(())
}

/// Events kept per task in TASKWIRE_EVENTS (the oldest go first).
pub const EVENTS_PER_TASK: i64 = 100_000;

/// The durable consumer name for the tasks of one kind on TASKWIRE_TASKS. Names may
/// not hold dots, so they are replaced, and a hash of the kind keeps "a.b" and "a_b"
/// apart.
pub fn kind_consumer(kind: &str) -> String {
    // FNV-1a: stable across builds and languages (docs/protocol.md gives it).
    let hash = kind.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!(
        "taskwire-kind-{}-{:08x}",
        kind.replace('.', "_"),
        hash as u32
    )
}

/// Creates or updates the durable pull consumer of one kind's tasks.
pub async fn setup_kind_consumer(
    js: &Context,
    kind: &str,
    ack_wait: Duration,
    max_deliver: i64,
) -> Result<jetstream::consumer::Consumer<pull::Config>, Error> {
    let name = kind_consumer(kind);
    open_stream(js, TASKS_STREAM)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: task_subject(kind),
            ack_policy: AckPolicy::Explicit,
            ack_wait,
            // Above any task's max_attempts (101 by default): a worker enforces the
            // task's own limit from the delivery count; this cap is the backstop, and
            // its advisory is handled by the recorder.
            max_deliver,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Unavailable(format!("setting up consumer {name}: {e}")))
}

/// Publishes to a stream and waits for JetStream's ack, under the context's timeout.
/// `msg_id` becomes Nats-Msg-Id (JetStream drops a repeat within the window);
/// `expected_last` becomes Nats-Expected-Last-Subject-Sequence (0 = the subject must
/// be empty). Returns the stream sequence the message is stored at.
pub async fn publish(
    js: &Context,
    subject: String,
    payload: Bytes,
    msg_id: Option<&str>,
    expected_last: Option<u64>,
) -> Result<u64, Error> {
    let mut msg = PublishMessage::build()
        .payload(payload)
        .header(SCHEMA_HEADER, SCHEMA_VERSION);
    if let Some(id) = msg_id {
        msg = msg.message_id(id);
    }
    if let Some(seq) = expected_last {
        msg = msg.expected_last_subject_sequence(seq);
    }
    let map = |e: jetstream::context::PublishError| match e.kind() {
        PublishErrorKind::WrongLastSequence => Error::Conflict,
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            Error::Unavailable(e.to_string())
        }
        _ => Error::Other(e.to_string()),
    };
    let ack = js
        .send_publish(subject, msg)
        .await
        .map_err(map)?
        .await
        .map_err(map)?;
    Ok(ack.sequence)
}

/// Copies a dead task to `taskwire.dlq.<kind>` (Nats-Msg-Id = task id, so doing it
/// again after a crash stores it once), with the error in headers.
pub async fn publish_dead_letter(
    js: &Context,
    body: &crate::pb::internal::v1::TaskMessage,
    error: Option<&crate::pb::v1::TaskError>,
) -> Result<(), Error> {
    let mut msg = PublishMessage::build()
        .payload(Bytes::from(body.encode_to_vec()))
        .message_id(&body.task_id)
        .header(SCHEMA_HEADER, SCHEMA_VERSION);
    if let Some(e) = error {
        msg = msg.header("Taskwire-Error-Code", e.code.as_str()).header(
            "Taskwire-Error-Retryable",
            if e.retryable { "true" } else { "false" },
        );
    }
    let ack = js
        .send_publish(dlq_subject(&body.kind), msg)
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    ack.await.map_err(|e| Error::Unavailable(e.to_string()))?;
    Ok(())
}

/// The newest event of a task in TASKWIRE_EVENTS and its seq, or None if it has none.
pub async fn last_event(
    events: &stream::Stream<stream::Info>,
    id: TaskId,
) -> Result<Option<(u64, Event)>, Error> {
    match events
        .get_last_raw_message_by_subject(&event_subject(id))
        .await
    {
        Ok(msg) => {
            let ev = Event::decode(msg.payload)
                .map_err(|e| Error::BadMessage(format!("event of task {id}: {e}")))?;
            Ok(Some((msg.sequence, ev)))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(Error::Unavailable(e.to_string())),
    }
}
