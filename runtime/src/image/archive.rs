//! Images as OCI image-layout tar archives (`skiff save`, `skiff load`), the format `docker
//! save` writes since Docker 25 and `docker load`, podman and skopeo (`oci-archive:`) read:
//! `oci-layout`, `index.json` naming each image's manifest, every blob under
//! `blobs/sha256/<hex>`, and docker's `manifest.json` beside them for older docker loads.
//!
//! An archive is hostile input. Its entries are never written by their paths: a blob goes into
//! the store only under the digest of its bytes, and only when that is the digest its name
//! claims; other entries are read into memory with a size limit, or skipped. No image is
//! named until every blob it needs is there and verified, so a load that fails leaves the
//! store's images as they were.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use skiff_fs::Digest;

use super::pull::download_blob;
use super::{parse_config, ImageError, Progress, StoredImage};
use crate::manifest::{Descriptor, ImageIndex, Manifest, Platform};
use crate::reference::Reference;
use crate::registry::Client;
use crate::store::{ImageRecord, Store, Verified};

/// The annotation containerd and docker give an image's full name in `index.json`.
const IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for an image's name in a layout (a tag, or a full reference).
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The most bytes `index.json`, `manifest.json` or `oci-layout` may have.
const MAX_METADATA: u64 = 16 << 20;
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// One entry of docker's `manifest.json`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Writes `images` as an OCI layout tar into `out`. Layers a lazy pull left in the registry
/// are downloaded into the store first (verified, as `pull --full` keeps them).
pub fn save(
    client: &Arc<Client>,
    store: &Store,
    images: &[ImageRecord],
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let mut index = ImageIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: Vec::new(),
        annotations: BTreeMap::new(),
    };
    let mut docker = Vec::new();
    let mut blobs: Vec<Digest> = Vec::new();
    for record in images {
        let image = StoredImage::load(store, record)?;
        let source: Reference = record.source.parse().map_err(|e| ImageError::Invalid {
            what: format!("image {}", record.name),
            why: format!("its source repository is not a valid reference: {e}"),
        })?;
        for layer in image.manifest.layers.iter().filter(|l| !store.has(&l.digest)) {
            let fetched: Verified = download_blob(client, store, &source, layer, progress)?;
            fetched.commit()?;
            progress.finish(&layer.digest);
        }
        let name: Reference = record.name.parse().map_err(|e| ImageError::Invalid {
            what: format!("image {}", record.name),
            why: format!("its name is not a valid reference: {e}"),
        })?;
        let mut annotations = BTreeMap::from([(IMAGE_NAME.to_string(), record.name.clone())]);
        if let Some(tag) = name.tag() {
            annotations.insert(REF_NAME.into(), tag.to_string());
        }
        index.manifests.push(Descriptor {
            media_type: image.media_type.clone(),
            digest: record.manifest,
            size: image.manifest_bytes.len() as u64,
            urls: None,
            annotations,
            platform: None,
        });
        docker.push(DockerEntry {
            config: blob_path(&image.manifest.config.digest),
            repo_tags: name.tag().map(|_| name.familiar_name()).into_iter().collect(),
            layers: image.manifest.layers.iter().map(|l| blob_path(&l.digest)).collect(),
        });
        let own = [record.manifest, image.manifest.config.digest].into_iter();
        for digest in own.chain(image.manifest.layers.iter().map(|l| l.digest)) {
            if !blobs.contains(&digest) {
                blobs.push(digest);
            }
        }
    }
    let what = |name: &str| format!("the archive's {name}");
    let write_err = |name: &str| {
        let what = what(name);
        move |e: io::Error| ImageError::Invalid { what: what.clone(), why: format!("writing: {e}") }
    };
    let mut tar = tar::Builder::new(out);
    let metadata: [(&str, Vec<u8>); 3] = [
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json", serde_json::to_vec(&index).expect("an index serializes")),
        ("manifest.json", serde_json::to_vec(&docker).expect("docker's manifest serializes")),
    ];
    let mut dir = header(tar::EntryType::Directory, 0o755, 0);
    for path in ["blobs", "blobs/sha256"] {
        tar.append_data(&mut dir, path, io::empty()).map_err(write_err(path))?;
    }
    for digest in &blobs {
        let path = store.path_of(digest);
        let file = std::fs::File::open(&path)
            .map_err(|source| crate::store::StoreError::Io { path: path.clone(), source })?;
        let size = file.metadata().map_err(|source| crate::store::StoreError::Io { path, source })?.len();
        let name = blob_path(digest);
        tar.append_data(&mut header(tar::EntryType::Regular, 0o644, size), &name, file)
            .map_err(write_err(&name))?;
    }
    for (name, bytes) in metadata {
        let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        tar.append_data(&mut h, name, bytes.as_slice()).map_err(write_err(name))?;
    }
    tar.into_inner().map_err(write_err("end"))?.flush().map_err(write_err("end"))?;
    Ok(())
}

