//! Pulling one kind's tasks as slots allow.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use taskwire::{backoff::Backoff, telemetry::chain};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::runtime::Shared;

/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Waits between pulls that failed (NATS down): 100 ms doubling up to 2 s.
const PULL_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// Pulls one kind's tasks while permits allow, until `shutdown`. It fetches only as
/// many messages as it holds permits for, so no fetched task waits for a slot (its
/// ack_wait would run) and none is NAKed for lack of one (a NAK counts a delivery,
/// toward `max_deliver`).
///
/// An idle kind waits for its next task holding one slot; a busy kind (its last pull
/// was filled) takes every free slot. A fixed share per kind left a worker serving five
/// kinds able to run only a fifth of its slots for one kind with a backlog, while the
/// idle kinds' pulls held the rest (docs/benchmarks.md, W4). Kinds that are busy at
/// once share the slots as they free up: the semaphore serves waiters in order.
pub(crate) async fn pull_loop(
    shared: Arc<Shared>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    attempts: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut busy = false;
    let mut failures = PULL_RETRY.retries();
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
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %chain(&e), "pull failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = failures.wait() => continue,
                }
            }
        };
        // The batch holds at most `wanted` messages: one slot each. A shutdown stops
        // waiting for it at once; a message the server still sends to the abandoned
        // request is redelivered to another worker after ack_wait.
        let mut permit = Some(permit);
        let mut received = 0;
        // A pull whose server went away (a node lost, a leader change) never hears its
        // end: async-nats ends it 5 s past its expiry, and the loop pulls again. (Not
        // sooner: under load a pull can still be delivering after its expiry, and a
        // message sent to an abandoned pull waits out ack_wait.)
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = batch.next() => match m {
                    Some(m) => m,
                    // The pull ended as it should: the server answers again.
                    None => {
                        failures.reset();
                        break;
                    }
                },
            };
            match msg {
                Ok(msg) => {
                    failures.reset();
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
                    attempts.spawn(crate::attempt::process(shared.clone(), msg, slot));
                }
                // The pull failed (its node went away, the consumer's leader moved):
                // pull again after a pause rather than read more of it.
                Err(e) => {
                    tracing::warn!(error = %chain(&*e), "pull failed mid-way; pulling again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = failures.wait() => {}
                    }
                    break;
                }
            }
        }
        busy = received >= wanted;
    }
}
