//! A prefetch plan: the chunks a profile's prefetch fetches, resolved against an image's
//! layers, in the prefetch's batches. `skiff convert` puts one in the manifest next to the
//! profile, so that a start can fetch the first batches while the layers' tables of contents
//! are being read and indexed (the link is otherwise idle then).

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use skiff_fs::index::{ChunkRef, Codec, IndexBuilder, LayerIndex, NodeId};
use skiff_fs::lazy::{LazyLayer, Priority, Ticket};
use skiff_fs::union::{LayerView, PrefetchChunk, ProfiledFile, Union};
use skiff_fs::{BlobSource, ChunkCache, Digest};

/// Manifest annotation holding a [`PrefetchPlan`] as JSON.
pub const PREFETCH_PLAN_ANNOTATION: &str = "io.skiff.prefetch-plan";

/// How many of a plan's batches a start fetches before the tables of contents are read: about
/// what the link can carry while they are parsed and indexed. The union's prefetch does the
/// rest.
pub const EARLY_BATCHES: usize = 1;

/// A planned chunk larger than this, inflated or not, makes the plan invalid: eStargz chunks
/// are a few MiB at most, and the plan comes from the manifest, not from a verified TOC.
pub const MAX_PLANNED_CHUNK: u64 = 64 << 20;

/// One chunk: its layer (0 = the manifest's first), where its gzip member starts and how many
/// bytes to fetch from there, where it starts in the inflated member, its length, its digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedChunk(pub usize, pub u64, pub u64, pub u64, pub u64, pub Digest);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchPlan {
    pub batches: Vec<Vec<PlannedChunk>>,
}

/// A layer known by its index alone: enough to resolve paths through a union.
struct IndexOnly(Arc<LayerIndex>);

impl LayerView for IndexOnly {
    fn index(&self) -> &LayerIndex {
        &self.0
    }

    fn read(&self, _node: NodeId, _offset: u64, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("an index-only layer has no bytes"))
    }
}

impl PrefetchPlan {
    /// Resolves `files` through the union of `layers` (bottom first, as in a manifest) into
    /// the batches a mount's prefetch of that profile fetches.
    pub fn resolve(layers: &[Arc<LayerIndex>], files: &[ProfiledFile]) -> io::Result<PrefetchPlan> {
        let scratch = tempfile::tempdir()?;
        let lowers: Vec<Arc<dyn LayerView>> =
            layers.iter().map(|i| Arc::new(IndexOnly(i.clone())) as Arc<dyn LayerView>).collect();
        let union = Union::new(lowers, &scratch.path().join("upper"), &scratch.path().join("work"))?;
        let top = layers.len().saturating_sub(1);
        let batches = union
            .prefetch_batches(files)
            .into_iter()
            .map(|batch| {
                batch
                    .into_iter()
                    .map(|(layer, (_, c))| {
                        PlannedChunk(top - layer, c.offset, c.compressed_len, c.inner_offset, c.len, c.digest)
                    })
                    .collect()
            })
            .collect();
        Ok(PrefetchPlan { batches })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializes")
    }

    pub fn from_json(json: impl AsRef<[u8]>) -> Result<PrefetchPlan, String> {
        let plan: PrefetchPlan = serde_json::from_slice(json.as_ref()).map_err(|e| e.to_string())?;
        match plan.batches.iter().flatten().find(|c| c.2 > MAX_PLANNED_CHUNK || c.4 > MAX_PLANNED_CHUNK) {
            Some(c) => Err(format!("chunk {} is over {MAX_PLANNED_CHUNK} bytes", c.5)),
            None => Ok(plan),
        }
    }

    /// Fetches the first [`EARLY_BATCHES`] batches into `cache` in the background, one
    /// thread for each layer a batch touches (a few KiB of one layer must not hold back half
    /// a MiB of another), from `sources` (one per layer, as in the manifest), yielding to
    /// foreground reads as a prefetch does. Chunks cached or on their way are skipped. The
    /// layers' openers hold `priority` as foreground work until their tables of contents are
    /// in: those bytes are what every start waits for first, so they get the link to
    /// themselves.
    pub fn fetch_early(&self, sources: &[Arc<dyn BlobSource>], cache: &ChunkCache, priority: &Arc<Priority>) {
        let empty = Arc::new(IndexBuilder::new().finish());
        for batch in self.batches.iter().take(EARLY_BATCHES) {
            let mut by_layer: std::collections::BTreeMap<usize, Vec<PrefetchChunk>> = Default::default();
            for c in batch {
                // Chunks of no file the (empty) index knows: errors name the layer's root.
                by_layer.entry(c.0).or_default().push((0, c.chunk()));
            }
            for (layer, chunks) in by_layer {
                let Some(source) = sources.get(layer) else { continue };
                let lower = LazyLayer::new(empty.clone(), cache.clone(), source.clone())
                    .with_priority(priority.clone());
                // A failure is logged; the mount's prefetch or reads fetch the chunks again.
                let spawned = std::thread::Builder::new()
                    .name("skiff-early-prefetch".into())
                    .spawn(move || LayerView::prefetch(&lower, &chunks, &Ticket::unpaced()).ok());
                if let Err(e) = spawned {
                    tracing::debug!(error = %e, "no early prefetch");
                }
            }
        }
    }
}

