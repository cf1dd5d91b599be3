//! The four streams and the durable consumers on them, created or updated by every
//! process at start-up (idempotent), so whichever starts first sets them up and a
//! restart or another replica leaves them as they are.

use std::time::Duration;

use async_nats::jetstream::{
    Context,
    consumer::{AckPolicy, Consumer, DeliverPolicy, pull},
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

use super::{
    Error,
    subjects::{self, DLQ_ALL, EVENTS_ALL, LIVE_ALL, MAX_DELIVERIES_ADVISORIES, TASKS_ALL},
};

/// The work queue: one message per task, on `taskwire.tasks.<kind>`.
pub const TASKS_STREAM: &str = "TASKWIRE_TASKS";
/// Every task's event history, on `taskwire.events.<task_id>`.
pub const EVENTS_STREAM: &str = "TASKWIRE_EVENTS";
/// Copies of failed tasks, on `taskwire.dlq.<kind>`.
pub const DLQ_STREAM: &str = "TASKWIRE_DLQ";
/// Captures JetStream's MAX_DELIVERIES advisories for the task stream. Advisories are
/// core (at-most-once) messages; a stream keeps them until the recorder handles them.
pub const ADVISORIES_STREAM: &str = "TASKWIRE_ADVISORIES";
/// The recorder's durable consumer on TASKWIRE_EVENTS.
pub const RECORDER_CONSUMER: &str = "taskwire-recorder";
/// Its ack_wait ([`setup_recorder_consumer`]).
pub const RECORDER_ACK_WAIT: Duration = Duration::from_secs(10);
/// The recorder's durable consumer on TASKWIRE_ADVISORIES.
pub const ADVISORY_CONSUMER: &str = "taskwire-recorder-advisories";

/// Events kept per task in TASKWIRE_EVENTS (the oldest go first).
pub const EVENTS_PER_TASK: i64 = 100_000;

/// Settings of the streams, shared by every process (the same flags with the same
/// defaults everywhere).
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
        // Queue stats date a kind's oldest waiting task by direct get.
        allow_direct: true,
        ..file(TASKS_STREAM, TASKS_ALL)
    };
    let events = stream::Config {
        retention: RetentionPolicy::Limits,
        max_age: s.events_max_age,
        max_messages_per_subject: EVENTS_PER_TASK,
        discard: DiscardPolicy::Old,
        // Watchers follow the republished subject: it carries only events JetStream
        // stored, each with Nats-Sequence and Nats-Last-Sequence to detect a gap. (A
        // core subscription on the events subjects would also receive publishes that
        // JetStream rejected.)
        republish: Some(stream::Republish {
            source: EVENTS_ALL.to_string(),
            destination: LIVE_ALL.to_string(),
            headers_only: false,
        }),
        allow_direct: true,
        ..file(EVENTS_STREAM, EVENTS_ALL)
    };
    let dlq = stream::Config {
        retention: RetentionPolicy::Limits,
        max_age: Duration::from_secs(30 * 24 * 3600),
        ..file(DLQ_STREAM, DLQ_ALL)
    };
    let advisories = stream::Config {
        retention: RetentionPolicy::Limits,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..file(ADVISORIES_STREAM, MAX_DELIVERIES_ADVISORIES)
    };
    for config in [tasks, events, dlq, advisories] {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|e| Error::unavailable(format!("setting up stream {name}"), e))?;
    }
    Ok(())
}

/// Opens one of taskwire's streams (they exist once [`setup_streams`] ran).
pub async fn open_stream(js: &Context, name: &str) -> Result<stream::Stream, Error> {
    js.get_stream(name)
        .await
        .map_err(|e| Error::unavailable(format!("opening stream {name}"), e))
}

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

/// Tasks of one kind delivered and not yet acknowledged, at most, when the kind has no
/// limit of its own.
pub const UNLIMITED_RUNNING: i64 = 10_000;

