//! A warm pool: sandboxes created ahead of demand, each handed out once.
//!
//! The pool keeps `min_ready` sessions ready; after a request drains it,
//! a background thread refills up to `max_ready`, and when no request came
//! for `idle_shrink_after` it closes the extras down to `min_ready`. A
//! session taken from the pool belongs to the caller: closing or dropping
//! it destroys the sandbox — nothing is ever returned to the pool, so no
//! sandbox sees user code twice. Ready sessions older than `max_ready_age`
//! are replaced, and dead ones (their zygote died, say) are thrown away.

use crate::{Backend, BackendError, Session, SessionOptions};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How big the pool is and how it breathes.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Sessions kept ready even when idle.
    pub min_ready: usize,
    /// Sessions kept ready while requests keep coming.
    pub max_ready: usize,
    /// Back to `min_ready` after this long without a request.
    pub idle_shrink_after: Duration,
    /// A ready session older than this is replaced.
    pub max_ready_age: Duration,
    /// Threads creating sessions at once: a zygote forks one at a time, but
    /// what follows each fork (joining the cgroup, sealing, the runner's
    /// start) overlaps with the next. Two: `kiln bench --quick --no-docker
    /// --iterations 30` on 2 CPUs, three runs each, gave W4 W1 129-141/s
    /// with 2 and 125-137/s with 4, and W1 p50 1.24-1.62 ms with 2 against
    /// 1.63-2.64 ms with 4 (each take wakes every idle worker, and they
    /// compete with the execution being measured).
    pub refill_workers: usize,
    /// Code kiln itself runs once in every new sandbox before it is ready
    /// (not user code: its output is discarded). A first execution in a
    /// fresh fork pays for the pages it touches (copy-on-write); paying it
    /// ahead makes the user's first execution as fast as a later one.
    pub warm_up: Option<String>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_ready: 2,
            max_ready: 8,
            idle_shrink_after: Duration::from_secs(60),
            max_ready_age: Duration::from_secs(600),
            refill_workers: 2,
            warm_up: Some(WARM_UP.to_string()),
        }
    }
}

/// kiln's default warm-up: the execution path itself, no user code.
/// `print(end="")` goes through `print`, `sys.stdout` and the runner's stream
/// sink but queues no text, so it does not start the runner's flusher thread:
/// a request's first real output pays for that thread (~0.2 ms), and every
/// idle sandbox is spared its pages. `kiln bench --quick` (release, n = 5,
/// three runs each): with `print()` idle USS 4.18-4.19 MiB, W1 p50
/// 1.6-1.9 ms; with `pass` 3.95-4.08 MiB, 1.5-2.05 ms (2.13 ms in a full
/// run); with `print(end="")` 3.98-4.16 MiB, 1.74-1.80 ms.
pub const WARM_UP: &str = "print(end=\"\")";

/// Counts for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub ready: usize,
    pub in_use: usize,
    pub creating: usize,
    /// Sessions created since start.
    pub created: u64,
    /// Sessions handed out since start (each exactly once).
    pub handed_out: u64,
    /// Sessions the pool could not create.
    pub failed: u64,
    /// Why the last creation failed, if it did.
    pub last_error: Option<String>,
}

/// A warm pool over one backend and one set of session options.
pub struct Pool {
    inner: Arc<Inner>,
    refill: Vec<std::thread::JoinHandle<()>>,
    teardown: Option<std::thread::JoinHandle<()>>,
}

struct Inner {
    backend: Arc<dyn Backend + Send + Sync>,
    options: SessionOptions,
    config: PoolConfig,
    state: Mutex<State>,
    wake: Condvar,
    /// Used sessions go here to be destroyed off the caller's path; `None`
    /// once the pool shut down (then they are closed in place).
    retire: Mutex<Option<std::sync::mpsc::Sender<Box<dyn Session>>>>,
}

struct State {
    ready: VecDeque<(Box<dyn Session>, Instant)>,
    stats: PoolStats,
    last_demand: Option<Instant>,
    shutdown: bool,
}

