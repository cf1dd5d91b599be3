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
///
/// With `--max-rate KIND=N` it also waits for a start token before each pull and asks
/// for no more messages than it holds tokens: a task fetched early would wait with its
/// ack_wait running.
pub(crate) async fn pull_loop(
    shared: Arc<Shared>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    kind: String,
    attempts: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut busy = false;
    let mut failures = PULL_RETRY.retries();
    let mut rate = shared.config.max_rate_of(&kind).map(StartRate::per_second);
    loop {
        let tokens = match rate.as_mut() {
            None => usize::MAX,
            Some(r) => tokio::select! {
                _ = shutdown.cancelled() => return,
                n = r.available() => n,
            },
        };
        let mut permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = shared.permits.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let extra = if busy {
            shared.permits.available_permits().min(tokens - 1)
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
        if let Some(r) = rate.as_mut() {
            r.spend(received);
        }
        busy = received >= wanted;
    }
}

/// A token bucket of task starts: `rate` per second, bursts of up to `rate`.
#[derive(Debug)]
struct StartRate {
    rate: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl StartRate {
    fn per_second(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: tokio::time::Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
    }

    /// Waits for at least one whole token; returns how many there are.
    async fn available(&mut self) -> usize {
        self.refill();
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens) / self.rate;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            self.refill();
        }
        (self.tokens.floor() as usize).max(1)
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starts_are_paced() {
        let mut r = StartRate::per_second(5);
        // A burst of 5, then one every 200 ms.
        assert_eq!(r.available().await, 5);
        r.spend(5);
        let t0 = tokio::time::Instant::now();
        assert_eq!(r.available().await, 1);
        assert_eq!(t0.elapsed(), Duration::from_millis(200));
        r.spend(1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(r.available().await, 5, "the burst is capped at the rate");
    }
}
