//! [`Service`]: the one place a [`Command`] is carried out, whatever
//! transport it came by.
//!
//! Sessions belong to the key that made them: to every other key they do
//! not exist (`not_found`, never `forbidden`). Each key has quotas from
//! `[server.keys]`: sessions held at once and executions in flight at once.
//! Limits are resolved by policy; above a ceiling the command is
//! `rejected` with the policy's own words.

use super::cancel::{Cancel, Stop};
use super::{Command, ErrorKind, PoolInfo, Reply, SessionRequest, SessionView};
use crate::{
    check_request, Backend, BackendError, Event, ExecRequest, Expiry, FileError, Interrupt, Pool,
    PoolConfig, SessionError, SessionInfo, SessionManager, SessionOptions, FILE_MAX_BYTES,
};
use base64::Engine;
use kiln_check::{Gate, WheelhouseTree};
use kiln_policy::{Config, LimitRequest, Limits};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The options of a one-shot sandbox in `gate`'s environment: what the
/// service asks a pool or the backend for, so a warm pool made with
/// [`pool_options`] serves exactly the requests it should.
fn oneshot_options(gate: &Gate, limits: Limits, library_tree: Option<String>) -> SessionOptions {
    SessionOptions {
        limits,
        deny_imports: gate.deny_imports(),
        egress: gate.egress(),
        library_tree,
        ..SessionOptions::default()
    }
}

/// The warm pool's options: one-shot sandboxes of the default environment
/// at the default limits, equal to what [`Service`] asks for such a request.
pub fn pool_options(config: &Config) -> SessionOptions {
    // Config::validate (and the built-in default) guarantee the environment.
    let gate = Gate::new(config, None).expect("a valid config has its default environment");
    oneshot_options(&gate, config.limits.clone(), None)
}

/// The most pools for non-default sandbox options (library trees).
pub const MAX_EXTRA_POOLS: usize = 4;

/// What the service says about itself beyond the policy.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// Development mode: a key id not in `[server.keys]` gets the default
    /// quotas instead of being refused.
    pub dev: bool,
    /// How sandboxes are made (`zygote`, `fresh`), for `Stats`.
    pub spawner: String,
    /// What the runtime has installed (normalised distribution name →
    /// version): an allowed library asked for by `libraries=[...]` must be
    /// among them or in its environment's wheelhouse tree.
    pub preinstalled: BTreeMap<String, String>,
    /// Each environment's wheelhouse tree, built at start.
    pub wheelhouse: BTreeMap<String, WheelhouseTree>,
}

/// The sandbox supervisor's business logic, shared by every connection.
pub struct Service {
    backend: Arc<dyn Backend + Send + Sync>,
    manager: Arc<SessionManager>,
    pool: RwLock<Option<Pool>>,
    /// Pools for other sandbox options — an environment's library tree —
    /// started on first demand, at most [`MAX_EXTRA_POOLS`].
    extra_pools: Mutex<Vec<Pool>>,
    config: Config,
    options: ServiceOptions,
    state: Mutex<State>,
    draining: AtomicBool,
}

/// Who owns what, and what runs; never locked across an execution.
#[derive(Default)]
struct State {
    owned: HashMap<String, Owned>,
    /// Sessions of a key being created right now (they count for its quota).
    creating: HashMap<String, usize>,
    /// Executions in flight per key.
    running: HashMap<String, usize>,
    /// One-shot executions in flight, killed at shutdown.
    oneshots: HashMap<u64, Arc<dyn Interrupt>>,
    next_oneshot: u64,
}

struct Owned {
    key: String,
    limits: Limits,
    /// The policy environment it was made in: every execution is checked
    /// against it.
    environment: String,
    busy: bool,
}

/// A key's quotas.
struct Quota {
    max_sessions: usize,
    max_concurrency: usize,
}

/// A command refused or failed: becomes [`Reply::Error`].
#[derive(Debug)]
struct Refusal {
    kind: ErrorKind,
    message: String,
}

/// The final reply, or why there is none but an error.
type Answer = Result<Reply, Refusal>;

fn fail(kind: ErrorKind, message: impl Into<String>) -> Refusal {
    Refusal {
        kind,
        message: message.into(),
    }
}

