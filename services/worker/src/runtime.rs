//! The worker runtime: pulls tasks from JetStream, runs their handlers, and turns each
//! attempt's outcome into an event and an acknowledgement. docs/protocol.md is the
//! language-neutral description of what this module does.
//!
//! Delivery rules, each protecting a guarantee:
//! - The outcome event is stored in TASKWIRE_EVENTS before the message is acked, so a
//!   crash in between redelivers the task rather than losing its outcome (guarantee 1).
//! - While a handler runs, the message gets an in-progress ack every ack_wait/3: a live
//!   long task is never redelivered; a dead worker's task is, after ack_wait.
//! - Before running, the task's history is read: a terminal task is acked and skipped,
//!   and the RUNNING event is appended conditionally, so a cancelled task never starts
//!   and a redelivered one never gets a second terminal state (guarantee 2).
//! - Retryable failure: a RETRYING event, then NAK with an exponential, jittered
//!   delay. Spent attempts or a fatal failure: a FAILED event, the task copied to
//!   `taskwire.dlq.<kind>`, then ack (so it leaves the work stream).

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use prost::Message as _;
use rand::Rng;
use taskwire::{
    domain::TaskId,
    json, nats,
    pb::{
        internal::v1::TaskMessage,
        v1::{Progress, TaskError, TaskState},
    },
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Config,
    cancels::Cancels,
    events::{EventWriter, Update},
    sdk::{Attempt, Registry, TaskContext, TaskFailure},
};

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Nats(#[from] nats::Error),
}

/// What every attempt of this process shares.
#[derive(Debug)]
struct Shared {
    js: jetstream::Context,
    events: jetstream::stream::Stream<jetstream::stream::Info>,
    registry: Registry,
    config: Config,
    cancels: Cancels,
    permits: Arc<Semaphore>,
    /// Fires when a shutdown's grace period is over: running attempts hand their
    /// tasks back.
    hand_back: CancellationToken,
}

/// A worker connected to NATS with its consumers set up, ready to run.
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Shared>,
    client: async_nats::Client,
    consumers: Vec<jetstream::consumer::Consumer<pull::Config>>,
    /// Stops the cancel-signal router once the worker is done.
    router_stop: CancellationToken,
}

impl Worker {
    /// Connects, creates the streams and one consumer per registered kind.
    pub async fn start(config: Config, registry: Registry) -> Result<Self, Error> {
        config.validate().map_err(Error::Config)?;
        if registry.kinds().is_empty() {
            return Err(Error::Config("no task kinds registered".into()));
        }
        let (client, js) = nats::join(&config.nats, &config.streams, "taskwire-worker").await?;
        let events = nats::open_stream(&js, nats::EVENTS_STREAM).await?;
        let router_stop = CancellationToken::new();
        let cancels = Cancels::start(&client, router_stop.clone()).await?;
        let mut consumers = Vec::new();
        for kind in registry.kinds() {
            consumers.push(
                nats::setup_kind_consumer(&js, &kind, config.ack_wait, config.max_deliver).await?,
            );
        }
        let shared = Arc::new(Shared {
            js,
            events,
            permits: Arc::new(Semaphore::new(config.concurrency as usize)),
            registry,
            config,
            cancels,
            hand_back: CancellationToken::new(),
        });
        Ok(Self {
            shared,
            client,
            consumers,
            router_stop,
        })
    }

    /// Runs until `shutdown`, then drains: stops pulling, lets running handlers finish
    /// within the grace period, and hands the rest back (NAK, no delay).
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            shared,
            client,
            consumers,
            router_stop,
        } = self;
        tracing::info!(kinds = ?shared.registry.kinds(), concurrency = shared.config.concurrency, "worker running");
        let attempts = TaskTracker::new();
        let loops = TaskTracker::new();
        for consumer in consumers {
            loops.spawn(pull_loop(
                shared.clone(),
                consumer,
                attempts.clone(),
                shutdown.clone(),
            ));
        }
        loops.close();
        loops.wait().await;

        // Shutting down: nothing new is pulled; give running handlers the grace period.
        attempts.close();
        if tokio::time::timeout(shared.config.shutdown_grace, attempts.wait())
            .await
            .is_err()
        {
            tracing::info!(
                running = attempts.len(),
                "grace period over; handing tasks back"
            );
            shared.hand_back.cancel();
            attempts.wait().await;
        }
        router_stop.cancel();
        client.flush().await.ok();
    }
}

