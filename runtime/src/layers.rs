//! Opening an image's layers lazily: for each layer, its index (kept in the store after the
//! first time) and a `LazyLayer` that reads through the chunk cache from the registry.
//!
//! eStargz layers need only their TOC. Plain layers (gzip, zstd, tar) have no index to
//! fetch, so they are streamed once — all of them at the same time — straight into the
//! cache, building the index as they go.

use std::io::{self, Read};
use std::sync::Arc;

use skiff_fs::estargz::{EstargzReader, TOC_DIGEST_ANNOTATION};
use skiff_fs::index::LayerIndex;
use skiff_fs::lazy::{index_estargz, Foreground, LazyLayer, Priority, Restream};
use skiff_fs::tarindex::index_tar;
use skiff_fs::{BlobSource, ChunkCache, Digest, FileSource};

use crate::image::stream::open_layer;
use crate::image::{toc_offset_hint, ImageError, LayerFormat, StoredImage};
use crate::manifest::Descriptor;
use crate::plan::PrefetchPlan;
use crate::reference::Reference;
use crate::registry::{Client, FetchStats, TocAhead};
use crate::store::{ImageRecord, Store, StoreError};

/// Chunk size for plain layers, cut while streaming (eStargz layers bring their own).
pub const STREAM_CHUNK_SIZE: u64 = 1 << 20;

/// One opened layer of an image.
pub struct OpenedLayer {
    pub descriptor: Descriptor,
    pub format: LayerFormat,
    pub layer: Arc<LazyLayer>,
    /// What the lazy reads fetched from the registry (None when the blob is local).
    pub fetched: Option<Arc<FetchStats>>,
    /// Bytes streamed to build the index now (plain layers opened the first time).
    pub streamed: u64,
    /// The index of a first open, being saved to the store off the start-up path; waited
    /// for when the layer is dropped.
    saving: Option<std::thread::JoinHandle<()>>,
}

impl Drop for OpenedLayer {
    fn drop(&mut self) {
        if let Some(saving) = self.saving.take() {
            let _ = saving.join();
        }
    }
}

/// Opens every layer of a stored image, bottom layer first.
pub fn open_layers(
    client: &Arc<Client>,
    store: &Store,
    cache: &ChunkCache,
    record: &ImageRecord,
) -> Result<Vec<OpenedLayer>, ImageError> {
    open_image_layers(client, store, cache, &StoredImage::load(store, record)?, None)
}

/// As [`open_layers`], for an image already loaded; with an `early` plan, its first batches
/// are fetched once the layers' tables of contents are in, while they are read.
pub fn open_image_layers(
    client: &Arc<Client>,
    store: &Store,
    cache: &ChunkCache,
    image: &StoredImage,
    early: Option<&PrefetchPlan>,
) -> Result<Vec<OpenedLayer>, ImageError> {
    let record = &image.record;
    let config = image.config()?;
    let source: Reference = format!("{}@{}", record.source, record.manifest)
        .parse()
        .map_err(|e| ImageError::Invalid { what: record.name.clone(), why: format!("source: {e}") })?;
    let diff_ids: Vec<Digest> =
        config.rootfs().diff_ids().iter().map(|d| d.parse().expect("checked by config()")).collect();
    let layers = &image.manifest.layers;
    let priority = Arc::new(Priority::default());
    let (blobs, aheads): (Vec<LayerSource>, Vec<Option<TocAhead>>) = layers
        .iter()
        .map(|desc| layer_source(client, store, &source, desc))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    // Each opener is foreground work until its table of contents is in: taken before the
    // early prefetch starts, which yields to it.
    let arrivals: Vec<Foreground<'_>> = layers.iter().map(|_| priority.foreground()).collect();
    if let Some(plan) = early {
        tracing::debug!(batches = plan.batches.len(), "prefetching as the tables of contents are read");
        let sources: Vec<Arc<dyn BlobSource>> = blobs.iter().map(|(s, _)| s.clone()).collect();
        plan.fetch_early(&sources, cache, &priority);
    }
    let image = ImageLayers { client, store, cache, source: &source, priority: &priority };
    std::thread::scope(|scope| {
        let handles: Vec<_> = layers
            .iter()
            .zip(&diff_ids)
            .zip(blobs)
            .zip(arrivals)
            .zip(aheads)
            .map(|((((desc, &diff_id), blob), toc), ahead)| {
                let layer = LayerToOpen { desc, diff_id, blob, toc, ahead };
                scope.spawn(move || open_layer_lazily(image, layer))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("layer opener panicked")).collect()
    })
}

/// Where a layer's bytes come from: the store when it holds the blob, else the registry
/// (with what was fetched from it).
type LayerSource = (Arc<dyn BlobSource>, Option<Arc<FetchStats>>);

/// A layer's source, and its table of contents when a pull fetched it ahead: that fetch's
/// blob then serves (and counts) every fetch of the layer.
fn layer_source(
    client: &Arc<Client>,
    store: &Store,
    source_ref: &Reference,
    desc: &Descriptor,
) -> Result<(LayerSource, Option<TocAhead>), ImageError> {
    if store.has(&desc.digest) {
        let path = store.path_of(&desc.digest);
        let file = FileSource::open(&path).map_err(|source| StoreError::Io { path, source })?;
        return Ok(((Arc::new(file), None), None));
    }
    let ahead = client.take_toc_ahead(&desc.digest);
    let blob = match &ahead {
        Some(a) => a.blob.clone(),
        None => Arc::new(client.blob_source(source_ref, desc.digest, desc.size)),
    };
    let stats = blob.stats();
    Ok(((blob, Some(stats)), ahead))
}

/// What every layer of one image is opened with.
#[derive(Clone, Copy)]
struct ImageLayers<'a> {
    client: &'a Arc<Client>,
    store: &'a Store,
    cache: &'a ChunkCache,
    /// The image, by digest, for the layers' blob URLs.
    source: &'a Reference,
    priority: &'a Arc<Priority>,
}

