//! `pull`: resolve a reference to one platform's manifest and config, store them; with
//! `full`, download and verify every layer too. Nothing is published in the store until
//! everything the pull needs has been fetched and verified.

use std::io::{Read, Write};
use std::sync::Arc;

use reqwest::StatusCode;
use skiff_fs::Digest;

use super::{parse_config, toc_offset_hint, ImageError, LayerFormat, Progress};
use crate::manifest::{Descriptor, Manifest, Platform};
use crate::reference::Reference;
use crate::registry::{Client, RegistryError};
use crate::store::{ImageRecord, Store, StoreError, Verified};

/// Configs are small; refuse anything that pretends otherwise.
const MAX_CONFIG_SIZE: u64 = 8 << 20;
/// Layers downloaded at once by a full pull.
const PARALLEL_LAYERS: usize = 3;

#[derive(Clone, Debug)]
pub struct PullOptions {
    pub platform: Platform,
    /// Download every layer now instead of lazily.
    pub full: bool,
    /// The image is mounted lazily by this process next: start fetching the tables of
    /// contents it will need as soon as the manifest is in (see [`Client::fetch_toc_ahead`]).
    pub tocs_ahead: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { platform: Platform::host(), full: false, tocs_ahead: false }
    }
}

#[derive(Clone, Debug)]
pub struct PullResult {
    pub record: ImageRecord,
    /// Layers downloaded by this pull (full pulls only).
    pub layers_fetched: usize,
    pub bytes_fetched: u64,
}

pub fn pull(
    client: &Arc<Client>,
    store: &Store,
    reference: &Reference,
    options: &PullOptions,
    progress: &dyn Progress,
) -> Result<PullResult, ImageError> {
    let mut staged: Vec<Verified> = Vec::new();
    let top = client.get_manifest(reference)?;
    let what = format!("manifest {reference} ({})", top.digest);
    let parsed = Manifest::parse(&what, &top.bytes, top.content_type.as_deref())?;
    staged.push(stage_bytes(store, &top.bytes, &top.digest, &what)?);

    let (manifest_digest, manifest) = match parsed {
        Manifest::Image { manifest, .. } => (top.digest, manifest),
        Manifest::Index { index, .. } => {
            let child = index.select(&what, &options.platform)?.clone();
            let child_ref = reference.with_digest(child.digest);
            let fetched = client.get_manifest(&child_ref)?;
            let child_what = format!("manifest {child_ref} (for {})", options.platform);
            if fetched.bytes.len() as u64 != child.size {
                return Err(RegistryError::SizeMismatch {
                    what: child_what,
                    expected: child.size,
                    actual: fetched.bytes.len() as u64,
                }
                .into());
            }
            let Manifest::Image { manifest, .. } =
                Manifest::parse(&child_what, &fetched.bytes, fetched.content_type.as_deref())?
            else {
                return Err(ImageError::Invalid { what: child_what, why: "an index inside an index".into() });
            };
            staged.push(stage_bytes(store, &fetched.bytes, &fetched.digest, &child_what)?);
            (fetched.digest, manifest)
        }
    };

    if options.tocs_ahead && !options.full {
        fetch_tocs_ahead(client, store, reference, &manifest.layers);
    }

    let config_bytes = match store.read(&manifest.config.digest) {
        Ok(bytes) => bytes,
        Err(_) => client.get_blob_bytes(reference, &manifest.config, MAX_CONFIG_SIZE)?,
    };
    parse_config(&reference.to_string(), &manifest, &config_bytes)?;
    staged.push(stage_bytes(store, &config_bytes, &manifest.config.digest, "config")?);

    let mut layers_fetched = 0;
    let mut bytes_fetched = 0;
    if options.full {
        let missing: Vec<&Descriptor> = manifest.layers.iter().filter(|l| !store.has(&l.digest)).collect();
        layers_fetched = missing.len();
        bytes_fetched = missing.iter().map(|l| l.size).sum();
        staged.extend(download_layers(client, store, reference, &missing, progress)?);
    }

    let record = ImageRecord {
        name: reference.to_string(),
        digest: top.digest,
        manifest: manifest_digest,
        source: reference.name(),
        updated: chrono::Utc::now().to_rfc3339(),
    };
    store.commit_image(staged, record.clone())?;
    Ok(PullResult { record, layers_fetched, bytes_fetched })
}

