//! Converting an uncompressed tar stream into an eStargz layer.
//!
//! Layout, as stargz-snapshotter writes it: every entry's header blocks are copied byte for
//! byte, so the layer holds the same metadata as its input; each chunk of a regular file
//! starts a new gzip member (the file's header stays at the end of the previous member);
//! runs of small files share a member, told apart by `innerOffset`; the TOC is one last
//! member holding `stargz.index.json` and the end-of-archive blocks, then the footer. The
//! whole is one valid gzip stream of one valid tar.
//!
//! Without prioritized files the input streams through once. With them it is first spooled
//! to an unnamed temporary file, because the files to move to the front may come last.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::footer::footer_bytes;
use super::order::{prioritized_order, OrderError};
use super::sink::{MemberSink, SinkTotals};
use super::tar_stream::{padding, TarEntry, TarError, TarStream};
use super::toc::{format_mtime, normalize_name, EntryKind, Toc, TocEntry, CHUNK_TYPE, TOC_VERSION};
use super::{
    NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_DIGEST_ANNOTATION, TOC_OFFSET_ANNOTATION, TOC_TAR_NAME,
    UNCOMPRESSED_SIZE_ANNOTATION,
};
use crate::Digest;

/// One kernel FUSE read. A read that misses of a file read in order still fetches up to 512 KiB
/// ahead in one request (see the lazy reader), but a page fault and a prefetch profile cost
/// only the 128 KiB chunks a workload touched. Measured on debootstrap images at 100 Mbit/s (bench coldstart):
/// against stargz-snapshotter's 4 MiB, 512 KiB chunks fetched a quarter less for gcc and jdk
/// and started them 25-30% sooner; 128 KiB chunks fetch 1.2-1.4 times the bytes read
/// (compressed) with a profile, where 512 KiB fetched 1.26-1.6 times.
pub const DEFAULT_CHUNK_SIZE: u64 = 128 << 10;
/// Files below this share gzip members with their neighbours.
pub const DEFAULT_SMALL_FILE_THRESHOLD: u64 = 64 << 10;
/// A shared member stops taking files at this many uncompressed bytes, so that reading one
/// small file fetches at most about this much (compressed) beyond it.
pub const DEFAULT_PACK_LIMIT: u64 = 128 << 10;
/// zlib's default: within a few percent of level 9's size at a fraction of its time.
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 6;

/// Read ranges closer than this are cut as one: a cut costs a gzip member and a TOC entry,
/// and a small gap compresses to less than that saves.
pub const MIN_CUT_GAP: u64 = 16 << 10;

/// Where to cut a file's chunks so that the `ranges` a workload read (sorted or not) fill
/// whole chunks: at the start and end of each range, ranges less than `MIN_CUT_GAP` apart
/// taken as one.
pub fn read_cuts(ranges: &[(u64, u64)]) -> Vec<u64> {
    let mut ranges: Vec<(u64, u64)> = ranges.iter().copied().filter(|(s, e)| s < e).collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s < last.1.saturating_add(MIN_CUT_GAP) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged.into_iter().flat_map(|(s, e)| [s, e]).filter(|&c| c > 0).collect()
}

/// The content of a landmark file, as stargz-snapshotter writes it.
const LANDMARK_CONTENT: [u8; 1] = [0x0f];
const COPY_BUFFER: usize = 256 << 10;

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Largest chunk of a regular file (each chunk is its own gzip member).
    pub chunk_size: u64,
    /// Paths to place first, in this order, before `.prefetch.landmark`. When empty, the layer
    /// starts with `.no.prefetch.landmark` instead.
    pub prioritized: Vec<String>,
    /// Where chunks of a file end early, by path (offsets into the file): see [`read_cuts`].
    /// A workload that reads those bytes then fetches chunks that hold little else.
    pub cuts: HashMap<String, Vec<u64>>,
    /// gzip level, 0 (stored) to 9.
    pub compression_level: u32,
    /// Regular files smaller than this are packed together into shared members; 0 disables it.
    pub small_file_threshold: u64,
    /// Most uncompressed bytes (headers included) a shared member takes.
    pub pack_limit: u64,
    /// Where to spool the input when files are prioritized; the system temp dir by default.
    pub spool_dir: Option<PathBuf>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            prioritized: Vec::new(),
            cuts: HashMap::new(),
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            small_file_threshold: DEFAULT_SMALL_FILE_THRESHOLD,
            pack_limit: DEFAULT_PACK_LIMIT,
            spool_dir: None,
        }
    }
}

