//! Opening an eStargz blob: footer, TOC member, TOC digest check, and from then on the
//! layer's entries and where each chunk of each file is.

use std::collections::HashMap;
use std::io::Read;

use flate2::read::GzDecoder;

use super::chunk::{decompress_chunk, ChunkError, ChunkLocation};
use super::footer::{read_footer, FOOTER_SIZE};
use super::tar_stream::{TarError, TarStream};
use super::toc::{normalize_name, Entry, EntryKind, Toc, TocError};
use super::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME};
use crate::{BlobSource, Digest, SourceError};

/// How much of the blob's end the first read takes: the footer and, for most layers, the
/// whole TOC of a layer of a few thousand files, so that opening a remote layer usually costs
/// one round trip without fetching much that a small workload never needs.
pub(crate) const TAIL_READ: u64 = 64 << 10;
/// Bounds on what a TOC may make us read and inflate.
const MAX_TOC_COMPRESSED: u64 = 512 << 20;
const MAX_TOC_JSON: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{blob} is not an eStargz layer: it has no eStargz footer")]
    NoFooter { blob: String },
    #[error(
        "{blob}: the footer puts the TOC at byte {toc_offset}, not before the footer at {footer_offset}"
    )]
    TocOffset { blob: String, toc_offset: u64, footer_offset: u64 },
    #[error("{blob}: the TOC is {len} bytes, more than the {limit} allowed")]
    TocTooLarge { blob: String, len: u64, limit: u64 },
    #[error("{blob}: reading the TOC member at byte {toc_offset}")]
    TocTar {
        blob: String,
        toc_offset: u64,
        #[source]
        source: TarError,
    },
    #[error("{blob}: the TOC member holds {found:?}, not {TOC_TAR_NAME}")]
    TocName { blob: String, found: Option<String> },
    #[error("{blob}: the TOC's digest is {actual}, but the layer's annotation says {expected}")]
    TocDigest { blob: String, expected: Digest, actual: Digest },
    #[error("{blob}: invalid TOC")]
    Toc {
        blob: String,
        #[source]
        source: TocError,
    },
    #[error("{blob}: reading a chunk")]
    Chunk {
        blob: String,
        #[source]
        source: Box<ChunkError>,
    },
    #[error("{blob}: reading {name:?}")]
    FileChunk {
        blob: String,
        name: String,
        #[source]
        source: Box<ChunkError>,
    },
    #[error("{blob}: {name:?} is not a regular file in the layer")]
    NotAFile { blob: String, name: String },
}

/// An opened eStargz layer: its verified TOC, resolved into entries and chunk locations.
/// It reads nothing by itself after `open`; pass the blob to the `read_*` helpers.
#[derive(Clone, Debug)]
pub struct EstargzReader {
    blob: String,
    toc_digest: Digest,
    toc_offset: u64,
    entries: Vec<Entry>,
    /// The last entry of each name (later tar entries replace earlier ones).
    by_name: HashMap<String, usize>,
    /// (entry, chunk) of every chunk in blob order (TOC order is blob order).
    blob_order: Vec<(usize, usize)>,
}

impl EstargzReader {
    /// Reads the footer and the TOC of `source`. With `expected_toc_digest` (the layer's
    /// `containerd.io/snapshot/stargz/toc.digest` annotation) the TOC must match it; since
    /// every chunk's digest is in the TOC, that makes every later read verifiable.
    pub fn open<S: BlobSource + ?Sized>(
        source: &S,
        expected_toc_digest: Option<&Digest>,
    ) -> Result<EstargzReader, ReadError> {
        let blob = source.name();
        let size = source.size();
        let tail_start = size.saturating_sub(TAIL_READ);
        let mut tail = vec![0u8; (size - tail_start) as usize];
        source.read_exact_at(tail_start, &mut tail)?;
        let footer = read_footer(&tail).ok_or_else(|| ReadError::NoFooter { blob: blob.clone() })?;
        let footer_offset = size - footer.len as u64;
        let toc_offset = footer.toc_offset;
        if toc_offset >= footer_offset {
            return Err(ReadError::TocOffset { blob, toc_offset, footer_offset });
        }
        let len = footer_offset - toc_offset;
        if len > MAX_TOC_COMPRESSED {
            return Err(ReadError::TocTooLarge { blob, len, limit: MAX_TOC_COMPRESSED });
        }
        let member = if toc_offset >= tail_start {
            tail[(toc_offset - tail_start) as usize..tail.len() - footer.len].to_vec()
        } else {
            // Only the part the tail did not bring.
            let mut member = vec![0u8; (tail_start - toc_offset) as usize];
            source.read_exact_at(toc_offset, &mut member)?;
            member.extend_from_slice(&tail[..tail.len() - footer.len]);
            member
        };
        let json = toc_json(&blob, toc_offset, &member)?;
        EstargzReader::from_toc_json(&blob, &json, toc_offset, expected_toc_digest)
    }

