//! The local image store: content-addressed objects and the table of image names.
//!
//! Layout under the root (default `/var/lib/skiff`):
//! - `content/sha256/<hex>`: manifests, indexes, configs and fully pulled layers. An object
//!   appears under its name only after it was written whole to `tmp/`, synced and verified, so
//!   a crash leaves at worst a stray temp file, never an object that looks valid and is not.
//! - `refs.json`: image name → [`ImageRecord`], replaced atomically under `refs.lock`.
//! - `indexes/<hex>.bin`: the index of each layer opened lazily (its tree and chunks), in a
//!   compact binary form read at every mount; built again when missing or damaged.

mod refs;

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use skiff_fs::index::LayerIndex;
use skiff_fs::union::ProfiledFile;
use skiff_fs::{Digest, Sha256Writer};

pub use refs::ImageRecord;

use crate::plan::PrefetchPlan;

pub const DEFAULT_ROOT: &str = "/var/lib/skiff";
/// Temp files older than this were left by a crashed process and are removed at open.
const STALE_TEMP: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("stored object {digest} at {path} is corrupt (its content hashes to {actual}); remove the image and pull it again")]
    Corrupt { digest: Digest, path: PathBuf, actual: Digest },
    #[error("{what}: expected {expected}, got {actual} ({size} bytes)")]
    Mismatch { what: String, expected: Digest, actual: Digest, size: u64 },
    #[error("{what}: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("refs table {path} is damaged: {why}")]
    Refs { path: PathBuf, why: String },
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error("{input:?} matches more than one image: {matches}")]
    Ambiguous { input: String, matches: String },
    #[error("image {name} needs {digest}, which is not in the store")]
    Missing { name: String, digest: Digest },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store { root: root.to_path_buf() };
        for dir in [store.content_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        }
        store.remove_stale_temp_files();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn content_dir(&self) -> PathBuf {
        self.root.join("content").join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn remove_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else { return };
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > STALE_TEMP);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Where the object `digest` lives (whether or not it is there).
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.content_dir().join(digest.hex())
    }

    pub fn has(&self, digest: &Digest) -> bool {
        self.path_of(digest).is_file()
    }

    /// Reads a small object whole and checks it against its digest.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(digest);
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StoreError::Corrupt { digest: *digest, path, actual });
        }
        Ok(bytes)
    }

    /// Stores `bytes`; returns their digest.
    pub fn write(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let mut staged = self.stage()?;
        staged.write_all(bytes).map_err(io_at(&self.tmp_dir()))?;
        let verified = staged.finish(None, None, "object")?;
        let digest = verified.digest();
        verified.commit()?;
        Ok(digest)
    }

    /// Copies a file into the store; returns its digest and size.
    pub fn import(&self, path: &Path) -> Result<(Digest, u64), StoreError> {
        let mut staged = self.stage()?;
        let mut file = File::open(path).map_err(io_at(path))?;
        io::copy(&mut file, &mut staged).map_err(io_at(path))?;
        let verified = staged.finish(None, None, &path.display().to_string())?;
        let (digest, size) = (verified.digest(), verified.size());
        verified.commit()?;
        Ok((digest, size))
    }

    /// A temp file for an object being written; see [`Staged`].
    pub fn stage(&self) -> Result<Staged, StoreError> {
        let tmp = self.tmp_dir();
        let file = tempfile::NamedTempFile::new_in(&tmp).map_err(io_at(&tmp))?;
        Ok(Staged { writer: Some(Sha256Writer::new(file)), content_dir: self.content_dir() })
    }

    /// Removes an object; a missing one is not an error.
    pub fn remove(&self, digest: &Digest) -> Result<(), StoreError> {
        let path = self.path_of(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Where the index of layer `digest` is kept once built.
    pub fn layer_index_path(&self, digest: &Digest) -> PathBuf {
        self.index_file(digest, "bin")
    }

    /// Where versions before the binary form kept it, as JSON.
    fn json_layer_index_path(&self, digest: &Digest) -> PathBuf {
        self.index_file(digest, "json")
    }

    fn index_file(&self, digest: &Digest, extension: &str) -> PathBuf {
        self.root.join("indexes").join(format!("{}.{extension}", digest.hex()))
    }

    /// Whether an index of layer `digest` is stored (valid or not: see
    /// [`Store::read_layer_index`]).
    pub fn has_layer_index(&self, digest: &Digest) -> bool {
        self.layer_index_path(digest).is_file() || self.json_layer_index_path(digest).is_file()
    }

    /// The stored index of layer `digest`, if there is a valid one; a damaged file is removed.
    /// One an earlier version stored as JSON is kept in the binary form from now on.
    pub fn read_layer_index(&self, digest: &Digest) -> Option<LayerIndex> {
        let path = self.layer_index_path(digest);
        if let Ok(bytes) = fs::read(&path) {
            return valid_index(&path, LayerIndex::from_bytes(&bytes).ok());
        }
        let json = self.json_layer_index_path(digest);
        let bytes = fs::read(&json).ok()?;
        let index = valid_index(&json, LayerIndex::from_json(&bytes).ok())?;
        if self.write_layer_index(digest, &index).is_ok() {
            let _ = fs::remove_file(&json);
        }
        Some(index)
    }

    /// Keeps the index of layer `digest` for the next mount.
    pub fn write_layer_index(&self, digest: &Digest, index: &LayerIndex) -> Result<(), StoreError> {
        write_in_dir(&self.layer_index_path(digest), &index.to_bytes())
    }

    /// The prefetch profile recorded for image manifest `digest`: the byte ranges of files
    /// read at start-up, in the order first read. One that does not parse is not used, and
    /// kept for its owner to look at: a start warns, naming it.
    pub fn read_profile(&self, digest: &Digest) -> Option<Vec<ProfiledFile>> {
        let path = self.profile_path(digest);
        let bytes = fs::read(&path).ok()?;
        parse_profile(&bytes)
            .inspect_err(|e| {
                tracing::warn!(path = %path.display(), error = %e, "not using a prefetch profile that does not parse")
            })
            .ok()
    }

    pub fn write_profile(&self, digest: &Digest, files: &[ProfiledFile]) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(&Profile::of(files)).expect("serializes");
        write_in_dir(&self.profile_path(digest), &bytes)
    }

    pub fn profile_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("profiles").join(format!("{}.json", digest.hex()))
    }

    /// The first batches of the prefetch of image manifest `digest`'s profile, resolved to
    /// chunks when it was recorded: a start fetches them while the layers' tables of contents
    /// are read, as it does an image's embedded plan. `None` without a profile beside it. A
    /// plan that does not parse is removed (with a warning naming it): the profile alone is
    /// still prefetched, and its next recording writes the plan again.
    pub fn read_profile_plan(&self, digest: &Digest) -> Option<PrefetchPlan> {
        if !self.profile_path(digest).is_file() {
            return None;
        }
        let path = self.profile_plan_path(digest);
        let plan = PrefetchPlan::from_json(fs::read(&path).ok()?);
        if let Err(e) = &plan {
            tracing::warn!(path = %path.display(), error = %e, "removing a prefetch plan that does not parse");
            let _ = fs::remove_file(&path);
        }
        plan.ok()
    }

    /// Keeps `plan` beside the profile of image manifest `digest` (written first, so that a
    /// profile never has an older plan beside it).
    pub fn write_profile_plan(&self, digest: &Digest, plan: &PrefetchPlan) -> Result<(), StoreError> {
        write_in_dir(&self.profile_plan_path(digest), plan.to_json().as_bytes())
    }

    fn profile_plan_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("profiles").join(format!("{}.plan.json", digest.hex()))
    }

    /// Every object in the store.
    pub fn objects(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.content_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            if let Ok(d) = format!("sha256:{}", entry.file_name().to_string_lossy()).parse() {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// Replaces `path` with `bytes` atomically (mode 0644), making its directory first.
fn write_in_dir(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("a store file is in a directory");
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    write_atomic(path, bytes, 0o644).map_err(io_at(path))
}

/// `index` as read from `path` if it parsed and holds together; else the file is removed
/// (the next mount builds the index again).
fn valid_index(path: &Path, index: Option<LayerIndex>) -> Option<LayerIndex> {
    let index = index.filter(|i| i.validate().is_ok());
    if index.is_none() {
        tracing::warn!(path = %path.display(), "removing a damaged layer index");
        let _ = fs::remove_file(path);
    }
    index
}

/// A prefetch profile as `write_profile` saves it: `{"files": [...]}`, each file a path with
/// the byte ranges read, or a bare path for a whole file.
pub fn parse_profile(bytes: &[u8]) -> Result<Vec<ProfiledFile>, serde_json::Error> {
    let profile = serde_json::from_slice::<Profile>(bytes)?;
    Ok(profile.files.into_iter().map(ProfileEntry::into_file).collect())
}

/// `files` as one line of the JSON `parse_profile` reads.
pub fn profile_json(files: &[ProfiledFile]) -> String {
    serde_json::to_string(&Profile::of(files)).expect("serializes")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Profile {
    files: Vec<ProfileEntry>,
}

impl Profile {
    fn of(files: &[ProfiledFile]) -> Profile {
        let files = files
            .iter()
            .map(|f| ProfileEntry::Ranges { path: f.path.clone(), ranges: f.ranges.clone() })
            .collect();
        Profile { files }
    }
}

/// A profile's file: a bare path (the whole file) or a path with the ranges read.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ProfileEntry {
    Whole(String),
    Ranges { path: String, ranges: Vec<(u64, u64)> },
}

impl ProfileEntry {
    fn into_file(self) -> ProfiledFile {
        match self {
            ProfileEntry::Whole(path) => ProfiledFile { path, ranges: Vec::new() },
            ProfileEntry::Ranges { path, ranges } => ProfiledFile { path, ranges },
        }
    }
}

/// An object being written to a temp file, hashed as it goes. Dropped unfinished, the temp
/// file is deleted; [`Staged::finish`] verifies it, and [`Verified::commit`] publishes it.
pub struct Staged {
    writer: Option<Sha256Writer<tempfile::NamedTempFile>>,
    content_dir: PathBuf,
}

impl Staged {
    pub fn written(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.written())
    }

    /// Checks the bytes written against `expected` and `size` (each when given), syncs them,
    /// and returns the verified object, not yet visible in the store. `what` names the object
    /// in errors.
    pub fn finish(
        mut self,
        expected: Option<&Digest>,
        size: Option<u64>,
        what: &str,
    ) -> Result<Verified, StoreError> {
        let writer = self.writer.take().expect("finish is called once");
        let written = writer.written();
        let (actual, mut file) = writer.finish();
        if let Some(size) = size {
            if size != written {
                return Err(StoreError::SizeMismatch {
                    what: what.to_string(),
                    expected: size,
                    actual: written,
                });
            }
        }
        if let Some(expected) = expected.filter(|e| **e != actual) {
            return Err(StoreError::Mismatch {
                what: what.to_string(),
                expected: *expected,
                actual,
                size: written,
            });
        }
        let path = file.path().to_path_buf();
        file.flush().map_err(io_at(&path))?;
        file.as_file().sync_all().map_err(io_at(&path))?;
        Ok(Verified { file, digest: actual, size: written, target: self.content_dir.join(actual.hex()) })
    }
}

impl Write for Staged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.as_mut().expect("write after finish").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().expect("flush after finish").flush()
    }
}

