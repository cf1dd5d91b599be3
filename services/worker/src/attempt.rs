//! One delivery of one task, from reading its history to the ack. Delivery rules,
//! each protecting a guarantee:
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
//! - Whatever cannot be stored (NATS unreachable) leaves the message unacked: it is
//!   redelivered after ack_wait, and the history read then decides.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind};
use prost::Message as _;
use taskwire::{
    backoff::Backoff,
    domain::TaskId,
    json,
    nats::{self, Appended, Start, Stored},
    pb::{
        internal::v1::TaskMessage,
        v1::{Progress, TaskError, TaskState},
    },
    telemetry::{chain, metrics, trace},
};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::{
    events::{EventWriter, Update},
    running::{self, Registration},
    runtime::Shared,
    sdk::{Attempt, FanInput, Spawned, TaskContext, TaskFailure},
};

/// How an outcome event is retried while NATS hiccups: 3 tries, 200 ms apart and up.
const OUTCOME_TRIES: u32 = 3;
const OUTCOME_RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
/// How soon a task whose claim failed (NATS trouble, a busy history) is tried again.
const CLAIM_RETRY: Duration = Duration::from_secs(1);
/// Most bytes of child messages one WAITING event carries (NATS' default max payload
/// is 1 MiB; the rest is the event's own fields and headroom).
const MAX_CHILDREN_BYTES: usize = 900 * 1024;
/// How long a redelivery waits for a live worker to say it still runs the task.
const ASK_WAIT: Duration = Duration::from_secs(1);

/// One delivery: the message, its task, its delivery count, and (once it has claimed
/// the task) its attempt number.
struct Delivery {
    msg: jetstream::Message,
    id: TaskId,
    delivered: u64,
    attempt: u32,
    body: TaskMessage,
}

/// One slot in use: counted in the slot gauges while it lives.
struct SlotInUse {
    _permit: OwnedSemaphorePermit,
}

impl SlotInUse {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(metrics::WORKER_SLOTS, "state" => "used").increment(1.0);
        metrics::gauge!(metrics::WORKER_SLOTS, "state" => "free").decrement(1.0);
        Self { _permit: permit }
    }
}

impl Drop for SlotInUse {
    fn drop(&mut self) {
        metrics::gauge!(metrics::WORKER_SLOTS, "state" => "used").decrement(1.0);
        metrics::gauge!(metrics::WORKER_SLOTS, "state" => "free").increment(1.0);
    }
}