impl Pool {
    /// Starts the pool and its refill thread; the first sessions are being
    /// created when this returns.
    pub fn start(
        backend: Arc<dyn Backend + Send + Sync>,
        options: SessionOptions,
        config: PoolConfig,
    ) -> Self {
        let inner = Arc::new(Inner {
            backend,
            options,
            config,
            state: Mutex::new(State {
                ready: VecDeque::new(),
                stats: PoolStats::default(),
                last_demand: None,
                shutdown: false,
            }),
            wake: Condvar::new(),
            retire: Mutex::new(None),
        });
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn Session>>();
        *inner.retire.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        // Teardown (kill, wait until the cgroup is empty, remove it) takes
        // milliseconds the caller need not wait for: it has its result.
        let teardown = std::thread::Builder::new()
            .name("kiln-pool-teardown".into())
            .spawn(move || rx.into_iter().for_each(|session| session.close()))
            .expect("spawn the pool's teardown thread");
        let refill = (0..inner.config.refill_workers.max(1))
            .map(|i| {
                let worker = inner.clone();
                std::thread::Builder::new()
                    .name(format!("kiln-pool-{i}"))
                    .spawn(move || worker.refill_loop())
                    .expect("spawn the pool's refill thread")
            })
            .collect();
        Self {
            inner,
            refill,
            teardown: Some(teardown),
        }
    }

    /// How big the pool is and how it breathes.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// The options every pooled session was made with.
    pub fn options(&self) -> &SessionOptions {
        &self.inner.options
    }

    /// A ready, never-used session; made on the spot when none is ready.
    pub fn take(&self) -> Result<Box<dyn Session>, BackendError> {
        let mut state = self.inner.lock();
        state.last_demand = Some(Instant::now());
        while let Some((session, _)) = state.ready.pop_front() {
            if session.is_alive() {
                state.stats.handed_out += 1;
                state.stats.in_use += 1;
                drop(state);
                self.inner.wake.notify_all();
                return Ok(self.hand_out(session));
            }
            // Dead while it waited: throw it away (it cleans up on close).
            drop(state);
            session.close();
            state = self.inner.lock();
        }
        drop(state);
        self.inner.wake.notify_all();
        let session = self.inner.backend.create_session(&self.inner.options)?;
        let mut state = self.inner.lock();
        state.stats.created += 1;
        state.stats.handed_out += 1;
        state.stats.in_use += 1;
        drop(state);
        Ok(self.hand_out(session))
    }

    fn hand_out(&self, session: Box<dyn Session>) -> Box<dyn Session> {
        Box::new(PooledSession {
            session: Some(session),
            inner: self.inner.clone(),
        })
    }

    pub fn stats(&self) -> PoolStats {
        let state = self.inner.lock();
        PoolStats {
            ready: state.ready.len(),
            ..state.stats.clone()
        }
    }

