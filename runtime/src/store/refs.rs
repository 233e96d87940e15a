//! The refs table: which image names point at which manifests, and garbage collection of
//! objects no name reaches. Both run under `refs.lock`, and an image's objects are published
//! together with its name, so a collection never removes what a pull is about to name.

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;

use fs2::FileExt;
use serde::{Deserialize, Serialize};
use skiff_fs::Digest;

use super::{io_at, open_lock, write_atomic, Store, StoreError, Verified};
use crate::manifest::Manifest;
use crate::reference::Reference;

/// One named image in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The full reference: `registry/repo:tag`, or `registry/repo@digest` when pulled by digest.
    pub name: String,
    /// What the name resolved to: a manifest, or an index.
    pub digest: Digest,
    /// The image manifest for this machine's (or the chosen) platform.
    pub manifest: Digest,
    /// `registry/repository` that holds the layers not stored locally.
    pub source: String,
    /// When the name was last set (RFC 3339).
    pub updated: String,
}

#[derive(Default, Serialize, Deserialize)]
struct RefsFile {
    images: Vec<ImageRecord>,
}

/// The refs table, held locked until dropped.
struct Locked {
    _lock: File,
    path: PathBuf,
    refs: RefsFile,
}

impl Store {
    fn lock_refs(&self) -> Result<Locked, StoreError> {
        let lock_path = self.root.join("refs.lock");
        let lock = open_lock(&lock_path).map_err(io_at(&lock_path))?;
        lock.lock_exclusive().map_err(io_at(&lock_path))?;
        let path = self.root.join("refs.json");
        let refs = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Refs { path: path.clone(), why: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RefsFile::default(),
            Err(e) => return Err(io_at(&path)(e)),
        };
        Ok(Locked { _lock: lock, path, refs })
    }

    fn save_refs(locked: &Locked) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(&locked.refs).expect("refs serialize");
        write_atomic(&locked.path, &bytes, 0o644).map_err(io_at(&locked.path))
    }

    /// Every named image, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let mut images = self.lock_refs()?.refs.images;
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// Publishes `objects` and points `record.name` at them, in one step under the lock.
    pub fn commit_image(&self, objects: Vec<Verified>, record: ImageRecord) -> Result<(), StoreError> {
        let mut locked = self.lock_refs()?;
        for object in objects {
            object.commit()?;
        }
        for digest in [record.digest, record.manifest] {
            if !self.has(&digest) {
                return Err(StoreError::Missing { name: record.name.clone(), digest });
            }
        }
        locked.refs.images.retain(|r| r.name != record.name);
        locked.refs.images.push(record);
        Self::save_refs(&locked)
    }

    /// Finds an image by reference (`busybox`, `host:5000/a:b`), by `repo@digest`, or by a
    /// prefix of its digest (at least 4 hex digits), as docker does.
    pub fn find_image(&self, input: &str) -> Result<ImageRecord, StoreError> {
        let images = self.lock_refs()?.refs.images;
        if let Ok(reference) = input.parse::<Reference>() {
            let name = reference.to_string();
            if let Some(r) = images.iter().find(|r| r.name == name) {
                return Ok(r.clone());
            }
            if let (Some(digest), None) = (reference.digest(), reference.tag()) {
                let repo = reference.name();
                if let Some(r) = images.iter().find(|r| {
                    (r.digest == digest || r.manifest == digest) && r.name.starts_with(&format!("{repo}:"))
                        || r.name.starts_with(&format!("{repo}@"))
                }) {
                    return Ok(r.clone());
                }
            }
        }
        let prefix = input.strip_prefix("sha256:").unwrap_or(input);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&ImageRecord> = images
                .iter()
                .filter(|r| r.manifest.hex().starts_with(prefix) || r.digest.hex().starts_with(prefix))
                .collect();
            let distinct: HashSet<Digest> = hits.iter().map(|r| r.manifest).collect();
            match distinct.len() {
                0 => {}
                1 => return Ok(hits[0].clone()),
                _ => {
                    return Err(StoreError::Ambiguous {
                        input: input.to_string(),
                        matches: hits.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
                    })
                }
            }
        }
        Err(StoreError::NoSuchImage(input.to_string()))
    }

    /// Points another name at an existing image.
    pub fn tag_image(&self, source: &ImageRecord, name: &Reference) -> Result<(), StoreError> {
        let mut locked = self.lock_refs()?;
        let record = ImageRecord {
            name: name.to_string(),
            updated: chrono::Utc::now().to_rfc3339(),
            ..source.clone()
        };
        locked.refs.images.retain(|r| r.name != record.name);
        locked.refs.images.push(record);
        Self::save_refs(&locked)
    }

    /// Removes names, and nothing else: what they reached stays until a removal collects it.
    pub fn untag(&self, names: &[String]) -> Result<(), StoreError> {
        let mut locked = self.lock_refs()?;
        locked.refs.images.retain(|r| !names.contains(&r.name));
        Self::save_refs(&locked)
    }

    /// Removes names; then deletes every object that neither a remaining name nor `in_use`
    /// (the manifests of images containers were made from, named or not) reaches. Returns the
    /// digests of the deleted objects.
    pub fn remove_images(&self, names: &[String], in_use: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let mut locked = self.lock_refs()?;
        for name in names {
            if !locked.refs.images.iter().any(|r| &r.name == name) {
                return Err(StoreError::NoSuchImage(name.clone()));
            }
        }
        locked.refs.images.retain(|r| !names.contains(&r.name));
        Self::save_refs(&locked)?;
        let mut reachable = HashSet::new();
        for record in &locked.refs.images {
            self.mark(record.digest, &mut reachable);
            self.mark(record.manifest, &mut reachable);
        }
        for &digest in in_use {
            self.mark(digest, &mut reachable);
        }
        let mut removed = Vec::new();
        for digest in self.objects()? {
            if !reachable.contains(&digest) {
                self.remove(&digest)?;
                removed.push(digest);
            }
        }
        Ok(removed)
    }

    /// `roots` and every stored object they point to (a manifest's config and layers, an
    /// index's manifests).
    pub fn reachable(&self, roots: &[Digest]) -> HashSet<Digest> {
        let mut reachable = HashSet::new();
        for &digest in roots {
            self.mark(digest, &mut reachable);
        }
        reachable
    }

    /// Marks `digest` and, if it is a stored manifest or index, everything it points to.
    fn mark(&self, digest: Digest, reachable: &mut HashSet<Digest>) {
        if !reachable.insert(digest) {
            return;
        }
        let Ok(bytes) = self.read(&digest) else { return };
        match Manifest::parse(&digest.to_string(), &bytes, None) {
            Ok(Manifest::Image { manifest, .. }) => {
                reachable.insert(manifest.config.digest);
                reachable.extend(manifest.layers.iter().map(|l| l.digest));
            }
            Ok(Manifest::Index { index, .. }) => {
                for child in &index.manifests {
                    self.mark(child.digest, reachable);
                }
            }
            Err(_) => {}
        }
    }
}