/// Starts a worker and runs it until `shutdown` (see [`Worker`]).
pub async fn run(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    Worker::start(config, registry).await?.run(shutdown).await;
    Ok(())
}

/// Pulls one kind's tasks while permits allow, until `shutdown`. It fetches only as
/// many messages as it holds permits for, so no fetched task waits for a slot (its
/// ack_wait would run) and none is NAKed for lack of one (a NAK spends an attempt).
///
/// An idle kind waits for its next task holding one slot; a busy kind (its last pull
/// was filled) takes every free slot. A fixed share per kind left a worker serving five
/// kinds able to run only a fifth of its slots for one kind with a backlog, while the
/// idle kinds' pulls held the rest (docs/benchmarks.md, W4). Kinds that are busy at
/// once share the slots as they free up: the semaphore serves waiters in order.
async fn pull_loop(
    shared: Arc<Shared>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    attempts: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut busy = false;
    loop {
        let mut permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = shared.permits.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let extra = if busy {
            shared.permits.available_permits()
        } else {
            0
        };
        if extra > 0
            && let Ok(more) = shared.permits.clone().try_acquire_many_owned(extra as u32)
        {
            permit.merge(more);
        }
        let wanted = permit.num_permits();
        let batch = consumer
            .batch()
            .max_messages(wanted)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "pull failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        // The batch holds at most `wanted` messages: one slot each. A shutdown stops
        // waiting for it at once; a message the server still sends to the abandoned
        // request is redelivered to another worker after ack_wait.
        let mut permit = Some(permit);
        let mut received = 0;
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = batch.next() => match m { Some(m) => m, None => break },
            };
            match msg {
                Ok(msg) => {
                    received += 1;
                    let split = permit
                        .as_mut()
                        .filter(|p| p.num_permits() > 1)
                        .and_then(|p| p.split(1));
                    let Some(slot) = split.or_else(|| permit.take()) else {
                        tracing::error!("more messages than requested; handing one back");
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                        continue;
                    };
                    attempts.spawn(process(shared.clone(), msg, slot));
                }
                Err(e) => tracing::warn!(error = %e, "bad delivery"),
            }
        }
        busy = received >= wanted;
    }
}

/// How one attempt ended.
enum Outcome {
    Finished(Result<serde_json::Value, TaskFailure>),
    TimedOut,
    /// Cancelled, or the task was taken over: someone else wrote its history.
    Stopped,
    /// Shutdown's grace period ran out.
    HandBack,
}

