//! Applying an OCI layer (an uncompressed tar stream) to a directory, as docker and containerd
//! do for a full pull: entries are created in order with their modes (setuid included),
//! owners, xattrs, mtimes, links, devices and fifos; `.wh.NAME` deletes `NAME` from the layers
//! below and `.wh..wh..opq` empties its directory of what the layers below put there.
//!
//! The tar is hostile input. Every parent directory is opened with `openat2(RESOLVE_IN_ROOT)`
//! from a descriptor of the target (so `..` and symlinks, absolute or not, resolve inside it)
//! and every entry is made with a `*at` call on its final name that does not follow a symlink
//! there, so no entry can create, change or delete anything outside the target.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{self, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use tar::EntryType;

use skiff_fs::IdMap;

use crate::sandbox::paths::{ensure_in_root, open_in_root, Kind, PathError};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const COPY_BUFFER: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading {layer}: {source}")]
    Read { layer: String, source: io::Error },
    #[error("{layer}: {step} {path}: {source}")]
    Entry { layer: String, path: PathBuf, step: &'static str, source: Errno },
    #[error("{layer}: writing {path}: {source}")]
    Write { layer: String, path: PathBuf, source: io::Error },
    #[error("{layer}: {source}")]
    Resolve { layer: String, source: PathError },
    #[error("{layer}: {path}: a name beginning with .wh. marks a deletion in an image's layers; a container cannot hold one")]
    Reserved { layer: String, path: PathBuf },
}

/// What one layer added, for progress and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct LayerStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Applies the layer `tar` (named `layer` in errors) on top of the directory `root`, then
/// reads `tar` to its end, so that a digest check at the end of the stream is never skipped.
/// Entries at the top named in `leave_out` are not applied (an eStargz layer's table of
/// contents and landmarks, which are not the image's files).
pub fn apply_layer(
    root: BorrowedFd<'_>,
    layer: &str,
    tar: &mut dyn Read,
    leave_out: &[&str],
) -> Result<LayerStats, UnpackError> {
    unpack(root, layer, tar, Unpack { leave_out, whiteouts: Whiteouts::Apply, owner: Owner::Kept })
}

/// Unpacks the archive `tar` (named `what` in errors) into the directory `root`, as `skiff cp`
/// does: each entry gets `owner`, and `.wh.` names are no whiteouts (see [`Whiteouts`]).
pub fn unpack_archive(
    root: BorrowedFd<'_>,
    what: &str,
    tar: &mut dyn Read,
    owner: Owner<'_>,
    whiteouts: Whiteouts,
) -> Result<LayerStats, UnpackError> {
    unpack(root, what, tar, Unpack { leave_out: &[], whiteouts, owner })
}

/// What a `.wh.` name in an archive means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// A layer's deletion (`.wh..wh..opq`: of a directory's lower contents).
    Apply,
    /// A plain file (on the host, say).
    Keep,
    /// An error: a container's layer cannot hold such a name, whiteouts being what a layer
    /// means by it.
    Refuse,
}

/// Who owns what an archive creates.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// The archive's uid and gid.
    Kept,
    /// The archive's uid and gid, taken as ids inside a user namespace and stored as the host
    /// ids they map to.
    Mapped(&'a IdMap),
    /// This uid and gid, whatever the archive says.
    Fixed(u32, u32),
}

/// How [`unpack`] treats an archive.
struct Unpack<'a> {
    leave_out: &'a [&'a str],
    whiteouts: Whiteouts,
    owner: Owner<'a>,
}

fn unpack(
    root: BorrowedFd<'_>,
    layer: &str,
    tar: &mut dyn Read,
    how: Unpack<'_>,
) -> Result<LayerStats, UnpackError> {
    let read_err = |source| UnpackError::Read { layer: layer.to_string(), source };
    let mut apply = Apply {
        root,
        layer,
        written: HashSet::new(),
        dir_times: Vec::new(),
        parent: None,
        buf: vec![0; COPY_BUFFER],
        stats: LayerStats::default(),
        how,
    };
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        apply.entry(&mut entry)?;
    }
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(read_err)?;
    apply.finish()?;
    Ok(apply.stats)
}

struct Apply<'a> {
    root: BorrowedFd<'a>,
    layer: &'a str,
    /// Paths this layer created: an opaque whiteout keeps them.
    written: HashSet<PathBuf>,
    /// Directory mtimes, set once the layer is done (creating children changes them).
    dir_times: Vec<(PathBuf, i64)>,
    /// The last parent directory opened: entries come grouped by directory.
    parent: Option<(PathBuf, OwnedFd)>,
    buf: Vec<u8>,
    stats: LayerStats,
    how: Unpack<'a>,
}

