//! A task's history: its events in TASKWIRE_EVENTS, and the one way to append to it.
//!
//! Every writer (the worker holding a delivery, the api cancelling, the recorder
//! failing a task JetStream gave up on) appends with Nats-Expected-Last-Subject-Sequence
//! = the newest seq it knows, so a task's history is linear and whoever appends second
//! loses ([`Error::Conflict`]). Nothing is appended after a terminal event: the writer
//! reads the newest event first and stops if the task is finished
//! ([`History::append_unless_finished`]). An event's seq is the stream sequence it is
//! stored at, so seqs strictly increase within a task.

use std::sync::Arc;

use async_nats::jetstream::{
    Context,
    message::PublishMessage,
    stream::{DirectGetErrorKind, LastRawMessageErrorKind, Stream},
};
use bytes::Bytes;
use prost::Message;

use super::{Error, SCHEMA_HEADER, SCHEMA_VERSION, event_subject, send};
use crate::{
    domain::TaskId,
    json,
    pb::{internal::v1::Event, v1::TaskState},
    store::{EventUpdate, TaskRecord},
};

/// How long one append is sent again while NATS does not answer: a stream's leader
/// election after a node loss takes a few seconds, and an attempt whose progress
/// append fails is stopped. The waits between tries: 100 ms doubling to 2 s.
const APPEND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
const APPEND_RETRY: crate::backoff::Backoff = crate::backoff::Backoff::new(
    std::time::Duration::from_millis(100),
    std::time::Duration::from_secs(2),
);

/// How many times an append reads the history again after losing a race, before it
/// gives up with [`Error::Conflict`]. A busy task (progress events every few ms) can
/// make a cancel lose a few times.
const TRIES: usize = 20;

/// An event as stored, with its seq.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The stream sequence it is stored at.
    pub seq: u64,
    /// The event.
    pub event: Event,
}

impl Stored {
    /// The task's state after this event.
    pub fn state(&self) -> TaskState {
        TaskState::try_from(self.event.state).unwrap_or(TaskState::Unspecified)
    }

    /// Whether the task ended with this event.
    pub fn is_terminal(&self) -> bool {
        self.state().is_terminal()
    }

    /// Whether this event alone gives all a watch's first event shows of its task
    /// (state, progress, attempt, output, and no error): a SUCCEEDED event carrying
    /// its progress and output, as every worker writes it. The events before it then
    /// need not be read to show the task.
    pub fn shows_whole_task(&self) -> bool {
        self.state() == TaskState::Succeeded
            && self.event.progress.is_some()
            && self.event.output.is_some()
    }

    /// The change this event makes to its task's record.
    pub fn to_update(&self) -> Result<EventUpdate, Error> {
        EventUpdate::from_event(self.seq, &self.event).map_err(|e| {
            Error::bad_message(
                format!("event {} of task {}", self.seq, self.event.task_id),
                e,
            )
        })
    }
}

/// What [`History::append_unless_finished`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// The event was appended.
    Appended(Stored),
    /// Nothing was appended: the history already ends with this terminal (or, for
    /// [`History::append_unless`], done) event.
    Finished(Stored),
}

/// What the appender knows of the history before its first try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Nothing: read the newest event first.
    Read,
    /// It is most likely empty (a task's first delivery): try "expected seq 0" without
    /// a read, and read only if that loses.
    LikelyEmpty,
}

/// Reads and appends to tasks' histories. Cheap to clone: one pointer (a watch process
/// holds one per open stream; the stream handle alone is kilobytes).
#[derive(Debug, Clone)]
pub struct History(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    js: Context,
    events: Stream,
}

impl History {
    /// Opens TASKWIRE_EVENTS (it exists once the streams are set up).
    pub async fn open(js: &Context) -> Result<Self, Error> {
        let events = super::at_startup("opening the events stream", || {
            super::open_stream(js, super::EVENTS_STREAM)
        })
        .await?;
        Ok(Self(Arc::new(Inner {
            js: js.clone(),
            events,
        })))
    }

    /// The newest event of a task, or `None` if it has none.
    pub async fn last(&self, id: TaskId) -> Result<Option<Stored>, Error> {
        match self
            .0
            .events
            .get_last_raw_message_by_subject(&event_subject(id))
            .await
        {
            Ok(msg) => Ok(Some(Stored {
                seq: msg.sequence,
                event: decode(id, msg.sequence, msg.payload)?,
            })),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(Error::unavailable(
                format!("reading the history of task {id}"),
                e,
            )),
        }
    }

