//! `kiln serve` end to end over real HTTP on loopback: every endpoint, SSE
//! event order, keys and quotas, body and path checks, a symlink and a FIFO
//! planted by sandboxed code, a client that leaves an SSE stream, and a
//! SIGTERM that leaves nothing behind.
//!
//! The client is plain HTTP/1.1 over `TcpStream` (one request per
//! connection): the exact request line is what the server sees, so `..`
//! reaches it unnormalized, and an SSE stream can be read partway and then
//! dropped. Read-only tests share one `--dev` server; tests that need other
//! settings or kill the server start their own.

use crate::support::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Longest any single HTTP exchange may take in these tests.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The server.

/// A running `kiln serve` on 127.0.0.1 with its own socket and config.
struct Server {
    child: Child,
    port: u16,
    socket: PathBuf,
    dir: tempfile::TempDir,
    /// Sent when a call names no key.
    key: Option<String>,
}

impl Server {
    /// `kiln serve --dev` with a small pool.
    fn dev() -> Self {
        Self::start("", true)
    }

    /// `kiln --config <dir>/kiln.toml serve [--dev]`; `server_extra` is
    /// appended inside `[server]` (more settings, then `[[server.keys]]`).
    fn start(server_extra: &str, dev: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The front end (nobody) must reach the socket's directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("run/supervisor.sock");
        let config = dir.path().join("kiln.toml");
        let toml = format!(
            "[server]\nsupervisor_socket = \"{}\"\npool_min = 1\npool_max = 2\n{server_extra}",
            socket.display()
        );
        std::fs::write(&config, toml).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = kiln();
        cmd.arg("--config")
            .arg(&config)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null());
        if dev {
            cmd.arg("--dev");
        }
        let child = cmd.spawn().expect("spawn kiln serve");
        let mut server = Self {
            child,
            port,
            socket,
            dir,
            key: None,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("kiln serve exited with {status} before it was ready");
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.get("/v1/ready", None).status == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("kiln serve on port {} never became ready", self.port);
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let key = key.or(self.key.as_deref());
        http(self.port, method, path, key, extra, body)
    }

    fn get(&self, path: &str, key: Option<&str>) -> Response {
        self.send("GET", path, key, &[], b"")
    }

    fn post_json(&self, path: &str, key: Option<&str>, body: &Value) -> Response {
        let body = body.to_string();
        self.send(
            "POST",
            path,
            key,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// `POST` with `Accept: text/event-stream`, read to the end: the
    /// response and its events.
    fn post_sse(&self, path: &str, body: &Value) -> (Response, Vec<(String, Value)>) {
        let body = body.to_string();
        let response = self.send(
            "POST",
            path,
            None,
            &[
                ("Content-Type", "application/json"),
                ("Accept", "text/event-stream"),
            ],
            body.as_bytes(),
        );
        let events = sse_events(&response.text());
        (response, events)
    }

    /// A new session of the dev key: its id.
    fn session(&self) -> String {
        let created = self.post_json("/v1/sessions", None, &json!({}));
        assert_eq!(created.status, 201, "{}", created.text());
        created.json()["id"]
            .as_str()
            .expect("a session id")
            .to_string()
    }

    #[track_caller]
    fn execute_in(&self, session: &str, code: &str) -> Value {
        let response = self.post_json(
            &format!("/v1/sessions/{session}/executions"),
            None,
            &json!({ "code": code }),
        );
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()
    }

    /// SIGTERM, then the exit status (within a minute).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
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
    /// Shuts down gracefully (so no test leaves sandboxes behind); killed
    /// only if that fails.
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline && self.child.try_wait().is_ok_and(|s| s.is_none()) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server the tests that do not stop it share: `--dev`, and a key all
/// its calls send (the dev key's quotas are too small for the tests running
/// at once). Statics are never dropped, so a watchdog shell (its stdin a
/// pipe this process holds) sends it SIGTERM when this process exits,
/// however it exits, and waits for it (a minute at most) before removing
/// its directory.
fn shared() -> &'static Server {
    static SHARED: OnceLock<(Server, Mutex<(Child, ChildStdin)>)> = OnceLock::new();
    let (server, _watchdog) = SHARED.get_or_init(|| {
        let secret = random_secret();
        let key = format!(
            "[[server.keys]]\nid = \"shared\"\nsha256 = \"{}\"\nmax_sessions = 32\nmax_concurrency = 32\nrequests_per_minute = 100000\n",
            sha256_hex(&secret)
        );
        let mut server = Server::start(&key, true);
        server.key = Some(secret);
        let script = format!(
            "read _ignored; kill -TERM {pid}; i=0; \
             while [ $i -lt 600 ] && [ -e /proc/{pid} ] && ! grep -q '^State:.*Z' /proc/{pid}/status 2>/dev/null; \
             do sleep 0.1; i=$((i + 1)); done; rm -rf '{dir}'",
            pid = server.pid(),
            dir = server.dir.path().display()
        );
        let mut watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the watchdog shell");
        let stdin = watchdog.stdin.take().unwrap();
        (server, Mutex::new((watchdog, stdin)))
    });
    server
}

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 client.

struct Response {
    status: u16,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }

    /// The API's error kind.
    fn error_kind(&self) -> String {
        self.json()["error"]["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("no error kind: {}", self.text()))
            .to_string()
    }
}

/// Connects and writes one request (`Connection: close`).
fn send_request(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to kiln serve");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(key) = key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A server refusing a body it will not read may close first: its answer
    // is still there to read.
    let _ = stream.write_all(body);
    stream
}

/// Status line and headers; the reader is left at the body.
fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').expect("a header line");
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    (status, headers)
}

/// Undoes `Transfer-Encoding: chunked`.
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size_line = std::str::from_utf8(&rest[..end]).unwrap();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
        rest = &rest[end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn http(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let stream = send_request(port, method, path, key, extra, body);
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw).expect("the body");
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(&raw) } else { raw };
    Response {
        status,
        headers,
        body,
    }
}

