//! File operations on a live session, through the runner: `kiln repl --json`
//! file commands (`write_file`, `read_file`, `list_files`) between cells.
//! A symlink or FIFO that the code plants in `/work` must never lead to a
//! host file nor block, and a bad path never reaches the sandbox.

use crate::support::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, ExitStatus, Stdio};
use std::time::{Duration, Instant};

struct Repl {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Repl {
    fn start() -> Self {
        let mut cmd = kiln();
        cmd.args(["repl", "--json"]);
        if std::env::var("KILN_TEST_SPAWNER").as_deref() != Ok("zygote") {
            cmd.arg("--no-zygote");
        }
        let mut child = cmd
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

    fn line(&mut self, line: &str) -> Value {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut out = String::new();
        self.stdout.read_line(&mut out).unwrap();
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("kiln repl printed no JSON ({e}): {out:?}"))
    }

    fn ok(&mut self, code: &str) -> Value {
        let v = self.line(&serde_json::to_string(code).unwrap());
        expect_outcome(&v, "ok");
        v
    }

    fn command(&mut self, command: Value) -> Value {
        self.line(&command.to_string())
    }

    fn write(&mut self, path: &str, data: &[u8]) -> Value {
        self.command(json!({"write_file": {"path": path, "data_b64": b64(data)}}))
    }

    fn read(&mut self, path: &str) -> Value {
        self.command(json!({"read_file": {"path": path}}))
    }

    fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        self.child.wait().unwrap()
    }
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[track_caller]
fn expect_ok(v: &Value) {
    assert_eq!(v["ok"], true, "file command failed: {v}");
}

#[track_caller]
fn expect_error(v: &Value, kind: &str) {
    assert_eq!(v["ok"], false, "file command succeeded: {v}");
    assert_eq!(v["error"]["kind"], kind, "{v}");
}

#[test]
fn upload_then_read_in_code_and_code_output_downloaded() {
    let mut r = Repl::start();
    let first = r.ok("x = 1");
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    expect_ok(&r.write("in/nested/data.bin", &data));
    expect_ok(&r.write("notes.txt", b"hello from the host"));
    let v = r.ok(
        "import hashlib, os, stat\n\
         d = open('in/nested/data.bin', 'rb').read()\n\
         print(len(d), hashlib.sha256(d).hexdigest())\n\
         print(open('notes.txt').read())\n\
         print(oct(stat.S_IMODE(os.stat('notes.txt').st_mode)), oct(stat.S_IMODE(os.stat('in/nested').st_mode)))",
    );
    let sha = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(&data))
    };
    assert_eq!(
        stdout(&v),
        format!("100000 {sha}\nhello from the host\n0o644 0o755\n")
    );

    r.ok("import os\nos.makedirs('results', exist_ok=True)\nopen('results/table.csv', 'w').write('a,b\\n1,2\\n')");
    let v = r.read("results/table.csv");
    expect_ok(&v);
    assert_eq!(v["size"], 8);
    assert_eq!(
        base64_decode(v["data_b64"].as_str().unwrap()),
        b"a,b\n1,2\n"
    );
    let v = r.command(json!({"list_files": {"path": "results"}}));
    expect_ok(&v);
    assert_eq!(
        v["entries"],
        json!([{"name": "table.csv", "kind": "file", "size": 8}])
    );
    let v = r.command(json!({"list_files": {}}));
    let names: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for name in ["in", "notes.txt", "out", "results"] {
        assert!(names.contains(&name), "{name} missing from {v}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with(".kiln")),
        "a temporary file was left: {v}"
    );
    // Overwriting replaces the whole file.
    expect_ok(&r.write("notes.txt", b"short"));
    assert_eq!(stdout(&r.ok("print(open('notes.txt').read())")), "short\n");
    assert!(r.finish().success());
    assert_nothing_left_by("", &first);
}

