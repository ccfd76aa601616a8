//! Defence in depth (the policy's environments): the static import check
//! refuses before any sandbox starts, the runner's import hook refuses at
//! run time, `--library` is checked against the allowlist — and code that
//! gets past both speed bumps still reaches neither network nor secrets.

use crate::support::*;
use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn an_allowed_import_runs() {
    let v = run("import numpy as np, pandas as pd\nfrom matplotlib import pyplot\nprint(int(np.arange(4).sum()), pd.__version__)");
    expect_outcome(&v, "ok");
    assert_eq!(stdout(&v), "6 1.5.3\n");
}

#[test]
fn denied_and_unknown_imports_are_rejected_with_their_position() {
    for (code, module, at) in [
        (
            "import os\nimport subprocess\n",
            "subprocess",
            "line 2, column 8",
        ),
        (
            "x = 1\nif x:\n    import socket\n",
            "socket",
            "line 3, column 12",
        ),
        ("import requests", "requests", "line 1, column 8"),
        (
            "from urllib import request",
            "urllib.request",
            "line 1, column 20",
        ),
    ] {
        let (v, out) = run_with(code, &[], &[]);
        expect_outcome(&v, "rejected");
        let reason = v["reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("{at}: import of `{module}`")),
            "{code:?}: {reason}"
        );
        // Refused before a sandbox existed: no isolation, no usage.
        assert_eq!(v["isolation"]["backend"], "", "{v}");
        assert_eq!(out.status.code(), Some(65));
    }
    let (v, _) = run_with("import requests", &[], &[]);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("allowed: matplotlib==3.8.4"),
        "{v}"
    );
}

#[test]
fn the_runtime_hook_refuses_what_the_static_check_cannot_see() {
    let v = run("m = 'sub' + 'process'\ntry:\n    __import__(m)\nexcept ImportError as e:\n    print('refused:', e)");
    expect_outcome(&v, "ok");
    assert!(
        stdout(&v).starts_with("refused: kiln: import of 'subprocess' is not allowed"),
        "{v}"
    );
    // Libraries still import what they need themselves.
    let v = run("import asyncio.subprocess, sys\nprint('subprocess' in sys.modules)");
    expect_outcome(&v, "ok");
    assert_eq!(stdout(&v), "True\n");
}

/// `__import__`, `importlib` and `exec` of base64 get past the static check
/// (by design: it is a speed bump) — and still reach neither a server on
/// the host's loopback nor the host's secrets.
#[test]
fn dynamic_imports_pass_the_check_but_the_sandbox_holds() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let reached = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (reached, stop) = (reached.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok((mut s, _)) = listener.accept() {
                    reached.store(true, Ordering::SeqCst);
                    let _ = s.read(&mut [0; 16]);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), "host-file-canary-7f3a").unwrap();
    let probe = format!(
        r#"
def attempt(name, f):
    try:
        print(name, "REACHED", f())
    except BaseException as e:
        print(name, "blocked", type(e).__name__)

def connect(s):
    c = s.socket(s.AF_INET, s.SOCK_STREAM)
    c.settimeout(2)
    c.connect(("127.0.0.1", {port}))
    return "connected"

attempt("dunder", lambda: connect(__import__("so" + "cket")))
import importlib
attempt("importlib", lambda: connect(importlib.import_module("_socket")))
import base64
# Own globals: the exec'd code is not the user namespace, so not even the
# runtime hook sees its import; only the sandbox is left.
attempt("exec", lambda: exec(base64.b64decode({b64:?}).decode(), {{}}))
attempt("file", lambda: open({path:?}).read())
import os
attempt("environ", lambda: [k for k in os.environ if "CANARY" in os.environ[k] or "CANARY" in k] or 1/0)
"#,
        b64 = base64_encode(
            format!("import socket\nc = socket.socket()\nc.settimeout(2)\nc.connect(('127.0.0.1', {port}))\n")
                .as_bytes()
        ),
        path = secret_file.path().display().to_string(),
    );
    let (v, _) = run_with(
        &probe,
        &[],
        &[("KILN_TEST_SECRET_CANARY", "env-canary-91c2")],
    );
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    // The static check let it through; the run itself is what we look at.
    assert_ne!(outcome(&v), "rejected", "{v}");
    let out = stdout(&v);
    for name in ["dunder", "importlib", "exec", "file", "environ"] {
        assert!(out.contains(&format!("{name} blocked")), "{name}: {out}");
    }
    assert!(!out.contains("REACHED"), "{out}");
    assert!(!out.contains("canary"), "{out}");
    assert!(
        !reached.load(Ordering::SeqCst),
        "a connection reached the host"
    );
}