/// (event name, data) of each SSE event; keep-alive comments left out.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = Some(n.trim().to_string());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data = Some(d.trim().to_string());
                }
            }
            let data = serde_json::from_str(&data?).expect("SSE data is JSON");
            Some((name?, data))
        })
        .collect()
}

/// A `multipart/form-data` body: (content type, bytes).
fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "kiln-test-boundary-5c1e";
    let mut body = Vec::new();
    for (name, data) in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Checks a PNG's structure: signature, every chunk's CRC, an IHDR with a
/// size, image data, IEND last. Returns (width, height).
fn check_png(png: &[u8]) -> (u32, u32) {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let mut at = 8;
    let mut kinds = Vec::new();
    let mut size = (0, 0);
    while at < png.len() {
        let len = be(&png[at..]) as usize;
        let kind = &png[at + 4..at + 8];
        let data = &png[at + 8..at + 8 + len];
        let crc = be(&png[at + 8 + len..]);
        assert_eq!(crc, crc32(&png[at + 4..at + 8 + len]), "bad CRC");
        if kind == b"IHDR" {
            size = (be(data), be(&data[4..]));
        }
        kinds.push(String::from_utf8_lossy(kind).into_owned());
        at += 12 + len;
    }
    assert_eq!(at, png.len(), "trailing bytes");
    assert_eq!(kinds.first().map(String::as_str), Some("IHDR"));
    assert_eq!(kinds.last().map(String::as_str), Some("IEND"));
    assert!(kinds.iter().any(|k| k == "IDAT"), "{kinds:?}");
    assert!(size.0 > 0 && size.1 > 0);
    size
}

