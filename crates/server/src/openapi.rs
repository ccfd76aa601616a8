//! The OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! attributes and the schema types; `GET /v1/openapi.json` serves it.

use crate::api::{
    CreateSessionBody, ExecuteBody, FileBody, Health, LimitsBody, SessionExecuteBody,
};
use crate::docs::*;
use crate::error::{ErrorBody, ErrorDetail};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kiln",
        description = "Run untrusted, model-written Python in disposable, locked-down sandboxes. \
            Authenticate with `Authorization: Bearer <secret>`. Errors are \
            `{\"error\": {\"kind\", \"message\"}}`; 429 answers carry `Retry-After`. \
            Executions answer JSON, or Server-Sent Events with `Accept: text/event-stream`: \
            one event per output (named stdout, stderr, display, file or error), then one \
            `end` event whose data is the result (or `{\"error\": …}`).",
        license(name = "Apache-2.0")
    ),
    components(schemas(
        ErrorBody, ErrorDetail, Health, ExecuteBody, SessionExecuteBody, CreateSessionBody,
        FileBody, LimitsBody, ExecutionResultDoc, EventDoc, UsageDoc, IsolationDoc,
        SessionViewDoc, SessionListDoc, FileEntryDoc, ListingDoc
    )),
    tags(
        (name = "execute", description = "One-shot executions"),
        (name = "sessions", description = "Stateful sandboxes and their executions"),
        (name = "files", description = "Files in a session's /work"),
        (name = "info", description = "Health, readiness, policy, metrics"),
    )
)]
struct ApiDoc;

/// The document: the base above, then each group of routes; `protected`
/// groups require the bearer key.
pub fn document(protected: Vec<Document>, open: Vec<Document>) -> Document {
    let mut doc = ApiDoc::openapi();
    for mut part in protected {
        for item in part.paths.paths.values_mut() {
            for op in operations(item) {
                op.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
            }
        }
        doc.merge(part);
    }
    for part in open {
        doc.merge(part);
    }
    // axum's catch-all `{*path}` is `{path}` in OpenAPI.
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    doc
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

pub async fn serve(doc: std::sync::Arc<String>) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.as_str().to_owned(),
    )
}
