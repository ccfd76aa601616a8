//! Accounting of what comes out of a sandbox: per-stream byte caps with a
//! truncation marker, artifact count and size caps, lossy UTF-8 decoding of
//! raw pipe bytes that may split a character across reads.

use kiln_core::Event;
use kiln_policy::Limits;

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Collects events while enforcing the output and artifact limits.
#[derive(Debug)]
pub struct Collector {
    pub events: Vec<Event>,
    /// What was added since the last [`take_fresh`](Self::take_fresh), for streaming.
    fresh: Vec<Event>,
    cap: u64,
    sent: [u64; 2],
    carry: [Vec<u8>; 2],
    artifact_count: u64,
    artifact_bytes: u64,
    max_artifacts: u64,
    max_artifact_bytes: u64,
    pub truncated: bool,
    pub artifacts_dropped: bool,
}

impl Collector {
    pub fn new(limits: &Limits) -> Self {
        Self {
            events: Vec::new(),
            fresh: Vec::new(),
            cap: limits.output_bytes,
            sent: [0, 0],
            carry: [Vec::new(), Vec::new()],
            artifact_count: 0,
            artifact_bytes: 0,
            max_artifacts: limits.artifact_count,
            max_artifact_bytes: limits.artifact_bytes,
            truncated: false,
            artifacts_dropped: false,
        }
    }

    /// Adds text; returns false once the stream went over its cap (the
    /// excess is dropped and a marker appended).
    pub fn text(&mut self, stream: Stream, text: &str) -> bool {
        let i = stream as usize;
        let room = self.cap.saturating_sub(self.sent[i]) as usize;
        if text.len() <= room {
            self.sent[i] += text.len() as u64;
            self.push(stream, text.to_string());
            return true;
        }
        let mut cut = room;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut > 0 {
            self.push(stream, text[..cut].to_string());
        }
        self.sent[i] = self.cap;
        if !self.truncated {
            self.push(
                stream,
                format!("\n[kiln: output truncated at {} bytes]\n", self.cap),
            );
        }
        self.truncated = true;
        false
    }

