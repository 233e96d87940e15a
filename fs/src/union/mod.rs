//! The union filesystem: `[upper, lower_n … lower_1]` merged into one tree, with
//! copy-on-write into the upper directory. Plain Rust, path-based, testable without a mount;
//! `fuse.rs` is the only file that speaks FUSE.

mod backing;
mod elf;
mod export;
mod fuse;
mod generation;
mod init_layer;
mod inodes;
mod listing;
mod readthrough;
mod resolve;
mod upper;
mod view;
mod write;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use export::Change;
pub use fuse::{mount, MountOptions, Mounted};
pub use init_layer::{init_entries, InitEntry, Shown};
pub use inodes::{Ino, ROOT_INO};
pub use view::{LayerView, PrefetchChunk};
pub use write::{Owner, RenameFlags, SetAttr};

use crate::index::{Kind, NodeId};
use crate::lazy::Pacer;
use generation::{Generation, Kept};
use inodes::{Identity, Inodes};
use listing::Listings;
use readthrough::ReadThrough;
use resolve::{join, Found, Resolved};

/// Lower entries whose attributes are kept at most; past it they are all dropped.
const KEPT_ATTRS: usize = 1 << 16;
/// Directories whose resolutions are kept at most.
const KEPT_DIRS: usize = 1 << 14;

/// The longest name a layer can hold.
const NAME_MAX: usize = 255;

/// An errno for the kernel. Details are logged where the error is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<nix::Error> for Errno {
    fn from(e: nix::Error) -> Errno {
        Errno(e as i32)
    }
}

pub type FsResult<T> = Result<T, Errno>;

/// Attributes of one merged entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky.
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub rdev: u64,
    /// Whether the entry lives in the upper dir; else it is in a lower layer, immutable.
    pub upper: bool,
}

/// An open file: upper files are host files; lower files are read through their layer.
/// Directories have no handles (see `listing`).
enum Handle {
    Upper { file: File, ino: Ino },
    Lower { layer: usize, node: NodeId },
}

/// One entry of a merged directory listing, with its attributes (for readdirplus).
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: String,
    /// Where a read resumes after this entry.
    pub cookie: u64,
    pub attr: Attr,
}

pub struct Union {
    /// Lower layers, top first.
    layers: Vec<Arc<dyn LayerView>>,
    upper: PathBuf,
    /// Beside the upper on the same filesystem: copy-ups are built here, then renamed in.
    work: PathBuf,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// Serializes changes to the tree (copy-up, create, remove, rename); taken through
    /// `generation`.
    changes: Mutex<()>,
    generation: Generation,
    /// Directory listings kept until the tree changes.
    listings: Listings,
    /// Attributes of entries found in lower layers, kept until the tree changes: the kernel
    /// asks for a directory's again after every read of it.
    lower_attrs: Kept<Ino, Attr>,
    /// Where directories resolve to, by path, kept until one moves, goes or changes layer
    /// (`structure` counts those changes alone): a request deep in the tree then costs a
    /// lookup here instead of a stat and an xattr read of every component in the upper.
    dirs: Kept<String, Resolved>,
    structure: Generation,
    /// When recording a profile: the bytes of lower files read, in the order first read.
    recorder: Mutex<Option<Recorder>>,
    /// Lower files fetched whole in the background when the registry is far.
    read_through: ReadThrough,
}

/// About how many compressed bytes of a profile are fetched together, in blob order.
const PREFETCH_BATCH: u64 = 512 << 10;
/// The most prefetch requests on their way at the same time; a [`Pacer`] decides how many
/// are.
const PREFETCH_STREAMS: usize = 8;

#[derive(Default)]
struct Recorder {
    /// The ranges of each lower file read so far.
    read: HashMap<(usize, NodeId), Vec<(u64, u64)>>,
    /// The bytes read, in the order first read: consecutive reads of one file share an entry.
    files: Vec<ProfiledFile>,
    /// The file of the last entry of `files`.
    last: Option<(usize, NodeId)>,
}

/// Bytes of a lower file a workload read: one entry of a prefetch profile. A profile lists
/// bytes in the order they were first read, so a file read at several times (a binary
/// faulting its pages in) has several entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfiledFile {
    /// The path in the merged tree.
    pub path: String,
    /// Sorted, disjoint `start..end` byte ranges read; empty means the whole file.
    pub ranges: Vec<(u64, u64)>,
}

