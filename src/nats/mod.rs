//! taskwire's protocol on NATS, spelled out in one place: subjects, headers, streams,
//! consumers, the append to a task's history, and the few calls every process makes.
//! No other module spells a subject, a header or a stream setting. docs/protocol.md is
//! the prose twin of this module, for workers in other languages.
//!
//! | subject                     | stream              | carries                           |
//! |-----------------------------|---------------------|-----------------------------------|
//! | `taskwire.tasks.<kind>`     | TASKWIRE_TASKS      | one message per task (work queue) |
//! | `taskwire.events.<task_id>` | TASKWIRE_EVENTS     | every state change and progress   |
//! | `taskwire.live.<task_id>`   | (RePublish of EVENTS) | stored events only, for watchers |
//! | `taskwire.cancel.<task_id>` | core NATS           | cancel signal to the worker       |
//! | `taskwire.dlq.<kind>`       | TASKWIRE_DLQ        | copies of failed tasks            |
//! | `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.TASKWIRE_TASKS.*` | TASKWIRE_ADVISORIES | deliveries JetStream gave up on |
//!
//! # Layout
//! - [`subjects`]: subject names and parsers, headers, the live (republished) message.
//! - [`streams`]: the four streams and the three kinds of durable consumer.
//! - [`history`]: a task's event history and the one way to append to it.
//! - [`permissions`]: what each role may publish and subscribe to (a nats-server
//!   `authorization` block).

pub mod history;
pub mod permissions;
pub mod streams;
pub mod subjects;

use std::time::Duration;

use async_nats::{
    Client, ConnectOptions,
    connection::State,
    jetstream::{self, Context, context::PublishErrorKind, message::PublishMessage},
};
use bytes::Bytes;
use prost::Message;

pub use history::{Appended, History, Start, Stored, new_event};
pub use streams::{
    ADVISORIES_STREAM, DLQ_STREAM, EVENTS_PER_TASK, EVENTS_STREAM, StreamSettings, TASKS_STREAM,
    kind_consumer, open_stream, setup_advisory_consumer, setup_kind_consumer,
    setup_recorder_consumer, setup_streams,
};
pub use subjects::{
    ERROR_CODE_HEADER, ERROR_RETRYABLE_HEADER, LiveEvent, SCHEMA_HEADER, SCHEMA_VERSION,
    cancel_subject, dlq_subject, event_subject, live_subject, running_subject, task_subject,
};

use crate::pb::{internal::v1::TaskMessage, v1::TaskError};

/// Any error a NATS call can fail with, kept as the cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a NATS call failed, as callers need to tell it apart. Each keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS could not be reached, or did not answer within the deadline; retryable.
    #[error("NATS unavailable: {what}")]
    Unavailable {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A conditional publish lost: someone else wrote to the task's subject first
    /// (Nats-Expected-Last-Subject-Sequence did not match).
    #[error("another writer changed the task first")]
    Conflict,
    /// A message body that does not decode: a protocol bug or a foreign writer.
    #[error("bad message: {what}")]
    BadMessage {
        /// Which message.
        what: String,
        /// Why it does not decode.
        #[source]
        source: BoxError,
    },
    /// The server answered, but refused (no such stream, payload too large, ...).
    #[error("NATS refused {what}")]
    Refused {
        /// What was being done.
        what: String,
        /// The server's answer.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// NATS unavailable while doing `what`.
    pub fn unavailable(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: source.into(),
        }
    }

    /// A message about `what` that does not decode.
    pub fn bad_message(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::BadMessage {
            what: what.into(),
            source: source.into(),
        }
    }

    /// Whether trying again later may succeed (NATS unreachable or slow, a lost race).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Conflict => true,
            Error::BadMessage { .. } | Error::Refused { .. } => false,
        }
    }
}

/// The servers of a NATS URL list as NATS users write it: `nats://a:4222,nats://b:4222`
/// (async-nats takes a list, not a comma-separated string).
pub fn servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let servers = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{u:?} is not a NATS URL: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err("no NATS URL given".into());
    }
    Ok(servers)
}

