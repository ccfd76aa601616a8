//! Sessions: one sandbox kept alive between executions, notebook style.
//!
//! A [`Session`] is made by [`Backend::create_session`](crate::Backend) and
//! runs many executions in one live interpreter: variables and `/work`
//! persist until it is closed, its sandbox dies (memory limit, a kill, a
//! protocol violation) or the [`SessionManager`](crate::SessionManager)
//! reaps it for idleness or age.

use crate::service::FileEntry;
use crate::{is_plain_relative, Event, ExecRequest, ExecutionResult, InputFile};
use kiln_policy::Limits;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A live sandbox that runs executions one after another.
pub trait Session: Send {
    /// The session's id (unique on this host while it lives).
    fn id(&self) -> &str;

    /// Runs one piece of code. Every event is passed to `on_event` as it
    /// arrives and is also collected in the result. Never fails: anything
    /// that went wrong is the result's outcome, and `session_ended` says
    /// whether the sandbox survived it.
    fn execute(
        &mut self,
        request: &ExecRequest,
        on_event: &mut dyn FnMut(&Event),
    ) -> ExecutionResult;

    /// A handle that interrupts or kills the running execution from another
    /// thread while [`execute`](Self::execute) runs.
    fn interrupter(&self) -> Arc<dyn Interrupt>;

    /// Whether the sandbox still runs (false once it died or was killed).
    fn is_alive(&self) -> bool;

    /// How long each step of this sandbox's start took inside it, in order
    /// (the native backend's zygote forks: each containment step, then the
    /// runner's start); empty where the backend does not measure them.
    fn startup_steps(&self) -> Vec<(String, std::time::Duration)> {
        Vec::new()
    }

    /// Writes `data` to the regular file `/work/<path>` between executions,
    /// creating missing parent directories. `path` must be
    /// [plain relative](crate::is_plain_relative); no symlink is followed on
    /// the way, and an existing target that is not a regular file is
    /// refused. At most [`FILE_MAX_BYTES`] (and the session's `/work` size).
    fn write_file(&mut self, path: &str, data: &[u8]) -> Result<(), FileError> {
        let _ = (path, data);
        Err(FileError::unsupported())
    }

    /// Reads the regular file `/work/<path>` between executions: a symlink
    /// (at any depth), a FIFO or a device is refused, never followed, read
    /// or waited on. More than `max_bytes` (which is clamped to
    /// [`FILE_MAX_BYTES`]) is [`FileError::TooLarge`].
    fn read_file(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FileError> {
        let _ = (path, max_bytes);
        Err(FileError::unsupported())
    }

    /// Lists the directory `/work/<dir>` (`""` or `"."`: `/work` itself),
    /// sorted by name; symlinks are listed as such, not followed.
    fn list_files(&mut self, dir: &str) -> Result<Vec<FileEntry>, FileError> {
        let _ = dir;
        Err(FileError::unsupported())
    }

    /// Ends the session: the runner is asked to exit, then killed; nothing of
    /// the sandbox remains afterwards. Dropping a session does the same.
    fn close(self: Box<Self>);
}

/// Stops what a session is doing, from any thread.
pub trait Interrupt: Send + Sync {
    /// Interrupts the running execution like Ctrl-C: the code gets a
    /// `KeyboardInterrupt` and the session keeps its state (outcome
    /// `interrupted`). Code that does not stop within the grace period is
    /// killed and the session ends. Does nothing between executions.
    fn interrupt(&self);

    /// Kills the sandbox at once; a running execution ends with `killed`
    /// and the session is over.
    fn kill(&self);
}

/// The most bytes one [`Session::write_file`] or [`Session::read_file`]
/// moves (the file travels base64-encoded in one frame).
pub const FILE_MAX_BYTES: u64 = 64 << 20;

/// Why a file operation on a session failed. Only [`SessionEnded`]
/// (and a timeout, reported as it) means the sandbox is gone.
///
/// [`SessionEnded`]: FileError::SessionEnded
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Nothing at the path, or a directory on the way is missing.
    #[error("not found: {0}")]
    NotFound(String),
    /// The path is or passes through a symlink, FIFO, device, or a
    /// directory where a regular file is needed.
    #[error("not a regular file: {0}")]
    NotRegular(String),
    /// The file (or the listing) is over the cap.
    #[error("{path}: too large; at most {max} bytes are allowed")]
    TooLarge { path: String, max: u64 },
    /// The path breaks the rules (absolute, `..`, `.`, NUL, empty segment,
    /// over 4096 bytes); nothing was sent to the sandbox.
    #[error("path {path:?} refused: {reason}")]
    Refused { path: String, reason: String },
    /// The session is running an execution.
    #[error("the session is busy with an execution; try again when it has finished")]
    Busy,
    /// The sandbox is gone (or was killed because it did not answer).
    #[error("the session has ended: {0}")]
    SessionEnded(String),
    /// Anything else: no space left, bad data, an unsupported session.
    #[error("{0}")]
    Io(String),
}