/// An entry's metadata, taken from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl Apply<'_> {
    fn err(&self, step: &'static str, path: &Path) -> impl Fn(Errno) -> UnpackError {
        let (layer, path) = (self.layer.to_string(), path.to_path_buf());
        move |source| UnpackError::Entry { layer: layer.clone(), path: path.clone(), step, source }
    }

    fn entry(&mut self, entry: &mut tar::Entry<'_, &mut dyn Read>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName)
            || matches!(kind, EntryType::GNULongLink)
        {
            return Ok(());
        }
        let raw = entry
            .path()
            .map_err(|source| UnpackError::Read { layer: self.layer.into(), source })?
            .into_owned();
        let Some(path) = clean(&raw) else { return Ok(()) };
        let (parent, name) = split(&path);
        if parent.as_os_str().is_empty() && self.how.leave_out.iter().any(|n| name == *n) {
            return Ok(());
        }
        let name_bytes = name.as_bytes();
        if name_bytes.starts_with(WHITEOUT.as_bytes()) && self.how.whiteouts == Whiteouts::Refuse {
            return Err(UnpackError::Reserved { layer: self.layer.into(), path });
        }
        if self.how.whiteouts == Whiteouts::Apply && name_bytes == OPAQUE.as_bytes() {
            return self.opaque(&parent);
        }
        let whiteout =
            name_bytes.strip_prefix(WHITEOUT.as_bytes()).filter(|_| self.how.whiteouts == Whiteouts::Apply);
        if let Some(hidden) = whiteout {
            if !hidden.starts_with(WHITEOUT.as_bytes()) {
                self.whiteout(&parent, OsStr::from_bytes(hidden))?;
            }
            return Ok(());
        }
        let meta = self.meta(entry)?;
        let dir = self.take_parent(&parent)?;
        let made = self.make(entry, kind, dir.as_fd(), name, &path, &meta);
        self.parent = Some((parent, dir));
        made?;
        self.stats.entries += 1;
        self.written.insert(path);
        Ok(())
    }

    /// Creates the entry `name` in `dir`, replacing what is there unless both are directories.
    fn make(
        &mut self,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
        kind: EntryType,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let is_dir = kind == EntryType::Directory;
        match stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if is_dir && SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {}
            Ok(_) => remove_at(dir, name).map_err(self.err("replacing", path))?,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(self.err("inspecting", path)(e)),
        }
        match kind {
            EntryType::Directory => self.directory(dir, name, path, meta),
            EntryType::Symlink => {
                let target = link_name(entry, self.layer)?;
                nix::unistd::symlinkat(target.as_os_str(), dir, name)
                    .map_err(self.err("symlinking", path))?;
                self.finish_node(dir, name, path, meta, true)
            }
            EntryType::Link => {
                let target = link_name(entry, self.layer)?;
                let target = clean(&target).unwrap_or_default();
                let (tparent, tname) = split(&target);
                let tdir = open_in_root(self.root, &tparent, OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(|source| UnpackError::Resolve { layer: self.layer.into(), source })?;
                nix::unistd::linkat(&tdir, tname, dir, name, AtFlags::empty())
                    .map_err(self.err("hardlinking", path))
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = entry.header();
                let (flag, dev) = match kind {
                    EntryType::Char => (SFlag::S_IFCHR, device(h)),
                    EntryType::Block => (SFlag::S_IFBLK, device(h)),
                    _ => (SFlag::S_IFIFO, 0),
                };
                stat::mknodat(dir, name, flag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(self.err("creating the node", path))?;
                self.finish_node(dir, name, path, meta, false)
            }
            // Regular files, and the kinds tar reads as regular data (contiguous, GNU sparse).
            _ => self.file(entry, dir, name, path, meta),
        }
    }

    fn meta(&self, entry: &mut tar::Entry<'_, &mut dyn Read>) -> Result<Meta, UnpackError> {
        let read_err = |source| UnpackError::Read { layer: self.layer.to_string(), source };
        let h = entry.header();
        let mut meta = Meta {
            mode: h.mode().map_err(read_err)? & 0o7777,
            uid: h.uid().map_err(read_err)? as u32,
            gid: h.gid().map_err(read_err)? as u32,
            mtime: h.mtime().map_err(read_err)? as i64,
            xattrs: Vec::new(),
        };
        match self.how.owner {
            Owner::Kept => {}
            Owner::Mapped(ids) => {
                (meta.uid, meta.gid) = (ids.uid_to_host(meta.uid), ids.gid_to_host(meta.gid))
            }
            Owner::Fixed(uid, gid) => (meta.uid, meta.gid) = (uid, gid),
        }
        if let Some(pax) = entry.pax_extensions().map_err(read_err)? {
            for record in pax {
                let record = record.map_err(read_err)?;
                let Ok(key) = record.key() else { continue };
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if let Ok(name) = CString::new(name) {
                        meta.xattrs.push((name, record.value_bytes().to_vec()));
                    }
                }
            }
        }
        Ok(meta)
    }

    /// The parent directory of an entry (from the cache, which the caller refills), created
    /// (as tar does) when missing.
    fn take_parent(&mut self, parent: &Path) -> Result<OwnedFd, UnpackError> {
        match self.parent.take() {
            Some((p, fd)) if p == parent => Ok(fd),
            _ => ensure_dir(self.root, parent)
                .map_err(|source| UnpackError::Resolve { layer: self.layer.into(), source }),
        }
    }

    fn file(
        &mut self,
        entry: &mut dyn Read,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(dir, name, flags, Mode::from_bits_truncate(0o600))
            .map_err(self.err("creating", path))?;
        let mut file = File::from(fd);
        let write_err =
            |source| UnpackError::Write { layer: self.layer.into(), path: path.to_path_buf(), source };
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(UnpackError::Read { layer: self.layer.into(), source }),
            };
            file.write_all(&self.buf[..n]).map_err(write_err)?;
            self.stats.bytes += n as u64;
        }
        // Owner before mode: chown clears setuid and setgid bits.
        nix::unistd::fchown(&file, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
            .map_err(self.err("chown", path))?;
        stat::fchmod(&file, Mode::from_bits_truncate(meta.mode)).map_err(self.err("chmod", path))?;
        for (key, value) in &meta.xattrs {
            set_xattr(XattrTarget::Fd(file.as_fd()), key, value)
                .map_err(self.err("setting an xattr on", path))?;
        }
        let time = TimeSpec::new(meta.mtime, 0);
        stat::futimens(&file, &time, &time).map_err(self.err("setting the mtime of", path))
    }

    fn directory(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        match stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(self.err("creating the directory", path)(e)),
        }
        let fd = nix::fcntl::openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.err("opening", path))?;
        nix::unistd::fchown(&fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
            .map_err(self.err("chown", path))?;
        stat::fchmod(&fd, Mode::from_bits_truncate(meta.mode)).map_err(self.err("chmod", path))?;
        for (key, value) in &meta.xattrs {
            set_xattr(XattrTarget::Fd(fd.as_fd()), key, value)
                .map_err(self.err("setting an xattr on", path))?;
        }
        self.dir_times.push((path.to_path_buf(), meta.mtime));
        Ok(())
    }

    /// Owner, mode, xattrs and mtime of a symlink or special file, by name in `dir`, never
    /// following a symlink.
    fn finish_node(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        meta: &Meta,
        symlink: bool,
    ) -> Result<(), UnpackError> {
        let no_follow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        nix::unistd::fchownat(
            dir,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            no_follow,
        )
        .map_err(self.err("chown", path))?;
        if !symlink {
            // Just made by mknodat, so not a symlink: following is harmless.
            stat::fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(meta.mode),
                stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(self.err("chmod", path))?;
        }
        for (key, value) in &meta.xattrs {
            match set_xattr(XattrTarget::At(dir, name), key, value) {
                // Only trusted.* and security.* xattrs exist on symlinks.
                Err(Errno::EPERM) if symlink => {}
                other => other.map_err(self.err("setting an xattr on", path))?,
            }
        }
        let time = TimeSpec::new(meta.mtime, 0);
        stat::utimensat(dir, name, &time, &time, stat::UtimensatFlags::NoFollowSymlink)
            .map_err(self.err("setting the mtime of", path))
    }

    fn whiteout(&mut self, parent: &Path, name: &OsStr) -> Result<(), UnpackError> {
        let path = parent.join(name);
        let dir = match open_in_root(self.root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(dir) => dir,
            Err(PathError::Open { source: Errno::ENOENT, .. }) => return Ok(()),
            Err(source) => return Err(UnpackError::Resolve { layer: self.layer.into(), source }),
        };
        self.parent = None;
        remove_at(dir.as_fd(), name).map_err(self.err("removing (whiteout)", &path))
    }

    fn opaque(&mut self, dir_path: &Path) -> Result<(), UnpackError> {
        let dir = match open_in_root(self.root, dir_path, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            Ok(dir) => dir,
            Err(PathError::Open { source: Errno::ENOENT, .. }) => return Ok(()),
            Err(source) => return Err(UnpackError::Resolve { layer: self.layer.into(), source }),
        };
        self.parent = None;
        let names = list(dir.as_fd()).map_err(self.err("listing (opaque whiteout)", dir_path))?;
        for name in names {
            let child = dir_path.join(&name);
            if !self.written.contains(&child) {
                remove_at(dir.as_fd(), &name).map_err(self.err("removing (opaque whiteout)", &child))?;
            }
        }
        Ok(())
    }

    /// Directory mtimes, now that nothing more is created in them.
    fn finish(&mut self) -> Result<(), UnpackError> {
        self.parent = None;
        for (path, mtime) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            let fd = match open_in_root(
                self.root,
                &path,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            ) {
                Ok(fd) => fd,
                // Replaced or whited out later in the layer.
                Err(PathError::Open { .. }) => continue,
                Err(source) => return Err(UnpackError::Resolve { layer: self.layer.into(), source }),
            };
            let time = TimeSpec::new(mtime, 0);
            stat::futimens(&fd, &time, &time).map_err(self.err("setting the mtime of", &path))?;
        }
        Ok(())
    }
}

