//! Tests of the front end against a fake supervisor: a unix-socket server
//! that records each command and answers with a canned script.

mod files;
mod limits;
mod openapi;
mod routes;
mod streaming;

use crate::app::{router, AppState};
use crate::auth::hash_secret;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use kiln_core::service::{Command, Reply, SessionView};
use kiln_core::{Event, ExecutionResult, Outcome};
use kiln_policy::{ApiKey, Config};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt;

/// What the fake answers one command with.
#[derive(Default)]
pub struct Script {
    pub replies: Vec<Reply>,
    /// Sent before waiting on `gate` (or forever, with `hold`).
    pub early: usize,
    /// Waits for a permit before sending the rest.
    pub gate: Option<Arc<Semaphore>>,
    /// After the early replies, sends nothing more: waits for the client to
    /// close the connection, and notes that it did.
    pub hold: bool,
}

impl Script {
    pub fn reply(reply: Reply) -> Self {
        Self {
            replies: vec![reply],
            ..Self::default()
        }
    }
}

type Handler = dyn Fn(&Command) -> Script + Send + Sync;

/// A fake supervisor on a unix socket in a temporary directory.
pub struct Fake {
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub commands: Arc<Mutex<Vec<Command>>>,
    /// Notified each time a held connection sees the client's EOF.
    pub eof: Arc<Notify>,
}

impl Fake {
    pub fn start(handler: impl Fn(&Command) -> Script + Send + Sync + 'static) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("supervisor.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let eof = Arc::new(Notify::new());
        let handler: Arc<Handler> = Arc::new(handler);
        let (log, seen) = (commands.clone(), eof.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (handler, log, seen) = (handler.clone(), log.clone(), seen.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut reader = BufReader::new(read);
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    let command: Command = serde_json::from_str(&line).unwrap();
                    let script = handler(&command);
                    log.lock().unwrap().push(command);
                    let mut replies = script.replies.into_iter();
                    let send = |reply: Reply| {
                        let mut l = serde_json::to_vec(&reply).unwrap();
                        l.push(b'\n');
                        l
                    };
                    for reply in replies.by_ref().take(script.early) {
                        if write.write_all(&send(reply)).await.is_err() {
                            return;
                        }
                    }
                    if script.hold {
                        let mut rest = Vec::new();
                        let _ = reader.read_to_end(&mut rest).await;
                        seen.notify_one();
                        return;
                    }
                    if let Some(gate) = script.gate {
                        gate.acquire().await.unwrap().forget();
                    }
                    for reply in replies {
                        let _ = write.write_all(&send(reply)).await;
                    }
                });
            }
        });
        Self {
            _dir: dir,
            socket,
            commands,
            eof,
        }
    }

    pub fn commands(&self) -> Vec<Command> {
        self.commands.lock().unwrap().clone()
    }
}

pub fn key(id: &str) -> ApiKey {
    ApiKey {
        id: id.into(),
        sha256: hash_secret(&format!("secret-{id}")),
        max_sessions: 2,
        max_concurrency: 2,
        requests_per_minute: 600,
    }
}

/// Keys `a` and `b` (secrets `secret-a`, `secret-b`).
pub fn config() -> Config {
    let mut config = Config::default();
    config.server.keys = vec![key("a"), key("b")];
    config
}

pub fn app_with(config: &Config, fake: &Fake) -> Router {
    router(AppState::new(config, fake.socket.clone(), false).unwrap())
}

pub fn app(fake: &Fake) -> Router {
    app_with(&config(), fake)
}

pub fn req(method: &str, uri: &str, key: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(id) = key {
        builder = builder.header("authorization", format!("Bearer secret-{id}"));
    }
    builder.body(body.into()).unwrap()
}

pub fn json_req(method: &str, uri: &str, key: Option<&str>, body: Value) -> Request<Body> {
    let mut r = req(method, uri, key, body.to_string());
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Response<Body>) {
    let response = app.clone().oneshot(request).await.unwrap();
    (response.status(), response)
}

pub async fn body_bytes(response: Response<Body>) -> Vec<u8> {
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

pub async fn body_json(response: Response<Body>) -> Value {
    let bytes = body_bytes(response).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// Asserts the error shape and returns the kind.
pub async fn error_kind(response: Response<Body>) -> String {
    let v = body_json(response).await;
    assert!(v["error"]["message"].is_string(), "{v}");
    v["error"]["kind"].as_str().unwrap().to_string()
}

pub fn result(text: &str) -> ExecutionResult {
    let mut r = ExecutionResult::without_sandbox(Outcome::Ok, "");
    r.reason = None;
    r.events = vec![Event::Stdout { text: text.into() }];
    r.exit_code = Some(0);
    r
}

pub fn view(id: &str) -> SessionView {
    SessionView {
        id: id.into(),
        executing: false,
        executions: 0,
        idle_for_s: 0.0,
        age_s: 1.0,
        idle_timeout_s: 600,
        max_lifetime_s: 3600,
    }
}

/// Waits for `notify`, failing the test after `secs`.
pub async fn within(secs: u64, notify: &Notify, what: &str) {
    tokio::time::timeout(Duration::from_secs(secs), notify.notified())
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {secs} s"));
}