/// What was written, and what the image manifest needs to describe it.
#[derive(Clone, Debug)]
pub struct ConvertResult {
    /// sha256 of the TOC JSON: the `containerd.io/snapshot/stargz/toc.digest` annotation.
    pub toc_digest: Digest,
    /// sha256 of the tar stream the layer decompresses to (the image config's diff_id).
    pub diff_id: Digest,
    /// sha256 of the layer blob (the manifest's layer digest).
    pub blob_digest: Digest,
    pub uncompressed_size: u64,
    pub compressed_size: u64,
    /// Where the TOC's gzip member starts in the blob.
    pub toc_offset: u64,
    pub toc: Toc,
    /// Prioritized paths that are not in the layer.
    pub missing_prioritized: Vec<String>,
}

impl ConvertResult {
    /// The layer annotations eStargz readers look for, and skiff's hint of the TOC's place.
    pub fn annotations(&self) -> [(&'static str, String); 3] {
        [
            (TOC_DIGEST_ANNOTATION, self.toc_digest.to_string()),
            (UNCOMPRESSED_SIZE_ANNOTATION, self.uncompressed_size.to_string()),
            (TOC_OFFSET_ANNOTATION, self.toc_offset.to_string()),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("the chunk size must be at least one byte")]
    ZeroChunkSize,
    #[error("gzip compression level {0} is not between 0 and 9")]
    CompressionLevel(u32),
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("reading the content of {name:?}")]
    ReadEntry {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name:?} ends after {got} of its {size} bytes")]
    ShortEntry { name: String, got: u64, size: u64 },
    #[error("writing the layer at compressed byte {at}")]
    Write {
        at: u64,
        #[source]
        source: io::Error,
    },
    #[error("reading bytes {start}..{end} of the spooled input tar")]
    SpoolRead {
        start: u64,
        end: u64,
        #[source]
        source: io::Error,
    },
    #[error("spooling the input tar to a temporary file in {dir}")]
    Spool {
        dir: String,
        #[source]
        source: io::Error,
    },
}

/// Converts the tar stream `input` into an eStargz layer written to `output`.
pub fn convert<R: Read, W: Write>(
    input: R,
    output: W,
    options: &ConvertOptions,
) -> Result<ConvertResult, ConvertError> {
    if options.chunk_size == 0 {
        return Err(ConvertError::ZeroChunkSize);
    }
    if options.compression_level > 9 {
        return Err(ConvertError::CompressionLevel(options.compression_level));
    }
    let mut cuts = HashMap::new();
    for (path, offsets) in &options.cuts {
        let name = normalize_name(path).map_err(|reason| OrderError { path: path.clone(), reason })?;
        let mut offsets = offsets.clone();
        offsets.sort_unstable();
        offsets.dedup();
        cuts.insert(name, offsets);
    }
    let mut layer = LayerWriter::new(output, options, cuts);
    let mut missing_prioritized = Vec::new();
    if options.prioritized.is_empty() {
        layer.append_landmark(NO_PREFETCH_LANDMARK)?;
        let mut tar = TarStream::new(BufReader::with_capacity(COPY_BUFFER, input));
        while let Some(entry) = tar.next_entry()? {
            if !is_reserved(&entry.name) {
                layer.append(&entry, &entry.raw_header, &mut tar, true)?;
            }
        }
    } else {
        let spool = Spool::new(input, options)?;
        // Only where each header is: keeping every header in memory is not needed.
        let mut entries = Vec::new();
        let mut header_lens = Vec::new();
        let mut tar = TarStream::new(BufReader::with_capacity(COPY_BUFFER, spool.slice(0, spool.len)));
        while let Some(mut entry) = tar.next_entry()? {
            if !is_reserved(&entry.name) {
                header_lens.push(entry.raw_header.len() as u64);
                entry.raw_header = Vec::new();
                entries.push(entry);
            }
        }
        let order = prioritized_order(&entries, &options.prioritized)?;
        let append_spooled = |layer: &mut LayerWriter<W>, i: usize| {
            let entry = &entries[i];
            let raw_header = spool.read(entry.header_offset, header_lens[i])?;
            let mut data = spool.slice(entry.header_offset + header_lens[i], entry.size);
            layer.append(entry, &raw_header, &mut data, true)
        };
        for &i in &order.first {
            append_spooled(&mut layer, i)?;
        }
        layer.append_landmark(PREFETCH_LANDMARK)?;
        for &i in &order.rest {
            append_spooled(&mut layer, i)?;
        }
        missing_prioritized = order.missing;
    }
    layer.finish(missing_prioritized)
}

/// Names the converter writes itself; copies in the input (an eStargz layer being
/// re-converted) are dropped.
fn is_reserved(name: &str) -> bool {
    super::RESERVED_NAMES.contains(&name)
}

struct LayerWriter<'o, W: Write> {
    sink: MemberSink<W>,
    options: &'o ConvertOptions,
    entries: Vec<TocEntry>,
    /// `options.cuts` by normalized name, each sorted.
    cuts: HashMap<String, Vec<u64>>,
    /// The open member holds small files and may take more.
    packing: bool,
    buf: Vec<u8>,
}

