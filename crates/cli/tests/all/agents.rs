//! `kiln prompt`, `kiln tools` and `kiln mcp` (raw JSON-RPC over stdio;
//! the official MCP and E2B clients are exercised by tests/agents).

use crate::support::{kiln, sandbox_cgroups};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

fn config(body: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .prefix("kiln-agents-")
        .suffix(".toml")
        .tempfile()
        .unwrap();
    file.write_all(body.as_bytes()).unwrap();
    file
}

#[test]
fn prompt_is_generated_from_the_policy() {
    let toml = config("[limits]\nwall_ms = 12000\nmemory_mib = 300\n");
    let out = kiln()
        .args(["--config", toml.path().to_str().unwrap(), "prompt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "12 s wall time",
        "300 MiB of memory",
        "numpy 1.26.4",
        "pandas 1.5.3",
        "No network",
        "/work/out",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }

    let out = kiln().args(["prompt", "--env", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no environment named \"nope\""));
}

#[test]
fn tools_print_the_same_schema_in_each_format() {
    let mut schemas = Vec::new();
    for (format, pick) in [
        ("openai", "/0/function/parameters"),
        ("anthropic", "/0/input_schema"),
        ("mcp", "/tools/0/inputSchema"),
    ] {
        let out = kiln().args(["tools", "--format", format]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let schema = v.pointer(pick).unwrap_or_else(|| panic!("{format}: {v}"));
        assert_eq!(schema["required"], json!(["code"]), "{format}");
        assert!(v.to_string().contains("No network"), "{format}");
        schemas.push(schema.clone());
    }
    assert_eq!(schemas[0], schemas[1]);
    assert_eq!(schemas[1], schemas[2]);
    let out = kiln().args(["tools", "--format", "xml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The JSON-RPC answer to request `id`, skipping notifications.
fn answer(lines: &mut impl Iterator<Item = std::io::Result<String>>, id: u64) -> Value {
    for line in lines {
        let v: Value = serde_json::from_str(&line.unwrap()).expect("stdout carries only JSON-RPC");
        if v["id"] == json!(id) {
            return v;
        }
    }
    panic!("kiln mcp closed stdout before answering {id}");
}

#[test]
fn kiln_mcp_speaks_json_rpc_on_stdio_and_leaves_nothing_when_stdin_closes() {
    let mut child = kiln()
        .arg("mcp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A hung server must fail the test, not hang it.
    let watchdog = std::thread::spawn(move || {
        for _ in 0..1200 {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let send = |stdin: &mut std::process::ChildStdin, v: Value| {
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    };
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "kiln-test", "version": "0"}}}),
    );
    let init = answer(&mut lines, 1);
    assert_eq!(init["result"]["serverInfo"]["name"], "kiln", "{init}");
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "create_session", "arguments": {}}}),
    );
    let created = answer(&mut lines, 2);
    let text = created["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let session = text.split_whitespace().nth(1).unwrap().to_string();
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "execute_code", "arguments": {"session": session, "code": "n = 6 * 7\nprint(n)"}}}),
    );
    let ran = answer(&mut lines, 3);
    assert_eq!(ran["result"]["isError"], false, "{ran}");
    assert!(
        ran["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("42"),
        "{ran}"
    );
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
        "name": "no_such_tool", "arguments": {}}}),
    );
    let unknown = answer(&mut lines, 4);
    assert!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_tool"),
        "{unknown}"
    );

    // Closing stdin ends the server; the open session's sandbox goes with it.
    drop(stdin);
    let status = child.wait().unwrap();
    watchdog.join().unwrap();
    assert!(status.success(), "kiln mcp exited with {status}");
    let left: Vec<_> = sandbox_cgroups()
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.split('-').nth(1) == Some(&pid.to_string())
        })
        .collect();
    assert!(left.is_empty(), "cgroups of kiln mcp left behind: {left:?}");
}