/// Handles one delivery of one task, holding one slot until it is settled.
pub(crate) async fn process(
    shared: Arc<Shared>,
    msg: jetstream::Message,
    slot: OwnedSemaphorePermit,
) {
    let _slot = SlotInUse::new(slot);
    let d = match Delivery::parse(&msg) {
        Ok((id, delivered, body)) => Delivery {
            msg,
            id,
            delivered,
            attempt: 0,
            body,
        },
        Err(why) => {
            // Not a task message: nothing can run it, and redelivery would not help.
            tracing::error!(subject = %msg.subject, error = %chain(&why), "bad task message; terminating it");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    // Every log line of the attempt carries its task, kind and attempt (and trace id);
    // when tracing, the span continues the submit's trace.
    let span = tracing::info_span!(
        "attempt",
        otel.name = %format!("attempt {}", d.body.kind),
        task_id = %d.id,
        kind = %d.body.kind,
        delivered = d.delivered,
        attempt = tracing::field::Empty,
        outcome = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    trace::set_parent(&span, &d.body.traceparent);
    trace::record_trace_id(&span);
    tracing::Instrument::instrument(run(&shared, d), span).await;
}

impl Delivery {
    /// The task id, delivery count and body of a delivery.
    fn parse(msg: &jetstream::Message) -> Result<(TaskId, u64, TaskMessage), nats::Error> {
        let info = msg
            .info()
            .map_err(|e| nats::Error::bad_message("a task delivery", e))?;
        let delivered = u64::try_from(info.delivered).unwrap_or(u64::MAX);
        let body = TaskMessage::decode(msg.payload.clone())
            .map_err(|e| nats::Error::bad_message("a task message", e))?;
        let id = TaskId::parse(&body.task_id)
            .map_err(|e| nats::Error::bad_message("a task message", e))?;
        Ok((id, delivered, body))
    }
}

/// How one attempt's handler ended.
enum Outcome {
    Finished(Result<serde_json::Value, TaskFailure>),
    /// The step returned and started children: the task waits for them.
    Waiting(serde_json::Value, Spawned),
    TimedOut(Duration),
    /// Cancelled, or the task was taken over: someone else wrote its history.
    Stopped,
    /// Shutdown's grace period ran out.
    HandBack,
}

async fn run(shared: &Arc<Shared>, mut d: Delivery) {
    let stop = CancellationToken::new();
    let Some((writer, _registration)) = claim(shared, &mut d, &stop).await else {
        return;
    };
    let started = std::time::Instant::now();
    let kind = d.body.kind.as_str();
    metrics::task_event(metrics::TASKS_STARTED, kind);
    // Queue wait: from the submit, or from when a delayed task came due.
    if d.attempt == 1
        && let Some(since) = d.body.run_at.as_ref().or(d.body.created_at.as_ref())
    {
        let waited = json::now_micros() - json::timestamp_to_micros(since);
        metrics::histogram!(metrics::TASK_QUEUE_WAIT, "kind" => kind.to_string())
            .record(waited.max(0) as f64 / 1e6);
    }
    let outcome = match shared.registry.get(&d.body.kind) {
        Some(handler) => execute(shared, &d, writer.clone(), handler, stop).await,
        None => Outcome::Finished(Err(TaskFailure::fatal(format!(
            "no handler for kind {}",
            d.body.kind
        ))
        .with_code("NO_HANDLER"))),
    };
    let ended = settle(shared, &d, &writer, outcome).await;
    tracing::Span::current().record("outcome", ended);
    metrics::histogram!(metrics::TASK_RUN, "kind" => kind.to_string(), "outcome" => ended)
        .record(started.elapsed().as_secs_f64());
}

/// Checks the task's history and appends RUNNING for a new attempt (or FAILED, if the
/// attempts are spent); sets `d.attempt`. `None`: nothing to run here, and the
/// delivery is settled or left to a live attempt.
async fn claim(
    shared: &Arc<Shared>,
    d: &mut Delivery,
    stop: &CancellationToken,
) -> Option<(Arc<EventWriter>, Registration)> {
    if d.delivered > 1 && still_running(shared, d).await {
        return None;
    }
    let registration = shared.running.register(d.id, stop.clone());
    // A first delivery usually finds an empty history: append without reading first.
    let start = if d.delivered > 1 {
        Start::Read
    } else {
        Start::LikelyEmpty
    };
    let (max_attempts, kind) = (d.body.max_attempts, d.body.kind.clone());
    // A parent's fan-in step runs after its WAITING event (`waiting`), with attempts
    // from 1 again; its first step's message has nothing left to do once it waits.
    let waiting = d.body.fan_in.as_ref().map_or(0, |f| f.waiting_seq);
    let done = |last: &Stored| {
        if waiting == 0 {
            last.state() == TaskState::Waiting || last.event.fan_in_of != 0
        } else {
            !(last.state() == TaskState::Waiting && last.seq == waiting
                || last.event.fan_in_of == waiting)
        }
    };
    let mut attempt = 0;
    let appended = shared
        .history
        .append_unless(d.id, start, done, |last| {
            // Attempts are counted in the history, not in deliveries: a redelivery
            // left to a live attempt, or a claim that failed, spends none.
            attempt = match last {
                Some(l) if l.state() == TaskState::Waiting => 1,
                Some(l) => l.event.attempt + 1,
                None => 1,
            };
            let mut ev = if attempt > max_attempts {
                // The last attempt's worker died (or handed it back): the task fails,
                // recorded under that attempt's number.
                let mut ev = nats::new_event(d.id, &kind, TaskState::Failed, max_attempts);
                ev.error = Some(task_error(&exhausted(max_attempts)));
                ev
            } else {
                let mut ev = nats::new_event(d.id, &kind, TaskState::Running, attempt);
                ev.worker = crate::events::WORKER_NAME.clone();
                if waiting != 0 && attempt == 1 {
                    // The fan-in's share of its tree's progress starts at 0.
                    ev.progress = Some(Progress {
                        fraction: 0.0,
                        message: "fan-in".into(),
                    });
                }
                ev
            };
            ev.fan_in_of = waiting;
            ev
        })
        .await;
    d.attempt = attempt.min(max_attempts);
    tracing::Span::current().record("attempt", d.attempt);
    match appended {
        Ok(Appended::Appended(stored)) if attempt > max_attempts => {
            tracing::warn!(error = %exhausted(max_attempts), "task failed");
            metrics::task_event(metrics::TASKS_FAILED, &d.body.kind);
            dead_letter_and_ack(shared, d, stored.event.error.as_ref(), true).await;
            None
        }
        Ok(Appended::Appended(Stored { seq, .. })) => {
            registration.claimed(attempt);
            let writer = EventWriter::new(
                shared.history.clone(),
                d.id,
                &d.body.kind,
                (attempt, waiting),
                seq,
            );
            Some((Arc::new(writer), registration))
        }
        Ok(Appended::Finished(last)) => {
            // Finished already (cancelled while queued, or a redelivery after the
            // outcome was stored). A FAILED task must be in the DLQ: make sure.
            tracing::info!(state = ?last.state(), "task already finished; acking");
            if last.state() == TaskState::Failed {
                dead_letter_and_ack(shared, d, last.event.error.as_ref(), false).await;
            } else {
                ack(&d.msg).await;
            }
            None
        }
        Err(e) => {
            tracing::warn!(error = %chain(&e), "cannot claim the task; retrying later");
            let _ = d.msg.ack_with(AckKind::Nak(Some(CLAIM_RETRY))).await;
            None
        }
    }
}

/// The failure of a task whose last attempt was lost with its worker.
fn exhausted(max_attempts: u32) -> TaskFailure {
    TaskFailure::retryable(format!(
        "attempt {max_attempts} of {max_attempts} was lost with its worker"
    ))
    .with_code("ATTEMPTS_EXHAUSTED")
}

/// Whether a redelivered task's newest attempt still runs, here or on a live worker
/// that says so. JetStream redelivers a task whose heartbeats did not arrive in time:
/// its worker died, or only the heartbeats were lost (a NATS node died, the consumer's
/// leader moved). Only in the first case may this delivery take the task over: in the
/// second it leaves it (no ack, no NAK), and the live attempt's heartbeats and ack go
/// on.
async fn still_running(shared: &Arc<Shared>, d: &Delivery) -> bool {
    if let Some(attempt) = shared.running.attempt_of(d.id) {
        tracing::info!(
            attempt,
            "redelivered while its attempt runs here; leaving it"
        );
        return true;
    }
    let last = match shared.history.last(d.id).await {
        Ok(Some(last)) if !last.is_terminal() && last.state() == TaskState::Running => last,
        // Not running (queued, retrying, finished), or unreadable: the claim decides.
        _ => return false,
    };
    match running::ask(&shared.client, d.id, ASK_WAIT).await {
        Some(attempt) if attempt == last.event.attempt => {
            tracing::info!(
                attempt,
                "redelivered while its attempt runs on a live worker; leaving it"
            );
            true
        }
        _ => false,
    }
}

/// Runs the handler with heartbeats until it ends, times out, is stopped, or the
/// shutdown's grace period runs out.
async fn execute(
    shared: &Arc<Shared>,
    d: &Delivery,
    writer: Arc<EventWriter>,
    handler: crate::sdk::BoxedHandler,
    stop: CancellationToken,
) -> Outcome {
    let timeout = d
        .body
        .timeout
        .as_ref()
        .map(|t| Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32))
        .unwrap_or(shared.config.default_timeout);
    let attempt = Arc::new(Attempt {
        task_id: d.id,
        kind: d.body.kind.clone(),
        input: json::value_to_json(d.body.input.as_ref()).unwrap_or(serde_json::Value::Null),
        labels: d.body.labels.clone().into_iter().collect(),
        attempt: d.attempt,
        max_attempts: d.body.max_attempts,
        deadline: tokio::time::Instant::now() + timeout,
        stop: stop.clone(),
        events: writer,
        fan_in: d.body.fan_in.as_ref().map(FanInput::of),
        spawned: std::sync::Mutex::default(),
        traceparent: trace::current_traceparent().unwrap_or_else(|| d.body.traceparent.clone()),
    });
    let ctx = TaskContext {
        inner: attempt.clone(),
    };
    let heartbeat = async {
        loop {
            tokio::time::sleep(shared.config.heartbeat()).await;
            if let Err(e) = d.msg.ack_with(AckKind::Progress).await {
                tracing::warn!(error = %chain(&*e), "heartbeat failed");
            }
        }
    };
    // The handler's progress and log events are appended in the attempt's span.
    let mut running = tokio::spawn(tracing::Instrument::instrument(
        handler(ctx),
        tracing::Span::current(),
    ));
    let outcome = tokio::select! {
        r = &mut running => match r {
            Ok(_) if stop.is_cancelled() => Outcome::Stopped,
            Ok(Ok(output)) => {
                let spawned = std::mem::take(&mut *attempt.spawned.lock().expect("not poisoned"));
                if spawned.children.is_empty() {
                    Outcome::Finished(Ok(output))
                } else {
                    Outcome::Waiting(output, spawned)
                }
            }
            Ok(result) => Outcome::Finished(result),
            Err(e) => Outcome::Finished(Err(TaskFailure::retryable(format!("handler panicked: {e}")).with_code("PANIC"))),
        },
        _ = heartbeat => unreachable!("heartbeats never end"),
        _ = tokio::time::sleep(timeout) => Outcome::TimedOut(timeout),
        _ = stop.cancelled() => Outcome::Stopped,
        _ = shared.hand_back.cancelled() => Outcome::HandBack,
    };
    // Whatever ended the attempt, the handler stops now: it must not report further.
    stop.cancel();
    running.abort();
    outcome
}

/// Turns an attempt's outcome into its event and the delivery's ack or NAK. Returns
/// how it ended, for metrics: succeeded, retried, failed, stopped, handed_back, or
/// unsettled (its outcome could not be stored; the task is redelivered).
async fn settle(
    shared: &Arc<Shared>,
    d: &Delivery,
    writer: &EventWriter,
    outcome: Outcome,
) -> &'static str {
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
            if !store_outcome(shared, d, writer, done).await {
                return UNSETTLED;
            }
            metrics::task_event(metrics::TASKS_SUCCEEDED, &d.body.kind);
            ack(&d.msg).await;
            "succeeded"
        }
        Outcome::Waiting(output, spawned) => {
            let n = spawned.children.len();
            let waiting = Update {
                state: TaskState::Waiting,
                progress: Some(Progress {
                    fraction: spawned.progress,
                    message: format!("waiting for {n} children"),
                }),
                output: Some(json::json_to_value(&output)),
                children: spawned.children,
                fan_in_kind: spawned.fan_in_kind,
                ..Update::default()
            };
            let size: usize = waiting.children.iter().map(|c| c.encoded_len()).sum();
            if size > MAX_CHILDREN_BYTES {
                let f = TaskFailure::fatal(format!(
                    "the {n} children started take {size} bytes; at most {MAX_CHILDREN_BYTES} fit in one event"
                ))
                .with_code("CHILDREN_TOO_LARGE");
                return retry_or_fail(shared, d, writer, f).await;
            }
            if !store_outcome(shared, d, writer, waiting).await {
                return UNSETTLED;
            }
            tracing::info!(children = n, "task waits for its children");
            ack(&d.msg).await;
            "waiting"
        }
        Outcome::Finished(Err(f)) => retry_or_fail(shared, d, writer, f).await,
        Outcome::TimedOut(timeout) => {
            let f = TaskFailure::retryable(format!(
                "attempt {} ran past its {timeout:?} timeout",
                d.attempt
            ))
            .with_code("DEADLINE_EXCEEDED");
            retry_or_fail(shared, d, writer, f).await
        }
        // Cancelled (the api wrote CANCELLED) or taken over by another worker.
        Outcome::Stopped => {
            ack_if_finished(shared, d).await;
            "stopped"
        }
        Outcome::HandBack => {
            let f = TaskFailure::retryable("the worker shut down").with_code("WORKER_SHUTDOWN");
            if !store_outcome(shared, d, writer, retrying(&f)).await {
                return UNSETTLED;
            }
            let _ = d.msg.ack_with(AckKind::Nak(None)).await;
            "handed_back"
        }
    }
}

