//! The service against a fake backend: ownership, quotas, policy, the pool,
//! cancellation and one final reply per command.

use super::*;
use crate::{ExecutionResult, Outcome, PoolConfig, Session};
use kiln_policy::ApiKey;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::thread;

#[derive(Default)]
struct Probe {
    interrupted: AtomicBool,
    killed: AtomicBool,
    running: AtomicBool,
}

struct FakeSession {
    id: String,
    probe: Arc<Probe>,
    files: std::collections::BTreeMap<String, Vec<u8>>,
}

impl Interrupt for Probe {
    fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
    }
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }
}

impl Session for FakeSession {
    fn id(&self) -> &str {
        &self.id
    }

    /// `block`: until interrupted or killed; `die`: the sandbox dies;
    /// anything else: printed back.
    fn execute(&mut self, req: &ExecRequest, on_event: &mut dyn FnMut(&Event)) -> ExecutionResult {
        let p = &self.probe;
        p.running.store(true, Ordering::SeqCst);
        on_event(&Event::Stdout {
            text: req.code.clone(),
        });
        let outcome = match req.code.as_str() {
            "block" => loop {
                if p.killed.load(Ordering::SeqCst) {
                    break Outcome::Killed;
                }
                if p.interrupted.swap(false, Ordering::SeqCst) {
                    break Outcome::Interrupted;
                }
                thread::sleep(Duration::from_millis(1));
            },
            "die" => {
                p.killed.store(true, Ordering::SeqCst);
                Outcome::MemoryLimit
            }
            _ => Outcome::Ok,
        };
        p.running.store(false, Ordering::SeqCst);
        ExecutionResult::without_sandbox(outcome, self.id.clone())
    }

    fn interrupter(&self) -> Arc<dyn Interrupt> {
        self.probe.clone()
    }

    fn is_alive(&self) -> bool {
        !self.probe.killed.load(Ordering::SeqCst)
    }

    fn write_file(&mut self, path: &str, data: &[u8]) -> Result<(), FileError> {
        let path = crate::check_file_path(path, false)?;
        self.files.insert(path.to_string(), data.to_vec());
        Ok(())
    }

    fn read_file(&mut self, path: &str, _: u64) -> Result<Vec<u8>, FileError> {
        let path = crate::check_file_path(path, false)?;
        let found = self.files.get(path).cloned();
        found.ok_or_else(|| FileError::NotFound(path.to_string()))
    }

    fn list_files(&mut self, _: &str) -> Result<Vec<super::super::FileEntry>, FileError> {
        let entry = |(name, data): (&String, &Vec<u8>)| super::super::FileEntry {
            name: name.clone(),
            kind: "file".into(),
            size: data.len() as u64,
        };
        Ok(self.files.iter().map(entry).collect())
    }

    fn close(self: Box<Self>) {}
}

#[derive(Default)]
struct FakeBackend {
    made: AtomicUsize,
    limits: Mutex<Vec<Limits>>,
    denied: Mutex<Vec<BTreeMap<String, String>>>,
    trees: Mutex<Vec<Option<String>>>,
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn create_session(&self, o: &SessionOptions) -> Result<Box<dyn Session>, BackendError> {
        let n = self.made.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.limits).push(o.limits.clone());
        lock(&self.denied).push(o.deny_imports.clone());
        lock(&self.trees).push(o.library_tree.clone());
        Ok(Box::new(FakeSession {
            id: format!("s{n}"),
            probe: Arc::default(),
            files: Default::default(),
        }))
    }
}

fn key(id: &str, max_sessions: usize, max_concurrency: usize) -> ApiKey {
    ApiKey {
        id: id.into(),
        sha256: "0".repeat(64),
        max_sessions,
        max_concurrency,
        requests_per_minute: 600,
    }
}

fn service_with(pool: bool, dev: bool) -> (Arc<FakeBackend>, Arc<Service>) {
    service_full(pool, dev, BTreeMap::new())
}

