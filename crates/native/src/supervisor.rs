//! The supervisor's side of a live sandbox: start the runner (and set up a
//! session), feed it code one execution at a time, read events out, enforce
//! wall and CPU time, output and artifact limits, and decide each outcome.
//! Only the supervisor decides outcomes and usage figures; the sandbox's
//! frames are parsed as hostile input.
//!
//! An execution ends at the runner's `done`; the sandbox stays. A time limit
//! (or an interrupt on request) first sends SIGINT: a `done` within the
//! grace period keeps the session, otherwise the sandbox is killed. A
//! memory OOM, a seccomp kill, the output limit or a protocol violation end
//! the sandbox too; [`Supervised::alive`] says whether it survived.

use crate::output::{Collector, Stream};
use crate::spawn::{ForeignProcess, Reaper, Spawned};
use crate::sys;
use kiln_core::protocol::{self, FrameDecoder, RunnerMsg, SupervisorMsg, WireFile};
use kiln_core::{Event, ExecRequest, Interrupt, Outcome, Usage};
use kiln_policy::Limits;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the supervisor reads from the sandbox's cgroup.
pub trait Accounting {
    fn cpu_usage_ns(&self) -> io::Result<u64>;
    fn oom_killed(&self) -> io::Result<bool>;
    fn memory_peak_bytes(&self) -> io::Result<u64>;
    fn pids_max_hit(&self) -> io::Result<bool>;
}

/// How long the runner may take to start before the sandbox counts as broken.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the runner may take to apply a session's setup.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often CPU time is checked while code runs.
const CPU_CHECK: Duration = Duration::from_millis(50);
/// How long the runner gets to exit on its own once the channel is closed.
pub const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// The largest frame accepted from the runner: an artifact at the byte
/// limit, base64-encoded, plus room for its JSON envelope.
pub fn frame_cap(limits: &Limits) -> usize {
    (limits.artifact_bytes as usize).saturating_mul(4) / 3 + (1 << 20)
}

const NO_REQUEST: u8 = 0;
const INTERRUPT: u8 = 1;
const KILL: u8 = 2;

/// The handle other threads use to interrupt or kill the sandbox. It holds
/// its own pidfd, so it can never signal a recycled pid.
#[derive(Debug)]
pub struct Control {
    pidfd: OwnedFd,
    /// Set for a sandbox run by an engine: signals go through it.
    foreign: Option<Arc<dyn ForeignProcess>>,
    running: AtomicBool,
    request: AtomicU8,
    wake: UnixStream,
}

impl Control {
    fn wake(&self) {
        // Non-blocking: a full socket already holds a wake-up.
        let _ = (&self.wake).write(b"!");
    }
}

impl Interrupt for Control {
    fn interrupt(&self) {
        if self.running.load(Ordering::Acquire) {
            let _ = self.request.compare_exchange(
                NO_REQUEST,
                INTERRUPT,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            self.wake();
        }
    }

    fn kill(&self) {
        self.request.store(KILL, Ordering::Release);
        let _ = match &self.foreign {
            Some(f) => f.signal(libc::SIGKILL),
            None => sys::pidfd_send_signal(self.pidfd.as_raw_fd(), libc::SIGKILL),
        };
        self.wake();
    }
}

/// The supervisor's end of one live sandbox, kept between executions.
#[derive(Debug)]
pub struct Link {
    sandbox: Spawned,
    decoder: FrameDecoder,
    open: [bool; 3],
    /// PID 1's wait status, once it was collected.
    status: Option<libc::c_int>,
    dead: bool,
    control: Arc<Control>,
    woken: UnixStream,
    /// Raw output read before the first execution, handed to it.
    carry: Vec<(Stream, Vec<u8>)>,
    /// Sent with every execution: the modules the runner's import hook refuses.
    pub deny_imports: BTreeMap<String, String>,
}

impl Link {
    pub fn new(sandbox: Spawned, limits: &Limits) -> io::Result<Self> {
        let (woken, wake) = UnixStream::pair()?;
        woken.set_nonblocking(true)?;
        wake.set_nonblocking(true)?;
        let control = Arc::new(Control {
            pidfd: sandbox.pidfd.try_clone()?,
            foreign: match &sandbox.reaper {
                Reaper::Foreign(f) => Some(f.clone()),
                _ => None,
            },
            running: AtomicBool::new(false),
            request: AtomicU8::new(NO_REQUEST),
            wake,
        });
        Ok(Self {
            sandbox,
            decoder: FrameDecoder::new(frame_cap(limits)),
            open: [true; 3],
            status: None,
            dead: false,
            control,
            woken,
            carry: Vec::new(),
            deny_imports: BTreeMap::new(),
        })
    }

    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Whether PID 1 still runs (without reaping it).
    pub fn is_alive(&self) -> bool {
        if self.dead || self.status.is_some() {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: self.sandbox.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 0
    }

    /// Ends the sandbox: end of the channel asks the runner to exit; after
    /// [`CLOSE_GRACE`] it is killed. Returns PID 1's wait status.
    pub fn close(&mut self) -> Option<libc::c_int> {
        if !self.dead && self.status.is_none() {
            if let Ok(channel) = self.sandbox.channel.try_clone() {
                let _ = UnixStream::from(channel).shutdown(std::net::Shutdown::Write);
            }
            let deadline = Instant::now() + CLOSE_GRACE;
            while self.status.is_none() {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                self.wait_exit(deadline - now);
            }
        }
        self.kill_and_reap();
        self.status
    }

    /// Waits up to `wait` for PID 1 to exit, discarding anything it writes.
    fn wait_exit(&mut self, wait: Duration) {
        let ready = poll(&self.poll_fds(false), wait);
        for (i, fd) in self.pipe_fds().into_iter().enumerate() {
            if ready[i] {
                let mut buf = [0u8; 65536];
                if matches!(sys::read(fd, &mut buf), Ok(0) | Err(_)) {
                    self.open[i] = false;
                }
            }
        }
        if ready[3] {
            self.status = self.sandbox.wait_status(false).ok().flatten();
        }
    }

    /// SIGKILL to PID 1 (which takes its pid namespace with it), then reap.
    pub fn kill_and_reap(&mut self) {
        self.dead = true;
        let _ = self.sandbox.signal(libc::SIGKILL);
        if self.status.is_none() {
            self.status = self.sandbox.wait_status(true).ok().flatten();
        }
    }

    fn pipe_fds(&self) -> [RawFd; 3] {
        [
            self.sandbox.channel.as_raw_fd(),
            self.sandbox.stdout.as_raw_fd(),
            self.sandbox.stderr.as_raw_fd(),
        ]
    }

    /// channel, stdout, stderr, pidfd and (optionally) the wake socket.
    fn poll_fds(&self, with_wake: bool) -> Vec<libc::pollfd> {
        let mut fds: Vec<RawFd> = self.pipe_fds().to_vec();
        fds.push(self.sandbox.pidfd.as_raw_fd());
        if with_wake {
            fds.push(self.woken.as_raw_fd());
        }
        fds.iter()
            .enumerate()
            .map(|(i, &fd)| libc::pollfd {
                fd: if i < 3 && !self.open[i] { -1 } else { fd },
                events: libc::POLLIN,
                revents: 0,
            })
            .collect()
    }
}

/// Which of `fds` are ready after waiting up to `wait`.
fn poll(fds: &[libc::pollfd], wait: Duration) -> Vec<bool> {
    let mut pfds = fds.to_vec();
    // SAFETY: `pfds` is a valid array of pollfd of the given length.
    let n = unsafe {
        libc::poll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            wait.as_millis().min(i32::MAX as u128) as i32,
        )
    };
    pfds.iter().map(|p| n > 0 && p.revents != 0).collect()
}

/// What one execution produced, before the backend adds isolation details.
#[derive(Debug)]
pub struct Supervised {
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub events: Vec<Event>,
    /// PID 1's exit code when the sandbox ended.
    pub exit_code: Option<i32>,
    pub usage: Usage,
    pub limits_hit: Vec<String>,
    pub truncated: bool,
    /// Whether the sandbox survived (the session goes on).
    pub alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Starting,
    SettingUp,
    Running,
    /// SIGINT sent (time limit or request); waiting for `done` until the deadline.
    Interrupting,
    /// The step is over and the sandbox lives on.
    Finished,
    /// PID 1 is gone or being killed.
    Dead,
}

/// Why an interrupt was sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cause {
    Timeout,
    Request,
}

