//! Path resolution inside a container's rootfs. Every file the launcher reads, creates or mounts
//! onto is reached through `openat2(RESOLVE_IN_ROOT)` from a descriptor of the rootfs, so an
//! image's symlink — even an absolute one such as `/etc/resolv.conf -> /run/…` — resolves
//! against the rootfs and can never lead the launcher to a host file. Mounts then target the
//! opened descriptor through `/proc/self/fd/N`, so no path is resolved twice.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};

/// Symlinks followed while creating one path before giving up (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

/// What [`ensure_in_root`] creates when the path is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("opening {path} inside the rootfs: {source}")]
    Open { path: PathBuf, source: Errno },
    #[error("creating {path} inside the rootfs: {source}")]
    Create { path: PathBuf, source: Errno },
    #[error("resolving {path} inside the rootfs: more than {MAX_SYMLINKS} symlinks")]
    TooManySymlinks { path: PathBuf },
}

/// Opens `path` (absolute or relative, both taken from the rootfs's top) with `flags`,
/// resolving every symlink and `..` as if `root` were `/`.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: OFlag) -> Result<OwnedFd, PathError> {
    let rel = relative(path);
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    loop {
        match openat2(root, &rel, how) {
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            Err(source) => return Err(PathError::Open { path: path.to_path_buf(), source }),
            Ok(fd) => return Ok(fd),
        }
    }
}

/// Opens `path` inside the rootfs as an `O_PATH` descriptor, creating it (and its parents, as
/// directories) when missing. A dangling symlink is followed inside the rootfs and its target
/// created there.
pub fn ensure_in_root(root: BorrowedFd<'_>, path: &Path, kind: Kind) -> Result<OwnedFd, PathError> {
    let mut path = normalize(path);
    for _ in 0..MAX_SYMLINKS {
        match open_in_root(root, &path, OFlag::O_PATH) {
            Ok(fd) => return Ok(fd),
            Err(PathError::Open { source: Errno::ENOENT, .. }) => {}
            Err(e) => return Err(e),
        }
        // `/` always exists, so a missing path has a parent and a name.
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(PathError::Open { path, source: Errno::ENOENT });
        };
        let parent = parent.to_path_buf();
        let name = name.to_os_string();
        let dir = ensure_in_root(root, &parent, Kind::Dir)?;
        match readlinkat(&dir, name.as_os_str()) {
            Ok(target) => {
                let target = Path::new(&target);
                path =
                    normalize(&if target.is_absolute() { target.to_path_buf() } else { parent.join(target) });
            }
            Err(Errno::ENOENT) => create_at(&dir, &name, kind)
                .map_err(|source| PathError::Create { path: path.clone(), source })?,
            // Not a symlink: it appeared since the open; open it again.
            Err(_) => {}
        }
    }
    Err(PathError::TooManySymlinks { path })
}

/// The `/proc/self/fd/N` path that names `fd`: a mount onto it lands on exactly that file.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn create_at(dir: &OwnedFd, name: &std::ffi::OsStr, kind: Kind) -> Result<(), Errno> {
    let result = match kind {
        Kind::Dir => mkdirat(dir, name, Mode::from_bits_truncate(0o755)),
        Kind::File => nix::fcntl::openat(
            dir,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop),
    };
    match result {
        Err(Errno::EEXIST) => Ok(()),
        other => other,
    }
}

/// `path` made absolute and lexically clean: no `.`, `..` clamped at `/`.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn relative(path: &Path) -> PathBuf {
    let rel = normalize(path);
    let rel = rel.strip_prefix("/").unwrap_or(&rel);
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn normalize_clamps_parent_dirs_at_root() {
        assert_eq!(normalize(Path::new("../../etc/./passwd")), Path::new("/etc/passwd"));
        assert_eq!(normalize(Path::new("/")), Path::new("/"));
    }

    #[test]
    fn absolute_symlink_is_created_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let escape = outside.path().join("escaped/resolv.conf");
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(&escape, root.path().join("etc/resolv.conf")).unwrap();
        let root_fd =
            nix::fcntl::open(root.path(), OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        ensure_in_root(root_fd.as_fd(), Path::new("/etc/resolv.conf"), Kind::File).unwrap();
        assert!(!escape.exists(), "a rootfs symlink made the launcher write to the host");
        let inside = root.path().join(escape.strip_prefix("/").unwrap());
        assert!(inside.is_file(), "{} should have been created inside the rootfs", inside.display());
    }
}
