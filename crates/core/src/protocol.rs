//! The frame protocol between the supervisor and the runner in the sandbox.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! UTF-8 JSON. Everything read from a sandbox is hostile: the length is
//! checked against a cap *before* any allocation, the decoder is incremental
//! (a frame may arrive one byte at a time), and an oversized or malformed
//! frame is a typed error that ends the sandbox — never a panic.
//!
//! # The conversation
//!
//! The runner sends `ready` (a fork of the zygote adds `steps`: when each of
//! its containment steps ended). The supervisor may send one `setup` (answered
//! by `done`), then, one at a time, any number of requests, each answered
//! in full before the next is sent:
//!
//! | supervisor sends | runner answers (success) | runner answers (failure) |
//! |---|---|---|
//! | `execute {code, files}` | events (`stdout`, `stderr`, `display`, `file`, `error`), then `done {status}` | — (the status says) |
//! | `write_file {path, data_b64}` | `done {status: "ok"}` | `error`, `done {status: "error"}` |
//! | `read_file {path, max_bytes}` | `file_data {path, size, data_b64}`, `done ok` | `error`, `done error` |
//! | `list_files {path}` | `file_list {path, entries}`, `done ok` | `error`, `done error` |
//!
//! File requests are served only between executions (the runner is then
//! single-threaded as far as kiln is concerned). Their `path` is relative to
//! `/work` (`""` names `/work` itself, for `list_files` only); the runner
//! walks it one component at a time with `O_DIRECTORY|O_NOFOLLOW` and opens
//! the leaf with `O_NOFOLLOW|O_NONBLOCK`, so no symlink is ever followed
//! and a FIFO or device is refused without being read. The `error` of a
//! failed file request carries one of the [`file_error`] kinds as `name`
//! and an explanation as `value` (its `traceback` is empty).
//!
//! The supervisor treats every answer as hostile: a frame longer than the
//! request can need is refused before it is buffered, and any frame the
//! table above does not allow at that point (a `stdout` during a file
//! request, a second `file_data`, a `file_data` for another path, a size
//! that disagrees with the data) is a protocol violation that ends the
//! sandbox.

use crate::Event;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Startup steps of a `ready` frame the supervisor keeps.
pub const MAX_STARTUP_STEPS: usize = 32;

/// Frames the runner sends out of the sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunnerMsg {
    /// The runner is up and waits for code. A fork of the zygote adds when
    /// each of its containment steps ended: `[step, CLOCK_MONOTONIC ns]`, in
    /// order, the first `start` (for `kiln bench` and debug logs; the
    /// supervisor keeps at most [`MAX_STARTUP_STEPS`]).
    Ready {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        steps: Vec<(String, u64)>,
    },
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    Display {
        data: BTreeMap<String, String>,
    },
    File {
        path: String,
        size: u64,
        data_b64: String,
    },
    Error {
        name: String,
        value: String,
        traceback: Vec<String>,
    },
    /// The execution finished: `ok`, `error` or `interrupted`. Also the end
    /// of the answer to a setup or a file request: `ok` or `error`.
    Done {
        status: String,
    },
    /// The contents of a regular file, answering `read_file`.
    FileData {
        path: String,
        size: u64,
        data_b64: String,
    },
    /// The entries of a directory (sorted by name), answering `list_files`.
    FileList {
        path: String,
        entries: Vec<WireEntry>,
    },
}

/// One entry of a `file_list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireEntry {
    /// A name in the directory: no `/`, no NUL, never `.` or `..`.
    pub name: String,
    /// `file`, `dir`, `symlink` or `other` (a FIFO, socket or device), as
    /// `lstat` sees it: a symlink is reported, never followed.
    pub kind: String,
    /// Bytes of a `file`; 0 for every other kind.
    pub size: u64,
}

/// The `name` of the `error` frame that answers a failed file request.
pub mod file_error {
    /// Nothing at the path (or a directory on the way is missing).
    pub const NOT_FOUND: &str = "not_found";
    /// The path is (or passes through) a symlink, a FIFO, a device, or a
    /// directory where a regular file is needed.
    pub const NOT_REGULAR: &str = "not_regular";
    /// The file is larger than `max_bytes`, or a listing than a frame.
    pub const TOO_LARGE: &str = "too_large";
    /// The path breaks the path rules (absolute, `..`, NUL, empty segment).
    pub const REFUSED: &str = "refused";
    /// Anything else (no space left, permission denied, bad base64).
    pub const IO: &str = "io";
}

