//! The upper (writable) layer: a host directory in the kernel overlayfs format. Paths are
//! relative to it and come from the union, component by component, never through a symlink.

use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::stat::{mknod, Mode, SFlag};

pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Names of the upper's own bookkeeping, never shown to the container.
pub(crate) const PRIVATE_XATTR_PREFIX: &str = "trusted.overlay.";

pub(crate) fn host(upper: &Path, path: &str) -> PathBuf {
    if path.is_empty() {
        upper.to_path_buf()
    } else {
        upper.join(path)
    }
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
    mknod(&p, SFlag::S_IFCHR, Mode::empty(), 0).map_err(io::Error::from)
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
