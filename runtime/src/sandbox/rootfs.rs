//! The container's mount namespace: the rootfs bound onto itself, `/proc`, `/dev`, `/sys` (with
//! the cgroup filesystems), the generated `/etc` files, `--tmpfs` and `-v` mounts, docker's
//! masks, then `pivot_root` with the old root detached, and `--read-only`.
//!
//! Runs in the container's init, in its fresh mount namespace. Everything before the pivot is
//! reached through a descriptor of the rootfs (see [`super::paths`]).

use std::io::Write as _;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::cgroups::Layout;
use super::devices::{self, DeviceError};
use super::etc::EtcFiles;
use super::masks;
use super::mounts::{self, mount_in_root, MountError, MountSpec};
use super::paths::{self, Kind, PathError};
use super::spec::{TmpfsMount, Volume};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{step} {path}: {source}")]
    Syscall { step: &'static str, path: PathBuf, source: Errno },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("setting the kernel parameter {key} to {value:?}: {source}")]
    Sysctl { key: String, value: String, source: std::io::Error },
}

/// The mount points [`setup`] needs in every container besides those of its volumes,
/// `--tmpfs` mounts and working directory. Docker keeps these in an "init layer" above the
/// image, and skiff's rootfs providers do too, so that they show in no diff and go into no
/// commit; the others are made in the container's own layer, as docker makes them.
pub const MOUNT_POINTS: [(&str, Kind); 6] = [
    ("/proc", Kind::Dir),
    ("/dev", Kind::Dir),
    ("/sys", Kind::Dir),
    ("/etc/hostname", Kind::File),
    ("/etc/hosts", Kind::File),
    ("/etc/resolv.conf", Kind::File),
];

/// What the mount namespace is built from.
pub struct RootfsPlan<'a> {
    pub rootfs: &'a Path,
    pub etc: &'a EtcFiles,
    /// The pty slave to bind on `/dev/console` (with `-t`).
    pub console: Option<&'a Path>,
    pub volumes: &'a [Volume],
    pub tmpfs: &'a [TmpfsMount],
    pub cgroups: &'a Layout,
    /// Skip docker's masked and read-only paths.
    pub privileged: bool,
    pub read_only: bool,
    /// Created when missing, as docker creates `-w`.
    pub cwd: &'a Path,
    /// The container has a user namespace of its own: no mknod, no cgroup v1 mounts.
    pub user_namespace: bool,
    /// It shares the host's network namespace.
    pub host_network: bool,
    /// `/dev/shm`'s size (docker's default when `None`).
    pub shm_size: Option<u64>,
    /// `--device` nodes to make.
    pub devices: &'a [super::spec::Device],
    /// `--sysctl`s, checked to be of the container's namespaces.
    pub sysctls: &'a std::collections::BTreeMap<String, String>,
}

