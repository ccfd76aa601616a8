//! The bridge between one container's attached streams and the fds the
//! supervisor (shared with the native backend) reads: a socketpair for the
//! channel, pipes for raw stdout and stderr, and a pipe that turns readable
//! (its write end closes) once the container has ended.
//!
//! The relay in the container multiplexes the runner's channel and raw
//! output onto its stdout as `tag + u32 length + bytes` (`C`, `O`, `E`);
//! everything it writes is parsed as hostile input. The supervisor's frames
//! go to the container's stdin unchanged.

use crate::engine::Engine;
use bollard::container::LogOutput;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, KillContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use kiln_native::{ForeignProcess, Reaper, Spawned};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most bytes one relay record may carry (the relay sends ≤ 64 KiB).
const RECORD_MAX: usize = 1 << 20;
/// How long the exit waits for the output still in flight.
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// How long a blocking wait for the container's end may take.
const REAP_WAIT: Duration = Duration::from_secs(20);

/// A running container, seen as a sandbox PID 1.
#[derive(Debug)]
pub struct ContainerProcess {
    docker: Docker,
    handle: tokio::runtime::Handle,
    id: String,
    exit: Arc<ExitState>,
}

#[derive(Debug, Default)]
pub(crate) struct ExitState {
    status: Mutex<Option<libc::c_int>>,
    ended: Condvar,
}

impl ExitState {
    fn set(&self, status: libc::c_int) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_none() {
            *s = Some(status);
        }
        self.ended.notify_all();
    }

    pub(crate) fn get(&self) -> Option<libc::c_int> {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait(&self, timeout: Duration) -> Option<libc::c_int> {
        let guard = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .ended
            .wait_timeout_while(guard, timeout, |s| s.is_none())
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

/// An exit code as a wait status (the relay reports 128 + signal for a
/// runner that was killed; the engine 137 for a container it killed).
fn wait_status(code: i64) -> libc::c_int {
    match code {
        129..=159 => (code - 128) as libc::c_int,
        0..=255 => (code as libc::c_int) << 8,
        _ => 255 << 8,
    }
}

fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "SIGKILL",
    }
}

impl ForeignProcess for ContainerProcess {
    fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        if self.exit.get().is_some() {
            return Ok(());
        }
        let docker = self.docker.clone();
        let id = self.id.clone();
        let options = KillContainerOptionsBuilder::default()
            .signal(signal_name(signal))
            .build();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let r = tokio::time::timeout(
                crate::engine::API_TIMEOUT,
                docker.kill_container(&id, Some(options)),
            )
            .await;
            let _ = tx.send(r);
        });
        match rx.recv() {
            Ok(Ok(Ok(()))) => Ok(()),
            // Not running any more (409) or gone (404): nothing to signal.
            Ok(Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }))) => Ok(()),
            Ok(Ok(Err(e))) => Err(io::Error::other(e.to_string())),
            Ok(Err(_)) | Err(_) => Err(io::Error::other("the engine did not answer a kill")),
        }
    }

    fn wait_status(&self, block: bool) -> io::Result<Option<libc::c_int>> {
        if !block {
            return Ok(self.exit.get());
        }
        Ok(self.exit.wait(REAP_WAIT))
    }
}

/// The host ends of a started container's streams.
pub(crate) struct Attached {
    pub spawned: Spawned,
    pub exit: Arc<ExitState>,
}

