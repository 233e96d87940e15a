//! Anonymous volumes for the image's `VOLUME`s, made as docker and podman make them: every path
//! the image declares gets a directory of the container's own on the host, bound over that
//! path, and filled on the container's first start with what the image holds there (owners,
//! modes, times, symlinks, hard links and special files kept). A `-v` or `--tmpfs` at the same
//! path takes its place. Writes to a volume go straight to the host's filesystem, never through
//! the copy-on-write upper layer, so a database's files cost what they cost under docker; and
//! like docker's, a volume is not part of a `skiff commit`. The volumes live in the container's
//! directory and are removed with it.
//!
//! The image's tree is read through a descriptor of the mounted rootfs with every path resolved
//! inside it, and every entry is opened without following a symlink, so an image cannot make
//! the copy read a host file.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{self, FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::unpack::{list, remove_at};
use crate::sandbox::paths::{normalize, open_in_root, PathError};
use crate::sandbox::{TmpfsMount, Volume};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("image volume {container}: {source}")]
    Image { container: PathBuf, source: PathError },
    #[error("image volume {container} is not a directory in the image")]
    NotADirectory { container: PathBuf },
    #[error("filling the volume for {container}: {step} {path}: {source}")]
    Copy { container: PathBuf, step: &'static str, path: PathBuf, source: Errno },
}

/// The anonymous volumes a new container gets for the image's `declared` paths, each a
/// directory under `dir`; paths that `volumes` or `tmpfs` already mount are left to them.
pub fn anonymous(declared: &[String], volumes: &[Volume], tmpfs: &[TmpfsMount], dir: &Path) -> Vec<Volume> {
    let mut taken: Vec<PathBuf> = volumes.iter().map(|v| normalize(&v.container)).collect();
    taken.extend(tmpfs.iter().map(|t| normalize(&t.path)));
    // A relative path is taken from `/`, as docker takes it.
    let mut paths: Vec<PathBuf> = declared.iter().map(|p| normalize(Path::new(p))).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| p != Path::new("/") && !taken.contains(p))
        .enumerate()
        .map(|(n, container)| Volume { host: dir.join(n.to_string()), container, read_only: false })
        .collect()
}

/// Fills what a container's volumes need before its rootfs (mounted at `rootfs`) is used: its
/// anonymous volumes, under `dir`, and the named volumes no container has filled yet. A
/// container's first start does this, and so does a copy from or into one never started.
pub fn fill_for_container(
    volumes: &[Volume],
    dir: &Path,
    named: &super::named::NamedVolumes,
    rootfs: &Path,
) -> Result<(), VolumeError> {
    fill_missing(volumes, dir, rootfs)?;
    // A named volume's files are made, from the image, by the first container to start with it.
    for volume in volumes.iter().filter(|v| named.holds(&v.host)) {
        if let Some(dir) = volume.host.parent() {
            fill_missing(std::slice::from_ref(volume), dir, rootfs)?;
        }
    }
    Ok(())
}