fn service_full(
    pool: bool,
    dev: bool,
    wheelhouse: BTreeMap<String, WheelhouseTree>,
) -> (Arc<FakeBackend>, Arc<Service>) {
    let backend = Arc::new(FakeBackend::default());
    let mut config = Config::default();
    config.server.keys = vec![key("alice", 2, 1), key("bob", 2, 2)];
    let manager = Arc::new(SessionManager::new(backend.clone(), 16));
    let pool = pool.then(|| {
        let options = pool_options(&config);
        let sizes = PoolConfig {
            min_ready: 1,
            max_ready: 1,
            ..PoolConfig::default()
        };
        Pool::start(backend.clone(), options, sizes)
    });
    let options = ServiceOptions {
        dev,
        preinstalled: BTreeMap::from([("pandas".to_string(), "1.5.3".to_string())]),
        wheelhouse,
        ..ServiceOptions::default()
    };
    let service = Service::new(backend.clone(), manager, pool, config, options);
    (backend, Arc::new(service))
}

fn service() -> Arc<Service> {
    service_with(false, false).1
}

/// Every reply of `cmd`; asserts exactly one final reply, and that it is last.
fn call(s: &Service, cmd: Command) -> Vec<Reply> {
    call_with(s, cmd, &Cancel::new())
}

fn call_with(s: &Service, cmd: Command, cancel: &Cancel) -> Vec<Reply> {
    let mut replies = Vec::new();
    s.handle_with(cmd, cancel, &mut |r| replies.push(r));
    let finals = replies.iter().filter(|r| r.is_final()).count();
    assert_eq!(finals, 1, "{replies:?}");
    assert!(replies.last().unwrap().is_final());
    replies
}

fn last(s: &Service, cmd: Command) -> Reply {
    call(s, cmd).pop().unwrap()
}