/// How an attempt ended whose outcome could not be stored.
const UNSETTLED: &str = "unsettled";

async fn retry_or_fail(
    shared: &Arc<Shared>,
    d: &Delivery,
    writer: &EventWriter,
    f: TaskFailure,
) -> &'static str {
    if !f.retryable || d.attempt >= d.body.max_attempts {
        let failed = Update {
            state: TaskState::Failed,
            error: Some(task_error(&f)),
            ..Update::default()
        };
        if !store_outcome(shared, d, writer, failed).await {
            return UNSETTLED;
        }
        tracing::warn!(error = %f, "task failed");
        metrics::task_event(metrics::TASKS_FAILED, &d.body.kind);
        dead_letter_and_ack(shared, d, Some(&task_error(&f)), true).await;
        return "failed";
    }
    if !store_outcome(shared, d, writer, retrying(&f)).await {
        return UNSETTLED;
    }
    let delay = shared.config.backoff().delay(d.attempt);
    tracing::info!(?delay, error = %f, "attempt failed; retrying after backoff");
    metrics::task_event(metrics::TASKS_RETRIED, &d.body.kind);
    let _ = d.msg.ack_with(AckKind::Nak(Some(delay))).await;
    "retried"
}

/// Stores an attempt's outcome event, trying a few times through a short outage.
/// True: stored, the caller settles the delivery. False: not this attempt's to settle
/// (the history moved on, and that is handled here) or NATS did not take it (the
/// message is left for redelivery).
async fn store_outcome(
    shared: &Arc<Shared>,
    d: &Delivery,
    writer: &EventWriter,
    u: Update,
) -> bool {
    let mut retries = OUTCOME_RETRY.retries();
    loop {
        match writer.write(u.clone()).await {
            Ok(_) => return true,
            Err(nats::Error::Conflict) => {
                // Someone else wrote the task's history first (cancel, takeover).
                ack_if_finished(shared, d).await;
                return false;
            }
            Err(e) if retries.count() + 1 < OUTCOME_TRIES => {
                tracing::warn!(error = %chain(&e), "outcome event not stored; retrying");
                retries.wait().await;
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "outcome event not stored; the task is redelivered");
                return false;
            }
        }
    }
}

