//! `kiln serve --dev` as root, driven through the supervisor's unix socket
//! with JSON lines (the HTTP side is tested in crates/server): the
//! privilege split, ownership, quotas, a caller that goes away, and a
//! graceful shutdown that leaves nothing behind.

use crate::support::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

/// A running `kiln serve --dev` with its own socket and config.
struct Server {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        Self::start_with("")
    }

    /// With `extra` appended to the config.
    fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The front end (nobody) must reach the socket's directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("run/supervisor.sock");
        let config = dir.path().join("kiln.toml");
        let keys: String = [("alice", 1, 1), ("bob", 4, 4)]
            .iter()
            .map(|(id, sessions, conc)| {
                format!("[[server.keys]]\nid = \"{id}\"\nsha256 = \"{HASH}\"\nmax_sessions = {sessions}\nmax_concurrency = {conc}\n")
            })
            .collect();
        let toml = format!(
            "[server]\nsupervisor_socket = \"{}\"\npool_min = 1\npool_max = 2\n{keys}{extra}",
            socket.display()
        );
        std::fs::write(&config, toml).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = kiln()
            .arg("--config")
            .arg(&config)
            .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
            .spawn()
            .expect("spawn kiln serve");
        let server = Self {
            child,
            socket,
            _dir: dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.socket).is_ok() {
                let stats = self.last(json!({"cmd": "stats"}));
                assert_eq!(stats["reply"], "stats", "{stats}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("kiln serve did not open {}", self.socket.display());
    }

    /// Sends one command; the connection to read its replies from.
    fn send(&self, cmd: Value) -> BufReader<UnixStream> {
        let mut stream = UnixStream::connect(&self.socket).expect("connect");
        writeln!(stream, "{cmd}").unwrap();
        BufReader::new(stream)
    }

    /// Every reply of `cmd`, checking exactly one final reply, last, then
    /// the connection closed.
    fn call(&self, cmd: Value) -> Vec<Value> {
        replies(self.send(cmd))
    }

    fn last(&self, cmd: Value) -> Value {
        self.call(cmd).pop().unwrap()
    }

    fn create(&self, key: &str) -> Value {
        self.last(json!({"cmd": "create_session", "key": key, "options": {}}))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status (within a minute).
    fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "kiln serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    /// Shuts down gracefully (so no test leaves sandboxes for the next
    /// kiln to reap); killed only if that fails.
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && self.child.try_wait().is_ok_and(|s| s.is_none()) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replies(mut reader: BufReader<UnixStream>) -> Vec<Value> {
    let mut all = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        all.push(serde_json::from_str::<Value>(line.trim()).expect("a JSON reply line"));
        line.clear();
    }
    let finals = all.iter().filter(|r| r["reply"] != "event").count();
    assert_eq!(finals, 1, "exactly one final reply: {all:?}");
    assert_ne!(all.last().unwrap()["reply"], "event", "{all:?}");
    all
}

fn next_reply(reader: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[track_caller]
fn expect_error(reply: &Value, kind: &str) {
    assert_eq!(reply["reply"], "error", "{reply}");
    assert_eq!(reply["kind"], kind, "{reply}");
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// `Name:` line of /proc/<pid>/status.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Children of `pid`: (pid, command line).
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command's closing parenthesis: state, ppid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push((child, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

fn frontend_pid(server: &Server) -> u32 {
    children(server.pid())
        .into_iter()
        .find(|(_, cmd)| cmd.contains("--frontend"))
        .expect("a front-end process")
        .0
}

fn execute_in(session: &str, key: &str, code: &str) -> Value {
    json!({"cmd": "session_execute", "key": key, "session": session, "request": {"code": code}})
}

#[test]
fn the_front_end_runs_unprivileged() {
    let server = Server::start();
    assert_eq!(status_field(server.pid(), "Uid:"), "0 0 0 0");
    let frontend = frontend_pid(&server);
    assert_eq!(status_field(frontend, "Uid:"), "65534 65534 65534 65534");
    assert_eq!(status_field(frontend, "Gid:"), "65534 65534 65534 65534");
    assert_eq!(status_field(frontend, "Groups:"), "");
    assert_eq!(status_field(frontend, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(frontend, "CapPrm:"), "0000000000000000");
    assert_eq!(status_field(frontend, "NoNewPrivs:"), "1");
    let environ = std::fs::read(format!("/proc/{frontend}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("PATH="),
        "the front end starts with a clean environment"
    );
    let meta = std::fs::metadata(&server.socket).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 65534));
}

#[test]
fn sessions_belong_to_their_key_and_quotas_hold() {
    let server = Server::start();
    let created = server.create("alice");
    let id = created["session"]["id"]
        .as_str()
        .expect("a session")
        .to_string();

    // Events first, then exactly one final result.
    let all = server.call(execute_in(&id, "alice", "x = 41\nprint(x + 1)"));
    assert_eq!(all[0]["reply"], "event");
    assert_eq!(all[0]["event"], json!({"type": "stdout", "text": "42\n"}));
    let result = &all.last().unwrap()["result"];
    expect_outcome(result, "ok");

    // To bob, alice's session does not exist.
    for cmd in [
        json!({"cmd": "get_session", "key": "bob", "session": id}),
        execute_in(&id, "bob", "print(x)"),
        json!({"cmd": "close_session", "key": "bob", "session": id}),
    ] {
        expect_error(&server.last(cmd), "not_found");
    }
    let listed = server.last(json!({"cmd": "list_sessions", "key": "bob"}));
    assert_eq!(listed["sessions"], json!([]));

    // Files of the session: alice's to write and read, not bob's; a
    // planted symlink is refused, not followed.
    let write = json!({"cmd": "write_file", "key": "alice", "session": id,
                       "path": "in/a.csv", "data_b64": "YSwxCg=="});
    assert_eq!(server.last(write)["reply"], "ok");
    let read = |key: &str, path: &str| {
        server.last(json!({"cmd": "read_file", "key": key, "session": id, "path": path}))
    };
    assert_eq!(read("alice", "in/a.csv")["data_b64"], "YSwxCg==");
    expect_error(&read("bob", "in/a.csv"), "not_found");
    let plant = server.last(execute_in(
        &id,
        "alice",
        "import os\nos.symlink('/etc/passwd', 'link')",
    ));
    expect_outcome(&plant["result"], "ok");
    expect_error(&read("alice", "link"), "bad_request");

    // alice holds one session and runs one execution at once.
    expect_error(&server.create("alice"), "too_many");
    let mut running = server.send(execute_in(
        &id,
        "alice",
        "import time\nprint('started', flush=True)\ntime.sleep(1)",
    ));
    assert_eq!(next_reply(&mut running)["event"]["text"], "started\n");
    let oneshot = json!({"cmd": "execute", "key": "alice", "request": {"code": "print(1)"}});
    expect_error(&server.last(oneshot.clone()), "too_many");
    expect_outcome(&replies(running).pop().unwrap()["result"], "ok");
    let pooled = server.last(oneshot);
    expect_outcome(&pooled["result"], "ok");

    // Policy says no before anything runs; a malformed line is answered.
    let greedy = json!({"cmd": "execute", "key": "bob", "request": {"code": "print(1)"},
                        "limits": {"memory_mib": 1_000_000}});
    expect_error(&server.last(greedy), "rejected");
    let mut raw = UnixStream::connect(&server.socket).unwrap();
    raw.write_all(b"{not json\n").unwrap();
    expect_error(&replies(BufReader::new(raw))[0], "bad_request");
}

#[test]
fn a_caller_that_goes_away_interrupts_its_execution() {
    let server = Server::start();
    let id = server.create("bob")["session"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut running = server.send(execute_in(
        &id,
        "bob",
        "import time\nx = 7\nprint('started', flush=True)\ntime.sleep(60)",
    ));
    assert_eq!(next_reply(&mut running)["event"]["text"], "started\n");
    let gone = Instant::now();
    drop(running);
    let get = json!({"cmd": "get_session", "key": "bob", "session": id});
    while server.last(get.clone())["session"]["executing"] == true {
        assert!(gone.elapsed() < Duration::from_secs(10), "still executing");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Interrupted, not killed: the session and its state live on.
    let after = server.last(execute_in(&id, "bob", "print(x)"));
    expect_outcome(&after["result"], "ok");
    assert_eq!(stdout(&after["result"]), "7\n");
}

#[test]
fn sigterm_lets_executions_finish_then_leaves_nothing() {
    let mut server = Server::start();
    let session = server.create("bob")["session"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let warm = server.last(execute_in(&session, "bob", "print('warm')"));
    let frontend = frontend_pid(&server);
    let helpers: Vec<u32> = children(server.pid()).into_iter().map(|c| c.0).collect();
    let mut running = server.send(json!({"cmd": "execute", "key": "bob", "request": {
        "code": "import time\nprint('a', flush=True)\ntime.sleep(1)\nprint('done')"}}));
    assert_eq!(next_reply(&mut running)["event"]["text"], "a\n");

    let status = server.terminate();
    assert!(status.success(), "kiln serve exited with {status}");
    // The execution in flight finished and was answered.
    let finished = replies(running).pop().unwrap();
    expect_outcome(&finished["result"], "ok");
    assert!(stdout(&finished["result"]).contains("done"));

    assert!(!server.socket.exists(), "socket file left behind");
    for pid in helpers.iter().chain([&frontend]) {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|s| !s.contains("State:\tZ"));
        assert!(!alive, "process {pid} outlived kiln serve");
    }
    assert_nothing_left_by("serve", &warm["result"]);
    assert_nothing_left_by("serve", &finished["result"]);
    let mark = format!("-{}-", server.pid());
    let cgroups: Vec<_> = sandbox_cgroups()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&mark))
        .collect();
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
}

#[test]
fn an_execution_in_an_egress_environment_reaches_the_allowed_name_through_the_supervisors_proxy() {
    let http = crate::egress::Server::start("served to kiln serve");
    let audit = tempfile::NamedTempFile::new().unwrap();
    let extra = format!(
        "[environments.web]\ndeny_modules = {{}}\n[environments.web.egress]\nallow = [\"allowed.test\"]\nresolve = {{ \"allowed.test\" = \"127.0.0.1\" }}\nallow_private = true\naudit_log = {:?}\n",
        audit.path().display().to_string()
    );
    let mut server = Server::start_with(&extra);
    let code = format!(
        "import urllib.request\nprint(urllib.request.urlopen('http://allowed.test:{}/', timeout=20).read().decode())",
        http.port
    );
    let run = |environment: Option<&str>| {
        server.last(json!({"cmd": "execute", "key": "bob", "request": {"code": code}, "environment": environment}))
    };
    let reply = run(Some("web"));
    assert_eq!(reply["result"]["outcome"], "ok", "{reply}");
    assert_eq!(
        stdout(&reply["result"]),
        "served to kiln serve\n",
        "{reply}"
    );
    assert_eq!(http.requests().len(), 1);
    // The default environment: no network, refused before it runs.
    expect_error(&run(None), "rejected");
    let audit_text = std::fs::read_to_string(audit.path()).unwrap();
    assert_eq!(audit_text.lines().count(), 1, "{audit_text}");
    assert!(
        audit_text.contains("\"verdict\":\"allowed\""),
        "{audit_text}"
    );
    // The proxy process: a child of the supervisor under its own uid (just
    // below the zygote template's), with no capability.
    let proxy_uid = (1_879_048_192u32 - 2).to_string();
    let proxy = children(server.pid())
        .into_iter()
        .find(|(child, _)| {
            status_field(*child, "Uid:")
                .split_whitespace()
                .all(|u| u == proxy_uid)
        })
        .unwrap_or_else(|| {
            panic!(
                "no child of the supervisor runs as {proxy_uid}: {:?}",
                children(server.pid())
            )
        });
    assert_eq!(status_field(proxy.0, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(proxy.0, "NoNewPrivs:"), "1");
    let pid = server.pid();
    assert!(server.terminate().success());
    assert!(
        !std::path::Path::new(&format!("/proc/{}", proxy.0)).exists(),
        "the proxy outlived kiln serve"
    );
    let run_dir = std::path::Path::new("/run/kiln").join(format!("egress-{pid}"));
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
}
