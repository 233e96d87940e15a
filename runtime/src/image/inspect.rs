//! `inspect`: what the store knows of an image, with each layer's format.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use skiff_fs::{BlobSource, Digest, FileSource};

use super::{ImageError, LayerFormat, StoredImage};
use crate::registry::Client;
use crate::store::{ImageRecord, Store};

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageDetails {
    /// docker's image ID: the config's digest.
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub name: String,
    /// What the name resolved to in the registry (a manifest or an index).
    pub digest: Digest,
    pub manifest_digest: Digest,
    pub media_type: String,
    pub platform: String,
    pub architecture: String,
    pub os: String,
    pub created: Option<String>,
    /// Compressed size of config and layers.
    pub size: u64,
    pub source: String,
    pub layers: Vec<LayerDetails>,
    pub manifest: serde_json::Value,
    /// What a container of the image runs with (the image config's `config`), as docker
    /// shows it: Env, Cmd, Entrypoint, WorkingDir, User, Labels, ExposedPorts, Volumes, ...
    pub config: serde_json::Value,
    /// The layers' uncompressed digests (`diff_ids`).
    #[serde(rename = "RootFS")]
    pub root_fs: serde_json::Value,
    /// How each layer was made (the image config's `history`).
    pub history: serde_json::Value,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LayerDetails {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub format: String,
    pub local: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Describes a stored image. With a `client`, gzip layers without annotations are probed for
/// an eStargz footer (one small range request each, or a local read if the layer is stored).
pub fn inspect(
    store: &Store,
    record: &ImageRecord,
    client: Option<&Arc<Client>>,
) -> Result<ImageDetails, ImageError> {
    let image = StoredImage::load(store, record)?;
    let config = image.config()?;
    let source: crate::reference::Reference = format!("{}@{}", record.source, record.manifest)
        .parse()
        .map_err(|e| ImageError::Invalid { what: record.name.clone(), why: format!("source: {e}") })?;
    let layers = image
        .manifest
        .layers
        .iter()
        .map(|desc| {
            let local = store.has(&desc.digest);
            let probed = if local {
                FileSource::open(&store.path_of(&desc.digest))
                    .map_err(|e| e.to_string())
                    .and_then(|f| LayerFormat::probe(desc, &f).map_err(|e| e.to_string()))
            } else if let Some(client) = client {
                let blob = client.blob_source(&source, desc.digest, desc.size);
                LayerFormat::probe(desc, &blob as &dyn BlobSource)
                    .map_err(|e| crate::registry::error_chain(&e))
            } else {
                Ok(LayerFormat::declared(desc))
            };
            let format = match probed {
                Ok(f) => f.to_string(),
                Err(e) => format!("{} (footer not checked: {e})", LayerFormat::declared(desc)),
            };
            LayerDetails {
                digest: desc.digest,
                size: desc.size,
                media_type: desc.media_type.clone(),
                format,
                local,
                annotations: desc.annotations.clone(),
            }
        })
        .collect();
    let mut platform = format!("{}/{}", config.os(), config.architecture());
    if let Some(v) = config.variant() {
        platform = format!("{platform}/{v}");
    }
    let full: serde_json::Value = serde_json::from_slice(&image.config_bytes).unwrap_or_default();
    // A name by digest is no tag; docker lists it among the digests.
    let (repo_tags, by_digest) = match record.name.contains('@') {
        true => (Vec::new(), record.name.clone()),
        false => (vec![record.name.clone()], format!("{}@{}", record.source, record.manifest)),
    };
    Ok(ImageDetails {
        id: image.manifest.config.digest,
        repo_tags,
        repo_digests: vec![by_digest],
        name: record.name.clone(),
        digest: record.digest,
        manifest_digest: record.manifest,
        media_type: image.media_type.clone(),
        platform,
        architecture: config.architecture().to_string(),
        os: config.os().to_string(),
        created: config.created().clone(),
        size: image.manifest.total_size(),
        source: record.source.clone(),
        layers,
        manifest: serde_json::from_slice(&image.manifest_bytes).unwrap_or_default(),
        config: full.get("config").cloned().unwrap_or_default(),
        root_fs: full.get("rootfs").cloned().unwrap_or_default(),
        history: full.get("history").cloned().unwrap_or_default(),
    })
}
