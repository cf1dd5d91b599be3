//! Limits that protect a server from one caller: a per-tenant rate (token bucket) and
//! per-key counts of open streams. Both are per process: N replicas allow N times the
//! figure, which the flags' help says; a shared limit would put a network round trip
//! on every call.
//!
//! A caller over a limit gets RESOURCE_EXHAUSTED with when to retry, twice: as
//! `google.rpc.RetryInfo` in the status details (what gRPC client libraries read) and
//! as a `retry-after` header in seconds (what grpcurl and curl users see).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt};

/// RESOURCE_EXHAUSTED saying `message` and when to retry.
pub fn exhausted(message: impl Into<String>, retry_after: Duration) -> Status {
    let mut metadata = MetadataMap::new();
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    metadata.insert(
        "retry-after",
        secs.to_string().parse().expect("digits are valid metadata"),
    );
    Status::with_error_details_and_metadata(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
        metadata,
    )
}

/// A token bucket per key: `rate` per second on average, bursts of up to `rate`.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Keys tracked at most; past it, full buckets (idle keys) are forgotten.
const MAX_KEYS: usize = 100_000;

impl RateLimit {
    /// `rate` calls per second per key; `None` for 0 (no limit).
    pub fn per_second(rate: u32) -> Option<Self> {
        (rate > 0).then(|| Self {
            rate: f64::from(rate),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes `n` calls' worth for `key`, or says how long until there is room. A
    /// batch larger than the bucket passes when the bucket is full and leaves it in
    /// debt, so the average rate holds and no batch waits forever.
    pub fn take(&self, key: &str, n: u32) -> Result<(), Duration> {
        self.take_at(key, n, Instant::now())
    }

    fn take_at(&self, key: &str, n: u32, now: Instant) -> Result<(), Duration> {
        let n = f64::from(n);
        let mut buckets = self.buckets.lock().expect("not poisoned");
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let rate = self.rate;
            buckets.retain(|_, b| b.tokens + b.refill(now, rate) < rate);
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.rate,
            at: now,
        });
        b.tokens = (b.tokens + b.refill(now, self.rate)).min(self.rate);
        b.at = now;
        let needed = n.min(self.rate);
        if b.tokens >= needed {
            b.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((needed - b.tokens) / self.rate))
        }
    }
}

impl Bucket {
    fn refill(&self, now: Instant, rate: f64) -> f64 {
        now.saturating_duration_since(self.at).as_secs_f64() * rate
    }
}

/// At most `max` things open at once per key (streams of a tenant or of a key).
#[derive(Debug, Clone)]
pub struct Quota {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open thing; gives its place back when dropped.
#[derive(Debug)]
pub struct Permit {
    key: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl Quota {
    /// `max` per key; 0 for no limit.
    pub fn new(max: usize) -> Self {
        Self {
            max: if max == 0 { usize::MAX } else { max },
            open: Arc::default(),
        }
    }

    /// A place for `key`, or `None` if it has `max` open.
    pub fn acquire(&self, key: &str) -> Option<Permit> {
        let mut open = self.open.lock().expect("not poisoned");
        let n = open.entry(key.to_string()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Permit {
            key: key.to_string(),
            open: self.open.clone(),
        })
    }

    /// The most a key may have open.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("not poisoned");
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_and_says_when_to_come_back() {
        let limit = RateLimit::per_second(10).unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            limit.take_at("a", 1, t0).unwrap();
        }
        let wait = limit.take_at("a", 1, t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another key has its own bucket.
        limit.take_at("b", 10, t0).unwrap();
        // 100 ms later, one more.
        limit
            .take_at("a", 1, t0 + Duration::from_millis(100))
            .unwrap();
        assert!(
            limit
                .take_at("a", 1, t0 + Duration::from_millis(100))
                .is_err()
        );
        // A batch larger than the burst passes from a full bucket, in debt: the next
        // call waits out the debt too (1 over, plus its own 1: 200 ms).
        limit.take_at("c", 11, t0).unwrap();
        assert_eq!(
            limit.take_at("c", 1, t0).unwrap_err(),
            Duration::from_millis(200)
        );
        assert!(RateLimit::per_second(0).is_none());
    }

    #[test]
    fn a_batch_larger_than_the_bucket_passes_when_full_and_leaves_a_debt() {
        let limit = RateLimit::per_second(10).unwrap();
        let t0 = Instant::now();
        limit.take_at("a", 25, t0).unwrap();
        // 15 tokens owed: the bucket is full again 2.5 s later, not 1 s.
        let wait = limit
            .take_at("a", 25, t0 + Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(wait, Duration::from_millis(1500));
        limit
            .take_at("a", 25, t0 + Duration::from_millis(2500))
            .unwrap();
    }

    #[test]
    fn a_quota_counts_open_permits_per_key() {
        let q = Quota::new(2);
        let a1 = q.acquire("a").unwrap();
        let _a2 = q.acquire("a").unwrap();
        assert!(q.acquire("a").is_none());
        let _b = q.acquire("b").unwrap();
        drop(a1);
        let _a3 = q.acquire("a").unwrap();
        assert!(Quota::new(0).acquire("x").is_some());
    }

    #[test]
    fn exhausted_carries_retry_info_and_header() {
        let s = exhausted("slow down", Duration::from_millis(1500));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get("retry-after").unwrap(), "2");
        let details = s.get_error_details();
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_millis(1500))
        );
    }
}