/// One step on a link: the start (ready + setup) or one execution.
struct Run<'a> {
    link: &'a mut Link,
    limits: &'a Limits,
    out: Collector,
    on_event: &'a mut dyn FnMut(&Event),
    phase: Phase,
    deadline: Instant,
    setup: Option<Vec<u8>>,
    cause: Option<Cause>,
    started: Option<Instant>,
    ended: Option<Instant>,
    outcome: Option<(Outcome, Option<String>)>,
    limits_hit: Vec<String>,
    cpu_start: u64,
    /// Whether `pids.max` had been hit before this step (the count is cumulative).
    pids_hit_before: bool,
    /// What the runner's `ready` reported of the sandbox's start.
    startup_steps: Vec<(String, Duration)>,
}

/// Waits for the runner's `ready` and, for a session with environment or
/// files, sends `setup` and waits for its `done`. On failure the sandbox is
/// dead and the result says why (with whatever the runner printed). On
/// success, how long each step of the sandbox's start took inside it, where
/// the runner reported them ([`startup_durations`]).
pub fn start(
    link: &mut Link,
    limits: &Limits,
    setup: Option<&SupervisorMsg>,
    acct: &dyn Accounting,
) -> Result<Vec<(String, Duration)>, Supervised> {
    let mut ignore = |_: &Event| {};
    let mut run = Run::new(link, limits, &mut ignore, Phase::Starting, STARTUP_TIMEOUT);
    run.setup = setup.map(protocol::encode);
    run.event_loop(acct);
    if run.phase == Phase::Finished {
        let raw = std::mem::take(&mut run.out.events);
        run.link.carry = raw
            .into_iter()
            .filter_map(|e| match e {
                Event::Stdout { text } => Some((Stream::Stdout, text.into_bytes())),
                Event::Stderr { text } => Some((Stream::Stderr, text.into_bytes())),
                _ => None,
            })
            .collect();
        return Ok(std::mem::take(&mut run.startup_steps));
    }
    Err(run.finish(acct))
}

/// Runs one piece of code in a started sandbox until its `done`, or until
/// a limit or a kill ends it. Events go to `on_event` as they arrive.
pub fn execute(
    link: &mut Link,
    request: &ExecRequest,
    limits: &Limits,
    acct: &dyn Accounting,
    on_event: &mut dyn FnMut(&Event),
) -> Supervised {
    let mut run = Run::new(link, limits, on_event, Phase::Running, Duration::ZERO);
    if !run.link.is_alive() {
        run.link.kill_and_reap();
        let reason = "the session's sandbox has ended; create a new session".to_string();
        run.outcome = Some((Outcome::Killed, Some(reason)));
        run.phase = Phase::Dead;
        return run.finish(acct);
    }
    for (stream, bytes) in std::mem::take(&mut run.link.carry) {
        run.on_raw(stream, &bytes);
    }
    run.send_code(request, acct);
    run.event_loop(acct);
    run.finish(acct)
}

