//! The pool against a fake backend: creation counted, timing controlled.

use super::*;
use crate::{Event, ExecRequest, ExecutionResult, Interrupt, Outcome};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
struct FakeBackend {
    made: AtomicU64,
    fail: AtomicBool,
    closed: Arc<AtomicU64>,
}

struct FakeSession {
    id: String,
    used: bool,
    alive: Arc<AtomicBool>,
    closed: Option<Arc<AtomicU64>>,
}

struct NoInterrupt;
impl Interrupt for NoInterrupt {
    fn interrupt(&self) {}
    fn kill(&self) {}
}

impl Session for FakeSession {
    fn id(&self) -> &str {
        &self.id
    }
    fn execute(&mut self, request: &ExecRequest, _: &mut dyn FnMut(&Event)) -> ExecutionResult {
        if request.code == "# kiln warm-up" {
            assert!(!self.used, "warm-up after user code");
            return ExecutionResult::without_sandbox(Outcome::Ok, "warm");
        }
        assert!(!self.used, "a pooled sandbox ran user code twice");
        self.used = true;
        ExecutionResult::without_sandbox(Outcome::Ok, self.id.clone())
    }
    fn interrupter(&self) -> Arc<dyn Interrupt> {
        Arc::new(NoInterrupt)
    }
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
    fn close(self: Box<Self>) {
        if let Some(closed) = &self.closed {
            closed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn create_session(&self, _: &SessionOptions) -> Result<Box<dyn Session>, BackendError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(BackendError::Startup("no sandboxes today".into()));
        }
        let n = self.made.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeSession {
            id: format!("s{n}"),
            used: false,
            alive: Arc::new(AtomicBool::new(true)),
            closed: Some(self.closed.clone()),
        }))
    }
}

fn config(min: usize, max: usize, idle_ms: u64) -> PoolConfig {
    PoolConfig {
        min_ready: min,
        max_ready: max,
        idle_shrink_after: Duration::from_millis(idle_ms),
        max_ready_age: Duration::from_secs(600),
        refill_workers: 2,
        warm_up: None,
    }
}

fn wait_until(pool: &Pool, what: &str, f: impl Fn(&PoolStats) -> bool) -> PoolStats {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = pool.stats();
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn fills_to_min_when_idle() {
    let pool = Pool::start(
        Arc::new(FakeBackend::default()),
        SessionOptions::default(),
        config(2, 5, 10_000),
    );
    let s = wait_until(&pool, "min ready", |s| s.ready == 2);
    assert_eq!(s.created, 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pool.stats().ready, 2, "an idle pool stays at min_ready");
}

#[test]
fn every_sandbox_is_handed_out_once() {
    let pool = Pool::start(
        Arc::new(FakeBackend::default()),
        SessionOptions::default(),
        config(2, 4, 10_000),
    );
    wait_until(&pool, "warm", |s| s.ready == 2);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut session = pool.take().unwrap();
        assert!(
            seen.insert(session.id().to_string()),
            "{} handed out twice",
            session.id()
        );
        let r = session.execute(&ExecRequest::default(), &mut |_| {});
        assert_eq!(r.outcome, Outcome::Ok);
        session.close();
    }
    let s = pool.stats();
    assert_eq!(s.handed_out, 20);
    assert_eq!(s.in_use, 0);
}

#[test]
fn refills_after_a_burst_then_shrinks_when_idle() {
    let pool = Pool::start(
        Arc::new(FakeBackend::default()),
        SessionOptions::default(),
        config(1, 4, 300),
    );
    wait_until(&pool, "warm", |s| s.ready == 1);
    let burst: Vec<_> = (0..6).map(|_| pool.take().unwrap()).collect();
    assert_eq!(pool.stats().in_use, 6);
    // Demand seen: the pool refills up to max_ready.
    wait_until(&pool, "refilled to max", |s| s.ready == 4);
    drop(burst);
    assert_eq!(pool.stats().in_use, 0);
    // No demand for idle_shrink_after: back to min_ready.
    wait_until(&pool, "shrunk to min", |s| s.ready == 1);
}

#[test]
fn dead_ready_sessions_are_skipped() {
    let backend = Arc::new(FakeBackend::default());
    let pool = Pool::start(
        backend.clone(),
        SessionOptions::default(),
        config(1, 1, 10_000),
    );
    wait_until(&pool, "warm", |s| s.ready == 1);
    // Replace the ready one with a dead one (its zygote died, say).
    pool.inner.lock().ready.clear();
    pool.inner.lock().ready.push_back((
        Box::new(FakeSession {
            id: "dead".into(),
            used: false,
            alive: Arc::new(AtomicBool::new(false)),
            closed: None,
        }),
        Instant::now(),
    ));
    let session = pool.take().unwrap();
    assert_ne!(session.id(), "dead");
}

#[test]
fn a_failing_backend_is_reported_and_recovers() {
    let backend = Arc::new(FakeBackend::default());
    backend.fail.store(true, Ordering::SeqCst);
    let pool = Pool::start(
        backend.clone(),
        SessionOptions::default(),
        config(1, 1, 10_000),
    );
    let s = wait_until(&pool, "a failure counted", |s| s.failed >= 1);
    assert!(s.last_error.unwrap().contains("no sandboxes"));
    assert!(pool.take().is_err());
    backend.fail.store(false, Ordering::SeqCst);
    wait_until(&pool, "recovered", |s| s.ready == 1);
}

#[test]
fn shutdown_closes_ready_sessions_and_stops() {
    let backend = Arc::new(FakeBackend::default());
    let mut pool = Pool::start(
        backend.clone(),
        SessionOptions::default(),
        config(3, 3, 10_000),
    );
    wait_until(&pool, "warm", |s| s.ready == 3);
    pool.shutdown();
    assert_eq!(pool.stats().ready, 0);
    let made = backend.made.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        backend.made.load(Ordering::SeqCst),
        made,
        "no refill after shutdown"
    );
}

#[test]
fn used_sessions_are_destroyed_off_the_callers_path_and_before_shutdown_returns() {
    let backend = Arc::new(FakeBackend::default());
    let mut pool = Pool::start(
        backend.clone(),
        SessionOptions::default(),
        config(2, 2, 10_000),
    );
    wait_until(&pool, "warm", |s| s.ready == 2);
    for _ in 0..5 {
        pool.take().unwrap().close();
    }
    pool.shutdown();
    // Every session ever made is closed: used ones by the teardown thread,
    // ready ones by the shutdown itself.
    assert_eq!(
        backend.closed.load(Ordering::SeqCst),
        backend.made.load(Ordering::SeqCst)
    );
}

#[test]
fn warm_up_runs_once_before_a_sandbox_is_ready() {
    let backend = Arc::new(FakeBackend::default());
    let mut cfg = config(2, 2, 10_000);
    cfg.warm_up = Some("# kiln warm-up".into());
    let pool = Pool::start(backend.clone(), SessionOptions::default(), cfg);
    wait_until(&pool, "warm", |s| s.ready == 2);
    let mut session = pool.take().unwrap();
    // The fake panics if user code runs before the warm-up or twice.
    let r = session.execute(&ExecRequest::default(), &mut |_| {});
    assert_eq!(r.outcome, Outcome::Ok);
}