impl PlannedChunk {
    /// The chunk, as an index would describe it (its place in its file aside).
    fn chunk(&self) -> ChunkRef {
        ChunkRef {
            digest: self.5,
            file_offset: 0,
            len: self.4,
            codec: Codec::Gzip,
            offset: self.1,
            compressed_len: self.2,
            inner_offset: self.3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = 128 << 10;

    /// A layer of `files` (path, chunks), each chunk 1000 bytes in the blob.
    fn layer(tag: &str, files: &[(&str, u64)]) -> Arc<LayerIndex> {
        Arc::new(LayerIndex::of_test_files(tag, files, CHUNK, 1000))
    }

    /// A blob of zeros that counts the reads made of it; a gated one's reads wait until it
    /// is opened (10 s at most).
    #[derive(Default)]
    struct Gated {
        reads: std::sync::atomic::AtomicUsize,
        open: std::sync::Mutex<bool>,
        opened: std::sync::Condvar,
    }

    impl Gated {
        fn open_from_start() -> Gated {
            Gated { open: std::sync::Mutex::new(true), ..Gated::default() }
        }

        fn reads(&self) -> usize {
            self.reads.load(std::sync::atomic::Ordering::SeqCst)
        }

        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    impl BlobSource for Gated {
        fn name(&self) -> String {
            "gated".into()
        }

        fn size(&self) -> u64 {
            1 << 20
        }

        fn read_at(&self, _offset: u64, buf: &mut [u8]) -> Result<usize, skiff_fs::SourceError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let open = self.open.lock().unwrap();
            let _ = self.opened.wait_timeout_while(open, std::time::Duration::from_secs(10), |open| !*open);
            buf.fill(0);
            Ok(buf.len())
        }
    }

    #[test]
    fn the_early_prefetch_waits_for_every_table_of_contents() {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(cache_dir.path(), 1 << 20).unwrap();
        let source = Arc::new(Gated::open_from_start());
        let chunk = PlannedChunk(0, 0, 100, 0, 100, Digest::of(b"chunk"));
        let plan = PrefetchPlan { batches: vec![vec![chunk]] };
        let priority = Arc::new(Priority::default());
        let tables = [priority.foreground(), priority.foreground()];
        plan.fetch_early(&[source.clone() as Arc<dyn BlobSource>], &cache, &priority);
        let reads = || source.reads();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(reads(), 0, "a table of contents is still on its way");
        drop(tables);
        let started = std::time::Instant::now();
        while reads() == 0 && started.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(reads() > 0, "the batch went once the tables were in");
    }

    #[test]
    fn each_layer_of_an_early_batch_is_fetched_without_waiting_for_the_others() {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(cache_dir.path(), 1 << 20).unwrap();
        let slow = Arc::new(Gated::default());
        let fast = Arc::new(Gated::open_from_start());
        let plan = PrefetchPlan {
            batches: vec![vec![
                PlannedChunk(0, 0, 100, 0, 100, Digest::of(b"first")),
                PlannedChunk(1, 0, 100, 0, 100, Digest::of(b"second")),
            ]],
        };
        let sources: [Arc<dyn BlobSource>; 2] = [slow.clone(), fast.clone()];
        plan.fetch_early(&sources, &cache, &Arc::new(Priority::default()));
        let (reads, slow_reads) = (|| fast.reads(), || slow.reads());
        let started = std::time::Instant::now();
        while (reads() == 0 || slow_reads() == 0) && started.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let (fast_seen, slow_seen) = (reads(), slow_reads());
        slow.open();
        assert_eq!(slow_seen, 1, "layer 0's part is on its way, held at the registry");
        assert!(fast_seen > 0, "layer 1's part waited for layer 0's fetch to end");
    }

    #[test]
    fn a_plan_names_the_chunks_a_mount_reads_by_manifest_layer_and_survives_json() {
        let base = layer("base", &[("etc/passwd", 1), ("usr/bin/tool", 2)]);
        let top = layer("top", &[("usr/bin/tool", 2), ("app", 1)]);
        let files = [
            ProfiledFile { path: "etc/passwd".into(), ranges: Vec::new() },
            ProfiledFile { path: "usr/bin/tool".into(), ranges: vec![(CHUNK, CHUNK + 1)] },
            ProfiledFile { path: "app".into(), ranges: Vec::new() },
        ];
        let plan = PrefetchPlan::resolve(&[base, top], &files).unwrap();
        let named: Vec<(usize, u64, Digest)> =
            plan.batches.concat().iter().map(|c| (c.0, c.1, c.5)).collect();
        let d = |s: &str| Digest::of(s.as_bytes());
        // The top layer's tool shadows the base's; layer 0 is the manifest's first.
        assert_eq!(
            named,
            [(0, 0, d("base etc/passwd 0")), (1, 1000, d("top usr/bin/tool 1")), (1, 2000, d("top app 0"))]
        );
        assert_eq!(PrefetchPlan::from_json(plan.to_json()).unwrap(), plan);
        assert!(PrefetchPlan::from_json(r#"{"batches": [[[0, 1]]]}"#).is_err());
        let mut huge = plan.clone();
        huge.batches[0][0].4 = MAX_PLANNED_CHUNK + 1;
        let err = PrefetchPlan::from_json(huge.to_json()).unwrap_err();
        assert!(err.contains(&d("base etc/passwd 0").to_string()), "{err}");
    }
}