impl<'a> Run<'a> {
    fn new(
        link: &'a mut Link,
        limits: &'a Limits,
        on_event: &'a mut dyn FnMut(&Event),
        phase: Phase,
        timeout: Duration,
    ) -> Self {
        Run {
            link,
            limits,
            out: Collector::new(limits),
            on_event,
            phase,
            deadline: Instant::now() + timeout,
            setup: None,
            cause: None,
            started: None,
            ended: None,
            outcome: None,
            limits_hit: Vec::new(),
            cpu_start: 0,
            pids_hit_before: false,
            startup_steps: Vec::new(),
        }
    }

    fn event_loop(&mut self, acct: &dyn Accounting) {
        while !matches!(self.phase, Phase::Finished | Phase::Dead) {
            let now = Instant::now();
            if now >= self.deadline {
                self.on_deadline();
                continue;
            }
            if self.phase == Phase::Running && self.cpu_exceeded(acct) {
                self.interrupt(Cause::Timeout, "cpu");
                continue;
            }
            let wait = (self.deadline - now).min(CPU_CHECK);
            self.poll_once(wait);
            self.stream_new_events();
        }
        self.link.control.running.store(false, Ordering::Release);
        if self.phase == Phase::Dead {
            self.link.kill_and_reap();
            self.drain();
        } else {
            self.read_ready_pipes();
        }
        self.stream_new_events();
    }

    fn stream_new_events(&mut self) {
        for event in self.out.take_fresh() {
            (self.on_event)(&event);
        }
    }

    fn poll_once(&mut self, wait: Duration) {
        let fds = self.link.pipe_fds();
        let ready = poll(&self.link.poll_fds(true), wait);
        for i in 0..3 {
            if ready[i] && !matches!(self.phase, Phase::Finished | Phase::Dead) {
                self.read_fd(i, fds[i]);
            }
        }
        if ready[4] {
            self.on_wake();
        }
        if ready[3] && self.phase != Phase::Dead {
            self.on_exit();
        }
    }

    fn read_fd(&mut self, index: usize, fd: RawFd) {
        let mut buf = [0u8; 65536];
        match sys::read(fd, &mut buf) {
            Ok(0) | Err(_) => self.link.open[index] = false,
            Ok(n) => match index {
                0 => self.on_channel(&buf[..n]),
                1 => self.on_raw(Stream::Stdout, &buf[..n]),
                _ => self.on_raw(Stream::Stderr, &buf[..n]),
            },
        }
    }

    /// After `done`: raw output written before it is in the pipes already.
    fn read_ready_pipes(&mut self) {
        for (i, fd) in self.link.pipe_fds().into_iter().enumerate().skip(1) {
            while self.link.open[i] && self.phase == Phase::Finished {
                let pfd = [self.link.poll_fds(false)[i]];
                if !poll(&pfd, Duration::ZERO)[0] {
                    break;
                }
                self.read_fd(i, fd);
            }
        }
    }

    fn on_raw(&mut self, stream: Stream, bytes: &[u8]) {
        if !self.out.bytes(stream, bytes) {
            self.output_limit();
        }
    }

    fn on_channel(&mut self, bytes: &[u8]) {
        if let Err(e) = self.link.decoder.feed(bytes) {
            return self.violation(e.to_string());
        }
        loop {
            match self.link.decoder.next_msg::<RunnerMsg>() {
                Ok(Some(msg)) => self.on_msg(msg),
                Ok(None) => break,
                Err(e) => return self.violation(e.to_string()),
            }
            if self.phase == Phase::Finished {
                break;
            }
        }
    }

    fn on_msg(&mut self, msg: RunnerMsg) {
        if self.phase == Phase::Dead {
            // Frames read after the sandbox died: keep what they show.
            return match msg.into_event() {
                Some(e @ Event::Error { .. }) => self.out.event(e),
                Some(Event::Stdout { text }) => drop(self.out.text(Stream::Stdout, &text)),
                Some(Event::Stderr { text }) => drop(self.out.text(Stream::Stderr, &text)),
                Some(e) => self.out.artifact(e),
                None => {}
            };
        }
        match msg {
            RunnerMsg::Ready { steps } if self.phase == Phase::Starting => self.on_ready(steps),
            RunnerMsg::Ready { .. } => self.violation("runner said ready twice".into()),
            _ if self.phase == Phase::Starting => {
                self.violation("output before the code was sent".into())
            }
            RunnerMsg::Stdout { text } => {
                if !self.out.text(Stream::Stdout, &text) {
                    self.output_limit();
                }
            }
            RunnerMsg::Stderr { text } => {
                if !self.out.text(Stream::Stderr, &text) {
                    self.output_limit();
                }
            }
            RunnerMsg::Done { status } if self.phase == Phase::SettingUp => {
                self.on_setup_done(&status)
            }
            RunnerMsg::Done { status } => self.on_done(&status),
            other => match other.into_event() {
                Some(e @ Event::Error { .. }) => self.out.event(e),
                Some(e) => self.out.artifact(e),
                None => {}
            },
        }
    }

    fn on_ready(&mut self, steps: Vec<(String, u64)>) {
        self.startup_steps = startup_durations(&steps, sys::monotonic_ns());
        let Some(frame) = self.setup.take() else {
            self.phase = Phase::Finished;
            return;
        };
        if let Err(e) = sys::write_all(self.link.sandbox.channel.as_raw_fd(), &frame) {
            return self.end(
                Outcome::Killed,
                Some(format!("runner went away before the session setup: {e}")),
            );
        }
        self.phase = Phase::SettingUp;
        self.deadline = Instant::now() + SETUP_TIMEOUT;
    }