fn wait_not_executing(server: &Server, session: &str, within: Duration) {
    let start = Instant::now();
    loop {
        let got = server.get(&format!("/v1/sessions/{session}"), None);
        assert_eq!(got.status, 200, "{}", got.text());
        if got.json()["executing"] == false {
            return;
        }
        assert!(
            start.elapsed() < within,
            "session {session} still executing after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_executing(server: &Server, session: &str) {
    let start = Instant::now();
    while server.get(&format!("/v1/sessions/{session}"), None).json()["executing"] != true {
        assert!(start.elapsed() < Duration::from_secs(20), "never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn info_endpoints_answer() {
    let server = shared();
    let health = server.get("/v1/health", None);
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok"}))
    );
    let ready = server.get("/v1/ready", None);
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (200, json!("ready"))
    );

    let policy = server.get("/v1/policy", None);
    assert_eq!(policy.status, 200, "{}", policy.text());
    let policy = policy.json();
    assert!(policy["limits"]["wall_ms"].as_u64().is_some(), "{policy}");
    assert!(
        policy["ceilings"]["memory_mib"].as_u64().is_some(),
        "{policy}"
    );

    let envs = server.get("/v1/environments", None);
    assert_eq!(envs.status, 200, "{}", envs.text());
    let envs = envs.json();
    let list = envs["environments"]
        .as_array()
        .expect("a list of environments");
    assert!(!list.is_empty(), "{envs}");
    assert!(list[0]["name"].is_string(), "{envs}");

    let metrics = server.get("/metrics", None);
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text();
    let kiln_lines = text.lines().filter(|l| l.starts_with("kiln_")).count();
    assert!(kiln_lines > 0, "no kiln_ samples:\n{text}");
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.starts_with("kiln_"),
            "a metric not named kiln_: {line}"
        );
    }
    assert!(text.contains("kiln_pool"), "no pool gauge:\n{text}");

    let openapi = server.get("/v1/openapi.json", None);
    assert_eq!(openapi.status, 200);
    let doc = openapi.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/execute",
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/executions",
        "/v1/sessions/{id}/interrupt",
        "/v1/sessions/{id}/keepalive",
        "/v1/sessions/{id}/files",
        "/v1/policy",
        "/v1/environments",
        "/v1/health",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from the OpenAPI document"
        );
    }

    let unknown = server.get("/v1/nope", None);
    assert_eq!(unknown.status, 404);
}

