//! Images: pulling into the store, pushing from it, and reading what the store holds.

mod archive;
mod commit;
mod convert;
pub mod dockerfile;
mod format;
mod import;
mod inspect;
mod pull;
mod push;
pub mod stream;

use skiff_fs::Digest;

pub use archive::{load, save};
pub use commit::{change_config, commit, without_triggers, CommitOptions, LayerCompression};
pub use convert::{
    convert, ConvertReport, ConvertedLayer, ESTARGZ_LAYER, MAX_PROFILE_ANNOTATION, PROFILE_ANNOTATION,
};
pub use format::{toc_offset_hint, LayerFormat};
pub use import::{check_trigger, import, ImportOptions};
pub use inspect::{inspect, ImageDetails, LayerDetails};
pub use pull::{pull, PullOptions, PullResult};
pub use push::{push, PushResult};

use crate::manifest::{ImageManifest, Manifest, ManifestError};
use crate::registry::RegistryError;
use crate::store::{ImageRecord, Store, StoreError};

/// Reports the progress of layer transfers; the CLI draws bars, tests ignore it.
pub trait Progress: Sync {
    fn start(&self, _digest: &Digest, _size: u64) {}
    fn advance(&self, _digest: &Digest, _bytes: u64) {}
    fn finish(&self, _digest: &Digest) {}
}

/// A [`Progress`] that reports nothing.
pub struct Quiet;
impl Progress for Quiet {}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("config {digest} of {image} is invalid: {why}")]
    Config { image: String, digest: Digest, why: String },
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
}

/// The image manifest and raw config of a stored image.
pub struct StoredImage {
    pub record: ImageRecord,
    pub media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest: ImageManifest,
    pub config_bytes: Vec<u8>,
}

impl StoredImage {
    pub fn load(store: &Store, record: &ImageRecord) -> Result<StoredImage, ImageError> {
        let what = format!("manifest {} of {}", record.manifest, record.name);
        let manifest_bytes = store.read(&record.manifest)?;
        let Manifest::Image { media_type, manifest } = Manifest::parse(&what, &manifest_bytes, None)? else {
            return Err(ImageError::Invalid { what, why: "is an index, not an image manifest".into() });
        };
        let config_bytes = store.read(&manifest.config.digest)?;
        Ok(StoredImage {
            record: record.clone(),
            media_type,
            manifest_bytes,
            manifest: *manifest,
            config_bytes,
        })
    }

    pub fn config(&self) -> Result<oci_spec::image::ImageConfiguration, ImageError> {
        parse_config(&self.record.name, &self.manifest, &self.config_bytes)
    }
}

/// Parses and checks an image config against its manifest.
fn parse_config(
    image: &str,
    manifest: &ImageManifest,
    bytes: &[u8],
) -> Result<oci_spec::image::ImageConfiguration, ImageError> {
    let bad =
        |why: String| ImageError::Config { image: image.to_string(), digest: manifest.config.digest, why };
    let config: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a valid image config: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers.len() {
        return Err(bad(format!(
            "it lists {} layer diff_ids but the manifest has {} layers",
            diff_ids.len(),
            manifest.layers.len()
        )));
    }
    for id in diff_ids {
        id.parse::<Digest>().map_err(|e| bad(format!("diff_id {id:?}: {e}")))?;
    }
    Ok(config)
}