    fn on_setup_done(&mut self, status: &str) {
        if status == "ok" {
            self.phase = Phase::Finished;
            return;
        }
        let why = self
            .out
            .events
            .iter()
            .find_map(|e| match e {
                Event::Error { value, .. } => Some(value.clone()),
                _ => None,
            })
            .unwrap_or_else(|| format!("status `{status}`"));
        self.end(Outcome::Error, Some(format!("session setup failed: {why}")));
    }

    fn send_code(&mut self, request: &ExecRequest, acct: &dyn Accounting) {
        use base64::Engine;
        let files = request
            .files
            .iter()
            .map(|f| WireFile {
                path: f.path.clone(),
                data_b64: base64::engine::general_purpose::STANDARD.encode(&f.data),
            })
            .collect();
        let frame = protocol::encode(&SupervisorMsg::Execute {
            code: request.code.clone(),
            files,
            deny_imports: self.link.deny_imports.clone(),
        });
        self.cpu_start = acct.cpu_usage_ns().unwrap_or(0);
        self.pids_hit_before = acct.pids_max_hit().unwrap_or(false);
        let control = &self.link.control;
        let _ = control.request.compare_exchange(
            INTERRUPT,
            NO_REQUEST,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        control.running.store(true, Ordering::Release);
        if let Err(e) = sys::write_all(self.link.sandbox.channel.as_raw_fd(), &frame) {
            return self.end(
                Outcome::Killed,
                Some(format!("runner went away before the code was sent: {e}")),
            );
        }
        let now = Instant::now();
        self.started = Some(now);
        self.deadline = now + Duration::from_millis(self.limits.wall_ms);
    }

    fn on_done(&mut self, status: &str) {
        self.ended.get_or_insert_with(Instant::now);
        let decided = match (status, self.cause) {
            // A time limit stands even if the code finished meanwhile.
            (_, Some(Cause::Timeout)) => None,
            ("interrupted", _) => Some((
                Outcome::Interrupted,
                Some("interrupted (KeyboardInterrupt); the session keeps its state".into()),
            )),
            ("ok", _) => Some((Outcome::Ok, None)),
            ("error", _) => Some((Outcome::Error, None)),
            (other, _) => Some((
                Outcome::Killed,
                Some(format!("execution ended with status `{other}`")),
            )),
        };
        if let Some(decided) = decided {
            self.outcome.get_or_insert(decided);
        }
        self.phase = Phase::Finished;
    }

    fn on_wake(&mut self) {
        let mut buf = [0u8; 64];
        while matches!((&self.link.woken).read(&mut buf), Ok(n) if n > 0) {}
        let request = self.link.control.request.load(Ordering::Acquire);
        if request == INTERRUPT && self.phase == Phase::Running {
            self.interrupt(Cause::Request, "interrupt");
        }
    }

    fn on_deadline(&mut self) {
        match self.phase {
            Phase::Starting => self.end(
                Outcome::Killed,
                Some("the runner did not start in time".into()),
            ),
            Phase::SettingUp => self.end(
                Outcome::Killed,
                Some("the runner did not finish the session setup in time".into()),
            ),
            Phase::Running => self.interrupt(Cause::Timeout, "wall"),
            Phase::Interrupting => {
                let note = format!(
                    "; the code did not stop within the grace period of {} ms and was killed, which ended the session",
                    self.limits.grace_ms
                );
                let (_, reason) = self.outcome.get_or_insert((Outcome::Interrupted, None));
                reason
                    .get_or_insert_with(|| "interrupted on request".into())
                    .push_str(&note);
                self.ended.get_or_insert_with(Instant::now);
                self.phase = Phase::Dead;
            }
            Phase::Finished | Phase::Dead => {}
        }
    }

    /// SIGINT (KeyboardInterrupt in the runner); a kill after the grace
    /// period if the code does not stop. `which` is the limit hit (`wall`,
    /// `cpu`); a request decides its outcome from the runner's `done`.
    fn interrupt(&mut self, cause: Cause, which: &str) {
        if cause == Cause::Timeout {
            let reason = match which {
                "cpu" => format!("CPU time limit of {} ms reached", self.limits.cpu_ms),
                _ => format!("wall-clock limit of {} ms reached", self.limits.wall_ms),
            };
            self.limits_hit.push(which.to_string());
            self.ended = Some(Instant::now());
            self.outcome = Some((Outcome::Timeout, Some(reason)));
        }
        self.cause = Some(cause);
        let _ = self.link.sandbox.signal(libc::SIGINT);
        self.phase = Phase::Interrupting;
        self.deadline = Instant::now() + Duration::from_millis(self.limits.grace_ms);
    }

    fn output_limit(&mut self) {
        if !self.limits_hit.iter().any(|l| l == "output") {
            self.limits_hit.push("output".into());
        }
        let reason = format!(
            "output limit of {} bytes per stream reached; the session has ended",
            self.limits.output_bytes
        );
        self.end(Outcome::OutputLimit, Some(reason));
    }

    fn violation(&mut self, what: String) {
        self.end(Outcome::Killed, Some(format!("protocol violation: {what}")));
    }

    /// Sets the outcome (the first decision wins) and ends the sandbox.
    fn end(&mut self, outcome: Outcome, reason: Option<String>) {
        if self.outcome.is_none() {
            self.outcome = Some((outcome, reason));
        }
        self.ended.get_or_insert_with(Instant::now);
        self.phase = Phase::Dead;
    }

    fn on_exit(&mut self) {
        self.link.status = self.link.sandbox.wait_status(false).ok().flatten();
        self.ended.get_or_insert_with(Instant::now);
        if self.outcome.is_none() && self.link.control.request.load(Ordering::Acquire) == KILL {
            self.outcome = Some((
                Outcome::Killed,
                Some("the session was killed on request".into()),
            ));
        }
        self.phase = Phase::Dead;
    }

    /// Reads what is still buffered in the pipes after PID 1 died.
    fn drain(&mut self) {
        for (i, fd) in self.link.pipe_fds().into_iter().enumerate() {
            let _ = sys::set_nonblocking(fd);
            while self.link.open[i] {
                self.read_fd(i, fd);
            }
        }
    }

    fn cpu_exceeded(&self, acct: &dyn Accounting) -> bool {
        acct.cpu_usage_ns().is_ok_and(|ns| {
            ns.saturating_sub(self.cpu_start) > self.limits.cpu_ms.saturating_mul(1_000_000)
        })
    }

    fn finish(mut self, acct: &dyn Accounting) -> Supervised {
        self.out.finish();
        self.stream_new_events();
        if acct.pids_max_hit().unwrap_or(false) && !self.pids_hit_before {
            self.limits_hit.push("pids".into());
        }
        if self.out.artifacts_dropped {
            self.limits_hit.push("artifacts".into());
        }
        let oom = acct.oom_killed().unwrap_or(false);
        if oom {
            self.limits_hit.push("memory".into());
            // Whatever the OOM killer took, the session cannot be trusted on.
            if self.phase != Phase::Dead {
                self.link.kill_and_reap();
                self.phase = Phase::Dead;
            }
        }
        let (outcome, reason) = self.decide(oom);
        let duration = match (self.started, self.ended) {
            (Some(s), Some(e)) => e.saturating_duration_since(s),
            _ => Duration::ZERO,
        };
        let alive = self.phase != Phase::Dead;
        Supervised {
            outcome,
            reason,
            exit_code: if alive {
                None
            } else {
                self.link.status.map(exit_code)
            },
            usage: Usage {
                duration_ms: duration.as_millis() as u64,
                cpu_ms: acct
                    .cpu_usage_ns()
                    .unwrap_or(0)
                    .saturating_sub(self.cpu_start)
                    / 1_000_000,
                peak_memory_bytes: acct.memory_peak_bytes().unwrap_or(0),
            },
            limits_hit: self.limits_hit,
            truncated: self.out.truncated,
            events: std::mem::take(&mut self.out.events),
            alive,
        }
    }

    fn decide(&mut self, oom: bool) -> (Outcome, Option<String>) {
        let memory = (
            Outcome::MemoryLimit,
            Some(format!(
                "memory limit of {} MiB reached; the sandbox was OOM-killed and the session has ended",
                self.limits.memory_mib
            )),
        );
        match self.outcome.take() {
            // Limits the supervisor itself enforced stand, whatever followed.
            Some((o @ (Outcome::Timeout | Outcome::OutputLimit), r)) => (o, r),
            _ if oom => memory,
            Some(decided) => decided,
            None => self.unexpected_exit(),
        }
    }

    fn unexpected_exit(&self) -> (Outcome, Option<String>) {
        match self.link.status {
            Some(s) if libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == libc::SIGSYS => (
                Outcome::Killed,
                Some("seccomp: the sandbox made a forbidden system call and was killed".into()),
            ),
            Some(s) if libc::WIFSIGNALED(s) => (
                Outcome::Killed,
                Some(format!(
                    "the runner was killed by signal {}",
                    libc::WTERMSIG(s)
                )),
            ),
            Some(s) => (
                Outcome::Killed,
                Some(format!(
                    "the runner exited with status {} before finishing",
                    libc::WEXITSTATUS(s)
                )),
            ),
            None => (Outcome::Killed, Some("the runner vanished".into())),
        }
    }
}

pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// How long the runner may take to answer a file request before the sandbox
/// is taken for wedged and killed.
pub const FILE_TIMEOUT: Duration = Duration::from_secs(10);

/// The payload a file request expects before its `done ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// `write_file`: nothing.
    Nothing,
    /// `read_file`: one `file_data` for the path asked for, at most this
    /// many bytes.
    Data(u64),
    /// `list_files`: one `file_list` for the path asked for.
    List,
}