    /// Adds raw bytes from a pipe, decoding UTF-8 across read boundaries.
    pub fn bytes(&mut self, stream: Stream, bytes: &[u8]) -> bool {
        let i = stream as usize;
        let mut buf = std::mem::take(&mut self.carry[i]);
        buf.extend_from_slice(bytes);
        let valid_up_to = match std::str::from_utf8(&buf) {
            Ok(_) => buf.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => buf.len(),
        };
        self.carry[i] = buf.split_off(valid_up_to);
        if buf.is_empty() {
            return true;
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        self.text(stream, &text)
    }

    /// Flushes an incomplete trailing character as a replacement char.
    pub fn finish(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.carry[stream as usize]);
            if !rest.is_empty() {
                let text = String::from_utf8_lossy(&rest).into_owned();
                self.text(stream, &text);
            }
        }
    }

    /// Adds a display or file event if it fits the artifact limits.
    pub fn artifact(&mut self, event: Event) {
        let size = match &event {
            Event::Display { data } => data.values().map(|v| v.len() as u64).sum(),
            Event::File { data_b64, .. } => data_b64.len() as u64 * 3 / 4,
            _ => 0,
        };
        if self.artifact_count + 1 > self.max_artifacts
            || self.artifact_bytes + size > self.max_artifact_bytes
        {
            if !self.artifacts_dropped {
                self.push(
                    Stream::Stderr,
                    format!(
                        "[kiln: artifact dropped: the limit is {} artifacts and {} bytes per execution]\n",
                        self.max_artifacts, self.max_artifact_bytes
                    ),
                );
            }
            self.artifacts_dropped = true;
            return;
        }
        self.artifact_count += 1;
        self.artifact_bytes += size;
        self.event(event);
    }

    pub fn event(&mut self, event: Event) {
        self.fresh.push(event.clone());
        self.events.push(event);
    }

    /// The events (and pieces of stream text) added since the last call.
    pub fn take_fresh(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.fresh)
    }

    fn push(&mut self, stream: Stream, text: String) {
        self.fresh.push(match stream {
            Stream::Stdout => Event::Stdout { text: text.clone() },
            Stream::Stderr => Event::Stderr { text: text.clone() },
        });
        // Merge with the previous chunk of the same stream to keep results small.
        match (self.events.last_mut(), stream) {
            (Some(Event::Stdout { text: t }), Stream::Stdout)
            | (Some(Event::Stderr { text: t }), Stream::Stderr) => t.push_str(&text),
            (_, Stream::Stdout) => self.events.push(Event::Stdout { text }),
            (_, Stream::Stderr) => self.events.push(Event::Stderr { text }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(output: u64) -> Limits {
        Limits {
            output_bytes: output,
            artifact_count: 2,
            artifact_bytes: 100,
            ..Limits::default()
        }
    }

    #[test]
    fn cap_truncates_with_one_marker() {
        let mut c = Collector::new(&limits(10));
        assert!(c.text(Stream::Stdout, "12345"));
        assert!(!c.text(Stream::Stdout, "6789abcdef"));
        assert!(!c.text(Stream::Stdout, "more"));
        let out: String = c
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Stdout { text } => Some(text.clone()),
                _ => None,
            })
            .collect();
        assert!(
            out.starts_with("123456789a\n[kiln: output truncated at 10 bytes]"),
            "{out:?}"
        );
        assert_eq!(out.matches("truncated").count(), 1);
        assert!(c.truncated);
        // stderr has its own budget
        assert!(c.text(Stream::Stderr, "0123456789"));
    }

    #[test]
    fn fresh_pieces_add_up_to_the_merged_events() {
        let mut c = Collector::new(&limits(100));
        c.text(Stream::Stdout, "a");
        assert_eq!(c.take_fresh(), vec![Event::Stdout { text: "a".into() }]);
        c.text(Stream::Stdout, "b");
        c.event(Event::Error {
            name: "E".into(),
            value: "v".into(),
            traceback: vec![],
        });
        let fresh = c.take_fresh();
        assert_eq!(fresh.len(), 2);
        assert_eq!(fresh[0], Event::Stdout { text: "b".into() });
        assert_eq!(c.events[0], Event::Stdout { text: "ab".into() });
        assert!(c.take_fresh().is_empty());
    }

    #[test]
    fn cut_respects_char_boundaries() {
        let mut c = Collector::new(&limits(4));
        c.text(Stream::Stdout, "aéé");
        let Event::Stdout { text } = &c.events[0] else {
            panic!()
        };
        assert!(text.starts_with("aé\n"), "{text:?}");
    }

    #[test]
    fn utf8_split_across_reads_is_rejoined() {
        let mut c = Collector::new(&limits(100));
        let bytes = "é".as_bytes();
        c.bytes(Stream::Stdout, &bytes[..1]);
        c.bytes(Stream::Stdout, &bytes[1..]);
        c.bytes(Stream::Stdout, b"\xff\x00\x1b[31m");
        c.finish();
        let Event::Stdout { text } = &c.events[0] else {
            panic!()
        };
        assert_eq!(text, "é\u{fffd}\u{0}\u{1b}[31m");
    }

    #[test]
    fn artifacts_over_the_limit_are_dropped_with_a_note() {
        let mut c = Collector::new(&limits(100));
        let file = |n: usize| Event::File {
            path: "f".into(),
            size: n as u64,
            data_b64: "A".repeat(n),
        };
        c.artifact(file(8));
        c.artifact(file(8));
        c.artifact(file(8));
        let files = c
            .events
            .iter()
            .filter(|e| matches!(e, Event::File { .. }))
            .count();
        assert_eq!(files, 2);
        assert!(c.artifacts_dropped);
    }
}