fn link_name(entry: &tar::Entry<'_, &mut dyn Read>, layer: &str) -> Result<PathBuf, UnpackError> {
    let read_err = |source| UnpackError::Read { layer: layer.to_string(), source };
    let target = entry.link_name().map_err(read_err)?;
    target
        .map(|t| t.into_owned())
        .ok_or_else(|| read_err(io::Error::new(io::ErrorKind::InvalidData, "a link entry without a target")))
}

fn device(h: &tar::Header) -> u64 {
    let number = |n: io::Result<Option<u32>>| n.ok().flatten().unwrap_or(0) as u64;
    stat::makedev(number(h.device_major()), number(h.device_minor()))
}

/// An entry's path made relative and lexically clean: `/`, `.` dropped, `..` clamped at the
/// top. `None` for the top itself.
fn clean(path: &Path) -> Option<PathBuf> {
    let absolute = crate::sandbox::paths::normalize(path);
    let relative = absolute.strip_prefix("/").unwrap_or(&absolute);
    (!relative.as_os_str().is_empty()).then(|| relative.to_path_buf())
}

/// A clean, non-empty path's parent (maybe empty: the top) and final name.
fn split(path: &Path) -> (PathBuf, &OsStr) {
    let name = path.file_name().unwrap_or(OsStr::new("."));
    (path.parent().map(Path::to_path_buf).unwrap_or_default(), name)
}