/// Most entries a `file_list` may hold.
pub const LIST_MAX_ENTRIES: usize = 10_000;

impl RunnerMsg {
    /// The event this frame carries, if it is one.
    pub fn into_event(self) -> Option<Event> {
        Some(match self {
            RunnerMsg::Stdout { text } => Event::Stdout { text },
            RunnerMsg::Stderr { text } => Event::Stderr { text },
            RunnerMsg::Display { data } => Event::Display { data },
            RunnerMsg::File {
                path,
                size,
                data_b64,
            } => Event::File {
                path,
                size,
                data_b64,
            },
            RunnerMsg::Error {
                name,
                value,
                traceback,
            } => Event::Error {
                name,
                value,
                traceback,
            },
            RunnerMsg::Ready { .. }
            | RunnerMsg::Done { .. }
            | RunnerMsg::FileData { .. }
            | RunnerMsg::FileList { .. } => return None,
        })
    }
}

/// A file the runner writes into `/work` before the code runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireFile {
    /// Relative to `/work`; the runner refuses absolute paths and `..`.
    pub path: String,
    pub data_b64: String,
}

/// Frames the supervisor sends into the sandbox.
///
/// The order on the channel is: the runner sends `ready`; the supervisor
/// sends at most one `setup` (only for a session with environment variables
/// or input files), which the runner answers with `done` (`ok`, or `error`
/// after an `error` frame saying what failed: the session is then not
/// started); then any number of `execute`, each answered by its events and
/// one `done`, and of file requests, each answered as the table at the top
/// of this module says. End of the channel tells the runner to exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SupervisorMsg {
    /// Set the session's environment variables (in `os.environ`) and write
    /// its input files into `/work`, once, before the first execution.
    Setup {
        env: BTreeMap<String, String>,
        files: Vec<WireFile>,
    },
    /// Write `files` into `/work`, then run `code` in the persistent namespace.
    Execute {
        code: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<WireFile>,
        /// Modules user code may not import (module → reason): the
        /// runner's import hook, a speed bump behind kiln's static check.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        deny_imports: BTreeMap<String, String>,
    },
    /// Write a regular file at `/work/<path>` (mode 0644), creating missing
    /// parent directories (0755): written to a temporary file in the same
    /// directory, then renamed over the target, which must be absent or a
    /// regular file. Answered by `done`.
    WriteFile { path: String, data_b64: String },
    /// Read the regular file `/work/<path>`; more than `max_bytes` is
    /// `too_large`. Answered by `file_data` + `done`.
    ReadFile { path: String, max_bytes: u64 },
    /// List the directory `/work/<path>` (`""`: `/work`). Answered by
    /// `file_list` + `done`.
    ListFiles { path: String },
}

/// Bytes of the base64 text of `n` bytes of data.
pub fn base64_len(n: u64) -> u64 {
    n.div_ceil(3).saturating_mul(4)
}

/// A frame that cannot be accepted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the cap of {cap} bytes")]
    TooLarge { len: usize, cap: usize },
    #[error("frame is not valid JSON for the protocol: {0}")]
    Malformed(String),
}

