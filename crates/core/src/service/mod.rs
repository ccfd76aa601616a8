//! One command type for every transport (DESIGN.md §2, STYLE.md: "one
//! command type, many transports").
//!
//! The HTTP API, MCP, the E2B-compatible routes and the playground all
//! translate what they receive into a [`Command`], hand it to the sandbox
//! supervisor, and translate the [`Reply`] stream back. The supervisor is
//! the privileged process that owns the sandboxes; the front ends hold no
//! privilege (where kiln runs as root they run as an unprivileged uid and
//! reach the supervisor over a unix socket, one connection per command).
//!
//! On the socket: the command as one line of JSON, then the replies, one
//! JSON line each, ending with exactly one final reply (anything but
//! [`Reply::Event`]) — after which the supervisor closes the connection.
//! The caller keeps its side open until then: a connection closed (or shut
//! for writing) before the final reply means the caller went away, and the
//! running execution is stopped (a session's interrupted, a one-shot
//! sandbox killed). A line that is not a command is answered with one
//! `bad_request` error.
//!
//! [`Service`] carries the commands out.

mod cancel;
mod command;
mod handler;

pub use cancel::Cancel;
pub use command::{Command, ErrorKind, FileEntry, PoolInfo, Reply, SessionRequest, SessionView};
pub use handler::{pool_options, Service, ServiceOptions};

/// Largest command line the supervisor reads (uploads are base64 inside).
pub const MAX_COMMAND_BYTES: usize = 96 << 20;