/// Connects to NATS (any one of a comma-separated list of servers; the client learns
/// the rest of a cluster from them) with a deadline; the client reconnects by itself
/// afterwards, to any server of the cluster.
pub async fn connect(urls: &str, name: &str, timeout: Duration) -> Result<Client, Error> {
    connect_with(ConnectOptions::new(), urls, name, timeout).await
}

async fn connect_with(
    options: ConnectOptions,
    urls: &str,
    name: &str,
    timeout: Duration,
) -> Result<Client, Error> {
    let servers = servers(urls).map_err(|e| Error::unavailable("connecting to NATS", e))?;
    options
        .name(name)
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .connect(servers)
        .await
        .map_err(|e| Error::unavailable(format!("connecting to {urls}"), e))
}

/// The credentials and TLS `nats` asks for, and the process's own inbox prefix
/// (`_INBOX_<name>`): replies to its requests and its pulls' messages arrive there, so
/// a permissions file can let each role subscribe to its own replies only.
async fn options(nats: &crate::config::NatsArgs, name: &str) -> Result<ConnectOptions, Error> {
    let refused = |what: &str, e: std::io::Error| Error::Refused {
        what: what.to_string(),
        source: Box::new(e),
    };
    let mut o = match &nats.nats_creds {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| refused("reading --nats-creds", e))?,
        None => ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&nats.nats_user, &nats.nats_password) {
        o = o.user_and_password(user.clone(), password.clone());
    }
    if let Some(path) = &nats.nats_nkey {
        let seed = std::fs::read_to_string(path).map_err(|e| refused("reading --nats-nkey", e))?;
        o = o.nkey(seed.trim().to_string());
    }
    if let Some(ca) = &nats.nats_tls_ca {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&nats.nats_tls_cert, &nats.nats_tls_key) {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(o.custom_inbox_prefix(format!("_INBOX_{name}")))
}

/// What every process does first: connect (as `name`), and create or update the
/// streams. Returns the client and a JetStream context with the same deadline. Both
/// steps are tried again while NATS is still coming up ([`at_startup`]).
pub async fn join(
    nats: &crate::config::NatsArgs,
    streams: &crate::config::StreamArgs,
    name: &str,
) -> Result<(Client, Context), Error> {
    let client = at_startup("connecting to NATS", || async {
        connect_with(
            options(nats, name).await?,
            &nats.nats_url,
            name,
            nats.nats_timeout,
        )
        .await
    })
    .await?;
    let js = jetstream(client.clone(), nats.nats_timeout);
    if nats.nats_manage_streams {
        let settings = streams.settings();
        at_startup("setting up the streams", || setup_streams(&js, &settings)).await?;
    } else {
        at_startup("waiting for the streams", || async {
            for name in [TASKS_STREAM, EVENTS_STREAM, DLQ_STREAM, ADVISORIES_STREAM] {
                open_stream(&js, name).await?;
            }
            Ok(())
        })
        .await?;
    }
    Ok((client, js))
}

/// How long a process keeps trying its start-up steps against a NATS that does not
/// answer yet (a cluster electing its stream leaders, a node restarting, every replica
/// creating the same streams at once), before it gives up and exits.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(60);
const STARTUP_RETRY: crate::backoff::Backoff =
    crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Runs a start-up step, trying it again on a retryable error for up to
/// [`STARTUP_PATIENCE`].
pub async fn at_startup<T, F, Fut>(what: &str, mut step: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = tokio::time::Instant::now() + STARTUP_PATIENCE;
    let mut retries = STARTUP_RETRY.retries();
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %crate::telemetry::chain(&e), "{what}: NATS not ready; trying again");
                retries.wait().await;
            }
            Err(e) => return Err(e),
        }
    }
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

