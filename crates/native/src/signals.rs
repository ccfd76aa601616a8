//! Terminal signals for an interactive kiln (`kiln repl`): SIGINT, SIGTERM
//! and SIGHUP arrive as values on a watcher thread (a `signalfd`), so the
//! caller can interrupt or kill a session instead of dying with it.
//!
//! The signals are blocked in the calling thread and every thread started
//! after it; a sandbox spawned afterwards gets a clean mask from the jail's
//! `reset_signals` step.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A signal that reached the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM or SIGHUP.
    Terminate,
}

const WATCHED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Starts the watcher thread. Call it from the main thread before any other
/// thread exists, so no thread is left where the default action would run.
pub fn watch(mut on_signal: impl FnMut(Signal) + Send + 'static) -> io::Result<()> {
    // SAFETY: an initialised sigset, filled by sigemptyset/sigaddset.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in WATCHED {
            libc::sigaddset(&mut set, sig);
        }
        set
    };
    // SAFETY: `set` is a valid sigset; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    // SAFETY: `set` is valid; -1 asks for a new fd.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by signalfd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    std::thread::Builder::new()
        .name("kiln-signals".into())
        .spawn(move || loop {
            let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            match crate::sys::read(fd.as_raw_fd(), &mut info) {
                Ok(n) if n == info.len() => {
                    let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                    on_signal(if signo == libc::SIGINT as u32 {
                        Signal::Interrupt
                    } else {
                        Signal::Terminate
                    });
                }
                _ => return,
            }
        })?;
    Ok(())
}

/// Runs `f` with the signals [`watch`] handles blocked in the calling
/// thread, so threads `f` starts (an engine client's I/O threads, say)
/// inherit the block and never take the default action for a signal meant
/// for the watcher. The calling thread's mask is restored afterwards.
pub fn with_watched_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: an initialised sigset, filled by sigemptyset/sigaddset.
    let (set, mut old) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in WATCHED {
            libc::sigaddset(&mut set, sig);
        }
        (set, std::mem::zeroed::<libc::sigset_t>())
    };
    // SAFETY: both sigsets are valid for reads and writes.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) } == 0;
    let out = f();
    if blocked {
        // SAFETY: `old` is the mask pthread_sigmask returned above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    }
    out
}
