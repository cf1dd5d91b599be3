//! Exponential backoff with jitter: the one schedule every retry in taskwire follows
//! (a failed task's next attempt, a pull after a NATS error, a client's resume).

use std::time::Duration;

use rand::Rng;

/// Delays of `base * 2^(n-1)` for the n-th retry, capped at `max`, each times a jitter
/// in [0.75, 1): retries of many tasks spread out, and each delay still exceeds the
/// one before until the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay (before jitter).
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// A schedule from `base` doubling up to `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay before retry number `n` (1 for the first retry).
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << n.saturating_sub(1).min(20));
        exp.min(self.max)
            .mul_f64(0.75 + 0.25 * rand::rng().random::<f64>())
    }

    /// Successive waits on this schedule, for a retry loop.
    pub fn retries(self) -> Retries {
        Retries {
            backoff: self,
            done: 0,
        }
    }
}

/// A retry loop's waits: each [`Retries::wait`] sleeps the next delay.
#[derive(Debug, Clone)]
pub struct Retries {
    backoff: Backoff,
    done: u32,
}

impl Retries {
    /// Sleeps before the next try.
    pub async fn wait(&mut self) {
        self.done = self.done.saturating_add(1);
        tokio::time::sleep(self.backoff.delay(self.done)).await;
    }

    /// Starts over from the first delay (after a try that got somewhere).
    pub fn reset(&mut self) {
        self.done = 0;
    }

    /// How many waits so far.
    pub fn count(&self) -> u32 {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_grow_and_cap() {
        let b = Backoff::new(100 * MS, Duration::from_secs(1));
        for _ in 0..100 {
            let (a, b2, c) = (b.delay(1), b.delay(2), b.delay(3));
            assert!(a >= 75 * MS && a < 100 * MS, "{a:?}");
            assert!(b2 > a, "{a:?} {b2:?}");
            assert!(c >= 300 * MS, "{c:?}");
            assert!(b.delay(30) < Duration::from_secs(1));
        }
    }

    /// A retry loop sleeps the schedule, in (paused) tokio time: 100, 200, 400, then
    /// capped at 500 ms, each times the jitter, and from the start again after a reset.
    /// Many rounds, so the jitter's extremes come up.
    #[tokio::test(start_paused = true)]
    async fn retries_wait_the_schedule() {
        for _ in 0..200 {
            one_schedule().await;
        }
    }

    async fn one_schedule() {
        let mut retries = Backoff::new(100 * MS, 500 * MS).retries();
        let mut waited = Vec::new();
        for _ in 0..5 {
            let started = tokio::time::Instant::now();
            retries.wait().await;
            waited.push(started.elapsed());
        }
        let nominal = [100, 200, 400, 500, 500];
        // Tokio's timer rounds a sleep up to the millisecond: at most the nominal delay.
        for (w, n) in waited.iter().zip(nominal) {
            assert!(*w >= n * MS * 3 / 4 && *w <= n * MS, "{waited:?}");
        }
        assert_eq!(retries.count(), 5);
        retries.reset();
        let started = tokio::time::Instant::now();
        retries.wait().await;
        assert!(started.elapsed() <= 100 * MS, "starts over after a reset");
    }
}
