//! `kiln bench --quick --json`: the JSON has the documented shape. No
//! timing is asserted (machines are noisy); only that every method that
//! ran produced well-formed rows.

use crate::support::*;
use serde_json::Value;

#[test]
fn quick_json_has_the_documented_shape() {
    let out = kiln()
        .args([
            "bench",
            "--quick",
            "--json",
            "--iterations",
            "2",
            "--no-docker",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["machine", "memory", "rows", "throughput"]);

    let rows = v["rows"].as_array().unwrap();
    for row in rows {
        assert!(
            row["method"].is_string() && row["workload"].is_string(),
            "{row}"
        );
        for k in ["p50_ms", "p90_ms", "p99_ms"] {
            assert!(row[k].as_f64().is_some_and(|x| x >= 0.0), "{k} in {row}");
        }
        assert!(row["n"].as_u64().is_some_and(|n| n > 0), "{row}");
    }
    let has = |m: &str, w: &str| rows.iter().any(|r| r["method"] == m && r["workload"] == w);
    for (m, w) in [
        ("kiln-pool", "W1"),
        ("kiln-pool", "W2"),
        ("kiln-pool", "W3"),
        ("kiln-nopool", "W1"),
    ] {
        assert!(has(m, w), "no {m} {w} row in {text}");
    }
    assert!(
        !rows.iter().any(|r| r["method"] == "docker-run"),
        "--no-docker"
    );

    for t in v["throughput"].as_array().unwrap() {
        assert!(t["method"].is_string(), "{t}");
        assert!(t["per_s"].as_f64().is_some_and(|x| x >= 0.0), "{t}");
    }
    let memory = v["memory"].as_array().unwrap();
    assert!(memory.iter().any(|m| m["method"] == "kiln-pool"), "{text}");
    for m in memory {
        assert!(m["uss_mib"].as_f64().is_some_and(|x| x > 0.0), "{m}");
        assert!(m["pss_mib"].as_f64().is_some_and(|x| x > 0.0), "{m}");
    }
    let machine = &v["machine"];
    assert!(machine["cores"].as_u64().is_some_and(|c| c > 0));
    for k in ["kernel", "cgroup", "date"] {
        assert!(machine[k].is_string(), "machine.{k}: {machine}");
    }
}