/// A prefetch's batches as the requests they make: for each batch, the chunks of each layer
/// it touches, the layer of its first chunk first, cut into requests as that layer would.
fn prefetch_requests(
    layers: &[Arc<dyn LayerView>],
    batches: &[Vec<(usize, PrefetchChunk)>],
) -> Vec<(usize, Vec<PrefetchChunk>)> {
    let mut requests = Vec::new();
    for batch in batches {
        let mut order: Vec<usize> = Vec::new();
        for &(layer, _) in batch {
            if !order.contains(&layer) {
                order.push(layer);
            }
        }
        for layer in order {
            let chunks = batch.iter().filter(|(l, _)| *l == layer).map(|(_, c)| *c).collect();
            requests.extend(layers[layer].prefetch_requests(chunks).into_iter().map(|r| (layer, r)));
        }
    }
    requests
}

impl Union {
    /// A union of `lowers` (bottom layer first, as in a manifest) under the writable `upper`
    /// directory; `work` is an empty directory on the same filesystem as `upper`.
    pub fn new(lowers: Vec<Arc<dyn LayerView>>, upper: &Path, work: &Path) -> io::Result<Union> {
        std::fs::create_dir_all(upper)?;
        std::fs::create_dir_all(work)?;
        let mut layers = lowers;
        layers.reverse();
        Ok(Union {
            layers,
            upper: upper.to_path_buf(),
            work: work.to_path_buf(),
            inodes: Mutex::new(Inodes::new()),
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
            changes: Mutex::new(()),
            generation: Generation::default(),
            listings: Listings::default(),
            lower_attrs: Kept::new(KEPT_ATTRS),
            dirs: Kept::new(KEPT_DIRS),
            structure: Generation::default(),
            recorder: Mutex::new(None),
            read_through: ReadThrough::default(),
        })
    }

    pub fn upper(&self) -> &Path {
        &self.upper
    }

    /// Starts recording which lower files are read, for a prefetch profile.
    pub fn record_reads(&self) {
        *self.recorder.lock().unwrap() = Some(Recorder::default());
    }

    /// The bytes of lower files read since `record_reads`, in the order first read.
    pub fn recorded(&self) -> Vec<ProfiledFile> {
        self.recorder.lock().unwrap().as_ref().map(|r| r.files.clone()).unwrap_or_default()
    }

    fn record(&self, layer: usize, node: NodeId, start: u64, end: u64) {
        let mut guard = self.recorder.lock().unwrap();
        let Some(r) = guard.as_mut() else { return };
        let read = r.read.entry((layer, node)).or_default();
        let fresh = crate::lazy::readlog::uncovered(read, start, end);
        if fresh.is_empty() {
            return;
        }
        crate::lazy::readlog::merge(read, start, end);
        if r.last != Some((layer, node)) {
            let path = self.layers[layer].index().path_of(node);
            r.files.push(ProfiledFile { path, ranges: Vec::new() });
            r.last = Some((layer, node));
        }
        let entry = r.files.last_mut().expect("an entry was pushed");
        for (s, e) in fresh {
            crate::lazy::readlog::merge(&mut entry.ranges, s, e);
        }
    }

    /// Fetches the bytes a profile names (files by merged path, with the ranges read) that
    /// live in lower layers, in the background of foreground reads; returns the bytes
    /// fetched.
    ///
    /// The chunks go in the profile's order (the order the workload first read them), in
    /// batches of about `PREFETCH_BATCH` compressed bytes, each batch fetched in blob order
    /// (coalesced), the layer of its first chunk first, in the requests each layer makes
    /// (one per run of chunks without a wide gap). Each request goes out paced after those
    /// before it, never waiting for their end: what is needed first arrives first, and the
    /// link stays busy however far the registry. From the call on, no file is read through
    /// (see `readthrough`): the profile names what the workload reads.
    pub fn prefetch(&self, files: &[ProfiledFile]) -> u64 {
        self.read_through.turn_off();
        let batches = self.prefetch_batches(files);
        for (layer, lower) in self.layers.iter().enumerate() {
            let planned = batches.iter().flatten().filter(|(l, _)| *l == layer).map(|(_, (_, c))| c.digest);
            lower.plan_prefetch(planned.collect());
        }
        // Each batch's requests in order, each sent once those before it owe about what the
        // link carries while a request is answered: the link stays busy, and what the
        // workload read first arrives first. A layer that fails is skipped (it logs why).
        let requests = prefetch_requests(&self.layers, &batches);
        let pacer = Pacer::default();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let fetched = AtomicU64::new(0);
        let take = || {
            let (layer, chunks) = requests.get(next.fetch_add(1, Ordering::Relaxed))?;
            Some(((*layer, chunks), chunks.iter().map(|(_, c)| c.compressed_len).sum()))
        };
        std::thread::scope(|scope| {
            for _ in 0..PREFETCH_STREAMS {
                scope.spawn(|| {
                    while let Some(((layer, chunks), ticket)) = pacer.admit(take) {
                        let bytes = self.layers[layer].prefetch(chunks, &ticket).unwrap_or(0);
                        fetched.fetch_add(bytes, Ordering::Relaxed);
                    }
                });
            }
        });
        tracing::debug!(pace = %pacer, "prefetch paced");
        fetched.into_inner()
    }