impl FileError {
    /// A stable name for front ends: `not_found`, `not_regular`,
    /// `too_large`, `refused`, `busy`, `session_ended` or `io`.
    pub fn kind(&self) -> &'static str {
        match self {
            FileError::NotFound(_) => "not_found",
            FileError::NotRegular(_) => "not_regular",
            FileError::TooLarge { .. } => "too_large",
            FileError::Refused { .. } => "refused",
            FileError::Busy => "busy",
            FileError::SessionEnded(_) => "session_ended",
            FileError::Io(_) => "io",
        }
    }

    fn unsupported() -> Self {
        FileError::Io("this kind of session does not support file operations".into())
    }
}

/// Checks a file path before anything is sent to a sandbox: plain relative
/// (see [`is_plain_relative`]). With `dir`, `""` and `"."` are allowed and
/// mean `/work` itself (returned as `""`).
pub fn check_file_path(path: &str, dir: bool) -> Result<&str, FileError> {
    if dir && (path.is_empty() || path == ".") {
        return Ok("");
    }
    if is_plain_relative(path) {
        return Ok(path);
    }
    let reason = if path.is_empty() {
        "the path is empty"
    } else if path.contains('\0') {
        "the path contains a NUL byte"
    } else if path.starts_with('/') {
        "absolute paths are refused; paths are relative to /work"
    } else if path.len() > 4096 {
        "the path is longer than 4096 bytes"
    } else if path.split('/').any(|p| p == "..") {
        "`..` is refused: paths stay inside /work"
    } else {
        "empty and `.` segments are refused: use a plain relative path like `dir/file.csv`"
    };
    Err(FileError::Refused {
        path: path.chars().take(256).collect(),
        reason: reason.into(),
    })
}

/// What a new session is made with.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionOptions {
    /// Limits of the sandbox and of each execution (wall and CPU time apply
    /// per execution; memory, pids and disk to the whole session).
    pub limits: Limits,
    /// Environment variables set in the session's interpreter at creation;
    /// see [`check_env_name`] for the names allowed.
    pub env: BTreeMap<String, String>,
    /// Files written into `/work` at creation.
    pub files: Vec<InputFile>,
    /// Configured datasets (`[sandbox.datasets]`) mounted read-only at
    /// `/data/<name>`.
    pub datasets: Vec<String>,
    /// Modules the runner refuses when user code imports them (module →
    /// reason): the environment's `deny_modules`, decided by kiln's policy,
    /// never by a request.
    pub deny_imports: BTreeMap<String, String>,
    /// The policy environment whose egress proxy the sandbox may reach
    /// (`[environments.<name>.egress]`); none: no network at all. Decided
    /// by kiln's policy, never by a request.
    pub egress: Option<String>,
    /// A wheelhouse library tree (a directory name under the backend's
    /// `<data_dir>/libraries`) mounted read-only at `/libraries`.
    pub library_tree: Option<String>,
    /// The session is closed after this long without an execution.
    pub idle_timeout: Duration,
    /// The session is closed this long after creation, busy or not.
    pub max_lifetime: Duration,
}

/// kiln's default idle timeout (also `[sessions] idle_timeout_s`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// kiln's default maximum lifetime (also `[sessions] max_lifetime_s`).
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);

/// Most bytes of all per-session environment names and values together.
pub const ENV_MAX_BYTES: usize = 64 << 10;

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            env: BTreeMap::new(),
            files: Vec::new(),
            datasets: Vec::new(),
            deny_imports: BTreeMap::new(),
            egress: None,
            library_tree: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }
}

