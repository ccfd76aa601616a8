use super::*;
use crate::{Outcome, SessionOptions};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

/// What a fake session did, seen from the test.
#[derive(Default)]
struct Probe {
    log: Mutex<Vec<String>>,
    interrupted: AtomicBool,
    killed: AtomicBool,
    closed: AtomicBool,
    dead: AtomicBool,
}

impl Probe {
    fn log(&self) -> Vec<String> {
        lock(&self.log).clone()
    }
}

struct FakeSession {
    id: String,
    probe: Arc<Probe>,
}

struct FakeInterrupter(Arc<Probe>);

impl Interrupt for FakeInterrupter {
    fn interrupt(&self) {
        self.0.interrupted.store(true, Ordering::SeqCst);
    }
    fn kill(&self) {
        self.0.killed.store(true, Ordering::SeqCst);
        self.0.dead.store(true, Ordering::SeqCst);
    }
}

impl Session for FakeSession {
    fn id(&self) -> &str {
        &self.id
    }

    /// `block`: runs until interrupted (outcome interrupted) or killed;
    /// `die`: the sandbox dies; anything else: echoes the code after 5 ms.
    fn execute(&mut self, req: &ExecRequest, on_event: &mut dyn FnMut(&Event)) -> ExecutionResult {
        let p = &self.probe;
        lock(&p.log).push(format!("start {}", req.code));
        let event = Event::Stdout {
            text: req.code.clone(),
        };
        on_event(&event);
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
                p.dead.store(true, Ordering::SeqCst);
                Outcome::MemoryLimit
            }
            _ => {
                thread::sleep(Duration::from_millis(5));
                Outcome::Ok
            }
        };
        lock(&p.log).push(format!("end {}", req.code));
        let mut r = ExecutionResult::without_sandbox(outcome, "fake");
        r.events.push(event);
        r
    }

    fn interrupter(&self) -> Arc<dyn Interrupt> {
        Arc::new(FakeInterrupter(self.probe.clone()))
    }

    fn is_alive(&self) -> bool {
        !self.probe.dead.load(Ordering::SeqCst)
    }

    fn close(self: Box<Self>) {
        self.probe.closed.store(true, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct FakeBackend {
    made: AtomicUsize,
    probes: Mutex<HashMap<String, Arc<Probe>>>,
}

impl FakeBackend {
    fn probe(&self, id: &str) -> Arc<Probe> {
        lock(&self.probes)[id].clone()
    }
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn create_session(&self, _: &SessionOptions) -> Result<Box<dyn Session>, BackendError> {
        let id = format!("s{}", self.made.fetch_add(1, Ordering::SeqCst) + 1);
        let probe = Arc::new(Probe::default());
        lock(&self.probes).insert(id.clone(), probe.clone());
        Ok(Box::new(FakeSession { id, probe }))
    }
}

struct FakeClock(Mutex<Instant>);

impl FakeClock {
    fn advance(&self, by: Duration) -> Instant {
        let mut now = lock(&self.0);
        *now += by;
        *now
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        *lock(&self.0)
    }
}

fn setup() -> (Arc<FakeBackend>, Arc<FakeClock>, SessionManager) {
    let backend = Arc::new(FakeBackend::default());
    let clock = Arc::new(FakeClock(Mutex::new(Instant::now())));
    let manager = SessionManager::with_clock(backend.clone(), 4, clock.clone());
    (backend, clock, manager)
}

fn req(code: &str) -> ExecRequest {
    ExecRequest {
        code: code.into(),
        files: vec![],
    }
}

fn run(m: &SessionManager, id: &str, code: &str) -> ExecutionResult {
    m.execute(id, &req(code), &mut |_| {}).unwrap()
}

#[test]
fn events_are_streamed_and_collected() {
    let (_, _, m) = setup();
    let id = m.create(&SessionOptions::default()).unwrap();
    let mut seen = Vec::new();
    let r = m
        .execute(&id, &req("x = 1"), &mut |e| seen.push(e.clone()))
        .unwrap();
    assert_eq!(seen, r.events);
    assert_eq!(r.outcome, Outcome::Ok);
    assert!(!r.session_ended);
    assert_eq!(m.list()[0].executions, 1);
}

#[test]
fn executions_of_one_session_never_overlap() {
    let (backend, _, m) = setup();
    let m = Arc::new(m);
    let id = m.create(&SessionOptions::default()).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (m, id) = (m.clone(), id.clone());
            thread::spawn(move || run(&m, &id, &format!("c{i}")).outcome)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), Outcome::Ok);
    }
    let log = backend.probe(&id).log();
    assert_eq!(log.len(), 8);
    for pair in log.chunks(2) {
        let code = pair[0].strip_prefix("start ").unwrap();
        assert_eq!(pair[1], format!("end {code}"), "{log:?}");
    }
}

#[test]
fn idle_sessions_expire_and_executions_keep_them_alive() {
    let (backend, clock, m) = setup();
    let a = m.create(&SessionOptions::default()).unwrap();
    let b = m.create(&SessionOptions::default()).unwrap();
    let now = clock.advance(Duration::from_secs(9 * 60));
    assert!(m.reap_expired(now).is_empty());
    run(&m, &b, "keep me");
    let now = clock.advance(Duration::from_secs(60));
    assert_eq!(m.reap_expired(now), vec![(a.clone(), Expiry::Idle)]);
    assert!(backend.probe(&a).closed.load(Ordering::SeqCst));
    assert!(matches!(
        m.execute(&a, &req("x"), &mut |_| {}),
        Err(SessionError::NotFound(_))
    ));
    assert_eq!(m.list().len(), 1);
    let now = clock.advance(Duration::from_secs(10 * 60));
    assert_eq!(m.reap_expired(now), vec![(b, Expiry::Idle)]);
    assert!(m.is_empty());
}