/// Attaches to the created container `id`, starts it, and returns the fds
/// the supervisor drives it through.
pub(crate) fn attach_and_start(
    engine: &Engine,
    id: &str,
) -> Result<Attached, bollard::errors::Error> {
    let io_err = |e: io::Error| bollard::errors::Error::IOError { err: e };
    let (host_channel, bridge_channel) = UnixStream::pair().map_err(io_err)?;
    let (stdout_r, stdout_w) = io::pipe().map_err(io_err)?;
    let (stderr_r, stderr_w) = io::pipe().map_err(io_err)?;
    let (exit_r, exit_w) = io::pipe().map_err(io_err)?;
    bridge_channel.set_nonblocking(true).map_err(io_err)?;

    let docker = engine.docker.clone();
    let options = AttachContainerOptionsBuilder::default()
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .stream(true)
        .logs(false)
        .build();
    let attach_id = id.to_string();
    let attached =
        engine.call(async move { docker.attach_container(&attach_id, Some(options)).await })?;

    let exit = Arc::new(ExitState::default());
    let docker = engine.docker.clone();
    let start_id = id.to_string();
    engine.call(async move { docker.start_container(&start_id, None).await })?;

    let docker = engine.docker.clone();
    let wait_id = id.to_string();
    let exit_state = exit.clone();
    engine.handle().spawn(async move {
        let channel = match tokio::net::UnixStream::from_std(bridge_channel) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot register the bridge channel");
                exit_state.set(255 << 8);
                drop(exit_w);
                return;
            }
        };
        let (channel_r, channel_w) = channel.into_split();
        let stdout = tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(stdout_w));
        let stderr = tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(stderr_w));
        let (Ok(stdout), Ok(stderr)) = (stdout, stderr) else {
            tracing::error!("cannot register the bridge pipes");
            exit_state.set(255 << 8);
            drop(exit_w);
            return;
        };
        tokio::spawn(pump_in(channel_r, attached.input));
        let out = tokio::spawn(pump_out(
            attached.output,
            channel_w,
            stdout,
            stderr,
            docker.clone(),
            wait_id.clone(),
        ));
        let code = wait_exit(&docker, &wait_id).await;
        // Output the container wrote before it ended reaches the pipes
        // before the supervisor learns of the end.
        let _ = tokio::time::timeout(DRAIN_WAIT, out).await;
        exit_state.set(wait_status(code));
        drop(exit_w);
    });

    let process = Arc::new(ContainerProcess {
        docker: engine.docker.clone(),
        handle: engine.handle().clone(),
        id: id.to_string(),
        exit: exit.clone(),
    });
    let spawned = Spawned {
        pid: 0,
        pidfd: OwnedFd::from(exit_r),
        channel: OwnedFd::from(host_channel),
        stdout: OwnedFd::from(stdout_r),
        stderr: OwnedFd::from(stderr_r),
        reaper: Reaper::Foreign(process),
    };
    Ok(Attached { spawned, exit })
}

/// The container's exit code once it stopped (or was removed).
async fn wait_exit(docker: &Docker, id: &str) -> i64 {
    let options = WaitContainerOptionsBuilder::default()
        .condition("not-running")
        .build();
    let mut stream = docker.wait_container(id, Some(options));
    match stream.next().await {
        Some(Ok(r)) => r.status_code,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        Some(Err(e)) => {
            tracing::debug!(error = %e, container = id, "waiting for the container failed");
            137
        }
        None => 137,
    }
}