/// How a file request ended.
#[derive(Debug, PartialEq)]
pub enum FileAnswer {
    /// `done ok`, after the payload (if one was expected).
    Ok(Option<RunnerMsg>),
    /// The runner refused: its `error` frame's kind and explanation.
    Refused { kind: String, message: String },
    /// The sandbox is gone (it died, broke the protocol, or did not answer
    /// in time and was killed): why.
    Ended(String),
}

/// Sends one file request (only between executions) and reads its answer,
/// within `timeout`. Every frame is checked against what the request
/// allows; anything else kills the sandbox. Raw output written meanwhile
/// (by a thread the code left running) is kept for the next execution, up
/// to the output limit.
pub fn file_request(
    link: &mut Link,
    limits: &Limits,
    acct: &dyn Accounting,
    msg: &SupervisorMsg,
    expect: Expect,
    timeout: Duration,
) -> FileAnswer {
    let path = match msg {
        SupervisorMsg::WriteFile { path, .. }
        | SupervisorMsg::ReadFile { path, .. }
        | SupervisorMsg::ListFiles { path } => path.clone(),
        _ => unreachable!("file_request is only called with file requests"),
    };
    if !link.is_alive() {
        link.kill_and_reap();
        return FileAnswer::Ended("the session's sandbox has ended; create a new session".into());
    }
    if link.decoder.buffered() > 0 {
        return file_violation(link, "the runner sent bytes after its last answer".into());
    }
    // A decoder sized for this answer: nothing longer than it can need is
    // buffered. The link's own decoder is empty (checked above).
    let cap = match expect {
        Expect::Data(max) => {
            (protocol::base64_len(max) as usize).saturating_add(6 * path.len() + (64 << 10))
        }
        Expect::List => frame_cap(limits),
        Expect::Nothing => 6 * path.len() + (64 << 10),
    };
    let mut exchange = Exchange {
        link,
        limits,
        decoder: FrameDecoder::new(cap),
        check: AnswerCheck::new(path, expect),
        answer: None,
    };
    let deadline = Instant::now() + timeout;
    let frame = protocol::encode(msg);
    let mut sent = 0;
    while exchange.answer.is_none() {
        let now = Instant::now();
        if now >= deadline {
            exchange.link.kill_and_reap();
            return FileAnswer::Ended(format!(
                "the runner did not answer a file request within {} s; the session was killed",
                timeout.as_secs_f64()
            ));
        }
        let sending = sent < frame.len();
        let mut fds = exchange.link.poll_fds(false);
        if sending {
            fds[0].events |= libc::POLLOUT;
        }
        let mut pfds = fds.clone();
        // SAFETY: `pfds` is a valid array of pollfd of the given length.
        let n = unsafe {
            libc::poll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32,
            )
        };
        if n <= 0 {
            continue;
        }
        let channel = exchange.link.sandbox.channel.as_raw_fd();
        if sending && pfds[0].revents & libc::POLLOUT != 0 {
            // SAFETY: the slice is valid for its length; MSG_DONTWAIT never
            // blocks, MSG_NOSIGNAL turns a gone peer into EPIPE.
            let wrote = unsafe {
                libc::send(
                    channel,
                    frame[sent..].as_ptr().cast(),
                    frame.len() - sent,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if wrote > 0 {
                sent += wrote as usize;
            } else if wrote < 0 {
                let e = io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    exchange.link.kill_and_reap();
                    return FileAnswer::Ended(format!(
                        "the runner went away before the file request was sent: {e}"
                    ));
                }
            }
        }
        for (i, fd) in exchange.link.pipe_fds().into_iter().enumerate() {
            if pfds[i].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
                continue;
            }
            let mut buf = [0u8; 65536];
            match sys::read(fd, &mut buf) {
                Ok(0) | Err(_) => exchange.link.open[i] = false,
                Ok(n) if i == 0 => {
                    if sending && sent < frame.len() {
                        exchange.violation("the runner answered before the request was sent");
                    } else {
                        exchange.on_bytes(&buf[..n]);
                    }
                }
                Ok(n) => exchange.on_raw(i, &buf[..n]),
            }
            if exchange.answer.is_some() {
                break;
            }
        }
        if exchange.answer.is_none() && pfds[3].revents != 0 {
            exchange.link.status = exchange.link.sandbox.wait_status(false).ok().flatten();
            exchange.link.kill_and_reap();
            let why = if acct.oom_killed().unwrap_or(false) {
                format!(
                    "memory limit of {} MiB reached during a file request; the sandbox was OOM-killed",
                    limits.memory_mib
                )
            } else if exchange.link.control.request.load(Ordering::Acquire) == KILL {
                "the session was killed on request".into()
            } else {
                "the runner exited during a file request".into()
            };
            return FileAnswer::Ended(why);
        }
    }
    exchange.answer.take().expect("loop ends with an answer")
}

