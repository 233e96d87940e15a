//! The chunk cache: uncompressed chunks on disk, addressed by their sha256, verified, kept
//! within a byte budget by LRU eviction, and fetched once however many readers miss at once.
//!
//! Two halves, as in nydus: `state` knows which chunks are ready, pinned or being fetched
//! (memory only, behind one short lock); `store` knows where the bytes live on disk
//! (`<dir>/sha256/<2 hex>/<64 hex>`, written under `<dir>/tmp/` and renamed into place). This
//! file joins them; `handle` holds what callers get back.
//!
//! Policies, and why:
//! - **Single flight.** The first reader to miss a chunk owns its fetch; later readers wait.
//!   If the fetch fails or is aborted, the waiters do not share its error (they could not: it
//!   is the caller's own error type): each looks again, one becomes the new fetcher with its
//!   own `fill`, the rest wait on it. Every caller's `fill` runs at most once.
//! - **Verification.** Filled bytes are hashed before anything is written; a mismatch stores
//!   nothing. A chunk on disk is hashed at its first use by a process, and then trusted (a
//!   cheap length check still runs on every open): FUSE reads come 128 KiB to 1 MiB at a
//!   time, so hashing a 4 MiB chunk on each read would cost up to 32 hashes per chunk read
//!   through. A chunk written or hashed earlier in the same boot, and not written since, is
//!   not hashed again (the store marks it; see `store`): every container start is a new
//!   process, and hashing all it reads cost a warm start of a JDK about 40 ms. A chunk that
//!   fails is deleted and reported as a miss, so the caller fetches it again. Since anything
//!   a crash could tear is caught this way (a crash means a new boot), fills are not fsynced.
//! - **Budget.** Bytes of chunk files never exceed the budget at rest: a commit first evicts
//!   least-recently-used unpinned chunks to make room. When even that cannot make room (the
//!   rest is pinned, or the chunk is larger than the budget), the chunk is served from memory
//!   to the committer and its waiters and not kept. Lowering the budget below what is pinned
//!   evicts the rest as the pins are released.
//! - **Recovery.** `open` counts the chunk files already on disk, deletes stale temp files and
//!   orders chunks oldest first by mtime, which is the time of their fill or of their first
//!   use by a later process (verification sets it). Several processes may share a directory
//!   (one per running container): chunk files appear by rename and are content-addressed, so
//!   they never conflict, and a chunk another process evicted is simply fetched again. Each
//!   process keeps its own budget accounting, so the budget holds per process; only the first
//!   process in (no shared lock on `<dir>/lock` held) removes stale temp files.
//!
//! Locks: the index lock is held only for bookkeeping, never for I/O. A second lock serializes
//! what changes the bytes on disk (evicting and installing), so the budget holds at every
//! instant; writing and hashing a fill happen before it is taken.

mod handle;
mod state;
mod store;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::Digest;
pub use handle::{ChunkHandle, Claim};
use state::{lock, Index, Lookup, Outcome, Victim, Want};
use store::ChunkStore;

/// Errors of the chunk cache. `E` is the error type of a caller's `fill`; operations that run
/// no fill use the default, `Infallible`.
#[derive(Debug, thiserror::Error)]
pub enum CacheError<E = Infallible> {
    #[error("setting up chunk cache directory {path}")]
    Setup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("scanning chunk cache directory {path}")]
    Scan {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing chunk {digest} to {path}")]
    Write {
        digest: Digest,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("installing chunk {digest} at {path}")]
    Install {
        digest: Digest,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading chunk {digest} from {path}")]
    Read {
        digest: Digest,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing chunk file {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bytes filled for chunk {expected} hash to {actual} ({len} bytes); nothing was stored")]
    Mismatch { expected: Digest, actual: Digest, len: u64 },
    #[error("fetching chunk {digest}")]
    Fill {
        digest: Digest,
        #[source]
        source: E,
    },
}

impl CacheError {
    /// The same error, typed for a caller whose fill fails with `E`.
    pub fn widen<E>(self) -> CacheError<E> {
        match self {
            CacheError::Setup { path, source } => CacheError::Setup { path, source },
            CacheError::Scan { path, source } => CacheError::Scan { path, source },
            CacheError::Write { digest, path, source } => CacheError::Write { digest, path, source },
            CacheError::Install { digest, path, source } => CacheError::Install { digest, path, source },
            CacheError::Read { digest, path, source } => CacheError::Read { digest, path, source },
            CacheError::Remove { path, source } => CacheError::Remove { path, source },
            CacheError::Mismatch { expected, actual, len } => CacheError::Mismatch { expected, actual, len },
            CacheError::Fill { source, .. } => match source {},
        }
    }
}

/// What `skiff cache stats` prints. Counters run from `open`; the last four describe the
/// directory now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CacheStats {
    /// Reads served without running their fill (including waits on another reader's fetch).
    pub hits: u64,
    /// Fetches handed to a caller: misses, claims and corrupt chunks.
    pub misses: u64,
    /// Chunks committed to disk, and their bytes.
    pub fills: u64,
    pub bytes_filled: u64,
    /// Chunks evicted to stay within the budget or by `prune`, and their bytes.
    pub evictions: u64,
    pub bytes_evicted: u64,
    /// Chunk files that failed verification and were deleted.
    pub corrupt: u64,
    /// Chunks served but not kept, because pinned chunks left no room for them.
    pub unstored: u64,
    pub chunks: u64,
    pub pinned: u64,
    pub bytes_used: u64,
    pub budget: u64,
}

/// A content-addressed cache of uncompressed chunks in one directory. Cheap to clone; every
/// clone is the same cache. See the module documentation for its policies.
#[derive(Clone)]
pub struct ChunkCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache").field("dir", &self.dir()).finish_non_exhaustive()
    }
}

