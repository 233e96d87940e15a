//! Changing the merged tree: copy-up of lower entries (whole, atomically, with their
//! metadata), creation, removal with whiteouts, rename, attributes and xattrs. Every change
//! holds the union's `changes` lock; lower data is only ever read.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::inodes::Identity;
use super::resolve::{join, Found, Resolved};
use super::upper::{self, host};
use super::{Attr, Errno, FsResult, Ino, Union};
use crate::index::{Kind, Node};

/// What `setattr` changes; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
    pub fh: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// Empties the union's cache of directories when dropped: at the end of a change that may
/// move or remove directories, however it ends.
struct ForgetDirs<'a>(&'a Union);

impl Drop for ForgetDirs<'_> {
    fn drop(&mut self) {
        self.0.forget_dirs();
    }
}

/// Who creates an entry: its owner.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn timespec(t: SystemTime) -> TimeSpec {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64)
}

fn set_times(p: &Path, atime: TimeSpec, mtime: TimeSpec) -> FsResult<()> {
    utimensat(nix::fcntl::AT_FDCWD, p, &atime, &mtime, UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}

/// Gives a freshly made upper entry the metadata of lower `node`.
fn apply_lower_meta(p: &Path, node: &Node) -> FsResult<()> {
    std::os::unix::fs::lchown(p, Some(node.uid), Some(node.gid))?;
    if node.kind != Kind::Symlink {
        // After chown, which clears setuid and setgid.
        fs::set_permissions(p, fs::Permissions::from_mode(node.mode))?;
        for (name, value) in &node.xattrs {
            if let Err(e) = xattr::set(p, name, value) {
                tracing::warn!(path = %p.display(), xattr = name, error = %e, "xattr not copied up");
            }
        }
    }
    let t = TimeSpec::new(node.mtime, 0);
    set_times(p, t, t)
}

impl Union {
    /// Copies `path` (and its parents) into the upper, unless it is there already.
    pub(crate) fn copy_up(&self, path: &str) -> FsResult<()> {
        let _guard = self.generation.change(&self.changes);
        self.copy_up_locked(path).map(drop)
    }

    fn copy_up_locked(&self, path: &str) -> FsResult<Resolved> {
        let r = self.resolve(path).ok_or(Errno(libc::ENOENT))?;
        let Found::Lower { layer, node } = r.found else { return Ok(r) };
        self.copy_up_locked(parent_of(path))?;
        let view = &self.layers[layer];
        let n = view.index().node(node).clone();
        let target = host(&self.upper, path);
        if n.kind == Kind::Dir {
            fs::create_dir(&target)?;
            apply_lower_meta(&target, &n)?;
            self.forget_dirs();
        } else {
            // Built beside the upper, then renamed in: never half-copied under its name.
            let tmp = tempfile::Builder::new().prefix("copyup-").make_in(&self.work, |p| match n.kind {
                Kind::File => {
                    let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(p)?;
                    self.copy_bytes(layer, node, n.size, &file)
                }
                Kind::Symlink => std::os::unix::fs::symlink(n.target.as_deref().unwrap_or(""), p),
                kind => {
                    let t = match kind {
                        Kind::CharDevice => SFlag::S_IFCHR,
                        Kind::BlockDevice => SFlag::S_IFBLK,
                        _ => SFlag::S_IFIFO,
                    };
                    mknod(p, t, Mode::from_bits_truncate(0o600), libc::makedev(n.rdev.0, n.rdev.1))
                        .map_err(io::Error::from)
                }
            })?;
            let tmp_path = tmp.into_temp_path();
            apply_lower_meta(&tmp_path, &n)?;
            fs::rename(&tmp_path, &target)?;
        }
        if n.nlink > 1 && n.kind != Kind::Dir {
            // Copy-up breaks the hardlink, as in overlayfs: this name gets an inode of its own.
            self.inodes.lock().unwrap().detach(path);
        }
        self.resolve(path).ok_or(Errno(libc::ENOENT))
    }

    fn copy_bytes(&self, layer: usize, node: crate::index::NodeId, size: u64, file: &File) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0;
        while offset < size {
            let n = self.layers[layer].read(node, offset, &mut buf)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "lower file ended early"));
            }
            file.write_all_at(&buf[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }

    /// Copies a whole directory tree up and makes it opaque (it then holds everything).
    fn deep_copy_up(&self, path: &str) -> FsResult<()> {
        let r = self.copy_up_locked(path)?;
        if r.kind(self) != Kind::Dir {
            return Ok(());
        }
        for name in self.list(&r, path)?.into_keys() {
            self.deep_copy_up(&join(path, &name))?;
        }
        upper::set_opaque(&self.upper, path)?;
        self.forget_dirs();
        Ok(())
    }

    /// The directory `parent` resolved and copied up, and the new child's path, which must
    /// not exist yet. Clears a whiteout at it; returns whether there was one.
    fn prepare_new(&self, parent: Ino, name: &str) -> FsResult<(String, bool)> {
        let (parent_path, pr) = self.resolve_ino(parent)?;
        if pr.kind(self) != Kind::Dir {
            return Err(Errno(libc::ENOTDIR));
        }
        if self.resolve_child(&pr, &parent_path, name).is_some() {
            return Err(Errno(libc::EEXIST));
        }
        self.copy_up_locked(&parent_path)?;
        let path = join(&parent_path, name);
        let had_whiteout = upper::clear_whiteout(&self.upper, &path)?;
        Ok((path, had_whiteout))
    }

    fn finish_new(&self, path: &str, owner: Owner, mode: Option<u32>) -> FsResult<Attr> {
        let p = host(&self.upper, path);
        std::os::unix::fs::lchown(&p, Some(owner.uid), Some(owner.gid))?;
        if let Some(mode) = mode {
            // The process umask must not mask what the container asked for.
            fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        let r = self.resolve(path).ok_or(Errno(libc::ENOENT))?;
        let ino = self.ino_of(path, &r);
        Ok(self.attr_of(ino, &r))
    }

    pub fn create(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        flags: i32,
        owner: Owner,
    ) -> FsResult<(Attr, u64)> {
        let _guard = self.generation.change(&self.changes);
        let (path, _) = self.prepare_new(parent, name)?;
        let access = flags & libc::O_ACCMODE;
        let file = OpenOptions::new()
            .read(access != libc::O_WRONLY)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .custom_flags(flags & (libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC))
            .open(host(&self.upper, &path))?;
        let attr = self.finish_new(&path, owner, Some(mode))?;
        Ok((attr, self.add_handle(super::Handle::Upper { file, ino: attr.ino })))
    }

    pub fn mkdir(&self, parent: Ino, name: &str, mode: u32, owner: Owner) -> FsResult<Attr> {
        let _guard = self.generation.change(&self.changes);
        let (path, had_whiteout) = self.prepare_new(parent, name)?;
        fs::create_dir(host(&self.upper, &path))?;
        if had_whiteout {
            // A lower directory of this name was deleted: its entries must stay hidden.
            upper::set_opaque(&self.upper, &path)?;
        }
        self.finish_new(&path, owner, Some(mode))
    }

    pub fn mknod(&self, parent: Ino, name: &str, mode: u32, rdev: u64, owner: Owner) -> FsResult<Attr> {
        let _guard = self.generation.change(&self.changes);
        let (path, _) = self.prepare_new(parent, name)?;
        let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
        mknod(&*host(&self.upper, &path), kind, Mode::from_bits_truncate(mode & 0o7777), rdev)?;
        self.finish_new(&path, owner, Some(mode))
    }

    pub fn symlink(&self, parent: Ino, name: &str, target: &OsStr, owner: Owner) -> FsResult<Attr> {
        let _guard = self.generation.change(&self.changes);
        let (path, _) = self.prepare_new(parent, name)?;
        std::os::unix::fs::symlink(target, host(&self.upper, &path))?;
        self.finish_new(&path, owner, None)
    }

    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &str) -> FsResult<Attr> {
        let _guard = self.generation.change(&self.changes);
        let old = self.path_of(ino)?;
        let r = self.copy_up_locked(&old)?;
        if r.kind(self) == Kind::Dir {
            return Err(Errno(libc::EPERM));
        }
        let (path, _) = self.prepare_new(new_parent, new_name)?;
        fs::hard_link(host(&self.upper, &old), host(&self.upper, &path))?;
        let meta = fs::symlink_metadata(host(&self.upper, &path))?;
        let ino = self.inodes.lock().unwrap().ino_for(&old, None);
        {
            let mut inodes = self.inodes.lock().unwrap();
            inodes.alias(&old, ino, Identity::Upper(meta.ino()));
            inodes.alias(&path, ino, Identity::Upper(meta.ino()));
        }
        let r = self.resolve(&path).ok_or(Errno(libc::ENOENT))?;
        Ok(self.attr_of(ino, &r))
    }

    /// Whether a lower layer shows `name` in directory `parent` (so removing it needs a
    /// whiteout).
    fn lower_has(&self, parent: &Resolved, name: &str) -> bool {
        self.resolve_lower_child(&parent.lowers, name).is_some()
    }

    pub fn unlink(&self, parent: Ino, name: &str) -> FsResult<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: Ino, name: &str) -> FsResult<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &str, dir: bool) -> FsResult<()> {
        let _guard = self.generation.change(&self.changes);
        let _forget = dir.then(|| ForgetDirs(self));
        let (parent_path, pr) = self.resolve_ino(parent)?;
        let r = self.resolve_child(&pr, &parent_path, name).ok_or(Errno(libc::ENOENT))?;
        let path = join(&parent_path, name);
        match (dir, r.kind(self) == Kind::Dir) {
            (false, true) => return Err(Errno(libc::EISDIR)),
            (true, false) => return Err(Errno(libc::ENOTDIR)),
            (true, true) if !self.list(&r, &path)?.is_empty() => return Err(Errno(libc::ENOTEMPTY)),
            _ => {}
        }
        let pr = self.copy_up_locked(&parent_path)?;
        if r.in_upper() {
            if dir {
                upper::remove_dir_with_whiteouts(&self.upper, &path)?;
            } else {
                fs::remove_file(host(&self.upper, &path))?;
            }
        }
        if self.lower_has(&pr, name) {
            upper::make_whiteout(&self.upper, &path)?;
        }
        let mut inodes = self.inodes.lock().unwrap();
        let ino = inodes.ino_for(&path, None);
        inodes.remove(&path);
        inodes.repoint(ino);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        flags: RenameFlags,
    ) -> FsResult<()> {
        let _guard = self.generation.change(&self.changes);
        let _forget = ForgetDirs(self);
        let (src_parent_path, spr) = self.resolve_ino(parent)?;
        let (dst_parent_path, dpr) = self.resolve_ino(new_parent)?;
        let src = self.resolve_child(&spr, &src_parent_path, name).ok_or(Errno(libc::ENOENT))?;
        let dst = self.resolve_child(&dpr, &dst_parent_path, new_name);
        let src_path = join(&src_parent_path, name);
        let dst_path = join(&dst_parent_path, new_name);
        if src_path == dst_path {
            return Ok(());
        }
        let src_dir = src.kind(self) == Kind::Dir;
        if flags.exchange {
            let dst = dst.ok_or(Errno(libc::ENOENT))?;
            self.deep_copy_up(&src_path)?;
            self.deep_copy_up(&dst_path)?;
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &*host(&self.upper, &src_path),
                nix::fcntl::AT_FDCWD,
                &*host(&self.upper, &dst_path),
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )?;
            for (p, r) in [(&src_path, &dst), (&dst_path, &src)] {
                if r.kind(self) == Kind::Dir {
                    upper::set_opaque(&self.upper, p)?;
                }
            }
            self.inodes.lock().unwrap().exchange(&src_path, &dst_path);
            return Ok(());
        }
        if let Some(d) = &dst {
            if flags.noreplace {
                return Err(Errno(libc::EEXIST));
            }
            let dst_dir = d.kind(self) == Kind::Dir;
            if src_dir && !dst_dir {
                return Err(Errno(libc::ENOTDIR));
            }
            if !src_dir && dst_dir {
                return Err(Errno(libc::EISDIR));
            }
            if dst_dir && !self.list(d, &dst_path)?.is_empty() {
                return Err(Errno(libc::ENOTEMPTY));
            }
        }
        let src_in_lower = self.lower_has(&spr, name);
        let dst_in_lower = self.lower_has(&dpr, new_name);
        if src_dir && !src.lowers.is_empty() {
            // A directory with lower parts moves whole: copied up entirely, then renamed.
            self.deep_copy_up(&src_path)?;
        } else {
            self.copy_up_locked(&src_path)?;
        }
        self.copy_up_locked(&dst_parent_path)?;
        if let Some(d) = &dst {
            if d.in_upper() && d.kind(self) == Kind::Dir {
                upper::remove_dir_with_whiteouts(&self.upper, &dst_path)?;
            }
        }
        upper::clear_whiteout(&self.upper, &dst_path)?;
        fs::rename(host(&self.upper, &src_path), host(&self.upper, &dst_path))?;
        if src_dir && dst_in_lower {
            upper::set_opaque(&self.upper, &dst_path)?;
        }
        if src_in_lower {
            upper::make_whiteout(&self.upper, &src_path)?;
        }
        self.inodes.lock().unwrap().rename(&src_path, &dst_path);
        Ok(())
    }

    pub fn setattr(&self, ino: Ino, set: SetAttr) -> FsResult<Attr> {
        let _guard = self.generation.change(&self.changes);
        let path = self.path_of(ino)?;
        let r = self.copy_up_locked(&path)?;
        let p = host(&self.upper, &path);
        if let Some(size) = set.size {
            match set.fh.map(|fh| self.handle(fh)) {
                Some(Ok(h)) if matches!(&*h, super::Handle::Upper { .. }) => {
                    let super::Handle::Upper { file: f, .. } = &*h else { unreachable!() };
                    f.set_len(size)?;
                }
                _ => OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(&p)?.set_len(size)?,
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            std::os::unix::fs::lchown(&p, set.uid, set.gid)?;
        }
        if let Some(mode) = set.mode {
            if r.kind(self) != Kind::Symlink {
                fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777))?;
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let omit = TimeSpec::new(0, libc::UTIME_OMIT);
            set_times(&p, set.atime.map_or(omit, timespec), set.mtime.map_or(omit, timespec))?;
        }
        let r = self.resolve(&path).ok_or(Errno(libc::ENOENT))?;
        Ok(self.attr_of(ino, &r))
    }

    pub fn setxattr(&self, ino: Ino, name: &str, value: &[u8], flags: i32) -> FsResult<()> {
        if name.starts_with(upper::PRIVATE_XATTR_PREFIX) {
            return Err(Errno(libc::EPERM));
        }
        let _guard = self.generation.change(&self.changes);
        let path = self.path_of(ino)?;
        self.copy_up_locked(&path)?;
        let p = host(&self.upper, &path);
        let exists = xattr::get(&p, name)?.is_some();
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(Errno(libc::EEXIST));
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(Errno(libc::ENODATA));
        }
        xattr::set(&p, name, value)?;
        Ok(())
    }

    pub fn removexattr(&self, ino: Ino, name: &str) -> FsResult<()> {
        if name.starts_with(upper::PRIVATE_XATTR_PREFIX) {
            return Err(Errno(libc::ENODATA));
        }
        let _guard = self.generation.change(&self.changes);
        let path = self.path_of(ino)?;
        self.copy_up_locked(&path)?;
        xattr::remove(host(&self.upper, &path), name)?;
        Ok(())
    }
}
