//! A container's record, `<root>/containers/<id>/state.json`: what it runs, from which image,
//! and where it is in its life. Replaced atomically (temp file and rename) on every change.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::rootfs::PullMode;
use crate::sandbox::ContainerSpec;
use crate::store::ImageRecord;

/// Where a container is in its life, as docker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made, never started (or its supervisor is setting it up).
    Created,
    Running,
    Exited,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        })
    }
}

/// A process, told apart from a later one that reuses its pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot.
    pub start_time: u64,
}

impl ProcessId {
    /// This process.
    pub fn current() -> ProcessId {
        ProcessId::of(std::process::id() as i32).expect("/proc/self/stat is readable")
    }

    /// The process `pid` if it exists (a zombie counts as gone).
    pub fn of(pid: i32) -> Option<ProcessId> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses: fields resume after the
        // last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
            return None;
        }
        Some(ProcessId { pid, start_time: fields.get(19)?.parse().ok()? })
    }

    /// Whether this very process still runs.
    pub fn is_alive(&self) -> bool {
        ProcessId::of(self.pid) == Some(*self)
    }
}

/// Everything skiff records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// 64 hex digits.
    pub id: String,
    /// Unique among the containers of one root.
    pub name: String,
    /// The image it was created from (name, manifest, source repository).
    pub image: ImageRecord,
    pub pull_mode: PullMode,
    /// Save the files a run reads as the image's prefetch profile (lazy mode).
    #[serde(default)]
    pub record_profile: bool,
    /// Prefetch no profile (lazy mode).
    #[serde(default)]
    pub no_prefetch: bool,
    pub created: DateTime<Utc>,
    pub status: Status,
    /// The `skiff` process that supervises the container while it runs.
    pub supervisor: Option<ProcessId>,
    /// The container's PID 1 (host pid) while it runs.
    pub init: Option<ProcessId>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    /// Why the container could not start, or why it ended without its supervisor.
    pub error: Option<String>,
    /// The signal `stop` sends first (the image's StopSignal, default SIGTERM).
    pub stop_signal: String,
    /// `--rm`: remove everything once the container has exited.
    pub auto_remove: bool,
    /// `-i`: keep stdin open even when nobody is attached.
    pub interactive: bool,
    /// Its labels: the image's, and `--label`s over them.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// What the sandbox runs; `rootfs` and `state_dir` point into the container's directory.
    pub spec: ContainerSpec,
}

impl State {
    pub fn is_running(&self) -> bool {
        self.status == Status::Running
    }

    /// The id docker shows: the first 12 digits.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
}

/// Reads a state file.
pub fn read(path: &Path) -> std::io::Result<State> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Replaces a state file atomically.
pub fn write(path: &Path, state: &State) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).expect("a state serializes");
    crate::store::write_atomic(path, &bytes, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessId::current();
        assert!(me.is_alive());
        assert!(!ProcessId { start_time: me.start_time + 1, ..me }.is_alive());
    }
}