    /// The seq and `Nats-Msg-Id` of a task's newest event.
    async fn last_msg_id(&self, id: TaskId) -> Result<Option<(u64, String)>, Error> {
        match self
            .0
            .events
            .get_last_raw_message_by_subject(&event_subject(id))
            .await
        {
            Ok(msg) => Ok(msg
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| (msg.sequence, v.to_string()))),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(Error::unavailable(
                format!("reading the history of task {id}"),
                e,
            )),
        }
    }

    /// The first stored event of a task with seq > `after`, or `None` if there is none
    /// (yet). Reads by direct get, from any replica of the stream. An event that does
    /// not decode (no version of taskwire wrote it) is logged and skipped, so it cannot
    /// stop every reader of the task.
    pub async fn next_after(&self, id: TaskId, mut after: u64) -> Result<Option<Stored>, Error> {
        loop {
            let msg = match self
                .0
                .events
                .direct_get_next_for_subject(event_subject(id), Some(after + 1))
                .await
            {
                Ok(msg) => msg,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(Error::unavailable(
                        format!("reading the history of task {id}"),
                        e,
                    ));
                }
            };
            match decode(id, msg.sequence, msg.payload) {
                Ok(event) => {
                    return Ok(Some(Stored {
                        seq: msg.sequence,
                        event,
                    }));
                }
                Err(e) => {
                    tracing::error!(error = %crate::telemetry::chain(&e), "undecodable event skipped");
                    after = msg.sequence;
                }
            }
        }
    }

    /// Folds into `record` the events of its task that it has not seen, up to `newest`
    /// (the task's newest event, [`History::last`]), in order, as the recorder will
    /// apply them ([`TaskRecord::fold`]): what every read does so it is never older
    /// than the stream (the database trails it by the recorder's lag). The caller reads
    /// `newest` itself, so that it can read it beside the record (one round trip for
    /// both, not two), and knowing where the history ends spares the read that would
    /// find nothing after it. At most `limit` events before `newest` are read one by
    /// one; if more remain, `newest` is folded after them. A terminal record is final
    /// and left as it is.
    pub async fn catch_up(
        &self,
        record: &mut TaskRecord,
        newest: Option<Stored>,
        limit: usize,
    ) -> Result<(), Error> {
        let Some(newest) = newest else { return Ok(()) };
        if record.state.is_terminal() {
            return Ok(());
        }
        for _ in 0..limit {
            if record.last_seq >= newest.seq {
                break;
            }
            match self.next_after(record.id, record.last_seq).await? {
                Some(next) if next.seq < newest.seq => {
                    record.fold(&next.to_update()?);
                }
                _ => break,
            }
        }
        // A no-op when the record has it already.
        record.fold(&newest.to_update()?);
        Ok(())
    }

    /// Appends `event` if the task's newest seq is still `expected_last` (0: the task
    /// has no events); returns its seq, or [`Error::Conflict`] if someone else wrote
    /// first. When tracing, the current span's context goes with it in a
    /// `traceparent` header, so whoever reads the event continues the trace.
    pub async fn append(&self, event: &Event, expected_last: u64) -> Result<u64, Error> {
        let id = TaskId::parse(&event.task_id)
            .map_err(|e| Error::bad_message("an event to append", e))?;
        let payload = Bytes::from(event.encode_to_vec());
        let traceparent = crate::telemetry::trace::current_traceparent();
        // A publish whose ack is lost (a node died, the stream's leader changed) is sent
        // again with the same Nats-Msg-Id: if the first one was stored, JetStream
        // answers with its seq instead of storing it twice or refusing it as a
        // conflict. The id names this append alone (task, expected seq, a random
        // nonce), so another writer's append can never pass for it.
        let msg_id = format!("{id}:{expected_last}:{:016x}", rand::random::<u64>());
        let mut retries = APPEND_RETRY.retries();
        let give_up = tokio::time::Instant::now() + APPEND_PATIENCE;
        loop {
            let mut msg = PublishMessage::build()
                .payload(payload.clone())
                .message_id(msg_id.as_str())
                .header(SCHEMA_HEADER, SCHEMA_VERSION)
                .expected_last_subject_sequence(expected_last);
            if let Some(tp) = &traceparent {
                msg = msg.header(crate::telemetry::trace::TRACEPARENT, tp.as_str());
            }
            match send(&self.0.js, event_subject(id), msg, "appending an event").await {
                Err(Error::Unavailable { .. }) if tokio::time::Instant::now() < give_up => {
                    retries.wait().await;
                }
                // A retry refused as a conflict may be refused because of the first
                // try, stored after all: if the newest event carries this append's id,
                // it is this append's.
                Err(Error::Conflict) if retries.count() > 0 => {
                    return match self.last_msg_id(id).await {
                        Ok(Some((seq, stored_id))) if stored_id == msg_id => Ok(seq),
                        _ => Err(Error::Conflict),
                    };
                }
                other => return other,
            }
        }
    }

    /// Appends the event `next` makes from the newest one (`None`: the history is
    /// empty), unless the task is already finished; after a lost race it reads again
    /// and asks `next` again. [`Error::Conflict`] only if it keeps losing.
    pub async fn append_unless_finished(
        &self,
        id: TaskId,
        start: Start,
        next: impl FnMut(Option<&Stored>) -> Event,
    ) -> Result<Appended, Error> {
        self.append_unless(id, start, Stored::is_terminal, next)
            .await
    }

    /// [`History::append_unless_finished`] with the caller's idea of "finished": nothing
    /// is appended when the newest event is `done` (a worker's delivery of a parent's
    /// first step is done once the parent WAITS; [`Appended::Finished`] then names it).
    pub async fn append_unless(
        &self,
        id: TaskId,
        start: Start,
        done: impl Fn(&Stored) -> bool,
        mut next: impl FnMut(Option<&Stored>) -> Event,
    ) -> Result<Appended, Error> {
        let mut read = start == Start::Read;
        for _ in 0..TRIES {
            let last = if read { self.last(id).await? } else { None };
            read = true;
            if let Some(finished) = last.as_ref().filter(|l| l.is_terminal() || done(l)) {
                return Ok(Appended::Finished(finished.clone()));
            }
            let event = next(last.as_ref());
            match self
                .append(&event, last.as_ref().map_or(0, |l| l.seq))
                .await
            {
                Ok(seq) => return Ok(Appended::Appended(Stored { seq, event })),
                Err(Error::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict)
    }
}

/// A new event of task `id` at the current time; callers fill in the rest.
pub fn new_event(id: TaskId, kind: &str, state: TaskState, attempt: u32) -> Event {
    Event {
        task_id: id.to_string(),
        time: Some(json::micros_to_timestamp(json::now_micros())),
        state: state as i32,
        attempt,
        kind: kind.to_string(),
        ..Default::default()
    }
}

fn decode(id: TaskId, seq: u64, payload: Bytes) -> Result<Event, Error> {
    Event::decode(payload).map_err(|e| Error::bad_message(format!("event {seq} of task {id}"), e))
}
