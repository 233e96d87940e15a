//! What other `skiff` processes do to a container its supervisor runs: signal it (`kill`),
//! stop it (its stop signal, then SIGKILL), wait for it, remove it; and clean up after a
//! supervisor that died (killed with SIGKILL, or the machine went down) — its mounts, its
//! cgroup and its record.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::mount::MntFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::state::{self, State, Status};
use super::{io_err, ContainerError, Containers};
use crate::sandbox;

const POLL: Duration = Duration::from_millis(50);
/// docker's: seconds a container gets from its stop signal to SIGKILL.
const DEFAULT_STOP_TIMEOUT: u64 = 10;
/// How long a container gets to go after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// How long a stop waits for a supervisor to finish starting the container (mounting its
/// image, which may fetch from the registry, and setting up its sandbox).
const START_WAIT: Duration = Duration::from_secs(60);

/// Cleans up after every supervisor that died: kills what is left of its container, unmounts
/// what it mounted under the container's directory, removes its cgroup and records the
/// container as exited (or removes it, for `--rm`).
pub(super) fn reap(containers: &Containers) -> Result<(), ContainerError> {
    for listed in containers.list()? {
        if listed.supervisor.is_none_or(|p| p.is_alive()) {
            continue;
        }
        // Under the lock, so a supervisor that claims the container now does not have its
        // fresh mounts torn down.
        let _lock = containers.lock()?;
        let Ok(mut st) = containers.load(&listed.id) else { continue };
        let Some(dead) = st.supervisor.filter(|p| !p.is_alive()) else { continue };
        tracing::info!(container = %st.id, pid = dead.pid, "cleaning up after a dead supervisor");
        if let Some(init) = st.init.filter(|p| p.is_alive()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(init.pid), Signal::SIGKILL);
        }
        unmount_all(&st.id, &containers.paths(&st.id).dir)?;
        if let Err(e) = sandbox::remove_cgroup(&st.id) {
            tracing::warn!(container = %st.id, error = %e, "removing the cgroup of a dead supervisor's container");
        }
        if st.auto_remove {
            remove_dir(containers, &st.id)?;
            continue;
        }
        st.exit_code = Some(if st.status == Status::Running { 128 + Signal::SIGKILL as i32 } else { 125 });
        st.status = Status::Exited;
        st.error = Some(format!("its supervisor (pid {}) died", dead.pid));
        st.supervisor = None;
        st.init = None;
        st.published.clear();
        st.finished_at = Some(Utc::now());
        let path = containers.paths(&st.id).state;
        state::write(&path, &st).map_err(io_err("writing", &path))?;
    }
    Ok(())
}

/// Sends `signal` to the container's PID 1. A paused container gets SIGKILL's effect at once
/// (it is let go on); other signals wait, as any signal to a stopped process, until it is
/// unpaused.
pub fn kill(state: &State, signal: Signal) -> Result<(), ContainerError> {
    let init = state
        .init
        .filter(|p| state.status == Status::Running && p.is_alive())
        .ok_or_else(|| ContainerError::NotRunning { id: state.id.clone() })?;
    nix::sys::signal::kill(Pid::from_raw(init.pid), signal).map_err(|source| match source {
        // It ended between the check and the signal.
        nix::errno::Errno::ESRCH => ContainerError::NotRunning { id: state.id.clone() },
        source => ContainerError::Signal { id: state.id.clone(), pid: init.pid, source },
    })?;
    if signal == Signal::SIGKILL {
        thaw(state)?;
    }
    Ok(())
}

/// Pauses a running container: its processes stop until [`unpause`] (docker's pause).
pub fn pause(state: &State) -> Result<(), ContainerError> {
    if state.status != Status::Running || !state.supervisor.is_some_and(|p| p.is_alive()) {
        return Err(ContainerError::NotRunning { id: state.id.clone() });
    }
    let cgroup = |source| ContainerError::Cgroup { id: state.id.clone(), source };
    let frozen = sandbox::freeze(&state.id).map_err(cgroup)?;
    let frozen = frozen.ok_or_else(|| ContainerError::NoFreezer { id: state.id.clone() })?;
    if frozen.was_frozen() {
        return Err(ContainerError::AlreadyPaused { id: state.id.clone() });
    }
    frozen.keep();
    Ok(())
}

