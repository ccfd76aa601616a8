//! [`SessionManager`]: the live sessions of one process, by id, safe to
//! use from many threads. Executions of one session run one after another;
//! an interrupt or a close reaches a session while it executes.

use crate::session::{Interrupt, OptionsError, Session, SessionOptions};
use crate::{Backend, BackendError, Event, ExecRequest, ExecutionResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// Where the manager reads the time (a fake one in tests).
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Why a manager call failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no session `{0}` (it may have been closed, expired or ended)")]
    NotFound(String),
    #[error("{max} sessions are open already; close one first. Hint: raise `[sessions] max_sessions` in kiln.toml")]
    TooMany { max: usize },
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why [`SessionManager::reap_expired`] closed a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No execution for `idle_timeout`.
    Idle,
    /// Older than `max_lifetime` (killed even if it was executing).
    Lifetime,
}

/// A session as [`SessionManager::list`] shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    pub id: String,
    pub created: Instant,
    pub last_used: Instant,
    pub executing: bool,
    pub executions: u64,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
}

/// Bookkeeping of one session; never locked across an execution.
#[derive(Debug)]
struct Stamps {
    last_used: Instant,
    executing: bool,
    executions: u64,
}

/// One managed session. `session` is locked for the whole of an execution
/// (so executions run in order); everything else is reachable meanwhile.
struct Slot {
    id: String,
    created: Instant,
    idle_timeout: Duration,
    max_lifetime: Duration,
    interrupter: Arc<dyn Interrupt>,
    stamps: Mutex<Stamps>,
    session: Mutex<Option<Box<dyn Session>>>,
}

impl Slot {
    fn info(&self) -> SessionInfo {
        let s = lock(&self.stamps);
        SessionInfo {
            id: self.id.clone(),
            created: self.created,
            last_used: s.last_used,
            executing: s.executing,
            executions: s.executions,
            idle_timeout: self.idle_timeout,
            max_lifetime: self.max_lifetime,
        }
    }

    fn expiry(&self, now: Instant) -> Option<Expiry> {
        if now.saturating_duration_since(self.created) >= self.max_lifetime {
            return Some(Expiry::Lifetime);
        }
        let s = lock(&self.stamps);
        let idle = now.saturating_duration_since(s.last_used) >= self.idle_timeout;
        (idle && !s.executing).then_some(Expiry::Idle)
    }