#[test]
fn one_shot_execute_as_json_and_as_sse_with_a_chart() {
    let server = shared();
    // JSON, with an input file.
    let response = server.post_json(
        "/v1/execute",
        None,
        &json!({
            "code": "print(open('in/a.txt').read(), end='')\nimport sys\nprint('w', file=sys.stderr)",
            "files": [{"path": "in/a.txt", "data_b64": "aGVsbG8K"}],
        }),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let result = response.json();
    expect_outcome(&result, "ok");
    assert_eq!(stdout(&result), "hello\n");
    assert_eq!(stream(&result, "stderr"), "w\n");

    // SSE: stdout as it comes, the chart as a display event, `end` last
    // with the whole result.
    let code = "import matplotlib.pyplot as plt\nprint('one', flush=True)\nplt.plot([1, 2, 3], [2, 4, 6])\nplt.show()\nprint('two')";
    let (response, events) = server.post_sse("/v1/execute", &json!({ "code": code }));
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"end"), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "end").count(),
        1,
        "{names:?}"
    );
    let at = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("no {name} event: {names:?}"))
    };
    assert!(at("stdout") < at("display"), "{names:?}");
    let stdout_text: String = events
        .iter()
        .filter(|(n, _)| n == "stdout")
        .map(|(_, d)| d["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stdout_text, "one\ntwo\n");
    let (_, display) = &events[at("display")];
    assert_eq!(display["type"], "display");
    let png = base64_decode(display["data"]["image/png"].as_str().expect("a PNG"));
    let (width, height) = check_png(&png);
    assert!(width >= 100 && height >= 100, "{width}x{height}");
    // And it decodes, pixels and all (Pillow, in a sandbox of its own).
    let decoded = server.post_json(
        "/v1/execute",
        None,
        &json!({
            "code": "from PIL import Image\nim = Image.open('chart.png')\nim.load()\nprint(*im.size, len(im.getcolors(1 << 24)) > 2)",
            "files": [{"path": "chart.png", "data_b64": display["data"]["image/png"]}],
        }),
    );
    assert_eq!(
        stdout(&decoded.json()),
        format!("{width} {height} True\n"),
        "{}",
        decoded.text()
    );
    let (_, end) = events.last().unwrap();
    expect_outcome(end, "ok");
    assert_eq!(events.len() - 1, end["events"].as_array().unwrap().len());

    // An error before any event keeps its status; limits above the
    // ceilings are refused.
    let bad = server.post_json("/v1/execute", None, &json!({"code": 1}));
    assert_eq!(
        (bad.status, bad.error_kind().as_str()),
        (400, "bad_request")
    );
    let greedy = server.post_json(
        "/v1/execute",
        None,
        &json!({"code": "print(1)", "limits": {"memory_mib": 10_000_000}}),
    );
    assert_eq!(
        (greedy.status, greedy.error_kind().as_str()),
        (422, "rejected")
    );
}

#[test]
fn sessions_executions_keepalive_interrupt_and_files() {
    let server = shared();
    let id = server.session();
    let path = format!("/v1/sessions/{id}");

    let got = server.get(&path, None);
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["id"], id.as_str());
    assert_eq!(got.json()["executing"], false);
    let listed = server.get("/v1/sessions", None).json();
    assert!(
        listed["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str()),
        "{listed}"
    );
    let kept = server.send("POST", &format!("{path}/keepalive"), None, &[], b"");
    assert_eq!(kept.status, 200, "{}", kept.text());
    assert_eq!(kept.json()["id"], id.as_str());

    // State carries over, as JSON and as SSE.
    let first = server.execute_in(&id, "x = 41");
    expect_outcome(&first, "ok");
    let (response, events) = server.post_sse(
        &format!("{path}/executions"),
        &json!({"code": "print(x + 1)\nx + 1"}),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["stdout", "display", "end"]);
    assert_eq!(events[0].1, json!({"type": "stdout", "text": "42\n"}));
    expect_outcome(&events[2].1, "ok");
    assert_eq!(server.get(&path, None).json()["executions"], 2);

    // Interrupt: the running execution ends `interrupted`, the session lives.
    let running = {
        let id = id.clone();
        let port = server.port;
        let key = server.key.clone();
        std::thread::spawn(move || {
            let body = json!({"code": "import time\ny = 1\ntime.sleep(30)"}).to_string();
            http(
                port,
                "POST",
                &format!("/v1/sessions/{id}/executions"),
                key.as_deref(),
                &[],
                body.as_bytes(),
            )
        })
    };
    wait_executing(server, &id);
    let busy = server.post_json(&format!("{path}/executions"), None, &json!({"code": "1"}));
    assert_eq!((busy.status, busy.error_kind().as_str()), (409, "busy"));
    let asked = Instant::now();
    let interrupt = server.send("POST", &format!("{path}/interrupt"), None, &[], b"");
    assert_eq!(interrupt.status, 202, "{}", interrupt.text());
    let ended = running.join().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(10));
    assert_eq!(ended.status, 200, "{}", ended.text());
    expect_outcome(&ended.json(), "interrupted");
    assert_eq!(stdout(&server.execute_in(&id, "print(x, y)")), "41 1\n");

    // Files: raw PUT, multipart POST, GET, listings.
    let put = server.send(
        "PUT",
        &format!("{path}/files/in/data.csv"),
        None,
        &[],
        b"a,b\n1,2\n",
    );
    assert_eq!(put.status, 204, "{}", put.text());
    let (content_type, body) = multipart(&[("up/one.txt", b"one"), ("two.bin", &[0u8, 159, 255])]);
    let posted = server.send(
        "POST",
        &format!("{path}/files"),
        None,
        &[("Content-Type", &content_type)],
        &body,
    );
    assert_eq!(posted.status, 201, "{}", posted.text());
    assert_eq!(
        posted.json()["files"],
        json!([{"path": "up/one.txt", "size": 3}, {"path": "two.bin", "size": 3}])
    );
    let read = server.get(&format!("{path}/files/in/data.csv"), None);
    assert_eq!(
        (read.status, read.body.as_slice()),
        (200, &b"a,b\n1,2\n"[..])
    );
    let read = server.get(&format!("{path}/files/two.bin"), None);
    assert_eq!(read.body, [0u8, 159, 255]);
    // The code sees them, and what it writes can be downloaded.
    let seen = server.execute_in(
        &id,
        "import pandas as pd\nprint(pd.read_csv('in/data.csv')['b'].sum(), open('up/one.txt').read())\nopen('out.txt', 'w').write('made in the sandbox')",
    );
    assert_eq!(stdout(&seen), "2 one\n", "{seen}");
    let made = server.get(&format!("{path}/files/out.txt"), None);
    assert_eq!(made.text(), "made in the sandbox");
    let root = server.get(&format!("{path}/files"), None);
    assert_eq!(root.status, 200, "{}", root.text());
    let entries = root.json()["entries"].clone();
    let kind_of = |name: &str| {
        entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["kind"].as_str().unwrap().to_string())
    };
    assert_eq!(kind_of("in").as_deref(), Some("dir"), "{entries}");
    assert_eq!(kind_of("out.txt").as_deref(), Some("file"), "{entries}");
    let sub = server.get(&format!("{path}/files?dir=in"), None);
    assert_eq!(
        sub.json()["entries"][0]["name"],
        "data.csv",
        "{}",
        sub.text()
    );
    let missing = server.get(&format!("{path}/files/nope.txt"), None);
    assert!(
        missing.status == 404 || missing.status == 400,
        "{}",
        missing.text()
    );

    // Closed: gone for every route.
    let closed = server.send("DELETE", &path, None, &[], b"");
    assert_eq!(closed.status, 204, "{}", closed.text());
    let gone = server.get(&path, None);
    assert_eq!(
        (gone.status, gone.error_kind().as_str()),
        (404, "not_found")
    );
    let gone = server.post_json(&format!("{path}/executions"), None, &json!({"code": "1"}));
    assert_eq!(gone.status, 404);
    let gone = server.get(&format!("{path}/files/in/data.csv"), None);
    assert_eq!(gone.status, 404);
}

