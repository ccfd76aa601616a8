//! The web playground in a real browser: Debian's `chromium`, headless,
//! driven through `chromedriver` (WebDriver, with thirtyfour) against a real
//! `kiln serve --dev` on loopback. Types code that draws a chart, runs it,
//! and checks that the chart appears as a PNG; then a table (Ctrl+Enter,
//! same session) and an error. The screenshot is written under `target/`,
//! and to `docs/playground.png` with `KILN_WRITE_DOCS=1`.
//!
//! `.ci/run` installs `chromium` and `chromium-driver`; without them this
//! test fails (it is never skipped).

use crate::support::kiln;
use base64::Engine;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thirtyfour::prelude::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// A child process ended (TERM, then KILL) when dropped.
struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(POLL);
            }
            eprintln!("{} did not stop on SIGTERM; killing it", self.1);
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status code of `GET path` on 127.0.0.1:port, if it answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn wait_for(what: &str, proc: &mut Proc, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("{} exited ({status}) before {what}", proc.1);
        }
        if ready() {
            return;
        }
        std::thread::sleep(POLL);
    }
    panic!("{what}: not within {WAIT:?}");
}

/// `kiln serve --dev` with its own supervisor socket (tests run side by side).
fn start_server(dir: &Path) -> (Proc, u16) {
    // The front end (nobody) must reach the socket's directory.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.join("kiln.toml");
    let socket = dir.join("run/supervisor.sock");
    std::fs::write(
        &config,
        format!(
            "[server]\nsupervisor_socket = \"{}\"\npool_min = 1\npool_max = 2\n",
            socket.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = kiln()
        .arg("--config")
        .arg(&config)
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn kiln serve");
    let mut server = Proc(child, "kiln serve");
    wait_for("kiln serve answers /v1/health", &mut server, || {
        http_status(port, "/v1/health") == Some(200)
    });
    (server, port)
}

fn start_chromedriver() -> (Proc, u16) {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install chromium chromium-driver (.ci/run does)"
        );
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .args([&format!("--port={port}"), "--allowed-ips=127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn chromedriver");
    let mut driver = Proc(child, "chromedriver");
    wait_for("chromedriver answers /status", &mut driver, || {
        http_status(port, "/status") == Some(200)
    });
    (driver, port)
}

async fn browser(driver_port: u16, profile: &Path) -> WebDriverResult<WebDriver> {
    let mut caps = DesiredCapabilities::chrome();
    caps.set_binary(CHROMIUM)?;
    for arg in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,1700",
        &format!("--user-data-dir={}", profile.display()),
    ] {
        caps.add_arg(arg)?;
    }
    WebDriver::new(format!("http://127.0.0.1:{driver_port}"), caps).await
}

/// Evaluates `script` (a function body) until it returns something truthy.
async fn until(driver: &WebDriver, what: &str, script: &str, args: Vec<Value>) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let ret = driver.execute(script, args.clone()).await.unwrap();
        let v = ret.json().clone();
        let truthy = match &v {
            Value::Null | Value::Bool(false) => false,
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            _ => true,
        };
        if truthy {
            return v;
        }
        if Instant::now() > deadline {
            let page = driver
                .execute("return document.body.innerText", vec![])
                .await
                .map(|r| r.json().to_string())
                .unwrap_or_default();
            panic!("{what}: not within {WAIT:?}; the page says: {page}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Replaces the editor's text by typing `code` into it.
async fn type_code(driver: &WebDriver, code: &str) -> WebDriverResult<WebElement> {
    let editor = driver.find(By::Id("code")).await?;
    editor.clear().await?;
    editor.send_keys(code).await?;
    let typed = editor.prop("value").await?.unwrap_or_default();
    assert_eq!(typed, code, "the editor holds what was typed");
    Ok(editor)
}

/// The number of finished executions (cells with an outcome) on the page.
const DONE: &str =
    "return document.querySelectorAll('#output .cell[data-outcome]').length >= arguments[0]";

fn screenshot_paths() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut paths = vec![root.join("target/playground.png")];
    if std::env::var("KILN_WRITE_DOCS").as_deref() == Ok("1") {
        paths.push(root.join("docs/playground.png"));
    }
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_draws_a_chart_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = start_server(dir.path());

    // The page itself: served at / with a strict Content-Security-Policy.
    assert_eq!(http_status(port, "/"), Some(200), "GET / serves the page");

    let (_chromedriver, driver_port) = start_chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let driver = browser(driver_port, profile.path())
        .await
        .expect("start headless chromium through chromedriver");
    let result = exercise(&driver, port).await;
    let quit = driver.quit().await;
    result.unwrap();
    quit.unwrap();
}

async fn exercise(driver: &WebDriver, port: u16) -> WebDriverResult<()> {
    driver.goto(format!("http://127.0.0.1:{port}/")).await?;
    assert_eq!(driver.title().await?, "kiln playground");
    until(
        driver,
        "the page made its session",
        "return document.getElementById('status').dataset.state === 'ready'",
        vec![],
    )
    .await;

    // 1. A chart, with the Run button.
    type_code(
        driver,
        "import matplotlib.pyplot as plt; plt.plot([1,2,3]); plt.show()",
    )
    .await?;
    driver.find(By::Id("run")).await?.click().await?;
    until(driver, "the first run finishes", DONE, vec![1.into()]).await;
    let img = driver
        .query(By::Css("#output img.chart"))
        .wait(WAIT, POLL)
        .first()
        .await?;
    let src = img.attr("src").await?.unwrap_or_default();
    let b64 = src
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| panic!("the chart is a data: PNG, not {:.60}", src));
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("the chart's base64 decodes");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "the chart is a PNG");
    assert!(
        png.len() > 1000,
        "a real chart, not a stub: {} bytes",
        png.len()
    );
    // The browser decoded it too (the page's CSP lets data: images in).
    until(
        driver,
        "the browser decodes the chart",
        "return arguments[0].complete && arguments[0].naturalWidth > 100",
        vec![img.to_json()?],
    )
    .await;

    // 2. A table and stdout, with Ctrl+Enter, in the same session (plt persists).
    let editor = type_code(
        driver,
        "import pandas as pd\nprint('still', plt.__name__)\npd.DataFrame({'x': [1, 2, 3], 'y': [1, 4, 9]})",
    )
    .await?;
    editor.send_keys(Key::Control + Key::Enter).await?;
    until(driver, "the second run finishes", DONE, vec![2.into()]).await;
    let cells = driver.find_all(By::Css("#output .cell")).await?;
    let second = &cells[1];
    assert_eq!(second.attr("data-outcome").await?.as_deref(), Some("ok"));
    let stdout = second.find(By::Css("pre.stdout")).await?.text().await?;
    assert_eq!(stdout.trim(), "still matplotlib.pyplot");
    // The table is untrusted HTML: it sits in a sandboxed frame, no scripts.
    let frame = second.find(By::Css("iframe.table")).await?;
    assert_eq!(
        frame.attr("sandbox").await?.as_deref(),
        Some("allow-same-origin")
    );
    let rows = until(
        driver,
        "the table renders in its frame",
        "const d = arguments[0].contentDocument; return d && d.querySelectorAll('table tbody tr').length",
        vec![frame.to_json()?],
    )
    .await;
    assert_eq!(rows, 3);

    // 3. An error, highlighted with its traceback.
    type_code(driver, "def ratio(a, b):\n    return a / b\nratio(1, 0)").await?;
    driver.find(By::Id("run")).await?.click().await?;
    until(driver, "the third run finishes", DONE, vec![3.into()]).await;
    let error = driver
        .find(By::Css("#output .cell:nth-child(3) .error"))
        .await?;
    let text = error.text().await?;
    assert!(text.starts_with("ZeroDivisionError"), "{text}");
    assert!(
        text.contains("return a / b"),
        "the traceback is shown: {text}"
    );

    // Back to the chart for the picture.
    type_code(
        driver,
        "import matplotlib.pyplot as plt; plt.plot([1,2,3]); plt.show()",
    )
    .await?;
    driver.execute("window.scrollTo(0, 0)", vec![]).await?;
    // Fit the window to the page (no blank band below it, nothing cut off).
    let fit = driver
        .execute(
            "return Math.ceil(document.querySelector('main').getBoundingClientRect().bottom \
             + window.scrollY + window.outerHeight - window.innerHeight)",
            vec![],
        )
        .await?;
    let height = fit.json().as_u64().expect("a window height") as u32;
    driver
        .set_window_rect(0, 0, 1280, height.clamp(600, 4000))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for path in screenshot_paths() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        driver.screenshot(&path).await?;
        let shot = std::fs::read(&path).unwrap();
        assert!(shot.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
    }
    Ok(())
}