fn not_found(session: &str) -> Refusal {
    fail(
        ErrorKind::NotFound,
        format!("no session `{session}` (it may have been closed, expired or ended)"),
    )
}

fn rejected(message: String) -> Refusal {
    fail(ErrorKind::Rejected, message)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Service {
    pub fn new(
        backend: Arc<dyn Backend + Send + Sync>,
        manager: Arc<SessionManager>,
        pool: Option<Pool>,
        config: Config,
        options: ServiceOptions,
    ) -> Self {
        Self {
            backend,
            manager,
            pool: RwLock::new(pool),
            extra_pools: Mutex::new(Vec::new()),
            config,
            options,
            state: Mutex::new(State::default()),
            draining: AtomicBool::new(false),
        }
    }

    /// Carries out `cmd`: events as they happen, then exactly one final reply.
    pub fn handle(&self, cmd: Command, emit: &mut dyn FnMut(Reply)) {
        self.handle_with(cmd, &Cancel::new(), emit);
    }

    /// As [`handle`](Self::handle); firing `cancel` stops the execution
    /// (a session's is interrupted, a one-shot sandbox is killed).
    pub fn handle_with(&self, cmd: Command, cancel: &Cancel, emit: &mut dyn FnMut(Reply)) {
        let last = match self.dispatch(cmd, cancel, emit) {
            Ok(reply) => reply,
            Err(Refusal { kind, message }) => Reply::Error { kind, message },
        };
        debug_assert!(last.is_final());
        emit(last);
    }

    fn dispatch(&self, cmd: Command, cancel: &Cancel, emit: &mut dyn FnMut(Reply)) -> Answer {
        use Command::*;
        match cmd {
            Execute {
                key,
                request,
                limits,
                environment,
                libraries,
            } => {
                let asked = (environment.as_deref(), libraries.as_slice());
                self.execute(&key, &request, &limits, asked, cancel, emit)
            }
            CreateSession { key, options } => self.create(&key, &options),
            SessionExecute {
                key,
                session,
                request,
            } => self.session_execute(&key, &session, &request, cancel, emit),
            Interrupt { key, session } => {
                self.owner_check(&key, &session)?;
                self.manager
                    .interrupt(&session)
                    .map_err(|e| self.lost(&session, e))?;
                Ok(Reply::Ok)
            }
            CloseSession { key, session } => {
                self.owner_check(&key, &session)?;
                lock(&self.state).owned.remove(&session);
                self.manager
                    .close(&session)
                    .map_err(|_| not_found(&session))?;
                Ok(Reply::Ok)
            }
            GetSession { key, session } => {
                self.owner_check(&key, &session)?;
                self.view(&session)
                    .map(|session| Reply::Session { session })
            }
            Keepalive { key, session } => {
                self.owner_check(&key, &session)?;
                let info = self
                    .manager
                    .keepalive(&session)
                    .map_err(|e| self.lost(&session, e))?;
                Ok(Reply::Session {
                    session: view(&info, Instant::now()),
                })
            }
            ListSessions { key } => Ok(Reply::Sessions {
                sessions: self.list(&key),
            }),
            WriteFile {
                key,
                session,
                path,
                data_b64,
            } => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(data_b64.as_bytes())
                    .map_err(|e| fail(ErrorKind::BadRequest, format!("data_b64: {e}")))?;
                self.on_files(&key, &session, |s| s.write_file(&path, &data))?;
                Ok(Reply::Ok)
            }
            ReadFile { key, session, path } => {
                let data = self.on_files(&key, &session, |s| s.read_file(&path, FILE_MAX_BYTES))?;
                Ok(Reply::File {
                    path,
                    size: data.len() as u64,
                    data_b64: base64::engine::general_purpose::STANDARD.encode(data),
                })
            }
            ListFiles { key, session, path } => {
                let entries = self.on_files(&key, &session, |s| s.list_files(&path))?;
                Ok(Reply::Files { path, entries })
            }
            Policy => Ok(Reply::Policy {
                policy: self.policy(),
            }),
            Stats => Ok(self.stats()),
            Shutdown => {
                self.shutdown();
                Ok(Reply::Ok)
            }
        }
    }

    /// A one-shot execution: a pooled sandbox when the limits are the
    /// pool's, else a fresh one; destroyed afterwards either way.
    fn execute(
        &self,
        key: &str,
        request: &ExecRequest,
        limits: &LimitRequest,
        (environment, libraries): (Option<&str>, &[String]),
        cancel: &Cancel,
        emit: &mut dyn FnMut(Reply),
    ) -> Answer {
        let quota = self.quota(key)?;
        let limits = self.resolve(limits)?;
        if let Some(why) = check_request(request, &limits) {
            return Err(fail(ErrorKind::Rejected, why));
        }
        let (gate, library_tree) = self.gate(environment, libraries)?;
        gate.code(&request.code).map_err(rejected)?;
        let _running = self.start_running(key, &quota)?;
        self.refuse_when_draining()?;
        let options = oneshot_options(&gate, limits, library_tree);
        let session = self.take_sandbox(&options).map_err(backend_failure)?;
        let interrupter = session.interrupter();
        let id = self.register_oneshot(interrupter.clone());
        cancel.arm(Arc::new(move || {
            interrupter.kill();
            true
        }));
        let mut session = session;
        let mut result = session.execute(request, &mut |e| emit(event(e)));
        cancel.disarm();
        lock(&self.state).oneshots.remove(&id);
        session.close();
        result.session_ended = false;
        Ok(Reply::Result { result })
    }

    /// A pooled sandbox when a pool's were made with these very options
    /// (limits, import policy, library tree), else a fresh one. The pool is
    /// keyed by the options: a library tree gets a pool of its own on first
    /// demand (the first request makes its sandbox fresh meanwhile).
    fn take_sandbox(
        &self,
        options: &SessionOptions,
    ) -> Result<Box<dyn crate::Session>, BackendError> {
        let pool = self.pool.read().unwrap_or_else(PoisonError::into_inner);
        let Some(default) = pool.as_ref() else {
            return self.backend.create_session(options);
        };
        if default.options() == options {
            return default.take();
        }
        if options.library_tree.is_none() {
            return self.backend.create_session(options);
        }
        let mut extra = lock(&self.extra_pools);
        match extra.iter().find(|p| p.options() == options) {
            // Only a ready one under the lock: making one is not quick.
            Some(p) if p.stats().ready > 0 => return p.take(),
            Some(_) => {}
            None if extra.len() < MAX_EXTRA_POOLS => {
                let sizes = PoolConfig {
                    min_ready: 1,
                    max_ready: default.config().max_ready.clamp(1, 2),
                    ..default.config().clone()
                };
                extra.push(Pool::start(self.backend.clone(), options.clone(), sizes));
            }
            None => {}
        }
        drop(extra);
        self.backend.create_session(options)
    }

    /// The policy environment of a request and the libraries it asks for:
    /// unknown environments and libraries that are not allowed are
    /// `rejected` with the allowed list; an allowed one must be installed.
    /// Also the library tree the sandbox needs, if any.
    fn gate(
        &self,
        environment: Option<&str>,
        libraries: &[String],
    ) -> Result<(Gate<'_>, Option<String>), Refusal> {
        let gate = Gate::new(&self.config, environment).map_err(rejected)?;
        let tree = gate
            .libraries(
                libraries,
                &self.options.preinstalled,
                self.options.wheelhouse.get(gate.name),
            )
            .map_err(rejected)?;
        Ok((gate, tree))
    }

    fn register_oneshot(&self, interrupter: Arc<dyn Interrupt>) -> u64 {
        let mut state = lock(&self.state);
        state.next_oneshot += 1;
        let id = state.next_oneshot;
        state.oneshots.insert(id, interrupter);
        id
    }

    fn create(&self, key: &str, request: &SessionRequest) -> Answer {
        let quota = self.quota(key)?;
        let limits = self.resolve(&request.limits)?;
        let (idle, lifetime) = self
            .config
            .sessions
            .resolve(request.idle_timeout_s, request.max_lifetime_s)
            .map_err(|e| fail(ErrorKind::Rejected, e.to_string()))?;
        let (gate, library_tree) = self.gate(request.environment.as_deref(), &request.libraries)?;
        self.refuse_when_draining()?;
        let options = SessionOptions {
            limits: limits.clone(),
            env: request.env.clone(),
            files: request.files.clone(),
            datasets: request.datasets.clone(),
            deny_imports: gate.deny_imports(),
            egress: gate.egress(),
            library_tree,
            idle_timeout: Duration::from_secs(idle),
            max_lifetime: Duration::from_secs(lifetime),
        };
        let environment = gate.name.to_string();
        self.reserve_session(key, &quota)?;
        let made = self.manager.create(&options);
        let mut state = lock(&self.state);
        if let Some(n) = state.creating.get_mut(key) {
            *n -= 1;
        }
        let id = made.map_err(session_failure)?;
        state.owned.insert(
            id.clone(),
            Owned {
                key: key.to_string(),
                limits,
                environment,
                busy: false,
            },
        );
        drop(state);
        self.view(&id).map(|session| Reply::Session { session })
    }

    fn reserve_session(&self, key: &str, quota: &Quota) -> Result<(), Refusal> {
        let mut state = lock(&self.state);
        let held = state.owned.values().filter(|o| o.key == key).count();
        let creating = state.creating.entry(key.to_string()).or_default();
        if held + *creating >= quota.max_sessions {
            return Err(fail(
                ErrorKind::TooMany,
                format!(
                    "key `{key}` holds {} sessions, its quota; close one first",
                    quota.max_sessions
                ),
            ));
        }
        *creating += 1;
        Ok(())
    }

    fn session_execute(
        &self,
        key: &str,
        session: &str,
        request: &ExecRequest,
        cancel: &Cancel,
        emit: &mut dyn FnMut(Reply),
    ) -> Answer {
        let quota = self.quota(key)?;
        let (limits, environment) = self.owned(key, session)?;
        if let Some(why) = check_request(request, &limits) {
            return Err(fail(ErrorKind::Rejected, why));
        }
        Gate::new(&self.config, Some(&environment))
            .and_then(|gate| gate.code(&request.code))
            .map_err(rejected)?;
        let _running = self.start_running(key, &quota)?;
        self.refuse_when_draining()?;
        self.mark_busy(session)?;
        let (manager, id) = (self.manager.clone(), session.to_string());
        let stop: Stop = Arc::new(move || matches!(manager.interrupt(&id), Ok(true)));
        cancel.arm(stop);
        let result = self
            .manager
            .execute(session, request, &mut |e| emit(event(e)));
        cancel.disarm();
        let mut state = lock(&self.state);
        match result {
            Ok(result) => {
                if result.session_ended {
                    state.owned.remove(session);
                } else if let Some(owned) = state.owned.get_mut(session) {
                    owned.busy = false;
                }
                Ok(Reply::Result { result })
            }
            Err(e) => {
                state.owned.remove(session);
                drop(state);
                Err(session_failure(e))
            }
        }
    }

    /// A file operation on `key`'s session between executions.
    fn on_files<T>(
        &self,
        key: &str,
        session: &str,
        op: impl FnOnce(&mut dyn crate::Session) -> Result<T, FileError>,
    ) -> Result<T, Refusal> {
        self.owner_check(key, session)?;
        let busy = || {
            fail(
                ErrorKind::Busy,
                format!(
                    "session `{session}` is running an execution; try again when it has finished"
                ),
            )
        };
        let done = self
            .manager
            .with_idle(session, op)
            .map_err(|e| self.lost(session, e))?;
        match done {
            None | Some(Err(FileError::Busy)) => Err(busy()),
            Some(Err(FileError::SessionEnded(why))) => {
                lock(&self.state).owned.remove(session);
                Err(fail(
                    ErrorKind::NotFound,
                    format!("session `{session}` has ended: {why}"),
                ))
            }
            Some(Err(e)) => Err(file_failure(e)),
            Some(Ok(out)) => Ok(out),
        }
    }

    fn mark_busy(&self, session: &str) -> Result<(), Refusal> {
        let mut state = lock(&self.state);
        let owned = state
            .owned
            .get_mut(session)
            .ok_or_else(|| not_found(session))?;
        if owned.busy {
            return Err(fail(
                ErrorKind::Busy,
                format!(
                    "session `{session}` is running another execution; wait for it or interrupt it"
                ),
            ));
        }
        owned.busy = true;
        Ok(())
    }

    /// The session's limits if `key` owns it; `not_found` otherwise.
    fn owner_check(&self, key: &str, session: &str) -> Result<Limits, Refusal> {
        self.owned(key, session).map(|(limits, _)| limits)
    }

    /// The limits and environment of `key`'s session.
    fn owned(&self, key: &str, session: &str) -> Result<(Limits, String), Refusal> {
        match lock(&self.state).owned.get(session) {
            Some(owned) if owned.key == key => {
                Ok((owned.limits.clone(), owned.environment.clone()))
            }
            _ => Err(not_found(session)),
        }
    }

    /// A manager error for a session we thought alive: it is gone.
    fn lost(&self, session: &str, e: SessionError) -> Refusal {
        if matches!(e, SessionError::NotFound(_)) {
            lock(&self.state).owned.remove(session);
        }
        session_failure(e)
    }

    fn view(&self, session: &str) -> Result<SessionView, Refusal> {
        let info = self.manager.list().into_iter().find(|i| i.id == session);
        match info {
            Some(info) => Ok(view(&info, Instant::now())),
            None => Err(self.lost(session, SessionError::NotFound(session.to_string()))),
        }
    }

    fn list(&self, key: &str) -> Vec<SessionView> {
        let now = Instant::now();
        let infos = self.manager.list();
        let mut state = lock(&self.state);
        // Forget sessions the manager no longer has (ended meanwhile).
        state
            .owned
            .retain(|id, _| infos.iter().any(|info| &info.id == id));
        infos
            .iter()
            .filter(|info| state.owned.get(&info.id).is_some_and(|o| o.key == key))
            .map(|info| view(info, now))
            .collect()
    }

    fn quota(&self, key: &str) -> Result<Quota, Refusal> {
        match self.config.server.keys.iter().find(|k| k.id == key) {
            Some(k) => Ok(Quota {
                max_sessions: k.max_sessions,
                max_concurrency: k.max_concurrency,
            }),
            None if self.options.dev => Ok(Quota {
                max_sessions: 8,
                max_concurrency: 4,
            }),
            None => Err(fail(
                ErrorKind::BadRequest,
                format!("unknown key id `{key}`; keys are listed in [server.keys]"),
            )),
        }
    }

    fn resolve(&self, request: &LimitRequest) -> Result<Limits, Refusal> {
        self.config
            .resolve(request)
            .map_err(|e| fail(ErrorKind::Rejected, e.to_string()))
    }

    /// Counts an execution of `key` in flight for as long as the guard lives.
    fn start_running(&self, key: &str, quota: &Quota) -> Result<Running<'_>, Refusal> {
        let mut state = lock(&self.state);
        let running = state.running.entry(key.to_string()).or_default();
        if *running >= quota.max_concurrency {
            return Err(fail(
                ErrorKind::TooMany,
                format!(
                    "key `{key}` runs {} executions at once, its quota; retry when one ends",
                    quota.max_concurrency
                ),
            ));
        }
        *running += 1;
        Ok(Running {
            service: self,
            key: key.to_string(),
        })
    }

    fn refuse_when_draining(&self) -> Result<(), Refusal> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(fail(
                ErrorKind::Unavailable,
                "kiln is shutting down; retry on another instance",
            ));
        }
        Ok(())
    }

    fn policy(&self) -> serde_json::Value {
        let c = &self.config;
        let environments: Vec<_> = c
            .environments
            .iter()
            .map(|(name, env)| {
                serde_json::json!({
                    "name": name,
                    "description": env.description,
                    "runtime": env.runtime,
                    "backend": self.backend.name(),
                    "libraries": env.allowed_list(),
                    "deny_modules": env.deny_modules,
                    "datasets": c.sandbox.datasets.keys().collect::<Vec<_>>(),
                    "limits": c.limits,
                    "ceilings": c.ceilings,
                })
            })
            .collect();
        let default = c
            .environment(None)
            .map(|e| e.allowed_list())
            .unwrap_or_default();
        serde_json::json!({
            "backend": self.backend.name(),
            "environment": kiln_policy::DEFAULT_ENVIRONMENT,
            "libraries": default,
            "environments": environments,
            "limits": c.limits,
            "ceilings": c.ceilings,
            "sessions": c.sessions,
            "datasets": c.sandbox.datasets.keys().collect::<Vec<_>>(),
        })
    }

    fn stats(&self) -> Reply {
        let pool = self.pool.read().unwrap_or_else(PoisonError::into_inner);
        let extra = lock(&self.extra_pools);
        // Every pool together: the default one and those of library trees.
        let pool = pool.as_ref().map(|p| {
            let mut info = PoolInfo::default();
            for s in std::iter::once(p).chain(extra.iter()).map(Pool::stats) {
                info.ready += s.ready;
                info.in_use += s.in_use;
                info.creating += s.creating;
                info.created += s.created;
                info.handed_out += s.handed_out;
                info.failed += s.failed;
            }
            info
        });
        Reply::Stats {
            sessions: self.manager.len(),
            pool,
            spawner: self.options.spawner.clone(),
        }
    }

    /// Closes sessions idle or older than allowed at `now` (call it every
    /// second or so); returns which, and why.
    pub fn reap(&self, now: Instant) -> Vec<(String, Expiry)> {
        let reaped = self.manager.reap_expired(now);
        let mut state = lock(&self.state);
        for (id, _) in &reaped {
            state.owned.remove(id);
        }
        reaped
    }

    /// Graceful shutdown, last step: refuses new work, kills one-shot
    /// executions still running, closes every session (a running execution
    /// ends `killed`) and the pool. Idempotent.
    pub fn shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let oneshots: Vec<_> = lock(&self.state).oneshots.values().cloned().collect();
        for interrupter in oneshots {
            interrupter.kill();
        }
        self.manager.close_all();
        lock(&self.state).owned.clear();
        if let Some(mut pool) = self
            .pool
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            pool.shutdown();
        }
        for mut pool in lock(&self.extra_pools).drain(..) {
            pool.shutdown();
        }
    }

    /// Executions in flight, all keys together.
    pub fn running(&self) -> usize {
        lock(&self.state).running.values().sum()
    }
}

