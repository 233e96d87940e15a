//! `LazyLayer`: one layer's files, read on demand. A read finds the chunks that hold the
//! bytes (from the layer's index), takes what the cache has, fetches the rest from the blob
//! source — neighbouring misses in one range request — verifies, caches and copies out.

mod estargz_index;
mod prefetch;
pub(crate) mod readlog;

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use crate::estargz::{decompress_chunk, ChunkError, ChunkLocation};
use crate::index::{ChunkRef, Codec, LayerIndex, NodeId};
use crate::{BlobSource, Digest, ShortestWait, SourceError};
use crate::{CacheError, ChunkCache, ChunkHandle, Claim};

pub use estargz_index::index_estargz;
pub use prefetch::{Foreground, Pacer, Priority, Ticket};

/// Misses whose compressed spans lie closer than this are fetched in one range request: the
/// bytes between may well be read next, and a request costs a round trip.
const COALESCE_GAP: u64 = 64 << 10;
/// The same for chunks a profile's prefetch plans: the bytes between them went unread when
/// the profile was recorded, so only a gap about the size of a request's own cost is
/// fetched over, and the prefetch's paced requests keep the link busy across the extra ones.
/// (Postgres's optimized plan: 14.77 MB in 168 requests against 15.48 MB in 149.)
const PLANNED_GAP: u64 = 16 << 10;
/// The largest single range request a read makes.
const MAX_REQUEST: u64 = 16 << 20;
/// A read that misses fetches its own chunks and, in the same request, those of the bytes
/// after it, as many as the file has been read in order up to it, at most `FETCH_WINDOW`: a
/// file read through from its start costs one registry round trip (milliseconds, however
/// small the range) per window once the window has grown, rather than one per chunk, while a
/// read that jumps (a process faulting in the pages of a mapped binary here and there, or
/// a loader reading a library's header) fetches its own chunks only, since what lies around
/// it is mostly never read. Chunks smaller than the window keep the jumps, a profile's
/// prefetch and the checks precise.
const FETCH_WINDOW: u64 = 512 << 10;

/// Opens the layer's uncompressed tar stream from its start, for chunks only a stream reaches.
pub type Restream = dyn Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync;

/// Why one chunk could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("re-reading the layer stream to byte {offset}: {source}")]
    Restream {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("chunk at stream offset {offset} is not cached and the layer cannot be streamed again")]
    NoRestream { offset: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    #[error("reading {path:?} of {blob}")]
    Fetch {
        blob: String,
        path: String,
        #[source]
        source: Box<FetchError>,
    },
    #[error("reading {path:?} of {blob} through the chunk cache")]
    Cache {
        blob: String,
        path: String,
        #[source]
        source: Box<CacheError<FetchError>>,
    },
    #[error("the table of contents of {blob} is invalid: {why}")]
    Toc { blob: String, why: String },
}

pub struct LazyLayer {
    index: Arc<LayerIndex>,
    cache: ChunkCache,
    source: Arc<dyn BlobSource>,
    restream: Option<Arc<Restream>>,
    /// Shared by the layers of one mount: foreground reads hold back prefetching.
    priority: Option<Arc<Priority>>,
    /// The chunks a profile's prefetch will fetch (see [`LazyLayer::plan_prefetch`]).
    planned: std::sync::OnceLock<HashSet<Digest>>,
    reads: readlog::ReadLog,
    /// The shortest wait for an answer to begin of any of its range requests.
    delay: ShortestWait,
}

impl LazyLayer {
    pub fn new(index: Arc<LayerIndex>, cache: ChunkCache, source: Arc<dyn BlobSource>) -> LazyLayer {
        LazyLayer {
            index,
            cache,
            source,
            restream: None,
            priority: None,
            planned: Default::default(),
            reads: Default::default(),
            delay: ShortestWait::default(),
        }
    }

    /// For layers whose chunks are reachable only by streaming the layer again.
    pub fn with_restream(mut self, restream: Arc<Restream>) -> LazyLayer {
        self.restream = Some(restream);
        self
    }

