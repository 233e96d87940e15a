//! The sandbox launcher: runs a command in a container whose rootfs is a directory (later the
//! FUSE mount). It owns namespaces, the mount tree and `pivot_root`, `/dev`, capabilities,
//! seccomp, cgroups (v1 and v2), rlimits, the image's users, and the container's processes.
//!
//! ```no_run
//! use skiff::sandbox::{run, ContainerSpec, Stdio};
//! let mut spec = ContainerSpec::new("abc123", "/tmp/rootfs", "/tmp/state", vec!["sh".into()]);
//! spec.resources.memory = Some(64 << 20);
//! let status = run(&spec, Stdio::inherit())?;
//! std::process::exit(status.code());
//! # Ok::<(), skiff::sandbox::Error>(())
//! ```
//!
//! The supervisor must run as root. Its process gets no new state beyond the container's
//! children, except that [`run`] routes SIGINT/SIGTERM/SIGHUP/SIGQUIT to the container.

mod capabilities;
mod cgroups;
mod devices;
mod etc;
mod exec;
mod init;
mod masks;
pub(crate) mod mounts;
mod namespaces;
pub(crate) mod paths;
mod process;
pub mod pty;
mod rlimits;
mod rootfs;
mod seccomp;
mod signals;
mod spec;
mod user;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

pub use capabilities::{parse as parse_capability, CapabilityError, DOCKER_DEFAULT};
pub use cgroups::{attach_device_filter, CgroupError, DeviceRule, Frozen, Usage};
pub use devices::{DeviceError, Node as DeviceNode};
pub use etc::EtcError;
pub use exec::exec;
pub use init::NulError;
pub use masks::{MASKED, READ_ONLY};
pub use namespaces::NamespaceError;
pub use nix::errno::Errno;
pub use nix::sys::signal::Signal;
pub use paths::{Kind as MountPointKind, PathError};
pub use process::Container;
pub use pty::PtyError;
pub use rootfs::MOUNT_POINTS;
pub use seccomp::SeccompError;
pub use signals::{wait_forwarding, Forwarder, FORWARDED};
pub use spec::{
    is_namespaced_sysctl, is_volume_name, CapabilityOptions, ContainerSpec, Device, Dns, ExtraHost,
    HostNamespaces, Network, Resources, Rlimit, RlimitResource, SpecError, TmpfsMount, Volume, DEFAULT_PATH,
};
pub use user::{ExecUser, UserError};

/// How a container's PID 1 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(Signal),
}

impl ExitStatus {
    /// The exit code docker reports: the code, or 128+N when killed by signal N.
    pub fn code(&self) -> i32 {
        match self {
            ExitStatus::Exited(code) => *code,
            ExitStatus::Signaled(signal) => 128 + *signal as i32,
        }
    }
}