/// Builds the container's filesystem view and pivots into it; on return `/` is the rootfs.
pub fn setup(plan: &RootfsPlan<'_>) -> Result<(), RootfsError> {
    let sys = |step, path: &Path| {
        let path = path.to_path_buf();
        move |source| RootfsError::Syscall { step, path, source }
    };
    // Nothing mounted from here on may propagate back to the host.
    nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(sys("making rslave", Path::new("/")))?;
    nix::mount::mount(
        Some(plan.rootfs),
        plan.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("bind-mounting the rootfs onto itself", plan.rootfs))?;
    let root =
        nix::fcntl::open(plan.rootfs, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(sys("opening", plan.rootfs))?;
    let r = root.as_fd();

    let no_exec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_mount = MountSpec {
        source: Path::new("proc"),
        target: Path::new("/proc"),
        kind: Kind::Dir,
        fstype: "proc",
        flags: no_exec,
        data: None,
    };
    mount_in_root(r, &proc_mount)?;
    devices::setup(r, plan.user_namespace, plan.shm_size)?;
    devices::add(r, plan.devices, plan.user_namespace)?;
    if let Some(console) = plan.console {
        let spec = MountSpec {
            source: console,
            target: Path::new("/dev/console"),
            kind: Kind::File,
            fstype: "bind",
            flags: MsFlags::empty(),
            data: None,
        };
        mount_in_root(r, &spec)?;
    }
    let sys_mount = MountSpec {
        source: Path::new("sysfs"),
        target: Path::new("/sys"),
        kind: Kind::Dir,
        fstype: "sysfs",
        flags: no_exec | MsFlags::MS_RDONLY,
        data: None,
    };
    if plan.user_namespace && plan.host_network {
        // sysfs may only be mounted by the owner of the network namespace: the host's is
        // bound instead, read-only.
        let host_sys =
            MountSpec { source: Path::new("/sys"), fstype: "bind", flags: MsFlags::MS_REC, ..sys_mount };
        let mounted = mount_in_root(r, &host_sys)?;
        mounts::remount_read_only(&mounted, Path::new("/sys"))?;
    } else {
        mount_in_root(r, &sys_mount)?;
    }
    mount_cgroups(&root, plan.cgroups)?;

    for (target, source) in plan.etc.mounts() {
        let target = Path::new(target);
        mount_in_root(
            r,
            &MountSpec {
                source,
                target,
                kind: Kind::File,
                fstype: "bind",
                flags: MsFlags::empty(),
                data: None,
            },
        )?;
    }
    for tmpfs in plan.tmpfs {
        let (flags, data) = mounts::parse_options(&tmpfs.options);
        let data = Some(data.as_str()).filter(|d| !d.is_empty());
        let spec = MountSpec {
            source: Path::new("tmpfs"),
            target: &tmpfs.path,
            kind: Kind::Dir,
            fstype: "tmpfs",
            flags,
            data,
        };
        mount_in_root(r, &spec)?;
    }
    for volume in plan.volumes {
        mounts::mount_volume(r, volume)?;
    }
    // Before /proc/sys turns read-only; the container's namespaces are this process's.
    for (key, value) in plan.sysctls {
        set_sysctl(r, key, value)?;
    }
    if !plan.privileged {
        masks::apply(r)?;
    }
    paths::ensure_in_root(r, plan.cwd, Kind::Dir)?;
    pivot(&root, plan.rootfs)?;
    if plan.read_only {
        let new_root =
            nix::fcntl::open("/", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(sys("opening", Path::new("/")))?;
        mounts::remount_read_only(&new_root, Path::new("/"))?;
    }
    Ok(())
}

/// Writes `value` to `key`'s file under the container's `/proc/sys`.
fn set_sysctl(root: BorrowedFd<'_>, key: &str, value: &str) -> Result<(), RootfsError> {
    let err = |source| RootfsError::Sysctl { key: key.to_string(), value: value.to_string(), source };
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    let fd = paths::open_in_root(root, &path, OFlag::O_WRONLY)
        .map_err(|e| err(std::io::Error::other(e.to_string())))?;
    std::fs::File::from(fd).write_all(value.as_bytes()).map_err(err)
}

/// `/sys/fs/cgroup` as the container sees it (read-only, rooted at its own cgroup through the
/// cgroup namespace): cgroup2 on v2; a tmpfs holding each v1 hierarchy on v1.
fn mount_cgroups(root: &OwnedFd, layout: &Layout) -> Result<(), RootfsError> {
    let r = root.as_fd();
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    let target = Path::new("/sys/fs/cgroup");
    match layout {
        Layout::V2 => {
            let spec = MountSpec {
                source: Path::new("cgroup2"),
                target,
                kind: Kind::Dir,
                fstype: "cgroup2",
                flags,
                data: None,
            };
            mount_in_root(r, &spec)?;
        }
        Layout::V1(hierarchies) => {
            let tmpfs = MountSpec {
                source: Path::new("tmpfs"),
                target,
                kind: Kind::Dir,
                fstype: "tmpfs",
                flags: flags - MsFlags::MS_RDONLY,
                data: Some("mode=755"),
            };
            let dir = mount_in_root(r, &tmpfs)?;
            for h in hierarchies {
                let Some(name) = h.mountpoint.file_name() else { continue };
                let data = h.options.join(",");
                let spec = MountSpec {
                    source: Path::new("cgroup"),
                    target: &target.join(name),
                    kind: Kind::Dir,
                    fstype: "cgroup",
                    flags,
                    data: Some(&data),
                };
                mount_in_root(r, &spec)?;
            }
            mounts::remount_read_only(&dir, target)?;
        }
    }
    Ok(())
}

/// `pivot_root(".", ".")` as runc does: the old root ends up stacked on the new one and is
/// detached at once, so no directory for it is needed in the image.
fn pivot(root: &OwnedFd, rootfs: &Path) -> Result<(), RootfsError> {
    let sys = |step| move |source| RootfsError::Syscall { step, path: rootfs.to_path_buf(), source };
    nix::unistd::fchdir(root).map_err(sys("fchdir to"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root into"))?;
    nix::mount::mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(sys("making the old root rslave under"))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root from"))?;
    nix::unistd::chdir("/").map_err(sys("chdir to / of"))?;
    Ok(())
}