#[test]
fn unsafe_paths_are_refused_with_400() {
    let server = shared();
    let id = server.session();
    let files = format!("/v1/sessions/{id}/files");
    let paths = [
        "../etc/passwd",
        "in/../../etc/passwd",
        "..",
        "%2e%2e/etc/passwd",
        "%2E%2E%2Fetc%2Fpasswd",
        "in/%2e%2e/%2e%2e/x",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "./x",
    ];
    for p in paths {
        let put = server.send("PUT", &format!("{files}/{p}"), None, &[], b"x");
        assert_eq!(put.status, 400, "PUT {p}: {}", put.text());
        assert_eq!(put.error_kind(), "bad_request");
        let get = server.get(&format!("{files}/{p}"), None);
        assert_eq!(get.status, 400, "GET {p}: {}", get.text());
    }
    for dir in ["..", "%2e%2e", "/etc", "%2Fetc", "in/../.."] {
        let list = server.get(&format!("{files}?dir={dir}"), None);
        assert_eq!(list.status, 400, "list {dir}: {}", list.text());
    }
    let (content_type, body) = multipart(&[("ok.txt", b"1"), ("../escape.txt", b"2")]);
    let posted = server.send(
        "POST",
        &files,
        None,
        &[("Content-Type", &content_type)],
        &body,
    );
    assert_eq!(posted.status, 400, "{}", posted.text());
    // Every path is checked before any file is written.
    let listing = server.get(&files, None).json();
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(!names.contains(&"ok.txt"), "{listing}");
    for bad in ["../x", "/abs", "a/../../x"] {
        let files = json!([{"path": bad, "data_b64": "eA=="}]);
        let one_shot = server.post_json("/v1/execute", None, &json!({"code": "1", "files": files}));
        assert_eq!(one_shot.status, 400, "{bad}: {}", one_shot.text());
        let created = server.post_json("/v1/sessions", None, &json!({"files": files}));
        assert_eq!(created.status, 400, "{bad}: {}", created.text());
        let in_session = server.post_json(
            &format!("/v1/sessions/{id}/executions"),
            None,
            &json!({"code": "1", "files": files}),
        );
        assert_eq!(in_session.status, 400, "{bad}: {}", in_session.text());
    }
    assert_eq!(
        server
            .send("DELETE", &format!("/v1/sessions/{id}"), None, &[], b"")
            .status,
        204
    );
}

