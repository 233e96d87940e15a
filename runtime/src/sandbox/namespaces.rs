//! The namespaces a container gets, in the one order they are created, and the setup that
//! belongs to a namespace: the hostname of the UTS namespace and `lo` of the network namespace.

use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;

use super::spec::{HostNamespaces, Network};

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("unshare({flags:?}): {source}")]
    Unshare { flags: CloneFlags, source: Errno },
    #[error("sethostname({hostname:?}): {source}")]
    Hostname { hostname: String, source: Errno },
    #[error("opening {path}: {source}")]
    Open { path: String, source: Errno },
    #[error("setns({flags:?}): {source}")]
    Setns { flags: CloneFlags, source: Errno },
    #[error("becoming root of the user namespace: {call}: {source}")]
    Root { call: &'static str, source: Errno },
    #[error("bringing up lo: {call}: {source}")]
    Loopback { call: &'static str, source: Errno },
}

/// The namespaces to create, in order. The cgroup namespace comes after the process joined
/// its cgroups, so the container sees its own cgroup as the root; the PID namespace applies to
/// the children of the unsharing process, whose first child becomes PID 1.
pub fn namespaces(network: &Network, host: HostNamespaces) -> Vec<CloneFlags> {
    let mut list = vec![CloneFlags::CLONE_NEWNS];
    if !host.uts {
        list.push(CloneFlags::CLONE_NEWUTS);
    }
    if !host.ipc {
        list.push(CloneFlags::CLONE_NEWIPC);
    }
    if *network == Network::None {
        list.push(CloneFlags::CLONE_NEWNET);
    }
    list.push(CloneFlags::CLONE_NEWCGROUP);
    if !host.pid {
        list.push(CloneFlags::CLONE_NEWPID);
    }
    list
}

/// Joins the network namespace at `path` (another container's).
pub fn join_network(path: &std::path::Path) -> Result<(), NamespaceError> {
    let open = |source| NamespaceError::Open { path: path.display().to_string(), source };
    let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(open)?;
    let flags = CloneFlags::CLONE_NEWNET;
    nix::sched::setns(fd, flags).map_err(|source| NamespaceError::Setns { flags, source })
}

/// Unshares `list` from the calling process, one namespace at a time so an error names it.
pub fn enter(list: &[CloneFlags]) -> Result<(), NamespaceError> {
    for &flags in list {
        unshare(flags).map_err(|source| NamespaceError::Unshare { flags, source })?;
    }
    Ok(())
}

/// The namespaces of a running container's process `pid`, in the order `exec` joins them:
/// the mount namespace last, as it changes the root the others' paths would resolve from.
pub fn open(pid: nix::unistd::Pid) -> Result<Vec<(CloneFlags, OwnedFd)>, NamespaceError> {
    // The user namespace first, when the container has its own: the others belong to it.
    let own_user = |path: &str| std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let separate_user = own_user(&format!("/proc/{pid}/ns/user")).ok() != own_user("/proc/self/ns/user").ok();
    let user = separate_user.then_some(("user", CloneFlags::CLONE_NEWUSER));
    let order = user.into_iter().chain([
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ]);
    order
        .map(|(name, flags)| {
            let path = format!("/proc/{pid}/ns/{name}");
            nix::fcntl::open(path.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .map(|fd| (flags, fd))
                .map_err(|source| NamespaceError::Open { path, source })
        })
        .collect()
}

/// Joins every namespace of `list` (a process's, from [`open`]); in a user namespace, as its
/// root.
pub fn join(list: &[(CloneFlags, OwnedFd)]) -> Result<(), NamespaceError> {
    for (flags, fd) in list {
        nix::sched::setns(fd, *flags).map_err(|source| NamespaceError::Setns { flags: *flags, source })?;
        if *flags == CloneFlags::CLONE_NEWUSER {
            become_root()?;
        }
    }
    Ok(())
}

/// Takes uid and gid 0 of the user namespace just entered (mapped by then), with no
/// supplementary groups: the host's would show as the overflow group inside.
pub fn become_root() -> Result<(), NamespaceError> {
    let root = |call| move |source| NamespaceError::Root { call, source };
    nix::unistd::setgroups(&[]).map_err(root("setgroups"))?;
    let gid = nix::unistd::Gid::from_raw(0);
    nix::unistd::setresgid(gid, gid, gid).map_err(root("setresgid"))?;
    let uid = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresuid(uid, uid, uid).map_err(root("setresuid"))?;
    Ok(())
}

pub fn set_hostname(hostname: &str) -> Result<(), NamespaceError> {
    nix::unistd::sethostname(hostname)
        .map_err(|source| NamespaceError::Hostname { hostname: hostname.to_string(), source })
}

/// Sets `IFF_UP` on `lo` with the `SIOCSIFFLAGS` ioctl, as `ip link set lo up` would.
#[allow(unsafe_code)]
pub fn loopback_up() -> Result<(), NamespaceError> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let err = |call| move |source| NamespaceError::Loopback { call, source };
    // SAFETY: socket(2) has no memory-safety preconditions; the result is checked below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let raw = Errno::result(raw).map_err(err("socket"))?;
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of a valid ifreq we own.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) };
    Errno::result(rc).map_err(err("ioctl(SIOCGIFFLAGS)"))?;
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS just filled.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq we own.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) };
    Errno::result(rc).map_err(err("ioctl(SIOCSIFFLAGS)"))?;
    Ok(())
}