/// Waits until everything the client has buffered is sent, at most `timeout`: a
/// process that stops flushes what it published, but never waits for a NATS that is
/// gone (an unbounded flush hung `taskwire dev`'s Ctrl-C).
pub async fn flush(client: &Client, timeout: Duration) {
    match tokio::time::timeout(timeout, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %crate::telemetry::chain(&e), "flush failed"),
        Err(_) => tracing::warn!(?timeout, "NATS did not take the last messages in time"),
    }
}

/// Publishes a task on its subject ([`task_subject`], kept in the outbox row) with
/// Nats-Msg-Id = its id, so a second publish (the relay after a crash) within the
/// duplicate window is dropped; waits for JetStream's ack. `payload` is the encoded
/// [`TaskMessage`]; `traceparent` (its own, when tracing) also goes in a header.
pub async fn publish_task(
    js: &Context,
    subject: String,
    msg_id: &str,
    payload: Bytes,
    traceparent: Option<&str>,
) -> Result<u64, Error> {
    let mut msg = PublishMessage::build()
        .payload(payload)
        .message_id(msg_id)
        .header(SCHEMA_HEADER, SCHEMA_VERSION);
    if let Some(tp) = traceparent.filter(|tp| !tp.is_empty()) {
        msg = msg.header(crate::telemetry::trace::TRACEPARENT, tp);
    }
    send(js, subject, msg, "publishing a task").await
}

/// The `Nats-Msg-Id` of run `run` of a task's message (and of its dead-letter copy):
/// the task id for the first run, `<task id>:<run>` for a retry's, so JetStream's
/// duplicate window drops repeats of one run, never a later run.
pub fn task_msg_id(task_id: &str, run: u32) -> String {
    if run <= 1 {
        task_id.to_string()
    } else {
        format!("{task_id}:{run}")
    }
}

/// The `Nats-Msg-Id` of a task message: [`task_msg_id`], or for a parent's fan-in
/// step `<task id>:fan-in:<seq of its WAITING event>`, so each fan-in is enqueued once
/// and never taken for the task's first message.
pub fn message_id(body: &TaskMessage) -> String {
    match &body.fan_in {
        Some(f) => format!("{}:fan-in:{}", body.task_id, f.waiting_seq),
        None => task_msg_id(&body.task_id, body.run),
    }
}

/// Copies a dead task to `taskwire.dlq.<kind>` (Nats-Msg-Id = [`task_msg_id`], so doing
/// it again after a crash stores it once), with the error in headers.
pub async fn publish_dead_letter(
    js: &Context,
    body: &TaskMessage,
    error: Option<&TaskError>,
) -> Result<(), Error> {
    let mut msg = PublishMessage::build()
        .payload(Bytes::from(body.encode_to_vec()))
        .message_id(message_id(body).as_str())
        .header(SCHEMA_HEADER, SCHEMA_VERSION);
    if let Some(e) = error {
        msg = msg.header(ERROR_CODE_HEADER, e.code.as_str()).header(
            ERROR_RETRYABLE_HEADER,
            if e.retryable { "true" } else { "false" },
        );
    }
    send(js, dlq_subject(&body.kind), msg, "publishing a dead letter").await?;
    Ok(())
}

/// Publishes and waits for JetStream's ack under the context's timeout; returns the
/// stream sequence the message is stored at.
async fn send(
    js: &Context,
    subject: String,
    msg: PublishMessage,
    what: &str,
) -> Result<u64, Error> {
    let map = |e: jetstream::context::PublishError| match e.kind() {
        PublishErrorKind::WrongLastSequence => Error::Conflict,
        // "No stream" is what a cluster answers while the stream elects a leader (no
        // responders): taskwire's streams exist from start-up on, so it is an outage.
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound => Error::unavailable(what, e),
        PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::Other => Error::Refused {
            what: what.to_string(),
            source: e.into(),
        },
    };
    let ack = js
        .send_publish(subject, msg)
        .await
        .map_err(map)?
        .await
        .map_err(map)?;
    Ok(ack.sequence)
}