/// Lets a paused container go on.
pub fn unpause(state: &State) -> Result<(), ContainerError> {
    if !thaw(state)? {
        return Err(ContainerError::NotPaused { id: state.id.clone() });
    }
    Ok(())
}

/// Lets the container go on if it was paused; whether it was.
fn thaw(state: &State) -> Result<bool, ContainerError> {
    sandbox::thaw(&state.id).map_err(|source| ContainerError::Cgroup { id: state.id.clone(), source })
}

/// Stops the container as docker does: its stop signal, then SIGKILL after `timeout` (by
/// default its `--stop-timeout`, else 10 s). Returns once its supervisor has recorded the
/// exit (`None`: the container removed itself).
pub fn stop(
    containers: &Containers,
    state: &State,
    timeout: Option<Duration>,
) -> Result<Option<State>, ContainerError> {
    // Stopped by hand: its restart policy does not start it again (nor, if it is waiting
    // to restart, at all).
    match containers.update(&state.id, |st| st.manually_stopped = true) {
        Ok(_) | Err(ContainerError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let Some(state) = settled(containers, &state.id)? else { return Ok(None) };
    if state.status != Status::Running {
        return Ok(Some(state));
    }
    let state = &state;
    let timeout = timeout.unwrap_or(Duration::from_secs(state.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT)));
    let signal = super::parse_signal(&state.stop_signal).unwrap_or(Signal::SIGTERM);
    match kill(state, signal) {
        Ok(()) | Err(ContainerError::NotRunning { .. }) => {}
        Err(e) => return Err(e),
    }
    // A paused container handles its stop signal once let go on, as under docker.
    thaw(state)?;
    if let Some(done) = wait_exited(containers, &state.id, timeout)? {
        return Ok(done);
    }
    match kill(state, Signal::SIGKILL) {
        Ok(()) | Err(ContainerError::NotRunning { .. }) => {}
        Err(e) => return Err(e),
    }
    wait_exited(containers, &state.id, KILL_GRACE)?
        .ok_or_else(|| ContainerError::StopTimeout { id: state.id.clone(), seconds: KILL_GRACE.as_secs() })
}

/// Changes a container's resource limits and restart policy (`None`: kept): the limits at
/// once for a running one (its cgroup, when they change), and both for its later starts (its
/// record).
pub fn update(
    containers: &Containers,
    state: &State,
    resources: sandbox::Resources,
    restart: Option<super::RestartPolicy>,
) -> Result<State, ContainerError> {
    if state.is_running() && resources != state.spec.resources {
        sandbox::set_resources(&state.id, &resources)
            .map_err(|source| ContainerError::Cgroup { id: state.id.clone(), source })?;
    }
    containers.update(&state.id, |st| {
        st.spec.resources = resources;
        if let Some(policy) = restart {
            st.restart = policy;
        }
    })
}

/// Waits until the container is not running (at once, for one that is not); its exit code,
/// 0 for one never started. A `--rm` container is removed only once this has read its code.
pub fn wait(containers: &Containers, id: &str) -> Result<i32, ContainerError> {
    let _watching = containers.lock_waiters(id, false)?;
    loop {
        match wait_exited(containers, id, Duration::from_secs(3600))? {
            None => continue,
            Some(Some(st)) => return Ok(st.exit_code.unwrap_or(0)),
            Some(None) => return Err(ContainerError::NotFound(id.to_string())),
        }
    }
}

/// What a running container writes from now on, handed to `out` record by record until it
/// stops; then its exit code. A `--rm` container is removed only once this has read it.
pub fn attach_output(
    containers: &Containers,
    state: &State,
    out: &mut dyn FnMut(&super::log::Record) -> std::io::Result<()>,
) -> Result<i32, ContainerError> {
    if !state.supervisor.is_some_and(|p| p.is_alive()) {
        return Err(ContainerError::NotRunning { id: state.id.clone() });
    }
    let _watching = containers.lock_waiters(&state.id, false)?;
    let path = containers.paths(&state.id).log;
    let running = || containers.load(&state.id).is_ok_and(|s| s.supervisor.is_some_and(|p| p.is_alive()));
    super::log::read(&path, Some(0), Some(&running), out).map_err(io_err("reading", &path))?;
    wait(containers, &state.id)
}

/// The record of a container told to stop, once its supervisor is done starting it: running,
/// or let go (a supervisor waiting to restart it, or about to, sees it is stopped and lets it
/// go). `None`: it is gone. Without this, a stop that came while the supervisor started the
/// container again would find nothing to stop, and the container would run after it.
fn settled(containers: &Containers, id: &str) -> Result<Option<State>, ContainerError> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        let st = match containers.load(id) {
            Ok(st) => st,
            Err(ContainerError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let starting = st.status != Status::Running && st.supervisor.is_some_and(|p| p.is_alive());
        if !starting || Instant::now() >= deadline {
            return Ok(Some(st));
        }
        std::thread::sleep(POLL);
    }
}

/// Waits up to `timeout` for the container to have no live supervisor. `Some(None)`: it is
/// gone (removed by `--rm`); `None`: still running at the deadline.
pub fn wait_exited(
    containers: &Containers,
    id: &str,
    timeout: Duration,
) -> Result<Option<Option<State>>, ContainerError> {
    let deadline = Instant::now() + timeout;
    loop {
        let st = match containers.load(id) {
            Ok(st) => st,
            Err(ContainerError::NotFound(_)) => return Ok(Some(None)),
            Err(e) => return Err(e),
        };
        match st.supervisor {
            None => return Ok(Some(Some(st))),
            Some(p) if !p.is_alive() => {
                reap(containers)?;
                return Ok(Some(containers.load(id).ok()));
            }
            Some(_) if Instant::now() >= deadline => return Ok(None),
            Some(_) => std::thread::sleep(POLL),
        }
    }
}

/// Removes a container; a running one only with `force` (it is killed first).
pub fn remove(containers: &Containers, state: &State, force: bool) -> Result<(), ContainerError> {
    let supervised = state.supervisor.is_some_and(|p| p.is_alive());
    if supervised {
        if !force {
            return Err(ContainerError::Running { id: state.id.clone() });
        }
        containers.update(&state.id, |st| st.manually_stopped = true)?;
        let now = settled(containers, &state.id)?;
        if let Some(init) = now.and_then(|st| st.init).filter(|p| p.is_alive()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(init.pid), Signal::SIGKILL);
        }
        // Paused, it dies only once let go on.
        thaw(state)?;
        if wait_exited(containers, &state.id, KILL_GRACE)?.is_none() {
            return Err(ContainerError::StopTimeout { id: state.id.clone(), seconds: KILL_GRACE.as_secs() });
        }
    }
    let _lock = containers.lock()?;
    remove_dir(containers, &state.id)
}

/// Removes the container's files (for `--rm` once it exited).
pub(super) fn remove_files(containers: &Containers, id: &str) -> Result<(), ContainerError> {
    let _lock = containers.lock()?;
    remove_dir(containers, id)
}

/// Removes the directory of `id` once nothing is mounted in it (the caller holds the lock).
fn remove_dir(containers: &Containers, id: &str) -> Result<(), ContainerError> {
    let dir = containers.paths(id).dir;
    unmount_all(id, &dir)?;
    if let Some(left) = crate::mountinfo::under(&dir).first() {
        return Err(ContainerError::Unmount {
            id: id.to_string(),
            path: left.clone(),
            source: nix::errno::Errno::EBUSY,
        });
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("removing", &dir)(e)),
        _ => Ok(()),
    }
}

/// Detaches every mount under `dir`, deepest first.
fn unmount_all(id: &str, dir: &Path) -> Result<(), ContainerError> {
    for path in crate::mountinfo::under(dir) {
        nix::mount::umount2(&path, MntFlags::MNT_DETACH).map_err(|source| ContainerError::Unmount {
            id: id.to_string(),
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}