/// Supervisor → container stdin; end of the channel closes stdin.
async fn pump_in(
    mut from: tokio::net::unix::OwnedReadHalf,
    mut to: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Most raw output bytes kept waiting for the supervisor (it reads them
/// during an execution and cuts them at the output limit; the rest is
/// dropped, as the native backend's full pipe would hold it back).
const RAW_QUEUE_MAX: usize = 4 << 20;
/// Most channel bytes waiting for the supervisor: far more than any frame
/// it accepts; a runner past this is killed.
const CHANNEL_QUEUE_MAX: usize = 256 << 20;

/// One destination fed without ever blocking the engine's stream: the
/// engine stops a container only once its output was read, so a reader
/// that waits for the supervisor would hang kills and removals.
struct Lane {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    cap: usize,
}

impl Lane {
    fn new<W>(mut to: W, cap: usize) -> Self
    where
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = queued.clone();
        tokio::spawn(async move {
            let mut open = true;
            while let Some(bytes) = rx.recv().await {
                counter.fetch_sub(bytes.len(), std::sync::atomic::Ordering::Relaxed);
                if open && to.write_all(&bytes).await.is_err() {
                    // The supervisor closed its end: drop the rest.
                    open = false;
                }
            }
        });
        Self { tx, queued, cap }
    }

    /// Queues `bytes`; false when the queue is over its cap (dropped).
    fn push(&self, bytes: Vec<u8>) -> bool {
        use std::sync::atomic::Ordering;
        if self.queued.load(Ordering::Relaxed) + bytes.len() > self.cap {
            return false;
        }
        self.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        let _ = self.tx.send(bytes);
        true
    }
}

/// Container stdout (relay records) and stderr → channel and raw pipes.
async fn pump_out(
    mut output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    channel: tokio::net::unix::OwnedWriteHalf,
    stdout: tokio::net::unix::pipe::Sender,
    stderr: tokio::net::unix::pipe::Sender,
    docker: Docker,
    id: String,
) {
    let channel = Lane::new(channel, CHANNEL_QUEUE_MAX);
    let stdout = Lane::new(stdout, RAW_QUEUE_MAX);
    let stderr = Lane::new(stderr, RAW_QUEUE_MAX);
    let mut records = Demux::default();
    let kill = |why: String| {
        let docker = docker.clone();
        let id = id.clone();
        async move {
            tracing::warn!(container = %id, %why, "killing the container");
            let options = KillContainerOptionsBuilder::default()
                .signal("SIGKILL")
                .build();
            let _ = docker.kill_container(&id, Some(options)).await;
        }
    };
    // Read to the end whatever happens: the engine waits for it.
    let mut broken = false;
    while let Some(item) = output.next().await {
        let Ok(item) = item else { break };
        if broken {
            continue;
        }
        let parsed = match item {
            LogOutput::StdOut { message } => records.feed(&message),
            // The relay's own complaints (or the engine's, when the
            // interpreter is missing): raw stderr.
            LogOutput::StdErr { message } => Ok(vec![(b'E', message.to_vec())]),
            _ => Ok(vec![]),
        };
        let records = match parsed {
            Ok(r) => r,
            Err(why) => {
                broken = true;
                kill(format!("the relay broke its framing: {why}")).await;
                continue;
            }
        };
        for (tag, bytes) in records {
            match tag {
                b'C' => {
                    if !channel.push(bytes) {
                        broken = true;
                        kill("the runner sent far more than the supervisor reads".into()).await;
                        break;
                    }
                }
                b'O' => {
                    stdout.push(bytes);
                }
                _ => {
                    stderr.push(bytes);
                }
            }
        }
    }
}

/// Splits the relay's stream into records.
#[derive(Debug, Default)]
struct Demux {
    buf: Vec<u8>,
}

impl Demux {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            if self.buf.len() < 5 {
                return Ok(out);
            }
            let tag = self.buf[0];
            if !matches!(tag, b'C' | b'O' | b'E') {
                return Err(format!("unknown record tag {tag:#04x}"));
            }
            let len =
                u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
            if len > RECORD_MAX {
                return Err(format!("a record of {len} bytes"));
            }
            if self.buf.len() < 5 + len {
                return Ok(out);
            }
            let body = self.buf[5..5 + len].to_vec();
            self.buf.drain(..5 + len);
            out.push((tag, body));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![tag];
        r.extend_from_slice(&(body.len() as u32).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn demux_splits_records_across_reads() {
        let mut stream = record(b'C', b"frame");
        stream.extend(record(b'O', b"out"));
        stream.extend(record(b'E', b""));
        let mut d = Demux::default();
        let mut got = Vec::new();
        for chunk in stream.chunks(3) {
            got.extend(d.feed(chunk).unwrap());
        }
        assert_eq!(
            got,
            vec![
                (b'C', b"frame".to_vec()),
                (b'O', b"out".to_vec()),
                (b'E', vec![])
            ]
        );
    }

    #[test]
    fn demux_refuses_hostile_records() {
        assert!(Demux::default().feed(&record(b'X', b"a")).is_err());
        let mut huge = vec![b'C'];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Demux::default().feed(&huge).is_err());
    }

    #[test]
    fn exit_codes_become_wait_statuses() {
        assert_eq!(kiln_native::exit_code(wait_status(0)), 0);
        assert_eq!(kiln_native::exit_code(wait_status(3)), 3);
        assert_eq!(kiln_native::exit_code(wait_status(137)), 137);
        assert_eq!(kiln_native::exit_code(wait_status(130)), 130);
    }
}
