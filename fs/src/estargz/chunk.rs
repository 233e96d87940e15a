//! One chunk of an eStargz file: where its bytes sit in the blob, and turning those compressed
//! bytes back into verified file content.

use std::io::{self, Read};
use std::ops::Range;

use flate2::read::GzDecoder;

use crate::Digest;

/// Where one chunk of a regular file lives in an eStargz blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    /// Start of the gzip member holding the chunk.
    pub compressed_offset: u64,
    /// Up to the next member holding file data (or the TOC): fetching this many bytes from
    /// `compressed_offset` always covers the chunk.
    pub compressed_len: u64,
    /// Where the chunk starts in the decompressed member (non-zero when small files share one).
    pub inner_offset: u64,
    /// Where the chunk starts in its file.
    pub uncompressed_offset: u64,
    pub uncompressed_len: u64,
    /// sha256 of the chunk's bytes; legacy stargz layers have none.
    pub chunk_digest: Option<Digest>,
}

impl ChunkLocation {
    /// The bytes of the blob to fetch for this chunk.
    pub fn compressed_range(&self) -> Range<u64> {
        self.compressed_offset..self.compressed_offset + self.compressed_len
    }

    /// The bytes of the file this chunk holds.
    pub fn file_range(&self) -> Range<u64> {
        self.uncompressed_offset..self.uncompressed_offset + self.uncompressed_len
    }
}

/// Names a chunk in errors: its digest when it has one, else its place in the blob.
struct ChunkName<'a>(&'a ChunkLocation);

impl std::fmt::Display for ChunkName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.0.compressed_range();
        match &self.0.chunk_digest {
            Some(d) => write!(f, "chunk {d} (blob bytes {}..{})", r.start, r.end),
            None => write!(f, "chunk without digest (blob bytes {}..{})", r.start, r.end),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("gunzipping {chunk}")]
    Gzip {
        chunk: String,
        #[source]
        source: io::Error,
    },
    #[error("{chunk}: its gzip member holds {got} bytes, it needs {wanted} (inner offset {inner_offset} + length {len})", wanted = .inner_offset + .len)]
    Short { chunk: String, inner_offset: u64, len: u64, got: u64 },
    #[error("chunk {expected} (blob bytes {}..{}) decompressed to bytes with digest {actual}", .range.start, .range.end)]
    DigestMismatch { expected: Digest, actual: Digest, range: Range<u64> },
    #[error("{chunk} is not in the member at blob byte {member_start} after byte {position} of it")]
    NotInMember { chunk: String, member_start: u64, position: u64 },
}

/// Decompresses the chunk at `loc` from `compressed`, the blob bytes of
/// `loc.compressed_range()` (or any prefix of them that holds the chunk), and checks its
/// digest. It never returns bytes that do not match the TOC's `chunkDigest`.
pub fn decompress_chunk(compressed: &[u8], loc: &ChunkLocation) -> Result<Vec<u8>, ChunkError> {
    let mut chunks = decompress_member(compressed, std::slice::from_ref(loc))?;
    Ok(chunks.pop().unwrap_or_default())
}

