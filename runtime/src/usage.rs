//! Running totals across skiff processes: cache hits and fills, and bytes and requests
//! fetched from registries, so `skiff cache stats` (and the benchmark) can show that runs were
//! lazy. Each mount adds what it did when it ends, under a lock on the totals file.

use std::fs;
use std::io;
use std::path::Path;

use fs2::FileExt;
use serde::{Deserialize, Serialize};
use skiff_fs::CacheStats;

use crate::layers::OpenedLayer;
use crate::store::write_atomic;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub hits: u64,
    pub misses: u64,
    pub fills: u64,
    pub bytes_filled: u64,
    pub evictions: u64,
    pub corrupt: u64,
    /// Bytes and requests of lazy range reads from registries.
    pub registry_bytes: u64,
    pub registry_requests: u64,
    /// Bytes of plain layers streamed whole to build their index.
    pub streamed_bytes: u64,
    /// Distinct file bytes read from lower layers, at each layer's compression ratio: what
    /// the workloads needed, to compare with `registry_bytes`.
    #[serde(default)]
    pub read_compressed_bytes: u64,
}

impl Totals {
    /// What one mount did: its cache counters and its layers' fetches.
    pub fn of(cache: &CacheStats, layers: &[OpenedLayer]) -> Totals {
        use std::sync::atomic::Ordering::Relaxed;
        let fetched = layers.iter().filter_map(|l| l.fetched.as_ref());
        Totals {
            hits: cache.hits,
            misses: cache.misses,
            fills: cache.fills,
            bytes_filled: cache.bytes_filled,
            evictions: cache.evictions,
            corrupt: cache.corrupt,
            registry_bytes: fetched.clone().map(|f| f.bytes.load(Relaxed)).sum(),
            registry_requests: fetched.map(|f| f.requests.load(Relaxed)).sum(),
            streamed_bytes: layers.iter().map(|l| l.streamed).sum(),
            read_compressed_bytes: layers.iter().map(|l| l.layer.bytes_read_compressed()).sum(),
        }
    }

    fn add(&mut self, o: &Totals) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.fills += o.fills;
        self.bytes_filled += o.bytes_filled;
        self.evictions += o.evictions;
        self.corrupt += o.corrupt;
        self.registry_bytes += o.registry_bytes;
        self.registry_requests += o.registry_requests;
        self.streamed_bytes += o.streamed_bytes;
        self.read_compressed_bytes += o.read_compressed_bytes;
    }

    /// Hits over all lookups, 0 when there were none.
    pub fn hit_ratio(&self) -> f64 {
        let all = self.hits + self.misses;
        if all == 0 {
            0.0
        } else {
            self.hits as f64 / all as f64
        }
    }
}

fn path(root: &Path) -> std::path::PathBuf {
    root.join("usage.json")
}

/// The totals so far (zero when none were recorded).
pub fn read(root: &Path) -> Totals {
    fs::read(path(root)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Adds `delta` to the totals under `root`.
pub fn add(root: &Path, delta: &Totals) -> io::Result<()> {
    fs::create_dir_all(root)?;
    let lock =
        fs::OpenOptions::new().create(true).truncate(false).write(true).open(root.join("usage.lock"))?;
    lock.lock_exclusive()?;
    let mut totals = read(root);
    totals.add(delta);
    write_atomic(&path(root), &serde_json::to_vec_pretty(&totals).expect("serializes"), 0o644)
}