    /// As [`EstargzReader::open`], for a blob whose TOC is said to start at `toc_offset`
    /// (the [`TOC_OFFSET_ANNOTATION`](super::TOC_OFFSET_ANNOTATION) skiff's converter adds): the
    /// TOC and the footer come in one range request instead of two. A wrong offset is only a
    /// wasted request: the TOC is then found from the footer, and checked against its digest
    /// either way.
    pub fn open_at<S: BlobSource + ?Sized>(
        source: &S,
        expected_toc_digest: Option<&Digest>,
        toc_offset: u64,
    ) -> Result<EstargzReader, ReadError> {
        let tail = EstargzReader::fetch_tail(source, toc_offset)?;
        EstargzReader::open_tail(source, expected_toc_digest, toc_offset, tail)
    }

    /// The first half of [`EstargzReader::open_at`]: the bytes from `toc_offset` to the end of
    /// the blob, `None` when an offset cannot be a TOC's (too near the end, or too far).
    pub fn fetch_tail<S: BlobSource + ?Sized>(
        source: &S,
        toc_offset: u64,
    ) -> Result<Option<Vec<u8>>, ReadError> {
        let len = source.size().saturating_sub(toc_offset);
        if len <= FOOTER_SIZE as u64 || len > MAX_TOC_COMPRESSED + FOOTER_SIZE as u64 {
            return Ok(None);
        }
        let mut bytes = vec![0u8; len as usize];
        source.read_exact_at(toc_offset, &mut bytes)?;
        Ok(Some(bytes))
    }

    /// The second half of [`EstargzReader::open_at`]: the reader from what
    /// [`EstargzReader::fetch_tail`] brought, or from the footer if that was not the TOC.
    pub fn open_tail<S: BlobSource + ?Sized>(
        source: &S,
        expected_toc_digest: Option<&Digest>,
        toc_offset: u64,
        tail: Option<Vec<u8>>,
    ) -> Result<EstargzReader, ReadError> {
        let Some(bytes) = tail else { return EstargzReader::open(source, expected_toc_digest) };
        match read_footer(&bytes) {
            Some(footer) if footer.toc_offset == toc_offset && footer.len < bytes.len() => {
                let blob = source.name();
                let json = toc_json(&blob, toc_offset, &bytes[..bytes.len() - footer.len])?;
                EstargzReader::from_toc_json(&blob, &json, toc_offset, expected_toc_digest)
            }
            _ => {
                tracing::debug!(blob = source.name(), toc_offset, "the TOC is not where its annotation says");
                EstargzReader::open(source, expected_toc_digest)
            }
        }
    }

    /// Builds a reader from TOC JSON obtained elsewhere (a cache, a separate artifact);
    /// `toc_offset` is where the TOC member starts in the blob `blob` names.
    pub fn from_toc_json(
        blob: &str,
        json: &[u8],
        toc_offset: u64,
        expected_toc_digest: Option<&Digest>,
    ) -> Result<EstargzReader, ReadError> {
        let toc_digest = Digest::of(json);
        if let Some(expected) = expected_toc_digest {
            if *expected != toc_digest {
                return Err(ReadError::TocDigest {
                    blob: blob.to_string(),
                    expected: *expected,
                    actual: toc_digest,
                });
            }
        }
        let invalid = |source| ReadError::Toc { blob: blob.to_string(), source };
        let entries =
            Toc::from_json(json).and_then(|toc| toc.checked_entries(toc_offset)).map_err(invalid)?;
        let by_name = entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        let blob_order =
            entries.iter().enumerate().flat_map(|(i, e)| (0..e.chunks.len()).map(move |c| (i, c))).collect();
        Ok(EstargzReader { blob: blob.to_string(), toc_digest, toc_offset, entries, by_name, blob_order })
    }

    /// sha256 of the TOC JSON.
    pub fn toc_digest(&self) -> Digest {
        self.toc_digest
    }

    /// Where the TOC's gzip member starts; every file's data lies before it.
    pub fn toc_offset(&self) -> u64 {
        self.toc_offset
    }