#[track_caller]
fn error_kind(reply: &Reply) -> ErrorKind {
    match reply {
        Reply::Error { kind, .. } => *kind,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn create(s: &Service, key: &str) -> Result<String, Box<Reply>> {
    match last(
        s,
        Command::CreateSession {
            key: key.into(),
            options: SessionRequest::default(),
        },
    ) {
        Reply::Session { session } => Ok(session.id),
        other => Err(Box::new(other)),
    }
}

fn code(code: &str) -> ExecRequest {
    ExecRequest {
        code: code.into(),
        files: vec![],
    }
}

fn run(key: &str, session: &str, c: &str) -> Command {
    Command::SessionExecute {
        key: key.into(),
        session: session.into(),
        request: code(c),
    }
}

fn oneshot(key: &str, c: &str) -> Command {
    Command::Execute {
        key: key.into(),
        request: code(c),
        limits: LimitRequest::default(),
        environment: None,
        libraries: vec![],
    }
}

fn outcome(reply: &Reply) -> Outcome {
    match reply {
        Reply::Result { result } => result.outcome,
        other => panic!("expected a result, got {other:?}"),
    }
}

#[test]
fn a_session_execution_streams_events_then_one_result() {
    let s = service();
    let id = create(&s, "alice").unwrap();
    let replies = call(&s, run("alice", &id, "print(1)"));
    assert!(
        matches!(&replies[0], Reply::Event { event: Event::Stdout { text } } if text == "print(1)")
    );
    assert_eq!(outcome(&replies[1]), Outcome::Ok);
}

#[test]
fn another_keys_session_does_not_exist_for_it() {
    let s = service();
    let id = create(&s, "alice").unwrap();
    let nobody = |cmd: Command| {
        let reply = last(&s, cmd);
        assert_eq!(error_kind(&reply), ErrorKind::NotFound, "{reply:?}");
        reply
    };
    let theirs = nobody(Command::GetSession {
        key: "bob".into(),
        session: id.clone(),
    });
    let missing = nobody(Command::GetSession {
        key: "bob".into(),
        session: "s999".into(),
    });
    // Same words as for a session that never existed, apart from the id.
    assert_eq!(
        format!("{theirs:?}").replace(&id, "X"),
        format!("{missing:?}").replace("s999", "X")
    );
    nobody(run("bob", &id, "print(1)"));
    for cmd in [
        Command::Interrupt {
            key: "bob".into(),
            session: id.clone(),
        },
        Command::Keepalive {
            key: "bob".into(),
            session: id.clone(),
        },
        Command::ReadFile {
            key: "bob".into(),
            session: id.clone(),
            path: "a".into(),
        },
        Command::CloseSession {
            key: "bob".into(),
            session: id.clone(),
        },
    ] {
        nobody(cmd);
    }
    let listed = |key: &str| match last(&s, Command::ListSessions { key: key.into() }) {
        Reply::Sessions { sessions } => sessions.into_iter().map(|v| v.id).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(listed("bob"), Vec::<String>::new());
    assert_eq!(listed("alice"), vec![id.clone()]);
    // Still alive for its owner after all that.
    assert!(matches!(
        last(
            &s,
            Command::GetSession {
                key: "alice".into(),
                session: id
            }
        ),
        Reply::Session { .. }
    ));
}

#[test]
fn session_quota_per_key() {
    let s = service();
    let a = create(&s, "alice").unwrap();
    create(&s, "alice").unwrap();
    assert_eq!(
        error_kind(&create(&s, "alice").unwrap_err()),
        ErrorKind::TooMany
    );
    // Another key's quota is its own.
    create(&s, "bob").unwrap();
    let closed = last(
        &s,
        Command::CloseSession {
            key: "alice".into(),
            session: a,
        },
    );
    assert_eq!(closed, Reply::Ok);
    create(&s, "alice").unwrap();
}

#[test]
fn concurrency_quota_and_busy_sessions() {
    let s = service();
    let id = create(&s, "alice").unwrap();
    let worker = {
        let (s, id) = (s.clone(), id.clone());
        thread::spawn(move || last(&s, run("alice", &id, "block")))
    };
    while s.running() == 0 {
        thread::sleep(Duration::from_millis(1));
    }
    // alice may run one execution at once.
    assert_eq!(
        error_kind(&last(&s, oneshot("alice", "print(1)"))),
        ErrorKind::TooMany
    );
    // bob may run two: one is fine, and bob's session is free.
    assert_eq!(outcome(&last(&s, oneshot("bob", "print(1)"))), Outcome::Ok);
    let bobs = create(&s, "bob").unwrap();
    let worker2 = {
        let (s, bobs) = (s.clone(), bobs.clone());
        thread::spawn(move || last(&s, run("bob", &bobs, "block")))
    };
    while s.running() < 2 {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        error_kind(&last(&s, run("bob", &bobs, "x"))),
        ErrorKind::Busy
    );
    for (key, session) in [("alice", &id), ("bob", &bobs)] {
        let interrupt = Command::Interrupt {
            key: key.into(),
            session: session.clone(),
        };
        assert_eq!(last(&s, interrupt), Reply::Ok);
    }
    assert_eq!(outcome(&worker.join().unwrap()), Outcome::Interrupted);
    assert_eq!(outcome(&worker2.join().unwrap()), Outcome::Interrupted);
    assert_eq!(s.running(), 0);
    assert_eq!(
        outcome(&last(&s, oneshot("alice", "print(1)"))),
        Outcome::Ok
    );
}

#[test]
fn limits_above_the_ceiling_and_bad_code_are_rejected() {
    let s = service();
    let too_much = Command::Execute {
        key: "alice".into(),
        request: code("print(1)"),
        limits: LimitRequest {
            memory_mib: Some(1 << 30),
            ..LimitRequest::default()
        },

        environment: None,
        libraries: vec![],
    };
    let reply = last(&s, too_much);
    assert_eq!(error_kind(&reply), ErrorKind::Rejected);
    assert!(
        format!("{reply:?}").contains("exceeds the ceiling"),
        "{reply:?}"
    );
    assert_eq!(
        error_kind(&last(&s, oneshot("alice", "  "))),
        ErrorKind::Rejected
    );
    let long_idle = Command::CreateSession {
        key: "alice".into(),
        options: SessionRequest {
            idle_timeout_s: Some(1 << 40),
            ..SessionRequest::default()
        },
    };
    assert_eq!(error_kind(&last(&s, long_idle)), ErrorKind::Rejected);
    let bad_env = Command::CreateSession {
        key: "alice".into(),
        options: SessionRequest {
            env: [("LD_PRELOAD".to_string(), "x".to_string())].into(),
            ..SessionRequest::default()
        },
    };
    assert_eq!(error_kind(&last(&s, bad_env)), ErrorKind::Rejected);
    // Nothing was made, nothing counts against the quota.
    create(&s, "alice").unwrap();
    create(&s, "alice").unwrap();
}

#[test]
fn unknown_keys_are_refused_unless_in_dev_mode() {
    let s = service();
    assert_eq!(
        error_kind(&create(&s, "mallory").unwrap_err()),
        ErrorKind::BadRequest
    );
    let (_, dev) = service_with(false, true);
    create(&dev, "mallory").unwrap();
}

#[test]
fn a_dead_sandbox_ends_its_session() {
    let s = service();
    let id = create(&s, "alice").unwrap();
    match last(&s, run("alice", &id, "die")) {
        Reply::Result { result } => assert!(result.session_ended),
        other => panic!("{other:?}"),
    }
    let get = Command::GetSession {
        key: "alice".into(),
        session: id,
    };
    assert_eq!(error_kind(&last(&s, get)), ErrorKind::NotFound);
    // Its quota slot is free again.
    create(&s, "alice").unwrap();
    create(&s, "alice").unwrap();
}

#[test]
fn a_caller_gone_stops_its_execution() {
    let s = service();
    let id = create(&s, "alice").unwrap();
    let cancel = Arc::new(Cancel::new());
    let worker = {
        let (s, id, cancel) = (s.clone(), id.clone(), cancel.clone());
        thread::spawn(move || call_with(&s, run("alice", &id, "block"), &cancel).pop())
    };
    // Fired before, while or just after the execution is armed: all stop it.
    while !cancel.fire() && !worker.is_finished() {
        thread::sleep(Duration::from_millis(1));
    }
    // A session's execution is interrupted: the session lives on.
    assert_eq!(
        outcome(&worker.join().unwrap().unwrap()),
        Outcome::Interrupted
    );
    assert_eq!(outcome(&last(&s, run("alice", &id, "x"))), Outcome::Ok);
    // Fired before a one-shot execution starts: it is killed at once.
    let cancel = Cancel::new();
    cancel.fire();
    let reply = call_with(&s, oneshot("alice", "block"), &cancel)
        .pop()
        .unwrap();
    assert_eq!(outcome(&reply), Outcome::Killed);
}

#[test]
fn the_pool_serves_default_limits_only() {
    let (backend, s) = service_with(true, false);
    assert_eq!(
        outcome(&last(&s, oneshot("alice", "print(1)"))),
        Outcome::Ok
    );
    let Reply::Stats {
        pool: Some(pool), ..
    } = last(&s, Command::Stats)
    else {
        panic!("no pool stats")
    };
    assert_eq!(pool.handed_out, 1);
    let custom = Command::Execute {
        key: "alice".into(),
        request: code("print(1)"),
        limits: LimitRequest {
            memory_mib: Some(300),
            ..LimitRequest::default()
        },

        environment: None,
        libraries: vec![],
    };
    assert_eq!(outcome(&last(&s, custom)), Outcome::Ok);
    let Reply::Stats {
        pool: Some(pool), ..
    } = last(&s, Command::Stats)
    else {
        panic!("no pool stats")
    };
    assert_eq!(pool.handed_out, 1, "custom limits never come from the pool");
    assert!(lock(&backend.limits).iter().any(|l| l.memory_mib == 300));
}

#[test]
fn files_of_a_session_for_its_owner_only() {
    let s = service();
    let id = create(&s, "alice").unwrap();
    let write = |key: &str, path: &str, data_b64: &str| {
        last(
            &s,
            Command::WriteFile {
                key: key.into(),
                session: id.clone(),
                path: path.into(),
                data_b64: data_b64.into(),
            },
        )
    };
    assert_eq!(write("alice", "in/a.csv", "YSwxCg=="), Reply::Ok);
    assert_eq!(
        error_kind(&write("bob", "in/a.csv", "YQ==")),
        ErrorKind::NotFound
    );
    assert_eq!(
        error_kind(&write("alice", "../x", "YQ==")),
        ErrorKind::BadRequest
    );
    assert_eq!(
        error_kind(&write("alice", "b", "not base64!")),
        ErrorKind::BadRequest
    );
    let read = |key: &str, path: &str| {
        last(
            &s,
            Command::ReadFile {
                key: key.into(),
                session: id.clone(),
                path: path.into(),
            },
        )
    };
    let Reply::File { size, data_b64, .. } = read("alice", "in/a.csv") else {
        panic!("no file")
    };
    assert_eq!((size, data_b64.as_str()), (4, "YSwxCg=="));
    assert_eq!(error_kind(&read("alice", "nope")), ErrorKind::NotFound);
    assert_eq!(error_kind(&read("bob", "in/a.csv")), ErrorKind::NotFound);
    let list = Command::ListFiles {
        key: "alice".into(),
        session: id.clone(),
        path: ".".into(),
    };
    let Reply::Files { entries, .. } = last(&s, list) else {
        panic!("no listing")
    };
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].name.as_str(), entries[0].size), ("in/a.csv", 4));
}

