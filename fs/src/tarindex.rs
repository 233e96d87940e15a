//! Indexing a plain tar stream: the fallback for layers without a TOC (plain gzip, zstd or
//! uncompressed tar, most images in the wild). The stream is read once, front to back; each
//! regular file's bytes are cut into chunks that go to `on_chunk` (the cache) as they pass,
//! and the `LayerIndex` grows entry by entry.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use tar::EntryType;

use crate::index::{ChunkRef, Codec, EntryMeta, IndexBuilder, IndexError, Kind, LayerIndex};
use crate::Digest;

#[derive(Debug, thiserror::Error)]
pub enum TarIndexError {
    #[error("reading the tar stream{at}: {source}")]
    Read {
        at: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tar entry name {0:?} is not UTF-8")]
    NonUtf8(String),
    #[error("tar entry {path:?} has unsupported type {kind:?}")]
    UnsupportedType { path: String, kind: u8 },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("storing chunk {digest} of {path:?}: {source}")]
    Sink {
        path: String,
        digest: Digest,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Receives each chunk's bytes as the stream passes it.
pub trait ChunkSink {
    fn put(&mut self, chunk: &ChunkRef, bytes: &[u8])
        -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

impl<F> ChunkSink for F
where
    F: FnMut(&ChunkRef, &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
{
    fn put(
        &mut self,
        chunk: &ChunkRef,
        bytes: &[u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self(chunk, bytes)
    }
}

fn path_string(path: &Path) -> Result<String, TarIndexError> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| TarIndexError::NonUtf8(path.to_string_lossy().into_owned()))
}

/// Reads a whole (uncompressed) tar stream, indexing it; file bytes are cut into
/// `chunk_size` chunks (codec `Stream`, located by their offset in the tar stream).
pub fn index_tar(
    stream: impl Read,
    chunk_size: u64,
    sink: &mut dyn ChunkSink,
) -> Result<LayerIndex, TarIndexError> {
    let read = |at: String| move |source| TarIndexError::Read { at, source };
    let mut archive = tar::Archive::new(stream);
    let mut builder = IndexBuilder::new();
    let mut buf = vec![0u8; chunk_size as usize];
    for entry in archive.entries().map_err(read(String::new()))? {
        let mut entry = entry.map_err(read(String::new()))?;
        let path = path_string(&entry.path().map_err(read(String::new()))?)?;
        let at = format!(" at entry {path:?}");
        let header = entry.header().clone();
        let entry_type = header.entry_type();
        let kind = match entry_type {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Char => Kind::CharDevice,
            EntryType::Block => Kind::BlockDevice,
            EntryType::Fifo => Kind::Fifo,
            EntryType::Link => {
                let target = entry.link_name().map_err(read(at.clone()))?.unwrap_or_default();
                builder.add_hardlink(&path, &path_string(&target)?)?;
                continue;
            }
            EntryType::XGlobalHeader => continue,
            other => return Err(TarIndexError::UnsupportedType { path, kind: other.as_byte() }),
        };
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = entry.pax_extensions().map_err(read(at.clone()))? {
            for ext in pax {
                let ext = ext.map_err(read(at.clone()))?;
                if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.insert(name.to_string(), ext.value_bytes().to_vec());
                }
            }
        }
        let target = match kind {
            Kind::Symlink => {
                entry.link_name().map_err(read(at.clone()))?.map(|t| path_string(&t)).transpose()?
            }
            _ => None,
        };
        let rdev = match kind {
            Kind::CharDevice | Kind::BlockDevice => (
                header.device_major().ok().flatten().unwrap_or(0),
                header.device_minor().ok().flatten().unwrap_or(0),
            ),
            _ => (0, 0),
        };
        let size = entry.size();
        let meta = EntryMeta {
            kind,
            mode: header.mode().map_err(read(at.clone()))?,
            uid: header.uid().map_err(read(at.clone()))? as u32,
            gid: header.gid().map_err(read(at.clone()))? as u32,
            size,
            mtime: header.mtime().map_err(read(at.clone()))? as i64,
            target,
            rdev,
            xattrs,
        };
        let id = builder.add(&path, meta)?;
        if kind != Kind::File {
            continue;
        }
        let data_start = entry.raw_file_position();
        let mut done = 0u64;
        while done < size {
            let len = chunk_size.min(size - done) as usize;
            entry.read_exact(&mut buf[..len]).map_err(read(at.clone()))?;
            let bytes = &buf[..len];
            let chunk = ChunkRef {
                digest: Digest::of(bytes),
                file_offset: done,
                len: len as u64,
                codec: Codec::Stream,
                offset: 0,
                compressed_len: 0,
                inner_offset: data_start + done,
            };
            sink.put(&chunk, bytes).map_err(|source| TarIndexError::Sink {
                path: path.clone(),
                digest: chunk.digest,
                source,
            })?;
            builder.push_chunk(id, chunk)?;
            done += len as u64;
        }
    }
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(t: EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(t);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(1000);
        h.set_gid(100);
        h
    }

    #[test]
    fn indexes_every_entry_type_and_chunks_file_bytes_in_stream_order() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let long = format!("dir/{}", "n".repeat(150));
        let tar = tar_of(|b| {
            b.append_data(&mut header(EntryType::Directory, 0o755, 0), "dir", std::io::empty()).unwrap();
            b.append_pax_extensions([("SCHILY.xattr.user.k", b"v".as_slice())]).unwrap();
            b.append_data(&mut header(EntryType::Regular, 0o4755, data.len() as u64), "dir/file", &data[..])
                .unwrap();
            b.append_link(&mut header(EntryType::Link, 0o644, 0), "dir/hard", "dir/file").unwrap();
            b.append_link(&mut header(EntryType::Symlink, 0o777, 0), "dir/sym", "file").unwrap();
            let mut dev = header(EntryType::Char, 0o666, 0);
            dev.set_device_major(1).unwrap();
            dev.set_device_minor(3).unwrap();
            b.append_data(&mut dev, "dev/null", std::io::empty()).unwrap();
            b.append_data(&mut header(EntryType::Fifo, 0o600, 0), "fifo", std::io::empty()).unwrap();
            b.append_data(&mut header(EntryType::Regular, 0o644, 2), &long, &b"hi"[..]).unwrap();
        });
        let mut seen: Vec<(ChunkRef, Vec<u8>)> = Vec::new();
        let mut sink = |c: &ChunkRef, bytes: &[u8]| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            seen.push((*c, bytes.to_vec()));
            Ok(())
        };
        let idx = index_tar(&tar[..], 4096, &mut sink).unwrap();

        let file = idx.resolve("dir/file").unwrap();
        let n = idx.node(file);
        assert_eq!(
            (n.kind, n.mode, n.uid, n.gid, n.size, n.nlink),
            (Kind::File, 0o4755, 1000, 100, 10_000, 2)
        );
        assert_eq!(n.xattrs.get("user.k").map(Vec::as_slice), Some(b"v".as_slice()));
        let chunks = idx.file_chunks(file);
        assert_eq!(chunks.iter().map(|c| c.len).collect::<Vec<_>>(), [4096, 4096, 1808]);
        let mut joined = Vec::new();
        for c in chunks {
            let (_, bytes) = seen.iter().find(|(s, _)| s == c).unwrap();
            assert_eq!(c.digest, Digest::of(bytes));
            assert_eq!(&tar[c.inner_offset as usize..(c.inner_offset + c.len) as usize], &bytes[..]);
            joined.extend_from_slice(bytes);
        }
        assert_eq!(joined, data);
        assert_eq!(idx.node(idx.resolve("dir/hard").unwrap()).link, Some(file));
        assert_eq!(idx.node(idx.resolve("dir/sym").unwrap()).target.as_deref(), Some("file"));
        let null = idx.node(idx.resolve("dev/null").unwrap());
        assert_eq!((null.kind, null.rdev), (Kind::CharDevice, (1, 3)));
        assert_eq!(idx.node(idx.resolve("fifo").unwrap()).kind, Kind::Fifo);
        assert_eq!(idx.node(idx.resolve(&long).unwrap()).size, 2);
    }

    #[test]
    fn a_truncated_stream_is_an_error_naming_the_entry() {
        let tar = tar_of(|b| {
            b.append_data(&mut header(EntryType::Regular, 0o644, 5000), "big", &[1u8; 5000][..]).unwrap();
        });
        let mut sink =
            |_: &ChunkRef, _: &[u8]| -> Result<(), Box<dyn std::error::Error + Send + Sync>> { Ok(()) };
        let err = index_tar(&tar[..3000], 1024, &mut sink).unwrap_err();
        assert!(err.to_string().contains("\"big\""), "{err}");
    }
}
