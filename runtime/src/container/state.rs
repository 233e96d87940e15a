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

/// docker's `--restart`: when a container's supervisor starts it again after it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "name", content = "max_retries")]
pub enum RestartPolicy {
    #[default]
    No,
    /// After a non-zero exit, at most this many times (`None`: no limit).
    OnFailure(Option<u32>),
    /// Whatever its exit code.
    Always,
    /// As `Always`; the two differ only at a daemon's start, which skiff has not.
    UnlessStopped,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "no" => Ok(RestartPolicy::No),
            None if s == "always" => Ok(RestartPolicy::Always),
            None if s == "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            None if s == "on-failure" => Ok(RestartPolicy::OnFailure(None)),
            Some(("on-failure", n)) => n
                .parse()
                .map(|n| RestartPolicy::OnFailure(Some(n)))
                .map_err(|_| format!("on-failure:{n}: the most retries is a number")),
            _ => Err(format!("{s:?}: expected no, on-failure[:N], always or unless-stopped")),
        }
    }
}

impl State {
    /// Whether its restart policy starts it again after it exited with `code`.
    pub fn restarts_after(&self, code: i32) -> bool {
        if self.manually_stopped || self.auto_remove {
            return false;
        }
        match self.restart {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure(max) => code != 0 && max.is_none_or(|m| self.restart_count < m),
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        }
    }

    /// Ended, and waiting for its restart policy to start it again.
    pub fn is_restarting(&self) -> bool {
        self.status == Status::Exited && self.supervisor.is_some_and(|p| p.is_alive())
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
    /// `--stop-timeout`: seconds `stop` waits for it before SIGKILL unless told (10 if `None`).
    #[serde(default)]
    pub stop_timeout: Option<u64>,
    /// `--rm`: remove everything once the container has exited.
    pub auto_remove: bool,
    /// `-i`: keep stdin open even when nobody is attached.
    pub interactive: bool,
    /// `--restart`: whether its supervisor starts it again when it ends.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// How many times the restart policy has started it again.
    #[serde(default)]
    pub restart_count: u32,
    /// Whether the kernel's OOM killer killed a process of its last run (at its memory limit).
    #[serde(default)]
    pub oom_killed: bool,
    /// `stop` or `kill` ended it: no restart policy starts it again until `start` does.
    #[serde(default)]
    pub manually_stopped: bool,
    /// How its health is checked (`--health-cmd`, or the image's HEALTHCHECK).
    #[serde(default)]
    pub healthcheck: Option<super::health::HealthCheck>,
    /// Its health while it runs with a check.
    #[serde(default)]
    pub health: Option<super::health::Health>,
    /// Its labels: the image's, and `--label`s over them.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--network container:`: the container whose network namespace this one joins, at
    /// each start (its `spec.network` is then that namespace's).
    #[serde(default)]
    pub network_container: Option<String>,
    /// `--log-opt max-size/max-file`: how its log is rotated (never, if `None`).
    #[serde(default)]
    pub log_rotation: Option<super::log::Rotation>,
    /// `-p`: the ports published, as asked for (host port 0: any free one).
    #[serde(default)]
    pub ports: Vec<super::ports::PortMapping>,
    /// The ports published while it runs, with the host ports bound.
    #[serde(default)]
    pub published: Vec<super::ports::PortMapping>,
    /// How many of `spec.args` are the entrypoint (the image's or `--entrypoint`), the rest
    /// being the command; `None` in records made before skiff kept it.
    #[serde(default)]
    pub entrypoint_len: Option<usize>,
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

    #[test]
    fn restart_policies_parse_as_docker_writes_them() {
        assert_eq!("no".parse::<RestartPolicy>().unwrap(), RestartPolicy::No);
        assert_eq!("always".parse::<RestartPolicy>().unwrap(), RestartPolicy::Always);
        assert_eq!("unless-stopped".parse::<RestartPolicy>().unwrap(), RestartPolicy::UnlessStopped);
        assert_eq!("on-failure".parse::<RestartPolicy>().unwrap(), RestartPolicy::OnFailure(None));
        assert_eq!("on-failure:5".parse::<RestartPolicy>().unwrap(), RestartPolicy::OnFailure(Some(5)));
        assert!("on-failure:x".parse::<RestartPolicy>().is_err());
        assert!("sometimes".parse::<RestartPolicy>().unwrap_err().contains("expected no, on-failure"));
        // Recorded so that older records (no field) read as `no`.
        let json = serde_json::to_string(&RestartPolicy::OnFailure(Some(2))).unwrap();
        assert_eq!(serde_json::from_str::<RestartPolicy>(&json).unwrap(), RestartPolicy::OnFailure(Some(2)));
    }
}
