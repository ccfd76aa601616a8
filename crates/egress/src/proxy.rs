//! The listener, the per-connection decision and the relay.

use crate::addr::AddrClass;
use crate::audit::{Audit, Record};
use crate::request::{self, Kind, MAX_HEAD};
use crate::sni::{self, Hello};
use kiln_policy::{normalize_host, AllowEntry, Egress};
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

/// The socket's name in its directory (the sandbox sees `/run/kiln/egress.sock`).
pub const SOCKET_NAME: &str = "egress.sock";

/// One environment's proxy: its socket bound at creation; served by
/// [`serve_forever`] in a process of its own.
pub struct EgressProxy {
    dir: PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
    ctx: Arc<Ctx>,
}

struct Ctx {
    environment: String,
    policy: Egress,
    entries: Vec<AllowEntry>,
    resolve: HashMap<String, IpAddr>,
    audit: Audit,
    open: Mutex<HashMap<u32, u32>>,
}

impl EgressProxy {
    /// Makes `dir` (0755) and listens on `dir/egress.sock` (0666: every
    /// sandbox uid may connect; only this environment's sandboxes see it).
    pub fn bind(environment: &str, policy: &Egress, dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let socket = dir.join(SOCKET_NAME);
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = std::os::unix::net::UnixListener::bind(&socket)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
        listener.set_nonblocking(true)?;
        let audit = Audit::open(policy.audit_log.as_deref()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open the egress audit log {}: {e}",
                    policy
                        .audit_log
                        .as_deref()
                        .unwrap_or(Path::new(""))
                        .display()
                ),
            )
        })?;
        if policy.allow_private {
            tracing::warn!(
                environment,
                "egress: allow_private is set: allowed names may reach loopback, private, link-local and CGNAT addresses (a test setting; never in production)"
            );
        }
        if !policy.resolve.is_empty() {
            tracing::warn!(environment, names = ?policy.resolve.keys().collect::<Vec<_>>(), "egress: names answered from kiln's resolver map, not DNS");
        }
        let ctx = Ctx {
            environment: environment.to_string(),
            entries: policy.entries(),
            resolve: policy
                .resolve
                .iter()
                .map(|(k, v)| (normalize_host(k), *v))
                .collect(),
            policy: policy.clone(),
            audit,
            open: Mutex::new(HashMap::new()),
        };
        Ok(Self {
            dir: dir.to_owned(),
            listener: Some(listener),
            ctx: Arc::new(ctx),
        })
    }

    /// The directory holding the socket (bound into sandboxes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fds this proxy serves from: its listening socket and audit file
    /// (a forked proxy process closes every other).
    pub fn fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.listener
            .iter()
            .map(|l| l.as_raw_fd())
            .chain(self.ctx.audit.fd())
            .collect()
    }

    /// Closes this process's copy of the listening socket (the supervisor,
    /// once the proxy process has its own).
    pub fn close_listener(&mut self) {
        self.listener = None;
    }

    /// Removes the socket and its directory (the supervisor, at the end).
    pub fn remove(&mut self) {
        self.listener = None;
        let _ = std::fs::remove_file(self.dir.join(SOCKET_NAME));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Serves every proxy on a single-threaded runtime until `parent` is no
/// longer this process's parent. Meant for a process of its own, forked by
/// the supervisor while it is single-threaded: the supervisor must stay
/// single-threaded to fork sandboxes, so the proxy is not a thread of it.
pub fn serve_forever(proxies: &mut [EgressProxy], parent: u32) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        for proxy in proxies.iter_mut() {
            if let Some(listener) = proxy.listener.take() {
                let listener = tokio::net::UnixListener::from_std(listener)?;
                tracing::debug!(environment = %proxy.ctx.environment, socket = %proxy.dir.join(SOCKET_NAME).display(), "egress proxy serving");
                tokio::spawn(serve(listener, proxy.ctx.clone()));
            }
        }
        // The supervisor kills this process when it is done; should it die
        // first, this notices within a second (and PDEATHSIG is set too).
        while std::os::unix::process::parent_id() == parent {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    })
}