/// Opens the directory `path` inside `root`, creating it and its missing parents (0755); a
/// dangling symlink on the way is followed inside `root` and its target created there.
fn ensure_dir(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, PathError> {
    match open_in_root(root, path, OFlag::O_PATH | OFlag::O_DIRECTORY) {
        Err(PathError::Open { source: Errno::ENOENT, .. }) => ensure_in_root(root, path, Kind::Dir),
        other => other,
    }
}

/// The names in the directory `dir`.
pub(super) fn list(dir: BorrowedFd<'_>) -> Result<Vec<std::ffi::OsString>, Errno> {
    let entries = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    entries
        .map(|e| e.map(|e| e.file_name()).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))
        .collect()
}

/// Removes `name` from `dir`, a directory with everything in it; never follows a symlink.
pub(super) fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let sub = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    for child in list(sub.as_fd())? {
        remove_at(sub.as_fd(), &child)?;
    }
    nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir)
}

enum XattrTarget<'a> {
    /// An open file or directory.
    Fd(BorrowedFd<'a>),
    /// A name in a directory, not followed if it is a symlink.
    At(BorrowedFd<'a>, &'a OsStr),
}

#[allow(unsafe_code)]
fn set_xattr(target: XattrTarget<'_>, key: &CString, value: &[u8]) -> Result<(), Errno> {
    let rc = match target {
        // SAFETY: the key is NUL-terminated and the value's pointer and length describe a
        // live slice.
        XattrTarget::Fd(fd) => unsafe {
            libc::fsetxattr(fd.as_raw_fd(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        },
        XattrTarget::At(dir, name) => {
            // The directory through its descriptor, the name not followed (lsetxattr).
            let path = format!("/proc/self/fd/{}/", dir.as_raw_fd());
            let mut bytes = path.into_bytes();
            bytes.extend_from_slice(name.as_bytes());
            let path = CString::new(bytes).map_err(|_| Errno::EINVAL)?;
            // SAFETY: as above; the path is NUL-terminated.
            unsafe { libc::lsetxattr(path.as_ptr(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) }
        }
    };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests;