#[test]
fn a_busy_session_is_not_idle_but_lifetime_kills_it() {
    let (backend, clock, m) = setup();
    let m = Arc::new(m);
    let id = m.create(&SessionOptions::default()).unwrap();
    let worker = {
        let (m, id) = (m.clone(), id.clone());
        thread::spawn(move || run(&m, &id, "block"))
    };
    wait_until(|| m.list()[0].executing);
    let now = clock.advance(Duration::from_secs(30 * 60));
    assert!(m.reap_expired(now).is_empty(), "executing is not idle");
    let now = clock.advance(Duration::from_secs(31 * 60));
    assert_eq!(m.reap_expired(now), vec![(id.clone(), Expiry::Lifetime)]);
    let r = worker.join().unwrap();
    assert_eq!(r.outcome, Outcome::Killed);
    let probe = backend.probe(&id);
    assert!(probe.killed.load(Ordering::SeqCst));
    assert!(probe.closed.load(Ordering::SeqCst));
    assert!(m.is_empty());
}

#[test]
fn interrupt_reaches_only_its_session() {
    let (backend, _, m) = setup();
    let m = Arc::new(m);
    let a = m.create(&SessionOptions::default()).unwrap();
    let b = m.create(&SessionOptions::default()).unwrap();
    let worker = {
        let (m, a) = (m.clone(), a.clone());
        thread::spawn(move || run(&m, &a, "block"))
    };
    wait_until(|| m.list().iter().any(|s| s.id == a && s.executing));
    assert!(!m.interrupt(&b).unwrap(), "b is idle");
    assert!(m.interrupt(&a).unwrap());
    let r = worker.join().unwrap();
    assert_eq!(r.outcome, Outcome::Interrupted);
    assert!(!r.session_ended, "an interrupt keeps the session");
    assert_eq!(run(&m, &a, "after").outcome, Outcome::Ok);
    assert!(backend.probe(&b).interrupted.load(Ordering::SeqCst));
    assert!(!backend.probe(&a).killed.load(Ordering::SeqCst));
    assert!(matches!(
        m.interrupt("nope"),
        Err(SessionError::NotFound(_))
    ));
}

#[test]
fn closing_a_busy_session_kills_the_execution() {
    let (backend, _, m) = setup();
    let m = Arc::new(m);
    let id = m.create(&SessionOptions::default()).unwrap();
    let worker = {
        let (m, id) = (m.clone(), id.clone());
        thread::spawn(move || run(&m, &id, "block"))
    };
    wait_until(|| m.list()[0].executing);
    m.close(&id).unwrap();
    let r = worker.join().unwrap();
    assert_eq!(r.outcome, Outcome::Killed);
    assert!(backend.probe(&id).closed.load(Ordering::SeqCst));
    assert!(m.is_empty());
    assert!(matches!(m.close(&id), Err(SessionError::NotFound(_))));
}

#[test]
fn a_session_whose_sandbox_died_is_closed_and_forgotten() {
    let (backend, _, m) = setup();
    let id = m.create(&SessionOptions::default()).unwrap();
    let r = run(&m, &id, "die");
    assert_eq!(r.outcome, Outcome::MemoryLimit);
    assert!(r.session_ended);
    assert!(backend.probe(&id).closed.load(Ordering::SeqCst));
    assert!(m.is_empty());
    assert!(matches!(
        m.execute(&id, &req("x"), &mut |_| {}),
        Err(SessionError::NotFound(_))
    ));
}

#[test]
fn limits_and_options_are_checked_before_a_sandbox_is_made() {
    let (backend, _, m) = setup();
    let mut bad = SessionOptions::default();
    bad.env.insert("LD_PRELOAD".into(), "/x.so".into());
    assert!(matches!(m.create(&bad), Err(SessionError::Options(_))));
    assert_eq!(backend.made.load(Ordering::SeqCst), 0);
    for _ in 0..4 {
        m.create(&SessionOptions::default()).unwrap();
    }
    assert!(matches!(
        m.create(&SessionOptions::default()),
        Err(SessionError::TooMany { max: 4 })
    ));
    m.close_all();
    assert!(m.is_empty());
    let probes = lock(&backend.probes);
    assert!(probes.values().all(|p| p.closed.load(Ordering::SeqCst)));
}

#[test]
fn one_shot_execute_is_create_execute_close() {
    let backend = FakeBackend::default();
    let r = backend
        .execute(&req("print(1)"), &kiln_policy::Limits::default())
        .unwrap();
    assert_eq!(r.outcome, Outcome::Ok);
    assert!(backend.probe("s1").closed.load(Ordering::SeqCst));
    let r = backend
        .execute(&req("  "), &kiln_policy::Limits::default())
        .unwrap();
    assert_eq!(r.outcome, Outcome::Rejected);
    assert_eq!(backend.made.load(Ordering::SeqCst), 1);
}

fn wait_until(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition never held");
        thread::sleep(Duration::from_millis(1));
    }
}
