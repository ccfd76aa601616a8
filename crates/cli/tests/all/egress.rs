//! The egress allowlist (`docs/egress.md`), end to end: code in a sandbox
//! of an environment with an `egress` table fetches from an HTTP server
//! this test runs on 127.0.0.1, through the runner's forwarder and kiln's
//! proxy outside the sandbox; everything else is refused and audited.
//! Loopback only: the test configuration opts in to private addresses and
//! maps `allowed.test` (and `other.test`) to 127.0.0.1 with kiln's resolver.

use crate::support::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A tiny HTTP server on 127.0.0.1: answers every request with `body` and
/// records each request line it got.
pub(crate) struct Server {
    pub(crate) port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub(crate) fn start(body: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                seen.lock().unwrap().push(text);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Server { port, requests }
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A kiln.toml with an environment `web` whose egress allows `allowed.test`.
fn config(dir: &Path, allow_private: bool) -> (String, PathBuf) {
    let audit = dir.join("egress-audit.jsonl");
    let config = dir.join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[environments.web]
description = "egress test"
deny_modules = {{ subprocess = "no processes" }}

[environments.web.egress]
allow = ["allowed.test"]
resolve = {{ "allowed.test" = "127.0.0.1", "other.test" = "127.0.0.1" }}
allow_private = {allow_private}
audit_log = {:?}
"#,
            audit.display().to_string()
        ),
    )
    .unwrap();
    (config.display().to_string(), audit)
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const FETCH: &str = r#"
import urllib.request, urllib.error, sys
def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            print(url.split('/')[2], 'ok', r.read().decode())
    except urllib.error.HTTPError as e:
        print(url.split('/')[2], e.code, e.read().decode().strip())
    except OSError as e:
        print(url.split('/')[2], 'error', e)
for url in sys.argv[1:] if len(sys.argv) > 1 else URLS:
    fetch(url)
"#;

fn fetch_code(urls: &[String]) -> String {
    format!("URLS = {urls:?}\n{FETCH}")
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kiln-egress-")
        .tempdir_in("/tmp")
        .unwrap()
}

#[test]
fn an_allowed_domain_is_reached_and_everything_else_is_refused_and_audited() {
    let server = Server::start("hello from the host");
    let dir = tempdir();
    let (config, audit) = config(dir.path(), true);
    let port = server.port;
    let code = fetch_code(&[
        format!("http://allowed.test:{port}/data"),
        format!("http://other.test:{port}/"),
        format!("http://127.0.0.1:{port}/"),
    ]);
    for (round, spawner) in [&[][..], &["--zygote"][..]].into_iter().enumerate() {
        let mut args = vec!["--environment", "web"];
        args.extend_from_slice(spawner);
        let (v, _) = run_with(&code, &args, &[("KILN_CONFIG", &config)]);
        expect_outcome(&v, "ok");
        let out = stdout(&v);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            format!("allowed.test:{port} ok hello from the host"),
            "{spawner:?}: {out}"
        );
        assert!(
            lines[1].starts_with(&format!(
                "other.test:{port} 403 kiln egress: other.test is not on the allowlist"
            )),
            "{spawner:?}: {out}"
        );
        assert!(
            lines[2].starts_with(&format!(
                "127.0.0.1:{port} 403 kiln egress: 127.0.0.1 is a raw IP address"
            )),
            "{spawner:?}: {out}"
        );
        // Exactly the allowed request reached the server, in origin form,
        // with the Host kiln set.
        let requests = server.requests();
        assert_eq!(requests.len(), round + 1, "{requests:?}");
        let last = requests.last().unwrap();
        assert!(last.starts_with("GET /data HTTP/1.1\r\n"), "{last}");
        assert!(
            last.contains(&format!("Host: allowed.test:{port}\r\n")),
            "{last}"
        );
        // One audit line per connection, allowed or refused.
        let lines = audit_lines(&audit);
        assert_eq!(lines.len(), 3 * (round + 1), "{lines:?}");
        let round_lines = &lines[3 * round..];
        let verdicts: Vec<(&str, &str)> = round_lines
            .iter()
            .map(|l| (l["host"].as_str().unwrap(), l["verdict"].as_str().unwrap()))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("allowed.test", "allowed"),
                ("other.test", "refused"),
                ("127.0.0.1", "refused")
            ]
        );
        assert_eq!(round_lines[0]["ip"], "127.0.0.1");
        assert_eq!(round_lines[0]["port"], port);
        assert_eq!(round_lines[0]["environment"], "web");
        let uid = round_lines[0]["uid"].as_u64().unwrap();
        assert!(uid >= 1000, "a sandbox uid, not root: {uid}");
        assert!(round_lines
            .iter()
            .all(|l| l["uid"].as_u64() == Some(uid) && l["time"].is_string()));
    }
}

#[test]
fn without_the_opt_in_an_allowed_name_that_resolves_to_loopback_is_refused() {
    let server = Server::start("must not be seen");
    let dir = tempdir();
    let (config, audit) = config(dir.path(), false);
    let code = fetch_code(&[format!("http://allowed.test:{}/", server.port)]);
    let (v, _) = run_with(
        &code,
        &["--environment", "web"],
        &[("KILN_CONFIG", &config)],
    );
    expect_outcome(&v, "ok");
    assert!(
        stdout(&v)
            .contains("403 kiln egress: allowed.test resolves to 127.0.0.1, a loopback address"),
        "{v}"
    );
    assert!(server.requests().is_empty());
    let lines = audit_lines(&audit);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["verdict"], "refused");
    assert_eq!(lines[0]["ip"], "127.0.0.1");
}

