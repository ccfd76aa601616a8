//! A small async client for the supervisor's unix socket (see
//! `kiln_core::service`): one connection per command, the command as one
//! JSON line, then reply lines until exactly one final reply.
//!
//! Dropping a [`ReplyStream`] closes the connection; the supervisor takes
//! that as "the caller is gone" and interrupts a running execution.

use kiln_core::service::{Command, Reply};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest reply line read: a file download is base64 inside one line.
pub const MAX_REPLY_BYTES: u64 = 160 << 20;

/// Why a command got no well-formed answer from the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the sandbox supervisor at {path}: {source}. Hint: is `kiln serve` running, and may this process open the socket?")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the connection to the sandbox supervisor: {0}")]
    Io(#[from] std::io::Error),
    #[error("the sandbox supervisor closed the connection before its final reply")]
    Closed,
    #[error("a reply line from the sandbox supervisor is longer than {MAX_REPLY_BYTES} bytes")]
    TooLong,
    #[error("the sandbox supervisor sent a malformed reply: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Where the supervisor listens.
#[derive(Debug, Clone)]
pub struct Supervisor {
    socket: PathBuf,
}

impl Supervisor {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `command` and returns the stream of its replies.
    pub async fn send(&self, command: &Command) -> Result<ReplyStream, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        write.write_all(&line).await?;
        write.flush().await?;
        Ok(ReplyStream {
            reader: BufReader::new(read),
            _writer: write,
            done: false,
        })
    }

    /// Sends `command` and returns its final reply (events are skipped: a
    /// `Result` carries them all).
    pub async fn call(&self, command: &Command) -> Result<Reply, ClientError> {
        let mut replies = self.send(command).await?;
        loop {
            match replies.next().await? {
                Some(reply) if reply.is_final() => return Ok(reply),
                Some(_) => continue,
                None => return Err(ClientError::Closed),
            }
        }
    }
}

/// The replies to one command; owns the connection.
pub struct ReplyStream {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    // Kept open until the stream is dropped: a half-closed socket must not
    // look like a caller that went away.
    _writer: tokio::net::unix::OwnedWriteHalf,
    done: bool,
}

impl ReplyStream {
    /// The next reply; `None` after the final one.
    pub async fn next(&mut self) -> Result<Option<Reply>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_REPLY_BYTES + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            return Err(ClientError::Closed);
        }
        if line.last() != Some(&b'\n') {
            return Err(if line.len() as u64 > MAX_REPLY_BYTES {
                ClientError::TooLong
            } else {
                ClientError::Closed
            });
        }
        let reply: Reply = serde_json::from_slice(&line)?;
        self.done = reply.is_final();
        Ok(Some(reply))
    }
}