#[test]
fn shutdown_kills_what_runs_and_refuses_new_work() {
    let s = service();
    let id = create(&s, "bob").unwrap();
    let workers: Vec<_> = [run("bob", &id, "block"), oneshot("bob", "block")]
        .into_iter()
        .map(|cmd| {
            let s = s.clone();
            thread::spawn(move || last(&s, cmd))
        })
        .collect();
    while s.running() < 2 {
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(20));
    assert_eq!(last(&s, Command::Shutdown), Reply::Ok);
    for worker in workers {
        assert_eq!(outcome(&worker.join().unwrap()), Outcome::Killed);
    }
    assert_eq!(
        error_kind(&create(&s, "bob").unwrap_err()),
        ErrorKind::Unavailable
    );
    assert_eq!(
        error_kind(&last(&s, oneshot("bob", "x"))),
        ErrorKind::Unavailable
    );
}

#[test]
fn policy_and_stats_answer() {
    let s = service();
    let Reply::Policy { policy } = last(&s, Command::Policy) else {
        panic!()
    };
    assert_eq!(policy["backend"], "fake");
    assert_eq!(policy["limits"]["memory_mib"], 512);
    create(&s, "alice").unwrap();
    let Reply::Stats { sessions, pool, .. } = last(&s, Command::Stats) else {
        panic!()
    };
    assert_eq!((sessions, pool), (1, None));
}

