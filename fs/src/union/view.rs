//! `LayerView`: what the union needs of a read-only (lower) layer — its index and a way to
//! read a file's bytes. `LazyLayer` is the implementation that matters.

use std::collections::HashSet;
use std::io;
use std::time::Duration;

use crate::index::{ChunkRef, LayerIndex, NodeId};
use crate::lazy::{LazyLayer, Ticket};
use crate::Digest;

pub trait LayerView: Send + Sync {
    fn index(&self) -> &LayerIndex;

    /// Reads file `node` at `offset`; returns the bytes read, 0 at the end.
    fn read(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// Fetches `chunks` ahead of their reads, telling `ticket` of the bytes as they arrive;
    /// returns the bytes fetched. Layers whose bytes are all local need not do anything.
    fn prefetch(&self, _chunks: &[PrefetchChunk], _ticket: &Ticket<'_>) -> io::Result<u64> {
        Ok(0)
    }

    /// `chunks` as the requests a `prefetch` of them makes, each fetched with its own
    /// `prefetch`: then none waits for another's round trip.
    fn prefetch_requests(&self, chunks: Vec<PrefetchChunk>) -> Vec<Vec<PrefetchChunk>> {
        vec![chunks]
    }

    /// Told, before any `prefetch`, every chunk of this layer the prefetch will fetch.
    fn plan_prefetch(&self, _chunks: HashSet<Digest>) {}

    /// The shortest time a fetch of this layer's bytes has waited for its answer to begin;
    /// `None` until one has (and for layers whose bytes are all local).
    fn delay(&self) -> Option<Duration> {
        None
    }
}

/// A chunk to prefetch, and the file it is read for (named in errors).
pub type PrefetchChunk = (NodeId, ChunkRef);

impl LayerView for LazyLayer {
    fn index(&self) -> &LayerIndex {
        LazyLayer::index(self)
    }

    fn read(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        LazyLayer::read(self, node, offset, buf).map_err(|e| {
            // The kernel only sees EIO; the log says which file, blob and chunk failed.
            tracing::error!(error = %error_chain(&e), "lazy read failed");
            io::Error::other(e)
        })
    }

    fn plan_prefetch(&self, chunks: HashSet<Digest>) {
        LazyLayer::plan_prefetch(self, chunks)
    }

    fn prefetch_requests(&self, chunks: Vec<PrefetchChunk>) -> Vec<Vec<PrefetchChunk>> {
        LazyLayer::prefetch_requests(chunks)
    }

    fn delay(&self) -> Option<Duration> {
        LazyLayer::delay(self)
    }

    fn prefetch(&self, chunks: &[PrefetchChunk], ticket: &Ticket<'_>) -> io::Result<u64> {
        let fallback = crate::lazy::Priority::default();
        let priority = self.priority().map_or(&fallback, |p| p.as_ref());
        self.prefetch_chunks(chunks, priority, ticket).map_err(|e| {
            tracing::warn!(error = %error_chain(&e), "prefetch failed");
            io::Error::other(e)
        })
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
