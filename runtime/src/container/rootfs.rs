//! The seam between a container and its root filesystem: a [`RootfsProvider`] makes an image's
//! rootfs appear at a target directory, with the container's changes going to its upper
//! directory, and hands back a [`MountedRootfs`] that undoes it when dropped.
//!
//! [`LazyRootfs`] (the default) mounts the image with skiff's union filesystem: nothing is
//! downloaded before the container starts, each file's bytes come from the registry the first
//! time they are read. [`UnpackedRootfs`] is the full-pull provider (what docker and podman
//! do): every layer is downloaded, verified and unpacked once per image into a tree shared by
//! the image's containers, which kernel overlayfs puts under each container's upper directory.
//! Both keep a container's changes in the same overlayfs-convention upper directory.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use skiff_fs::estargz::RESERVED_NAMES;
use skiff_fs::index::{EntryMeta, Kind};
use skiff_fs::union::init_entries;
use skiff_fs::{ChunkCache, Digest};

use super::unpack::{apply_layer, UnpackError};
use crate::image::stream::{open_layer, Verifying};
use crate::image::{ImageError, LayerFormat, StoredImage};
use crate::manifest::Descriptor;
use crate::mount::{mount_image, ImageMount, MountPaths, MountRequest, ProfileMode};
use crate::reference::Reference;
use crate::registry::Client;
use crate::sandbox::{MountPointKind, MOUNT_POINTS};
use crate::store::{Staged, Store, StoreError};

/// Makes an image's root filesystem available to a container.
pub trait RootfsProvider: Send + Sync {
    /// Makes `image` appear at `target` (an existing empty directory), its changes kept in
    /// `upper` (created when missing; reused as is when a stopped container starts again).
    fn mount(
        &self,
        image: &StoredImage,
        upper: &Path,
        target: &Path,
    ) -> Result<Box<dyn MountedRootfs>, RootfsError>;
}

/// A mounted rootfs: unmounted (and anything the provider holds released) when dropped.
pub trait MountedRootfs: Send {
    /// Where the rootfs is: the container's `/`.
    fn path(&self) -> &Path;
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("{step} {path}: {source}")]
    Io { step: &'static str, path: PathBuf, source: io::Error },
    #[error("mounting overlayfs of {lower} under {upper} on {target}: {source}")]
    Overlay { lower: PathBuf, upper: PathBuf, target: PathBuf, source: Errno },
    #[error("overlayfs cannot take the path {0} (it holds ',' or ':'); choose another --root")]
    OverlayPath(PathBuf),
    #[error(transparent)]
    Lazy(#[from] crate::mount::MountError),
    #[error("image {image}: invalid source repository {source_repo:?}")]
    Source { image: String, source_repo: String },
}

/// How a container gets its image's files: `--pull-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullMode {
    /// Mount at once; fetch each file's bytes when they are first read.
    Lazy,
    /// Download and unpack every layer before the container starts.
    Full,
}

impl std::str::FromStr for PullMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lazy" => Ok(PullMode::Lazy),
            "full" => Ok(PullMode::Full),
            other => Err(format!("unknown pull mode {other:?} (expected: lazy or full)")),
        }
    }
}

impl std::fmt::Display for PullMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PullMode::Lazy => "lazy",
            PullMode::Full => "full",
        })
    }
}

/// The full-pull provider: an image's layers unpacked once into `<root>/rootfs/<manifest>`,
/// mounted read-only under each container's upper directory by kernel overlayfs. Layers
/// missing from the store are streamed from the registry, unpacked as they arrive and kept in
/// the store.
pub struct UnpackedRootfs {
    client: Arc<Client>,
    store: Store,
}

impl UnpackedRootfs {
    pub fn new(client: Arc<Client>, store: Store) -> UnpackedRootfs {
        UnpackedRootfs { client, store }
    }

