//! Human-readable output of a result: streams to their streams, charts and
//! files to disk (paths printed), errors readable, a closing word on any
//! outcome other than `ok`.

use anyhow::{Context, Result};
use base64::Engine;
use kiln_core::{Event, ExecutionResult, Outcome};
use std::io::{IsTerminal, Write};
use std::path::{Component, Path, PathBuf};

/// Prints events as they come; numbers charts across executions (a repl).
pub struct Printer {
    out_dir: PathBuf,
    charts: usize,
}

impl Printer {
    pub fn new(out_dir: &Path) -> Self {
        Self {
            out_dir: out_dir.to_path_buf(),
            charts: 0,
        }
    }

    pub fn event(&mut self, event: &Event) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        let mut stderr = std::io::stderr().lock();
        match event {
            Event::Stdout { text } => stdout.write_all(text.as_bytes())?,
            Event::Stderr { text } => stderr.write_all(text.as_bytes())?,
            Event::Display { data } => {
                if let Some(png) = data.get("image/png") {
                    self.charts += 1;
                    let path = self.out_dir.join(format!("chart-{}.png", self.charts));
                    write_b64(&path, png)?;
                    writeln!(stdout, "[chart] {}", path.display())?;
                } else if let Some(text) = data.get("text/plain") {
                    writeln!(stdout, "{text}")?;
                }
            }
            Event::File { path, data_b64, .. } => {
                let Some(rel) = safe_relative(path) else {
                    writeln!(
                        stderr,
                        "kiln: skipped an artifact with an unsafe name: {path:?}"
                    )?;
                    return Ok(());
                };
                let dest = self.out_dir.join("files").join(rel);
                write_b64(&dest, data_b64)?;
                writeln!(stdout, "[file] {}", dest.display())?;
            }
            Event::Error {
                traceback,
                name,
                value,
            } => {
                let red = std::io::stderr().is_terminal();
                let (on, off) = if red {
                    ("\x1b[31m", "\x1b[0m")
                } else {
                    ("", "")
                };
                if traceback.is_empty() {
                    writeln!(stderr, "{on}{name}: {value}{off}")?;
                } else {
                    for line in traceback {
                        write!(stderr, "{on}{}{off}", line)?;
                        if !line.ends_with('\n') {
                            writeln!(stderr)?;
                        }
                    }
                }
            }
        }
        stdout.flush()?;
        Ok(())
    }

    /// A closing word on any outcome other than `ok` or `error`.
    pub fn end(&self, result: &ExecutionResult) -> Result<()> {
        std::io::stdout().flush()?;
        if result.outcome != Outcome::Ok && result.outcome != Outcome::Error {
            let reason = result.reason.as_deref().unwrap_or("");
            eprintln!("kiln: {}: {reason}", result.outcome.as_str());
        }
        Ok(())
    }
}

/// Only plain relative paths (no `..`, no root) may name a file on the host.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| p.to_path_buf())
}

fn write_b64(path: &Path, b64: &str) -> Result<()> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .with_context(|| format!("artifact for {} is not valid base64", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn artifact_names_cannot_escape_the_out_dir() {
        assert!(super::safe_relative("a/b.csv").is_some());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a"] {
            assert!(super::safe_relative(bad).is_none(), "{bad}");
        }
    }
}