#[test]
fn planted_symlinks_and_fifos_are_never_followed() {
    let server = shared();
    let dir = tempfile::Builder::new()
        .prefix("kiln-canary")
        .tempdir_in("/tmp")
        .unwrap();
    // Readable by anyone, so only kiln's refusal keeps it out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let canary = dir.path().join("canary.txt");
    const SECRET: &str = "CANARY-HTTP-3e9a";
    std::fs::write(&canary, SECRET).unwrap();
    std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o644)).unwrap();

    let id = server.session();
    let files = format!("/v1/sessions/{id}/files");
    let code = format!(
        "import os\nos.symlink({c:?}, '/work/leak')\nos.symlink({d:?}, '/work/dirlink')\nos.mkfifo('/work/fifo')\nos.mkdir('/work/sub')\nos.symlink('/etc/shadow', '/work/sub/shadow')\nprint('planted')",
        c = canary.display().to_string(),
        d = dir.path().display().to_string()
    );
    let planted = server.execute_in(&id, &code);
    assert_eq!(stdout(&planted), "planted\n", "{planted}");

    let mut answers = Vec::new();
    for p in [
        "leak",
        "fifo",
        "dirlink/canary.txt",
        "sub/shadow",
        "dirlink",
    ] {
        let start = Instant::now();
        let got = server.get(&format!("{files}/{p}"), None);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "GET {p} took {:?}",
            start.elapsed()
        );
        assert!(
            (400..500).contains(&got.status),
            "GET {p} was answered {}: {}",
            got.status,
            got.text()
        );
        answers.push(got.text());
        // Writing through them is refused too.
        let put = server.send("PUT", &format!("{files}/{p}"), None, &[], b"overwritten");
        assert!(
            (400..500).contains(&put.status),
            "PUT {p}: {} {}",
            put.status,
            put.text()
        );
        answers.push(put.text());
    }
    let listed = server.get(&format!("{files}?dir=dirlink"), None);
    assert!((400..500).contains(&listed.status), "{}", listed.text());
    answers.push(listed.text());
    let root = server.get(&files, None);
    assert_eq!(root.status, 200, "{}", root.text());
    let kinds: Vec<(String, String)> = root.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (name, kind) in [
        ("leak", "symlink"),
        ("dirlink", "symlink"),
        ("fifo", "other"),
    ] {
        assert!(kinds.contains(&(name.into(), kind.into())), "{kinds:?}");
    }
    answers.push(root.text());
    for answer in &answers {
        assert!(!answer.contains(SECRET), "canary content crossed: {answer}");
        assert!(
            !answer.contains("root:"),
            "host file content crossed: {answer}"
        );
    }
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), SECRET);
    // The session is unharmed.
    assert_eq!(
        stdout(&server.execute_in(&id, "print(os.path.islink('leak'))")),
        "True\n"
    );
    assert_eq!(
        server
            .send("DELETE", &format!("/v1/sessions/{id}"), None, &[], b"")
            .status,
        204
    );
}

#[test]
fn leaving_an_sse_stream_interrupts_its_execution() {
    let server = shared();
    let id = server.session();
    let body =
        json!({"code": "import time\nx = 7\nprint('started', flush=True)\ntime.sleep(30)\nx = 8"})
            .to_string();
    let stream = send_request(
        server.port,
        "POST",
        &format!("/v1/sessions/{id}/executions"),
        server.key.as_deref(),
        &[
            ("Content-Type", "application/json"),
            ("Accept", "text/event-stream"),
        ],
        body.as_bytes(),
    );
    let mut reader = BufReader::new(stream);
    let (status, _) = read_head(&mut reader);
    assert_eq!(status, 200);
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("started") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended: {seen}"
        );
        seen.push_str(&line);
    }
    assert!(!seen.contains("event: end"), "{seen}");
    assert_eq!(
        server.get(&format!("/v1/sessions/{id}"), None).json()["executing"],
        true
    );
    drop(reader);

    // Interrupted within a few seconds (not after the 30 s sleep), and the
    // session keeps its state.
    wait_not_executing(server, &id, Duration::from_secs(10));
    let after = server.execute_in(&id, "print(x)");
    expect_outcome(&after, "ok");
    assert_eq!(stdout(&after), "7\n");
    assert_eq!(
        server
            .send("DELETE", &format!("/v1/sessions/{id}"), None, &[], b"")
            .status,
        204
    );
}

