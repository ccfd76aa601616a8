//! The supervisor's unix socket: one command per connection (the wire
//! format is `kiln_core::service`), a thread per connection.
//!
//! The socket is mode 0600 and owned by the front-end user: only that user
//! (and root) may connect, and the key id a command carries is trusted —
//! the front end authenticated it. A connection that closes before its
//! final reply stops its execution.

use anyhow::{bail, Context, Result};
use kiln_core::service::{Cancel, Command, ErrorKind, Reply, Service, MAX_COMMAND_BYTES};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections served at once; more are answered `too_many` at once.
const MAX_CONNECTIONS: usize = 1024;
/// How long a caller may take to send its command line.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one reply may wait for the caller to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes the socket: the directory if missing, a stale socket file
/// removed (a live supervisor on it is an error), mode 0600, owned by
/// `owner` (uid, gid) when given.
pub fn bind(path: &Path, owner: Option<(u32, u32)>) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket; refusing to replace it. Hint: set [server] supervisor_socket to a free path", path.display());
        }
        if UnixStream::connect(path).is_ok() {
            bail!("another kiln supervisor is listening on {}. Hint: stop it first, or set [server] supervisor_socket", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("cannot hand {} to uid {uid}", path.display()))?;
    }
    Ok(listener)
}

/// Set when the supervisor should stop accepting; wakes the accept loop.
pub struct Stop {
    stopping: AtomicBool,
    socket: PathBuf,
}

impl Stop {
    pub fn new(socket: &Path) -> Self {
        Self {
            stopping: AtomicBool::new(false),
            socket: socket.to_path_buf(),
        }
    }

    pub fn trigger(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            // Wake the accept loop with a connection it will not serve.
            let _ = UnixStream::connect(&self.socket);
        }
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Connections being served.
#[derive(Default)]
pub struct Connections(AtomicUsize);

impl Connections {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Waits until none is left or `deadline`; returns whether none is.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        while self.count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.count() == 0
    }
}

/// Accepts until `stop` triggers; every connection gets its own thread.
pub fn serve(
    listener: &UnixListener,
    service: &Arc<Service>,
    stop: &Stop,
    conns: &Arc<Connections>,
) {
    for stream in listener.incoming() {
        if stop.stopping() {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "accept on the supervisor socket failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if conns.0.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            conns.0.fetch_sub(1, Ordering::SeqCst);
            let reply = Reply::error(
                ErrorKind::TooMany,
                "the supervisor serves too many connections; retry shortly",
            );
            let _ = write_reply(&mut &stream, &reply);
            continue;
        }
        let (service, conns) = (service.clone(), conns.clone());
        let spawned = std::thread::Builder::new()
            .name("kiln-conn".into())
            .spawn(move || {
                if let Err(error) = connection(stream, &service) {
                    tracing::debug!(%error, "supervisor connection ended early");
                }
                conns.0.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a connection thread");
        }
    }
}

/// One command: read its line, stream its replies, close.
fn connection(stream: UnixStream, service: &Service) -> std::io::Result<()> {
    stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let cmd = match read_command(&mut reader) {
        Ok(cmd) => cmd,
        Err(reply) => return write_reply(&mut &stream, &reply),
    };
    stream.set_read_timeout(None)?;
    let cancel = Arc::new(Cancel::new());
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_caller(reader, cancel.clone(), done.clone());
    let mut broken = false;
    service.handle_with(cmd, &cancel, &mut |reply| {
        if !broken && write_reply(&mut &stream, &reply).is_err() {
            broken = true;
            cancel.fire();
        }
    });
    done.store(true, Ordering::SeqCst);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = watcher.map(|w| w.join());
    Ok(())
}

/// Reads the one command line (at most [`MAX_COMMAND_BYTES`]).
fn read_command(reader: &mut impl BufRead) -> Result<Command, Box<Reply>> {
    let bad = |why: String| Box::new(Reply::error(ErrorKind::BadRequest, why));
    let mut line = Vec::new();
    let limit = MAX_COMMAND_BYTES as u64 + 1;
    if let Err(e) = reader.take(limit).read_until(b'\n', &mut line) {
        return Err(bad(format!("reading the command: {e}")));
    }
    if line.len() > MAX_COMMAND_BYTES {
        return Err(bad(format!(
            "the command is longer than {MAX_COMMAND_BYTES} bytes"
        )));
    }
    serde_json::from_slice(&line).map_err(|e| {
        bad(format!(
            "malformed command (one JSON object on one line expected): {e}"
        ))
    })
}

/// Reads whatever the caller still sends; end of file or an error before
/// `done` means it went away: stop its execution, retrying until the stop
/// reached a running execution or the command ended.
fn watch_caller(
    mut reader: BufReader<UnixStream>,
    cancel: Arc<Cancel>,
    done: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kiln-conn-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 512];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
            while !done.load(Ordering::SeqCst) && !cancel.fire() {
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .ok()
}

fn write_reply(stream: &mut impl Write, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let ok = br#"{"cmd":"list_sessions","key":"k"}
trailing"#;
        assert!(matches!(
            read_command(&mut &ok[..]),
            Ok(Command::ListSessions { .. })
        ));
        for bad in [&b"{not json}\n"[..], b"", b"{\"cmd\":\"rm_rf\"}\n"] {
            match read_command(&mut &bad[..]).map_err(|r| *r) {
                Err(Reply::Error { kind, .. }) => assert_eq!(kind, ErrorKind::BadRequest),
                other => panic!("{other:?}"),
            }
        }
    }
}