impl<'o, W: Write> LayerWriter<'o, W> {
    fn new(output: W, options: &'o ConvertOptions, cuts: HashMap<String, Vec<u64>>) -> Self {
        LayerWriter {
            sink: MemberSink::new(output, options.compression_level),
            options,
            entries: Vec::new(),
            cuts,
            packing: false,
            buf: vec![0; COPY_BUFFER],
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ConvertError> {
        self.sink.write(bytes).map_err(|source| ConvertError::Write { at: self.sink.position().0, source })
    }

    fn end_member(&mut self) -> Result<(), ConvertError> {
        self.packing = false;
        self.sink.end_member().map_err(|source| ConvertError::Write { at: self.sink.position().0, source })
    }

    /// Writes one entry: its header blocks, then (regular files) its content chunk by chunk.
    fn append(
        &mut self,
        entry: &TarEntry,
        raw_header: &[u8],
        data: &mut dyn Read,
        may_pack: bool,
    ) -> Result<(), ConvertError> {
        self.write(raw_header)?;
        let mut toc = toc_entry(entry);
        if entry.kind != EntryKind::Reg || entry.size == 0 {
            if entry.kind == EntryKind::Reg {
                toc.digest = Some(Digest::of(b""));
            }
            self.entries.push(toc);
            return Ok(());
        }
        let size = entry.size;
        let chunk_size = self.options.chunk_size;
        let small = may_pack && size < self.options.small_file_threshold;
        let mut share_member = small
            && self.packing
            && self.sink.member_len() > 0
            && self.sink.member_len() + size <= self.options.pack_limit;
        let first = self.entries.len();
        let mut file_hash = Sha256::new();
        let cuts = self.cuts.get(&entry.name).cloned().unwrap_or_default();
        let mut cuts = cuts.into_iter().filter(|&c| c > 0 && c < size).peekable();
        let mut done = 0;
        while done < size {
            while cuts.next_if(|&c| c <= done).is_some() {}
            let len = chunk_size.min(size - done).min(cuts.peek().map_or(u64::MAX, |&c| c - done));
            if !share_member {
                self.end_member()?;
            }
            share_member = false;
            let (offset, inner_offset) = self.sink.position();
            let chunk_digest = self.copy_chunk(entry, data, done, len, &mut file_hash)?;
            let mut chunk = if done == 0 {
                std::mem::take(&mut toc)
            } else {
                TocEntry { name: toc_name(&entry.name), kind: CHUNK_TYPE.to_string(), ..TocEntry::default() }
            };
            chunk.offset = offset;
            chunk.inner_offset = inner_offset;
            chunk.chunk_offset = done;
            // 0: the file's only chunk.
            chunk.chunk_size = if len < size { len } else { 0 };
            chunk.chunk_digest = Some(chunk_digest);
            self.entries.push(chunk);
            done += len;
        }
        self.entries[first].digest = Some(Digest::from_sha256(file_hash.finalize().into()));
        self.packing = small;
        self.write(&[0; 512][..padding(size) as usize])
    }

    /// Copies `len` bytes of `entry`'s content into the open member; their digest.
    fn copy_chunk(
        &mut self,
        entry: &TarEntry,
        data: &mut dyn Read,
        at: u64,
        len: u64,
        file_hash: &mut Sha256,
    ) -> Result<Digest, ConvertError> {
        let mut chunk_hash = Sha256::new();
        let mut left = len;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match data.read(&mut self.buf[..want]) {
                Ok(0) => {
                    let got = at + len - left;
                    return Err(ConvertError::ShortEntry { name: entry.name.clone(), got, size: entry.size });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(ConvertError::ReadEntry { name: entry.name.clone(), source }),
            };
            let bytes = &self.buf[..n];
            chunk_hash.update(bytes);
            file_hash.update(bytes);
            self.sink
                .write(bytes)
                .map_err(|source| ConvertError::Write { at: self.sink.position().0, source })?;
            left -= n as u64;
        }
        Ok(Digest::from_sha256(chunk_hash.finalize().into()))
    }

    /// A landmark is a one-byte file in a member of its own: readers prefetch the blob up to
    /// its offset, so it must not share a member with the prioritized files before it.
    fn append_landmark(&mut self, name: &str) -> Result<(), ConvertError> {
        let header = plain_header(name, LANDMARK_CONTENT.len() as u64);
        let entry = TarStream::new(&header[..]).next_entry()?.ok_or(TarError::Truncated { at: 0 })?;
        self.append(&entry, &header, &mut &LANDMARK_CONTENT[..], false)?;
        self.end_member()
    }

    fn finish(mut self, missing_prioritized: Vec<String>) -> Result<ConvertResult, ConvertError> {
        self.end_member()?;
        let toc_offset = self.sink.position().0;
        let toc = Toc { version: TOC_VERSION, entries: std::mem::take(&mut self.entries) };
        let json = toc.to_json();
        let toc_digest = Digest::of(&json);
        self.write(&plain_header(TOC_TAR_NAME, json.len() as u64))?;
        self.write(&json)?;
        self.write(&[0; 512][..padding(json.len() as u64) as usize])?;
        // End of archive: two zero blocks.
        self.write(&[0; 1024])?;
        self.sink
            .write_raw(&footer_bytes(toc_offset))
            .map_err(|source| ConvertError::Write { at: toc_offset, source })?;
        let SinkTotals { blob_digest, compressed_size, diff_id, uncompressed_size } =
            self.sink.finish().map_err(|source| ConvertError::Write { at: toc_offset, source })?;
        Ok(ConvertResult {
            toc_digest,
            diff_id,
            blob_digest,
            uncompressed_size,
            compressed_size,
            toc_offset,
            toc,
            missing_prioritized,
        })
    }
}

/// The TOC's name for an entry; the root, which normalizes to `""`, is written `./`.
fn toc_name(name: &str) -> String {
    if name.is_empty() {
        "./".to_string()
    } else {
        name.to_string()
    }
}

fn toc_entry(entry: &TarEntry) -> TocEntry {
    let device = matches!(entry.kind, EntryKind::Char | EntryKind::Block);
    TocEntry {
        name: toc_name(&entry.name),
        kind: entry.kind.as_str().to_string(),
        size: entry.size,
        mod_time: format_mtime(entry.mtime),
        link_name: entry.link_name.clone(),
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        user_name: entry.user_name.clone(),
        group_name: entry.group_name.clone(),
        dev_major: if device { entry.dev_major } else { 0 },
        dev_minor: if device { entry.dev_minor } else { 0 },
        xattrs: entry.xattrs.clone(),
        ..TocEntry::default()
    }
}

/// A ustar header for a file the converter adds (landmarks, the TOC): mode 0644, owned by
/// root, epoch mtime.
fn plain_header(name: &str, size: u64) -> [u8; 512] {
    let mut header = tar::Header::new_ustar();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    *header.as_bytes()
}

/// The input, copied to an unnamed temporary file so that entries can be written in any order.
struct Spool {
    file: File,
    len: u64,
}

impl Spool {
    fn new<R: Read>(mut input: R, options: &ConvertOptions) -> Result<Spool, ConvertError> {
        let dir = options.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
        let error = |source| ConvertError::Spool { dir: dir.display().to_string(), source };
        let mut file = tempfile::tempfile_in(&dir).map_err(error)?;
        let len = io::copy(&mut input, &mut file).map_err(error)?;
        Ok(Spool { file, len })
    }

    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, ConvertError> {
        let mut buf = vec![0; len as usize];
        self.file.read_exact_at(&mut buf, offset).map_err(|source| ConvertError::SpoolRead {
            start: offset,
            end: offset + len,
            source,
        })?;
        Ok(buf)
    }

    fn slice(&self, offset: u64, len: u64) -> SpoolSlice<'_> {
        SpoolSlice { file: &self.file, position: offset, end: offset + len }
    }
}

/// A byte range of the spool, read without moving a shared file cursor.
struct SpoolSlice<'a> {
    file: &'a File,
    position: u64,
    end: u64,
}

impl Read for SpoolSlice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.position).min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}
