//! What the chunk cache hands out: a [`ChunkHandle`] reads one chunk and keeps it from being
//! evicted while it lives; a [`Claim`] is the right, and the duty, to fetch one missing chunk.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::state::{lock, Flight, Outcome};
use super::{CacheError, Committed, Shared};
use crate::Digest;

/// Read access to one cached chunk. While it lives, the chunk's file is pinned: never evicted.
pub struct ChunkHandle {
    shared: Arc<Shared>,
    digest: Digest,
    len: u64,
    bytes: Bytes,
    /// The index entry this handle pins; `None` for a chunk served from memory.
    pin: Option<u64>,
}

enum Bytes {
    File(File),
    /// A chunk that could not be kept on disk (pinned chunks filled the budget).
    Memory(Arc<[u8]>),
}

impl ChunkHandle {
    pub(super) fn pinned(shared: Arc<Shared>, digest: Digest, len: u64, id: u64, file: File) -> ChunkHandle {
        ChunkHandle { shared, digest, len, bytes: Bytes::File(file), pin: Some(id) }
    }

    pub(super) fn unpinned(shared: Arc<Shared>, digest: Digest, bytes: Arc<[u8]>) -> ChunkHandle {
        let len = bytes.len() as u64;
        ChunkHandle { shared, digest, len, bytes: Bytes::Memory(bytes), pin: None }
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The chunk's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the chunk's bytes from `offset` into `buf`; returns how many, which is less
    /// than `buf.len()` only at the end of the chunk (0 at or past it).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, CacheError> {
        let n = buf.len().min(self.len.saturating_sub(offset) as usize);
        if n == 0 {
            return Ok(0);
        }
        let buf = &mut buf[..n];
        match &self.bytes {
            Bytes::File(file) => file.read_exact_at(buf, offset).map_err(|source| CacheError::Read {
                digest: self.digest,
                path: self.shared.store.chunk_path(&self.digest),
                source,
            })?,
            Bytes::Memory(bytes) => buf.copy_from_slice(&bytes[offset as usize..offset as usize + n]),
        }
        Ok(n)
    }

    /// All of the chunk's bytes.
    pub fn to_vec(&self) -> Result<Vec<u8>, CacheError> {
        let mut out = vec![0; self.len as usize];
        self.read_at(0, &mut out)?;
        Ok(out)
    }

    /// The chunk's file, for zero-copy paths (FUSE passthrough, splice). `None` for a chunk
    /// served from memory because it could not be kept.
    pub fn file(&self) -> Option<&File> {
        match &self.bytes {
            Bytes::File(file) => Some(file),
            Bytes::Memory(_) => None,
        }
    }
}

impl Drop for ChunkHandle {
    fn drop(&mut self) {
        if let Some(id) = self.pin {
            self.shared.unpin(&self.digest, id);
        }
    }
}

impl fmt::Debug for ChunkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkHandle")
            .field("digest", &self.digest)
            .field("len", &self.len)
            .field("pinned", &self.pin.is_some())
            .finish()
    }
}

/// The exclusive right to fetch one missing chunk, from [`ChunkCache::claim`]. Readers of the
/// chunk wait until it is committed or aborted; dropping it aborts it.
///
/// [`ChunkCache::claim`]: super::ChunkCache::claim
pub struct Claim {
    shared: Arc<Shared>,
    digest: Digest,
    /// `None` once the claim has ended.
    flight: Option<Arc<Flight>>,
}

impl Claim {
    pub(super) fn new(shared: Arc<Shared>, digest: Digest, flight: Arc<Flight>) -> Claim {
        Claim { shared, digest, flight: Some(flight) }
    }

    /// The chunk this claim is for.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Verifies `bytes` against the claimed digest and stores them, ending the claim. On a
    /// mismatch or an I/O error nothing is stored and the claim is aborted. The returned
    /// handle is pinned, or holds the bytes in memory if pinned chunks left no room.
    pub fn commit(mut self, bytes: &[u8]) -> Result<ChunkHandle, CacheError> {
        let shared = self.shared.clone();
        match shared.commit(&self.digest, bytes)? {
            Committed::Stored { id, file } => {
                self.finish(Outcome::Stored);
                Ok(ChunkHandle::pinned(shared, self.digest, bytes.len() as u64, id, file))
            }
            Committed::Unstored => {
                let bytes: Arc<[u8]> = bytes.into();
                lock(&shared.index).unstored(&self.digest);
                self.finish(Outcome::Unstored(bytes.clone()));
                Ok(ChunkHandle::unpinned(shared, self.digest, bytes))
            }
        }
    }

    /// Gives the claim up without storing anything; a waiting reader fetches the chunk itself.
    pub fn abort(self) {}

    /// Wakes the waiters; the index must already have ended the flight.
    fn finish(&mut self, outcome: Outcome) {
        if let Some(flight) = self.flight.take() {
            flight.finish(outcome);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.flight.is_some() {
            lock(&self.shared.index).end_flight(&self.digest);
            self.finish(Outcome::Abandoned);
        }
    }
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim").field("digest", &self.digest).finish()
    }
}
