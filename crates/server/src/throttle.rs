//! Backpressure: a token bucket per key (requests per minute), a cap on
//! each key's concurrent executions, and a global cap on requests in
//! flight. Every refusal is a 429 with `Retry-After`, never a queue.

use crate::error::ApiError;
use kiln_policy::ApiKey;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One caller's key and its live counters.
pub struct KeyState {
    pub key: ApiKey,
    bucket: Mutex<Bucket>,
    executions: Arc<Semaphore>,
    /// Held while a session is counted and created, so two concurrent
    /// creations cannot both pass the quota.
    pub create_lock: tokio::sync::Mutex<()>,
}

impl KeyState {
    pub fn new(key: ApiKey) -> Self {
        let rate = key.requests_per_minute;
        Self {
            executions: Arc::new(Semaphore::new(key.max_concurrency)),
            bucket: Mutex::new(Bucket::new(rate, Instant::now())),
            create_lock: tokio::sync::Mutex::new(()),
            key,
        }
    }

    /// Takes one request token, or says when to retry.
    pub fn take_token(&self) -> Result<(), ApiError> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.take(Instant::now()).map_err(|wait| {
            ApiError::too_many(
                format!(
                    "key {:?} is over its rate of {} requests per minute",
                    self.key.id, self.key.requests_per_minute
                ),
                wait.as_secs_f64().ceil() as u64,
            )
        })
    }

    /// A slot for one execution of this key, held until dropped.
    pub fn start_execution(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.executions.clone().try_acquire_owned().map_err(|_| {
            ApiError::too_many(
                format!(
                    "key {:?} already runs {} executions, its limit",
                    self.key.id, self.key.max_concurrency
                ),
                1,
            )
        })
    }
}

/// A token bucket holding up to a minute's worth of requests.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(per_minute: u32, now: Instant) -> Self {
        let capacity = f64::from(per_minute.max(1));
        Self {
            tokens: capacity,
            capacity,
            per_second: capacity / 60.0,
            last: now,
        }
    }

    /// Takes a token, or returns how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

/// Requests in flight across all keys.
#[derive(Clone)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    max: usize,
}

/// One request counted in flight until dropped.
pub struct InFlightGuard(Arc<AtomicUsize>);

impl InFlight {
    pub fn new(max: usize) -> Self {
        Self {
            count: Arc::new(AtomicUsize::new(0)),
            max: max.max(1),
        }
    }

    pub fn enter(&self) -> Result<InFlightGuard, ApiError> {
        let before = self.count.fetch_add(1, Ordering::SeqCst);
        let guard = InFlightGuard(self.count.clone());
        if before >= self.max {
            return Err(ApiError::too_many(
                format!(
                    "the server is at its limit of {} requests in flight",
                    self.max
                ),
                1,
            ));
        }
        Ok(guard)
    }

    pub fn current(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(60, start);
        for _ in 0..60 {
            bucket.take(start).unwrap();
        }
        let wait = bucket.take(start).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900));
        bucket.take(start + Duration::from_millis(1000)).unwrap();
        assert!(bucket.take(start + Duration::from_millis(1000)).is_err());
    }

    #[test]
    fn in_flight_refuses_past_its_cap_and_frees_on_drop() {
        let inflight = InFlight::new(2);
        let a = inflight.enter().unwrap();
        let _b = inflight.enter().unwrap();
        let refused = inflight.enter().err().unwrap();
        assert_eq!(refused.retry_after, Some(1));
        drop(a);
        assert!(inflight.enter().is_ok());
        assert_eq!(inflight.current(), 1);
    }
}
