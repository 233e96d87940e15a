//! The FUSE adapter: the one file that imports fuser. It turns kernel requests into `Union`
//! calls and their results into replies; all behaviour lives in the union.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Config, Errno as FuseErrno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};

use super::backing::{Backings, Unbacked};
use super::upper::name_ok;
use super::write::Owner;
use super::{Attr, Errno, RenameFlags, SetAttr, Union};
use crate::index::Kind;

/// Everything in the tree changes only through this mount, so the kernel may cache entries
/// and attributes for long.
const TTL: Duration = Duration::from_secs(60);
/// Entries only in lower layers are immutable (a change copies them up through this mount,
/// which updates the kernel's view): the kernel may keep them as long as it likes.
const LOWER_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_REQUEST: u32 = 1 << 20;
/// Entries looked up per directory read: about what fits in the kernel's one-page buffer.
const READDIR_BATCH: usize = 256;
const READDIRPLUS_BATCH: usize = 48;

#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Worker threads serving requests: one slow fetch must not block other reads.
    pub threads: usize,
    /// Let every user (the container's) use the mount; the kernel checks permissions.
    pub allow_other: bool,
    /// Shown as the mount's source in /proc/mounts.
    pub fsname: String,
    /// The user namespace of the mount's users: owners are served mapped to host ids, and
    /// ids of requests mapped back (identity without one).
    pub ids: crate::IdMap,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions { threads: 8, allow_other: true, fsname: "skiff".into(), ids: crate::IdMap::default() }
    }
}

/// A mounted union; dropping it unmounts.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and waits for the serving threads to end (see [`SESSION_END_WAIT`]).
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => end(s, &self.path),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = end(s, &self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "unmounting");
            }
        }
    }
}

/// How long an unmount waits for the serving threads once the mount is gone. They end when
/// the kernel lets the connection go, which it does only once no mount namespace holds the
/// mount: one made while it was mounted (`unshare -m`, another runtime setting up a
/// container) holds a copy of it for as long as it lives. A container's stop must not wait
/// for that.
const SESSION_END_WAIT: Duration = Duration::from_secs(2);

/// Unmounts `session`'s mount at `path`, and waits for its threads up to [`SESSION_END_WAIT`].
/// Past that, they go on serving the copies until those go or this process ends.
fn end(session: fuser::BackgroundSession, path: &Path) -> io::Result<()> {
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("skiff-unmount".into()).spawn(move || {
        let _ = done.send(session.umount_and_join());
    })?;
    match ended.recv_timeout(SESSION_END_WAIT) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            tracing::info!(
                path = %path.display(),
                "unmounted, but another mount namespace still holds the mount: it is served \
                 until that namespace lets it go or this process ends"
            );
            Ok(())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(io::Error::other("the thread unmounting it panicked"))
        }
    }
}

/// Mounts `union` at `target` and serves it from background threads.
pub fn mount(union: Arc<Union>, target: &Path, options: &MountOptions) -> io::Result<Mounted> {
    let mount_options = vec![
        MountOption::FSName(options.fsname.clone()),
        MountOption::Subtype("skiff".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
        MountOption::RW,
        MountOption::NoAtime,
    ];
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if options.allow_other { SessionACL::All } else { SessionACL::Owner };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let fs = FuseUnion { union, ids: options.ids.clone(), backings: Backings::new(), no_opendir: false };
    let session = fuser::spawn_mount(fs, target, &config)?;
    Ok(Mounted { session: Some(session), path: target.to_path_buf() })
}

struct FuseUnion {
    union: Arc<Union>,
    ids: crate::IdMap,
    /// Upper files the kernel reads and writes by itself.
    backings: Backings<BackingId>,
    /// The kernel opens directories without asking (FUSE_NO_OPENDIR_SUPPORT).
    no_opendir: bool,
}

fn ttl(a: &Attr) -> &'static Duration {
    if a.upper {
        &TTL
    } else {
        &LOWER_TTL
    }
}

fn errno(e: Errno) -> FuseErrno {
    FuseErrno::from_i32(e.0)
}