/// The container's standard streams; `None` inherits the supervisor's.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl Stdio {
    pub fn inherit() -> Stdio {
        Stdio::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {id}: no command given")]
    NoCommand { id: String },
    #[error("container {id}: a tty was asked for but its stdin is not a terminal")]
    NotATerminal { id: String },
    #[error(transparent)]
    Pty(#[from] PtyError),
    #[error("container {id}: joining the namespaces of pid {pid}: {source}")]
    Join { id: String, pid: i32, source: NamespaceError },
    #[error("opening the rootfs {path}: {source}")]
    Rootfs { path: PathBuf, source: Errno },
    #[error("container {id}: {source}")]
    User { id: String, source: UserError },
    #[error(transparent)]
    Capability(#[from] CapabilityError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Etc(#[from] EtcError),
    #[error(transparent)]
    Nul(#[from] NulError),
    #[error("{step}: {source}")]
    Syscall { step: &'static str, source: Errno },
    #[error("talking to the container's processes: {source}")]
    Pipe { source: std::io::Error },
    #[error("writing the user namespace's {path}: {source}")]
    IdMap { path: String, source: std::io::Error },
    #[error("installing the {signal} handler: {source}")]
    SignalHandler { signal: Signal, source: std::io::Error },
    /// The container's init failed before exec; `message` is its own error, formatted inside
    /// the container (where the typed error lives) and sent over a pipe.
    #[error("container {id}: setting up: {message}")]
    Setup { id: String, message: String },
    /// The command could not be exec'd (docker exits 127 for ENOENT, 126 otherwise).
    #[error("exec {program}: {source}")]
    Exec { program: String, source: Errno },
}

/// The `CapEff` bitmask (as `/proc/PID/status` prints it) a root process gets under `options`.
pub fn capability_mask(options: &CapabilityOptions) -> Result<u64, CapabilityError> {
    capabilities::resolve(options).map(|set| capabilities::mask(&set))
}

/// Starts the container and returns once its command runs. Dropping the [`Container`] kills it.
///
/// The container's processes die with the thread that called `spawn` (`PR_SET_PDEATHSIG`), so
/// a supervisor killed any way leaves no container behind.
pub fn spawn(spec: &ContainerSpec, stdio: Stdio) -> Result<Container, Error> {
    if spec.args.is_empty() {
        return Err(Error::NoCommand { id: spec.id.clone() });
    }
    let console = match (&stdio.stdin, spec.tty) {
        (_, false) => None,
        (Some(stdin), true) if pty::is_terminal(stdin.as_fd()) => Some(pty::slave_path(stdin.as_fd())?),
        (_, true) => return Err(Error::NotATerminal { id: spec.id.clone() }),
    };
    let root =
        nix::fcntl::open(&spec.rootfs, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|source| Error::Rootfs { path: spec.rootfs.clone(), source })?;
    let user = user::resolve(root.as_fd(), spec.user.as_deref(), &spec.group_add)
        .map_err(|source| Error::User { id: spec.id.clone(), source })?;
    drop(root);
    let caps = capabilities::resolve(&spec.capabilities)?;
    let confined = spec.seccomp && !spec.capabilities.privileged;
    let seccomp = if confined { Some(seccomp::default_filters(&caps)?) } else { None };
    let command = init::command_line(spec, &user)?;
    let etc = etc::write(spec, spec.user_namespace.as_ref())?;
    let layout = cgroups::Layout::detect()?;
    let device_rules = spec
        .devices
        .iter()
        .map(|d| devices::Node::of(&d.host).map(|node| node.rule(&d.permissions)))
        .collect::<Result<Vec<_>, _>>()?;
    let limits = cgroups::Limits {
        resources: spec.resources.clone(),
        devices: (!spec.capabilities.privileged).then(|| cgroups::allowed_devices(device_rules)),
    };
    let cgroup = cgroups::Cgroup::create(&layout, &spec.id, &limits)?;
    let plan = init::InitPlan {
        spec: spec.clone(),
        user,
        capabilities: caps,
        seccomp,
        cgroups: layout,
        command,
        mode: init::InitMode::Create { etc, console },
    };
    process::start(&plan, cgroup, stdio)
}

/// Pauses the processes of running container `id` until the guard is dropped (or for good,
/// with [`Frozen::keep`]); `None` when its cgroup has no freezer.
pub fn freeze(id: &str) -> Result<Option<cgroups::Frozen>, CgroupError> {
    cgroups::Cgroup::of_container(id, false)?.freeze()
}

/// Lets the processes of paused container `id` go on; whether it was paused.
pub fn thaw(id: &str) -> Result<bool, CgroupError> {
    cgroups::Cgroup::of_container(id, false)?.thaw()
}

/// The host pids of container `id`'s processes (its PID 1, their children, and `exec`s).
pub fn processes(id: &str) -> Result<Vec<i32>, CgroupError> {
    cgroups::Cgroup::of_container(id, false)?.processes()
}

/// Sets the limits of running container `id`'s cgroup to `resources`.
pub fn set_resources(id: &str, resources: &Resources) -> Result<(), CgroupError> {
    cgroups::Cgroup::of_container(id, false)?.set_resources(resources)
}

/// The host's cgroup version: 1 or 2.
pub fn cgroup_version() -> Result<u8, CgroupError> {
    Ok(match cgroups::Layout::detect()? {
        cgroups::Layout::V1(_) => 1,
        cgroups::Layout::V2 => 2,
    })
}

/// What container `id`'s processes use now.
pub fn usage(id: &str) -> Result<Usage, CgroupError> {
    cgroups::Cgroup::of_container(id, false)?.usage()
}

/// Bytes received and sent by the network namespace of process `pid`, loopback left out;
/// `None` when it is the host's (`--network host`: its traffic is not the container's).
pub fn network_bytes(pid: i32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let ns = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let own = ns(&format!("/proc/{pid}/ns/net"))?;
    if Some(own) == ns("/proc/self/ns/net") {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let mut total = (0, 0);
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else { continue };
        if name.trim() == "lo" {
            continue;
        }
        let counters: Vec<u64> = counters.split_whitespace().filter_map(|c| c.parse().ok()).collect();
        total.0 += counters.first().copied().unwrap_or(0);
        total.1 += counters.get(8).copied().unwrap_or(0);
    }
    Some(total)
}

/// Whether container `id` is paused.
pub fn is_paused(id: &str) -> bool {
    cgroups::Cgroup::of_container(id, false).is_ok_and(|c| c.is_frozen())
}

/// Removes what is left of the cgroup of container `id` (after its supervisor died), killing
/// any process still in it.
pub fn remove_cgroup(id: &str) -> Result<(), CgroupError> {
    cgroups::Cgroup::of_container(id, true)?.remove()
}

/// Runs the container to completion, forwarding SIGINT/SIGTERM/SIGHUP/SIGQUIT to its PID 1,
/// and returns how it ended; [`ExitStatus::code`] is the code docker would exit with.
pub fn run(spec: &ContainerSpec, stdio: Stdio) -> Result<ExitStatus, Error> {
    // Before the spawn, so a signal that comes while the container starts is not lost.
    let forwarder = signals::Forwarder::install()?;
    let mut container = spawn(spec, stdio)?;
    signals::wait_forwarding(&mut container, forwarder)
}

/// The user `spec` (`USER[:GROUP]`, names or numbers) names in the tree at `root`.
pub fn resolve_user(root: std::os::fd::BorrowedFd<'_>, spec: &str) -> Result<ExecUser, UserError> {
    user::resolve(root, Some(spec), &[])
}