impl ChunkCache {
    /// Opens the cache in `dir` (creating it), keeping at most `budget` bytes of chunks;
    /// chunks already there count against the budget and the oldest go if they exceed it.
    pub fn open(dir: &Path, budget: u64) -> Result<ChunkCache, CacheError> {
        let (store, mut found) = ChunkStore::open(dir)?;
        found.sort_by_key(|f| (f.modified, f.digest));
        let mut index = Index::new(budget);
        for chunk in &found {
            index.recover(chunk.digest, chunk.len);
        }
        let shared = Arc::new(Shared { store, index: Mutex::new(index), disk: Mutex::new(()) });
        shared.trim()?;
        Ok(ChunkCache { shared })
    }

    pub fn dir(&self) -> &Path {
        self.shared.store.dir()
    }

    /// The chunk `digest`, from the cache or, on a miss, from `fill`, whose bytes are
    /// verified and committed before they are returned. `fill` runs only on a miss, and only
    /// if no other caller is already fetching the chunk; that caller's result is waited for.
    ///
    /// Do not call this for a digest the calling thread holds a [`Claim`] on: it would wait
    /// for itself.
    pub fn get_or_fill<E, F>(&self, digest: &Digest, fill: F) -> Result<ChunkHandle, CacheError<E>>
    where
        F: FnOnce() -> Result<Vec<u8>, E>,
    {
        match self.shared.acquire(digest).map_err(CacheError::widen)? {
            Acquired::Hit(handle) => Ok(handle),
            Acquired::Miss(claim) => {
                // On error the claim is dropped, which aborts it and wakes the waiters.
                let bytes = fill().map_err(|source| CacheError::Fill { digest: *digest, source })?;
                claim.commit(&bytes).map_err(CacheError::widen)
            }
        }
    }

    /// Claims, in order, each of `digests` that is neither cached nor being fetched, so the
    /// caller can fetch neighbouring misses in one request. Each claim must be committed or
    /// aborted (dropping aborts); meanwhile other readers of its chunk wait for it.
    pub fn claim(&self, digests: &[Digest]) -> Vec<Claim> {
        let flights: Vec<_> = {
            let mut index = lock(&self.shared.index);
            digests.iter().filter_map(|d| Some((*d, index.claim(d)?))).collect()
        };
        flights.into_iter().map(|(d, flight)| Claim::new(self.shared.clone(), d, flight)).collect()
    }

    pub fn stats(&self) -> CacheStats {
        lock(&self.shared.index).stats()
    }

    /// Evicts every chunk that is not pinned or being fetched. Returns the bytes freed.
    pub fn prune(&self) -> Result<u64, CacheError> {
        self.shared.evict(Want::All)
    }

    /// Changes the budget, evicting least-recently-used chunks down to it. Pinned chunks
    /// above it are evicted when released.
    pub fn set_budget(&self, budget: u64) -> Result<(), CacheError> {
        lock(&self.shared.index).set_budget(budget);
        self.shared.trim()
    }
}

/// What every clone of a cache, and every handle and claim, shares.
struct Shared {
    store: ChunkStore,
    index: Mutex<Index>,
    /// Serializes changes to the bytes on disk (evictions and installs) so the budget holds
    /// at every instant. Taken before `index`, never after.
    disk: Mutex<()>,
}

