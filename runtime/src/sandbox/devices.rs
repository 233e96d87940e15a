//! The container's `/dev`: a fresh tmpfs with docker's device nodes (null, zero, full, random,
//! urandom, tty), a private devpts instance with `ptmx` pointing into it, `/dev/shm`,
//! `/dev/mqueue`, and the `fd`/`stdin`/`stdout`/`stderr` symlinks.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::stat::{makedev, mknodat, Mode, SFlag};

use super::mounts::{mount_in_root, MountError, MountSpec};
use super::paths::{self, Kind, PathError};
use super::spec::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--device {path}: {source}")]
    Stat { path: PathBuf, source: Errno },
    #[error("--device {path}: not a character or block device")]
    NotADevice { path: PathBuf },
    #[error("--device: making {path} in the container: {source}")]
    Make { path: PathBuf, source: Errno },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("creating /dev/{name}: {source}")]
    Node { name: &'static str, source: Errno },
    #[error("creating the symlink /dev/{name}: {source}")]
    Symlink { name: &'static str, source: Errno },
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// Character devices every container gets: name, major, minor (all mode 0666).
const DEVICES: [(&str, u64, u64); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

const SYMLINKS: [(&str, &str); 6] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
    ("ptmx", "pts/ptmx"),
];

/// Makes `/dev`. In a user namespace, where mknod is not allowed, the host's device nodes
/// are bind-mounted instead (as rootless runtimes do).
/// docker's size of `/dev/shm` when `--shm-size` does not say.
const SHM_SIZE: u64 = 64 << 20;

pub fn setup(root: BorrowedFd<'_>, user_namespace: bool, shm_size: Option<u64>) -> Result<(), DeviceError> {
    let nosuid_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let dev = mount_in_root(
        root,
        &MountSpec {
            source: Path::new("tmpfs"),
            target: Path::new("/dev"),
            kind: Kind::Dir,
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            data: Some("mode=755,size=65536k"),
        },
    )?;
    for (name, major, minor) in DEVICES {
        if user_namespace {
            let host = Path::new("/dev").join(name);
            let spec = MountSpec {
                source: &host,
                target: &host,
                kind: Kind::File,
                fstype: "bind",
                flags: MsFlags::empty(),
                data: None,
            };
            mount_in_root(root, &spec)?;
        } else {
            make_node(&dev, name, major, minor)?;
        }
    }
    for (name, target) in SYMLINKS {
        nix::unistd::symlinkat(target, &dev, name).map_err(|source| DeviceError::Symlink { name, source })?;
    }
    let shm = format!("mode=1777,size={}", shm_size.unwrap_or(SHM_SIZE));
    let mounts = [
        ("devpts", "/dev/pts", "devpts", nosuid_noexec, "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ("shm", "/dev/shm", "tmpfs", nosuid_noexec | MsFlags::MS_NODEV, shm.as_str()),
        ("mqueue", "/dev/mqueue", "mqueue", nosuid_noexec | MsFlags::MS_NODEV, ""),
    ];
    for (source, target, fstype, flags, data) in mounts {
        mount_in_root(
            root,
            &MountSpec {
                source: Path::new(source),
                target: Path::new(target),
                kind: Kind::Dir,
                fstype,
                flags,
                data: Some(data).filter(|d| !d.is_empty()),
            },
        )?;
    }
    Ok(())
}

fn make_node(dev: &OwnedFd, name: &'static str, major: u64, minor: u64) -> Result<(), DeviceError> {
    let err = |source| DeviceError::Node { name, source };
    let mode = Mode::from_bits_truncate(0o666);
    mknodat(dev, name, SFlag::S_IFCHR, mode, makedev(major, minor)).map_err(err)?;
    // mknod honours the umask; the node must be 0666 whatever it is.
    nix::sys::stat::fchmodat(dev, name, mode, nix::sys::stat::FchmodatFlags::FollowSymlink).map_err(err)?;
    Ok(())
}

/// A host device node: block or character, its number and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub kind: SFlag,
    pub rdev: u64,
    pub mode: Mode,
}

impl Node {
    /// The node at `path` on the host (a symlink followed, as /dev/disk/by-id/… are).
    pub fn of(path: &Path) -> Result<Node, DeviceError> {
        let st =
            nix::sys::stat::stat(path).map_err(|source| DeviceError::Stat { path: path.into(), source })?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFCHR && kind != SFlag::S_IFBLK {
            return Err(DeviceError::NotADevice { path: path.into() });
        }
        Ok(Node { kind, rdev: st.st_rdev, mode: Mode::from_bits_truncate(st.st_mode & 0o7777) })
    }

    /// The cgroup v1 rule that lets the container use it as `permissions` allow: `c 10:229 rwm`.
    pub fn rule(&self, permissions: &str) -> String {
        let kind = if self.kind == SFlag::S_IFBLK { 'b' } else { 'c' };
        let (major, minor) = (nix::sys::stat::major(self.rdev), nix::sys::stat::minor(self.rdev));
        format!("{kind} {major}:{minor} {permissions}")
    }
}

/// Makes each `--device` node in the container (with the host's mode), or in a user
/// namespace, where mknod is not allowed, bind-mounts the host's node there.
pub fn add(root: BorrowedFd<'_>, devices: &[Device], user_namespace: bool) -> Result<(), DeviceError> {
    for device in devices {
        let node = Node::of(&device.host)?;
        if user_namespace {
            let spec = MountSpec {
                source: &device.host,
                target: &device.container,
                kind: Kind::File,
                fstype: "bind",
                flags: MsFlags::empty(),
                data: None,
            };
            mount_in_root(root, &spec)?;
            continue;
        }
        let make = |source| DeviceError::Make { path: device.container.clone(), source };
        let parent = device.container.parent().unwrap_or(Path::new("/"));
        let name = device.container.file_name().ok_or_else(|| make(Errno::EINVAL))?;
        let dir = paths::ensure_in_root(root, parent, Kind::Dir)?;
        match nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(source) => return Err(make(source)),
        }
        mknodat(&dir, name, node.kind, node.mode, node.rdev).map_err(make)?;
        nix::sys::stat::fchmodat(dir.as_fd(), name, node.mode, nix::sys::stat::FchmodatFlags::FollowSymlink)
            .map_err(make)?;
    }
    Ok(())
}
