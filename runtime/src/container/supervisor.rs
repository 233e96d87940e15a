//! The supervisor: the `skiff` process that runs one container from start to exit. It claims
//! the container's record, mounts the rootfs through a [`RootfsProvider`], wires stdio, starts
//! the sandbox (forwarding SIGINT/SIGTERM/SIGHUP/SIGQUIT to it), records the pid, waits,
//! unmounts, and records how the container ended — or, with `--rm`, removes every trace.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;

use super::attach::{self, Wiring};
use super::health::{self, Health, Prober};
use super::log::LogFile;
use super::ports::Listeners;
use super::rootfs::RootfsProvider;
use super::state::{ProcessId, State, Status};
use super::{lifecycle, ContainerError, Containers};
use crate::image::StoredImage;
use crate::sandbox::{self, Errno, ExitStatus};

/// Whether a user is attached to the container's stdio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Output to this process's stdout and stderr (and the log); `-i` reads its stdin.
    Terminal,
    /// Output to the log only: `run -d`, `start`.
    Detached,
}

/// One run of a container.
pub struct Supervision<'a> {
    pub containers: &'a Containers,
    pub id: &'a str,
    pub image: &'a StoredImage,
    pub provider: &'a dyn RootfsProvider,
    pub attach: Attach,
    /// What runs the container's health check, if it has one.
    pub prober: Option<&'a dyn Prober>,
}

/// The exit code docker gives when a container cannot start: 127 when the command is not
/// found, 126 when it cannot be executed, 125 for any other error of the runtime's own.
pub fn exit_code(error: &ContainerError) -> i32 {
    match error {
        ContainerError::Sandbox { source, .. } => match **source {
            sandbox::Error::Exec { source: Errno::ENOENT, .. } => 127,
            sandbox::Error::Exec { .. } => 126,
            _ => 125,
        },
        _ => 125,
    }
}

