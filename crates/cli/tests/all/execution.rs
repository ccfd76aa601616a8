//! What code gets back: output, charts, tables, values, errors, files.

use crate::support::*;

#[test]
fn print_reaches_stdout() {
    let v = run("print('hello from kiln')\nimport sys\nprint('to stderr', file=sys.stderr)");
    expect_outcome(&v, "ok");
    assert_eq!(stdout(&v), "hello from kiln\n");
    assert_eq!(stream(&v, "stderr"), "to stderr\n");
    assert_eq!(
        v["exit_code"], 0,
        "the runner exits by itself after the last execution"
    );
    assert_eq!(v["isolation"]["backend"], "native");
    assert_eq!(v["isolation"]["seccomp"], true);
}

#[test]
fn chart_becomes_one_png_display() {
    let v = run("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [2, 4, 6])\nplt.title('t')\nplt.show()");
    expect_outcome(&v, "ok");
    let displays = events(&v, "display");
    assert_eq!(displays.len(), 1, "{v}");
    let png = base64_decode(displays[0]["data"]["image/png"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(
        png.len() > 2000,
        "suspiciously small chart: {} bytes",
        png.len()
    );
}

#[test]
fn dataframe_is_html_and_text() {
    let v = run("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2], 'b': [3.5, 4.5]})\ndf");
    expect_outcome(&v, "ok");
    let displays = events(&v, "display");
    assert_eq!(displays.len(), 1, "{v}");
    let data = &displays[0]["data"];
    assert!(data["text/html"].as_str().unwrap().contains("<table"));
    assert!(data["text/plain"].as_str().unwrap().contains("3.5"));
}

#[test]
fn last_expression_is_displayed() {
    let v = run("x = 20\nx + 22");
    expect_outcome(&v, "ok");
    let displays = events(&v, "display");
    assert_eq!(displays.len(), 1, "{v}");
    assert_eq!(displays[0]["data"]["text/plain"], "42");
}

#[test]
fn exception_has_name_value_and_user_traceback() {
    let v = run("def f(x):\n    return 1 / x\n\nf(0)\n");
    expect_outcome(&v, "error");
    let errors = events(&v, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["name"], "ZeroDivisionError");
    assert_eq!(errors[0]["value"], "division by zero");
    let tb: String = errors[0]["traceback"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(tb.contains("line 4") && tb.contains("line 2"), "{tb}");
    assert!(tb.contains("return 1 / x"), "{tb}");
    assert!(!tb.contains("runner.py"), "runner frames leaked: {tb}");
}

#[test]
fn files_in_work_out_are_artifacts() {
    let v = run("import pandas as pd\npd.DataFrame({'a': [1, 2]}).to_csv('/work/out/table.csv', index=False)\nopen('/work/out/note.txt', 'w').write('hi')");
    expect_outcome(&v, "ok");
    let files = events(&v, "file");
    let mut names: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["note.txt", "table.csv"]);
    let csv = files.iter().find(|f| f["path"] == "table.csv").unwrap();
    assert_eq!(
        base64_decode(csv["data_b64"].as_str().unwrap()),
        b"a\n1\n2\n"
    );
}

#[test]
fn usage_is_reported_by_the_supervisor() {
    let v = run("s = 0\nfor i in range(3_000_000):\n    s += i\nprint(s)");
    expect_outcome(&v, "ok");
    assert!(v["usage"]["cpu_ms"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["usage"]["peak_memory_bytes"].as_u64().unwrap() > 1 << 20,
        "{v}"
    );
    assert!(v["usage"]["duration_ms"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn example_analysis_prints_a_summary_and_writes_a_chart() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/analysis.py");
    let out = kiln()
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples"))
        .args(["run", example, "--file", "sales.csv", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("mean"), "no summary printed: {stdout}");
    let chart = dir.path().join("chart-1.png");
    assert!(stdout.contains(&chart.display().to_string()), "{stdout}");
    let png = std::fs::read(&chart).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    // A real chart: wide enough and with more than a handful of colours' worth of bytes.
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(width >= 300 && height >= 200, "{width}x{height}");
    assert!(png.len() > 10_000, "{} bytes", png.len());
}
