//! `convert`: rewrite every layer of an image as eStargz, so it can be pulled lazily. Layers
//! stream from the registry through the converter into the store; the config's `diff_ids`
//! and an OCI manifest with the eStargz annotations are written, and the image is stored under
//! its new name (pushing it is the caller's next step).

use std::io;
use std::sync::Arc;

use skiff_fs::estargz::{self, ConvertOptions, EstargzReader};
use skiff_fs::index::LayerIndex;
use skiff_fs::lazy::index_estargz;
use skiff_fs::union::ProfiledFile;
use skiff_fs::Digest;

use super::stream::open_layer;
use super::{ImageError, StoredImage};
use crate::manifest::{Descriptor, ImageManifest, OCI_CONFIG, OCI_MANIFEST};
use crate::plan::{PrefetchPlan, PREFETCH_PLAN_ANNOTATION};
use crate::reference::Reference;
use crate::registry::Client;
use crate::store::{ImageRecord, Store, StoreError, Verified};

pub const ESTARGZ_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One converted layer.
#[derive(Clone, Debug)]
pub struct ConvertedLayer {
    pub from: Digest,
    pub to: Digest,
    /// The uncompressed digest of the converted layer (its new diff_id).
    pub diff_id: Digest,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub missing_prioritized: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ConvertReport {
    pub record: ImageRecord,
    pub layers: Vec<ConvertedLayer>,
}

/// Manifest annotation holding a prefetch profile (the JSON of `store::parse_profile`): a
/// mount of the image with no profile of its own prefetches this one.
pub const PROFILE_ANNOTATION: &str = "io.skiff.prefetch-profile";
/// Larger profiles (with their plan) are not put in the manifest, which registries limit
/// (4 MiB is common).
pub const MAX_PROFILE_ANNOTATION: usize = 512 << 10;

/// Converts the stored image `record` into an eStargz image named `dest`, in the store.
/// `prioritized` paths go first in whichever layers hold them. A `profile` (the reads it was
/// made from) goes into the manifest, so that a first start anywhere prefetches it.
pub fn convert(
    client: &Arc<Client>,
    store: &Store,
    record: &ImageRecord,
    dest: &Reference,
    options: &ConvertOptions,
    profile: Option<&[ProfiledFile]>,
) -> Result<ConvertReport, ImageError> {
    let image = StoredImage::load(store, record)?;
    let config = image.config()?;
    let source: Reference = format!("{}@{}", record.source, record.manifest)
        .parse()
        .map_err(|e| ImageError::Invalid { what: record.name.clone(), why: format!("source: {e}") })?;
    let mut staged: Vec<Verified> = Vec::new();
    let mut layers = Vec::new();
    let mut descriptors = Vec::new();
    let mut indexes = Vec::new();
    for (desc, diff_id) in image.manifest.layers.iter().zip(config.rootfs().diff_ids()) {
        let diff_id: Digest = diff_id.parse().expect("checked by config()");
        let (verified, converted, annotations, index) =
            convert_layer(client, store, &source, desc, diff_id, options)?;
        indexes.push(index);
        descriptors.push(Descriptor {
            media_type: ESTARGZ_LAYER.to_string(),
            digest: converted.to,
            size: converted.compressed_size,
            urls: None,
            annotations,
            platform: None,
        });
        layers.push((converted, verified));
    }

    // Rewrite only diff_ids, keeping every other field of the config as it was.
    let mut config_json: serde_json::Value = serde_json::from_slice(&image.config_bytes)
        .map_err(|e| ImageError::Invalid { what: record.name.clone(), why: format!("config: {e}") })?;
    let new_ids: Vec<String> = layers.iter().map(|(c, _)| c.diff_id.to_string()).collect();
    config_json["rootfs"]["diff_ids"] = serde_json::json!(new_ids);
    let config_bytes = serde_json::to_vec(&config_json).expect("JSON serializes");
    let config_digest = Digest::of(&config_bytes);
    let mut manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_string()),
        config: Descriptor {
            media_type: OCI_CONFIG.to_string(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            urls: None,
            annotations: Default::default(),
            platform: None,
        },
        layers: descriptors,
        annotations: image.manifest.annotations.clone(),
    };
    if let Some(files) = profile {
        let json = crate::store::profile_json(files);
        let plan = PrefetchPlan::resolve(&indexes, files)
            .map_err(|e| ImageError::Invalid { what: dest.to_string(), why: format!("prefetch plan: {e}") })?
            .to_json();
        if json.len() + plan.len() <= MAX_PROFILE_ANNOTATION {
            manifest.annotations.insert(PROFILE_ANNOTATION.to_string(), json);
            manifest.annotations.insert(PREFETCH_PLAN_ANNOTATION.to_string(), plan);
        } else {
            tracing::warn!(
                bytes = json.len() + plan.len(),
                "the profile is too large for the manifest; not embedded"
            );
        }
    }
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    let manifest_digest = Digest::of(&manifest_bytes);
    staged.push(stage(store, &config_bytes, "converted config")?);
    staged.push(stage(store, &manifest_bytes, "converted manifest")?);
    let mut report_layers = Vec::new();
    for (converted, verified) in layers {
        staged.push(verified);
        report_layers.push(converted);
    }
    let record = ImageRecord {
        name: dest.to_string(),
        digest: manifest_digest,
        manifest: manifest_digest,
        source: dest.name(),
        updated: chrono::Utc::now().to_rfc3339(),
    };
    store.commit_image(staged, record.clone())?;
    Ok(ConvertReport { record, layers: report_layers })
}

