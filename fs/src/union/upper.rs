//! The upper (writable) layer: a host directory in the kernel overlayfs format. Paths are
//! relative to it and come from the union, component by component, never through a symlink.

use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::{mknod, Mode, SFlag};

pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Names of the upper's own bookkeeping, never shown to the container.
pub(crate) const PRIVATE_XATTR_PREFIX: &str = "trusted.overlay.";

/// The longest path the kernel takes (PATH_MAX less the terminating NUL).
const PATH_LIMIT: usize = libc::PATH_MAX as usize - 1;
/// How much of a path is walked per step when opening a directory deep under the upper.
const PATH_STEP: usize = 3072;

/// The host path of an upper entry, for any path-taking call. The merged tree allows paths
/// as long as the kernel allows anywhere, but the upper dir's own path comes on top: a path
/// that would pass PATH_MAX goes through an open directory near its end instead
/// (`/proc/self/fd/N/rest`), held open as long as the `HostPath` lives.
pub(crate) struct HostPath {
    path: PathBuf,
    _dir: Option<OwnedFd>,
}

impl Deref for HostPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for HostPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

pub(crate) fn host(upper: &Path, path: &str) -> HostPath {
    let joined = if path.is_empty() { upper.to_path_buf() } else { upper.join(path) };
    if joined.as_os_str().len() <= PATH_LIMIT {
        return HostPath { path: joined, _dir: None };
    }
    // Too long: open the directories of the path a step at a time. If that fails the joined
    // path is returned, and the call using it fails with ENAMETOOLONG as it would have.
    match open_deep(upper, path) {
        Ok((dir, rest)) => {
            let path = PathBuf::from(format!("/proc/self/fd/{}/{rest}", dir.as_raw_fd()));
            HostPath { path, _dir: Some(dir) }
        }
        Err(e) => {
            tracing::debug!(path, error = %e, "opening a long upper path step by step");
            HostPath { path: joined, _dir: None }
        }
    }
}

/// A directory deep inside `path` (relative to `upper`), and what is left of `path` after it:
/// short enough to go after `/proc/self/fd/N/`.
fn open_deep<'a>(upper: &Path, path: &'a str) -> nix::Result<(OwnedFd, &'a str)> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = nix::fcntl::open(upper, flags, Mode::empty())?;
    let mut rest = path;
    while rest.len() > PATH_STEP {
        // The union walks upper paths through directories only, never through a symlink, so
        // each step resolves to the directories the union saw.
        let cut = rest[..PATH_STEP].rfind('/').ok_or(nix::Error::ENAMETOOLONG)?;
        dir = nix::fcntl::openat(&dir, &rest[..cut], flags, Mode::empty())?;
        rest = &rest[cut + 1..];
    }
    Ok((dir, rest))
}

pub(crate) fn lstat(upper: &Path, path: &str) -> Option<Metadata> {
    fs::symlink_metadata(host(upper, path)).ok()
}

pub(crate) fn is_opaque(upper: &Path, path: &str) -> bool {
    matches!(xattr::get(host(upper, path), OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

pub(crate) fn set_opaque(upper: &Path, path: &str) -> io::Result<()> {
    xattr::set(host(upper, path), OPAQUE_XATTR, b"y")
}

/// Marks `path` deleted: a 0/0 character device, as kernel overlayfs writes it.
pub(crate) fn make_whiteout(upper: &Path, path: &str) -> io::Result<()> {
    let p = host(upper, path);
    mknod(&*p, SFlag::S_IFCHR, Mode::empty(), 0).map_err(io::Error::from)
}

/// Removes a whiteout at `path`, if there is one; says whether there was.
pub(crate) fn clear_whiteout(upper: &Path, path: &str) -> io::Result<bool> {
    match lstat(upper, path) {
        Some(m) if super::resolve::is_whiteout(&m) => {
            fs::remove_file(host(upper, path))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The entries of an upper directory with their metadata.
pub(crate) fn entries(upper: &Path, path: &str) -> io::Result<Vec<(String, Metadata)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(host(upper, path))? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        out.push((name, entry.metadata()?));
    }
    Ok(out)
}

/// Removes an upper directory that holds nothing but whiteouts (merged-empty).
pub(crate) fn remove_dir_with_whiteouts(upper: &Path, path: &str) -> io::Result<()> {
    for (name, meta) in entries(upper, path)? {
        if super::resolve::is_whiteout(&meta) {
            fs::remove_file(host(upper, &super::resolve::join(path, &name)))?;
        }
    }
    fs::remove_dir(host(upper, path))
}

/// The xattrs a container may see.
pub(crate) fn visible_xattrs(p: &Path) -> io::Result<Vec<String>> {
    Ok(xattr::list(p)?
        .filter_map(|n: std::ffi::OsString| n.into_string().ok())
        .filter(|n| !n.starts_with(PRIVATE_XATTR_PREFIX))
        .collect())
}

pub(crate) fn name_ok(name: &OsStr) -> Option<&str> {
    let s = name.to_str()?;
    (!s.is_empty() && s != "." && s != ".." && !s.contains('/')).then_some(s)
}
