//! Running an execution through the supervisor and answering it either as
//! one JSON document or as a Server-Sent Events stream: one event per
//! output event (named after its `type`), then one `end` event carrying the
//! result (or `{"error": …}` if the execution broke off).
//!
//! The stream owns the supervisor connection: when the client goes away the
//! HTTP server drops the stream, the connection closes, and the supervisor
//! interrupts the execution.

use crate::error::ApiError;
use crate::record::ExecutionRecord;
use crate::supervisor::{ClientError, ReplyStream};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use kiln_core::service::Reply;
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;
use tokio::time::Instant;

/// How often an idle SSE stream sends a comment; a write is also how a
/// client that vanished without closing is noticed.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(2);

/// An execution whose command has been sent.
pub struct Running {
    pub replies: ReplyStream,
    pub record: ExecutionRecord,
    pub deadline: Instant,
}

/// The next reply, within the execution's deadline.
async fn next_reply(running: &mut Running) -> Result<Reply, ApiError> {
    match tokio::time::timeout_at(running.deadline, running.replies.next()).await {
        Ok(Ok(Some(reply))) => Ok(reply),
        Ok(Ok(None)) => Err(broke(running, ClientError::Closed)),
        Ok(Err(error)) => Err(broke(running, error)),
        Err(_) => {
            running.record.timed_out();
            Err(ApiError::timeout(0).with_message(
                "the execution did not end within its wall limit plus the front end's margin",
            ))
        }
    }
}

fn broke(running: &mut Running, error: ClientError) -> ApiError {
    let error = ApiError::from(error);
    running.record.failed_named(error.kind);
    error
}

/// The whole execution as one JSON document.
pub async fn answer_json(mut running: Running) -> Result<Response, ApiError> {
    loop {
        match next_reply(&mut running).await? {
            Reply::Event { .. } => continue,
            Reply::Result { result } => {
                running.record.finished(&result);
                return Ok(Json(result).into_response());
            }
            Reply::Error { kind, message } => {
                running.record.failed(kind);
                return Err(ApiError::new(kind, message));
            }
            _ => return Err(ApiError::unexpected("something other than a result")),
        }
    }
}

/// The execution as an SSE stream. The first reply is awaited before the
/// response starts, so an error the supervisor answers at once (busy, not
/// found, rejected) keeps its HTTP status.
pub async fn answer_sse(mut running: Running) -> Result<Response, ApiError> {
    let first = next_reply(&mut running).await?;
    if let Reply::Error { kind, message } = first {
        running.record.failed(kind);
        return Err(ApiError::new(kind, message));
    }
    let stream = events(running, first);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE))
        .into_response())
}

/// What the stream still has to do.
enum Step {
    Send(Box<Running>, Reply),
    Next(Box<Running>),
    Done,
}

fn events(running: Running, first: Reply) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold(Step::Send(Box::new(running), first), |step| async move {
        let (mut running, reply) = match step {
            Step::Done => return None,
            Step::Send(running, reply) => (running, Ok(reply)),
            Step::Next(mut running) => {
                let reply = next_reply(&mut running).await;
                (running, reply)
            }
        };
        let (event, last) = to_sse(&mut running.record, reply);
        let next = if last {
            drop(running); // Audit now, close the connection.
            Step::Done
        } else {
            Step::Next(running)
        };
        Some((Ok(event), next))
    })
}

/// One reply as an SSE event, and whether it is the last.
fn to_sse(record: &mut ExecutionRecord, reply: Result<Reply, ApiError>) -> (SseEvent, bool) {
    let end = |data: String| (SseEvent::default().event("end").data(data), true);
    match reply {
        Ok(Reply::Event { event }) => {
            let data = serde_json::to_value(&event).expect("an event serializes");
            let name = data["type"].as_str().unwrap_or("event").to_string();
            (
                SseEvent::default().event(name).data(data.to_string()),
                false,
            )
        }
        Ok(Reply::Result { result }) => {
            record.finished(&result);
            end(serde_json::to_string(&result).expect("a result serializes"))
        }
        Ok(Reply::Error { kind, message }) => {
            record.failed(kind);
            let error = ApiError::new(kind, message);
            end(json!({"error": {"kind": error.kind, "message": error.message}}).to_string())
        }
        Ok(_) => {
            end(json!({"error": {"kind": "internal", "message": "unexpected reply"}}).to_string())
        }
        Err(error) => {
            end(json!({"error": {"kind": error.kind, "message": error.message}}).to_string())
        }
    }
}