    /// Foreground reads of this layer will hold back background work sharing `priority`.
    pub fn with_priority(mut self, priority: Arc<Priority>) -> LazyLayer {
        self.priority = Some(priority);
        self
    }

    /// The distinct file bytes read so far, each counted at the compression ratio of the
    /// compressed span (gzip member) holding it: about what the reads needed from the
    /// registry, were it possible to fetch exactly them.
    pub fn bytes_read_compressed(&self) -> u64 {
        compressed_share(&self.index, &self.reads)
    }

    /// The shortest time a range request waited for its answer to begin, this layer's or
    /// another the source knows of (a registry's manifest, another layer's): how far the
    /// registry is. `None` before the first.
    pub fn delay(&self) -> Option<Duration> {
        self.delay.get().into_iter().chain(self.source.delay()).min()
    }

    pub fn index(&self) -> &Arc<LayerIndex> {
        &self.index
    }

    pub fn source(&self) -> &Arc<dyn BlobSource> {
        &self.source
    }

    /// Reads file `node` at `offset` into `buf`; returns the bytes read (0 at the end).
    pub fn read(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize, LazyError> {
        let size = self.index.node(node).size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let end = size.min(offset + buf.len() as u64);
        let in_order = self.reads.note(node, offset, end);
        let chunks = self.index.chunks(node, offset..end);
        let window = offset..size.min(end + in_order.min(FETCH_WINDOW));
        let handles = self.chunk_handles(node, chunks, self.index.chunks(node, window))?;
        for (chunk, handle) in chunks.iter().zip(&handles) {
            let from = chunk.file_offset.max(offset);
            let to = (chunk.file_offset + chunk.len).min(end);
            let out = &mut buf[(from - offset) as usize..(to - offset) as usize];
            let mut done = 0;
            while done < out.len() {
                let n = handle
                    .read_at(from - chunk.file_offset + done as u64, &mut out[done..])
                    .map_err(|e| self.cache_error(node, e.widen()))?;
                if n == 0 {
                    break;
                }
                done += n;
            }
        }
        Ok((end - offset) as usize)
    }

    /// Notes the chunks a profile's prefetch is about to fetch. A read that misses one of
    /// them then fetches, besides its own chunks, only the planned ones of its window: the
    /// rest of the window is what the workload did not read when the profile was recorded.
    pub fn plan_prefetch(&self, chunks: HashSet<Digest>) {
        let _ = self.planned.set(chunks);
    }

    /// The chunks a read of `chunks` fetches when it misses, from the `around` of its window.
    fn window<'a>(&self, chunks: &[ChunkRef], around: &'a [ChunkRef]) -> std::borrow::Cow<'a, [ChunkRef]> {
        match self.planned.get() {
            Some(planned) if chunks.iter().any(|c| planned.contains(&c.digest)) => around
                .iter()
                .filter(|c| planned.contains(&c.digest) || chunks.iter().any(|r| r.digest == c.digest))
                .copied()
                .collect(),
            _ => around.into(),
        }
    }

    /// The cache handles of `chunks`, fetching those missing; when any is, the missing ones of
    /// `around` (which holds `chunks`; see [`LazyLayer::window`]) come in the same request.
    fn chunk_handles(
        &self,
        node: NodeId,
        chunks: &[ChunkRef],
        around: &[ChunkRef],
    ) -> Result<Vec<ChunkHandle>, LazyError> {
        let started = std::time::Instant::now();
        let mut claims = self.cache.claim(&chunks.iter().map(|c| c.digest).collect::<Vec<_>>());
        let fetched_here = claims.len();
        let around = if claims.is_empty() { around.into() } else { self.window(chunks, around) };
        let wanted = if claims.is_empty() || around.len() == chunks.len() {
            chunks
        } else {
            claims.extend(self.cache.claim(&around.iter().map(|c| c.digest).collect::<Vec<_>>()));
            &around
        };
        // Background work waits while this read fetches; not while it waits for chunks
        // already on their way.
        let _foreground = (!claims.is_empty()).then(|| self.priority().map(|p| p.foreground()));
        let gap = if self.planned.get().is_some() { PLANNED_GAP } else { COALESCE_GAP };
        let mut fresh = self.fill_claims(node, wanted, claims, gap, &Ticket::unpaced())?;
        let handles = chunks
            .iter()
            .map(|c| match fresh.remove(&c.digest) {
                Some(h) => Ok(h),
                // Cached, or being fetched by another reader: wait for it (or fetch it alone).
                None => self
                    .cache
                    .get_or_fill(&c.digest, || self.fetch_one(c))
                    .map_err(|e| self.cache_error(node, e)),
            })
            .collect();
        let waited = started.elapsed();
        if waited.as_millis() > 0 {
            // What a process waited for, and whether this read fetched the chunks itself or
            // waited for another reader's (or the prefetch's) request.
            let (path, chunks, ms) = (self.path(node), chunks.len(), waited.as_millis() as u64);
            tracing::debug!(path, chunks, fetched_here, ms, "read waited for chunks");
        }
        handles
    }

    /// Fetches the claimed chunks, coalescing neighbours at most `gap` apart into one
    /// request, and commits them; `ticket` hears of the bytes as they arrive.
    fn fill_claims(
        &self,
        node: NodeId,
        chunks: &[ChunkRef],
        claims: Vec<Claim>,
        gap: u64,
        ticket: &Ticket<'_>,
    ) -> Result<HashMap<Digest, ChunkHandle>, LazyError> {
        let mut wanted: Vec<(ChunkRef, Claim)> = claims
            .into_iter()
            .filter_map(|claim| chunks.iter().find(|c| c.digest == *claim.digest()).map(|c| (*c, claim)))
            .collect();
        wanted.sort_by_key(|(c, _)| (c.codec != Codec::Gzip, c.offset));
        let mut handles = HashMap::new();
        while !wanted.is_empty() {
            let n = coalesced_len(&wanted, |(c, _)| c, gap, MAX_REQUEST);
            let group: Vec<(ChunkRef, Claim)> = wanted.drain(..n).collect();
            self.fill_group(node, group, &mut handles, ticket)?;
        }
        Ok(handles)
    }

    /// Fetches a group of chunks in one request and commits each chunk as soon as its bytes
    /// have arrived, so a reader waiting for the first chunk of a large prefetch gets it
    /// without waiting for the last.
    fn fill_group(
        &self,
        node: NodeId,
        group: Vec<(ChunkRef, Claim)>,
        handles: &mut HashMap<Digest, ChunkHandle>,
        ticket: &Ticket<'_>,
    ) -> Result<(), LazyError> {
        let fetch_err = |source: FetchError| self.fetch_error(node, source);
        let first = group[0].0;
        if first.codec != Codec::Gzip {
            let (chunk, claim) = group.into_iter().next().expect("a group has a chunk");
            let data = self.fetch_one(&chunk).map_err(fetch_err)?;
            let handle = claim.commit(&data).map_err(|e| self.cache_error(node, e.widen()))?;
            handles.insert(chunk.digest, handle);
            return Ok(());
        }
        let start = first.offset;
        let end = group.iter().map(|(c, _)| c.offset + c.compressed_len).max().unwrap_or(start);
        let asked = std::time::Instant::now();
        let mut body = self.source.read_streamed(start, end).map_err(|e| fetch_err(e.into()))?;
        let waited = asked.elapsed();
        self.delay.note(waited);
        ticket.answered(waited);
        let mut span = Vec::with_capacity((end - start) as usize);
        for (chunk, claim) in group {
            // Chunks come in blob order; several may share one gzip member.
            let need = (chunk.offset + chunk.compressed_len - start) as usize;
            if span.len() < need {
                let more = need - span.len();
                let got = (&mut body).take(more as u64).read_to_end(&mut span).map_err(|e| {
                    let at = start + span.len() as u64;
                    fetch_err(FetchError::Source(SourceError::Read {
                        blob: self.source.name(),
                        start: at,
                        end,
                        source: e.into(),
                    }))
                })?;
                ticket.arrived(got as u64);
                if got < more {
                    let at = start + span.len() as u64;
                    let truncated =
                        SourceError::Truncated { blob: self.source.name(), at, size: self.source.size() };
                    return Err(fetch_err(truncated.into()));
                }
            }
            let from = (chunk.offset - start) as usize;
            let compressed = &span[from..need];
            let data = decompress_chunk(compressed, &location(&chunk)).map_err(|e| fetch_err(e.into()))?;
            let handle = claim.commit(&data).map_err(|e| self.cache_error(node, e.widen()))?;
            handles.insert(chunk.digest, handle);
        }
        Ok(())
    }

    fn fetch_one(&self, chunk: &ChunkRef) -> Result<Vec<u8>, FetchError> {
        match chunk.codec {
            Codec::Gzip => {
                let mut compressed = vec![0u8; chunk.compressed_len as usize];
                self.source.read_exact_at(chunk.offset, &mut compressed)?;
                Ok(decompress_chunk(&compressed, &location(chunk))?)
            }
            Codec::Uncompressed => {
                let mut bytes = vec![0u8; chunk.len as usize];
                self.source.read_exact_at(chunk.offset + chunk.inner_offset, &mut bytes)?;
                verify(chunk, bytes)
            }
            Codec::Stream | Codec::Zstd => self.restream_chunk(chunk),
        }
    }

    /// Streams the layer from its start to the chunk: slow, the last resort for a plain
    /// layer whose chunk was evicted.
    fn restream_chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>, FetchError> {
        let offset = chunk.inner_offset;
        let restream = self.restream.as_ref().ok_or(FetchError::NoRestream { offset })?;
        let io = |source| FetchError::Restream { offset, source };
        let mut stream = restream().map_err(io)?;
        io::copy(&mut (&mut stream).take(offset), &mut io::sink()).map_err(io)?;
        let mut bytes = vec![0u8; chunk.len as usize];
        stream.read_exact(&mut bytes).map_err(io)?;
        verify(chunk, bytes)
    }

    fn path(&self, node: NodeId) -> String {
        self.index.path_of(node)
    }

    fn fetch_error(&self, node: NodeId, source: FetchError) -> LazyError {
        LazyError::Fetch { blob: self.source.name(), path: self.path(node), source: Box::new(source) }
    }

    fn cache_error(&self, node: NodeId, source: CacheError<FetchError>) -> LazyError {
        LazyError::Cache { blob: self.source.name(), path: self.path(node), source: Box::new(source) }
    }
}

