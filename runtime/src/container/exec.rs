//! `exec`: a command in a running container, attached to this process's stdio (through a pty
//! with `-t`), with the container's environment, user and working directory unless overridden.

use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::unistd::Pid;

use super::attach::{self, Wiring};
use super::state::{State, Status};
use super::{config, ContainerError};
use crate::sandbox::{self, ExitStatus, Stdio};

/// `skiff exec`'s flags.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub args: Vec<String>,
    /// `-e KEY=VALUE`, over the container's environment.
    pub env: Vec<String>,
    pub workdir: Option<PathBuf>,
    pub user: Option<String>,
    pub interactive: bool,
    pub tty: bool,
    pub privileged: bool,
}

/// Runs the request in the container and returns how the command ended.
pub fn exec(state: &State, request: &ExecRequest) -> Result<ExitStatus, ContainerError> {
    let id = state.id.clone();
    let init = state
        .init
        .filter(|p| state.status == Status::Running && p.is_alive())
        .ok_or_else(|| ContainerError::NotRunning { id: id.clone() })?;
    if crate::sandbox::is_paused(&id) {
        return Err(ContainerError::Paused { id });
    }
    let mut spec = state.spec.clone();
    spec.args = request.args.clone();
    let host_env = |key: &str| std::env::var(key).ok();
    let given = config::given_env(&request.env, &host_env)
        .map_err(|source| ContainerError::Config { id: id.clone(), source })?;
    for entry in given {
        config::set_env(&mut spec.env, entry);
    }
    if let Some(cwd) = &request.workdir {
        spec.cwd = cwd.clone();
    }
    if request.user.is_some() {
        spec.user = request.user.clone();
    }
    spec.tty = request.tty;
    spec.capabilities.privileged |= request.privileged;
    let sandbox_err = |source| ContainerError::Sandbox { id: id.clone(), source: Box::new(source) };
    let (stdio, wired) = if request.tty {
        let wiring = Wiring { attached: true, tty: true, interactive: request.interactive };
        let (stdio, wired) = attach::wire(wiring, None).map_err(|source| ContainerError::Io {
            step: "wiring stdio of",
            path: PathBuf::from(&id),
            source,
        })?;
        (stdio, Some(wired))
    } else {
        // The exec'd command writes straight to this process's stdout and stderr.
        let stdin = if request.interactive {
            std::io::stdin().as_fd().try_clone_to_owned()
        } else {
            std::fs::File::open("/dev/null").map(Into::into)
        };
        let stdin = stdin.map_err(|source| ContainerError::Io {
            step: "opening stdin for",
            path: PathBuf::from(&id),
            source,
        })?;
        (Stdio { stdin: Some(stdin), stdout: None, stderr: None }, None)
    };
    let forwarder = sandbox::Forwarder::install().map_err(sandbox_err)?;
    let started = sandbox::exec(&spec, Pid::from_raw(init.pid), stdio);
    let status = started.and_then(|mut process| sandbox::wait_forwarding(&mut process, forwarder));
    if let Some(wired) = wired {
        wired.finish();
    }
    status.map_err(sandbox_err)
}
