//! SSE streams, client disconnects, and graceful shutdown over a real
//! loopback listener.

use super::*;
use crate::{run_frontend, FrontendOptions};
use kiln_core::service::ErrorKind;
use std::collections::BTreeMap;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// (event name, data) of each SSE event, keep-alive comments left out.
fn sse_events(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d.to_string());
                }
            }
            Some((name?, data?))
        })
        .collect()
}

fn sse_req(uri: &str, body: &str) -> Request<Body> {
    let mut r = req("POST", uri, Some("a"), body.to_string());
    r.headers_mut()
        .insert("accept", "text/event-stream".parse().unwrap());
    r
}

fn all_kinds_of_events() -> Vec<Reply> {
    let png = BTreeMap::from([("image/png".to_string(), "iVBORw0KGgo=".to_string())]);
    let events = vec![
        Event::Stdout { text: "a\n".into() },
        Event::Stderr { text: "w\n".into() },
        Event::Display { data: png },
        Event::File {
            path: "out/x.csv".into(),
            size: 1,
            data_b64: "eA==".into(),
        },
        Event::Error {
            name: "ValueError".into(),
            value: "v".into(),
            traceback: vec![],
        },
    ];
    let mut replies: Vec<Reply> = events
        .iter()
        .cloned()
        .map(|event| Reply::Event { event })
        .collect();
    let mut end = result("a\n");
    end.events = events;
    end.outcome = kiln_core::Outcome::Error;
    replies.push(Reply::Result { result: end });
    replies
}

#[tokio::test]
async fn sse_sends_each_event_in_order_then_end_with_the_result() {
    let fake = Fake::start(|_| Script {
        replies: all_kinds_of_events(),
        ..Script::default()
    });
    let app = app(&fake);
    for uri in ["/v1/execute", "/v1/sessions/s1/executions"] {
        let (status, response) = send(&app, sse_req(uri, r#"{"code":"print('a')"}"#)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let text = String::from_utf8(body_bytes(response).await).unwrap();
        let events = sse_events(&text);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["stdout", "stderr", "display", "file", "error", "end"],
            "{text}"
        );
        let first: Value = serde_json::from_str(&events[0].1).unwrap();
        assert_eq!(first, serde_json::json!({"type": "stdout", "text": "a\n"}));
        let end: Value = serde_json::from_str(&events[5].1).unwrap();
        assert_eq!(end["outcome"], "error");
        assert_eq!(end["events"].as_array().unwrap().len(), 5);
    }
}

#[tokio::test]
async fn an_error_before_any_event_keeps_its_status_and_a_later_one_ends_the_stream() {
    let fake = Fake::start(|c| match c {
        Command::SessionExecute { .. } => Script::reply(Reply::error(ErrorKind::Busy, "running")),
        _ => Script {
            replies: vec![
                Reply::Event {
                    event: Event::Stdout { text: "x".into() },
                },
                Reply::error(ErrorKind::Internal, "lost the sandbox"),
            ],
            ..Script::default()
        },
    });
    let app = app(&fake);
    let (status, response) = send(
        &app,
        sse_req("/v1/sessions/s1/executions", r#"{"code":"1"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_kind(response).await, "busy");

    let (status, response) = send(&app, sse_req("/v1/execute", r#"{"code":"1"}"#)).await;
    assert_eq!(status, StatusCode::OK);
    let events = sse_events(&String::from_utf8(body_bytes(response).await).unwrap());
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].0, "end");
    let end: Value = serde_json::from_str(&events[1].1).unwrap();
    assert_eq!(end["error"]["kind"], "internal");
}

/// Serves `config` on a loopback port until `stop` fires; returns the
/// address and the server's task.
async fn serve(
    config: Config,
    fake: &Fake,
    drain: Duration,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = FrontendOptions {
        dev: false,
        shutdown: async move {
            let _ = stopped.await;
        },
        drain,
    };
    let task = tokio::spawn(run_frontend(config, listener, fake.socket.clone(), options));
    (addr, stop, task)
}

async fn post(addr: std::net::SocketAddr, uri: &str, body: &str, sse: bool) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let accept = if sse {
        "text/event-stream"
    } else {
        "application/json"
    };
    let head = format!(
        "POST {uri} HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer secret-a\r\nAccept: {accept}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Reads until `needle` has arrived; returns all read so far.
async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the server answered in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_client_leaving_an_sse_stream_closes_its_supervisor_connection() {
    let fake = Fake::start(|c| match c {
        Command::Execute { .. } => Script {
            replies: vec![Reply::Event {
                event: Event::Stdout {
                    text: "tick".into(),
                },
            }],
            early: 1,
            hold: true,
            ..Script::default()
        },
        _ => Script::reply(Reply::Stats {
            sessions: 0,
            pool: None,
            spawner: "fake".into(),
        }),
    });
    let (addr, _stop, _task) = serve(config(), &fake, DEFAULT_TEST_DRAIN).await;
    let mut stream = post(addr, "/v1/execute", r#"{"code":"while True: pass"}"#, true).await;
    let head = read_until(&mut stream, "event: stdout").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(stream);
    within(
        5,
        &fake.eof,
        "the supervisor connection closing after the client left",
    )
    .await;
    // The execution is recorded as ended by the disconnect.
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        if text.contains("kiln_executions_total{outcome=\"disconnected\"} 1") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the disconnected execution was never counted");
}

const DEFAULT_TEST_DRAIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn shutdown_lets_an_execution_in_flight_finish() {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let fake = Fake::start(move |_| Script {
        replies: vec![Reply::Result {
            result: result("done"),
        }],
        gate: Some(g.clone()),
        ..Script::default()
    });
    let (addr, stop, task) = serve(config(), &fake, DEFAULT_TEST_DRAIN).await;
    let mut stream = post(addr, "/v1/execute", r#"{"code":"1"}"#, false).await;
    for _ in 0..200 {
        if !fake.commands().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "the server waits for the execution");
    gate.add_permits(1);
    let answer = read_until(&mut stream, "\"outcome\":\"ok\"").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the server stopped after draining")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn shutdown_is_bounded_and_drops_what_is_still_running() {
    let fake = Fake::start(|_| Script {
        hold: true,
        ..Script::default()
    });
    let (addr, stop, task) = serve(config(), &fake, Duration::from_millis(300)).await;
    let _stream = post(addr, "/v1/execute", r#"{"code":"1"}"#, false).await;
    for _ in 0..200 {
        if !fake.commands().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = std::time::Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the drain is bounded")
        .unwrap()
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    within(5, &fake.eof, "the dropped execution's connection closing").await;
}

#[tokio::test]
async fn a_client_leaving_a_json_execution_closes_its_supervisor_connection() {
    let fake = Fake::start(|_| Script {
        hold: true,
        ..Script::default()
    });
    let (addr, _stop, _task) = serve(config(), &fake, DEFAULT_TEST_DRAIN).await;
    let stream = post(addr, "/v1/execute", r#"{"code":"while True: pass"}"#, false).await;
    for _ in 0..200 {
        if !fake.commands().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
    within(
        5,
        &fake.eof,
        "the supervisor connection closing after the client left",
    )
    .await;
}