/// How many of the leading chunks (`chunk` of each, in blob order) share one range request:
/// 1 unless the first is gzip, then the gzip chunks after it, skipping at most `gap` bytes
/// between two and spanning at most `max`.
fn coalesced_len<T>(chunks: &[T], chunk: impl Fn(&T) -> &ChunkRef, gap: u64, max: u64) -> usize {
    let first = chunk(&chunks[0]);
    if first.codec != Codec::Gzip {
        return 1;
    }
    let start = first.offset;
    let mut end = start + first.compressed_len;
    let mut n = 1;
    for c in chunks[1..].iter().map(&chunk) {
        let next_end = end.max(c.offset + c.compressed_len);
        if c.codec != Codec::Gzip || c.offset > end + gap || next_end - start > max {
            break;
        }
        end = next_end;
        n += 1;
    }
    n
}

fn location(c: &ChunkRef) -> ChunkLocation {
    ChunkLocation {
        compressed_offset: c.offset,
        compressed_len: c.compressed_len,
        inner_offset: c.inner_offset,
        uncompressed_offset: c.file_offset,
        uncompressed_len: c.len,
        chunk_digest: Some(c.digest),
    }
}

fn verify(chunk: &ChunkRef, bytes: Vec<u8>) -> Result<Vec<u8>, FetchError> {
    let actual = Digest::of(&bytes);
    if actual != chunk.digest {
        return Err(FetchError::Chunk(ChunkError::DigestMismatch {
            expected: chunk.digest,
            actual,
            range: chunk.inner_offset..chunk.inner_offset + chunk.len,
        }));
    }
    Ok(bytes)
}

