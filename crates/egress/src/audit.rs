//! One JSON line per connection, allowed or refused: to the configured
//! file (appended, one `write` per line, like `kiln serve`'s audit log) and
//! to tracing.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339, UTC, when the verdict was made.
    pub time: String,
    /// The policy environment whose proxy this is.
    pub environment: String,
    /// The sandbox's host uid (SO_PEERCRED): one uid per live sandbox.
    pub uid: u32,
    /// The connecting process as the host sees it.
    pub pid: Option<i32>,
    /// `connect` or `http` (or `-` when the request did not parse).
    pub method: &'static str,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The address kiln resolved and connected to (or refused).
    pub ip: Option<IpAddr>,
    /// `allowed` or `refused`.
    pub verdict: &'static str,
    pub reason: String,
}

pub struct Audit {
    file: Option<(PathBuf, Mutex<File>)>,
}

impl Audit {
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let file = match path {
            Some(p) => {
                let f = OpenOptions::new().create(true).append(true).open(p)?;
                Some((p.to_owned(), Mutex::new(f)))
            }
            None => None,
        };
        Ok(Self { file })
    }

    /// The open audit file, if any (a forked proxy process keeps it).
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.file
            .as_ref()
            .map(|(_, f)| f.lock().unwrap_or_else(|e| e.into_inner()).as_raw_fd())
    }

    pub fn write(&self, rec: &Record) {
        if rec.verdict == "allowed" {
            tracing::info!(environment = %rec.environment, uid = rec.uid, host = ?rec.host, port = ?rec.port, ip = ?rec.ip, reason = %rec.reason, "egress allowed");
        } else {
            tracing::warn!(environment = %rec.environment, uid = rec.uid, host = ?rec.host, port = ?rec.port, ip = ?rec.ip, reason = %rec.reason, "egress refused");
        }
        let Some((path, file)) = &self.file else {
            return;
        };
        let mut line = serde_json::to_vec(rec).expect("an audit record serializes");
        line.push(b'\n');
        let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(error) = file.write_all(&line) {
            tracing::error!(path = %path.display(), %error, "cannot write the egress audit log");
        }
    }
}
