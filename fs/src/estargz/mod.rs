//! eStargz: gzip members with a table of contents (TOC) at the end, located by a footer.
//!
//! A pure format library: [`convert`] writes a layer from a tar stream, [`EstargzReader`]
//! opens one through a [`BlobSource`](crate::BlobSource) and says where every chunk of every
//! file is, and [`decompress_chunk`] turns a chunk's compressed bytes into verified content.
//! No network, no mounts.

mod chunk;
mod footer;
mod order;
mod reader;
mod sink;
mod tar_stream;
mod toc;
mod writer;

#[cfg(test)]
mod tests;

pub use chunk::{decompress_chunk, decompress_member, ChunkError, ChunkLocation};
pub use footer::{footer_bytes, parse_footer, read_footer, Footer, FOOTER_SIZE, LEGACY_FOOTER_SIZE};
pub use order::OrderError;
pub use reader::{EstargzReader, ReadError};
pub use tar_stream::TarError;
pub use toc::{
    normalize_name, Entry, EntryKind, NameError, Toc, TocEntry, TocError, CHUNK_TYPE, TOC_VERSION,
};
pub use writer::{
    convert, read_cuts, ConvertError, ConvertOptions, ConvertResult, DEFAULT_CHUNK_SIZE,
    DEFAULT_COMPRESSION_LEVEL, DEFAULT_PACK_LIMIT, DEFAULT_SMALL_FILE_THRESHOLD, MIN_CUT_GAP,
};

/// Layer annotation holding the digest of the uncompressed TOC JSON.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Layer annotation skiff's converter adds: where in the blob the TOC's gzip member starts,
/// so a reader fetches the TOC and the footer in one request (zstd:chunked layers carry the
/// same hint in `io.github.containers.zstd-chunked.manifest-position`).
pub const TOC_OFFSET_ANNOTATION: &str = "io.skiff.estargz.toc-offset";
/// Layer annotation holding the uncompressed size of the layer.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
/// The tar entry holding the TOC JSON, in the layer's last member before the footer.
pub const TOC_TAR_NAME: &str = "stargz.index.json";
/// Marks the end of the prioritized files: prefetch the blob up to its offset.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// First entry of a layer with no prioritized files: prefetch nothing.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// Names the format adds at the layer root; a lazy mount hides them, as stargz-snapshotter does.
pub const RESERVED_NAMES: [&str; 3] = [TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK];