#[track_caller]
fn rejected_with(reply: &Reply, words: &str) {
    match reply {
        Reply::Error {
            kind: ErrorKind::Rejected,
            message,
        } => assert!(message.contains(words), "{message}"),
        other => panic!("expected rejected, got {other:?}"),
    }
}

#[test]
fn imports_are_checked_before_a_sandbox_starts() {
    let (backend, s) = service_with(false, false);
    let reply = last(&s, oneshot("alice", "import os\nimport subprocess"));
    rejected_with(&reply, "line 2, column 8: import of `subprocess`");
    let reply = last(&s, oneshot("alice", "import requests"));
    rejected_with(&reply, "allowed: matplotlib==3.8.4");
    assert_eq!(
        backend.made.load(Ordering::SeqCst),
        0,
        "no sandbox was made"
    );
    // In a session too; the session stays and runs the next cell.
    let id = create(&s, "alice").unwrap();
    rejected_with(&last(&s, run("alice", &id, "import socket")), "`socket`");
    assert_eq!(outcome(&last(&s, run("alice", &id, "ok"))), Outcome::Ok);
    // Every sandbox gets the environment's table for the runner's hook.
    let denied = lock(&backend.denied);
    assert!(
        denied.iter().all(|d| d.contains_key("subprocess")),
        "{denied:?}"
    );
}