/// Runs the container `id` until it exits and returns how it ended. A detached container
/// whose restart policy says so is started again, after docker's back-off: 100 ms, doubled
/// at each restart up to a minute, and back to 100 ms after a run of 10 s or more.
pub fn supervise(s: Supervision<'_>) -> Result<ExitStatus, ContainerError> {
    let mut backoff = FIRST_BACKOFF;
    let mut state = claim(s.containers, s.id)?;
    loop {
        let started = Instant::now();
        let (result, oom_killed) = match run(&s, &state) {
            Ok((status, oom_killed)) => (Ok(status), oom_killed),
            Err(e) => (Err(e), false),
        };
        let mut restarting = false;
        let finished = s.containers.update(s.id, |st| {
            st.status = Status::Exited;
            st.oom_killed = oom_killed;
            st.init = None;
            st.published.clear();
            st.finished_at = Some(Utc::now());
            match &result {
                Ok(status) => st.exit_code = Some(status.code()),
                Err(e) => {
                    st.exit_code = Some(exit_code(e));
                    st.error = Some(e.to_string());
                }
            }
            // A start that failed is not retried: it would fail again.
            restarting = s.attach == Attach::Detached
                && result.as_ref().is_ok_and(|status| st.restarts_after(status.code()));
            if restarting {
                st.restart_count += 1;
            } else {
                st.supervisor = None;
            }
        });
        if restarting && finished.is_ok() {
            if started.elapsed() >= STEADY_RUN {
                backoff = FIRST_BACKOFF;
            }
            match wait_to_restart(s.containers, s.id, backoff)? {
                Some(next) => {
                    state = next;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                None => return result,
            }
        }
        if finished.as_ref().is_ok_and(|st| st.auto_remove) {
            let _waiters_done = s.containers.lock_waiters(s.id, true)?;
            lifecycle::remove_files(s.containers, s.id)?;
        }
        finished?;
        return result;
    }
}

/// docker's restart back-off: its first delay, its longest, and the run after which it starts
/// over.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const STEADY_RUN: Duration = Duration::from_secs(10);

/// Sleeps `delay`, watching for a `stop`, `kill` or `rm` meanwhile; the record to start
/// again from, or `None` when the container is not to start again (this process then lets
/// it go).
fn wait_to_restart(
    containers: &Containers,
    id: &str,
    delay: Duration,
) -> Result<Option<State>, ContainerError> {
    let until = Instant::now() + delay;
    loop {
        let current = match containers.load(id) {
            Ok(st) => st,
            Err(ContainerError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // A stopped container is let go by the claim, as one stopped at the last moment is.
        let now = Instant::now();
        if current.manually_stopped || now >= until {
            return claim_again(containers, id);
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// Marks the container as starting again under this supervisor, its count of restarts kept;
/// `None` (and the container let go) if it was stopped since the check, in one step with the
/// check so that a stop cannot slip in between.
fn claim_again(containers: &Containers, id: &str) -> Result<Option<State>, ContainerError> {
    let mut stopped = false;
    let state = containers.update(id, |st| {
        stopped = st.manually_stopped;
        if stopped {
            st.supervisor = None;
        } else {
            forget_last_run(st);
        }
    })?;
    Ok((!stopped).then_some(state))
}

/// A record about to start: the last run's end forgotten.
fn forget_last_run(st: &mut State) {
    st.status = Status::Created;
    st.init = None;
    st.exit_code = None;
    st.error = None;
    st.finished_at = None;
    st.oom_killed = false;
}

/// The network namespace of container `other`, which container `id` joins: it must be running.
fn network_of(containers: &Containers, id: &str, other: &str) -> Result<PathBuf, ContainerError> {
    let down =
        |other: &str| ContainerError::JoinedNetworkDown { id: id.to_string(), other: other.to_string() };
    match containers.load(other) {
        Ok(st) => match st.init.filter(|p| st.is_running() && p.is_alive()) {
            Some(init) => Ok(format!("/proc/{}/ns/net", init.pid).into()),
            None => Err(down(&st.name)),
        },
        Err(ContainerError::NotFound(_)) => Err(down(other.get(..12).unwrap_or(other))),
        Err(e) => Err(e),
    }
}

/// Makes this process the container's supervisor, unless another live one is.
fn claim(containers: &Containers, id: &str) -> Result<State, ContainerError> {
    let me = ProcessId::current();
    let mut other = None;
    let state = containers.update(id, |st| {
        if let Some(sup) = st.supervisor.filter(|p| *p != me && p.is_alive()) {
            other = Some(sup.pid);
            return;
        }
        st.supervisor = Some(me);
        st.manually_stopped = false;
        forget_last_run(st);
    })?;
    match other {
        Some(pid) => Err(ContainerError::Supervised { id: id.to_string(), pid }),
        None => Ok(state),
    }
}

/// One run of the container: how it ended, and whether the OOM killer killed a process of it.
fn run(s: &Supervision<'_>, state: &State) -> Result<(ExitStatus, bool), ContainerError> {
    let id = s.id.to_string();
    let paths = s.containers.paths(s.id);
    // First: a port another process holds fails the start before anything is mounted.
    let listeners =
        Listeners::bind(&state.ports).map_err(|source| ContainerError::Publish { id: id.clone(), source })?;
    let joined_network = match &state.network_container {
        Some(other) => Some(network_of(s.containers, &id, other)?),
        None => None,
    };
    // Held while the rootfs is mounted: a `skiff cp` mounting it too is waited for.
    let rootfs_lock = s.containers.lock_rootfs(s.id)?;
    let mounted = s
        .provider
        .mount(s.image, &paths.upper, &paths.rootfs)
        .map_err(|source| ContainerError::Rootfs { id: id.clone(), source: Box::new(source) })?;
    let named = s.containers.named_volumes();
    super::volumes::fill_for_container(&state.spec.volumes, &paths.volumes, &named, mounted.path())
        .map_err(|source| ContainerError::Volume { id: id.clone(), source })?;
    let mut spec = state.spec.clone();
    spec.rootfs = mounted.path().to_path_buf();
    if let Some(path) = joined_network {
        spec.network = sandbox::Network::Join(path);
    }
    let log = LogFile::open(&paths.log, state.log_rotation).map_err(super::io_err("opening", &paths.log))?;
    let wiring =
        Wiring { attached: s.attach == Attach::Terminal, tty: spec.tty, interactive: state.interactive };
    let (stdio, wired) =
        attach::wire(wiring, Some(log)).map_err(super::io_err("wiring stdio of", &paths.dir))?;
    let sandbox_err = |source| ContainerError::Sandbox { id: id.clone(), source: Box::new(source) };
    // Before the spawn, so a signal that comes while the container starts is not lost.
    let forwarder = sandbox::Forwarder::install().map_err(sandbox_err)?;
    let mut container = match sandbox::spawn(&spec, stdio) {
        Ok(c) => c,
        Err(e) => {
            wired.finish();
            return Err(sandbox_err(e));
        }
    };
    s.containers.update(s.id, |st| {
        st.status = Status::Running;
        st.init = ProcessId::of(container.pid().as_raw());
        st.started_at = Some(Utc::now());
        st.health = st.healthcheck.as_ref().map(|_| Health::starting());
        st.published = listeners.mappings();
    })?;
    let netns = match listeners.is_empty() {
        true => None,
        false => Some(
            File::open(format!("/proc/{}/ns/net", container.pid()))
                .map_err(|source| ContainerError::Publish { id: id.clone(), source })?,
        ),
    };
    // Its health checked, and its published ports served, beside it for as long as it runs.
    let done = AtomicBool::new(false);
    let status = std::thread::scope(|scope| {
        if let (Some(check), Some(prober)) = (&state.healthcheck, s.prober) {
            let (containers, id, done) = (s.containers, s.id, &done);
            scope.spawn(move || health::watch(containers, id, check, prober, done));
        }
        if let Some(netns) = netns {
            let (id, done) = (s.id, &done);
            scope.spawn(move || {
                if let Err(e) = listeners.serve(netns, done) {
                    tracing::warn!(container = id, error = %e, "serving the published ports");
                }
            });
        }
        let status = sandbox::wait_forwarding(&mut container, forwarder).map_err(sandbox_err);
        done.store(true, Ordering::Relaxed);
        status
    });
    wired.finish();
    drop(mounted);
    drop(rootfs_lock);
    Ok((status?, container.oom_killed()))
}