/// One layer to open: where its bytes come from, the foreground work an early prefetch
/// waits for until its table of contents is in, and that table on its way since the pull.
struct LayerToOpen<'a> {
    desc: &'a Descriptor,
    diff_id: Digest,
    blob: LayerSource,
    toc: Foreground<'a>,
    ahead: Option<TocAhead>,
}

fn open_layer_lazily(image: ImageLayers<'_>, layer: LayerToOpen<'_>) -> Result<OpenedLayer, ImageError> {
    let ImageLayers { client, store, cache, source: source_ref, priority } = image;
    let LayerToOpen { desc, diff_id, blob: (source, fetched), toc, ahead } = layer;
    let what = format!("layer {} of {}", desc.digest, source_ref.name());
    let invalid = |why: String| ImageError::Invalid { what: what.clone(), why };
    let stored = store.read_layer_index(&desc.digest);
    let format = match &stored {
        Some(_) => LayerFormat::declared(desc),
        None => LayerFormat::probe(desc, &*source).map_err(|e| invalid(crate::registry::error_chain(&e)))?,
    };
    let restream: Arc<Restream> = {
        let (client, store, source_ref, desc) =
            (client.clone(), store.clone(), source_ref.clone(), desc.clone());
        Arc::new(move || {
            open_layer(&client, &store, &source_ref, &desc, diff_id)
                .map_err(|e| io::Error::other(e.to_string()))
        })
    };
    let mut streamed = 0;
    let mut saving = None;
    let index = match stored {
        Some(index) => Arc::new(index),
        None => {
            let index = match format {
                LayerFormat::Estargz { .. } => {
                    let expected = match desc.annotations.get(TOC_DIGEST_ANNOTATION) {
                        Some(d) => Some(
                            d.parse::<Digest>()
                                .map_err(|e| invalid(format!("TOC digest annotation: {e}")))?,
                        ),
                        None => None,
                    };
                    let started = std::time::Instant::now();
                    let hint = toc_offset_hint(desc);
                    // The early prefetch goes once the TOC's bytes are in: with a right hint,
                    // before they are parsed.
                    let reader = match hint {
                        Some(offset) => {
                            let tail = match ahead {
                                // A fetch that panicked is made again.
                                Some(a) if a.offset == offset => a
                                    .tail
                                    .join()
                                    .unwrap_or_else(|_| EstargzReader::fetch_tail(&*source, offset)),
                                _ => EstargzReader::fetch_tail(&*source, offset),
                            };
                            drop(toc);
                            tail.and_then(|tail| {
                                EstargzReader::open_tail(&*source, expected.as_ref(), offset, tail)
                            })
                        }
                        None => {
                            let reader = EstargzReader::open(&*source, expected.as_ref());
                            drop(toc);
                            reader
                        }
                    }
                    .map_err(|e| invalid(crate::registry::error_chain(&e)))?;
                    let fetched = started.elapsed();
                    let index = index_estargz(&reader, &what).map_err(|e| invalid(e.to_string()))?;
                    tracing::debug!(
                        layer = %desc.digest,
                        toc_ms = fetched.as_millis() as u64,
                        index_ms = (started.elapsed() - fetched).as_millis() as u64,
                        "read the table of contents"
                    );
                    index
                }
                _ => {
                    // Streaming is this layer's whole download, no table of contents.
                    drop(toc);
                    streamed = desc.size;
                    stream_into_cache(&*restream, cache)
                        .map_err(|e| invalid(crate::registry::error_chain(&*e)))?
                }
            };
            let index = Arc::new(index);
            let (store, digest, saved) = (store.clone(), desc.digest, index.clone());
            saving = Some(std::thread::spawn(move || {
                // A cache of what the registry gave: the next mount of the layer needs no
                // download of metadata. Losing it costs only that.
                if let Err(e) = store.write_layer_index(&digest, &saved) {
                    tracing::warn!(layer = %digest, error = %e, "saving the layer's index");
                }
            }));
            index
        }
    };
    let mut layer = LazyLayer::new(index, cache.clone(), source).with_priority(priority.clone());
    if !matches!(format, LayerFormat::Estargz { .. }) {
        layer = layer.with_restream(restream);
    }
    Ok(OpenedLayer { descriptor: desc.clone(), format, layer: Arc::new(layer), fetched, streamed, saving })
}

/// Streams a plain layer once, indexing it and committing every chunk to the cache.
fn stream_into_cache(
    restream: &Restream,
    cache: &ChunkCache,
) -> Result<LayerIndex, Box<dyn std::error::Error + Send + Sync>> {
    let mut stream = restream()?;
    let mut sink = |chunk: &skiff_fs::index::ChunkRef,
                    bytes: &[u8]|
     -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        for claim in cache.claim(&[chunk.digest]) {
            claim.commit(bytes)?;
        }
        Ok(())
    };
    let index = index_tar(&mut stream, STREAM_CHUNK_SIZE, &mut sink)?;
    // Read to the end, so the digest and diff_id checks at the end of the stream run.
    io::copy(&mut stream, &mut io::sink())?;
    let _: &mut dyn Read = &mut stream;
    Ok(index)
}