    /// The chunks of a profile's lower files, each once, in the profile's order, cut into
    /// batches of about `PREFETCH_BATCH` compressed bytes; each chunk with its layer.
    pub fn prefetch_batches(&self, files: &[ProfiledFile]) -> Vec<Vec<(usize, PrefetchChunk)>> {
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut seen = std::collections::HashSet::new();
        let mut found: HashMap<&str, Option<(usize, NodeId)>> = HashMap::new();
        for file in files {
            let lower = *found.entry(&file.path).or_insert_with(|| match self.resolve(&file.path) {
                Some(Resolved { found: Found::Lower { layer, node }, .. })
                    if self.layers[layer].index().node(node).kind == Kind::File =>
                {
                    Some((layer, node))
                }
                _ => None,
            });
            let Some((layer, node)) = lower else { continue };
            let index = self.layers[layer].index();
            let chunks: Vec<crate::index::ChunkRef> = if file.ranges.is_empty() {
                index.file_chunks(node).to_vec()
            } else {
                file.ranges.iter().flat_map(|&(s, e)| index.chunks(node, s..e).to_vec()).collect()
            };
            for chunk in chunks {
                if !seen.insert(chunk.digest) {
                    continue;
                }
                batch_bytes += chunk.compressed_len;
                batch.push((layer, (node, chunk)));
                if batch_bytes >= PREFETCH_BATCH {
                    batches.push(std::mem::take(&mut batch));
                    batch_bytes = 0;
                }
            }
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        batches
    }

    fn path_of(&self, ino: Ino) -> FsResult<String> {
        self.inodes.lock().unwrap().path(ino).ok_or(Errno(libc::ESTALE))
    }

    fn resolve_ino(&self, ino: Ino) -> FsResult<(String, Resolved)> {
        let path = self.path_of(ino)?;
        let resolved = self.resolve(&path).ok_or(Errno(libc::ENOENT))?;
        Ok((path, resolved))
    }

    /// The inode of a resolved path, shared among a hardlinked file's names.
    fn ino_of(&self, path: &str, r: &Resolved) -> Ino {
        let identity = match &r.found {
            Found::Upper(m) if !m.is_dir() && m.nlink() > 1 => Some(Identity::Upper(m.ino())),
            Found::Lower { layer, node } => {
                let n = self.layers[*layer].index().node(*node);
                (n.kind != Kind::Dir && n.nlink > 1).then(|| Identity::Lower(*layer, n.link.unwrap_or(*node)))
            }
            _ => None,
        };
        self.inodes.lock().unwrap().ino_for(path, identity)
    }

    fn attr_of(&self, ino: Ino, r: &Resolved) -> Attr {
        match &r.found {
            Found::Upper(m) => Attr {
                ino,
                kind: resolve::kind_of(m),
                perm: m.mode() & 0o7777,
                nlink: m.nlink() as u32,
                uid: m.uid(),
                gid: m.gid(),
                size: m.size(),
                blocks: m.blocks(),
                atime: time(m.atime(), m.atime_nsec()),
                mtime: time(m.mtime(), m.mtime_nsec()),
                ctime: time(m.ctime(), m.ctime_nsec()),
                rdev: m.rdev(),
                upper: true,
            },
            Found::Lower { layer, node } => {
                let n = self.layers[*layer].index().node(*node);
                let t = time(n.mtime, 0);
                Attr {
                    ino,
                    kind: n.kind,
                    perm: n.mode,
                    nlink: n.nlink,
                    uid: n.uid,
                    gid: n.gid,
                    size: match n.kind {
                        Kind::Dir => 4096,
                        // As lstat has it: the target's length.
                        Kind::Symlink => n.target.as_ref().map_or(0, |t| t.len() as u64),
                        _ => n.size,
                    },
                    blocks: n.size.div_ceil(512),
                    atime: t,
                    mtime: t,
                    ctime: t,
                    rdev: libc::makedev(n.rdev.0, n.rdev.1),
                    upper: false,
                }
            }
        }
    }

    pub fn lookup(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        if name.len() > NAME_MAX {
            // No layer can hold it; the kernel passes FUSE names up to 1024 bytes.
            return Err(Errno(libc::ENAMETOOLONG));
        }
        let (parent_path, parent_r) = self.resolve_ino(parent)?;
        if parent_r.kind(self) != Kind::Dir {
            return Err(Errno(libc::ENOTDIR));
        }
        let r = self.resolve_child(&parent_r, &parent_path, name).ok_or(Errno(libc::ENOENT))?;
        let path = join(&parent_path, name);
        let ino = self.ino_of(&path, &r);
        Ok(self.attr_of(ino, &r))
    }

    /// The attributes of `ino`; of the file open as `fh` if that is an upper file. An open
    /// upper file is there even after its last name is gone (fstat of an unlinked file).
    pub fn getattr(&self, ino: Ino, fh: Option<u64>) -> FsResult<Attr> {
        if let Some(h) = fh.and_then(|fh| self.handle(fh).ok()) {
            if let Handle::Upper { file, .. } = &*h {
                return Ok(self.attr_of(ino, &Resolved::upper(file.metadata()?)));
            }
        }
        let generation = self.generation.stable();
        if let Some(attr) = self.lower_attrs.get(&ino, generation) {
            return Ok(attr);
        }
        match self.resolve_ino(ino) {
            Err(Errno(libc::ENOENT)) => {
                let meta = self.open_upper_meta(ino).ok_or(Errno(libc::ENOENT))??;
                Ok(self.attr_of(ino, &Resolved::upper(meta)))
            }
            Ok((_, r)) => {
                let attr = self.attr_of(ino, &r);
                if !r.in_upper() {
                    self.lower_attrs.keep(ino, attr, generation, &self.generation);
                }
                Ok(attr)
            }
            Err(e) => Err(e),
        }
    }

    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let (path, r) = self.resolve_ino(ino)?;
        match &r.found {
            Found::Upper(_) => {
                use std::os::unix::ffi::OsStrExt;
                Ok(std::fs::read_link(upper::host(&self.upper, &path))?.as_os_str().as_bytes().to_vec())
            }
            Found::Lower { layer, node } => {
                let n = self.layers[*layer].index().node(*node);
                n.target.clone().map(String::into_bytes).ok_or(Errno(libc::EINVAL))
            }
        }
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles.lock().unwrap().get(&fh).cloned().ok_or(Errno(libc::EBADF))
    }