/// Handles one delivery of one task, from reading its history to the ack.
async fn process(shared: Arc<Shared>, msg: jetstream::Message, _slot: OwnedSemaphorePermit) {
    let (attempt, body) = match parse(&msg) {
        Ok(x) => x,
        Err(why) => {
            // Not a task message: nothing can run it, and redelivery would not help.
            tracing::error!(subject = %msg.subject, why, "bad task message; terminating it");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let id = match TaskId::parse(&body.task_id) {
        Ok(id) => id,
        Err(_) => {
            tracing::error!(task_id = body.task_id, "bad task id; terminating message");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let msg = Arc::new(msg);
    let span = tracing::info_span!("attempt", task_id = %id, kind = %body.kind, attempt);
    let _ =
        tracing::Instrument::instrument(run_attempt(&shared, &msg, id, attempt, body), span).await;
}

fn parse(msg: &jetstream::Message) -> Result<(u32, TaskMessage), String> {
    let info = msg.info().map_err(|e| e.to_string())?;
    let body = TaskMessage::decode(msg.payload.clone()).map_err(|e| e.to_string())?;
    Ok((u32::try_from(info.delivered).unwrap_or(u32::MAX), body))
}

async fn run_attempt(
    shared: &Arc<Shared>,
    msg: &Arc<jetstream::Message>,
    id: TaskId,
    attempt: u32,
    body: TaskMessage,
) -> Result<(), ()> {
    // Read the task's history, and claim this attempt with a conditional RUNNING event.
    let stop = CancellationToken::new();
    let _registration = shared.cancels.register(id, stop.clone());
    let writer = match claim(shared, msg, id, attempt, &body).await? {
        Some(w) => Arc::new(w),
        None => return Ok(()),
    };

    let handler = match shared.registry.get(&body.kind) {
        Some(h) => h,
        None => {
            let f = TaskFailure::fatal(format!("no handler for kind {}", body.kind))
                .with_code("NO_HANDLER");
            return fail(shared, msg, &writer, &body, &f).await;
        }
    };
    let timeout = body
        .timeout
        .as_ref()
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
        .unwrap_or(shared.config.default_timeout);
    let ctx = TaskContext {
        inner: Arc::new(Attempt {
            task_id: id,
            kind: body.kind.clone(),
            input: json::value_to_json(body.input.as_ref()).unwrap_or(serde_json::Value::Null),
            labels: body.labels.clone().into_iter().collect(),
            attempt,
            max_attempts: body.max_attempts,
            deadline: tokio::time::Instant::now() + timeout,
            stop: stop.clone(),
            events: writer.clone(),
        }),
    };

    // Heartbeats: an in-progress ack every ack_wait/3 while the handler runs.
    let heartbeat = {
        let msg = msg.clone();
        let every = shared.config.heartbeat();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        })
    };
    let mut running = tokio::spawn(handler(ctx));
    let outcome = tokio::select! {
        r = &mut running => match r {
            Ok(_) if stop.is_cancelled() => Outcome::Stopped,
            Ok(result) => Outcome::Finished(result),
            Err(e) => Outcome::Finished(Err(TaskFailure::retryable(format!("handler panicked: {e}")).with_code("PANIC"))),
        },
        _ = tokio::time::sleep(timeout) => Outcome::TimedOut,
        _ = stop.cancelled() => Outcome::Stopped,
        _ = shared.hand_back.cancelled() => Outcome::HandBack,
    };
    // Whatever ended the attempt, the handler stops now: it must not report further.
    stop.cancel();
    running.abort();
    heartbeat.abort();

    match outcome {
        Outcome::Finished(Ok(output)) => {
            let done = Update {
                state: TaskState::Succeeded,
                progress: Some(Progress {
                    fraction: 1.0,
                    message: "done".into(),
                }),
                output: Some(json::json_to_value(&output)),
                ..Update::default()
            };
            match write_outcome(&writer, done).await {
                Ok(_) => ack(msg).await,
                Err(Lost) => ack_if_finished(shared, msg, id).await,
                Err(Unreachable) => {}
            }
            Ok(())
        }
        Outcome::Finished(Err(f)) => retry_or_fail(shared, msg, &writer, &body, attempt, f).await,
        Outcome::TimedOut => {
            let f = TaskFailure::retryable(format!(
                "attempt {attempt} ran past its {timeout:?} timeout"
            ))
            .with_code("DEADLINE_EXCEEDED");
            retry_or_fail(shared, msg, &writer, &body, attempt, f).await
        }
        Outcome::Stopped => {
            // Cancelled (the api wrote CANCELLED) or taken over by another worker.
            ack_if_finished(shared, msg, id).await;
            Ok(())
        }
        Outcome::HandBack => {
            let f = TaskFailure::retryable("the worker shut down").with_code("WORKER_SHUTDOWN");
            if write_outcome(&writer, retrying(&f)).await.is_ok() {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
            }
            Ok(())
        }
    }
}

/// Checks the task's history and appends RUNNING for this attempt. `None`: nothing to
/// run (the task is finished, or its attempts were spent, and that has been recorded).
async fn claim(
    shared: &Arc<Shared>,
    msg: &Arc<jetstream::Message>,
    id: TaskId,
    attempt: u32,
    body: &TaskMessage,
) -> Result<Option<EventWriter>, ()> {
    // A first delivery usually finds an empty history, so its first try appends with
    // "expected seq 0" without reading; if that loses (cancelled while queued), read.
    // A few tries: a dead worker's stale history may move under us once or twice.
    let mut read = attempt > 1;
    for _ in 0..5 {
        let last = if read {
            match nats::last_event(&shared.events, id).await {
                Ok(l) => l,
                Err(e) => return retry_later(msg, "cannot read task history", &e).await,
            }
        } else {
            None
        };
        read = true;
        let last_seq = last.as_ref().map_or(0, |(seq, _)| *seq);
        if let Some((_, ev)) = &last {
            let state = TaskState::try_from(ev.state).unwrap_or(TaskState::Unspecified);
            if state.is_terminal() {
                // Finished already (cancelled while queued, or a redelivery after the
                // outcome was stored). A FAILED task must be in the DLQ: make sure.
                if state == TaskState::Failed {
                    dead_letter(shared, body, ev.error.as_ref()).await?;
                }
                tracing::info!(?state, "task already finished; acking");
                ack(msg).await;
                return Ok(None);
            }
        }
        if attempt > body.max_attempts {
            // Recorded under the last real attempt's number.
            let writer = EventWriter::new(
                shared.js.clone(),
                id,
                &body.kind,
                body.max_attempts,
                last_seq,
            );
            // The previous attempt was the last and its worker died mid-way.
            let f = TaskFailure::retryable(format!(
                "attempt {} of {} was lost with its worker",
                attempt - 1,
                body.max_attempts
            ))
            .with_code("ATTEMPTS_EXHAUSTED");
            fail(shared, msg, &writer, body, &f).await?;
            return Ok(None);
        }
        let writer = EventWriter::new(shared.js.clone(), id, &body.kind, attempt, last_seq);
        match writer.write(Update::running()).await {
            Ok(_) => return Ok(Some(writer)),
            Err(nats::Error::Conflict) => continue,
            Err(e) => return retry_later(msg, "cannot append RUNNING", &e).await,
        }
    }
    // Someone keeps writing: leave the message for redelivery.
    Err(())
}

/// NATS failed while claiming: hand the task back to be tried again in a second.
async fn retry_later<T>(msg: &jetstream::Message, what: &str, e: &nats::Error) -> Result<T, ()> {
    tracing::warn!(error = %e, "{what}; retrying later");
    let _ = msg
        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
        .await;
    Err(())
}

async fn retry_or_fail(
    shared: &Arc<Shared>,
    msg: &Arc<jetstream::Message>,
    writer: &EventWriter,
    body: &TaskMessage,
    attempt: u32,
    f: TaskFailure,
) -> Result<(), ()> {
    if !f.retryable || attempt >= body.max_attempts {
        return fail(shared, msg, writer, body, &f).await;
    }
    match write_outcome(writer, retrying(&f)).await {
        Ok(_) => {
            let delay = backoff(
                attempt,
                shared.config.backoff_base,
                shared.config.backoff_max,
            );
            tracing::info!(?delay, error = %f, "attempt failed; retrying after backoff");
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Err(Lost) => ack_if_finished(shared, msg, writer.task_id()).await,
        Err(Unreachable) => {}
    }
    Ok(())
}

/// Ends the task FAILED: the event, then the dead-letter copy, then the ack.
async fn fail(
    shared: &Arc<Shared>,
    msg: &Arc<jetstream::Message>,
    writer: &EventWriter,
    body: &TaskMessage,
    f: &TaskFailure,
) -> Result<(), ()> {
    let error = task_error(f);
    let failed = Update {
        state: TaskState::Failed,
        error: Some(error.clone()),
        ..Update::default()
    };
    match write_outcome(writer, failed).await {
        Ok(_) => {
            tracing::warn!(error = %f, "task failed");
            dead_letter(shared, body, Some(&error)).await?;
            ack(msg).await;
        }
        Err(Lost) => ack_if_finished(shared, msg, writer.task_id()).await,
        Err(Unreachable) => {}
    }
    Ok(())
}

/// Copies a dead task to the DLQ; on failure the message is left for redelivery.
async fn dead_letter(
    shared: &Arc<Shared>,
    body: &TaskMessage,
    error: Option<&TaskError>,
) -> Result<(), ()> {
    nats::publish_dead_letter(&shared.js, body, error)
        .await
        .map_err(
            |e| tracing::warn!(error = %e, "dead-letter publish failed; the task is redelivered"),
        )
}

/// The outcome event could not be stored.
enum WriteFailure {
    /// Someone else wrote the task's history first (cancel, takeover): not ours now.
    Lost,
    /// NATS did not take it: leave the message unacked so it is redelivered.
    Unreachable,
}
use WriteFailure::{Lost, Unreachable};

async fn write_outcome(writer: &EventWriter, u: Update) -> Result<u64, WriteFailure> {
    // A short outage should not cost a rerun: try a few times.
    for _ in 0..3 {
        match writer.write(u.clone()).await {
            Ok(seq) => return Ok(seq),
            Err(nats::Error::Conflict) => return Err(Lost),
            Err(e) => {
                tracing::warn!(error = %e, "outcome event not stored; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(Unreachable)
}

/// After losing a write: ack only if the task's history is finished (e.g. the api
/// cancelled it). If another worker took the task over, this delivery's ack would
/// remove the message that worker still needs for its own retry, so leave it.
async fn ack_if_finished(shared: &Arc<Shared>, msg: &jetstream::Message, id: TaskId) {
    match nats::last_event(&shared.events, id).await {
        Ok(Some((_, ev))) if TaskState::try_from(ev.state).is_ok_and(TaskState::is_terminal) => {
            tracing::info!(state = ?TaskState::try_from(ev.state), "task finished elsewhere; acking");
            ack(msg).await;
        }
        Ok(_) => tracing::info!("task taken over by another worker; leaving its message"),
        Err(e) => tracing::warn!(error = %e, "cannot read history; leaving the message"),
    }
}

async fn ack(msg: &jetstream::Message) {
    if let Err(e) = msg.ack().await {
        // The outcome is stored: a redelivery will see it and ack then.
        tracing::warn!(error = %e, "ack failed");
    }
}

fn retrying(f: &TaskFailure) -> Update {
    Update {
        state: TaskState::Retrying,
        error: Some(task_error(f)),
        ..Update::default()
    }
}

fn task_error(f: &TaskFailure) -> TaskError {
    TaskError {
        code: f.code.clone(),
        message: f.message.clone(),
        retryable: f.retryable,
    }
}

/// Delay before attempt `attempt + 1`: base * 2^(attempt-1), capped, times a jitter
/// in [0.75, 1), so retries of many tasks spread out and each delay still exceeds the
/// one before (a test relies on that).
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(max);
    capped.mul_f64(0.75 + 0.25 * rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..100 {
            let (a, b, c) = (
                backoff(1, base, max),
                backoff(2, base, max),
                backoff(3, base, max),
            );
            assert!(a >= base.mul_f64(0.75) && a <= base);
            assert!(b > a, "{a:?} {b:?}");
            assert!(c >= base.mul_f64(3.0));
            assert!(backoff(30, base, max) <= max);
        }
    }
}
