//! Showing setup's stages: an `indicatif` bar on a terminal, one plain line per stage
//! otherwise (logs, CI), nothing when progress is off.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::install::PipObserver;

/// The stages of a build, in order.
pub const STAGES: [&str; 7] = [
    "resolving interpreter",
    "copying standard library",
    "installing locked libraries",
    "compiling bytecode",
    "library closure",
    "font cache",
    "finalising",
];

/// Where stage messages go.
pub struct Progress {
    mode: Mode,
    started: Instant,
    stage_started: Instant,
}

enum Mode {
    Off,
    Plain,
    Bar(ProgressBar),
}

impl Progress {
    /// A bar if `enabled` and stderr is a terminal, plain lines if `enabled` otherwise.
    pub fn new(enabled: bool) -> Self {
        let mode = match (enabled, std::io::stderr().is_terminal()) {
            (false, _) => Mode::Off,
            (true, false) => Mode::Plain,
            (true, true) => Mode::Bar(bar()),
        };
        Progress {
            mode,
            started: Instant::now(),
            stage_started: Instant::now(),
        }
    }

    /// Enters stage `i` of [`STAGES`].
    pub fn stage(&mut self, i: usize) {
        let name = STAGES[i];
        match &self.mode {
            Mode::Off => {}
            Mode::Plain => eprintln!("kiln env setup [{}/{}] {name}", i + 1, STAGES.len()),
            Mode::Bar(pb) => {
                pb.set_position(i as u64);
                pb.set_message(name);
            }
        }
        tracing::debug!(stage = name, previous_took = ?self.stage_started.elapsed(), "setup stage");
        self.stage_started = Instant::now();
    }

    /// A detail within the current stage (bar only; plain mode stays one line per stage).
    pub fn detail(&self, msg: &str) {
        if let Mode::Bar(pb) = &self.mode {
            pb.set_message(msg.to_string());
        }
    }

    /// A one-off message (printed in every mode but `Off`).
    pub fn note(&self, msg: &str) {
        match &self.mode {
            Mode::Off => {}
            Mode::Plain => eprintln!("kiln env setup: {msg}"),
            Mode::Bar(pb) => pb.println(msg),
        }
    }

    /// Ends the display with a summary line.
    pub fn finish(&self, msg: &str) {
        let msg = format!("{msg} ({:.1}s)", self.started.elapsed().as_secs_f64());
        match &self.mode {
            Mode::Off => {}
            Mode::Plain => eprintln!("kiln env setup: {msg}"),
            Mode::Bar(pb) => pb.finish_with_message(msg),
        }
    }

    /// Removes the bar without a summary (on error).
    pub fn abandon(&self) {
        if let Mode::Bar(pb) = &self.mode {
            pb.abandon();
        }
    }
}

fn bar() -> ProgressBar {
    let pb = ProgressBar::new(STAGES.len() as u64);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed:>3}] [{bar:20}] {pos}/{len} {wide_msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Shows pip's progress as "installing locked libraries (n/total): name".
pub struct PipProgress<'a> {
    /// The display.
    pub progress: &'a Progress,
    /// Requirements in the lock.
    pub total: usize,
}

impl PipObserver for PipProgress<'_> {
    fn collecting(&mut self, n: usize, name: &str) {
        self.progress.detail(&format!(
            "installing locked libraries ({n}/{}): {name}",
            self.total
        ));
    }

    fn installing(&mut self) {
        self.progress.detail(&format!(
            "installing locked libraries: unpacking {} wheels",
            self.total
        ));
    }
}