/// Starts fetching the table of contents of each layer a lazy mount will need one of: an
/// eStargz layer (its manifest gives the TOC's offset) neither stored nor indexed yet.
fn fetch_tocs_ahead(client: &Arc<Client>, store: &Store, reference: &Reference, layers: &[Descriptor]) {
    for layer in layers {
        let Some(offset) = toc_offset_hint(layer) else { continue };
        let estargz = matches!(LayerFormat::declared(layer), LayerFormat::Estargz { annotated: true });
        if estargz && !store.has(&layer.digest) && !store.has_layer_index(&layer.digest) {
            client.fetch_toc_ahead(reference, layer, offset);
        }
    }
}

fn stage_bytes(store: &Store, bytes: &[u8], digest: &Digest, what: &str) -> Result<Verified, StoreError> {
    let mut staged = store.stage()?;
    staged.write_all(bytes).map_err(|source| StoreError::Io { path: store.root().join("tmp"), source })?;
    staged.finish(Some(digest), Some(bytes.len() as u64), what)
}

/// Downloads layers, a few at a time; all must succeed.
fn download_layers(
    client: &Arc<Client>,
    store: &Store,
    reference: &Reference,
    layers: &[&Descriptor],
    progress: &dyn Progress,
) -> Result<Vec<Verified>, ImageError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_LAYERS.min(layers.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(layer) = layers.get(i) else { break };
                let result = download_blob(client, store, reference, layer, progress);
                let failed = result.is_err();
                results.lock().unwrap().push(result);
                if failed {
                    // Stop handing out work; the pull fails anyway.
                    next.store(layers.len(), std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    results.into_inner().unwrap().into_iter().collect()
}

/// Streams one blob into a staged store object, verifying size and digest. A connection
/// that breaks mid-way is resumed from where it stopped.
pub(crate) fn download_blob(
    client: &Client,
    store: &Store,
    reference: &Reference,
    desc: &Descriptor,
    progress: &dyn Progress,
) -> Result<Verified, ImageError> {
    let what = format!("layer {} of {}", desc.digest, reference.name());
    let mut staged = store.stage()?;
    let retries = client.options().retries;
    let mut failures = 0;
    let mut buf = vec![0u8; 256 << 10];
    progress.start(&desc.digest, desc.size);
    loop {
        let written = staged.written();
        let mut resp = client.get_blob(reference, &desc.digest, Some(written))?;
        if written > 0 && resp.status() == StatusCode::OK {
            // The server does not resume: skip what we already have.
            let skipped = std::io::copy(&mut (&mut resp).take(written), &mut std::io::sink()).unwrap_or(0);
            if skipped != written {
                return Err(RegistryError::SizeMismatch { what, expected: desc.size, actual: skipped }.into());
            }
        }
        let broke = loop {
            match resp.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    if staged.written() + n as u64 > desc.size {
                        return Err(RegistryError::SizeMismatch {
                            what,
                            expected: desc.size,
                            actual: staged.written() + n as u64,
                        }
                        .into());
                    }
                    staged
                        .write_all(&buf[..n])
                        .map_err(|source| StoreError::Io { path: store.root().join("tmp"), source })?;
                    progress.advance(&desc.digest, n as u64);
                }
                Err(e) => break Some(e),
            }
        };
        match broke {
            None => break,
            Some(e) if failures < retries => {
                failures += 1;
                tracing::debug!(%what, error = %e, at = staged.written(), "download broke, resuming");
            }
            Some(e) => {
                return Err(RegistryError::Protocol {
                    what,
                    why: format!("download broke at byte {}: {e}", staged.written()),
                }
                .into())
            }
        }
    }
    let verified = staged.finish(Some(&desc.digest), Some(desc.size), &what)?;
    progress.finish(&desc.digest);
    Ok(verified)
}
