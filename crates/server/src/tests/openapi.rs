//! The OpenAPI document (snapshot), the schema mirrors, and the entry
//! point's refusals.

use super::*;
use crate::docs::{ExecutionResultDoc, FileEntryDoc, SessionViewDoc};
use crate::{run_frontend, FrontendOptions};
use kiln_core::service::FileEntry;
use std::collections::BTreeMap;

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.snapshot.json");

#[tokio::test]
async fn the_openapi_document_matches_its_snapshot() {
    let fake = Fake::start(|_| Script::reply(Reply::Ok));
    let (status, response) = send(&app(&fake), req("GET", "/v1/openapi.json", None, "")).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body_bytes(response).await).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    for path in [
        "/v1/health",
        "/v1/ready",
        "/metrics",
        "/v1/execute",
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/keepalive",
        "/v1/sessions/{id}/executions",
        "/v1/sessions/{id}/interrupt",
        "/v1/sessions/{id}/files",
        "/v1/sessions/{id}/files/{path}",
        "/v1/policy",
        "/v1/environments",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    assert_eq!(
        doc["paths"]["/v1/execute"]["post"]["security"][0]["bearer"],
        serde_json::json!([])
    );
    assert!(doc["paths"]["/v1/health"]["get"]["security"].is_null());
    let pretty = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var("KILN_UPDATE_SNAPSHOT").as_deref() == Ok("1") {
        std::fs::write(SNAPSHOT, &pretty).unwrap();
    }
    let snapshot = std::fs::read_to_string(SNAPSHOT).unwrap_or_default();
    // Compared as JSON values, not text: key order depends on whether some
    // other crate in the build turns on serde_json's `preserve_order`.
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).unwrap_or_default();
    assert!(
        snapshot == doc,
        "the OpenAPI document changed; review it and run with KILN_UPDATE_SNAPSHOT=1 to accept"
    );
}

#[test]
fn mirrors_match_the_core() {
    let mut full = result("x");
    full.reason = Some("why".into());
    full.session_ended = true;
    full.events.push(Event::Display {
        data: BTreeMap::from([("text/plain".into(), "1".into())]),
    });
    full.events.push(Event::File {
        path: "p".into(),
        size: 1,
        data_b64: "eA==".into(),
    });
    full.events.push(Event::Error {
        name: "E".into(),
        value: "v".into(),
        traceback: vec!["t".into()],
    });
    full.events.push(Event::Stderr { text: "e".into() });
    let value = serde_json::to_value(&full).unwrap();
    let mirrored: ExecutionResultDoc = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(serde_json::to_value(&mirrored).unwrap(), value);

    let value = serde_json::to_value(view("s")).unwrap();
    let mirrored: SessionViewDoc = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(serde_json::to_value(&mirrored).unwrap(), value);

    let entry = FileEntry {
        name: "a".into(),
        kind: "file".into(),
        size: 1,
    };
    let value = serde_json::to_value(entry).unwrap();
    let mirrored: FileEntryDoc = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(serde_json::to_value(&mirrored).unwrap(), value);
}

fn options(dev: bool) -> FrontendOptions<std::future::Ready<()>> {
    FrontendOptions::new(dev, std::future::ready(()))
}

#[tokio::test]
async fn dev_mode_is_refused_off_loopback_and_keys_are_required_without_it() {
    let anywhere = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let error = run_frontend(config(), anywhere, "/x".into(), options(true))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("loopback"), "{error}");

    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let error = run_frontend(Config::default(), local, "/x".into(), options(false))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no API keys"), "{error}");

    let mut bad = config();
    bad.server.keys[0].sha256 = "zz".into();
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(run_frontend(bad, local, "/x".into(), options(false))
        .await
        .is_err());

    // Dev mode on loopback starts (and stops at once: its shutdown is ready).
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    run_frontend(Config::default(), local, "/x".into(), options(true))
        .await
        .unwrap();
}

#[tokio::test]
async fn dev_mode_serves_requests_without_a_key_as_dev() {
    let fake = Fake::start(|_| Script::reply(Reply::Sessions { sessions: vec![] }));
    let app = router(AppState::new(&Config::default(), fake.socket.clone(), true).unwrap());
    let (status, _) = send(&app, req("GET", "/v1/sessions", None, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fake.commands(),
        vec![Command::ListSessions {
            key: crate::DEV_KEY.into()
        }]
    );
}
