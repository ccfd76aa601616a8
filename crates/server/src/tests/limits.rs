//! Backpressure and bounds: body size, rate limit, in-flight cap, per-key
//! concurrency, session quota, request timeout.

use super::*;
use kiln_core::service::ErrorKind;
use serde_json::json;

fn retry_after(response: &Response<Body>) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_oversized_body_is_413_before_any_command() {
    let fake = Fake::start(|_| Script::reply(Reply::Ok));
    let mut config = config();
    config.server.max_body_bytes = 1024;
    let app = app_with(&config, &fake);
    let code = "x".repeat(2000);
    let (status, response) = send(
        &app,
        json_req("POST", "/v1/execute", Some("a"), json!({"code": code})),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_kind(response).await, "too_large");
    let (status, _) = send(
        &app,
        req(
            "PUT",
            "/v1/sessions/s/files/big",
            Some("a"),
            vec![0u8; 4096],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Without a Content-Length: a chunked body that grows past the limit.
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 512]))),
    );
    let request = req(
        "PUT",
        "/v1/sessions/s/files/big",
        Some("a"),
        Body::from_stream(chunks),
    );
    assert_eq!(send(&app, request).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(fake.commands().is_empty());
    let (_, metrics) = send(&app, req("GET", "/metrics", None, "")).await;
    let text = String::from_utf8(body_bytes(metrics).await).unwrap();
    assert!(
        text.contains("kiln_rejections_total{reason=\"too_large\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let fake = Fake::start(|_| Script::reply(Reply::Sessions { sessions: vec![] }));
    let mut config = config();
    config.server.keys[0].requests_per_minute = 3;
    let app = app_with(&config, &fake);
    for _ in 0..3 {
        assert_eq!(
            send(&app, req("GET", "/v1/sessions", Some("a"), ""))
                .await
                .0,
            StatusCode::OK
        );
    }
    let (status, response) = send(&app, req("GET", "/v1/sessions", Some("a"), "")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&response);
    assert!((15..=21).contains(&wait), "one token per 20 s: {wait}");
    assert_eq!(error_kind(response).await, "too_many");
    // Other keys have their own bucket.
    assert_eq!(
        send(&app, req("GET", "/v1/sessions", Some("b"), ""))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(fake.commands().len(), 4);
}

/// Refused before its body was read, a request's connection cannot be
/// reused: the answer says `Connection: close` (a keep-alive client would
/// otherwise fail its next request on the closed connection).
#[tokio::test]
async fn a_refusal_before_the_body_is_read_closes_the_connection() {
    let fake = Fake::start(|_| Script::reply(Reply::Sessions { sessions: vec![] }));
    let mut config = config();
    config.server.keys[0].requests_per_minute = 1;
    config.server.max_body_bytes = 64;
    let app = app_with(&config, &fake);
    let close = |response: &Response<Body>| {
        response
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let code = json!({"code": "print(1)"});
    let (status, response) = send(&app, json_req("POST", "/v1/execute", None, code.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(close(&response).as_deref(), Some("close"));
    // Without a body there is nothing left unread.
    let (status, response) = send(&app, req("GET", "/v1/sessions", None, "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(close(&response), None);
    let (status, response) = send(&app, req("GET", "/v1/sessions", Some("a"), "")).await;
    assert_eq!((status, close(&response)), (StatusCode::OK, None));
    let (status, response) = send(&app, json_req("POST", "/v1/execute", Some("a"), code)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(close(&response).as_deref(), Some("close"));
    let big = json!({"code": "x".repeat(100)});
    let (status, response) = send(&app, json_req("POST", "/v1/execute", Some("b"), big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(close(&response).as_deref(), Some("close"));
}

/// A fake whose executions wait at a gate; returns (fake, gate).
fn gated() -> (Fake, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let fake = Fake::start(move |c| match c {
        Command::Execute { .. } | Command::SessionExecute { .. } => Script {
            replies: vec![Reply::Result {
                result: result("x"),
            }],
            gate: Some(g.clone()),
            ..Script::default()
        },
        _ => Script::reply(Reply::Sessions { sessions: vec![] }),
    });
    (fake, gate)
}

async fn wait_for_commands(fake: &Fake, n: usize) {
    for _ in 0..200 {
        if fake.commands().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the fake saw {:?}", fake.commands());
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_get_429() {
    let (fake, gate) = gated();
    let mut config = config();
    config.server.max_in_flight = 1;
    let app = app_with(&config, &fake);
    let first = tokio::spawn(send_owned(app.clone(), "a"));
    wait_for_commands(&fake, 1).await;
    let (status, response) = send(&app, req("GET", "/v1/sessions", Some("b"), "")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&response), 1);
    gate.add_permits(1);
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(
        send(&app, req("GET", "/v1/sessions", Some("b"), ""))
            .await
            .0,
        StatusCode::OK
    );
}

async fn send_owned(app: Router, key: &'static str) -> StatusCode {
    let request = req("POST", "/v1/execute", Some(key), r#"{"code":"1"}"#);
    send(&app, request).await.0
}

#[tokio::test]
async fn a_key_at_its_concurrency_gets_429_and_others_do_not() {
    let (fake, gate) = gated();
    let mut config = config();
    config.server.keys[0].max_concurrency = 1;
    let app = app_with(&config, &fake);
    let first = tokio::spawn(send_owned(app.clone(), "a"));
    wait_for_commands(&fake, 1).await;
    let (status, response) = send(
        &app,
        req("POST", "/v1/execute", Some("a"), r#"{"code":"1"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&response), 1);
    let second_key = tokio::spawn(send_owned(app.clone(), "b"));
    wait_for_commands(&fake, 2).await;
    gate.add_permits(2);
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(second_key.await.unwrap(), StatusCode::OK);
    // The slot is free again.
    gate.add_permits(1);
    assert_eq!(send_owned(app, "a").await, StatusCode::OK);
}

#[tokio::test]
async fn a_key_at_its_session_quota_gets_429_without_a_create() {
    let fake = Fake::start(|c| {
        Script::reply(match c {
            Command::ListSessions { .. } => Reply::Sessions {
                sessions: vec![view("s1"), view("s2")],
            },
            _ => Reply::Session {
                session: view("s3"),
            },
        })
    });
    let app = app(&fake);
    let (status, response) =
        send(&app, json_req("POST", "/v1/sessions", Some("a"), json!({}))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&response) >= 1);
    assert_eq!(
        fake.commands(),
        vec![Command::ListSessions { key: "a".into() }]
    );
}

#[tokio::test]
async fn the_supervisors_too_many_is_429_with_retry_after() {
    let fake = Fake::start(|_| Script::reply(Reply::error(ErrorKind::TooMany, "pool exhausted")));
    let (status, response) = send(
        &app(&fake),
        req("POST", "/v1/execute", Some("a"), r#"{"code":"1"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&response) >= 1);
}

#[tokio::test]
async fn a_request_that_outlives_its_timeout_is_503_and_its_connection_closed() {
    let fake = Fake::start(|_| Script {
        hold: true,
        ..Script::default()
    });
    let mut config = config();
    config.server.request_timeout_ms = 200;
    let app = app_with(&config, &fake);
    let start = std::time::Instant::now();
    let (status, response) = send(&app, req("GET", "/v1/sessions/s1", Some("a"), "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(error_kind(response).await == "unavailable");
    within(5, &fake.eof, "closing the timed-out supervisor connection").await;
}