/// Session options that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("environment variable name {name:?} is not allowed: {reason}")]
    EnvName { name: String, reason: &'static str },
    #[error("environment variable {name}: {reason}")]
    EnvValue { name: String, reason: &'static str },
    #[error("the session environment holds {bytes} bytes; at most {ENV_MAX_BYTES} are allowed")]
    EnvTooLarge { bytes: usize },
    #[error("input file {path:?}: {reason}")]
    File { path: String, reason: String },
    #[error("{what} must be longer than zero")]
    ZeroDuration { what: &'static str },
    #[error("no dataset named {name:?} is configured; configured: {configured}")]
    UnknownDataset { name: String, configured: String },
    #[error("library tree {name:?}: {reason}")]
    LibraryTree { name: String, reason: String },
}

impl SessionOptions {
    /// Checks names, values and files (limits are checked by policy when
    /// they are resolved).
    pub fn validate(&self) -> Result<(), OptionsError> {
        let mut bytes = 0;
        for (name, value) in &self.env {
            check_env_name(name)?;
            if value.contains('\0') {
                return Err(OptionsError::EnvValue {
                    name: name.clone(),
                    reason: "the value contains a NUL byte",
                });
            }
            bytes += name.len() + value.len();
        }
        if bytes > ENV_MAX_BYTES {
            return Err(OptionsError::EnvTooLarge { bytes });
        }
        let mut total = 0u64;
        for file in &self.files {
            if !is_plain_relative(&file.path) {
                return Err(OptionsError::File {
                    path: file.path.clone(),
                    reason: "must be a plain relative path inside /work".into(),
                });
            }
            total += file.data.len() as u64;
        }
        if total > self.limits.disk_mib << 20 {
            return Err(OptionsError::File {
                path: self
                    .files
                    .last()
                    .map(|f| f.path.clone())
                    .unwrap_or_default(),
                reason: format!(
                    "input files total {total} bytes; /work holds {} MiB",
                    self.limits.disk_mib
                ),
            });
        }
        if let Some(name) = &self.library_tree {
            let plain = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !plain {
                return Err(OptionsError::LibraryTree {
                    name: name.clone(),
                    reason: "must be 1-64 of [A-Za-z0-9_-]".into(),
                });
            }
        }
        if self.idle_timeout.is_zero() {
            return Err(OptionsError::ZeroDuration {
                what: "idle_timeout",
            });
        }
        if self.max_lifetime.is_zero() {
            return Err(OptionsError::ZeroDuration {
                what: "max_lifetime",
            });
        }
        Ok(())
    }
}

/// A per-session environment variable name must look like `[A-Z_][A-Z0-9_]*`
/// and must not change how kiln, the loader or Python behave: `KILN_*`,
/// `LD_*`, `PYTHON*`, `PATH` and `HOME` are refused.
pub fn check_env_name(name: &str) -> Result<(), OptionsError> {
    let refuse = |reason| {
        Err(OptionsError::EnvName {
            name: name.to_string(),
            reason,
        })
    };
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_');
    if !first_ok
        || !chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        || name.len() > 256
    {
        return refuse("names are [A-Z_][A-Z0-9_]*, at most 256 characters");
    }
    if name.starts_with("KILN_") {
        return refuse("KILN_* configures the runner");
    }
    if name.starts_with("LD_") {
        return refuse("LD_* changes what the dynamic loader loads");
    }
    if name.starts_with("PYTHON") {
        return refuse("PYTHON* changes how the interpreter starts and imports");
    }
    if name == "PATH" || name == "HOME" {
        return refuse("PATH and HOME are set by kiln");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        for ok in ["API_TOKEN", "_X", "A1", "MPL_X"] {
            assert_eq!(check_env_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "1A",
            "lower",
            "A-B",
            "A B",
            "É",
            "KILN_SITE",
            "KILN_",
            "LD_PRELOAD",
            "PYTHONPATH",
            "PYTHONSTARTUP",
            "PATH",
            "HOME",
        ] {
            assert!(
                matches!(check_env_name(bad), Err(OptionsError::EnvName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn file_paths() {
        for ok in ["a", "a/b.csv", "out/x y", "..a", "a..b/c"] {
            assert_eq!(check_file_path(ok, false), Ok(ok));
        }
        assert_eq!(check_file_path("", true), Ok(""));
        assert_eq!(check_file_path(".", true), Ok(""));
        for bad in [
            "",
            ".",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/",
            "./a",
            "a\0b",
            "a/./b",
        ] {
            let err = check_file_path(bad, false).unwrap_err();
            assert_eq!(err.kind(), "refused", "{bad:?}");
        }
        assert!(check_file_path("..", true).is_err());
        assert!(check_file_path(&"a/".repeat(3000), false).is_err());
    }

    #[test]
    fn options_are_validated() {
        let mut o = SessionOptions::default();
        assert_eq!(o.validate(), Ok(()));
        o.env.insert("OK".into(), "a\0b".into());
        assert!(matches!(o.validate(), Err(OptionsError::EnvValue { .. })));
        o.env.clear();
        o.env.insert("BIG".into(), "x".repeat(ENV_MAX_BYTES));
        assert!(matches!(
            o.validate(),
            Err(OptionsError::EnvTooLarge { .. })
        ));
        o.env.clear();
        o.files.push(InputFile {
            path: "../x".into(),
            data: vec![],
        });
        assert!(matches!(o.validate(), Err(OptionsError::File { .. })));
        o.files.clear();
        o.idle_timeout = Duration::ZERO;
        assert!(matches!(
            o.validate(),
            Err(OptionsError::ZeroDuration { .. })
        ));
    }
}
