//! The reaper: containers labelled by kiln whose kiln is gone, or that
//! outlived their deadline, are removed — at start and periodically.
//!
//! A container names its owner by pid, the owner's start time (so a
//! recycled pid is not taken for it) and the boot id (so a container of a
//! previous boot, or of another host sharing the engine, is judged by its
//! deadline only).

use crate::engine::Engine;
use crate::spec::{
    LABEL_DEADLINE, LABEL_OWNER_BOOT, LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_SANDBOX,
};
use bollard::query_parameters::ListContainersOptionsBuilder;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Who this kiln process is, as written into its containers' labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
    pub boot: String,
}

impl Owner {
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start: process_start(pid).unwrap_or(0),
            boot: boot_id(),
        }
    }

    /// Whether the process this names still runs (same boot, same pid,
    /// same start time).
    fn alive(&self) -> bool {
        self.boot == boot_id() && process_start(self.pid) == Some(self.start)
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a container should go, or `None` to keep it.
pub fn verdict(labels: &HashMap<String, String>, now: u64) -> Option<String> {
    let deadline: Option<u64> = labels.get(LABEL_DEADLINE).and_then(|d| d.parse().ok());
    match deadline {
        Some(d) if d <= now => return Some(format!("its deadline passed {} s ago", now - d)),
        None => return Some("it carries no valid deadline".into()),
        _ => {}
    }
    let owner = Owner {
        pid: labels.get(LABEL_OWNER_PID)?.parse().ok()?,
        start: labels.get(LABEL_OWNER_START)?.parse().ok()?,
        boot: labels.get(LABEL_OWNER_BOOT)?.clone(),
    };
    if owner.boot != boot_id() {
        // Another boot or host: only the deadline can tell.
        return None;
    }
    (!owner.alive()).then(|| format!("its kiln (pid {}) is gone", owner.pid))
}

/// Removes kiln's containers that should go; returns their names.
pub fn reap(engine: &Engine) -> Result<Vec<String>, bollard::errors::Error> {
    let filters = HashMap::from([("label".to_string(), vec![LABEL_SANDBOX.to_string()])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let docker = engine.docker.clone();
    let containers = engine.call(async move { docker.list_containers(Some(options)).await })?;
    let now = now_secs();
    let mut reaped = Vec::new();
    for c in containers {
        let labels = c.labels.unwrap_or_default();
        let Some(why) = verdict(&labels, now) else {
            continue;
        };
        let Some(id) = c.id else { continue };
        let name = c
            .names
            .and_then(|n| n.first().cloned())
            .unwrap_or_else(|| id.clone());
        tracing::warn!(container = %name, %why, "removing a container kiln left behind");
        crate::host::remove(engine, &id);
        reaped.push(name.trim_start_matches('/').to_string());
    }
    Ok(reaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(owner: &Owner, deadline: u64) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_SANDBOX.to_string(), "1".to_string()),
            (LABEL_OWNER_PID.to_string(), owner.pid.to_string()),
            (LABEL_OWNER_START.to_string(), owner.start.to_string()),
            (LABEL_OWNER_BOOT.to_string(), owner.boot.clone()),
            (LABEL_DEADLINE.to_string(), deadline.to_string()),
        ])
    }

    #[test]
    fn a_live_owner_within_its_deadline_keeps_its_container() {
        let me = Owner::current();
        assert!(me.start > 0);
        assert_eq!(verdict(&labels(&me, now_secs() + 60), now_secs()), None);
    }

    #[test]
    fn past_the_deadline_goes() {
        let me = Owner::current();
        let why = verdict(&labels(&me, 10), 100).unwrap();
        assert!(why.contains("deadline"), "{why}");
    }

    #[test]
    fn a_dead_or_recycled_owner_goes() {
        let me = Owner::current();
        let recycled = Owner {
            start: me.start + 1,
            ..me.clone()
        };
        let why = verdict(&labels(&recycled, now_secs() + 60), now_secs()).unwrap();
        assert!(why.contains("gone"), "{why}");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = Owner {
            pid,
            start: 1,
            boot: me.boot.clone(),
        };
        assert!(verdict(&labels(&dead, now_secs() + 60), now_secs()).is_some());
    }

    #[test]
    fn another_boot_is_judged_by_the_deadline_only() {
        let other = Owner {
            pid: 1,
            start: 12345,
            boot: "another-boot".into(),
        };
        assert_eq!(verdict(&labels(&other, now_secs() + 60), now_secs()), None);
        let mut no_deadline = labels(&other, 0);
        no_deadline.remove(LABEL_DEADLINE);
        assert!(verdict(&no_deadline, now_secs()).is_some());
    }
}
