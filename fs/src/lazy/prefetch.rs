//! Background prefetch: fetching the chunks a workload is known to read (its profile) before
//! it asks, in large coalesced requests, always yielding to reads a process is waiting for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{LazyError, LazyLayer, PLANNED_GAP};
use crate::index::ChunkRef;
use crate::union::PrefetchChunk;

/// Counts foreground reads in progress; background work waits while there are any.
#[derive(Debug, Default)]
pub struct Priority {
    foreground: AtomicUsize,
}

/// Marks one foreground read for as long as it lives.
pub struct Foreground<'a>(&'a Priority);

impl Priority {
    pub fn foreground(&self) -> Foreground<'_> {
        self.foreground.fetch_add(1, Ordering::SeqCst);
        Foreground(self)
    }

    /// Waits until no foreground read is in progress.
    pub fn yield_to_foreground(&self) {
        while self.foreground.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        self.0.foreground.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Most bytes one prefetch step claims: small enough that a foreground read never waits
/// behind much background work.
const STEP: u64 = 512 << 10;

impl LazyLayer {
    /// Fetches every chunk of `chunks` not cached yet, in blob order, `STEP` bytes at a time,
    /// yielding to foreground reads between steps. Returns the bytes fetched.
    pub fn prefetch_chunks(&self, chunks: &[PrefetchChunk], priority: &Priority) -> Result<u64, LazyError> {
        let mut chunks = chunks.to_vec();
        chunks.sort_by_key(|(_, c)| (c.offset, c.inner_offset));
        chunks.dedup_by_key(|(_, c)| c.digest);
        let mut fetched = 0;
        let mut rest = chunks.as_slice();
        while !rest.is_empty() {
            let mut take = 0;
            let mut bytes = 0;
            while take < rest.len() && (take == 0 || bytes + rest[take].1.compressed_len <= STEP) {
                bytes += rest[take].1.compressed_len;
                take += 1;
            }
            let (step, tail) = rest.split_at(take);
            rest = tail;
            priority.yield_to_foreground();
            tracing::debug!(bytes, chunks = take, "prefetching");
            let refs: Vec<ChunkRef> = step.iter().map(|(_, c)| *c).collect();
            let claims = self.cache.claim(&refs.iter().map(|c| c.digest).collect::<Vec<_>>());
            fetched += claims
                .iter()
                .filter_map(|cl| refs.iter().find(|c| c.digest == *cl.digest()))
                .map(|c| c.len)
                .sum::<u64>();
            self.fill_claims(step[0].0, &refs, claims, PLANNED_GAP)?;
        }
        Ok(fetched)
    }
}

impl LazyLayer {
    pub fn priority(&self) -> Option<&Arc<Priority>> {
        self.priority.as_ref()
    }
}
