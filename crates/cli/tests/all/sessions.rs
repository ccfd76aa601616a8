//! Sessions through the real binary: `kiln repl --json` driven over stdin,
//! one JSON cell in, one JSON result out.

use crate::support::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `kiln repl --json`.
struct Repl {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Repl {
    fn start(args: &[&str]) -> Self {
        // The config adds an environment `open` (no import checks) for tests
        // of the sandbox wall; the others run in `default`.
        let mut child = kiln()
            .env("KILN_CONFIG", open_config())
            .args(["repl", "--json"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kiln repl");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, code: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{}", serde_json::to_string(code).unwrap()).unwrap();
        stdin.flush().unwrap();
    }

    fn result(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("kiln repl printed no JSON ({e}): {line:?}"))
    }

    fn exec(&mut self, code: &str) -> Value {
        self.send(code);
        self.result()
    }

    fn ok(&mut self, code: &str) -> Value {
        let v = self.exec(code);
        expect_outcome(&v, "ok");
        v
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Closes stdin (= exit) and waits for the process.
    fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        self.child.wait().unwrap()
    }
}

/// The host pids of a sandbox's processes.
fn pids_of(v: &Value) -> Vec<u32> {
    let uid = v["isolation"]["uid"].as_u64().unwrap() as u32;
    sandbox_processes()
        .into_iter()
        .filter(|(_, u)| *u == uid)
        .map(|(p, _)| p)
        .collect()
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn state_and_work_files_persist_across_executions() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, "a,b\n1,2\n").unwrap();
    let file_arg = format!("{}:data.csv", input.display());
    let mut r = Repl::start(&["--file", &file_arg]);
    let first = r.ok("x = 41\nopen('note.txt', 'w').write('kept')");
    assert!(first.get("session_ended").is_none(), "{first}");
    let v = r.ok("x + 1");
    assert_eq!(events(&v, "display")[0]["data"]["text/plain"], "42");
    let v = r.ok("print(open('note.txt').read(), open('data.csv').read().split()[1])");
    assert_eq!(stdout(&v), "kept 1,2\n");
    assert_eq!(v["isolation"]["uid"], first["isolation"]["uid"]);
    let v = r.exec("1 / 0");
    expect_outcome(&v, "error");
    assert_eq!(
        stdout(&r.ok("print(x)")),
        "41\n",
        "an error keeps the session"
    );
    // The import check refuses a cell before the sandbox sees it; the
    // session goes on with its variables.
    let v = r.exec("y = 1\nimport subprocess");
    expect_outcome(&v, "rejected");
    assert!(
        v["reason"].as_str().unwrap().contains("line 2, column 8"),
        "{v}"
    );
    assert_eq!(stdout(&r.ok("print(x, 'y' in globals())")), "41 False\n");
    let kiln_pid = r.child.id();
    assert!(r.finish().success());
    assert_nothing_left_by("", &first);
    assert_no_zygote_left_by(kiln_pid);
}

#[test]
fn a_timeout_interrupts_and_the_session_keeps_its_variables() {
    let mut r = Repl::start(&["--timeout", "1"]);
    r.ok("x = 'still here'");
    let v = r.exec("while True:\n    pass");
    expect_outcome(&v, "timeout");
    assert_eq!(v["limits_hit"], serde_json::json!(["wall"]), "{v}");
    assert!(v.get("session_ended").is_none(), "{v}");
    assert_eq!(events(&v, "error")[0]["name"], "KeyboardInterrupt");
    assert_eq!(stdout(&r.ok("print(x)")), "still here\n");
    assert!(r.finish().success());
}

#[test]
fn code_that_ignores_the_interrupt_is_killed_and_the_session_ends() {
    let mut r = Repl::start(&["--timeout", "1"]);
    let first = r.ok("import signal, time");
    let started = Instant::now();
    let v =
        r.exec("signal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.01)");
    expect_outcome(&v, "timeout");
    assert_eq!(v["session_ended"], true, "{v}");
    assert_eq!(v["exit_code"], 137, "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("grace period"),
        "{v}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "1 s + 2 s grace"
    );
    let status = r.finish();
    assert_eq!(status.code(), Some(124), "the repl ends with the session");
    assert_nothing_left_by("", &first);
}

