//! `commit`: a container's upper directory becomes a new layer (OCI whiteouts; eStargz by
//! default so the new image is lazy-pullable, plain gzip on request), appended to the base
//! image's manifest and config (`diff_ids`, `history`), and stored under a new name. Its
//! `source` stays the base image's repository, so `push` mounts the base layers there.

use std::io::{self, Seek, Write};

use flate2::write::GzEncoder;
use skiff_fs::estargz::{self, ConvertOptions};
use skiff_fs::union::Union;
use skiff_fs::{Digest, Sha256Writer};

use super::{ImageError, StoredImage};
use crate::manifest::{Descriptor, ImageManifest, DOCKER_MANIFEST, OCI_CONFIG};
use crate::reference::Reference;
use crate::store::{ImageRecord, Store, StoreError, Verified};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    Estargz,
    Gzip,
}

#[derive(Clone, Debug)]
pub struct CommitOptions {
    pub compression: LayerCompression,
    /// The history entry's comment (`-m`).
    pub message: Option<String>,
    pub author: Option<String>,
    /// Dockerfile instructions applied to the new image's config (`-c`), as `import` takes
    /// them.
    pub changes: Vec<String>,
    /// What the history says made the layer (`skiff commit` if `None`).
    pub created_by: Option<String>,
}

pub fn commit(
    store: &Store,
    base: &ImageRecord,
    union: &Union,
    dest: &Reference,
    options: &CommitOptions,
) -> Result<ImageRecord, ImageError> {
    let image = StoredImage::load(store, base)?;
    // The changes first: a typo fails before the layer is written.
    let mut config = changed_config(&image, &options.changes)?;
    let what = format!("the changes in {}", union.upper().display());
    let io_err = |e: io::Error| ImageError::Invalid { what: what.clone(), why: e.to_string() };

    // The upper as a tar, spooled: eStargz conversion reads it twice when prioritizing, and
    // the tar's digest is the layer's diff_id either way.
    let mut tar = tempfile::tempfile_in(store.root().join("tmp")).map_err(io_err)?;
    union.write_layer_tar(&mut tar).map_err(io_err)?;
    tar.rewind().map_err(io_err)?;

    let docker = image.media_type == DOCKER_MANIFEST;
    let layer = layer_from_tar(store, &mut tar, options.compression, docker, &what)?;
    let mut entry =
        serde_json::json!({ "created_by": options.created_by.as_deref().unwrap_or("skiff commit") });
    if let Some(m) = &options.message {
        entry["comment"] = m.clone().into();
    }
    if let Some(a) = &options.author {
        entry["author"] = a.clone().into();
        config["author"] = a.clone().into();
    }
    store_image(store, &image, config, Some(layer), entry, dest)
}

/// A new image of `base`'s layers with `change` (a Dockerfile instruction: CMD, ENV, …)
/// applied to its config, its history saying the change made no layer.
pub fn change_config(
    store: &Store,
    base: &ImageRecord,
    dest: &Reference,
    change: &str,
) -> Result<ImageRecord, ImageError> {
    let image = StoredImage::load(store, base)?;
    let config = changed_config(&image, &[change.to_string()])?;
    let entry = serde_json::json!({ "created_by": change, "empty_layer": true });
    store_image(store, &image, config, None, entry, dest)
}

/// `image`'s config with `changes` applied.
fn changed_config(image: &StoredImage, changes: &[String]) -> Result<serde_json::Value, ImageError> {
    let mut config: serde_json::Value =
        serde_json::from_slice(&image.config_bytes).map_err(|e| ImageError::Config {
            image: image.record.name.clone(),
            digest: image.manifest.config.digest,
            why: e.to_string(),
        })?;
    if !config["config"].is_object() {
        config["config"] = serde_json::json!({});
    }
    for change in changes {
        super::import::apply_change(&mut config["config"], change)
            .map_err(|why| ImageError::Invalid { what: format!("--change {change:?}"), why })?;
    }
    Ok(config)
}