    fn unpack(&self, image: &StoredImage, dir: &Path) -> Result<(), RootfsError> {
        let record = &image.record;
        let source: Reference = format!("{}@{}", record.source, record.manifest).parse().map_err(|_| {
            RootfsError::Source { image: record.name.clone(), source_repo: record.source.clone() }
        })?;
        let config = image.config()?;
        let root =
            nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| io_err("opening", dir)(e.into()))?;
        for (desc, diff_id) in image.manifest.layers.iter().zip(config.rootfs().diff_ids()) {
            let diff_id: Digest = diff_id.parse().expect("checked by StoredImage::config");
            let what = format!("layer {} of {}", desc.digest, record.name);
            let mut staged = None;
            let mut tar = if self.store.has(&desc.digest) {
                open_layer(&self.client, &self.store, &source, desc, diff_id)?
            } else {
                let (tar, stage) = self.fetch(&source, desc, diff_id, &what)?;
                staged = Some(stage);
                tar
            };
            // Lazily mounted, an eStargz layer does not show these either.
            let leave_out: &[&str] = match LayerFormat::declared(desc) {
                LayerFormat::Estargz { .. } => &RESERVED_NAMES,
                _ => &[],
            };
            apply_layer(std::os::fd::AsFd::as_fd(&root), &what, &mut tar, leave_out)?;
            drop(tar);
            if let Some(staged) = staged {
                let staged = Arc::try_unwrap(staged).ok().expect("the stream is gone").into_inner();
                let staged = staged.unwrap_or_else(|e| e.into_inner());
                staged.finish(Some(&desc.digest), Some(desc.size), &what)?.commit()?;
            }
        }
        Ok(())
    }

    /// The layer's tar from the registry, its compressed bytes copied into `Staged` as they
    /// pass (checked against the digest by the stream, published once it is whole).
    fn fetch(
        &self,
        source: &Reference,
        desc: &Descriptor,
        diff_id: Digest,
        what: &str,
    ) -> Result<(Box<dyn Read + Send>, SharedStage), RootfsError> {
        let blob = self.client.get_blob(source, &desc.digest, None).map_err(ImageError::from)?;
        let staged = Arc::new(std::sync::Mutex::new(self.store.stage()?));
        let tee = Tee { inner: blob, copy: staged.clone() };
        let raw = Verifying::new(tee, desc.digest, Some(desc.size), what.to_string());
        let tar: Box<dyn Read + Send> = match LayerFormat::declared(desc) {
            LayerFormat::Gzip | LayerFormat::Estargz { .. } => {
                Box::new(flate2::read::MultiGzDecoder::new(raw))
            }
            LayerFormat::Zstd | LayerFormat::ZstdChunked => Box::new(
                zstd::stream::read::Decoder::new(raw)
                    .map_err(|e| ImageError::Invalid { what: what.to_string(), why: format!("zstd: {e}") })?,
            ),
            LayerFormat::Uncompressed => Box::new(raw),
            LayerFormat::Unknown(mt) => {
                return Err(ImageError::Invalid {
                    what: what.to_string(),
                    why: format!("unsupported layer media type {mt:?}"),
                }
                .into())
            }
        };
        let tar = Verifying::new(tar, diff_id, None, format!("uncompressed {what} (diff_id)"));
        Ok((Box::new(tar), staged))
    }
}

/// A store object being written by the stream that reads it.
type SharedStage = Arc<std::sync::Mutex<Staged>>;

/// Copies what it reads into a staged store object.
struct Tee<R> {
    inner: R,
    copy: SharedStage,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.lock().unwrap_or_else(|e| e.into_inner()).write_all(&buf[..n])?;
        Ok(n)
    }
}

