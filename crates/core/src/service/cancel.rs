//! [`Cancel`]: how a transport stops the execution of a command whose
//! caller went away (a closed socket, a dropped SSE stream).

use std::sync::{Arc, Mutex, PoisonError};

/// What stops the running execution; returns whether it reached one.
pub(crate) type Stop = Arc<dyn Fn() -> bool + Send + Sync>;

/// Shared between the thread handling a command and the one watching its
/// caller. [`fire`](Self::fire) may come before the execution is armed,
/// while it runs, or after it ended; it never reaches another command's
/// execution.
#[derive(Default)]
pub struct Cancel {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    fired: bool,
    stop: Option<Stop>,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    /// The caller is gone: stop the execution. Returns whether a running
    /// execution was reached; a watcher calls it again until it was, or
    /// until the command ended (an execution may be between being armed and
    /// actually running).
    pub fn fire(&self) -> bool {
        let stop = {
            let mut state = self.lock();
            state.fired = true;
            state.stop.clone()
        };
        stop.is_some_and(|stop| stop())
    }

    /// Whether the caller went away.
    pub fn fired(&self) -> bool {
        self.lock().fired
    }

    /// An execution starts; `stop` ends it. Already fired: stopped at once.
    pub(crate) fn arm(&self, stop: Stop) {
        let fired = {
            let mut state = self.lock();
            state.stop = Some(stop.clone());
            state.fired
        };
        if fired {
            stop();
        }
    }

    /// The execution ended: nothing to stop any more.
    pub(crate) fn disarm(&self) {
        self.lock().stop = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