#[test]
fn libraries_are_checked_against_the_allowlist() {
    let (v, _) = run_with(
        "import pandas\nprint(pandas.__version__)",
        &["--library", "pandas"],
        &[],
    );
    expect_outcome(&v, "ok");
    assert_eq!(stdout(&v), "1.5.3\n");
    let (v, out) = run_with("print(1)", &["--library", "requests"], &[]);
    expect_outcome(&v, "rejected");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("\"requests\" is not allowed"), "{reason}");
    assert!(reason.contains("numpy==1.26.4, pandas==1.5.3"), "{reason}");
    assert_eq!(out.status.code(), Some(65));
    let (v, _) = run_with("print(1)", &["--library", "numpy==2.0.0"], &[]);
    assert!(
        v["reason"].as_str().unwrap().contains("pins numpy==1.26.4"),
        "{v}"
    );
}

#[test]
fn an_environment_from_kiln_toml_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        "[environments.lean]\ndescription = \"numpy only\"\nlibraries.numpy = \"1.26.4\"\n\
         deny_modules.json = \"no JSON here\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let lean = |code: &str, extra: &[&str]| {
        run_config(config, code, &[&["--environment", "lean"], extra].concat())
    };
    expect_outcome(&lean("import numpy\nprint(numpy.__version__)", &[]), "ok");
    let v = lean("import pandas", &[]);
    expect_outcome(&v, "rejected");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("environment `lean`; allowed: numpy==1.26.4"),
        "{v}"
    );
    let v = lean("import json", &[]);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("denies `json` (no JSON here)"),
        "{v}"
    );
    // The runtime hook carries the same table into the sandbox.
    let v = lean(
        "try:\n    __import__('json')\nexcept ImportError as e:\n    print(e)",
        &[],
    );
    expect_outcome(&v, "ok");
    assert!(stdout(&v).contains("(no JSON here)"), "{v}");
    let v = lean("print(1)", &["--library", "pandas"]);
    expect_outcome(&v, "rejected");
    let (v, _) = run_with("print(1)", &["--environment", "nope"], &[]);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("no environment named \"nope\"; configured: default"),
        "{v}"
    );
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A kiln.toml with an environment whose `tabulate` comes from the
/// wheelhouse (the lock is in the repository; `.ci/run` downloads its wheel
/// with `kiln env wheelhouse --lock crates/cli/tests/wheelhouse/tables.lock`).
fn wheelhouse_config(dir: &std::path::Path) -> String {
    let lock = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/wheelhouse/tables.lock");
    let path = dir.join("kiln.toml");
    std::fs::write(
        &path,
        format!(
            "[environments.tables]\ndescription = \"numpy, and tabulate from the wheelhouse\"\n\
             libraries.numpy = \"1.26.4\"\n\
             libraries.tabulate = {{ version = \"0.9.0\", reason = \"tables\" }}\n\
             lock = \"{lock}\"\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// `kiln run --json` with `config` as kiln.toml.
fn run_config(config: &str, code: &str, args: &[&str]) -> serde_json::Value {
    run_with(code, args, &[("KILN_CONFIG", config)]).0
}

#[test]
fn a_library_from_the_wheelhouse_works_with_the_network_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = wheelhouse_config(dir.path());
    let code = "from tabulate import tabulate\nimport tabulate as t, socket\n\
                print(tabulate([[1, 2]], headers=['a', 'b'], tablefmt='plain'))\n\
                print(t.__file__)\n\
                try:\n    open('/libraries/planted.py', 'w')\nexcept OSError as e:\n    print('read-only', e.errno)\n";
    // `socket` is allowed in this environment (no deny list): the sandbox
    // still has no network, wheelhouse or not.
    for spawner in [&[][..], &["--zygote"][..]] {
        let mut args = vec!["--environment", "tables", "--library", "tabulate"];
        args.extend_from_slice(spawner);
        let v = run_config(&config, code, &args);
        expect_outcome(&v, "ok");
        assert_eq!(
            stdout(&v),
            "  a    b\n  1    2\n/libraries/tabulate/__init__.py\nread-only 30\n",
            "{spawner:?}"
        );
        let v = run_config(
            &config,
            "import socket\ns = socket.socket(socket.AF_INET)",
            &args,
        );
        expect_outcome(&v, "error");
    }
    // Not asked for: not mounted (the import check allows it; Python says
    // it is not there).
    let v = run_config(&config, "import tabulate", &["--environment", "tables"]);
    expect_outcome(&v, "error");
    assert!(
        stderr_or_error(&v).contains("No module named 'tabulate'"),
        "{v}"
    );
    // Not allowed in the default environment.
    let (v, _) = run_with("print(1)", &["--library", "tabulate"], &[]);
    expect_outcome(&v, "rejected");
}

fn stderr_or_error(v: &serde_json::Value) -> String {
    format!(
        "{}{}",
        stream(v, "stderr"),
        events(v, "error")
            .iter()
            .map(|e| e["value"].to_string())
            .collect::<String>()
    )
}

#[test]
fn policy_check_validates_a_file_and_shows_what_it_allows() {
    let dir = tempfile::tempdir().unwrap();
    let config = wheelhouse_config(dir.path());
    let out = kiln().args(["policy", "check", &config]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(": valid"), "{text}");
    assert!(text.contains("environment `tables`"), "{text}");
    assert!(text.contains("tabulate==0.9.0 [wheelhouse"), "{text}");
    assert!(text.contains("numpy==1.26.4 [runtime]"), "{text}");
    assert!(text.contains("subprocess: starts other programs"), "{text}");
    assert!(text.contains("network: none"), "{text}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[environments.x]\nlibraries.numpy = \">=1\"\n").unwrap();
    let out = kiln()
        .args(["policy", "check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an exact pin"), "{err}");
    std::fs::write(
        &bad,
        "[environments.x]\nlibraries.numpy = \"1\"\nallow = []\n",
    )
    .unwrap();
    let out = kiln()
        .args(["policy", "check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `allow`"));
}

/// The `name version` pairs of the prompt's library line.
fn prompt_libraries(config: Option<&str>, env: &str) -> std::collections::BTreeSet<String> {
    let mut cmd = kiln();
    if let Some(config) = config {
        cmd.args(["--config", config]);
    }
    let out = cmd.args(["prompt", "--env", env]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("- Libraries:"))
        .unwrap_or_else(|| panic!("no library line in:\n{text}"));
    let list = line
        .split_once("(pinned): ")
        .and_then(|(_, rest)| rest.split_once(". "))
        .map(|(list, _)| list)
        .unwrap_or_else(|| panic!("unexpected library line: {line}"));
    list.split(", ").map(str::to_string).collect()
}

#[test]
fn the_prompt_names_exactly_the_allowed_libraries_of_the_policy() {
    let expected =
        |config: &kiln_policy::Config, env: &str| -> std::collections::BTreeSet<String> {
            config
                .environment(Some(env))
                .unwrap()
                .libraries
                .iter()
                .map(|(name, lib)| format!("{name} {}", lib.version()))
                .collect()
        };
    let builtin = kiln_policy::Config::default();
    assert_eq!(
        prompt_libraries(None, "default"),
        expected(&builtin, "default")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = wheelhouse_config(dir.path());
    let config = kiln_policy::Config::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let tables = prompt_libraries(Some(&path), "tables");
    assert_eq!(tables, expected(&config, "tables"));
    assert_eq!(
        tables,
        ["numpy 1.26.4", "tabulate 0.9.0"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}