/// Encodes one message as a frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("protocol messages always serialise");
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Incremental decoder: feed it whatever bytes arrived, take out whole frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    cap: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap,
        }
    }

    /// Appends bytes read from the channel.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.buf.extend_from_slice(bytes);
        // Check the pending header right away so a hostile length is refused
        // before its body is buffered.
        if self.buf.len() >= HEADER_LEN {
            let len = self.pending_len();
            if len > self.cap {
                return Err(FrameError::TooLarge { len, cap: self.cap });
            }
        }
        Ok(())
    }

    fn pending_len(&self) -> usize {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[..HEADER_LEN]);
        u32::from_be_bytes(header) as usize
    }

    /// The next whole frame, if one has arrived.
    pub fn next_msg<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = self.pending_len();
        if len > self.cap {
            return Err(FrameError::TooLarge { len, cap: self.cap });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let parsed = serde_json::from_slice(&self.buf[HEADER_LEN..HEADER_LEN + len])
            .map_err(|e| FrameError::Malformed(e.to_string()));
        self.buf.drain(..HEADER_LEN + len);
        if self.buf.len() >= HEADER_LEN && self.pending_len() > self.cap {
            return Err(FrameError::TooLarge {
                len: self.pending_len(),
                cap: self.cap,
            });
        }
        parsed.map(Some)
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_one_byte_at_a_time() {
        let msgs = vec![
            RunnerMsg::Ready { steps: Vec::new() },
            RunnerMsg::Ready {
                steps: vec![("start".into(), 1), ("seccomp".into(), 900)],
            },
            RunnerMsg::Stdout {
                text: "héllo\n".into(),
            },
            RunnerMsg::Done {
                status: "ok".into(),
            },
        ];
        let bytes: Vec<u8> = msgs.iter().flat_map(encode).collect();
        let mut d = FrameDecoder::new(1 << 20);
        let mut got = Vec::new();
        for b in bytes {
            d.feed(&[b]).unwrap();
            while let Some(m) = d.next_msg::<RunnerMsg>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn setup_frame_shape() {
        let msg = SupervisorMsg::Setup {
            env: BTreeMap::from([("TOKEN".to_string(), "t".to_string())]),
            files: vec![WireFile {
                path: "a.csv".into(),
                data_b64: "YQ==".into(),
            }],
        };
        let bytes = encode(&msg);
        assert_eq!(
            &bytes[HEADER_LEN..],
            br#"{"type":"setup","env":{"TOKEN":"t"},"files":[{"path":"a.csv","data_b64":"YQ=="}]}"#
        );
    }

    #[test]
    fn file_frame_shapes() {
        let cases: Vec<(SupervisorMsg, &[u8])> = vec![
            (
                SupervisorMsg::WriteFile {
                    path: "in/a.csv".into(),
                    data_b64: "YQ==".into(),
                },
                br#"{"type":"write_file","path":"in/a.csv","data_b64":"YQ=="}"#,
            ),
            (
                SupervisorMsg::ReadFile {
                    path: "out/b.png".into(),
                    max_bytes: 10,
                },
                br#"{"type":"read_file","path":"out/b.png","max_bytes":10}"#,
            ),
            (
                SupervisorMsg::ListFiles { path: "".into() },
                br#"{"type":"list_files","path":""}"#,
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(&encode(&msg)[HEADER_LEN..], want);
        }
        let mut d = FrameDecoder::new(1024);
        let body =
            br#"{"type":"file_list","path":"","entries":[{"name":"out","kind":"dir","size":0}]}"#;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        d.feed(&frame).unwrap();
        assert_eq!(
            d.next_msg::<RunnerMsg>().unwrap(),
            Some(RunnerMsg::FileList {
                path: "".into(),
                entries: vec![WireEntry {
                    name: "out".into(),
                    kind: "dir".into(),
                    size: 0
                }]
            })
        );
        // An entry with a field the protocol does not know is malformed.
        let body = br#"{"type":"file_list","path":"","entries":[{"name":"a","kind":"file","size":1,"target":"/etc"}]}"#;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        d.feed(&frame).unwrap();
        assert!(matches!(
            d.next_msg::<RunnerMsg>(),
            Err(FrameError::Malformed(_))
        ));
        assert_eq!(base64_len(0), 0);
        assert_eq!(base64_len(1), 4);
        assert_eq!(base64_len(3), 4);
        assert_eq!(base64_len(4), 8);
    }

    #[test]
    fn oversized_header_is_refused_before_the_body_arrives() {
        let mut d = FrameDecoder::new(1024);
        let err = d.feed(&u32::MAX.to_be_bytes()).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: u32::MAX as usize,
                cap: 1024
            }
        );
    }

    #[test]
    fn unknown_type_and_fields_are_malformed() {
        let mut d = FrameDecoder::new(1024);
        for body in [
            &br#"{"type":"root_please"}"#[..],
            br#"{"type":"stdout","text":1}"#,
            b"\xff\xfe",
        ] {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(body);
            d.feed(&frame).unwrap();
            assert!(matches!(
                d.next_msg::<RunnerMsg>(),
                Err(FrameError::Malformed(_))
            ));
        }
    }

    proptest! {
        // Any byte soup either decodes, waits for more, or errors: never panics,
        // never buffers a frame beyond the cap.
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut d = FrameDecoder::new(256);
            for c in chunks {
                if d.feed(&c).is_err() { break; }
                loop {
                    match d.next_msg::<RunnerMsg>() {
                        Ok(Some(_)) => continue,
                        Ok(None) | Err(FrameError::Malformed(_)) => break,
                        Err(FrameError::TooLarge { .. }) => return Ok(()),
                    }
                }
            }
        }
    }
}
