//! The one error type of this crate: every variant says what went wrong and what to do.

use std::path::PathBuf;

/// Everything that can go wrong while building or locating a runtime tree.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// No Python 3.11 interpreter could be started.
    #[error(
        "no Python 3.11 interpreter found (tried `{tried}`: {reason}); install one \
         (`apt-get install python3.11 python3-pip`) or set `runtime.python` in kiln.toml"
    )]
    PythonNotFound {
        /// The command or path that was tried.
        tried: String,
        /// Why it failed.
        reason: String,
    },

    /// An interpreter was found but it is not Python 3.11.
    #[error(
        "`{path}` is Python {found}, but the runtime needs Python 3.11; install python3.11 \
         or point `runtime.python` in kiln.toml at a 3.11 interpreter"
    )]
    WrongPythonVersion {
        /// The interpreter.
        path: PathBuf,
        /// The version it reported.
        found: String,
    },

    /// The interpreter has no pip to install the locked libraries with.
    #[error(
        "`{path}` has no pip module; install it (`apt-get install python3-pip`, or \
         `{path} -m ensurepip`) and run `kiln env setup` again"
    )]
    PipMissing {
        /// The interpreter.
        path: PathBuf,
    },

    /// pip failed for a reason other than a hash mismatch.
    #[error(
        "pip failed to install the locked libraries (exit {status}); its last output:\n{tail}"
    )]
    PipFailed {
        /// pip's exit status (or `signal`).
        status: String,
        /// The last lines of its stderr/stdout.
        tail: String,
    },

    /// A downloaded wheel does not match the hash pinned in the lock file.
    #[error(
        "a downloaded package does not match the hash pinned in the lock file — refusing to \
         install it. Clear pip's cache (`pip cache purge`) and retry; if it persists the \
         index served different bytes than were locked:\n{detail}"
    )]
    HashMismatch {
        /// pip's report of the offending packages.
        detail: String,
    },

    /// `ldd` could not be run.
    #[error("could not run `ldd` ({reason}); install it (`apt-get install libc-bin`)")]
    LddMissing {
        /// Why it failed.
        reason: String,
    },

    /// A shared library needed by something in the tree does not exist on this host.
    #[error(
        "`{object}` needs the shared library `{library}`, which is not installed on this \
         host; install the package providing it and run `kiln env setup` again"
    )]
    LibraryNotFound {
        /// The object (inside the staging tree) that needs it.
        object: PathBuf,
        /// The missing soname.
        library: String,
    },

    /// A helper program (compileall, the font-cache build, ldconfig) failed.
    #[error("{step} failed: {detail}")]
    StepFailed {
        /// What was being done.
        step: &'static str,
        /// Its output or reason.
        detail: String,
    },

    /// A filesystem operation failed.
    #[error("{op} `{path}`: {source}")]
    Io {
        /// What was being done ("create directory", "copy", ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A directory on the way to the data dir cannot be traversed by other users.
    #[error(
        "`{path}` (mode {mode:o}) is not traversable by other users, but sandboxes run as \
         unprivileged uids that must read the runtime below it; run `chmod o+x {path}` or \
         set KILN_DATA_DIR to a directory whose ancestors are all o+x"
    )]
    DataDirNotTraversable {
        /// The offending directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// No runtime tree exists for the embedded lock file.
    #[error("no runtime for this kiln's lock file under `{data_dir}`; run `kiln env setup`")]
    NotSetUp {
        /// The data dir that was searched.
        data_dir: PathBuf,
    },

    /// A runtime manifest could not be parsed.
    #[error("runtime manifest `{path}` is invalid ({reason}); delete that runtime directory and run `kiln env setup`")]
    BadManifest {
        /// The manifest file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
}

impl EnvError {
    /// An [`EnvError::Io`] for `path`; use as `.map_err(EnvError::io("copy", &p))`.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> EnvError {
        let path = path.into();
        move |source| EnvError::Io { op, path, source }
    }
}

/// This crate's result type.
pub type Result<T, E = EnvError> = std::result::Result<T, E>;