#[test]
fn ctrl_c_interrupts_the_running_cell_only() {
    let mut r = Repl::start(&[]);
    r.ok("x = 7");
    r.send("import time\nwhile True:\n    time.sleep(0.01)");
    std::thread::sleep(Duration::from_millis(700));
    r.signal("-INT");
    let v = r.result();
    expect_outcome(&v, "interrupted");
    assert!(v.get("session_ended").is_none(), "{v}");
    assert_eq!(events(&v, "error")[0]["name"], "KeyboardInterrupt");
    assert_eq!(stdout(&r.ok("print(x * 6)")), "42\n");
    // Between cells, Ctrl-C does nothing to the session.
    r.signal("-INT");
    assert_eq!(stdout(&r.ok("print(x)")), "7\n");
    assert!(r.finish().success());
}

#[test]
fn the_memory_limit_ends_the_session() {
    let mut r = Repl::start(&["--memory", "128"]);
    let first = r.ok("x = 1");
    let v = r.exec("blob = bytearray(400 << 20)\nblob[::4096] = b'x' * len(blob[::4096])");
    expect_outcome(&v, "memory_limit");
    assert_eq!(v["session_ended"], true, "{v}");
    assert_eq!(r.finish().code(), Some(137));
    assert_nothing_left_by("", &first);
}

#[test]
fn two_sessions_cannot_see_each_other() {
    let mut a = Repl::start(&["--env", "ONLY_A=alpha"]);
    let mut b = Repl::start(&[]);
    let va = a.ok("secret = 'A'\nopen('mine.txt', 'w').write('A')\nimport os\nprint(os.environ['ONLY_A'], os.getpid())");
    assert_eq!(
        stdout(&va),
        "alpha 1\n",
        "the runner is PID 1 of its own namespace"
    );
    let vb = b.ok("import os\nprint('secret' in globals(), os.path.exists('mine.txt'), os.environ.get('ONLY_A'), sorted(os.listdir('/work')))");
    assert_eq!(stdout(&vb), "False False None ['out']\n");
    assert_ne!(va["isolation"]["uid"], vb["isolation"]["uid"]);
    // A cannot reach B's processes: B's host pid does not exist in A's pid
    // namespace, and no other process is visible there at all.
    let b_pids = pids_of(&vb);
    assert!(!b_pids.is_empty());
    for pid in b_pids {
        let v = a.exec(&format!(
            "try:\n    os.kill({pid}, 9)\n    print('killed')\nexcept OSError as e:\n    print(type(e).__name__)"
        ));
        assert_eq!(stdout(&v), "ProcessLookupError\n", "{v}");
    }
    let v = a.ok("print([p for p in os.listdir('/proc') if p.isdigit()])");
    assert_eq!(stdout(&v), "['1']\n", "{v}");
    assert!(b.finish().success());
    assert_eq!(
        stdout(&a.ok("print(secret)")),
        "A\n",
        "B's end does not touch A"
    );
    assert!(a.finish().success());
}

#[test]
fn invalid_environment_names_are_rejected() {
    for bad in [
        "LD_PRELOAD=/x.so",
        "lower=1",
        "PYTHONPATH=/tmp",
        "KILN_SITE=/",
        "PATH=/x",
    ] {
        let r = Repl::start(&["--env", bad]);
        let mut r = r;
        let v = r.result();
        expect_outcome(&v, "rejected");
        assert!(
            v["reason"].as_str().unwrap().contains("not allowed"),
            "{bad}: {v}"
        );
        assert_eq!(r.finish().code(), Some(65), "{bad}");
    }
}

#[test]
fn terminating_kiln_mid_execution_leaves_nothing_behind() {
    let mut r = Repl::start(&["--environment", "open"]);
    let first = r.ok("import subprocess, sys");
    r.send("child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\nwhile True:\n    pass");
    wait_until("the sandbox runs two processes", || {
        pids_of(&first).len() >= 2
    });
    r.signal("-TERM");
    let kiln_pid = r.child.id();
    let status = r.finish();
    assert_eq!(status.code(), Some(143));
    assert_nothing_left_by("", &first);
    assert_no_zygote_left_by(kiln_pid);
}

#[test]
fn a_killed_kiln_leaves_nothing_once_the_next_kiln_starts() {
    let mut r = Repl::start(&[]);
    let first = r.ok("x = 1");
    r.send("while True:\n    pass");
    std::thread::sleep(Duration::from_millis(300));
    r.signal("-KILL");
    let kiln_pid = r.child.id();
    let _ = r.finish();
    // PR_SET_PDEATHSIG takes the sandbox down with kiln; the next kiln
    // removes the cgroup the dead one left.
    wait_until("the sandbox is gone", || pids_of(&first).is_empty());
    expect_outcome(&run("print(1)"), "ok");
    assert_nothing_left_by("", &first);
    assert_no_zygote_left_by(kiln_pid);
}