#[test]
fn planted_symlinks_and_fifos_are_refused_without_blocking() {
    let host = tempfile::tempdir().unwrap();
    let canary = host.path().join("canary.txt");
    let secret = format!("KILN-CANARY-{}", std::process::id());
    std::fs::write(&canary, &secret).unwrap();
    let mut r = Repl::start();
    let planted = r.ok(&format!(
        "import os\n\
         os.makedirs('/work/out', exist_ok=True)\n\
         os.symlink('/etc/passwd', '/work/out/leak')\n\
         os.symlink({canary:?}, '/work/out/canary')\n\
         os.symlink({dir:?}, '/work/hostdir')\n\
         os.symlink('/etc', '/work/etc')\n\
         os.mkfifo('/work/out/fifo')\n\
         os.mkfifo('/work/fifo2')",
        canary = canary.display().to_string(),
        dir = host.path().display().to_string(),
    ));
    let started = Instant::now();
    let mut answers = Vec::new();
    for path in ["out/leak", "out/canary", "out/fifo", "fifo2"] {
        let v = r.read(path);
        expect_error(&v, "not_regular");
        answers.push(v);
    }
    // A symlink in the middle of the path is not followed either.
    for path in ["hostdir/canary.txt", "etc/passwd", "etc/hostname"] {
        let v = r.read(path);
        expect_error(&v, "not_regular");
        answers.push(v);
    }
    for path in [
        "out/leak",
        "out/canary",
        "out/fifo",
        "hostdir/new.txt",
        "etc/x",
    ] {
        let v = r.write(path, b"overwritten");
        expect_error(&v, "not_regular");
        answers.push(v);
    }
    let v = r.command(json!({"list_files": {"path": "hostdir"}}));
    expect_error(&v, "not_regular");
    answers.push(v);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "file commands took {:?}",
        started.elapsed()
    );
    let listing = r.command(json!({"list_files": {"path": "out"}}));
    expect_ok(&listing);
    assert_eq!(
        listing["entries"],
        json!([
            {"name": "canary", "kind": "symlink", "size": 0},
            {"name": "fifo", "kind": "other", "size": 0},
            {"name": "leak", "kind": "symlink", "size": 0},
        ])
    );
    answers.push(listing);
    for v in &answers {
        let text = v.to_string();
        assert!(!text.contains(&secret), "the canary leaked: {text}");
        assert!(!text.contains("root:x:0:0"), "/etc/passwd leaked: {text}");
    }
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), secret);
    assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 1);
    // The session is unharmed.
    assert_eq!(stdout(&r.ok("print('alive')")), "alive\n");
    assert!(r.finish().success());
    assert_nothing_left_by("", &planted);
}

#[test]
fn bad_paths_are_refused_before_anything_is_sent() {
    let mut r = Repl::start();
    let first = r.ok("x = 1");
    for path in [
        "../etc/passwd",
        "/etc/passwd",
        "a/../../x",
        "a//b",
        "./a",
        "a/./b",
        "",
        "..",
        "a\0b",
    ] {
        for v in [r.read(path), r.write(path, b"x")] {
            expect_error(&v, "refused");
            // The supervisor's own wording: the runner never saw the path.
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.starts_with("path "), "{v}");
        }
    }
    expect_error(
        &r.command(json!({"list_files": {"path": "../.."}})),
        "refused",
    );
    expect_error(&r.read("missing.txt"), "not_found");
    expect_error(&r.read("no/such/dir.txt"), "not_found");
    expect_error(&r.read("out"), "not_regular");
    assert_eq!(stdout(&r.ok("print(x)")), "1\n");
    assert!(r.finish().success());
    assert_nothing_left_by("", &first);
}

#[test]
fn a_file_over_the_cap_is_refused() {
    let mut r = Repl::start();
    let first = r.ok("open('big.bin', 'wb').write(b'z' * 1000)");
    let v = r.command(json!({"read_file": {"path": "big.bin", "max_bytes": 999}}));
    expect_error(&v, "too_large");
    assert!(!v.to_string().contains("zzzz"), "{v}");
    let v = r.command(json!({"read_file": {"path": "big.bin", "max_bytes": 1000}}));
    expect_ok(&v);
    assert_eq!(v["size"], 1000);
    // A file that grows past the cap while it is read is caught too: the
    // runner reads one byte past it.
    r.ok("open('big.bin', 'ab').write(b'z')");
    let v = r.command(json!({"read_file": {"path": "big.bin", "max_bytes": 1000}}));
    expect_error(&v, "too_large");
    assert_eq!(stdout(&r.ok("print('alive')")), "alive\n");
    assert!(r.finish().success());
    assert_nothing_left_by("", &first);
}

#[test]
fn a_runner_that_does_not_answer_is_killed_after_the_timeout() {
    let mut r = Repl::start();
    // A thread of the code's takes the runner's channel lock once the
    // execution is over and never lets go: the runner cannot answer.
    let first = r.ok("import sys, threading, time\n\
         channel = type(sys.stdout.buffer).write.__globals__['CHANNEL']\n\
         def wedge():\n    time.sleep(0.5)\n    channel._lock.acquire()\n    time.sleep(3600)\n\
         threading.Thread(target=wedge, daemon=True).start()");
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let v = r.command(json!({"list_files": {}}));
    expect_error(&v, "session_ended");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{v}"
    );
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(20)).contains(&took),
        "answered after {took:?}"
    );
    // The repl ends with the session, and nothing of the sandbox remains.
    assert!(!r.finish().success());
    assert_nothing_left_by("", &first);
}