/// Fills each anonymous volume (a volume whose host directory is under `dir`) that does not
/// exist yet from the image tree mounted at `rootfs`. A volume is built beside its final name
/// and renamed into place, so a start that fails halfway leaves no half-filled volume behind.
pub fn fill_missing(volumes: &[Volume], dir: &Path, rootfs: &Path) -> Result<(), VolumeError> {
    let missing: Vec<&Volume> =
        volumes.iter().filter(|v| v.host.parent() == Some(dir) && !v.host.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = nix::fcntl::open(rootfs, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(copy_err(Path::new("/"), "opening the rootfs", rootfs))?;
    std::fs::create_dir_all(dir).map_err(|e| copy_err(Path::new("/"), "creating", dir)(errno(e)))?;
    let volumes_dir = open_dir(None, dir.as_os_str()).map_err(copy_err(Path::new("/"), "opening", dir))?;
    for volume in missing {
        let container = &volume.container;
        let name = volume.host.file_name().expect("a volume under dir has a name");
        let staging = format!(".{}.new", name.to_string_lossy());
        let staging_path = dir.join(&staging);
        remove_at(volumes_dir.as_fd(), OsStr::new(&staging)).map_err(copy_err(
            container,
            "removing the leftover",
            &staging_path,
        ))?;
        match open_in_root(root.as_fd(), container, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            Ok(source) => {
                let mut copy = Copy { container, links: HashMap::new() };
                copy.dir(source.as_fd(), volumes_dir.as_fd(), OsStr::new(&staging), &staging_path)?;
            }
            Err(PathError::Open { source: Errno::ENOENT, .. }) => {
                // Owned by the rootfs's owner: root, or the root a user namespace maps.
                let top = stat::fstat(root.as_fd()).map_err(copy_err(container, "reading", rootfs))?;
                let owner = (Some(Uid::from_raw(top.st_uid)), Some(Gid::from_raw(top.st_gid)));
                stat::mkdirat(volumes_dir.as_fd(), staging.as_str(), Mode::from_bits_truncate(0o755))
                    .and_then(|()| {
                        let no_follow = AtFlags::AT_SYMLINK_NOFOLLOW;
                        nix::unistd::fchownat(
                            volumes_dir.as_fd(),
                            staging.as_str(),
                            owner.0,
                            owner.1,
                            no_follow,
                        )
                    })
                    .map_err(copy_err(container, "creating", &staging_path))?;
            }
            Err(PathError::Open { source: Errno::ENOTDIR, .. }) => {
                return Err(VolumeError::NotADirectory { container: container.clone() })
            }
            Err(source) => return Err(VolumeError::Image { container: container.clone(), source }),
        }
        nix::fcntl::renameat(volumes_dir.as_fd(), staging.as_str(), volumes_dir.as_fd(), name)
            .map_err(copy_err(container, "renaming into place", &volume.host))?;
    }
    Ok(())
}

/// One image tree being copied into a volume.
struct Copy<'a> {
    container: &'a Path,
    /// Files with more than one link already copied: (device, inode) to the first copy's
    /// host path.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Copy<'_> {
    fn err(&self, step: &'static str, path: &Path) -> impl FnOnce(Errno) -> VolumeError {
        copy_err(self.container, step, path)
    }

    /// Copies the open directory `source` to `name` in `parent` (shown as `path` in errors).
    fn dir(
        &mut self,
        source: BorrowedFd<'_>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
    ) -> Result<(), VolumeError> {
        let st = stat::fstat(source).map_err(self.err("reading", path))?;
        stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700)).map_err(self.err("creating", path))?;
        let target = open_dir(Some(parent), name).map_err(self.err("opening", path))?;
        for child in list(source).map_err(self.err("listing", path))? {
            self.entry(source, target.as_fd(), &child, &path.join(&child))?;
        }
        // Times last: making the entries changed the directory's.
        set_metadata(parent, name, &st).map_err(self.err("setting the owner, mode and times of", path))
    }

    fn entry(
        &mut self,
        source: BorrowedFd<'_>,
        target: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
    ) -> Result<(), VolumeError> {
        let st =
            stat::fstatat(source, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(self.err("reading", path))?;
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind != SFlag::S_IFDIR && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                // `first` is absolute, under the volume directory skiff made.
                return nix::unistd::linkat(target, first.as_path(), target, name, AtFlags::empty())
                    .map_err(self.err("linking", path));
            }
            self.links.insert(key, path.to_path_buf());
        }
        match kind {
            SFlag::S_IFDIR => {
                let sub = open_dir(Some(source), name).map_err(self.err("opening", path))?;
                return self.dir(sub.as_fd(), target, name, path);
            }
            SFlag::S_IFREG => self.file(source, target, name, path)?,
            SFlag::S_IFLNK => {
                let link =
                    nix::fcntl::readlinkat(source, name).map_err(self.err("reading the link", path))?;
                nix::unistd::symlinkat(link.as_os_str(), target, name).map_err(self.err("creating", path))?;
            }
            _ => {
                let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
                stat::mknodat(target, name, kind, mode, st.st_rdev).map_err(self.err("creating", path))?;
            }
        }
        set_metadata(target, name, &st).map_err(self.err("setting the owner, mode and times of", path))
    }

    fn file(
        &self,
        source: BorrowedFd<'_>,
        target: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
    ) -> Result<(), VolumeError> {
        let from = nix::fcntl::openat(
            source,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.err("opening", path))?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let to = nix::fcntl::openat(target, name, flags, Mode::from_bits_truncate(0o600))
            .map_err(self.err("creating", path))?;
        io::copy(&mut File::from(from), &mut File::from(to))
            .map_err(|e| self.err("copying", path)(errno(e)))?;
        Ok(())
    }
}

/// The error of `step` on `path` while filling the volume for `container`.
fn copy_err(container: &Path, step: &'static str, path: &Path) -> impl FnOnce(Errno) -> VolumeError {
    let (container, path) = (container.to_path_buf(), path.to_path_buf());
    move |source| VolumeError::Copy { container, step, path, source }
}

/// Owner first (a chown clears set-id bits), then the mode, then the times; a symlink's own.
fn set_metadata(dir: BorrowedFd<'_>, name: &OsStr, st: &FileStat) -> Result<(), Errno> {
    nix::unistd::fchownat(
        dir,
        name,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFLNK.bits() {
        stat::fchmodat(
            dir,
            name,
            Mode::from_bits_truncate(st.st_mode & 0o7777),
            stat::FchmodatFlags::FollowSymlink,
        )?;
    }
    let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
    let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    stat::utimensat(dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
}

/// Opens the directory `name` in `parent` (or the path `name` when `None`), never following a
/// symlink at its end.
fn open_dir(parent: Option<BorrowedFd<'_>>, name: &OsStr) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match parent {
        Some(parent) => nix::fcntl::openat(parent, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    }
}

fn errno(e: io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests;