async fn serve(listener: tokio::net::UnixListener, ctx: Arc<Ctx>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, ctx.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "egress: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Why a connection goes no further; `status: None` once the tunnel's 200
/// was sent (the connection is just closed).
struct Refusal {
    status: Option<u16>,
    verdict: &'static str,
    reason: String,
}

fn refused(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status: Some(status),
        verdict: "refused",
        reason: reason.into(),
    }
}

fn failed(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status: Some(status),
        verdict: "failed",
        reason: reason.into(),
    }
}

/// A connection counted against its sandbox's `max_connections`.
struct Slot {
    ctx: Arc<Ctx>,
    uid: u32,
}

impl Ctx {
    fn take_slot(self: &Arc<Self>, uid: u32) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(uid).or_default();
        if *n >= self.policy.max_connections {
            return None;
        }
        *n += 1;
        Some(Slot {
            ctx: self.clone(),
            uid,
        })
    }

    fn idle(&self) -> Duration {
        Duration::from_secs(self.policy.idle_timeout_s)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.ctx.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

async fn handle(mut client: UnixStream, ctx: Arc<Ctx>) {
    let cred = client.peer_cred().ok();
    let uid = cred.map(|c| c.uid()).unwrap_or(u32::MAX);
    let mut rec = Record {
        time: String::new(),
        environment: ctx.environment.clone(),
        uid,
        pid: cred.and_then(|c| c.pid()),
        method: "-",
        host: None,
        port: None,
        ip: None,
        verdict: "refused",
        reason: String::new(),
    };
    let slot = ctx.take_slot(uid);
    let opened = match slot {
        None => Err(refused(
            429,
            format!(
                "this sandbox already holds {} connections (max_connections)",
                ctx.policy.max_connections
            ),
        )),
        Some(_) => open(&mut client, &ctx, &mut rec).await,
    };
    rec.time = kiln_core::time::rfc3339(SystemTime::now());
    match opened {
        Ok((upstream, first)) => {
            rec.verdict = "allowed";
            ctx.audit.write(&rec);
            relay(client, upstream, first, ctx.idle()).await;
        }
        Err(r) => {
            rec.verdict = r.verdict;
            rec.reason = r.reason;
            ctx.audit.write(&rec);
            if let Some(status) = r.status {
                let _ = client
                    .write_all(&refusal_response(status, &rec.reason))
                    .await;
                let _ = client.shutdown().await;
                linger(&mut client).await;
            }
        }
    }
    drop(slot);
}

/// Reads what the client still sends (bounded) before closing: closing a
/// socket with unread input resets it, and the client would lose the answer.
async fn linger(client: &mut UnixStream) {
    let mut sink = [0u8; 4096];
    let _ = timeout(Duration::from_secs(1), async {
        let mut total = 0;
        while total < (64 << 10) {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

fn refusal_response(status: u16, reason: &str) -> Vec<u8> {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        502 => "Bad Gateway",
        _ => "Gateway Timeout",
    };
    let body = format!("kiln egress: {reason}\n");
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nX-Kiln-Egress: refused\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads the request, decides, connects. Returns the upstream and the
/// bytes to send it first.
async fn open(
    client: &mut UnixStream,
    ctx: &Ctx,
    rec: &mut Record,
) -> Result<(TcpStream, Vec<u8>), Refusal> {
    let (head, leftover) = read_head(client, ctx.idle()).await?;
    let req = request::parse(&head).map_err(|e| refused(400, e))?;
    rec.method = match req.kind {
        Kind::Connect => "connect",
        Kind::Http { .. } => "http",
    };
    let host = normalize_host(&req.host);
    rec.host = Some(host.clone());
    rec.port = Some(req.port);
    let literal = host.parse::<IpAddr>().ok();
    if !ctx.entries.iter().any(|e| e.matches(&host)) {
        return Err(refused(
            403,
            match literal {
                Some(_) => format!("{host} is a raw IP address and not on the allowlist"),
                None => format!("{host} is not on the allowlist"),
            },
        ));
    }
    let ip = resolve(ctx, &host, literal, req.port, rec).await?;
    let upstream = Upstream {
        ip,
        port: req.port,
        timeout: Duration::from_secs(ctx.policy.connect_timeout_s),
    };
    match req.kind {
        Kind::Http { mut head } => {
            let stream = upstream.connect().await?;
            head.extend_from_slice(&leftover);
            rec.reason = "on the allowlist".into();
            Ok((stream, head))
        }
        // The destination sees no connection until the ClientHello names
        // the CONNECT host; a connect failure after the 200 just closes.
        Kind::Connect => {
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .map_err(|e| failed(400, format!("client went away: {e}")))?;
            let hello = read_hello(client, leftover, ctx.idle()).await?;
            let tunnel = |reason: String| Refusal {
                status: None,
                verdict: "refused",
                reason,
            };
            match sni::parse(&hello) {
                Hello::ServerName(Some(name)) if normalize_host(&name) == host => {
                    rec.reason = "on the allowlist; TLS server name matches".into();
                    Ok((upstream.connect_in_tunnel().await?, hello))
                }
                Hello::ServerName(Some(name)) => Err(tunnel(format!(
                    "TLS server name {name:?} does not match the CONNECT host {host}"
                ))),
                Hello::ServerName(None) if literal.is_some() => {
                    rec.reason = "a listed IP address; no TLS server name".into();
                    Ok((upstream.connect_in_tunnel().await?, hello))
                }
                Hello::ServerName(None) => Err(tunnel(format!(
                    "the TLS ClientHello names no server (CONNECT {host})"
                ))),
                Hello::Invalid(why) => Err(tunnel(format!("not TLS after CONNECT: {why}"))),
                Hello::Incomplete => Err(tunnel("the ClientHello never completed".into())),
            }
        }
    }
}

/// The checked destination.
struct Upstream {
    ip: IpAddr,
    port: u16,
    timeout: Duration,
}

impl Upstream {
    async fn connect(&self) -> Result<TcpStream, Refusal> {
        let (ip, port) = (self.ip, self.port);
        match timeout(self.timeout, TcpStream::connect((ip, port))).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(failed(502, format!("cannot connect to {ip}:{port}: {e}"))),
            Err(_) => Err(failed(504, format!("connecting to {ip}:{port} timed out"))),
        }
    }

    /// After the tunnel's 200 no status can be sent any more.
    async fn connect_in_tunnel(&self) -> Result<TcpStream, Refusal> {
        self.connect()
            .await
            .map_err(|r| Refusal { status: None, ..r })
    }
}

/// kiln resolves, never the sandbox: a listed IP as written, a name from
/// the resolver map, else the host's resolver. The first address whose
/// class is reachable wins; the checked address is the one connected to.
async fn resolve(
    ctx: &Ctx,
    host: &str,
    literal: Option<IpAddr>,
    port: u16,
    rec: &mut Record,
) -> Result<IpAddr, Refusal> {
    let candidates: Vec<IpAddr> = if let Some(ip) = literal {
        vec![ip]
    } else if let Some(ip) = ctx.resolve.get(host) {
        vec![*ip]
    } else {
        let wait = Duration::from_secs(ctx.policy.connect_timeout_s);
        match timeout(wait, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
            Ok(Err(e)) => return Err(failed(502, format!("cannot resolve {host}: {e}"))),
            Err(_) => return Err(failed(504, format!("resolving {host} timed out"))),
        }
    };
    let allow_private = ctx.policy.allow_private;
    if let Some(ip) = candidates
        .iter()
        .find(|ip| AddrClass::of(**ip).reachable(allow_private))
    {
        rec.ip = Some(*ip);
        return Ok(*ip);
    }
    let Some(first) = candidates.first() else {
        return Err(failed(502, format!("{host} has no address")));
    };
    rec.ip = Some(*first);
    Err(refused(
        403,
        format!(
            "{host} resolves to {first}, a {} address",
            AddrClass::of(*first).name()
        ),
    ))
}

async fn read_head(client: &mut UnixStream, idle: Duration) -> Result<(Vec<u8>, Vec<u8>), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + idle;
    loop {
        if let Some(end) = request::head_end(&buf) {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(refused(400, format!("request head over {MAX_HEAD} bytes")));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, client.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err(refused(400, "the connection closed before a request")),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(refused(400, format!("reading the request: {e}"))),
            Err(_) => return Err(refused(408, "no complete request in time")),
        }
    }
}

async fn read_hello(
    client: &mut UnixStream,
    mut buf: Vec<u8>,
    idle: Duration,
) -> Result<Vec<u8>, Refusal> {
    let tunnel = |reason: String| Refusal {
        status: None,
        verdict: "refused",
        reason,
    };
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + idle;
    while sni::parse(&buf) == Hello::Incomplete && buf.len() <= sni::MAX_HELLO {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, client.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                return Err(tunnel(
                    "the client closed the tunnel before a ClientHello".into(),
                ))
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(tunnel(format!("reading the ClientHello: {e}"))),
            Err(_) => return Err(tunnel("no ClientHello in time".into())),
        }
    }
    Ok(buf)
}

/// Copies both ways until both ends are done, or nothing moved either way
/// for `idle`.
async fn relay(client: UnixStream, upstream: TcpStream, first: Vec<u8>, idle: Duration) {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    if uw.write_all(&first).await.is_err() {
        return;
    }
    let start = Instant::now();
    let last = AtomicU64::new(0);
    tokio::join!(
        pump(&mut cr, &mut uw, idle, start, &last),
        pump(&mut ur, &mut cw, idle, start, &last)
    );
}

async fn pump(
    r: &mut (impl AsyncRead + Unpin),
    w: &mut (impl AsyncWrite + Unpin),
    idle: Duration,
    start: Instant,
    last: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match timeout(idle, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                if w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            Err(_) => {
                let quiet = start.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
                if quiet >= idle.as_millis() as u64 {
                    break;
                }
            }
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> Egress {
        toml::from_str(&format!(
            "allow = [\"a.example.com\", \"meta.example.com\"]\nresolve = {{ \"meta.example.com\" = \"169.254.169.254\", \"a.example.com\" = \"127.0.0.1\" }}\n{extra}"
        ))
        .unwrap()
    }

    async fn ask(socket: &Path, request: &str) -> String {
        let mut s = UnixStream::connect(socket).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn refusals_without_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let policy = policy(&format!(
            "allow_private = true\nmax_connections = 1\naudit_log = {:?}",
            audit.display().to_string()
        ));
        let mut proxy = EgressProxy::bind("t", &policy, &dir.path().join("t")).unwrap();
        let listener = tokio::net::UnixListener::from_std(proxy.listener.take().unwrap()).unwrap();
        tokio::spawn(serve(listener, proxy.ctx.clone()));
        let socket = proxy.dir().join(SOCKET_NAME);
        // Metadata stays refused even with the opt-in.
        let out = ask(
            &socket,
            "GET http://meta.example.com/latest HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{out}");
        assert!(
            out.contains("169.254.169.254, a cloud-metadata address"),
            "{out}"
        );
        // Not a proxy request at all.
        let out = ask(&socket, "GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        // One connection held open (no request yet) uses this uid's only slot.
        let _held = UnixStream::connect(&socket).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = ask(&socket, "CONNECT a.example.com:443 HTTP/1.1\r\n\r\n").await;
        assert!(
            out.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{out}"
        );
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let verdicts: Vec<_> = lines
            .iter()
            .map(|l| {
                (
                    l["verdict"].as_str().unwrap(),
                    l["method"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            verdicts,
            [("refused", "http"), ("refused", "-"), ("refused", "-")]
        );
        assert_eq!(lines[0]["ip"], "169.254.169.254");
        // SO_PEERCRED: this test's own uid.
        let me = std::fs::metadata("/proc/self").unwrap();
        assert_eq!(
            lines[0]["uid"],
            u64::from(std::os::unix::fs::MetadataExt::uid(&me))
        );
        proxy.remove();
        assert!(!socket.exists());
    }
}