type LayerOutput = (Verified, ConvertedLayer, std::collections::BTreeMap<String, String>, Arc<LayerIndex>);

fn convert_layer(
    client: &Client,
    store: &Store,
    source: &Reference,
    desc: &Descriptor,
    diff_id: Digest,
    options: &ConvertOptions,
) -> Result<LayerOutput, ImageError> {
    let what = format!("layer {} of {}", desc.digest, source.name());
    let mut input = open_layer(client, store, source, desc, diff_id)?;
    let mut staged = store.stage()?;
    let result = estargz::convert(&mut input, &mut staged, options)
        .map_err(|e| ImageError::Invalid { what: what.clone(), why: crate::registry::error_chain(&e) })?;
    // The converter stops at the tar's end marker; reading on to the end of the stream lets
    // the digest and diff_id checks run.
    io::copy(&mut input, &mut io::sink())
        .map_err(|e| ImageError::Invalid { what: what.clone(), why: e.to_string() })?;
    let verified = staged.finish(Some(&result.blob_digest), Some(result.compressed_size), &what)?;
    let annotations = result.annotations().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    // The new layer's index, as a mount would build it from the TOC: for the prefetch plan.
    let index = EstargzReader::from_toc_json(&what, &result.toc.to_json(), result.toc_offset, None)
        .map_err(|e| ImageError::Invalid { what: what.clone(), why: e.to_string() })
        .and_then(|reader| {
            index_estargz(&reader, &what)
                .map_err(|e| ImageError::Invalid { what: what.clone(), why: e.to_string() })
        })?;
    let converted = ConvertedLayer {
        from: desc.digest,
        to: result.blob_digest,
        diff_id: result.diff_id,
        compressed_size: result.compressed_size,
        uncompressed_size: result.uncompressed_size,
        missing_prioritized: result.missing_prioritized,
    };
    Ok((verified, converted, annotations, Arc::new(index)))
}

fn stage(store: &Store, bytes: &[u8], what: &str) -> Result<Verified, StoreError> {
    use std::io::Write;
    let mut staged = store.stage()?;
    staged.write_all(bytes).map_err(|source| StoreError::Io { path: store.root().join("tmp"), source })?;
    staged.finish(None, Some(bytes.len() as u64), what)
}
