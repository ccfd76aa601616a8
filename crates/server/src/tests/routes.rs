//! Every route against the fake: what command it sends, what it answers.

use super::*;
use kiln_core::service::{ErrorKind, PoolInfo};
use serde_json::json;

fn stats() -> Reply {
    Reply::Stats {
        sessions: 3,
        pool: Some(PoolInfo {
            ready: 2,
            in_use: 1,
            ..PoolInfo::default()
        }),
        spawner: "fresh".into(),
    }
}

#[tokio::test]
async fn health_needs_no_key_and_no_supervisor() {
    let fake = Fake::start(|_| Script::reply(Reply::Ok));
    let (status, response) = send(&app(&fake), req("GET", "/v1/health", None, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body_json(response).await, json!({"status": "ok"}));
    assert!(fake.commands().is_empty());
}

#[tokio::test]
async fn ready_follows_the_supervisor() {
    let fake = Fake::start(|_| Script::reply(stats()));
    let (status, _) = send(&app(&fake), req("GET", "/v1/ready", None, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.commands(), vec![Command::Stats]);

    let gone = router(AppState::new(&config(), "/nonexistent/kiln.sock".into(), false).unwrap());
    let (status, response) = send(&gone, req("GET", "/v1/ready", None, "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_kind(response).await, "unavailable");
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401_and_reaches_nothing() {
    let fake = Fake::start(|_| Script::reply(Reply::Sessions { sessions: vec![] }));
    let app = app(&fake);
    for request in [
        req("GET", "/v1/sessions", None, ""),
        req("GET", "/v1/sessions", Some("nobody"), ""),
        req("POST", "/v1/execute", None, r#"{"code":"print(1)"}"#),
    ] {
        let (status, response) = send(&app, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_kind(response).await, "unauthorized");
    }
    let mut basic = req("GET", "/v1/sessions", None, "");
    basic
        .headers_mut()
        .insert("authorization", "Basic c2VjcmV0LWE=".parse().unwrap());
    assert_eq!(send(&app, basic).await.0, StatusCode::UNAUTHORIZED);
    assert!(fake.commands().is_empty());

    let (status, _) = send(&app, req("GET", "/v1/sessions", Some("b"), "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fake.commands(),
        vec![Command::ListSessions { key: "b".into() }]
    );
}

#[tokio::test]
async fn execute_sends_the_request_and_answers_the_result() {
    let fake = Fake::start(|_| Script {
        replies: vec![
            Reply::Event {
                event: Event::Stdout { text: "2\n".into() },
            },
            Reply::Result {
                result: result("2\n"),
            },
        ],
        ..Script::default()
    });
    let body = json!({
        "code": "print(1+1)",
        "files": [{"path": "data/in.csv", "data_b64": "YSxiCg=="}],
        "limits": {"wall_ms": 2000, "memory_mib": 128},
        "environment": "default",
        "libraries": ["pandas"],
    });
    let (status, response) = send(
        &app(&fake),
        json_req("POST", "/v1/execute", Some("a"), body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v = body_json(response).await;
    assert_eq!(v["outcome"], "ok");
    assert_eq!(v["events"][0], json!({"type": "stdout", "text": "2\n"}));
    let [Command::Execute {
        key,
        request,
        limits,
        environment,
        libraries,
    }] = &fake.commands()[..]
    else {
        panic!("{:?}", fake.commands());
    };
    assert_eq!(key, "a");
    assert_eq!(request.code, "print(1+1)");
    assert_eq!(request.files[0].path, "data/in.csv");
    assert_eq!(request.files[0].data, b"a,b\n");
    assert_eq!(limits.wall_ms, Some(2000));
    assert_eq!(limits.memory_mib, Some(128));
    assert_eq!(limits.cpu_ms, None);
    assert_eq!(environment.as_deref(), Some("default"));
    assert_eq!(libraries, &["pandas"]);
}

#[tokio::test]
async fn malformed_bodies_are_400_before_any_command() {
    let fake = Fake::start(|_| Script::reply(Reply::Ok));
    let app = app(&fake);
    for body in [
        "not json",
        r#"{"code": 1}"#,
        r#"{"code": "x", "surprise": 1}"#,
        r#"{"code": "x", "limits": {"wall_s": 1}}"#,
        r#"{"code": "x", "files": [{"path": "a", "data_b64": "***"}]}"#,
        r#"{"code": "x", "files": [{"path": "../etc/passwd", "data_b64": ""}]}"#,
    ] {
        let (status, response) = send(&app, req("POST", "/v1/execute", Some("a"), body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_kind(response).await, "bad_request");
    }
    assert!(fake.commands().is_empty());
}

#[tokio::test]
async fn a_session_lives_and_dies_through_its_routes() {
    let fake = Fake::start(|c| {
        Script::reply(match c {
            Command::ListSessions { .. } => Reply::Sessions {
                sessions: vec![view("s1")],
            },
            Command::CreateSession { .. }
            | Command::GetSession { .. }
            | Command::Keepalive { .. } => Reply::Session {
                session: view("s1"),
            },
            Command::SessionExecute { .. } => Reply::Result {
                result: result("hi"),
            },
            _ => Reply::Ok,
        })
    });
    let app = app(&fake);
    let create = json!({"limits": {"memory_mib": 256}, "env": {"A": "1"}, "idle_timeout_s": 60,
        "files": [{"path": "x.txt", "data_b64": "aGk="}]});
    let (status, response) = send(&app, json_req("POST", "/v1/sessions", Some("a"), create)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body_json(response).await["id"], "s1");

    let (status, response) = send(&app, req("GET", "/v1/sessions", Some("a"), "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body_json(response).await["sessions"][0]["id"], "s1");
    let (status, _) = send(&app, req("GET", "/v1/sessions/s1", Some("a"), "")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        &app,
        req("POST", "/v1/sessions/s1/keepalive", Some("a"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let exec = json!({"code": "print('hi')"});
    let (status, response) = send(
        &app,
        json_req("POST", "/v1/sessions/s1/executions", Some("a"), exec),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body_json(response).await["events"][0]["text"], "hi");
    let (status, _) = send(
        &app,
        req("POST", "/v1/sessions/s1/interrupt", Some("a"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, response) = send(&app, req("DELETE", "/v1/sessions/s1", Some("a"), "")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body_bytes(response).await.is_empty());

    let names: Vec<String> = fake
        .commands()
        .iter()
        .map(|c| {
            serde_json::to_value(c).unwrap()["cmd"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "list_sessions",
            "create_session",
            "list_sessions",
            "get_session",
            "keepalive",
            "session_execute",
            "interrupt",
            "close_session"
        ]
    );
    for command in fake.commands() {
        assert_eq!(command.key(), Some("a"));
    }
    let Command::CreateSession { options, .. } = &fake.commands()[1] else {
        panic!()
    };
    assert_eq!(options.limits.memory_mib, Some(256));
    assert_eq!(options.env["A"], "1");
    assert_eq!(options.idle_timeout_s, Some(60));
    assert_eq!(options.files[0].data, b"hi");
}

#[tokio::test]
async fn another_keys_session_is_404_as_the_supervisor_says() {
    let fake = Fake::start(|c| {
        Script::reply(match c.key() {
            Some("a") => Reply::Session {
                session: view("s1"),
            },
            _ => Reply::error(ErrorKind::NotFound, "no session s1"),
        })
    });
    let app = app(&fake);
    assert_eq!(
        send(&app, req("GET", "/v1/sessions/s1", Some("a"), ""))
            .await
            .0,
        StatusCode::OK
    );
    let (status, response) = send(&app, req("GET", "/v1/sessions/s1", Some("b"), "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_kind(response).await, "not_found");
}

#[tokio::test]
async fn every_error_kind_has_its_status() {
    let cases = [
        (ErrorKind::BadRequest, 400, "bad_request"),
        (ErrorKind::Rejected, 422, "rejected"),
        (ErrorKind::NotFound, 404, "not_found"),
        (ErrorKind::TooMany, 429, "too_many"),
        (ErrorKind::Busy, 409, "busy"),
        (ErrorKind::Unavailable, 503, "unavailable"),
        (ErrorKind::Internal, 500, "internal"),
    ];
    for (kind, code, name) in cases {
        let fake = Fake::start(move |_| Script::reply(Reply::error(kind, "because")));
        let body = json!({"code": "1"});
        let (status, response) = send(
            &app(&fake),
            json_req("POST", "/v1/sessions/s/executions", Some("a"), body),
        )
        .await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(
            response.headers().contains_key("retry-after"),
            code == 429,
            "{name}"
        );
        let v = body_json(response).await;
        assert_eq!(v, json!({"error": {"kind": name, "message": "because"}}));
    }
}

#[tokio::test]
async fn policy_and_environments_come_from_the_policy_command() {
    let policy = json!({"environments": [{"name": "default", "libraries": ["numpy"]}],
        "limits": {"wall_ms": 5000}});
    let answer = policy.clone();
    let fake = Fake::start(move |_| {
        Script::reply(Reply::Policy {
            policy: answer.clone(),
        })
    });
    let app = app(&fake);
    let (status, response) = send(&app, req("GET", "/v1/policy", Some("a"), "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body_json(response).await, policy);
    let (status, response) = send(&app, req("GET", "/v1/environments", Some("a"), "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body_json(response).await,
        json!({"environments": policy["environments"]})
    );
    assert_eq!(fake.commands(), vec![Command::Policy, Command::Policy]);
}

#[tokio::test]
async fn metrics_count_requests_executions_rejections_and_read_the_pool() {
    let fake = Fake::start(|c| {
        Script::reply(match c {
            Command::Stats => stats(),
            _ => Reply::Result {
                result: result("x"),
            },
        })
    });
    let app = app(&fake);
    send(
        &app,
        req("POST", "/v1/execute", Some("a"), r#"{"code":"1"}"#),
    )
    .await;
    send(&app, req("GET", "/v1/sessions", None, "")).await;
    let (status, response) = send(&app, req("GET", "/metrics", None, "")).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body_bytes(response).await).unwrap();
    for line in [
        "kiln_executions_total{outcome=\"ok\"} 1",
        "kiln_rejections_total{reason=\"unauthorized\"} 1",
        "kiln_http_requests_total{method=\"POST\",route=\"/v1/execute\",status=\"200\"} 1",
        "kiln_pool_sandboxes{state=\"ready\"} 2",
        "kiln_pool_sandboxes{state=\"in_use\"} 1",
        "kiln_sessions_alive 3",
        "kiln_supervisor_up 1",
        "kiln_execution_duration_seconds_count{kind=\"oneshot\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn every_execution_is_audited() {
    let fake = Fake::start(|c| {
        Script::reply(match c {
            Command::Execute { .. } => Reply::Result {
                result: result("x"),
            },
            _ => Reply::error(ErrorKind::Busy, "busy"),
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = config();
    config.server.audit_log = Some(dir.path().join("audit.jsonl"));
    let app = app_with(&config, &fake);
    let body = json!({"code": "print(1)", "limits": {"wall_ms": 1000}});
    send(&app, json_req("POST", "/v1/execute", Some("a"), body)).await;
    let body = json!({"code": "print(2)"});
    send(
        &app,
        json_req("POST", "/v1/sessions/s9/executions", Some("b"), body),
    )
    .await;

    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["key"], "a");
    assert_eq!(lines[0]["session"], Value::Null);
    assert_eq!(lines[0]["outcome"], "ok");
    assert_eq!(lines[0]["limits"]["wall_ms"], 1000);
    assert_eq!(
        lines[0]["code_sha256"],
        crate::auth::hash_secret("print(1)")
    );
    assert!(lines[0]["usage"]["cpu_ms"].is_u64());
    assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[1]["key"], "b");
    assert_eq!(lines[1]["session"], "s9");
    assert_eq!(lines[1]["outcome"], "error:busy");
}
