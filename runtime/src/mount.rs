//! Mounting an image: its layers opened lazily, merged under a writable upper directory by
//! the union filesystem, served over FUSE. Every mount is recorded under `<root>/mounts/` so
//! that one left behind by a killed process is found and cleaned by the next skiff command.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use skiff_fs::index::Kind;
use skiff_fs::union::{self, LayerView, MountOptions, Mounted, ProfiledFile, Union};
use skiff_fs::{ChunkCache, Digest};

use crate::image::{ImageError, StoredImage, PROFILE_ANNOTATION};
use crate::layers::{open_image_layers, OpenedLayer};
use crate::plan::{PrefetchPlan, EARLY_BATCHES, PREFETCH_PLAN_ANNOTATION};
use crate::registry::Client;
use crate::store::{parse_profile, write_atomic, ImageRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("mounting {image} at {target}")]
    Mount {
        image: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unmounting {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{0} is not a skiff mount")]
    NotMounted(PathBuf),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> MountError + '_ {
    move |source| MountError::Io { path: path.to_path_buf(), source }
}

/// What is recorded of a live mount.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountRecord {
    pub target: PathBuf,
    pub image: String,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// The process serving the mount.
    pub pid: u32,
}

/// Where a mount's upper and work directories go by default, and its record.
pub struct MountPaths {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub record: PathBuf,
}

impl MountPaths {
    /// Defaults for `target` under `root`; an explicit `upper` gets its work dir beside it.
    pub fn new(root: &Path, target: &Path, upper: Option<&Path>) -> MountPaths {
        let id = &Digest::of(target.as_os_str().as_encoded_bytes()).hex()[..16];
        let dir = root.join("mounts").join(id);
        let record = root.join("mounts").join(format!("{id}.json"));
        match upper {
            Some(u) => MountPaths { upper: u.to_path_buf(), work: crate::container::work_dir(u), record },
            None => MountPaths { upper: dir.join("upper"), work: dir.join("work"), record },
        }
    }
}

/// Prefetch profiles: record what this mount reads, and prefetch what an earlier one did.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProfileMode {
    pub record: bool,
    pub prefetch: bool,
}

/// A mounted image: unmounted when dropped.
pub struct ImageMount {
    pub layers: Vec<OpenedLayer>,
    pub union: Arc<Union>,
    mounted: Option<Mounted>,
    record: Option<PathBuf>,
    /// Where to save the recorded profile: the store and the image manifest.
    profile: Option<(Store, Digest)>,
    /// Where to add this mount's cache and fetch counters when it ends.
    usage: Option<(PathBuf, ChunkCache)>,
}

impl ImageMount {
    /// Unmounts now, reporting errors; forgets the record, saves a recorded profile.
    pub fn unmount(mut self) -> io::Result<()> {
        let result = self.mounted.take().map_or(Ok(()), Mounted::unmount);
        self.finish();
        result
    }

    fn finish(&mut self) {
        if let Some(r) = self.record.take() {
            let _ = fs::remove_file(r);
        }
        if let Some((root, cache)) = self.usage.take() {
            let totals = crate::usage::Totals::of(&cache.stats(), &self.layers);
            if let Err(e) = crate::usage::add(&root, &totals) {
                tracing::warn!(error = %e, "recording usage totals");
            }
        }
        if let Some((store, digest)) = self.profile.take() {
            let files = self.union.recorded();
            if !files.is_empty() {
                // Without its plan, a profile is still prefetched, once the tables of
                // contents are read.
                if let Err(e) =
                    self.early_plan(&files).and_then(|p| Ok(store.write_profile_plan(&digest, &p)?))
                {
                    tracing::warn!(error = %e, "saving the prefetch profile's plan");
                }
                if let Err(e) = store.write_profile(&digest, &files) {
                    tracing::warn!(error = %e, "saving the prefetch profile");
                }
            }
        }
    }
}