/// Creates or updates the durable pull consumer of one kind's tasks: explicit acks,
/// redelivery after `ack_wait` without an ack or heartbeat, no `backoff` list (a
/// retry's delay is the worker's NAK delay), and `max_deliver` as a backstop above any
/// task's own max_attempts.
///
/// `max_running` is the kind's limit across all workers: the consumer's
/// `max_ack_pending`, so JetStream delivers no more of its tasks while that many are
/// unacknowledged (running, or waiting out a retry's delay). `Some(0)` removes a
/// limit; `None` keeps whatever the consumer has, so a worker started without the
/// flag does not lift a limit another set.
pub async fn setup_kind_consumer(
    js: &Context,
    kind: &str,
    ack_wait: Duration,
    max_deliver: i64,
    max_running: Option<u32>,
) -> Result<Consumer<pull::Config>, Error> {
    let name = kind_consumer(kind);
    let max_ack_pending = match max_running {
        Some(0) => UNLIMITED_RUNNING,
        Some(n) => i64::from(n),
        None => current_max_ack_pending(js, &name)
            .await?
            .unwrap_or(UNLIMITED_RUNNING),
    };
    create_consumer(
        js,
        TASKS_STREAM,
        pull::Config {
            durable_name: Some(name),
            filter_subject: subjects::task_subject(kind),
            ack_policy: AckPolicy::Explicit,
            ack_wait,
            // A worker enforces the task's own limit from the delivery count; when
            // this cap is reached, the recorder handles the MAX_DELIVERIES advisory.
            max_deliver,
            max_ack_pending,
            ..Default::default()
        },
    )
    .await
}

/// The `max_ack_pending` of an existing consumer of TASKWIRE_TASKS.
async fn current_max_ack_pending(js: &Context, name: &str) -> Result<Option<i64>, Error> {
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    super::at_startup(&format!("reading consumer {name}"), || async {
        let tasks = js
            .get_stream_no_info(TASKS_STREAM)
            .await
            .map_err(|e| Error::unavailable("opening the task stream", e))?;
        match tasks.consumer_info(name).await {
            Ok(info) => Ok(Some(info.config.max_ack_pending)),
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::unavailable(format!("reading consumer {name}"), e)),
        }
    })
    .await
}

/// The recorder's durable consumer on TASKWIRE_EVENTS: every event, acked after its
/// batch is committed. Its ack_wait is how long a killed recorder's batch waits before
/// another replica gets it: a batch is acked or NAKed within the database deadline
/// (`--database-timeout`, 5 s), so 10 s never redelivers a batch still being applied.
pub async fn setup_recorder_consumer(js: &Context) -> Result<Consumer<pull::Config>, Error> {
    create_consumer(
        js,
        EVENTS_STREAM,
        pull::Config {
            durable_name: Some(RECORDER_CONSUMER.to_string()),
            filter_subject: EVENTS_ALL.to_string(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: RECORDER_ACK_WAIT,
            max_ack_pending: 50_000,
            ..Default::default()
        },
    )
    .await
}

/// The recorder's durable consumer on TASKWIRE_ADVISORIES.
pub async fn setup_advisory_consumer(js: &Context) -> Result<Consumer<pull::Config>, Error> {
    create_consumer(
        js,
        ADVISORIES_STREAM,
        pull::Config {
            durable_name: Some(ADVISORY_CONSUMER.to_string()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        },
    )
    .await
}

async fn create_consumer(
    js: &Context,
    stream: &str,
    config: pull::Config,
) -> Result<Consumer<pull::Config>, Error> {
    let name = config.durable_name.clone().unwrap_or_default();
    super::at_startup(&format!("setting up consumer {name}"), || async {
        open_stream(js, stream)
            .await?
            .create_consumer(config.clone())
            .await
            .map_err(|e| Error::unavailable(format!("setting up consumer {name}"), e))
    })
    .await
}

/// Whether a worker has ever served `kind`: workers create the kind's consumer when
/// they start, and it outlives them. A submit of a kind without one waits for a worker
/// that may never come (usually a typo), so the api warns.
pub async fn kind_has_consumer(js: &Context, kind: &str) -> Result<bool, Error> {
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    let tasks = js
        .get_stream_no_info(TASKS_STREAM)
        .await
        .map_err(|e| Error::unavailable("opening the task stream", e))?;
    match tasks.consumer_info(kind_consumer(kind)).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::unavailable(
            format!("reading the consumer of kind {kind}"),
            e,
        )),
    }
}