#[test]
fn a_tls_server_name_other_than_the_connect_host_is_refused() {
    let server = Server::start("must not be seen");
    let dir = tempdir();
    let (config, audit) = config(dir.path(), true);
    // A ClientHello naming evil.test inside a CONNECT to allowed.test.
    let code = format!(
        r#"
import socket, struct, os
def hello(name):
    n = name.encode()
    sni = struct.pack('!HHHBH', 0, len(n) + 5, len(n) + 3, 0, len(n)) + n
    body = b'\x03\x03' + os.urandom(32) + b'\x00' + b'\x00\x02\x13\x01' + b'\x01\x00' + struct.pack('!H', len(sni)) + sni
    hs = b'\x01' + struct.pack('!I', len(body))[1:] + body
    return b'\x16\x03\x01' + struct.pack('!H', len(hs)) + hs
s = socket.create_connection(('127.0.0.1', int(os.environ['KILN_EGRESS_PORT'])), timeout=20)
s.sendall(b'CONNECT allowed.test:{port} HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n')
print(s.recv(100).split(b'\r\n')[0].decode())
s.sendall(hello('evil.test'))
print('after hello:', s.recv(100))
"#,
        port = server.port
    );
    let (v, _) = run_with(
        &code,
        &["--environment", "web"],
        &[("KILN_CONFIG", &config)],
    );
    expect_outcome(&v, "ok");
    assert_eq!(
        stdout(&v),
        "HTTP/1.1 200 Connection established\nafter hello: b''\n",
        "{v}"
    );
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    let lines = audit_lines(&audit);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["method"], "connect");
    assert_eq!(lines[0]["verdict"], "refused");
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("\"evil.test\" does not match"),
        "{lines:?}"
    );
}

#[test]
fn an_egress_sandbox_reaches_no_other_port_and_no_other_socket_family() {
    let server = Server::start("must not be seen");
    let dir = tempdir();
    let (config, _) = config(dir.path(), true);
    let code = format!(
        r#"
import socket, errno, os
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    print('netlink made')
except OSError as e:
    print('netlink', errno.errorcode.get(e.errno, e.errno))
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=5)
    print('connected')
except OSError as e:
    print('direct', errno.errorcode.get(e.errno, e.errno))
print(sorted(os.listdir('/run/kiln')))
"#,
        port = server.port
    );
    let (v, _) = run_with(
        &code,
        &["--environment", "web"],
        &[("KILN_CONFIG", &config)],
    );
    expect_outcome(&v, "ok");
    let out = stdout(&v);
    assert!(out.starts_with("netlink EAFNOSUPPORT\ndirect "), "{out}");
    assert!(!out.contains("connected"), "{out}");
    assert!(out.ends_with("['egress.sock']\n"), "{out}");
    assert!(server.requests().is_empty());
}

#[test]
fn without_an_egress_table_nothing_changes() {
    let code = r#"
import os, socket
print(os.path.exists('/run/kiln'), 'HTTP_PROXY' in os.environ)
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    print('inet socket made')
except OSError as e:
    print('inet', e.errno)
"#;
    // The default environment denies `socket` to user code; this one is the
    // same minus egress.
    let dir = tempdir();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        "[environments.plain]\ndescription = \"no egress\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let (v, _) = run_with(
        code,
        &["--environment", "plain"],
        &[("KILN_CONFIG", &config)],
    );
    expect_outcome(&v, "ok");
    assert_eq!(stdout(&v), "False False\ninet 97\n", "EAFNOSUPPORT: {v}");
}

#[test]
fn a_connect_whose_server_name_matches_is_relayed_untouched() {
    // A raw TCP server: records the first bytes it gets, answers "pong".
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            seen.lock().unwrap().extend_from_slice(&buf[..n]);
            let _ = conn.write_all(b"pong");
        }
    });
    let dir = tempdir();
    let (config, audit) = config(dir.path(), true);
    let code = format!(
        r#"
import socket, struct, os, hashlib
n = b'allowed.test'
sni = struct.pack('!HHHBH', 0, len(n) + 5, len(n) + 3, 0, len(n)) + n
body = b'\x03\x03' + bytes(32) + b'\x00' + b'\x00\x02\x13\x01' + b'\x01\x00' + struct.pack('!H', len(sni)) + sni
hs = b'\x01' + struct.pack('!I', len(body))[1:] + body
hello = b'\x16\x03\x01' + struct.pack('!H', len(hs)) + hs
s = socket.create_connection(('127.0.0.1', int(os.environ['KILN_EGRESS_PORT'])), timeout=20)
s.sendall(b'CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n')
print(s.recv(100).split(b'\r\n')[0].decode())
s.sendall(hello)
print(s.recv(100), hashlib.sha256(hello).hexdigest())
"#
    );
    let (v, _) = run_with(
        &code,
        &["--environment", "web"],
        &[("KILN_CONFIG", &config)],
    );
    expect_outcome(&v, "ok");
    let out = stdout(&v);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("HTTP/1.1 200 Connection established"),
        "{out}"
    );
    let (pong, digest) = lines.next().unwrap().split_once(' ').unwrap();
    assert_eq!(pong, "b'pong'", "{out}");
    // The server got the ClientHello, byte for byte.
    let received = got.lock().unwrap().clone();
    assert!(received.starts_with(&[0x16, 0x03, 0x01]), "{received:?}");
    let hex: String = sha256(&received)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, digest);
    let lines = audit_lines(&audit);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["method"], "connect");
    assert_eq!(lines[0]["verdict"], "allowed");
    assert_eq!(
        lines[0]["reason"],
        "on the allowlist; TLS server name matches"
    );
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
