//! The `LayerIndex` of an eStargz layer, from its TOC.

use super::LazyError;
use crate::estargz::{EntryKind, EstargzReader, RESERVED_NAMES};
use crate::index::{ChunkRef, Codec, EntryMeta, IndexBuilder, Kind, LayerIndex};

/// Builds the index of an eStargz layer from its (verified) TOC. The landmark files and the
/// TOC itself are left out, as stargz-snapshotter leaves them out of its mounts.
pub fn index_estargz(reader: &EstargzReader, blob: &str) -> Result<LayerIndex, LazyError> {
    let mut builder = IndexBuilder::new();
    let bad = |why: String| LazyError::Toc { blob: blob.to_string(), why };
    for entry in reader.entries() {
        if RESERVED_NAMES.contains(&entry.name.as_str()) {
            continue;
        }
        if entry.kind == EntryKind::Hardlink {
            builder.add_hardlink(&entry.name, &entry.link_name).map_err(|e| bad(e.to_string()))?;
            continue;
        }
        let kind = match entry.kind {
            EntryKind::Dir => Kind::Dir,
            EntryKind::Reg => Kind::File,
            EntryKind::Symlink => Kind::Symlink,
            EntryKind::Char => Kind::CharDevice,
            EntryKind::Block => Kind::BlockDevice,
            EntryKind::Fifo => Kind::Fifo,
            EntryKind::Hardlink => unreachable!("handled above"),
        };
        let id_u32 = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| bad(format!("entry {:?} has {what} {v}, over 32 bits", entry.name)))
        };
        let meta = EntryMeta {
            kind,
            mode: entry.mode,
            uid: id_u32(entry.uid, "uid")?,
            gid: id_u32(entry.gid, "gid")?,
            size: entry.size,
            mtime: entry.mtime,
            target: (kind == Kind::Symlink).then(|| entry.link_name.clone()),
            rdev: (id_u32(entry.dev_major, "devMajor")?, id_u32(entry.dev_minor, "devMinor")?),
            xattrs: entry.xattrs.clone(),
        };
        let id = builder.add(&entry.name, meta).map_err(|e| bad(e.to_string()))?;
        for c in &entry.chunks {
            // Chunks are cache keys: without a digest a chunk cannot be verified or shared.
            let digest = match (c.chunk_digest, entry.digest) {
                (Some(d), _) => d,
                (None, Some(d)) if entry.chunks.len() == 1 => d,
                _ => {
                    return Err(bad(format!(
                        "entry {:?} has chunks without chunkDigest (legacy stargz); convert the image again",
                        entry.name
                    )))
                }
            };
            let chunk = ChunkRef {
                digest,
                file_offset: c.uncompressed_offset,
                len: c.uncompressed_len,
                codec: Codec::Gzip,
                offset: c.compressed_offset,
                compressed_len: c.compressed_len,
                inner_offset: c.inner_offset,
            };
            builder.push_chunk(id, chunk).map_err(|e| bad(e.to_string()))?;
        }
    }
    let mut index = builder.finish();
    index.set_prefetch_end(reader.prefetch_end());
    Ok(index)
}