fn file_violation(link: &mut Link, what: String) -> FileAnswer {
    tracing::warn!(%what, "protocol violation during a file request; killing the sandbox");
    link.kill_and_reap();
    FileAnswer::Ended(format!(
        "protocol violation: {what}; the session was killed"
    ))
}

/// One file request's answer, as it arrives.
struct Exchange<'a> {
    link: &'a mut Link,
    limits: &'a Limits,
    decoder: FrameDecoder,
    check: AnswerCheck,
    answer: Option<FileAnswer>,
}

/// Most characters of a runner's explanation that are passed on.
const MESSAGE_MAX_CHARS: usize = 1024;

impl Exchange<'_> {
    fn violation(&mut self, what: &str) {
        self.answer = Some(file_violation(self.link, what.to_string()));
    }

    fn on_raw(&mut self, index: usize, bytes: &[u8]) {
        let stream = if index == 1 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        let kept: usize = self.link.carry.iter().map(|(_, b)| b.len()).sum();
        let room = (self.limits.output_bytes as usize).saturating_sub(kept);
        let bytes = &bytes[..bytes.len().min(room)];
        if !bytes.is_empty() {
            self.link.carry.push((stream, bytes.to_vec()));
        }
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        if let Err(e) = self.decoder.feed(bytes) {
            return self.violation(&e.to_string());
        }
        while self.answer.is_none() {
            match self.decoder.next_msg::<RunnerMsg>() {
                Ok(Some(msg)) => self.on_msg(msg),
                Ok(None) => return,
                Err(e) => return self.violation(&e.to_string()),
            }
        }
        if self.decoder.buffered() > 0 {
            self.violation("the runner sent more after its answer");
        }
    }

    fn on_msg(&mut self, msg: RunnerMsg) {
        match self.check.on_msg(msg) {
            Ok(answer) => self.answer = answer,
            Err(what) => self.violation(&what),
        }
    }
}