/// Where the recorder stands: every event up to `recorded_through` is in the
/// database (the recorder acks an event only once its batch is committed), and the
/// stream's newest event is `stream_last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderPosition {
    /// The newest event's seq in TASKWIRE_EVENTS.
    pub stream_last: u64,
    /// The recorder consumer's ack floor: all events up to it are recorded.
    pub recorded_through: u64,
}

impl RecorderPosition {
    /// Events stored but not recorded yet.
    pub fn behind(&self) -> u64 {
        self.stream_last.saturating_sub(self.recorded_through)
    }
}

/// How long the oldest event the recorder has not recorded has waited (`None` when it
/// is caught up): the stored time of the event after its ack floor.
pub async fn recorder_lag(js: &Context) -> Result<(RecorderPosition, Option<Duration>), Error> {
    let position = recorder_position(js).await?;
    if position.behind() == 0 {
        return Ok((position, None));
    }
    let events = js
        .get_stream_no_info(EVENTS_STREAM)
        .await
        .map_err(|e| Error::unavailable("opening the events stream", e))?;
    // The next event may have been pruned: then the lag in time is unknown.
    let age = match events.direct_get(position.recorded_through + 1).await {
        Ok(msg) => Some(age_of(msg.time)),
        Err(_) => None,
    };
    Ok((position, age))
}

/// How long ago a stored message was stored.
pub fn age_of(stored: async_nats::datetime::DateTime) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    Duration::from_nanos((now - stored.unix_timestamp_nanos()).max(0) as u64)
}

/// Reads [`RecorderPosition`]: two JetStream API requests.
pub async fn recorder_position(js: &Context) -> Result<RecorderPosition, Error> {
    // Opening the stream reads its state.
    let events = open_stream(js, EVENTS_STREAM).await?;
    let stream_last = events.cached_info().state.last_sequence;
    let recorder = events
        .consumer_info(RECORDER_CONSUMER)
        .await
        .map_err(|e| Error::unavailable("reading the recorder's position", e))?;
    Ok(RecorderPosition {
        stream_last,
        recorded_through: recorder.ack_floor.stream_sequence,
    })
}

/// One kind's queue, as its consumer on TASKWIRE_TASKS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// The kind (from the consumer's filter subject).
    pub kind: String,
    /// Tasks not yet delivered to any worker.
    pub waiting: u64,
    /// Tasks delivered and not yet acknowledged: running, or waiting out a retry delay.
    pub unacked: u64,
    /// How long the oldest task not yet delivered has waited (`None` if none waits).
    pub oldest_waiting: Option<Duration>,
    /// The kind's limit on tasks running at once across all workers, if it has one.
    pub max_running: Option<u64>,
}

/// Every kind's queue: one request for the consumer list, and one per kind with tasks
/// waiting (to date its oldest).
pub async fn queue_stats(js: &Context) -> Result<Vec<QueueStats>, Error> {
    use futures::TryStreamExt;
    let tasks = js
        .get_stream_no_info(TASKS_STREAM)
        .await
        .map_err(|e| Error::unavailable("opening the task stream", e))?;
    let consumers: Vec<_> = tasks
        .consumers()
        .try_collect()
        .await
        .map_err(|e| Error::unavailable("listing the task stream's consumers", e))?;
    let mut out = Vec::with_capacity(consumers.len());
    for info in consumers {
        let Some(kind) = info
            .config
            .filter_subject
            .strip_prefix("taskwire.tasks.")
            .map(str::to_string)
        else {
            continue;
        };
        let oldest_waiting = if info.num_pending > 0 {
            tasks
                .direct_get_next_for_subject(
                    info.config.filter_subject.as_str(),
                    Some(info.delivered.stream_sequence + 1),
                )
                .await
                .ok()
                .map(|m| age_of(m.time))
        } else {
            None
        };
        let limit = info.config.max_ack_pending;
        out.push(QueueStats {
            kind,
            waiting: info.num_pending,
            unacked: info.num_ack_pending as u64,
            oldest_waiting,
            max_running: (limit > 0 && limit < UNLIMITED_RUNNING).then_some(limit as u64),
        });
    }
    out.sort_by(|a, b| a.kind.cmp(&b.kind));
    Ok(out)
}