/// Stores as `dest` the image of `image`'s layers plus `layer` (staged; `None` for none), with
/// `config`, whose history gets `entry` (its time added).
fn store_image(
    store: &Store,
    image: &StoredImage,
    mut config: serde_json::Value,
    layer: Option<(Verified, Descriptor, Digest)>,
    mut entry: serde_json::Value,
    dest: &Reference,
) -> Result<ImageRecord, ImageError> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut manifest = image.manifest.clone();
    let mut objects = Vec::new();
    if let Some((object, desc, diff_id)) = layer {
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .expect("checked by config()")
            .push(diff_id.to_string().into());
        manifest.layers.push(desc);
        objects.push(object);
    }
    entry["created"] = now.clone().into();
    match config["history"].as_array_mut() {
        Some(h) => h.push(entry),
        None => config["history"] = serde_json::json!([entry]),
    }
    config["created"] = now.clone().into();
    write_image(store, image, &config, manifest, objects, dest, now)
}

/// `image` without the ONBUILD triggers its config carries, stored as `dest`: what a
/// build's FROM starts from once it has taken the triggers to run. Nothing else changes (no
/// history entry, as docker writes none), so the same base gives the same image.
pub fn without_triggers(
    store: &Store,
    image: &StoredImage,
    dest: &Reference,
) -> Result<ImageRecord, ImageError> {
    let mut config = changed_config(image, &[])?;
    if let Some(container_config) = config["config"].as_object_mut() {
        container_config.remove("OnBuild");
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    write_image(store, image, &config, image.manifest.clone(), Vec::new(), dest, now)
}

/// Stores `config` and `manifest` (pointed at it), with `objects` already staged, as `dest`,
/// updated at `now`.
fn write_image(
    store: &Store,
    image: &StoredImage,
    config: &serde_json::Value,
    mut manifest: ImageManifest,
    mut objects: Vec<Verified>,
    dest: &Reference,
    now: String,
) -> Result<ImageRecord, ImageError> {
    let config_bytes = serde_json::to_vec(config).expect("JSON serializes");
    manifest.config.digest = Digest::of(&config_bytes);
    manifest.config.size = config_bytes.len() as u64;
    if image.media_type != DOCKER_MANIFEST {
        manifest.config.media_type = OCI_CONFIG.into();
    }
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    let manifest_digest = Digest::of(&manifest_bytes);
    let record = ImageRecord {
        name: dest.to_string(),
        digest: manifest_digest,
        manifest: manifest_digest,
        source: image.record.source.clone(),
        updated: now,
    };
    objects.push(stage(store, &config_bytes)?);
    objects.push(stage(store, &manifest_bytes)?);
    store.commit_image(objects, record.clone())?;
    Ok(record)
}

/// The layer the uncompressed tar `tar` (read from its start) makes: its object (staged, not
/// yet in the store), its descriptor and its diff_id. `what` names the tar in errors.
pub(super) fn layer_from_tar(
    store: &Store,
    tar: &mut std::fs::File,
    compression: LayerCompression,
    docker: bool,
    what: &str,
) -> Result<(Verified, Descriptor, Digest), ImageError> {
    let io_err = |e: io::Error| ImageError::Invalid { what: what.to_string(), why: e.to_string() };
    let mut staged = store.stage()?;
    let (diff_id, annotations) = match compression {
        LayerCompression::Estargz => {
            let result = estargz::convert(tar, &mut staged, &ConvertOptions::default()).map_err(|e| {
                ImageError::Invalid { what: what.to_string(), why: crate::registry::error_chain(&e) }
            })?;
            let annotations = result.annotations().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            (result.diff_id, annotations)
        }
        LayerCompression::Gzip => {
            let mut hashed = Sha256Writer::new(GzEncoder::new(&mut staged, flate2::Compression::default()));
            io::copy(tar, &mut hashed).map_err(io_err)?;
            let (diff_id, gz) = hashed.finish();
            gz.finish().map_err(io_err)?;
            (diff_id, Default::default())
        }
    };
    let size = staged.written();
    let layer: Verified = staged.finish(None, Some(size), what)?;
    let desc = Descriptor {
        media_type: if docker {
            "application/vnd.docker.image.rootfs.diff.tar.gzip".into()
        } else {
            "application/vnd.oci.image.layer.v1.tar+gzip".into()
        },
        digest: layer.digest(),
        size,
        urls: None,
        annotations,
        platform: None,
    };
    Ok((layer, desc, diff_id))
}

pub(super) fn stage(store: &Store, bytes: &[u8]) -> Result<Verified, StoreError> {
    let mut staged = store.stage()?;
    staged.write_all(bytes).map_err(|source| StoreError::Io { path: store.root().join("tmp"), source })?;
    staged.finish(None, Some(bytes.len() as u64), "committed image")
}
