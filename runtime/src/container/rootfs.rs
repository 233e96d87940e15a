//! The seam between a container and its root filesystem: a [`RootfsProvider`] makes an image's
//! rootfs appear at a target directory, with the container's changes going to its upper
//! directory, and hands back a [`MountedRootfs`] that undoes it when dropped.
//!
//! [`UnpackedRootfs`] is the full-pull provider (what docker and podman do): every layer is
//! downloaded, verified and unpacked in order into the upper directory the first time, which
//! is then bind-mounted on the target. The lazy FUSE provider serves the same seam.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use skiff_fs::Digest;

use super::unpack::{apply_layer, UnpackError};
use crate::image::stream::{open_layer, Verifying};
use crate::image::{ImageError, LayerFormat, StoredImage};
use crate::manifest::Descriptor;
use crate::reference::Reference;
use crate::registry::Client;
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
    #[error("bind-mounting {upper} on {target}: {source}")]
    Mount { upper: PathBuf, target: PathBuf, source: Errno },
    #[error("image {image}: invalid source repository {source_repo:?}")]
    Source { image: String, source_repo: String },
}

/// How a container gets its image's files: `--pull-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullMode {
    /// Download and unpack every layer before the container starts.
    Full,
}

impl std::str::FromStr for PullMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(PullMode::Full),
            other => Err(format!("unknown pull mode {other:?} (expected: full)")),
        }
    }
}

impl std::fmt::Display for PullMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PullMode::Full => "full",
        })
    }
}

/// The full-pull provider: layers unpacked into the upper directory, bind-mounted on the
/// target. Layers missing from the store are streamed from the registry, unpacked as they
/// arrive and kept in the store for the next container.
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
                .map_err(|e| RootfsError::Io {
                    step: "opening",
                    path: dir.to_path_buf(),
                    source: e.into(),
                })?;
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
            apply_layer(std::os::fd::AsFd::as_fd(&root), &what, &mut tar)?;
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

impl RootfsProvider for UnpackedRootfs {
    fn mount(
        &self,
        image: &StoredImage,
        upper: &Path,
        target: &Path,
    ) -> Result<Box<dyn MountedRootfs>, RootfsError> {
        if !upper.is_dir() {
            let partial = upper.with_extension("partial");
            let io = |step, path: &Path| {
                let path = path.to_path_buf();
                move |source| RootfsError::Io { step, path, source }
            };
            if partial.exists() {
                fs::remove_dir_all(&partial).map_err(io("removing the unfinished", &partial))?;
            }
            fs::create_dir(&partial).map_err(io("creating", &partial))?;
            self.unpack(image, &partial)?;
            fs::rename(&partial, upper).map_err(io("renaming into place", &partial))?;
        }
        nix::mount::mount(Some(upper), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(
            |source| RootfsError::Mount { upper: upper.to_path_buf(), target: target.to_path_buf(), source },
        )?;
        Ok(Box::new(BindMount { target: target.to_path_buf() }))
    }
}

/// The upper directory bound on the target.
struct BindMount {
    target: PathBuf,
}

impl MountedRootfs for BindMount {
    fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.target, MntFlags::empty()) {
            tracing::warn!(target = %self.target.display(), error = %e, "unmounting the rootfs; detaching it");
            let _ = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH);
        }
    }
}