    /// The metadata of an open upper file of `ino`, if there is one.
    fn open_upper_meta(&self, ino: Ino) -> Option<io::Result<std::fs::Metadata>> {
        let handles = self.handles.lock().unwrap();
        handles.values().find_map(|h| match &**h {
            Handle::Upper { file, ino: i } if *i == ino => Some(file.metadata()),
            _ => None,
        })
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// Opens a file; a write open of a lower file copies it up first. Also says whether the
    /// file's bytes can never change while open (a lower file), so the kernel may cache them.
    pub fn open(&self, ino: Ino, flags: i32) -> FsResult<(u64, bool)> {
        let access = flags & libc::O_ACCMODE;
        let writes = access != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let (path, r) = self.resolve_ino(ino)?;
        if r.kind(self) == Kind::Dir {
            return Err(Errno(libc::EISDIR));
        }
        let immutable = !(writes || r.in_upper());
        let handle = if !immutable {
            if !r.in_upper() {
                self.copy_up(&path)?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.read(access != libc::O_WRONLY).write(access != libc::O_RDONLY);
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(
                flags & (libc::O_TRUNC | libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC) | libc::O_NOFOLLOW,
            );
            Handle::Upper { file: options.open(upper::host(&self.upper, &path))?, ino }
        } else {
            let Found::Lower { layer, node } = r.found else { unreachable!("checked in_upper") };
            Handle::Lower { layer, node }
        };
        Ok((self.add_handle(handle), immutable))
    }

    /// The upper file of `ino`, open for reading and writing: the one host file the kernel
    /// reads and writes for every open of `ino` it serves by itself (FUSE passthrough).
    pub fn backing_file(&self, ino: Ino) -> FsResult<File> {
        let (path, r) = self.resolve_ino(ino)?;
        if !r.in_upper() || r.kind(self) != Kind::File {
            return Err(Errno(libc::EINVAL));
        }
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).custom_flags(libc::O_NOFOLLOW);
        Ok(options.open(upper::host(&self.upper, &path))?)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let mut buf = vec![0u8; size as usize];
        let n = match &*self.handle(fh)? {
            Handle::Upper { file: f, .. } => {
                let mut done = 0;
                while done < buf.len() {
                    match f.read_at(&mut buf[done..], offset + done as u64)? {
                        0 => break,
                        n => done += n,
                    }
                }
                done
            }
            Handle::Lower { layer, node } => {
                let n = self.layers[*layer].read(*node, offset, &mut buf)?;
                self.record(*layer, *node, offset, offset + n as u64);
                // After the read, which may just have measured how far the registry is.
                self.read_through.after_read(&self.layers, *layer, *node, offset, &buf[..n]);
                n
            }
        };
        buf.truncate(n);
        Ok(buf)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        match &*self.handle(fh)? {
            Handle::Upper { file: f, .. } => {
                f.write_all_at(data, offset)?;
                Ok(data.len() as u32)
            }
            _ => Err(Errno(libc::EBADF)),
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        if let Handle::Upper { file: f, .. } = &*self.handle(fh)? {
            if datasync {
                f.sync_data()?
            } else {
                f.sync_all()?
            }
        }
        Ok(())
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        match &*self.handle(fh)? {
            Handle::Upper { file: f, .. } => {
                let flags = nix::fcntl::FallocateFlags::from_bits_truncate(mode);
                nix::fcntl::fallocate(f, flags, offset as i64, len as i64)?;
                Ok(())
            }
            _ => Err(Errno(libc::EBADF)),
        }
    }

    /// Up to `limit` entries of directory `ino` from cookie `after` on (0, 1 and 2 start
    /// at the first entry: they are before, at and after `.` and `..`).
    pub fn readdir(&self, ino: Ino, after: u64, limit: usize) -> FsResult<Vec<DirEntry>> {
        let (path, r) = self.resolve_ino(ino)?;
        if r.kind(self) != Kind::Dir {
            return Err(Errno(libc::ENOTDIR));
        }
        let names =
            self.listings.names(ino, &self.generation, || Ok(self.list(&r, &path)?.into_keys().collect()))?;
        let start = names.partition_point(|(cookie, _)| *cookie <= after);
        let mut entries = Vec::new();
        for (cookie, name) in &names[start..] {
            if entries.len() == limit {
                break;
            }
            let Some(cr) = self.resolve_child(&r, &path, name) else { continue };
            let ino = self.ino_of(&join(&path, name), &cr);
            entries.push(DirEntry { name: name.clone(), cookie: *cookie, attr: self.attr_of(ino, &cr) });
        }
        Ok(entries)
    }

    pub fn statfs(&self) -> FsResult<nix::sys::statvfs::Statvfs> {
        Ok(nix::sys::statvfs::statvfs(&self.upper)?)
    }

    pub fn getxattr(&self, ino: Ino, name: &str) -> FsResult<Vec<u8>> {
        if name.starts_with(upper::PRIVATE_XATTR_PREFIX) {
            return Err(Errno(libc::ENODATA));
        }
        let (path, r) = self.resolve_ino(ino)?;
        match &r.found {
            Found::Upper(_) => xattr::get(upper::host(&self.upper, &path), name)?.ok_or(Errno(libc::ENODATA)),
            Found::Lower { layer, node } => {
                self.layers[*layer].index().node(*node).xattrs.get(name).cloned().ok_or(Errno(libc::ENODATA))
            }
        }
    }

    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<String>> {
        let (path, r) = self.resolve_ino(ino)?;
        match &r.found {
            Found::Upper(_) => Ok(upper::visible_xattrs(&upper::host(&self.upper, &path))?),
            Found::Lower { layer, node } => {
                Ok(self.layers[*layer].index().node(*node).xattrs.keys().cloned().collect())
            }
        }
    }
}

fn time(secs: i64, nsec: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}