/// The compressed bytes of `reads`: every byte read weighs what its span (the gzip member,
/// or the whole blob for a streamed layer) weighs compressed, per uncompressed byte in it.
fn compressed_share(index: &LayerIndex, reads: &readlog::ReadLog) -> u64 {
    let mut span_len: HashMap<u64, u64> = HashMap::new();
    for c in index.all_chunks() {
        *span_len.entry(c.offset).or_default() += c.len;
    }
    let mut total = 0.0;
    reads.for_each(|node, start, end| {
        for c in index.chunks(node, start..end) {
            let overlap = (c.file_offset + c.len).min(end).saturating_sub(c.file_offset.max(start));
            let ratio = c.compressed_len as f64 / span_len[&c.offset].max(1) as f64;
            total += overlap as f64 * ratio;
        }
    });
    total as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Kind;
    use crate::index::{EntryMeta, IndexBuilder};
    use crate::source::testing::LoggedBlob;
    use crate::union::PrefetchChunk;

    fn file(b: &mut IndexBuilder, path: &str, size: u64) -> NodeId {
        b.add(path, EntryMeta::for_test(Kind::File, size)).unwrap()
    }

    fn chunk(file_offset: u64, len: u64, offset: u64, compressed_len: u64, inner_offset: u64) -> ChunkRef {
        ChunkRef {
            digest: Digest::of(&[offset as u8, file_offset as u8]),
            file_offset,
            len,
            codec: Codec::Gzip,
            offset,
            compressed_len,
            inner_offset,
        }
    }

    /// A blob (`inner`) whose range reads stream up to `gate` bytes, then stall until `open`
    /// is sent.
    struct Gated {
        inner: LoggedBlob,
        gate: u64,
        open: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
        /// Told of every streamed request, by its range.
        requested: std::sync::Mutex<std::sync::mpsc::Sender<(u64, u64)>>,
    }

    impl BlobSource for Gated {
        fn name(&self) -> String {
            "gated blob".into()
        }

        fn size(&self) -> u64 {
            self.inner.size()
        }

        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
            self.inner.read_at(offset, buf)
        }

        fn read_streamed(&self, start: u64, end: u64) -> Result<Box<dyn Read + Send + '_>, SourceError> {
            let _ = self.requested.lock().unwrap().send((start, end));
            let before = self.gate.clamp(start, end);
            let blob = &self.inner.blob;
            let first = io::Cursor::new(blob[start as usize..before as usize].to_vec());
            let rest = blob[before as usize..end as usize].to_vec();
            let open = &self.open;
            let mut stalled = Some(rest);
            let rest = std::iter::from_fn(move || {
                let rest = stalled.take()?;
                let _ = open.lock().unwrap().recv();
                Some(rest)
            });
            Ok(Box::new(first.chain(IterRead(Box::new(rest), io::Cursor::new(Vec::new())))))
        }
    }

    struct IterRead<'a>(Box<dyn Iterator<Item = Vec<u8>> + Send + 'a>, io::Cursor<Vec<u8>>);

    impl Read for IterRead<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            loop {
                let n = self.1.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                match self.0.next() {
                    Some(next) => self.1 = io::Cursor::new(next),
                    None => return Ok(0),
                }
            }
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut e, data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_chunk_is_served_before_the_rest_of_its_request_arrives() {
        let (first, second) = (vec![1u8; 1000], vec![2u8; 1000]);
        let (a, b) = (gzip(&first), gzip(&second));
        let mut b_ = IndexBuilder::new();
        let big = file(&mut b_, "big", 2000);
        let small = file(&mut b_, "small", 1000);
        let a_ref = |file_offset| ChunkRef {
            digest: Digest::of(&first),
            file_offset,
            len: 1000,
            codec: Codec::Gzip,
            offset: 0,
            compressed_len: a.len() as u64,
            inner_offset: 0,
        };
        b_.push_chunk(big, a_ref(0)).unwrap();
        let b_ref = ChunkRef {
            digest: Digest::of(&second),
            file_offset: 1000,
            len: 1000,
            codec: Codec::Gzip,
            offset: a.len() as u64,
            compressed_len: b.len() as u64,
            inner_offset: 0,
        };
        b_.push_chunk(big, b_ref).unwrap();
        // `small` holds the same bytes as the first chunk of `big`.
        b_.push_chunk(small, a_ref(0)).unwrap();
        let (open_tx, open_rx) = std::sync::mpsc::channel();
        let (requested_tx, requested_rx) = std::sync::mpsc::channel();
        let gate = a.len() as u64;
        let blob = [a, b].concat();
        let end = blob.len() as u64;
        let source = Gated {
            inner: LoggedBlob::new(blob),
            gate,
            open: std::sync::Mutex::new(open_rx),
            requested: std::sync::Mutex::new(requested_tx),
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        let layer = LazyLayer::new(Arc::new(b_.finish()), cache, Arc::new(source));
        let wait = std::time::Duration::from_secs(20);
        std::thread::scope(|s| {
            let whole = s.spawn(|| {
                let mut buf = vec![0u8; 2000];
                layer.read(big, 0, &mut buf).unwrap();
                buf
            });
            // One request fetches both chunks of `big`, and stalls after the first. A reader of
            // `small` needs only the first, and gets it while the request is still stalled.
            assert_eq!(requested_rx.recv_timeout(wait).unwrap(), (0, end));
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let layer = &layer;
            s.spawn(move || {
                let mut buf = vec![0u8; 1000];
                layer.read(small, 0, &mut buf).unwrap();
                let _ = done_tx.send(buf);
            });
            let small_read = done_rx.recv_timeout(wait);
            open_tx.send(()).unwrap();
            assert_eq!(small_read.expect("the first chunk waited for the whole request"), first);
            assert_eq!(whole.join().unwrap(), [first.clone(), second.clone()].concat());
        });
        assert!(requested_rx.try_recv().is_err(), "the first chunk was fetched twice");
    }

    const CHUNK: u64 = 128 << 10;

    type EightChunks = (LazyLayer, NodeId, Arc<LoggedBlob>, Vec<(u64, u64)>, tempfile::TempDir);

    /// A layer of one 1 MiB file in eight 128 KiB chunks, one gzip member each, the blob
    /// ranges of those members, and the cache's directory. A chunk's bytes are its number,
    /// then noise, so neighbouring members lie more than a coalescing gap apart.
    fn eight_chunks() -> EightChunks {
        eight_chunks_with_noise([CHUNK - 4096; 8])
    }

    /// As [`eight_chunks`], chunk `i` ending in `noise[i]` bytes of noise: about the size of
    /// its member.
    fn eight_chunks_with_noise(noise: [u64; 8]) -> EightChunks {
        let mut b = IndexBuilder::new();
        let node = file(&mut b, "big", 8 * CHUNK);
        let mut blob = Vec::new();
        let mut members = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for i in 0..8u64 {
            let mut data = vec![i as u8; (CHUNK - noise[i as usize]) as usize];
            data.extend((0..noise[i as usize]).map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            }));
            let member = gzip(&data);
            let chunk = ChunkRef {
                digest: Digest::of(&data),
                file_offset: i * CHUNK,
                len: CHUNK,
                codec: Codec::Gzip,
                offset: blob.len() as u64,
                compressed_len: member.len() as u64,
                inner_offset: 0,
            };
            b.push_chunk(node, chunk).unwrap();
            members.push((chunk.offset, chunk.offset + chunk.compressed_len));
            blob.extend(member);
        }
        let source = Arc::new(LoggedBlob::new(blob));
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 16 << 20).unwrap();
        (LazyLayer::new(Arc::new(b.finish()), cache, source.clone()), node, source, members, dir)
    }

    /// A blob whose answers each begin after the last of `waits` (taken off as used).
    struct Slow {
        inner: Arc<LoggedBlob>,
        waits: std::sync::Mutex<Vec<Duration>>,
    }

    impl BlobSource for Slow {
        fn name(&self) -> String {
            "slow blob".into()
        }

        fn size(&self) -> u64 {
            self.inner.size()
        }

        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
            self.inner.read_at(offset, buf)
        }

        fn read_streamed(&self, start: u64, end: u64) -> Result<Box<dyn Read + Send + '_>, SourceError> {
            std::thread::sleep(self.waits.lock().unwrap().pop().unwrap_or_default());
            self.inner.read_streamed(start, end)
        }
    }

    #[test]
    fn a_layer_keeps_the_shortest_wait_for_an_answer_as_the_registry_distance() {
        let (fast, node, blob, _members, _dir) = eight_chunks();
        let (short, long) = (Duration::from_millis(20), Duration::from_millis(400));
        let slow = Arc::new(Slow { inner: blob, waits: std::sync::Mutex::new(vec![short, long]) });
        let layer = LazyLayer::new(fast.index.clone(), fast.cache.clone(), slow);
        assert_eq!(layer.delay(), None, "nothing fetched yet");
        let mut buf = vec![0u8; 4096];
        layer.read(node, 5 * CHUNK, &mut buf).unwrap();
        assert!(layer.delay().unwrap() >= long);
        layer.read(node, 0, &mut buf).unwrap();
        let delay = layer.delay().unwrap();
        assert!(delay >= short && delay < long, "the shorter wait: {delay:?}");
        // A read the cache serves waits for no answer.
        layer.read(node, 0, &mut buf).unwrap();
        assert_eq!(layer.delay(), Some(delay));
    }

    #[test]
    fn a_miss_fetches_as_far_ahead_as_its_file_was_read_in_order() {
        let (layer, node, source, members, _dir) = eight_chunks();
        let requests = || source.take_reads();
        let mut buf = vec![0u8; 4096];
        // A jump to a page in chunk 5 (a mapped binary's fault): that chunk alone.
        layer.read(node, 5 * CHUNK, &mut buf).unwrap();
        assert_eq!(buf, vec![5u8; 4096]);
        assert_eq!(requests(), [members[5]]);
        // The file's start, nothing read in order before it: chunk 0 alone.
        layer.read(node, 0, &mut buf).unwrap();
        assert_eq!(buf, vec![0u8; 4096]);
        assert_eq!(requests(), [members[0]]);
        // On from the whole of chunk 0: the next 128 KiB come too, in the same request.
        let mut chunk = vec![0u8; CHUNK as usize];
        layer.read(node, 0, &mut chunk).unwrap();
        layer.read(node, CHUNK, &mut buf).unwrap();
        assert_eq!(buf, vec![1u8; 4096]);
        assert_eq!(requests(), [(members[1].0, members[2].1)]);
        // On from three chunks read in order: the next three (chunk 5 is cached).
        layer.read(node, CHUNK, &mut chunk).unwrap();
        layer.read(node, 2 * CHUNK, &mut chunk).unwrap();
        assert_eq!(requests(), []);
        layer.read(node, 3 * CHUNK, &mut buf).unwrap();
        assert_eq!(buf, vec![3u8; 4096]);
        assert_eq!(requests(), [(members[3].0, members[4].1), members[6]]);
        assert_eq!(layer.cache.stats().fills, 7, "each chunk fetched once");
    }

    #[test]
    fn with_a_prefetch_planned_a_miss_fetches_only_the_planned_chunks_of_its_window() {
        let (layer, node, source, members, _dir) = eight_chunks();
        let planned = [1, 3, 6].map(|i| layer.index.chunks(node, i * CHUNK..i * CHUNK + 1)[0].digest);
        layer.plan_prefetch(planned.into_iter().collect());
        let mut chunk = vec![0u8; CHUNK as usize];
        layer.read(node, 0, &mut chunk).unwrap();
        assert_eq!(source.take_reads(), [members[0]]);
        // Chunk 1 is planned: its read fetches of what lies ahead only planned chunks, and
        // chunk 2 is not.
        layer.read(node, CHUNK, &mut chunk).unwrap();
        assert_eq!(chunk[..4096], [1u8; 4096]);
        assert_eq!(source.take_reads(), [members[1]]);
        // Chunk 2 was not read when the profile was recorded: what lies ahead comes whole.
        layer.read(node, 2 * CHUNK, &mut chunk).unwrap();
        assert_eq!(source.take_reads(), [(members[2].0, members[4].1)]);
    }

    #[test]
    fn a_prefetch_fetches_over_small_gaps_only() {
        // Chunk 1's member is about 32 KiB, chunk 5's about 4 KiB.
        let mut noise = [CHUNK - 4096; 8];
        noise[1] = 32 << 10;
        noise[5] = 4 << 10;
        let (layer, node, source, members, _dir) = eight_chunks_with_noise(noise);
        let chunk = |i: u64| (node, layer.index.chunks(node, i * CHUNK..i * CHUNK + 1)[0]);
        let planned: Vec<PrefetchChunk> = [0, 2, 4, 6].map(chunk).into();
        layer.plan_prefetch(planned.iter().map(|(_, c)| c.digest).collect());
        layer.prefetch_chunks(&planned, &Priority::default(), &Ticket::unpaced()).unwrap();
        // Chunk 1 was not read when the profile was recorded: it is not worth its bytes.
        // Chunk 5 costs less than a request of its own.
        assert_eq!(source.take_reads(), [members[0], members[2], (members[4].0, members[6].1)]);
    }

    #[test]
    fn a_paced_prefetch_pays_its_ticket_as_bytes_arrive_and_for_chunks_already_cached() {
        let (layer, node, source, members, _dir) = eight_chunks_with_noise([CHUNK / 2; 8]);
        let chunk = |i: u64| (node, layer.index.chunks(node, i * CHUNK..i * CHUNK + 1)[0]);
        let mut out = vec![0u8; 10];
        layer.read(node, 0, &mut out).unwrap();
        source.take_reads();
        let planned: Vec<PrefetchChunk> = (0..4).map(chunk).collect();
        let bytes: u64 = planned.iter().map(|(_, c)| c.compressed_len).sum();
        let pacer = Pacer::default();
        let (_, ticket) = pacer.admit(|| Some(((), bytes))).unwrap();
        layer.prefetch_chunks(&planned, &Priority::default(), &ticket).unwrap();
        assert_eq!(source.take_reads(), [(members[1].0, members[3].1)], "chunk 0 was cached");
        assert_eq!(pacer.owed(), 0, "every byte paid before the ticket drops");
        assert!(!pacer.to_string().contains("NaN"), "the request was timed: {pacer}");
    }

    #[test]
    fn a_byte_read_weighs_what_its_gzip_member_weighs_per_byte() {
        let mut b = IndexBuilder::new();
        // text.txt compresses 10:1 in its own member; two binaries share a member at 1:2.
        let text = file(&mut b, "text.txt", 1000);
        let bin = file(&mut b, "bin", 600);
        let other = file(&mut b, "other", 400);
        b.push_chunk(text, chunk(0, 1000, 0, 100, 0)).unwrap();
        b.push_chunk(bin, chunk(0, 600, 100, 500, 0)).unwrap();
        b.push_chunk(other, chunk(0, 400, 100, 500, 600)).unwrap();
        let index = b.finish();
        let reads = readlog::ReadLog::default();
        reads.note(text, 0, 1000);
        reads.note(bin, 100, 300);
        reads.note(bin, 200, 400);
        // 1000 bytes at 0.1 and 300 at 0.5.
        assert_eq!(compressed_share(&index, &reads), 100 + 150);
    }
}
