//! Bad input ends in a clear, typed error, with the host untouched.

use crate::support::*;
use std::io::Write;

#[test]
fn empty_code_is_rejected() {
    let v = run("   \n");
    expect_outcome(&v, "rejected");
    assert!(v["reason"].as_str().unwrap().contains("empty"));
}

#[test]
fn syntax_error_is_an_error_event() {
    let v = run("def f(:\n  pass");
    expect_outcome(&v, "error");
    assert_eq!(events(&v, "error")[0]["name"], "SyntaxError");
}

#[test]
fn non_utf8_nul_and_ansi_output_survive() {
    let v = run("import os, sys\nos.write(1, b'\\xff\\xfe bad\\n')\nprint('nul\\x00here')\nprint('\\x1b[31mred\\x1b[0m')\nsys.stdout.write('\\udcff\\n')");
    expect_outcome(&v, "ok");
    let out = stdout(&v);
    assert!(out.contains('\u{fffd}'), "{out:?}");
    assert!(out.contains("nul\u{0}here"), "{out:?}");
    assert!(out.contains("\u{1b}[31mred"), "{out:?}");
}

#[test]
fn ten_megabyte_line_of_code_is_rejected() {
    let v = run(&format!("x = '{}'", "a".repeat(10 << 20)));
    expect_outcome(&v, "rejected");
}

#[test]
fn ten_megabyte_line_of_output_hits_the_cap() {
    let (v, _) = run_with("print('z' * (10 << 20))", &["--timeout", "20"], &[]);
    expect_outcome(&v, "output_limit");
}

#[test]
fn non_utf8_code_is_rejected() {
    let mut child = kiln()
        .args(["run", "--json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"print('\xff')")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    expect_outcome(&v, "rejected");
    assert!(v["reason"].as_str().unwrap().contains("UTF-8"));
    assert_eq!(out.status.code(), Some(65));
}

#[test]
fn missing_file_argument_is_a_clear_error() {
    let out = kiln()
        .args(["run", "/nonexistent/code.py"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read /nonexistent/code.py"), "{err}");
    let out = kiln().args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn broken_config_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("malformed.toml", "[limits\n", "invalid config file"),
        ("unknown.toml", "[limits]\nwall_sec = 3\n", "wall_sec"),
        (
            "ceiling.toml",
            "[limits]\nmemory_mib = 9000\n[ceilings]\nmemory_mib = 1024\n",
            "exceeds the ceiling",
        ),
    ];
    for (name, text, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = kiln()
            .arg("--config")
            .arg(&path)
            .args(["run", "-"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{name}: {err}");
    }
    let out = kiln()
        .args(["--config", "/nonexistent/kiln.toml", "run", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn limit_above_the_ceiling_is_rejected() {
    let (v, out) = run_with("print(1)", &["--timeout", "100000"], &[]);
    expect_outcome(&v, "rejected");
    assert!(v["reason"].as_str().unwrap().contains("ceiling"), "{v}");
    assert_eq!(out.status.code(), Some(65));
}

#[test]
fn without_root_the_native_backend_is_unavailable() {
    // setpriv drops to nobody; kiln must answer `unavailable`, not panic.
    let bin = env!("CARGO_BIN_EXE_kiln");
    let mut child = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin,
            "run",
            "--json",
            "-",
        ])
        .env("KILN_DATA_DIR", "/var/lib/kiln")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // kiln may refuse and exit before reading its input.
    let _ = child.stdin.take().unwrap().write_all(b"print(1)");
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("{text}\n{stderr}"));
    expect_outcome(&v, "unavailable");
    assert!(v["reason"].as_str().unwrap().contains("root"), "{v}");
    assert_eq!(out.status.code(), Some(69));
}