impl ImageMount {
    /// The batches of `files`' prefetch that a start fetches before its layers are indexed.
    fn early_plan(&self, files: &[ProfiledFile]) -> Result<PrefetchPlan, Box<dyn std::error::Error>> {
        let indexes: Vec<_> = self.layers.iter().map(|l| l.layer.index().clone()).collect();
        let mut plan = PrefetchPlan::resolve(&indexes, files)?;
        plan.batches.truncate(EARLY_BATCHES);
        Ok(plan)
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        drop(self.mounted.take());
        self.finish();
    }
}

/// What to mount, and where.
pub struct MountRequest<'a> {
    pub client: &'a Arc<Client>,
    pub store: &'a Store,
    pub cache: &'a ChunkCache,
    pub image: &'a ImageRecord,
    pub target: &'a Path,
    pub paths: MountPaths,
    pub profile: ProfileMode,
    /// The user namespace of the mount's users (identity for none).
    pub ids: skiff_fs::IdMap,
    /// Where a container runtime will mount things (see [`Union::with_mount_points`]); empty
    /// for a plain mount.
    pub mount_points: &'a [(&'a str, Kind)],
}

/// The union of an image's layers under `upper`, not mounted (for diff and commit).
pub fn open_union(
    client: &Arc<Client>,
    store: &Store,
    cache: &ChunkCache,
    image: &StoredImage,
    paths: &MountPaths,
    early: Option<&PrefetchPlan>,
    mount_points: &[(&str, Kind)],
) -> Result<(Vec<OpenedLayer>, Arc<Union>), MountError> {
    let layers = open_image_layers(client, store, cache, image, early)?;
    let lowers: Vec<Arc<dyn LayerView>> =
        layers.iter().map(|l| l.layer.clone() as Arc<dyn LayerView>).collect();
    let union = Union::new(lowers, &paths.upper, &paths.work).map_err(io_at(&paths.upper))?;
    Ok((layers, Arc::new(union.with_mount_points(mount_points))))
}

pub fn mount_image(req: MountRequest<'_>) -> Result<ImageMount, MountError> {
    clean_stale_mounts(req.store.root());
    let paths = &req.paths;
    let image = StoredImage::load(req.store, req.image)?;
    // A profile recorded here wins over the image's; without one, the first batches of the
    // image's plan start on their way with the tables of contents.
    let local = req.profile.prefetch.then(|| req.store.read_profile(&req.image.manifest)).flatten();
    let early = match &local {
        Some(_) => req.store.read_profile_plan(&req.image.manifest),
        None if req.profile.prefetch => embedded_plan(&image),
        None => None,
    };
    let (layers, union) =
        open_union(req.client, req.store, req.cache, &image, paths, early.as_ref(), req.mount_points)?;
    if req.profile.record {
        union.record_reads();
    }
    if req.profile.prefetch {
        let files = local.or_else(|| embedded_profile(&image)).or_else(|| landmark_profile(&layers));
        if let Some(files) = files {
            let union = union.clone();
            std::thread::Builder::new()
                .name("skiff-prefetch".into())
                .spawn(move || {
                    let fetched = union.prefetch(&files);
                    tracing::debug!(files = files.len(), fetched, "prefetch done");
                })
                .map_err(io_at(req.store.root()))?;
        }
    }
    let options =
        MountOptions { fsname: format!("skiff:{}", req.image.name), ids: req.ids, ..MountOptions::default() };
    let mounted = union::mount(union.clone(), req.target, &options).map_err(|source| MountError::Mount {
        image: req.image.name.clone(),
        target: req.target.to_path_buf(),
        source,
    })?;
    let record = MountRecord {
        target: req.target.to_path_buf(),
        image: req.image.name.clone(),
        upper: paths.upper.clone(),
        work: paths.work.clone(),
        pid: std::process::id(),
    };
    let dir = paths.record.parent().expect("mounts dir");
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    write_atomic(&paths.record, &serde_json::to_vec_pretty(&record).expect("serializes"), 0o644)
        .map_err(|source| StoreError::Io { path: paths.record.clone(), source })
        .map_err(ImageError::from)?;
    let profile = req.profile.record.then(|| (req.store.clone(), req.image.manifest));
    let usage = Some((req.store.root().to_path_buf(), req.cache.clone()));
    Ok(ImageMount {
        layers,
        union,
        mounted: Some(mounted),
        record: Some(paths.record.clone()),
        profile,
        usage,
    })
}