/// Copies a failed task to the DLQ, then acks; if the copy fails, the message is left
/// for redelivery, whose history read finds FAILED and copies it again (`count`:
/// whether this is the first copy, for the dead-letter counter).
async fn dead_letter_and_ack(
    shared: &Arc<Shared>,
    d: &Delivery,
    error: Option<&TaskError>,
    count: bool,
) {
    match nats::publish_dead_letter(&shared.js, &d.body, error).await {
        Ok(()) => {
            if count {
                metrics::task_event(metrics::TASKS_DEAD_LETTERED, &d.body.kind);
            }
            ack(&d.msg).await
        }
        Err(e) => {
            tracing::warn!(error = %chain(&e), "dead-letter publish failed; the task is redelivered")
        }
    }
}

/// After losing the history: ack only if the task is finished (e.g. the api cancelled
/// it). If another worker took the task over, this delivery's ack would remove the
/// message that worker still needs for its own retry, so leave it.
async fn ack_if_finished(shared: &Arc<Shared>, d: &Delivery) {
    match shared.history.last(d.id).await {
        Ok(Some(last)) if last.is_terminal() => {
            tracing::info!(state = ?last.state(), "task finished elsewhere; acking");
            ack(&d.msg).await;
        }
        Ok(_) => tracing::info!("task taken over by another worker; leaving its message"),
        Err(e) => tracing::warn!(error = %chain(&e), "cannot read history; leaving the message"),
    }
}

async fn ack(msg: &jetstream::Message) {
    if let Err(e) = msg.ack().await {
        // The outcome is stored: a redelivery will see it and ack then.
        tracing::warn!(error = %chain(&*e), "ack failed");
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