/// A verified object in a temp file, published by [`Verified::commit`] or dropped.
pub struct Verified {
    file: tempfile::NamedTempFile,
    digest: Digest,
    size: u64,
    target: PathBuf,
}

impl Verified {
    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The temp file holding the verified bytes.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn commit(self) -> Result<(), StoreError> {
        let target = self.target;
        self.file.as_file().set_permissions(fs::Permissions::from_mode(0o644)).map_err(io_at(&target))?;
        self.file.persist(&target).map_err(|e| StoreError::Io { path: target.clone(), source: e.error })?;
        sync_dir(target.parent().unwrap_or(Path::new("/")));
        Ok(())
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Replaces `path` with `bytes` atomically: a temp file beside it, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// Opens (creating) `path` for use as a lock file.
pub(crate) fn open_lock(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer index as versions before the binary form stored it: JSON, empty fields left out.
    const JSON_INDEX: &str = r#"{"nodes":[{"name":"","parent":0,"kind":"Dir","mode":493,"uid":0,"gid":0,"size":0,"mtime":0,"rdev":[0,0],"children":[1],"chunks":{"start":0,"end":0},"nlink":2},{"name":"hello","parent":0,"kind":"File","mode":420,"uid":0,"gid":0,"size":5,"mtime":1778563047,"rdev":[0,0],"chunks":{"start":0,"end":1},"nlink":1}],"chunks":[{"digest":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","file_offset":0,"len":5,"codec":"Gzip","offset":126,"compressed_len":25,"inner_offset":0}],"prefetch_end":151}"#;

    #[test]
    fn a_layer_index_an_earlier_version_stored_as_json_is_read_and_kept_in_the_binary_form() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = Digest::of(b"layer");
        let json = store.json_layer_index_path(&layer);
        fs::create_dir_all(json.parent().unwrap()).unwrap();
        fs::write(&json, JSON_INDEX).unwrap();
        let index = store.read_layer_index(&layer).expect("the JSON index is read");
        let hello = index.resolve("hello").unwrap();
        assert_eq!((index.node(hello).size, index.file_chunks(hello)[0].digest), (5, Digest::of(b"hello")));
        assert!(!json.exists() && store.layer_index_path(&layer).exists());
        assert_eq!(store.read_layer_index(&layer).as_ref(), Some(&index), "the binary form reads the same");
        // A damaged index is removed: the next mount builds it again.
        fs::write(store.layer_index_path(&layer), b"\x07damaged").unwrap();
        assert_eq!(store.read_layer_index(&layer), None);
        assert!(!store.layer_index_path(&layer).exists());
    }

    #[test]
    fn a_damaged_profile_is_not_used_and_kept_and_a_damaged_plan_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let image = Digest::of(b"manifest");
        let files = [ProfiledFile { path: "etc/app.conf".into(), ranges: vec![(0, 12)] }];
        store.write_profile(&image, &files).unwrap();
        store.write_profile_plan(&image, &PrefetchPlan { batches: vec![vec![]] }).unwrap();
        assert_eq!(store.read_profile(&image).as_deref(), Some(&files[..]));
        assert!(store.read_profile_plan(&image).is_some());

        fs::write(store.profile_plan_path(&image), b"{\"batches\": [[[0, 1, 2").unwrap();
        assert_eq!(store.read_profile_plan(&image), None);
        assert!(!store.profile_plan_path(&image).exists(), "the damaged plan is removed");
        assert!(store.read_profile(&image).is_some(), "the profile stays usable without it");

        fs::write(store.profile_path(&image), b"garbage").unwrap();
        assert_eq!(store.read_profile(&image), None);
        assert!(store.profile_path(&image).exists(), "a damaged profile is kept for its owner");
    }
}
