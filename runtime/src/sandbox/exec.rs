//! `exec`: another process in a running container. It joins the container's namespaces (ipc,
//! uts, net, cgroup, pid, mount — so its root is the container's) and its cgroup, and gets the
//! container's capabilities, seccomp filter, `no_new_privs` and rlimits, as runc's `exec` does.

use std::os::fd::AsFd;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::Pid;

use super::{capabilities, cgroups, init, namespaces, process, pty, seccomp, user};
use super::{Container, ContainerSpec, Error, Stdio};

/// Starts `spec.args` in the running container whose PID 1 has the host pid `target`.
///
/// `spec` is the container's own spec (its id names the cgroup; its capabilities, rlimits and
/// `no_new_privileges` apply) with the exec's `args`, `env`, `cwd`, `user` and `tty`. The
/// returned [`Container`] handle waits for and signals the exec'd process.
pub fn exec(spec: &ContainerSpec, target: Pid, stdio: Stdio) -> Result<Container, Error> {
    if spec.args.is_empty() {
        return Err(Error::NoCommand { id: spec.id.clone() });
    }
    if spec.tty && !stdio.stdin.as_ref().is_some_and(|fd| pty::is_terminal(fd.as_fd())) {
        return Err(Error::NotATerminal { id: spec.id.clone() });
    }
    let root_path = format!("/proc/{target}/root");
    let root = nix::fcntl::open(
        root_path.as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| Error::Rootfs { path: root_path.into(), source })?;
    let user = user::resolve(root.as_fd(), spec.user.as_deref(), &spec.group_add)
        .map_err(|source| Error::User { id: spec.id.clone(), source })?;
    drop(root);
    let namespaces = namespaces::open(target).map_err(|source| Error::Join {
        id: spec.id.clone(),
        pid: target.as_raw(),
        source,
    })?;
    let caps = capabilities::resolve(&spec.capabilities)?;
    let confined = spec.seccomp && !spec.capabilities.privileged;
    let seccomp = if confined { Some(seccomp::default_filters(&caps)?) } else { None };
    let command = init::command_line(spec, &user)?;
    let layout = cgroups::Layout::detect()?;
    let cgroup = cgroups::Cgroup::existing(&layout, &spec.id, false)?;
    let mut spec = spec.clone();
    spec.init = false;
    let plan = init::InitPlan {
        spec,
        user,
        capabilities: caps,
        seccomp,
        cgroups: layout,
        command,
        mode: init::InitMode::Join { namespaces },
    };
    process::start(&plan, cgroup, stdio)
}