impl UnpackedRootfs {
    /// The image's unpacked tree, made (under a temporary name, renamed into place when whole)
    /// if this is its first container.
    fn unpacked(&self, image: &StoredImage) -> Result<PathBuf, RootfsError> {
        let dir = self.store.root().join("rootfs");
        let tree = dir.join(image.record.manifest.hex());
        if tree.is_dir() {
            return Ok(tree);
        }
        // One process unpacks an image at a time: another container of it waits for that
        // tree instead of downloading every layer again. The lock goes once the tree is in
        // place (whoever still waits on it then finds the tree).
        let locks = self.store.root().join("rootfs-locks");
        fs::create_dir_all(&locks).map_err(io_err("creating", &locks))?;
        let lock_path = locks.join(image.record.manifest.hex());
        let lock = crate::store::open_lock(&lock_path).map_err(io_err("opening", &lock_path))?;
        fs2::FileExt::lock_exclusive(&lock).map_err(io_err("locking", &lock_path))?;
        if tree.is_dir() {
            return Ok(tree);
        }
        let placed = self.unpack_into(image, &dir, &tree);
        if placed.is_ok() {
            let _ = fs::remove_file(&lock_path);
        }
        placed
    }

    /// Unpacks the image under a temporary name in `dir`, then renames it to `tree`.
    fn unpack_into(&self, image: &StoredImage, dir: &Path, tree: &Path) -> Result<PathBuf, RootfsError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let partial = dir.join(format!(".{}.{}.partial", image.record.manifest.hex(), std::process::id()));
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(io_err("removing the unfinished", &partial))?;
        }
        fs::create_dir(&partial).map_err(io_err("creating", &partial))?;
        let unpacked = self.unpack(image, &partial);
        // Another container of the image may have finished first: then its tree is used.
        let placed = unpacked.and_then(|()| match fs::rename(&partial, tree) {
            Err(_) if tree.is_dir() => Ok(()),
            other => other.map_err(io_err("renaming into place", &partial)),
        });
        if partial.exists() {
            let _ = fs::remove_dir_all(&partial);
        }
        placed.map(|()| tree.to_path_buf())
    }
}

/// Removes unpacked trees nobody is unpacking any more (their process gone) and trees of
/// images neither stored nor used by a container. Called by `rmi`.
pub fn remove_unused_unpacked(
    store: &Store,
    containers: &super::Containers,
) -> Result<(), super::ContainerError> {
    let dir = store.root().join("rootfs");
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(()) };
    let images = store.images().map_err(ImageError::from)?;
    let kept: std::collections::HashSet<String> = images
        .into_iter()
        .chain(containers.list()?.into_iter().map(|state| state.image))
        .map(|record| record.manifest.hex().to_string())
        .collect();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = match name.strip_suffix(".partial").and_then(|n| n.rsplit_once('.')) {
            Some((_, pid)) => pid.parse::<i32>().is_ok_and(|pid| super::ProcessId::of(pid).is_none()),
            None => !kept.contains(&name),
        };
        if stale {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(super::io_err("removing", &path))?;
        }
    }
    Ok(())
}

impl RootfsProvider for UnpackedRootfs {
    fn mount(
        &self,
        image: &StoredImage,
        upper: &Path,
        target: &Path,
    ) -> Result<Box<dyn MountedRootfs>, RootfsError> {
        let lower = self.unpacked(image)?;
        let init = init_layer(&lower, upper)?;
        let work = work_dir(upper);
        for dir in [upper, &work] {
            fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        for path in [&init, &lower, upper, &work, target] {
            if path.to_string_lossy().contains([',', ':']) {
                return Err(RootfsError::OverlayPath(path.to_path_buf()));
            }
        }
        let data = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            init.display(),
            lower.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(data.as_str()))
            .map_err(|source| RootfsError::Overlay {
                lower,
                upper: upper.to_path_buf(),
                target: target.to_path_buf(),
                source,
            })?;
        Ok(Box::new(KernelMount { target: target.to_path_buf() }))
    }
}

/// The error of `step` on `path`, for `map_err`.
fn io_err(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Io { step, path, source }
}

/// The scratch directory overlayfs (kernel or skiff's) needs beside an upper directory.
pub fn work_dir(upper: &Path) -> PathBuf {
    beside(upper, "skiff-work")
}

/// A hidden directory beside `upper`, named after it.
fn beside(upper: &Path, suffix: &str) -> PathBuf {
    let name = upper.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    upper.parent().unwrap_or(Path::new("/")).join(format!(".{name}.{suffix}"))
}