    /// Every entry in TOC order, landmarks included.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry named `name` (any spelling [`normalize_name`] accepts; `""` is the root).
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        let name = normalize_name(name).ok()?;
        self.by_name.get(&name).map(|&i| &self.entries[i])
    }

    /// The chunks holding the content of regular file `name`, following hardlinks.
    pub fn chunks(&self, name: &str) -> Option<&[ChunkLocation]> {
        let mut entry = self.entry(name)?;
        // Each step moves to another name; a cycle of hardlinks ends after one lap.
        for _ in 0..=self.entries.len() {
            match entry.kind {
                EntryKind::Reg => return Some(&entry.chunks),
                EntryKind::Hardlink => entry = self.entry(&entry.link_name)?,
                _ => return None,
            }
        }
        None
    }

    /// Every chunk in the gzip member that starts at `compressed_offset`, in member order, with
    /// the name of its file: what one fetch of that member can fill (see
    /// [`decompress_member`](super::decompress_member)).
    pub fn member_chunks(&self, compressed_offset: u64) -> Vec<(&str, &ChunkLocation)> {
        let chunk = |&(e, c): &(usize, usize)| &self.entries[e].chunks[c];
        let first = self.blob_order.partition_point(|p| chunk(p).compressed_offset < compressed_offset);
        self.blob_order[first..]
            .iter()
            .take_while(|p| chunk(p).compressed_offset == compressed_offset)
            .map(|p| (self.entries[p.0].name.as_str(), chunk(p)))
            .collect()
    }

    /// Where prefetching should stop: the blob before `.prefetch.landmark` holds the
    /// prioritized files; `.no.prefetch.landmark` means prefetch nothing (`Some(0)`); `None`
    /// when the layer has no landmark.
    pub fn prefetch_end(&self) -> Option<u64> {
        if self.entry(NO_PREFETCH_LANDMARK).is_some() {
            return Some(0);
        }
        self.entry(PREFETCH_LANDMARK)?.chunks.first().map(|c| c.compressed_offset)
    }

    /// Fetches and decompresses one chunk, verified against its digest.
    pub fn read_chunk<S: BlobSource + ?Sized>(
        &self,
        source: &S,
        chunk: &ChunkLocation,
    ) -> Result<Vec<u8>, ReadError> {
        let mut compressed = vec![0u8; chunk.compressed_len as usize];
        source.read_exact_at(chunk.compressed_offset, &mut compressed)?;
        decompress_chunk(&compressed, chunk)
            .map_err(|source| ReadError::Chunk { blob: self.blob.clone(), source: Box::new(source) })
    }

    /// The whole content of regular file `name`, chunk by chunk, each verified.
    pub fn read_file<S: BlobSource + ?Sized>(&self, source: &S, name: &str) -> Result<Vec<u8>, ReadError> {
        let not_a_file = || ReadError::NotAFile { blob: self.blob.clone(), name: name.to_string() };
        let chunks = self.chunks(name).ok_or_else(not_a_file)?;
        let mut content = Vec::new();
        for chunk in chunks {
            let mut compressed = vec![0u8; chunk.compressed_len as usize];
            source.read_exact_at(chunk.compressed_offset, &mut compressed)?;
            let bytes = decompress_chunk(&compressed, chunk).map_err(|source| ReadError::FileChunk {
                blob: self.blob.clone(),
                name: name.to_string(),
                source: Box::new(source),
            })?;
            content.extend_from_slice(&bytes);
        }
        Ok(content)
    }
}

/// Inflates the TOC member and takes `stargz.index.json` out of its tar.
fn toc_json(blob: &str, toc_offset: u64, member: &[u8]) -> Result<Vec<u8>, ReadError> {
    let tar_error = |source| ReadError::TocTar { blob: blob.to_string(), toc_offset, source };
    let mut tar = TarStream::new(GzDecoder::new(member));
    let entry = tar.next_entry().map_err(tar_error)?;
    match entry {
        Some(e) if e.name == TOC_TAR_NAME && e.kind == EntryKind::Reg => {
            if e.size > MAX_TOC_JSON {
                return Err(ReadError::TocTooLarge {
                    blob: blob.to_string(),
                    len: e.size,
                    limit: MAX_TOC_JSON,
                });
            }
            // The size is the member's claim; let the bytes actually inflated grow the buffer.
            let mut json = Vec::with_capacity(e.size.min(16 << 20) as usize);
            // The JSON starts after the one header block of the decompressed member.
            tar.read_to_end(&mut json).map_err(|source| tar_error(TarError::Io { at: 512, source }))?;
            Ok(json)
        }
        other => Err(ReadError::TocName { blob: blob.to_string(), found: other.map(|e| e.name) }),
    }
}