/// What a file request's answer may be, frame by frame: the payload the
/// request expects (or an `error`), then `done`. Anything else is a
/// protocol violation.
#[derive(Debug)]
struct AnswerCheck {
    path: String,
    expect: Expect,
    payload: Option<RunnerMsg>,
    error: Option<(String, String)>,
}

impl AnswerCheck {
    fn new(path: String, expect: Expect) -> Self {
        Self {
            path,
            expect,
            payload: None,
            error: None,
        }
    }

    /// `Ok(Some(_))` once the answer is complete, `Ok(None)` while it goes
    /// on, `Err(why)` for a frame that breaks the protocol.
    fn on_msg(&mut self, msg: RunnerMsg) -> Result<Option<FileAnswer>, String> {
        let answered = self.payload.is_some() || self.error.is_some();
        match msg {
            RunnerMsg::FileData {
                path,
                size,
                data_b64,
            } if !answered => {
                let Expect::Data(max) = self.expect else {
                    return Err("file_data answering a request that is not read_file".into());
                };
                if path != self.path {
                    return Err("file_data for another path".into());
                }
                if size > max || data_b64.len() as u64 != protocol::base64_len(size) {
                    return Err("file_data whose size disagrees with the request".into());
                }
                self.payload = Some(RunnerMsg::FileData {
                    path,
                    size,
                    data_b64,
                });
            }
            RunnerMsg::FileList { path, entries } if !answered => {
                if self.expect != Expect::List {
                    return Err("file_list answering a request that is not list_files".into());
                }
                if path != self.path {
                    return Err("file_list for another path".into());
                }
                if entries.len() > protocol::LIST_MAX_ENTRIES {
                    return Err("file_list with too many entries".into());
                }
                let bad = entries.iter().any(|e| {
                    e.name.is_empty()
                        || e.name.len() > 1024
                        || e.name == "."
                        || e.name == ".."
                        || e.name.contains(['/', '\0'])
                        || !matches!(e.kind.as_str(), "file" | "dir" | "symlink" | "other")
                        || (e.kind != "file" && e.size != 0)
                });
                if bad {
                    return Err("file_list with an impossible entry".into());
                }
                self.payload = Some(RunnerMsg::FileList { path, entries });
            }
            RunnerMsg::Error {
                name,
                value,
                traceback: _,
            } if !answered => {
                let message = value.chars().take(MESSAGE_MAX_CHARS).collect();
                self.error = Some((name.chars().take(64).collect(), message));
            }
            RunnerMsg::Done { status } => {
                let complete = match (status.as_str(), &self.error) {
                    ("ok", None) => (self.expect == Expect::Nothing) == self.payload.is_none(),
                    ("error", Some(_)) => true,
                    _ => false,
                };
                if !complete {
                    return Err("done that does not end the file request's answer".into());
                }
                return Ok(Some(match self.error.take() {
                    Some((kind, message)) => FileAnswer::Refused { kind, message },
                    None => FileAnswer::Ok(self.payload.take()),
                }));
            }
            other => {
                return Err(format!(
                    "unexpected `{}` frame during a file request",
                    frame_type(&other)
                ))
            }
        }
        Ok(None)
    }
}

/// The steps of a `ready` frame (`[step, monotonic ns when it ended]`, the
/// first `start`) as durations: each step from the end of the one before,
/// and a last `runner` from the end of the last step until `ready` arrived
/// (`now_ns`): in a zygote fork, Python's after-fork work, the sandbox's
/// environment and reseeding, and the runner's start. Nothing without steps;
/// at most [`protocol::MAX_STARTUP_STEPS`]; a clock that went backwards (a
/// forged frame) counts as zero.
pub fn startup_durations(steps: &[(String, u64)], now_ns: u64) -> Vec<(String, Duration)> {
    let steps = &steps[..steps.len().min(protocol::MAX_STARTUP_STEPS)];
    let Some(last) = steps.last() else {
        return Vec::new();
    };
    let gap = |from: u64, to: u64| Duration::from_nanos(to.saturating_sub(from));
    steps
        .windows(2)
        .map(|w| (w[1].0.clone(), gap(w[0].1, w[1].1)))
        .chain(std::iter::once(("runner".to_string(), gap(last.1, now_ns))))
        .collect()
}