fn unbacked_file(e: Errno) -> Unbacked {
    Unbacked::File(io::Error::from_raw_os_error(e.0))
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

fn file_attr(a: &Attr, ids: &crate::IdMap) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm as u16,
        nlink: a.nlink,
        uid: ids.uid_to_host(a.uid),
        gid: ids.gid_to_host(a.gid),
        rdev: a.rdev as u32,
        flags: 0,
        blksize: 4096,
    }
}

/// Attributes the kernel ignores: of `.` and `..` in readdirplus, and of a negative entry.
fn ignored_attr(ino: INodeNo) -> FileAttr {
    FileAttr {
        ino,
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

macro_rules! name_or_reply {
    ($name:expr, $reply:expr) => {
        match name_ok($name) {
            Some(n) => n,
            None => return $reply.error(FuseErrno::EINVAL),
        }
    };
}

fn entry(reply: ReplyEntry, ids: &crate::IdMap, result: Result<Attr, Errno>) {
    match result {
        Ok(a) => reply.entry(ttl(&a), &file_attr(&a, ids), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

/// Answers an xattr request: the size when asked for it, else the bytes if they fit.
fn xattr_reply(reply: ReplyXattr, size: u32, bytes: &[u8]) {
    if size == 0 {
        reply.size(bytes.len() as u32)
    } else if bytes.len() > size as usize {
        reply.error(FuseErrno::ERANGE)
    } else {
        reply.data(bytes)
    }
}

fn owner(req: &Request, ids: &crate::IdMap) -> Owner {
    Owner { uid: ids.uid_from_host(req.uid()), gid: ids.gid_from_host(req.gid()) }
}

/// Runs the handler of one request. A panic in it (a bug) is logged and the request answered
/// with EIO (fuser answers so a reply dropped unsent), and the worker thread goes on serving:
/// a panic that ended the thread would leave the mount with one worker fewer, and hung once
/// none were left.
fn guarded(op: &'static str, handler: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(handler)) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(op, message, "a request's handler panicked: answered EIO");
    }
}

impl Filesystem for FuseUnion {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_REQUEST);
        let _ = config.set_max_readahead(MAX_REQUEST);
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO
                | InitFlags::FUSE_PARALLEL_DIROPS
                // A symlink's target never changes while its inode lives (a new symlink is a
                // new inode): the kernel keeps it instead of asking at every path walk.
                | InitFlags::FUSE_CACHE_SYMLINKS,
        );
        // Reading a directory needs no handle (see `listing`): opening one need not cost a
        // round trip, and a kernel that opens directories itself also keeps their listings.
        self.no_opendir = config.add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT).is_ok();
        // Backing files are upper files on a plain filesystem (depth 0), so this mount is one
        // level deep and can itself sit under an overlayfs. An upper on a stacked filesystem
        // makes the kernel refuse the first backing file, and passthrough goes off.
        let passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.backings.enable(passthrough);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded("lookup", move || {
            let name = name_or_reply!(name, reply);
            match self.union.lookup(parent.0, name) {
                // A negative entry (inode 0): the kernel remembers that the name is absent instead
                // of asking again at every path search (the dynamic linker's, gcc's include path,
                // python's sys.path). Every change to this tree comes through the kernel, which
                // drops the entry when something takes the name.
                Err(Errno(libc::ENOENT)) => reply.entry(&TTL, &ignored_attr(INodeNo(0)), Generation(0)),
                result => entry(reply, &self.ids, result),
            }
        })
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded("getattr", move || match self.union.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(ttl(&a), &file_attr(&a, &self.ids)),
            Err(e) => reply.error(errno(e)),
        })
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guarded("setattr", move || {
            let set = SetAttr {
                mode,
                uid: uid.map(|u| self.ids.uid_from_host(u)),
                gid: gid.map(|g| self.ids.gid_from_host(g)),
                size,
                atime: atime.map(time),
                mtime: mtime.map(time),
                fh: fh.map(|f| f.0),
            };
            match self.union.setattr(ino.0, set) {
                Ok(a) => reply.attr(ttl(&a), &file_attr(&a, &self.ids)),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded("readlink", move || match self.union.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        })
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        guarded("mknod", move || {
            let name = name_or_reply!(name, reply);
            entry(
                reply,
                &self.ids,
                self.union.mknod(parent.0, name, mode, rdev as u64, owner(req, &self.ids)),
            );
        })
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        guarded("mkdir", move || {
            let name = name_or_reply!(name, reply);
            entry(reply, &self.ids, self.union.mkdir(parent.0, name, mode, owner(req, &self.ids)));
        })
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("unlink", move || {
            let name = name_or_reply!(name, reply);
            empty(reply, self.union.unlink(parent.0, name));
        })
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("rmdir", move || {
            let name = name_or_reply!(name, reply);
            empty(reply, self.union.rmdir(parent.0, name));
        })
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        guarded("symlink", move || {
            let name = name_or_reply!(link_name, reply);
            entry(
                reply,
                &self.ids,
                self.union.symlink(parent.0, name, target.as_os_str(), owner(req, &self.ids)),
            );
        })
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        guarded("rename", move || {
            let name = name_or_reply!(name, reply);
            let newname = name_or_reply!(newname, reply);
            let known = fuser::RenameFlags::RENAME_NOREPLACE | fuser::RenameFlags::RENAME_EXCHANGE;
            if !known.contains(flags) {
                return reply.error(FuseErrno::EINVAL);
            }
            let flags = RenameFlags {
                noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
                exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
            };
            empty(reply, self.union.rename(parent.0, name, newparent.0, newname, flags));
        })
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        guarded("link", move || {
            let name = name_or_reply!(newname, reply);
            entry(reply, &self.ids, self.union.link(ino.0, newparent.0, name));
        })
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded("open", move || {
            match self.union.open(ino.0, flags.0) {
                Ok((fh, true)) => {
                    // A lower file's bytes never change: the kernel may keep them across opens.
                    self.backings.open_cached(ino.0, fh);
                    reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
                }
                Ok((fh, false)) => {
                    // Never FOPEN_KEEP_CACHE with passthrough: the kernel fails reads with EIO.
                    let backing = self.backings.open_upper(ino.0, fh, || {
                        let file = self.union.backing_file(ino.0).map_err(unbacked_file)?;
                        reply.open_backing(&file).map_err(Unbacked::Kernel)
                    });
                    match backing {
                        Some(b) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b),
                        None => reply.opened(FileHandle(fh), FopenFlags::empty()),
                    }
                }
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded("read", move || match self.union.read(fh.0, offset, size.min(MAX_REQUEST)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        })
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded("write", move || match self.union.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        })
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        guarded("flush", move || {
            // Nothing is buffered here: ENOSYS tells the kernel to send no more flushes, which
            // saves a round trip at every close.
            reply.error(FuseErrno::ENOSYS);
        })
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guarded("release", move || {
            self.union.release(fh.0);
            self.backings.release(fh.0);
            reply.ok();
        })
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        guarded("fsync", move || {
            empty(reply, self.union.fsync(fh.0, datasync));
        })
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded("opendir", move || {
            if self.no_opendir {
                // The kernel stops asking, and keeps listings across opens from then on.
                return reply.error(FuseErrno::ENOSYS);
            }
            // Else the same by hand: the kernel keeps the listing it read, which it drops at every
            // change to the directory (all go through this mount).
            reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE)
        })
    }

    // Offsets: `.` ends at 1, `..` at 2, an entry at its cookie (see `listing`).

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        guarded("readdir", move || {
            let entries = match self.union.readdir(ino.0, offset, READDIR_BATCH) {
                Ok(e) => e,
                Err(e) => return reply.error(errno(e)),
            };
            let dots = [(".", 1), ("..", 2)].into_iter().filter(|&(_, end)| end > offset);
            for (name, end) in dots {
                if reply.add(ino, end, FileType::Directory, name) {
                    return reply.ok();
                }
            }
            for e in &entries {
                if reply.add(INodeNo(e.attr.ino), e.cookie, file_type(e.attr.kind), &e.name) {
                    break;
                }
            }
            reply.ok();
        })
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        guarded("readdirplus", move || {
            let entries = match self.union.readdir(ino.0, offset, READDIRPLUS_BATCH) {
                Ok(e) => e,
                Err(e) => return reply.error(errno(e)),
            };
            let dots = [(".", 1), ("..", 2)].into_iter().filter(|&(_, end)| end > offset);
            for (name, end) in dots {
                // The kernel takes no attributes from `.` and `..`: it already has them.
                if reply.add(ino, end, name, &TTL, &ignored_attr(ino), Generation(0)) {
                    return reply.ok();
                }
            }
            for e in &entries {
                let attr = file_attr(&e.attr, &self.ids);
                if reply.add(INodeNo(e.attr.ino), e.cookie, &e.name, ttl(&e.attr), &attr, Generation(0)) {
                    break;
                }
            }
            reply.ok();
        })
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        guarded("releasedir", move || {
            self.union.release(fh.0);
            reply.ok();
        })
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        guarded("fsyncdir", move || {
            reply.ok();
        })
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded("statfs", move || match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                255,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(errno(e)),
        })
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        guarded("setxattr", move || {
            let Some(name) = name.to_str() else { return reply.error(FuseErrno::EINVAL) };
            empty(reply, self.union.setxattr(ino.0, name, value, flags));
        })
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guarded("getxattr", move || {
            let Some(name) = name.to_str() else { return reply.error(FuseErrno::ENODATA) };
            match self.union.getxattr(ino.0, name) {
                Ok(v) => xattr_reply(reply, size, &v),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guarded("listxattr", move || match self.union.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                xattr_reply(reply, size, &buf)
            }
            Err(e) => reply.error(errno(e)),
        })
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("removexattr", move || {
            let Some(name) = name.to_str() else { return reply.error(FuseErrno::ENODATA) };
            empty(reply, self.union.removexattr(ino.0, name));
        })
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        guarded("access", move || {
            // default_permissions: the kernel has checked the mode bits already.
            empty(reply, self.union.getattr(ino.0, None).map(drop));
        })
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        guarded("create", move || {
            let name = name_or_reply!(name, reply);
            let (a, fh) = match self.union.create(parent.0, name, mode, flags, owner(req, &self.ids)) {
                Ok(created) => created,
                Err(e) => return reply.error(errno(e)),
            };
            let backing = self.backings.open_upper(a.ino, fh, || {
                let file = self.union.backing_file(a.ino).map_err(unbacked_file)?;
                reply.open_backing(&file).map_err(Unbacked::Kernel)
            });
            let (attr, fh, flags) = (file_attr(&a, &self.ids), FileHandle(fh), FopenFlags::empty());
            match backing {
                Some(b) => reply.created_passthrough(&TTL, &attr, Generation(0), fh, flags, &b),
                None => reply.created(&TTL, &attr, Generation(0), fh, flags),
            }
        })
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guarded("fallocate", move || {
            empty(reply, self.union.fallocate(fh.0, offset, length, mode));
        })
    }

    // What follows the kernel asks only of filesystems that offer it. Answered here, quietly,
    // because fuser's defaults log a warning at every call (ioctl, above all, comes at every
    // isatty() of an open file).

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        guarded("ioctl", move || {
            // What a file on a disk filesystem answers to a terminal's or device's ioctl.
            reply.error(FuseErrno::ENOTTY);
        })
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        guarded("copy_file_range", move || {
            // The kernel then copies through read and write, and stops asking.
            reply.error(FuseErrno::ENOSYS);
        })
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        guarded("lseek", move || {
            // SEEK_DATA and SEEK_HOLE then see one extent of data, as the kernel computes itself.
            reply.error(FuseErrno::ENOSYS);
        })
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        guarded("poll", move || {
            // Files are always ready, as on a disk filesystem.
            reply.error(FuseErrno::ENOSYS);
        })
    }

    fn bmap(&self, _req: &Request, _ino: INodeNo, _blocksize: u32, _idx: u64, reply: fuser::ReplyBmap) {
        guarded("bmap", move || {
            reply.error(FuseErrno::ENOSYS);
        })
    }
}