    /// Kills a running execution, waits for it to return, closes the session.
    fn shut(&self) {
        let session = match self.session.try_lock() {
            Ok(mut idle) => idle.take(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(TryLockError::WouldBlock) => {
                self.interrupter.kill();
                lock(&self.session).take()
            }
        };
        if let Some(session) = session {
            session.close();
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it;
/// the data (stamps, an `Option` of a session) stays consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The live sessions of one process.
pub struct SessionManager {
    backend: Arc<dyn Backend + Send + Sync>,
    clock: Arc<dyn Clock>,
    max_sessions: usize,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl SessionManager {
    pub fn new(backend: Arc<dyn Backend + Send + Sync>, max_sessions: usize) -> Self {
        Self::with_clock(backend, max_sessions, Arc::new(SystemClock))
    }

    pub fn with_clock(
        backend: Arc<dyn Backend + Send + Sync>,
        max_sessions: usize,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            backend,
            clock,
            max_sessions,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Makes a session; returns its id.
    pub fn create(&self, options: &SessionOptions) -> Result<String, SessionError> {
        options.validate()?;
        if lock(&self.slots).len() >= self.max_sessions {
            return Err(SessionError::TooMany {
                max: self.max_sessions,
            });
        }
        let session = self.backend.create_session(options)?;
        let now = self.clock.now();
        let id = session.id().to_string();
        let slot = Arc::new(Slot {
            id: id.clone(),
            created: now,
            idle_timeout: options.idle_timeout,
            max_lifetime: options.max_lifetime,
            interrupter: session.interrupter(),
            stamps: Mutex::new(Stamps {
                last_used: now,
                executing: false,
                executions: 0,
            }),
            session: Mutex::new(Some(session)),
        });
        let mut slots = lock(&self.slots);
        // Creations racing past the check above: the last one loses.
        if slots.len() >= self.max_sessions {
            drop(slots);
            slot.shut();
            return Err(SessionError::TooMany {
                max: self.max_sessions,
            });
        }
        slots.insert(id.clone(), slot);
        Ok(id)
    }

    fn slot(&self, id: &str) -> Result<Arc<Slot>, SessionError> {
        lock(&self.slots)
            .get(id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(id.to_string()))
    }

    /// Runs code in session `id`, after any execution already running there.
    /// A session whose sandbox did not survive the execution is closed and
    /// forgotten (the result says `session_ended`).
    pub fn execute(
        &self,
        id: &str,
        request: &ExecRequest,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<ExecutionResult, SessionError> {
        let slot = self.slot(id)?;
        let mut guard = lock(&slot.session);
        let Some(session) = guard.as_mut() else {
            return Err(SessionError::NotFound(id.to_string()));
        };
        self.stamp(&slot, true);
        let mut result = session.execute(request, on_event);
        self.stamp(&slot, false);
        if !session.is_alive() {
            result.session_ended = true;
            if let Some(session) = guard.take() {
                session.close();
            }
            drop(guard);
            self.forget(&slot);
        }
        Ok(result)
    }

    fn stamp(&self, slot: &Slot, executing: bool) {
        let mut s = lock(&slot.stamps);
        s.executing = executing;
        s.last_used = self.clock.now();
        if !executing {
            s.executions += 1;
        }
    }

    /// Removes `slot` from the map if it is still the one stored under its id.
    fn forget(&self, slot: &Arc<Slot>) {
        let mut slots = lock(&self.slots);
        if slots.get(&slot.id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(&slot.id);
        }
    }

    /// Interrupts the execution running in session `id` (KeyboardInterrupt;
    /// killed after the grace period). Returns whether one was running.
    pub fn interrupt(&self, id: &str) -> Result<bool, SessionError> {
        let slot = self.slot(id)?;
        let executing = lock(&slot.stamps).executing;
        slot.interrupter.interrupt();
        Ok(executing)
    }

    /// Runs `op` on session `id` between executions (file operations);
    /// `Ok(None)` while it executes. Counts as use. A sandbox that did not
    /// survive `op` is closed and forgotten.
    pub fn with_idle<T>(
        &self,
        id: &str,
        op: impl FnOnce(&mut dyn Session) -> T,
    ) -> Result<Option<T>, SessionError> {
        let slot = self.slot(id)?;
        let mut guard = match slot.session.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(None),
        };
        let Some(session) = guard.as_mut() else {
            return Err(SessionError::NotFound(id.to_string()));
        };
        let out = op(session.as_mut());
        lock(&slot.stamps).last_used = self.clock.now();
        if !session.is_alive() {
            if let Some(session) = guard.take() {
                session.close();
            }
            drop(guard);
            self.forget(&slot);
        }
        Ok(Some(out))
    }

    /// Counts as use of session `id`: its idle timer starts again.
    pub fn keepalive(&self, id: &str) -> Result<SessionInfo, SessionError> {
        let slot = self.slot(id)?;
        lock(&slot.stamps).last_used = self.clock.now();
        Ok(slot.info())
    }

    /// Closes session `id`; a running execution is killed first.
    pub fn close(&self, id: &str) -> Result<(), SessionError> {
        let slot = lock(&self.slots)
            .remove(id)
            .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        slot.shut();
        Ok(())
    }

    /// The live sessions, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        let mut infos: Vec<SessionInfo> = slots.iter().map(|s| s.info()).collect();
        infos.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        infos
    }

    /// Closes every session idle past its idle timeout or older than its
    /// maximum lifetime at `now`; returns which, and why.
    pub fn reap_expired(&self, now: Instant) -> Vec<(String, Expiry)> {
        let expired: Vec<(Arc<Slot>, Expiry)> = {
            let mut slots = lock(&self.slots);
            let found: Vec<(Arc<Slot>, Expiry)> = slots
                .values()
                .filter_map(|s| s.expiry(now).map(|e| (s.clone(), e)))
                .collect();
            for (slot, _) in &found {
                slots.remove(&slot.id);
            }
            found
        };
        expired
            .into_iter()
            .map(|(slot, why)| {
                slot.shut();
                (slot.id.clone(), why)
            })
            .collect()
    }

    /// Closes every session (at shutdown).
    pub fn close_all(&self) {
        let all: Vec<Arc<Slot>> = lock(&self.slots).drain().map(|(_, s)| s).collect();
        for slot in all {
            slot.shut();
        }
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        lock(&self.slots).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for SessionManager {
    fn drop(&mut self) {
        self.close_all();
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