/// The sandbox's mount points, as skiff-fs names their kinds.
fn mount_points() -> Vec<(&'static str, Kind)> {
    let kind = |k| match k {
        MountPointKind::Dir => Kind::Dir,
        MountPointKind::File => Kind::File,
    };
    MOUNT_POINTS.iter().map(|&(path, k)| (path, kind(k))).collect()
}

/// A container's init layer over the unpacked `tree`, as a directory beside `upper` (made
/// afresh): the mount points the tree lacks (see [`init_entries`]), for overlayfs to put
/// above the tree.
fn init_layer(tree: &Path, upper: &Path) -> Result<PathBuf, RootfsError> {
    let dir = beside(upper, "skiff-init");
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
    }
    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    // `init_entries` asks about each path's parents first, and only below directories: no
    // lstat here passes through a symlink of the image.
    let entries = init_entries(&mount_points(), |path| {
        let m = fs::symlink_metadata(tree.join(path)).ok()?;
        let kind = if m.is_dir() {
            Kind::Dir
        } else if m.file_type().is_symlink() {
            Kind::Symlink
        } else {
            Kind::File
        };
        let meta = EntryMeta {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: m.mtime(),
            target: None,
            rdev: (0, 0),
            xattrs: Default::default(),
        };
        Some((meta, m.nlink() as u32))
    });
    for e in &entries {
        let path = dir.join(&e.path);
        match e.meta.kind {
            Kind::Dir => fs::create_dir(&path).map(drop),
            _ => fs::File::create(&path).map(drop),
        }
        .map_err(io_err("creating", &path))?;
        // Owner first: a change of owner clears setuid and setgid bits.
        std::os::unix::fs::lchown(&path, Some(e.meta.uid), Some(e.meta.gid))
            .map_err(io_err("setting the owner of", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(e.meta.mode))
            .map_err(io_err("setting the mode of", &path))?;
    }
    // Times last, children first: making an entry changes its directory's.
    for e in entries.iter().rev() {
        let path = dir.join(&e.path);
        let time = nix::sys::time::TimeSpec::new(e.meta.mtime, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &time,
            &time,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io_err("setting the times of", &path)(e.into()))?;
    }
    Ok(dir)
}

/// A kernel mount on the target.
struct KernelMount {
    target: PathBuf,
}

impl MountedRootfs for KernelMount {
    fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.target, MntFlags::empty()) {
            tracing::warn!(target = %self.target.display(), error = %e, "unmounting the rootfs; detaching it");
            let _ = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH);
        }
    }
}

/// The lazy provider: the image mounted by skiff's union filesystem, served by this process
/// for as long as the container runs.
pub struct LazyRootfs {
    client: Arc<Client>,
    store: Store,
    cache: ChunkCache,
    profile: ProfileMode,
    /// The container's user namespace, whose root must own the image's files.
    ids: skiff_fs::IdMap,
}

impl LazyRootfs {
    pub fn new(
        client: Arc<Client>,
        store: Store,
        cache: ChunkCache,
        profile: ProfileMode,
        ids: skiff_fs::IdMap,
    ) -> LazyRootfs {
        LazyRootfs { client, store, cache, profile, ids }
    }
}

impl RootfsProvider for LazyRootfs {
    fn mount(
        &self,
        image: &StoredImage,
        upper: &Path,
        target: &Path,
    ) -> Result<Box<dyn MountedRootfs>, RootfsError> {
        let paths = MountPaths::new(self.store.root(), target, Some(upper));
        let mount = mount_image(MountRequest {
            client: &self.client,
            store: &self.store,
            cache: &self.cache,
            image: &image.record,
            target,
            paths,
            profile: self.profile,
            ids: self.ids.clone(),
            mount_points: &mount_points(),
        })?;
        Ok(Box::new(FuseRootfs { _mount: mount, target: target.to_path_buf() }))
    }
}

/// The union mount, unmounted (and its profile and usage saved) when dropped.
struct FuseRootfs {
    _mount: ImageMount,
    target: PathBuf,
}

impl MountedRootfs for FuseRootfs {
    fn path(&self) -> &Path {
        &self.target
    }
}