fn frame_type(msg: &RunnerMsg) -> &'static str {
    match msg {
        RunnerMsg::Ready { .. } => "ready",
        RunnerMsg::Stdout { .. } => "stdout",
        RunnerMsg::Stderr { .. } => "stderr",
        RunnerMsg::Display { .. } => "display",
        RunnerMsg::File { .. } => "file",
        RunnerMsg::Error { .. } => "error",
        RunnerMsg::Done { .. } => "done",
        RunnerMsg::FileData { .. } => "file_data",
        RunnerMsg::FileList { .. } => "file_list",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::protocol::WireEntry;

    #[test]
    fn startup_steps_become_durations_ending_with_the_runner() {
        let steps: Vec<(String, u64)> = [("start", 1_000), ("signals", 1_500), ("seccomp", 4_000)]
            .map(|(n, t)| (n.to_string(), t))
            .to_vec();
        let us = |d: Duration| d.as_nanos() as u64;
        let got: Vec<(String, u64)> = startup_durations(&steps, 10_000)
            .into_iter()
            .map(|(n, d)| (n, us(d)))
            .collect();
        let want: Vec<(String, u64)> = [("signals", 500), ("seccomp", 2_500), ("runner", 6_000)]
            .map(|(n, t)| (n.to_string(), t))
            .to_vec();
        assert_eq!(got, want);
        assert!(
            startup_durations(&[], 10).is_empty(),
            "a fresh process reports none"
        );
        // A clock that goes backwards (a forged frame) gives zero, not a panic.
        let back = [("start".to_string(), 9), ("signals".to_string(), 3)];
        assert_eq!(startup_durations(&back, 1)[0].1, Duration::ZERO);
        let many: Vec<(String, u64)> = (0..100).map(|i| (format!("s{i}"), i)).collect();
        assert_eq!(
            startup_durations(&many, 100).len(),
            protocol::MAX_STARTUP_STEPS
        );
    }

    fn done(status: &str) -> RunnerMsg {
        RunnerMsg::Done {
            status: status.into(),
        }
    }

    fn error(kind: &str) -> RunnerMsg {
        RunnerMsg::Error {
            name: kind.into(),
            value: "x".repeat(5000),
            traceback: vec![],
        }
    }

    fn data(path: &str, size: u64, b64: &str) -> RunnerMsg {
        RunnerMsg::FileData {
            path: path.into(),
            size,
            data_b64: b64.into(),
        }
    }

    fn entry(name: &str, kind: &str, size: u64) -> WireEntry {
        WireEntry {
            name: name.into(),
            kind: kind.into(),
            size,
        }
    }

    /// Feeds frames; the answer, or the violation.
    fn answer(expect: Expect, frames: Vec<RunnerMsg>) -> Result<Option<FileAnswer>, String> {
        let mut check = AnswerCheck::new("a.txt".into(), expect);
        let mut last = Ok(None);
        for frame in frames {
            last = check.on_msg(frame);
            if !matches!(last, Ok(None)) {
                break;
            }
        }
        last
    }

    #[test]
    fn well_formed_answers() {
        assert_eq!(
            answer(Expect::Nothing, vec![done("ok")]),
            Ok(Some(FileAnswer::Ok(None)))
        );
        assert_eq!(
            answer(Expect::Data(3), vec![data("a.txt", 3, "YWJj"), done("ok")]),
            Ok(Some(FileAnswer::Ok(Some(data("a.txt", 3, "YWJj")))))
        );
        let list = RunnerMsg::FileList {
            path: "a.txt".into(),
            entries: vec![entry("x", "file", 3), entry("l", "symlink", 0)],
        };
        assert_eq!(
            answer(Expect::List, vec![list.clone(), done("ok")]),
            Ok(Some(FileAnswer::Ok(Some(list))))
        );
        let Ok(Some(FileAnswer::Refused { kind, message })) =
            answer(Expect::Data(3), vec![error("not_regular"), done("error")])
        else {
            panic!("a refusal")
        };
        assert_eq!(kind, "not_regular");
        assert_eq!(message.len(), MESSAGE_MAX_CHARS, "explanations are clipped");
    }

    #[test]
    fn hostile_answers_are_violations() {
        let list = |entries| RunnerMsg::FileList {
            path: "a.txt".into(),
            entries,
        };
        let cases: Vec<(Expect, Vec<RunnerMsg>)> = vec![
            // Output or events of an execution.
            (
                Expect::Nothing,
                vec![RunnerMsg::Stdout { text: "hi".into() }],
            ),
            (
                Expect::Nothing,
                vec![RunnerMsg::Ready { steps: Vec::new() }],
            ),
            (
                Expect::Data(3),
                vec![RunnerMsg::File {
                    path: "a.txt".into(),
                    size: 0,
                    data_b64: "".into(),
                }],
            ),
            // A payload the request did not ask for, or two.
            (Expect::Nothing, vec![data("a.txt", 0, "")]),
            (Expect::List, vec![data("a.txt", 0, "")]),
            (Expect::Data(3), vec![list(vec![])]),
            (
                Expect::Data(3),
                vec![data("a.txt", 0, ""), data("a.txt", 0, "")],
            ),
            (Expect::Data(3), vec![error("io"), data("a.txt", 0, "")]),
            // Another path, a size over the cap or unlike the data.
            (Expect::Data(3), vec![data("b.txt", 3, "YWJj")]),
            (Expect::Data(2), vec![data("a.txt", 3, "YWJj")]),
            (Expect::Data(9), vec![data("a.txt", 4, "YWJj")]),
            (Expect::Data(9), vec![data("a.txt", 3, "YWJjZA==")]),
            // Impossible entries.
            (Expect::List, vec![list(vec![entry("a/b", "file", 0)])]),
            (Expect::List, vec![list(vec![entry("..", "dir", 0)])]),
            (Expect::List, vec![list(vec![entry("", "file", 0)])]),
            (Expect::List, vec![list(vec![entry("x", "hardlink", 0)])]),
            (Expect::List, vec![list(vec![entry("x", "dir", 7)])]),
            (
                Expect::List,
                vec![list(
                    (0..=protocol::LIST_MAX_ENTRIES)
                        .map(|i| entry(&i.to_string(), "file", 0))
                        .collect(),
                )],
            ),
            // A done that does not fit what came before.
            (Expect::Data(3), vec![done("ok")]),
            (Expect::List, vec![done("ok")]),
            (Expect::Nothing, vec![done("error")]),
            (Expect::Nothing, vec![error("io"), done("ok")]),
            (
                Expect::Data(3),
                vec![data("a.txt", 3, "YWJj"), done("error")],
            ),
            (Expect::Nothing, vec![done("interrupted")]),
        ];
        for (expect, frames) in cases {
            let shown = format!("{frames:?}");
            assert!(
                answer(expect, frames).is_err(),
                "accepted: {expect:?} {shown:.200}"
            );
        }
    }
}
