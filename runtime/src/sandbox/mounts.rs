//! mount(2) on descriptors: every mount the launcher makes targets an `O_PATH` descriptor
//! opened inside the rootfs (see [`super::paths`]), through its `/proc/self/fd/N` name.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::statvfs::FsFlags;

use super::paths::{self, fd_path, Kind, PathError};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mounting {fstype} {source_path} on {target}: {source}")]
    Mount { fstype: &'static str, source_path: PathBuf, target: PathBuf, source: Errno },
    #[error("remounting {target} read-only: {source}")]
    ReadOnly { target: PathBuf, source: Errno },
    #[error(transparent)]
    Path(#[from] PathError),
}

/// One mount into the rootfs: `source` of type `fstype` onto the container path `target`.
pub struct MountSpec<'a> {
    pub source: &'a Path,
    /// The container path, created (as `kind`) when missing.
    pub target: &'a Path,
    pub kind: Kind,
    /// `"bind"` for a bind mount.
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'a str>,
}

/// Makes the mount and returns a descriptor of the new mount's root.
pub fn mount_in_root(root: BorrowedFd<'_>, m: &MountSpec<'_>) -> Result<OwnedFd, MountError> {
    let target = paths::ensure_in_root(root, m.target, m.kind)?;
    let (fstype, flags) =
        if m.fstype == "bind" { (None, m.flags | MsFlags::MS_BIND) } else { (Some(m.fstype), m.flags) };
    nix::mount::mount(Some(m.source), &fd_path(&target), fstype, flags, m.data).map_err(|source| {
        MountError::Mount {
            fstype: m.fstype,
            source_path: m.source.to_path_buf(),
            target: m.target.to_path_buf(),
            source,
        }
    })?;
    drop(target);
    Ok(paths::open_in_root(root, m.target, OFlag::O_PATH)?)
}

/// Binds the volume's host path onto its container path (read-only when it says so); a
/// descriptor of the new mount's root.
pub fn mount_volume(root: BorrowedFd<'_>, volume: &super::Volume) -> Result<OwnedFd, MountError> {
    let kind = if volume.host.is_dir() { Kind::Dir } else { Kind::File };
    let spec = MountSpec {
        source: &volume.host,
        target: &volume.container,
        kind,
        fstype: "bind",
        flags: MsFlags::MS_REC,
        data: None,
    };
    let mounted = mount_in_root(root, &spec)?;
    if volume.read_only {
        remount_read_only(&mounted, &volume.container)?;
    }
    Ok(mounted)
}

/// Remounts the mount whose root `fd` is read-only, keeping its other flags.
pub fn remount_read_only(fd: &OwnedFd, target: &Path) -> Result<(), MountError> {
    let err = |source| MountError::ReadOnly { target: target.to_path_buf(), source };
    let flags = nix::sys::statvfs::fstatvfs(fd).map_err(err)?.flags();
    let mut ms = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (st, m) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if flags.contains(st) {
            ms |= m;
        }
    }
    nix::mount::mount(None::<&str>, &fd_path(fd), None::<&str>, ms, None::<&str>).map_err(err)
}

/// Splits mount(8)-style options into flags and the data string the filesystem parses.
pub fn parse_options(options: &str) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "suid" => flags &= !MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "dev" => flags &= !MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "exec" => flags &= !MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = parse_options("rw,noexec,nosuid,size=64m,mode=1777");
        assert_eq!(flags, MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID);
        assert_eq!(data, "size=64m,mode=1777");
    }
}