#[test]
fn keys_quotas_and_body_limits() {
    let secret_a = random_secret();
    let secret_b = random_secret();
    let keys = format!(
        "max_body_bytes = 4096\n\
         [[server.keys]]\nid = \"key-a\"\nsha256 = \"{}\"\nmax_sessions = 1\nmax_concurrency = 2\n\
         [[server.keys]]\nid = \"key-b\"\nsha256 = \"{}\"\nmax_sessions = 2\nmax_concurrency = 2\n",
        sha256_hex(&secret_a),
        sha256_hex(&secret_b)
    );
    let server = Server::start(&keys, false);
    let (a, b) = (Some(secret_a.as_str()), Some(secret_b.as_str()));

    // No key, a wrong key, a malformed header: 401. Health needs none.
    assert_eq!(server.get("/v1/health", None).status, 200);
    let code = json!({"code": "print(1)"});
    for key in [None, Some("wrong"), Some("")] {
        let listed = server.get("/v1/sessions", key);
        assert_eq!(listed.status, 401, "{key:?}: {}", listed.text());
        assert_eq!(listed.error_kind(), "unauthorized");
        let run = server.post_json("/v1/execute", key, &code);
        assert_eq!(run.status, 401, "{key:?}");
        assert_eq!(server.get("/v1/policy", key).status, 401);
    }
    let basic = server.send(
        "GET",
        "/v1/sessions",
        None,
        &[("Authorization", &format!("Basic {secret_a}"))],
        b"",
    );
    assert_eq!(basic.status, 401);
    let ran = server.post_json("/v1/execute", a, &code);
    assert_eq!(ran.status, 200, "{}", ran.text());
    assert_eq!(stdout(&ran.json()), "1\n");

    // A's session does not exist for B.
    let created = server.post_json("/v1/sessions", a, &json!({}));
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let path = format!("/v1/sessions/{id}");
    assert_eq!(server.get(&path, a).status, 200);
    assert_eq!(
        server
            .send("PUT", &format!("{path}/files/a.txt"), a, &[], b"A's")
            .status,
        204
    );
    let as_b = [
        server.get(&path, b),
        server.post_json(&format!("{path}/executions"), b, &code),
        server.send("POST", &format!("{path}/keepalive"), b, &[], b""),
        server.send("POST", &format!("{path}/interrupt"), b, &[], b""),
        server.get(&format!("{path}/files/a.txt"), b),
        server.get(&format!("{path}/files"), b),
        server.send("PUT", &format!("{path}/files/b.txt"), b, &[], b"B's"),
        server.send("DELETE", &path, b, &[], b""),
    ];
    for response in as_b {
        assert_eq!(response.status, 404, "{}", response.text());
        assert_eq!(response.error_kind(), "not_found");
    }
    assert_eq!(server.get("/v1/sessions", b).json()["sessions"], json!([]));
    assert_eq!(server.get(&format!("{path}/files/a.txt"), a).text(), "A's");

    // A holds its one session: the next is 429 with Retry-After.
    let second = server.post_json("/v1/sessions", a, &json!({}));
    assert_eq!(second.status, 429, "{}", second.text());
    assert_eq!(second.error_kind(), "too_many");
    let retry: u64 = second
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // B's quota is its own.
    assert_eq!(server.post_json("/v1/sessions", b, &json!({})).status, 201);

    // Bodies over max_body_bytes: 413, for JSON and raw uploads alike.
    let big = "x".repeat(8192);
    let too_big = server.post_json("/v1/execute", a, &json!({ "code": format!("# {big}") }));
    assert_eq!(too_big.status, 413, "{}", too_big.text());
    assert_eq!(too_big.error_kind(), "too_large");
    let too_big = server.send(
        "PUT",
        &format!("{path}/files/big.txt"),
        a,
        &[],
        big.as_bytes(),
    );
    assert_eq!(too_big.status, 413, "{}", too_big.text());
    let (content_type, body) = multipart(&[("big.txt", big.as_bytes())]);
    let too_big = server.send(
        "POST",
        &format!("{path}/files"),
        a,
        &[("Content-Type", &content_type)],
        &body,
    );
    assert_eq!(too_big.status, 413, "{}", too_big.text());
    // Within it, fine.
    assert_eq!(
        server
            .send(
                "PUT",
                &format!("{path}/files/small.txt"),
                a,
                &[],
                &big.as_bytes()[..1000]
            )
            .status,
        204
    );

    let metrics = server.get("/metrics", None).text();
    assert!(metrics.contains("kiln_"), "{metrics}");
    assert!(!metrics.contains(&secret_a) && !metrics.contains(&secret_b));
    assert_eq!(server.send("DELETE", &path, a, &[], b"").status, 204);
    assert_eq!(server.post_json("/v1/sessions", a, &json!({})).status, 201);
}

