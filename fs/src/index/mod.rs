//! `LayerIndex`: the immutable tree of one layer — names, metadata, and which chunks hold
//! each file's bytes. Built once per layer (from an eStargz TOC, or while streaming a plain
//! tar), stored beside the image, and read by the lazy layer without touching the blob.

mod builder;

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::Digest;

pub use builder::{EntryMeta, IndexBuilder, IndexError};

/// A node's position in its index; [`ROOT`] is the layer's root directory.
pub type NodeId = u32;
pub const ROOT: NodeId = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// Only ever in a union's upper: layers cannot hold sockets.
    Socket,
}

/// One name in the layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The last path component; empty for the root.
    pub name: String,
    pub parent: NodeId,
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (no file-type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    #[serde(default)]
    pub target: Option<String>,
    /// Device numbers of character and block devices.
    #[serde(default)]
    pub rdev: (u32, u32),
    #[serde(default)]
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Directory entries, sorted by name.
    #[serde(default)]
    pub children: Vec<NodeId>,
    /// This file's chunks: a range of the index's chunk table.
    #[serde(default)]
    pub chunks: Range<u32>,
    /// For a hardlink: the node whose inode it shares (the first name in the layer).
    #[serde(default)]
    pub link: Option<NodeId>,
    /// How many names the inode has in this layer (directories: 2 + subdirectories).
    pub nlink: u32,
}

/// How a chunk's bytes are stored in the layer blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    /// A gzip member starting at `offset`; the chunk starts `inner_offset` bytes into it.
    Gzip,
    Zstd,
    Uncompressed,
    /// Only reachable by decompressing the whole layer from its start (plain gzip or zstd
    /// layers without a seekable index); `inner_offset` is the offset in the tar stream.
    Stream,
}

/// Where one chunk of a file lives, and what its bytes hash to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// sha256 of the chunk's uncompressed bytes: the cache key.
    pub digest: Digest,
    /// Where the chunk starts in its file.
    pub file_offset: u64,
    /// Uncompressed length.
    pub len: u64,
    pub codec: Codec,
    /// Compressed span in the blob holding the chunk (for `Stream`: 0..blob size).
    pub offset: u64,
    pub compressed_len: u64,
    pub inner_offset: u64,
}

impl ChunkRef {
    pub fn file_range(&self) -> Range<u64> {
        self.file_offset..self.file_offset + self.len
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    nodes: Vec<Node>,
    chunks: Vec<ChunkRef>,
    /// Where the blob's prioritized files end (an eStargz `.prefetch.landmark`), if it has any.
    #[serde(default)]
    prefetch_end: Option<u64>,
}

impl LayerIndex {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: NodeId, name: &str) -> Option<NodeId> {
        let children = &self.node(parent).children;
        children.binary_search_by(|c| self.node(*c).name.as_str().cmp(name)).ok().map(|i| children[i])
    }

    /// The node at `path` (relative to the root, `/`-separated), without following symlinks.
    pub fn resolve(&self, path: &str) -> Option<NodeId> {
        path.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .try_fold(ROOT, |dir, name| self.lookup(dir, name))
    }

    /// The path of `id` from the root, without a leading slash.
    pub fn path_of(&self, id: NodeId) -> String {
        let mut parts = Vec::new();
        let mut cur = id;
        while cur != ROOT {
            let n = self.node(cur);
            parts.push(n.name.as_str());
            cur = n.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Every node id, parents before children.
    pub fn ids(&self) -> Range<NodeId> {
        0..self.nodes.len() as NodeId
    }

    /// All chunks of file `id`.
    pub fn file_chunks(&self, id: NodeId) -> &[ChunkRef] {
        let r = &self.node(id).chunks;
        &self.chunks[r.start as usize..r.end as usize]
    }

    /// The chunks of file `id` that hold bytes of `range`.
    pub fn chunks(&self, id: NodeId, range: Range<u64>) -> &[ChunkRef] {
        let all = self.file_chunks(id);
        let first = all.partition_point(|c| c.file_offset + c.len <= range.start);
        let end = first + all[first..].partition_point(|c| c.file_offset < range.end);
        &all[first..end]
    }

    /// Every chunk of the layer, in blob order.
    pub fn all_chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// An index of regular files made of whole chunks, for tests here and in other crates:
    /// `files` by path and size in chunks of `chunk` bytes, each `compressed` bytes in the
    /// blob, one after the other, with the digest of "`tag` `path` `i`".
    #[doc(hidden)]
    pub fn of_test_files(tag: &str, files: &[(&str, u64)], chunk: u64, compressed: u64) -> LayerIndex {
        LayerIndex::of_test_tree(tag, files, &[], chunk, compressed)
    }

    /// [`LayerIndex::of_test_files`] with symlinks too: `links` by path and target.
    #[doc(hidden)]
    pub fn of_test_tree(
        tag: &str,
        files: &[(&str, u64)],
        links: &[(&str, &str)],
        chunk: u64,
        compressed: u64,
    ) -> LayerIndex {
        let mut b = IndexBuilder::new();
        for &(path, target) in links {
            let meta = EntryMeta {
                kind: Kind::Symlink,
                mode: 0o777,
                target: Some(target.into()),
                ..EntryMeta::implicit_dir()
            };
            b.add(path, meta).expect("a test path");
        }
        let mut offset = 0;
        for &(path, chunks) in files {
            let meta = EntryMeta {
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: chunks * chunk,
                mtime: 0,
                target: None,
                rdev: (0, 0),
                xattrs: Default::default(),
            };
            let node = b.add(path, meta).expect("a test path");
            for i in 0..chunks {
                let digest = Digest::of(format!("{tag} {path} {i}").as_bytes());
                let chunk = ChunkRef {
                    digest,
                    file_offset: i * chunk,
                    len: chunk,
                    codec: Codec::Gzip,
                    offset,
                    compressed_len: compressed,
                    inner_offset: 0,
                };
                b.push_chunk(node, chunk).expect("chunks in order");
                offset += compressed;
            }
        }
        b.finish()
    }

    /// Sets the link count of `id` (for a directory copied from another layer, whose count
    /// counts subdirectories this index does not hold).
    pub(crate) fn set_nlink(&mut self, id: NodeId, nlink: u32) {
        self.nodes[id as usize].nlink = nlink;
    }

    /// Marks the blob's first `end` bytes as its prioritized files (`None`: there are none).
    pub fn set_prefetch_end(&mut self, end: Option<u64>) {
        self.prefetch_end = end.filter(|&e| e > 0);
    }

    /// The prioritized files (those whose content starts before the landmark), each with
    /// where it starts in the blob, in blob order.
    pub fn prioritized_files(&self) -> Vec<(u64, NodeId)> {
        let Some(end) = self.prefetch_end else { return Vec::new() };
        let mut files: Vec<(u64, NodeId)> = self
            .ids()
            .filter(|&id| self.node(id).kind == Kind::File && self.node(id).link.is_none())
            .filter_map(|id| self.file_chunks(id).first().map(|c| (c.offset, id)))
            .filter(|&(offset, _)| offset < end)
            .collect();
        files.sort_unstable();
        files
    }

    /// The stored form: compact binary, read at every mount (a few times faster to read than
    /// JSON for an index of thousands of files).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("an index always serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<LayerIndex, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// The form earlier versions stored.
    pub fn from_json(bytes: &[u8]) -> Result<LayerIndex, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