#[test]
fn environments_and_libraries_are_checked() {
    let (backend, s) = service_with(false, false);
    let with = |environment: Option<&str>, libraries: &[&str]| Command::Execute {
        key: "alice".into(),
        request: code("print(1)"),
        limits: LimitRequest::default(),
        environment: environment.map(String::from),
        libraries: libraries.iter().map(|l| l.to_string()).collect(),
    };
    rejected_with(
        &last(&s, with(Some("nope"), &[])),
        "no environment named \"nope\"",
    );
    rejected_with(
        &last(&s, with(None, &["requests"])),
        "\"requests\" is not allowed",
    );
    // Allowed but not in this (fake) runtime's installed set.
    rejected_with(
        &last(&s, with(None, &["numpy"])),
        "numpy==1.26.4 is allowed but not installed",
    );
    assert_eq!(backend.made.load(Ordering::SeqCst), 0);
    assert_eq!(
        outcome(&last(&s, with(Some("default"), &["pandas"]))),
        Outcome::Ok
    );
    let session = Command::CreateSession {
        key: "alice".into(),
        options: SessionRequest {
            libraries: vec!["requests".into()],
            ..SessionRequest::default()
        },
    };
    rejected_with(&last(&s, session), "allowed:");
}

#[test]
fn the_policy_lists_each_environment() {
    let Reply::Policy { policy } = last(&service(), Command::Policy) else {
        panic!()
    };
    assert_eq!(policy["environment"], "default");
    let env = &policy["environments"][0];
    assert_eq!(env["name"], "default");
    assert!(env["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l == "pandas==1.5.3"));
    assert!(env["deny_modules"]["subprocess"].is_string());
    assert_eq!(policy["libraries"], env["libraries"]);
}

#[test]
fn a_library_tree_gets_a_pool_of_its_own() {
    // numpy is allowed; this fake runtime lacks it, the wheelhouse has it.
    let tree = WheelhouseTree {
        name: "lib-test".into(),
        pins: BTreeMap::from([("numpy".to_string(), "1.26.4".to_string())]),
    };
    let (backend, s) = service_full(true, false, BTreeMap::from([("default".to_string(), tree)]));
    let with_numpy = || Command::Execute {
        key: "bob".into(),
        request: code("print(1)"),
        limits: LimitRequest::default(),
        environment: None,
        libraries: vec!["numpy".into()],
    };
    assert_eq!(outcome(&last(&s, with_numpy())), Outcome::Ok);
    assert!(lock(&backend.trees)
        .iter()
        .any(|t| t.as_deref() == Some("lib-test")));
    let pool_stats = || match last(&s, Command::Stats) {
        Reply::Stats { pool: Some(p), .. } => p,
        other => panic!("{other:?}"),
    };
    // The default pool's sandbox and the new pool's.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool_stats().ready < 2 {
        assert!(
            Instant::now() < deadline,
            "the tree's pool never filled: {:?}",
            pool_stats()
        );
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        pool_stats().handed_out,
        0,
        "the first request was made fresh"
    );
    assert_eq!(outcome(&last(&s, with_numpy())), Outcome::Ok);
    assert_eq!(
        pool_stats().handed_out,
        1,
        "the second came from the tree's pool"
    );
    // Shutdown stops every pool.
    s.shutdown();
}
