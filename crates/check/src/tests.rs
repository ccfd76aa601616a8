use super::*;
use kiln_policy::Config;

fn check(code: &str) -> Vec<Violation> {
    let config = Config::default();
    check_imports(code, config.environment(None).unwrap(), "default")
}

fn modules(code: &str) -> Vec<(String, u32, u32)> {
    check(code)
        .into_iter()
        .map(|v| (v.module, v.line, v.column))
        .collect()
}

#[test]
fn allowed_imports_pass() {
    let code = "import numpy as np\nimport pandas as pd, os, sys\nfrom matplotlib import pyplot as plt\nimport scipy.stats\nfrom PIL import Image\nfrom urllib.parse import quote\nfrom __future__ import annotations\nimport importlib\nfrom . import sibling\n";
    assert_eq!(check(code), []);
}

#[test]
fn denied_and_unknown_modules_are_found_with_their_position() {
    assert_eq!(
        modules("import os\nimport subprocess\n"),
        [("subprocess".into(), 2, 8)]
    );
    assert_eq!(
        modules("x = 1\ndef f():\n    try:\n        import socket as s\n    except ImportError:\n        pass\n"),
        [("socket".into(), 4, 16)]
    );
    assert_eq!(
        modules("from urllib import parse, request\n"),
        [("urllib.request".into(), 1, 27)]
    );
    assert_eq!(
        modules("import ctypes.util"),
        [("ctypes.util".into(), 1, 8)]
    );
    // Not allowed: one violation per statement, naming the allowed list.
    let v = check("from requests import get, post");
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!((v[0].line, v[0].column), (1, 6));
    assert!(v[0].reason.contains("numpy==1.26.4"), "{}", v[0].reason);
    assert!(v[0]
        .to_string()
        .starts_with("line 1, column 6: import of `requests`"));
    // Columns count characters, not bytes.
    assert_eq!(modules("s = 'é'; import pty"), [("pty".into(), 1, 17)]);
    // Inside classes, with-blocks and comprehensions' functions too.
    assert_eq!(
        modules("class A:\n    with open('x') as f:\n        import multiprocessing.pool\n"),
        [("multiprocessing.pool".into(), 3, 16)]
    );
}

#[test]
fn magics_are_read_the_way_the_runner_runs_them() {
    assert_eq!(
        modules("%matplotlib inline\n%time import subprocess\n"),
        [("subprocess".into(), 2, 14)]
    );
    assert_eq!(modules("!pip install requests\nimport numpy"), []);
    assert_eq!(modules("%%bash\nimport subprocess"), []);
}

#[test]
fn dynamic_imports_pass_the_static_check_by_design() {
    for code in [
        "__import__('subprocess')",
        "import importlib\nimportlib.import_module('socket')",
        "import base64\nexec(base64.b64decode('aW1wb3J0IHNvY2tldA=='))",
        "import numpy\nthis is not python",
    ] {
        assert_eq!(check(code), [], "{code}");
    }
}

#[test]
fn the_stdlib_list_is_sorted_for_binary_search() {
    assert!(stdlib::STDLIB_3_11.windows(2).all(|w| w[0] < w[1]));
    assert!(is_stdlib("os") && is_stdlib("_socket") && is_stdlib("__future__"));
    assert!(!is_stdlib("numpy"));
}

#[test]
fn the_gate_checks_environment_libraries_and_code() {
    let config = Config::default();
    assert!(Gate::new(&config, Some("nope"))
        .unwrap_err()
        .contains("no environment named \"nope\"; configured: default"));
    let gate = Gate::new(&config, None).unwrap();
    assert_eq!(gate.name, "default");
    let ok = gate
        .allowed_libraries(&["Pandas".into(), "numpy==1.26.4".into(), "pandas".into()])
        .unwrap();
    assert_eq!(
        ok,
        [
            Pinned {
                name: "numpy".into(),
                version: "1.26.4".into()
            },
            Pinned {
                name: "pandas".into(),
                version: "1.5.3".into()
            },
        ]
    );
    let installed = std::collections::BTreeMap::from([("numpy".to_string(), "1.26.4".to_string())]);
    assert_eq!(
        gate.libraries(&["numpy".into()], &installed, None),
        Ok(None)
    );
    let missing = gate
        .libraries(&["pandas".into()], &installed, None)
        .unwrap_err();
    assert!(
        missing.contains("pandas==1.5.3 is allowed but not installed"),
        "{missing}"
    );
    assert!(
        missing.contains("has no wheelhouse; Hint: `kiln env lock"),
        "{missing}"
    );
    let wheelhouse = WheelhouseTree {
        name: "lib-1".into(),
        pins: [("pandas".to_string(), "1.5.3".to_string())].into(),
    };
    let got = gate.libraries(
        &["numpy".into(), "pandas".into()],
        &installed,
        Some(&wheelhouse),
    );
    assert_eq!(got, Ok(Some("lib-1".into())));
    let other = WheelhouseTree {
        name: "lib-2".into(),
        pins: [("pandas".to_string(), "2.0".to_string())].into(),
    };
    let stale = gate
        .libraries(&["pandas".into()], &installed, Some(&other))
        .unwrap_err();
    assert!(stale.contains("(the wheelhouse has 2.0)"), "{stale}");
    let no = gate
        .libraries(&["requests".into()], &installed, None)
        .unwrap_err();
    assert!(no.contains("\"requests\" is not allowed"), "{no}");
    assert!(
        no.contains("allowed: matplotlib==3.8.4, numpy==1.26.4, pandas==1.5.3"),
        "{no}"
    );
    let wrong = gate
        .allowed_libraries(&["numpy==2.0.0".into()])
        .unwrap_err();
    assert!(wrong.contains("pins numpy==1.26.4"), "{wrong}");

    assert_eq!(gate.code("import numpy"), Ok(()));
    let e = gate
        .code("import os\nimport subprocess, socket\n")
        .unwrap_err();
    assert!(
        e.starts_with("import check: line 2, column 8: import of `subprocess`"),
        "{e}"
    );
    assert!(e.ends_with("(and 1 more: `socket` at line 2)"), "{e}");
    assert!(gate.deny_imports().contains_key("subprocess"));
}
