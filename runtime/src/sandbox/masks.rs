//! Docker's masked and read-only paths: kernel interfaces under `/proc` and `/sys` that leak
//! host information or let a container reconfigure the host. Masked files get `/dev/null`
//! bound over them, masked directories an empty read-only tmpfs; read-only paths are bound
//! onto themselves and remounted read-only. Skipped with `--privileged`, as docker does.

use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;

use super::mounts::{self, MountError};
use super::paths::{self, fd_path, PathError};

/// moby `oci/defaults.go` `MaskedPaths`.
pub const MASKED: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// moby `oci/defaults.go` `ReadonlyPaths`.
pub const READ_ONLY: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

pub fn apply(root: BorrowedFd<'_>) -> Result<(), MountError> {
    for path in MASKED {
        let path = Path::new(path);
        let Some(fd) = open_existing(root, path)? else { continue };
        let is_dir = nix::sys::stat::fstat(&fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        let (source, fstype, flags) = if is_dir {
            ("tmpfs", Some("tmpfs"), MsFlags::MS_RDONLY)
        } else {
            ("/dev/null", None, MsFlags::MS_BIND)
        };
        nix::mount::mount(Some(source), &fd_path(&fd), fstype, flags, None::<&str>).map_err(|e| {
            MountError::Mount {
                fstype: fstype.unwrap_or("bind"),
                source_path: source.into(),
                target: path.to_path_buf(),
                source: e,
            }
        })?;
    }
    for path in READ_ONLY {
        let path = Path::new(path);
        let Some(fd) = open_existing(root, path)? else { continue };
        nix::mount::mount(
            Some(&fd_path(&fd)),
            &fd_path(&fd),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|source| MountError::Mount {
            fstype: "bind",
            source_path: path.to_path_buf(),
            target: path.to_path_buf(),
            source,
        })?;
        let bound = paths::open_in_root(root, path, OFlag::O_PATH)?;
        mounts::remount_read_only(&bound, path)?;
    }
    Ok(())
}

fn open_existing(root: BorrowedFd<'_>, path: &Path) -> Result<Option<std::os::fd::OwnedFd>, MountError> {
    match paths::open_in_root(root, path, OFlag::O_PATH) {
        Ok(fd) => Ok(Some(fd)),
        Err(PathError::Open { source: nix::errno::Errno::ENOENT, .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