/// Decompresses every chunk in `chunks` (all in the one member `compressed` starts with,
/// in member order, as [`EstargzReader::member_chunks`](super::EstargzReader::member_chunks)
/// lists them) in a single pass, each checked against its digest. Small files share
/// members, and inflating the member once per file would cost the square of its size.
pub fn decompress_member(compressed: &[u8], chunks: &[ChunkLocation]) -> Result<Vec<Vec<u8>>, ChunkError> {
    // One member only: the bytes after it belong to other chunks.
    let mut member = GzDecoder::new(compressed);
    let mut position = 0;
    let mut out = Vec::with_capacity(chunks.len());
    for loc in chunks {
        let member_start = chunks[0].compressed_offset;
        if loc.compressed_offset != member_start || loc.inner_offset < position {
            return Err(ChunkError::NotInMember {
                chunk: ChunkName(loc).to_string(),
                member_start,
                position,
            });
        }
        let gzip_error = |source| ChunkError::Gzip { chunk: ChunkName(loc).to_string(), source };
        let short = |got| ChunkError::Short {
            chunk: ChunkName(loc).to_string(),
            inner_offset: loc.inner_offset,
            len: loc.uncompressed_len,
            got,
        };
        let gap = loc.inner_offset - position;
        let skipped = io::copy(&mut (&mut member).take(gap), &mut io::sink()).map_err(gzip_error)?;
        if skipped < gap {
            return Err(short(position + skipped));
        }
        // The length comes from the TOC; cap the up-front allocation, not the chunk.
        let mut bytes = Vec::with_capacity(loc.uncompressed_len.min(16 << 20) as usize);
        (&mut member).take(loc.uncompressed_len).read_to_end(&mut bytes).map_err(gzip_error)?;
        if (bytes.len() as u64) < loc.uncompressed_len {
            return Err(short(loc.inner_offset + bytes.len() as u64));
        }
        if let Some(expected) = loc.chunk_digest {
            let actual = Digest::of(&bytes);
            if actual != expected {
                return Err(ChunkError::DigestMismatch { expected, actual, range: loc.compressed_range() });
            }
        }
        position = loc.inner_offset + loc.uncompressed_len;
        out.push(bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::GzEncoder;
    use flate2::Compression;

    use super::*;

    fn gzip(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            let mut gz = GzEncoder::new(Vec::new(), Compression::none());
            gz.write_all(part).unwrap();
            out.extend(gz.finish().unwrap());
        }
        out
    }

    fn loc(blob: &[u8], inner_offset: u64, data: &[u8]) -> ChunkLocation {
        ChunkLocation {
            compressed_offset: 0,
            compressed_len: blob.len() as u64,
            inner_offset,
            uncompressed_offset: 0,
            uncompressed_len: data.len() as u64,
            chunk_digest: Some(Digest::of(data)),
        }
    }

    #[test]
    fn takes_the_chunk_at_its_inner_offset_of_the_first_member_only() {
        let blob = gzip(&[b"headerPAYLOADtrailer", b"next member"]);
        assert_eq!(decompress_chunk(&blob, &loc(&blob, 6, b"PAYLOAD")).unwrap(), b"PAYLOAD");
        let past_member = loc(&blob, 6, b"PAYLOADtrailernext");
        let err = decompress_chunk(&blob, &past_member).unwrap_err();
        assert!(matches!(err, ChunkError::Short { got: 20, .. }), "{err}");
    }

    #[test]
    fn a_member_of_several_chunks_inflates_once_in_order() {
        let blob = gzip(&[b"hdr|one|pad|two|three", b"next"]);
        let mut one = loc(&blob, 4, b"one");
        let two = loc(&blob, 12, b"two");
        let three = loc(&blob, 16, b"three");
        let got = decompress_member(&blob, &[one, two, three]).unwrap();
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
        let err = decompress_member(&blob, &[two, one]).unwrap_err();
        assert!(matches!(err, ChunkError::NotInMember { position: 15, .. }), "{err}");
        one.compressed_offset = 1;
        let err = decompress_member(&blob, &[two, one]).unwrap_err();
        assert!(matches!(err, ChunkError::NotInMember { member_start: 0, .. }), "{err}");
        assert!(decompress_member(&blob, &[]).unwrap().is_empty());
    }

    #[test]
    fn wrong_bytes_are_an_error_naming_the_digest() {
        let mut blob = gzip(&[b"0123456789"]);
        let l = loc(&blob, 0, b"0123456789");
        // A stored (uncompressed) deflate block: flipping a payload byte still inflates.
        let at = blob.iter().position(|&b| b == b'5').unwrap();
        blob[at] = b'X';
        let err = decompress_chunk(&blob, &l).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, ChunkError::DigestMismatch { .. }));
        assert!(message.contains(&Digest::of(b"0123456789").to_string()), "{message}");
        assert!(message.contains(&Digest::of(b"01234X6789").to_string()), "{message}");

        let err = decompress_chunk(b"not gzip at all", &l).unwrap_err();
        assert!(err.to_string().contains(&Digest::of(b"0123456789").to_string()), "{err}");
    }
}