enum Acquired {
    Hit(ChunkHandle),
    Miss(Claim),
}

/// How a verified commit ended.
enum Committed {
    Stored {
        id: u64,
        file: std::fs::File,
    },
    /// No room beside pinned chunks: the caller serves the bytes from memory.
    Unstored,
}

impl Shared {
    /// A pinned handle on `digest`, or the claim to fetch it; waits while another thread owns
    /// it, and deletes a chunk file that fails verification.
    fn acquire(self: &Arc<Self>, digest: &Digest) -> Result<Acquired, CacheError> {
        loop {
            let found = lock(&self.index).lookup(digest);
            match found {
                Lookup::Pinned { id, len } => {
                    if let Some(file) = self.store.open_chunk(digest, len) {
                        return Ok(Acquired::Hit(ChunkHandle::pinned(self.clone(), *digest, len, id, file)));
                    }
                    lock(&self.index).unpin_suspect(digest, id);
                }
                Lookup::Verify { id, len, flight } => {
                    if let Some(file) = self.store.verify(digest, len) {
                        lock(&self.index).verified(digest, id);
                        flight.finish(Outcome::Stored);
                        return Ok(Acquired::Hit(ChunkHandle::pinned(self.clone(), *digest, len, id, file)));
                    }
                    // Made first so that an error below abandons the flight; the entry then
                    // stays unverified and the next reader tries again.
                    let claim = Claim::new(self.clone(), *digest, flight);
                    self.store.remove(digest)?;
                    lock(&self.index).forget_corrupt(digest, id);
                    return Ok(Acquired::Miss(claim));
                }
                Lookup::Busy(flight) => {
                    if let Outcome::Unstored(bytes) = flight.wait() {
                        lock(&self.index).count_hit();
                        return Ok(Acquired::Hit(ChunkHandle::unpinned(self.clone(), *digest, bytes)));
                    }
                }
                Lookup::Claimed(flight) => {
                    return Ok(Acquired::Miss(Claim::new(self.clone(), *digest, flight)));
                }
            }
        }
    }

    /// Verifies `bytes` and stores them as `digest`, evicting to make room. The caller owns
    /// the flight and ends it on `Unstored` or an error; `Stored` has ended it.
    fn commit(&self, digest: &Digest, bytes: &[u8]) -> Result<Committed, CacheError> {
        let len = bytes.len() as u64;
        let actual = Digest::of(bytes);
        if actual != *digest {
            return Err(CacheError::Mismatch { expected: *digest, actual, len });
        }
        if !lock(&self.index).fits(len) {
            return Ok(Committed::Unstored);
        }
        let temp = self.store.write_temp(digest, bytes)?;
        let _disk = lock(&self.disk);
        let Some(victims) = lock(&self.index).victims(Want::RoomFor(len)) else {
            return Ok(Committed::Unstored);
        };
        self.delete(victims)?;
        let file = self.store.install(digest, temp)?;
        let id = lock(&self.index).insert(*digest, len);
        Ok(Committed::Stored { id, file })
    }

    /// Releases a pin, and trims if it was holding the cache over a lowered budget.
    fn unpin(&self, digest: &Digest, id: u64) {
        if lock(&self.index).unpin(digest, id) {
            // Best effort from a drop: a chunk that cannot be deleted now is tried again at
            // the next commit, trim or open.
            let _ = self.trim();
        }
    }

    fn trim(&self) -> Result<(), CacheError> {
        if lock(&self.index).over_budget() {
            self.evict(Want::Trim)?;
        }
        Ok(())
    }

    /// Evicts what `want` asks; returns the bytes freed.
    fn evict(&self, want: Want) -> Result<u64, CacheError> {
        let _disk = lock(&self.disk);
        let victims = lock(&self.index).victims(want).unwrap_or_default();
        let bytes = victims.iter().map(Victim::len).sum();
        self.delete(victims)?;
        Ok(bytes)
    }

    /// Deletes the files of chunks already taken out of the index. A file that cannot be
    /// deleted is put back in the index, so usage stays true, and the first error returned.
    /// Called with `disk` held.
    fn delete(&self, victims: Vec<Victim>) -> Result<(), CacheError> {
        let mut first_error = None;
        for victim in victims {
            if let Err(e) = self.store.remove(&victim.digest) {
                lock(&self.index).restore(victim);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