/// The profile `skiff convert --prioritize` put in the image's manifest, if it did. One that
/// does not parse is not used: the start goes on without a prefetch.
fn embedded_profile(image: &StoredImage) -> Option<Vec<ProfiledFile>> {
    let json = image.manifest.annotations.get(PROFILE_ANNOTATION)?;
    parse_profile(json.as_bytes())
        .inspect_err(|e| tracing::warn!(image = %image.record.name, error = %e, "the profile in the manifest does not parse"))
        .ok()
}

/// The prefetch plan `skiff convert --prioritize` put in the image's manifest, if it did
/// and it parses.
fn embedded_plan(image: &StoredImage) -> Option<PrefetchPlan> {
    let json = image.manifest.annotations.get(PREFETCH_PLAN_ANNOTATION)?;
    PrefetchPlan::from_json(json)
        .inspect_err(|e| tracing::warn!(image = %image.record.name, error = %e, "the prefetch plan in the manifest does not parse"))
        .ok()
}

/// The files eStargz layers place before their `.prefetch.landmark` (as `skiff convert
/// --prioritize` and stargz-snapshotter's optimizer do), whole: what such an image says a
/// start reads, for images with no profile. Layers are interleaved by how far into its
/// prioritized part each file is, which keeps each layer's order.
fn landmark_profile(layers: &[OpenedLayer]) -> Option<Vec<ProfiledFile>> {
    let mut files: Vec<(f64, String)> = Vec::new();
    for opened in layers {
        let index = opened.layer.index();
        let prioritized = index.prioritized_files();
        let Some(&(last, _)) = prioritized.last() else { continue };
        for (offset, id) in prioritized {
            files.push((offset as f64 / (last + 1) as f64, index.path_of(id)));
        }
    }
    files.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut seen = std::collections::HashSet::new();
    let files: Vec<ProfiledFile> = files
        .into_iter()
        .filter(|(_, path)| seen.insert(path.clone()))
        .map(|(_, path)| ProfiledFile { path, ranges: Vec::new() })
        .collect();
    (!files.is_empty()).then_some(files)
}

/// Whether `path` is a mount point of a skiff FUSE filesystem.
pub fn is_skiff_mount(path: &Path) -> bool {
    crate::mountinfo::mounts()
        .iter()
        .any(|m| m.point == path && (m.fstype == "fuse.skiff" || m.fstype == "fuse"))
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// Every recorded mount.
pub fn mounts(root: &Path) -> Vec<(PathBuf, MountRecord)> {
    let dir = root.join("mounts");
    let Ok(entries) = fs::read_dir(&dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let record = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
            Some((e.path(), record))
        })
        .collect()
}

/// Unmounts what dead processes left mounted and forgets their records.
pub fn clean_stale_mounts(root: &Path) {
    for (path, record) in mounts(root) {
        if record.pid == std::process::id() || alive(record.pid) {
            continue;
        }
        if is_skiff_mount(&record.target) {
            tracing::info!(target = %record.target.display(), pid = record.pid, "cleaning a mount left by a dead process");
            if let Err(e) = nix::mount::umount2(&record.target, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(target = %record.target.display(), error = %e, "could not unmount");
                continue;
            }
        }
        let _ = fs::remove_file(path);
    }
}

/// Unmounts the skiff mount at `target` and waits for its serving process to end.
pub fn unmount(root: &Path, target: &Path) -> Result<(), MountError> {
    clean_stale_mounts(root);
    let record = mounts(root).into_iter().find(|(_, r)| r.target == target);
    if record.is_none() && !is_skiff_mount(target) {
        return Err(MountError::NotMounted(target.to_path_buf()));
    }
    if is_skiff_mount(target) {
        nix::mount::umount2(target, nix::mount::MntFlags::empty())
            .map_err(|source| MountError::Unmount { target: target.to_path_buf(), source })?;
    }
    if let Some((path, r)) = record {
        for _ in 0..100 {
            if !alive(r.pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = fs::remove_file(path);
    }
    Ok(())
}