/// One execution of a key in flight.
struct Running<'a> {
    service: &'a Service,
    key: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.service.state);
        if let Some(n) = state.running.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                state.running.remove(&self.key);
            }
        }
    }
}

fn event(e: &Event) -> Reply {
    Reply::Event { event: e.clone() }
}

fn view(info: &SessionInfo, now: Instant) -> SessionView {
    SessionView {
        id: info.id.clone(),
        executing: info.executing,
        executions: info.executions,
        idle_for_s: now.saturating_duration_since(info.last_used).as_secs_f64(),
        age_s: now.saturating_duration_since(info.created).as_secs_f64(),
        idle_timeout_s: info.idle_timeout.as_secs(),
        max_lifetime_s: info.max_lifetime.as_secs(),
    }
}

fn backend_failure(e: BackendError) -> Refusal {
    match e {
        BackendError::InvalidOptions(e) => fail(ErrorKind::Rejected, e.to_string()),
        BackendError::Protocol(_) => fail(ErrorKind::Internal, e.to_string()),
        e => fail(ErrorKind::Unavailable, e.to_string()),
    }
}

fn file_failure(e: FileError) -> Refusal {
    let kind = match e {
        FileError::NotFound(_) => ErrorKind::NotFound,
        FileError::NotRegular(_) | FileError::TooLarge { .. } | FileError::Refused { .. } => {
            ErrorKind::BadRequest
        }
        FileError::Busy => ErrorKind::Busy,
        FileError::SessionEnded(_) => ErrorKind::NotFound,
        FileError::Io(_) => ErrorKind::Internal,
    };
    fail(kind, e.to_string())
}

fn session_failure(e: SessionError) -> Refusal {
    match e {
        SessionError::NotFound(id) => not_found(&id),
        SessionError::TooMany { .. } => fail(ErrorKind::TooMany, e.to_string()),
        SessionError::Options(e) => fail(ErrorKind::Rejected, e.to_string()),
        SessionError::Backend(e) => backend_failure(e),
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