    /// Stops refilling and closes every ready session.
    pub fn shutdown(&mut self) {
        self.inner.lock().shutdown = true;
        self.inner.wake.notify_all();
        for thread in self.refill.drain(..) {
            let _ = thread.join();
        }
        let ready: Vec<_> = self.inner.lock().ready.drain(..).collect();
        for (session, _) in ready {
            session.close();
        }
        // Every used session handed over so far is destroyed before this
        // returns: nothing outlives the pool.
        drop(
            self.inner
                .retire
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        if let Some(thread) = self.teardown.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many should be ready now: all the way up while there is demand,
    /// `min_ready` once idle.
    fn target(&self, state: &State, now: Instant) -> usize {
        let busy = state
            .last_demand
            .is_some_and(|t| now.duration_since(t) < self.config.idle_shrink_after);
        if busy {
            self.config.max_ready.max(self.config.min_ready)
        } else {
            self.config.min_ready
        }
    }

    fn refill_loop(&self) {
        let mut failures = 0u32;
        loop {
            let mut state = self.lock();
            if state.shutdown {
                return;
            }
            let now = Instant::now();
            let target = self.target(&state, now);
            let mut retire = Vec::new();
            // Too old, or more than needed once idle: close (outside the lock).
            while let Some((_, made)) = state.ready.front() {
                if now.duration_since(*made) > self.config.max_ready_age {
                    retire.push(state.ready.pop_front().expect("front exists").0);
                } else {
                    break;
                }
            }
            while state.ready.len() > target {
                retire.push(state.ready.pop_back().expect("len > target").0);
            }
            let want = target.saturating_sub(state.ready.len() + state.stats.creating);
            if retire.is_empty() && want == 0 {
                let (s, _) = self
                    .wake
                    .wait_timeout(state, Duration::from_millis(200))
                    .unwrap_or_else(|p| p.into_inner());
                drop(s);
                continue;
            }
            if want > 0 {
                state.stats.creating += 1;
            }
            drop(state);
            for session in retire {
                session.close();
            }
            if want == 0 {
                continue;
            }
            let made = self
                .backend
                .create_session(&self.options)
                .and_then(|s| self.warm(s));
            let mut state = self.lock();
            state.stats.creating -= 1;
            match made {
                Ok(session) => {
                    failures = 0;
                    state.stats.created += 1;
                    if state.shutdown {
                        drop(state);
                        session.close();
                        return;
                    }
                    state.ready.push_back((session, Instant::now()));
                }
                Err(e) => {
                    state.stats.failed += 1;
                    state.stats.last_error = Some(e.to_string());
                    failures += 1;
                    drop(state);
                    // Back off while the backend cannot make sandboxes.
                    std::thread::sleep(Duration::from_millis(50u64 << failures.min(6)));
                }
            }
        }
    }
}

impl Inner {
    /// Runs the warm-up code in a new session; a sandbox it breaks is not kept.
    fn warm(&self, mut session: Box<dyn Session>) -> Result<Box<dyn Session>, BackendError> {
        let Some(code) = &self.config.warm_up else {
            return Ok(session);
        };
        let request = crate::ExecRequest {
            code: code.clone(),
            files: Vec::new(),
        };
        let result = session.execute(&request, &mut |_| {});
        if result.outcome == crate::Outcome::Ok && session.is_alive() {
            Ok(session)
        } else {
            session.close();
            Err(BackendError::Startup(format!(
                "the pool's warm-up ended {}: {}",
                result.outcome.as_str(),
                result.reason.unwrap_or_default()
            )))
        }
    }
}

/// A session out of the pool: the caller's alone; closing or dropping it
/// destroys the sandbox and updates the pool's counts.
struct PooledSession {
    session: Option<Box<dyn Session>>,
    inner: Arc<Inner>,
}

impl PooledSession {
    fn inner(&self) -> &dyn Session {
        self.session.as_deref().expect("present until closed")
    }

    fn inner_mut(&mut self) -> &mut dyn Session {
        self.session.as_deref_mut().expect("present until closed")
    }
}

impl Session for PooledSession {
    fn id(&self) -> &str {
        self.inner().id()
    }

    fn execute(
        &mut self,
        request: &crate::ExecRequest,
        on_event: &mut dyn FnMut(&crate::Event),
    ) -> crate::ExecutionResult {
        self.inner_mut().execute(request, on_event)
    }

    fn interrupter(&self) -> Arc<dyn crate::Interrupt> {
        self.inner().interrupter()
    }

    fn is_alive(&self) -> bool {
        self.inner().is_alive()
    }

    fn startup_steps(&self) -> Vec<(String, std::time::Duration)> {
        self.inner().startup_steps()
    }

    fn write_file(&mut self, path: &str, data: &[u8]) -> Result<(), crate::FileError> {
        self.inner_mut().write_file(path, data)
    }

    fn read_file(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, crate::FileError> {
        self.inner_mut().read_file(path, max_bytes)
    }

    fn list_files(
        &mut self,
        dir: &str,
    ) -> Result<Vec<crate::service::FileEntry>, crate::FileError> {
        self.inner_mut().list_files(dir)
    }

    fn close(mut self: Box<Self>) {
        if let Some(session) = self.session.take() {
            self.inner.retire(session);
        }
    }
}

impl Drop for PooledSession {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.inner.retire(session);
        }
        let mut state = self.inner.lock();
        state.stats.in_use = state.stats.in_use.saturating_sub(1);
    }
}

impl Inner {
    /// Hands a used session to the teardown thread (or closes it here when
    /// the pool is shutting down).
    fn retire(&self, session: Box<dyn Session>) {
        let sender = self
            .retire
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match sender {
            Some(tx) => {
                if let Err(std::sync::mpsc::SendError(session)) = tx.send(session) {
                    session.close();
                }
            }
            None => session.close(),
        }
    }
}

#[cfg(test)]
mod tests;