#[test]
fn sigterm_finishes_requests_in_flight_then_leaves_nothing() {
    let mut server = Server::dev();
    let id = server.session();
    let warm = server.execute_in(&id, "print('warm')");
    expect_outcome(&warm, "ok");
    let oneshot = server
        .post_json("/v1/execute", None, &json!({"code": "print(1)"}))
        .json();
    expect_outcome(&oneshot, "ok");

    // An SSE execution in flight when the signal comes.
    let body = json!({"code": "import time\nprint('a', flush=True)\ntime.sleep(1)\nprint('done')"})
        .to_string();
    let stream = send_request(
        server.port,
        "POST",
        "/v1/execute",
        None,
        &[
            ("Content-Type", "application/json"),
            ("Accept", "text/event-stream"),
        ],
        body.as_bytes(),
    );
    let mut reader = BufReader::new(stream);
    let (status, _) = read_head(&mut reader);
    assert_eq!(status, 200);
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("\"a\\n\"") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "{seen}");
        seen.push_str(&line);
    }

    let family = descendants(server.pid());
    assert!(!family.is_empty(), "kiln serve has no helper processes?");
    let status = server.terminate();
    assert!(status.success(), "kiln serve exited with {status}");
    // The stream was answered to its end.
    let mut raw = seen.into_bytes();
    reader.read_to_end(&mut raw).unwrap();
    let events = sse_events(&String::from_utf8_lossy(&dechunk(&raw)));
    let (name, end) = events.last().expect("events");
    assert_eq!(name, "end", "{events:?}");
    expect_outcome(end, "ok");
    assert!(stdout(end).contains("done"));

    assert!(!server.socket.exists(), "socket file left behind");
    assert!(
        TcpStream::connect(("127.0.0.1", server.port)).is_err(),
        "still listening"
    );
    for result in [&warm, &oneshot, end] {
        assert_nothing_left_by("serve", result);
    }
    let mark = format!("-{}-", server.pid());
    let cgroups: Vec<_> = sandbox_cgroups()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&mark))
        .collect();
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
    // No process kiln serve started (front end, zygote, sandboxes) is left.
    let alive: Vec<u32> = family
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| !s.contains("State:\tZ"))
        })
        .collect();
    assert!(alive.is_empty(), "processes outlived kiln serve: {alive:?}");
}

/// Every live descendant of `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command's closing parenthesis: state, ppid.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        {
            parents.insert(child, ppid);
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| **p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

fn random_secret() -> String {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// The policy gate over HTTP: the import check and `libraries` answer 422
/// `rejected` before any sandbox; a session keeps going after a refused cell.
#[test]
fn imports_and_libraries_are_checked_over_http() {
    let server = shared();
    let refused = server.post_json(
        "/v1/execute",
        None,
        &json!({"code": "import os\nimport subprocess\n"}),
    );
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert_eq!(refused.error_kind(), "rejected");
    assert!(
        refused
            .text()
            .contains("line 2, column 8: import of `subprocess`"),
        "{}",
        refused.text()
    );
    let refused = server.post_json(
        "/v1/execute",
        None,
        &json!({"code": "print(1)", "libraries": ["requests"]}),
    );
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(
        refused.text().contains("allowed: matplotlib==3.8.4"),
        "{}",
        refused.text()
    );
    let ok = server.post_json(
        "/v1/execute",
        None,
        &json!({"code": "import pandas\nprint(pandas.__version__)", "libraries": ["pandas"], "environment": "default"}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["events"][0]["text"], "1.5.3\n");

    let session = server.session();
    assert_eq!(server.execute_in(&session, "x = 7")["outcome"], "ok");
    let refused = server.post_json(
        &format!("/v1/sessions/{session}/executions"),
        None,
        &json!({"code": "import socket"}),
    );
    assert_eq!(refused.status, 422, "{}", refused.text());
    let v = server.execute_in(&session, "print(x)");
    assert_eq!(v["events"][0]["text"], "7\n", "{v}");

    let envs = server.get("/v1/environments", None).json();
    let default = &envs["environments"][0];
    assert_eq!(default["name"], "default");
    assert!(default["deny_modules"]["subprocess"].is_string(), "{envs}");
}