/// Reads an OCI layout tar (as `skiff save` and `docker save` write them) from `input` and
/// names each image it holds, as its `index.json` (else docker's `manifest.json`) names it.
/// `what` names the archive in errors.
pub fn load(
    store: &Store,
    input: &mut dyn Read,
    what: &str,
    platform: &Platform,
) -> Result<Vec<ImageRecord>, ImageError> {
    let invalid = |why: String| ImageError::Invalid { what: what.to_string(), why };
    let mut blobs: HashMap<Digest, Verified> = HashMap::new();
    let mut index_json = None;
    let mut docker_json = None;
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(|e| invalid(format!("reading: {e}")))? {
        let mut entry = entry.map_err(|e| invalid(format!("reading: {e}")))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().map_err(|e| invalid(format!("reading: {e}")))?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./");
        let size = entry.size();
        match path {
            "index.json" => index_json = Some(read_metadata(&mut entry, path, size).map_err(invalid)?),
            "manifest.json" => docker_json = Some(read_metadata(&mut entry, path, size).map_err(invalid)?),
            _ => {
                let Some(hex) = path.strip_prefix("blobs/sha256/") else { continue };
                let claimed: Digest = format!("sha256:{hex}")
                    .parse()
                    .map_err(|e| invalid(format!("{path}: not a blob's name: {e}")))?;
                let mut staged = store.stage()?;
                io::copy(&mut entry, &mut staged).map_err(|e| invalid(format!("reading {path}: {e}")))?;
                let verified = staged.finish(Some(&claimed), Some(size), &format!("{path} of {what}"))?;
                blobs.insert(claimed, verified);
            }
        }
    }
    let blob = |digest: &Digest, of: &str| -> Result<Vec<u8>, ImageError> {
        match blobs.get(digest) {
            Some(v) => std::fs::read(v.path()).map_err(|e| invalid(format!("reading {of} {digest}: {e}"))),
            None if store.has(digest) => Ok(store.read(digest)?),
            None => Err(invalid(format!("{of} {digest} is not in the archive"))),
        }
    };
    let mut images: Vec<(String, Digest)> = Vec::new();
    if let Some(bytes) = &index_json {
        let index: ImageIndex = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("index.json is not a valid index: {e}")))?;
        for desc in &index.manifests {
            let name = desc
                .annotations
                .get(IMAGE_NAME)
                .or_else(|| desc.annotations.get(REF_NAME).filter(|n| n.contains('/') || n.contains(':')));
            let Some(name) = name else {
                return Err(invalid(format!(
                    "index.json names no image for manifest {} (annotation {IMAGE_NAME})",
                    desc.digest
                )));
            };
            images.push((name.clone(), desc.digest));
        }
    } else if let Some(bytes) = &docker_json {
        // docker's manifest.json alone names configs, not manifests: the loaded image gets a
        // manifest of its own, which only a blob archive (layers under blobs/) can back.
        return Err(invalid(format!(
            "it has docker's manifest.json ({} bytes) but no index.json: only OCI layout archives (skiff save, docker save since Docker 25) can be loaded",
            bytes.len()
        )));
    } else {
        return Err(invalid("it has no index.json: it is not an OCI image layout".into()));
    }
    if images.is_empty() {
        return Err(invalid("its index.json lists no image".into()));
    }
    // Every image checked whole before any is named.
    let mut records = Vec::new();
    for (name, top) in images {
        let reference: Reference = name.parse().map_err(|e| invalid(format!("image name {name:?}: {e}")))?;
        let top_what = format!("manifest {top} of {name} in {what}");
        let top_bytes = blob(&top, "manifest")?;
        let (manifest_digest, manifest) = match Manifest::parse(&top_what, &top_bytes, None)? {
            Manifest::Image { manifest, .. } => (top, manifest),
            Manifest::Index { index, .. } => {
                let child = index.select(&top_what, platform)?;
                let child_what = format!("manifest {} of {name} in {what}", child.digest);
                let Manifest::Image { manifest, .. } =
                    Manifest::parse(&child_what, &blob(&child.digest, "manifest")?, None)?
                else {
                    return Err(invalid(format!("{child_what}: an index inside an index")));
                };
                (child.digest, manifest)
            }
        };
        let config = blob(&manifest.config.digest, "config")?;
        parse_config(&name, &manifest, &config)?;
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            match blobs.get(&desc.digest) {
                Some(v) if v.size() != desc.size => {
                    return Err(invalid(format!(
                        "blob {} has {} bytes; {name}'s manifest says {}",
                        desc.digest,
                        v.size(),
                        desc.size
                    )))
                }
                Some(_) => {}
                None if store.has(&desc.digest) => {}
                None => {
                    return Err(invalid(format!("layer {} of {name} is not in the archive", desc.digest)))
                }
            }
        }
        records.push(ImageRecord {
            name: reference.to_string(),
            digest: top,
            manifest: manifest_digest,
            source: reference.name(),
            updated: chrono::Utc::now().to_rfc3339(),
        });
    }
    let mut objects: Vec<Verified> = blobs.into_values().collect();
    for record in &records {
        store.commit_image(std::mem::take(&mut objects), record.clone())?;
    }
    Ok(records)
}

fn read_metadata(entry: &mut dyn Read, path: &str, size: u64) -> Result<Vec<u8>, String> {
    if size > MAX_METADATA {
        return Err(format!("{path} has {size} bytes, more than the {MAX_METADATA} allowed"));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry.take(MAX_METADATA).read_to_end(&mut bytes).map_err(|e| format!("reading {path}: {e}"))?;
    Ok(bytes)
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}
