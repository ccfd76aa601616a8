//! Files: upload (raw and multipart), download, listing, and paths that
//! must never reach the supervisor.

use super::*;
use kiln_core::service::FileEntry;

fn file_fake() -> Fake {
    Fake::start(|c| {
        Script::reply(match c {
            Command::ReadFile { path, .. } => Reply::File {
                path: path.clone(),
                size: 4,
                data_b64: "AAH/Cg==".into(),
            },
            Command::ListFiles { path, .. } => Reply::Files {
                path: path.clone(),
                entries: vec![FileEntry {
                    name: "a.csv".into(),
                    kind: "file".into(),
                    size: 3,
                }],
            },
            _ => Reply::Ok,
        })
    })
}

#[tokio::test]
async fn a_raw_upload_is_written_and_a_download_is_raw_bytes() {
    let fake = file_fake();
    let app = app(&fake);
    let (status, _) = send(
        &app,
        req(
            "PUT",
            "/v1/sessions/s1/files/dir/a.bin",
            Some("a"),
            vec![0u8, 1, 255],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, response) = send(
        &app,
        req("GET", "/v1/sessions/s1/files/out/p.png", Some("a"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(body_bytes(response).await, [0u8, 1, 255, b'\n']);
    assert_eq!(
        fake.commands(),
        vec![
            Command::WriteFile {
                key: "a".into(),
                session: "s1".into(),
                path: "dir/a.bin".into(),
                data_b64: "AAH/".into(),
            },
            Command::ReadFile {
                key: "a".into(),
                session: "s1".into(),
                path: "out/p.png".into(),
            },
        ]
    );
}

#[tokio::test]
async fn a_multipart_upload_writes_each_field_at_its_name() {
    let fake = file_fake();
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"in/a.csv\"; filename=\"a.csv\"\r\n\r\na,b\r\n--XyZ\r\nContent-Disposition: form-data; name=\"b.txt\"\r\n\r\nhello\r\n--XyZ--\r\n";
    let mut request = req("POST", "/v1/sessions/s1/files", Some("a"), body);
    request.headers_mut().insert(
        "content-type",
        "multipart/form-data; boundary=XyZ".parse().unwrap(),
    );
    let (status, response) = send(&app(&fake), request).await;
    assert_eq!(status, StatusCode::CREATED);
    let v = body_json(response).await;
    assert_eq!(v["files"][0]["path"], "in/a.csv");
    assert_eq!(v["files"][1]["size"], 5);
    let paths: Vec<(String, String)> = fake
        .commands()
        .into_iter()
        .map(|c| match c {
            Command::WriteFile { path, data_b64, .. } => (path, data_b64),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        paths,
        [
            ("in/a.csv".into(), "YSxi".into()),
            ("b.txt".into(), "aGVsbG8=".into())
        ]
    );
}

#[tokio::test]
async fn a_listing_names_its_directory() {
    let fake = file_fake();
    let app = app(&fake);
    let (status, response) = send(
        &app,
        req("GET", "/v1/sessions/s1/files?dir=sub/dir", Some("a"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v = body_json(response).await;
    assert_eq!(v["path"], "sub/dir");
    assert_eq!(v["entries"][0]["name"], "a.csv");
    let (status, _) = send(&app, req("GET", "/v1/sessions/s1/files", Some("a"), "")).await;
    assert_eq!(status, StatusCode::OK);
    let paths: Vec<String> = fake
        .commands()
        .into_iter()
        .map(|c| match c {
            Command::ListFiles { path, .. } => path,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(paths, ["sub/dir", ""]);
}

#[tokio::test]
async fn traversal_is_400_before_any_command() {
    let fake = file_fake();
    let app = app(&fake);
    let bad = [
        ("GET", "/v1/sessions/s1/files/../x"),
        ("GET", "/v1/sessions/s1/files/a/../../etc/passwd"),
        ("GET", "/v1/sessions/s1/files/%2e%2e/etc/passwd"),
        ("GET", "/v1/sessions/s1/files/a/%2E%2E/%2E%2E/x"),
        ("GET", "/v1/sessions/s1/files//etc/passwd"),
        ("GET", "/v1/sessions/s1/files/%2Fetc%2Fpasswd"),
        ("GET", "/v1/sessions/s1/files/a//b"),
        ("GET", "/v1/sessions/s1/files/a/./b"),
        ("GET", "/v1/sessions/s1/files/a%00b"),
        ("PUT", "/v1/sessions/s1/files/../x"),
        ("PUT", "/v1/sessions/s1/files/%2e%2e/x"),
        ("GET", "/v1/sessions/s1/files?dir=../.."),
        ("GET", "/v1/sessions/s1/files?dir=/etc"),
        ("GET", "/v1/sessions/s1/files?dir=a%00"),
    ];
    for (method, uri) in bad {
        let (status, response) = send(&app, req(method, uri, Some("a"), "x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}");
        assert_eq!(error_kind(response).await, "bad_request", "{method} {uri}");
    }
    for name in ["../x", "/etc/passwd", "a//b", ""] {
        let body =
            format!("--B\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\nx\r\n--B--\r\n");
        let mut request = req("POST", "/v1/sessions/s1/files", Some("a"), body);
        request.headers_mut().insert(
            "content-type",
            "multipart/form-data; boundary=B".parse().unwrap(),
        );
        let (status, _) = send(&app, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "multipart {name:?}");
    }
    assert!(fake.commands().is_empty(), "{:?}", fake.commands());
}
