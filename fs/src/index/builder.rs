//! Building a `LayerIndex` entry by entry, in the order a tar stream or a TOC lists them.
//! Later entries replace earlier ones of the same name, as when a tar is extracted.

use std::collections::{BTreeMap, HashMap};

use super::{ChunkRef, Kind, LayerIndex, Node, NodeId, ROOT};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("entry {0:?} has an unsafe path (a `..` component)")]
    UnsafePath(String),
    #[error("entry {path:?} needs {parent:?} to be a directory, but it is not")]
    NotADirectory { path: String, parent: String },
    #[error("hardlink {path:?} points at {target:?}, which is not an earlier file of the layer")]
    BadHardlink { path: String, target: String },
    #[error("chunk at offset {offset} of {path:?} does not follow its previous chunk")]
    ChunkOrder { path: String, offset: u64 },
    #[error("stored index is damaged: {0}")]
    Damaged(String),
}

/// What a tar header or TOC entry says about one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub target: Option<String>,
    pub rdev: (u32, u32),
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl EntryMeta {
    /// A plain entry of `kind` and `size`, owned by root, mode 0644: for tests.
    #[cfg(test)]
    pub(crate) fn for_test(kind: Kind, size: u64) -> EntryMeta {
        EntryMeta { kind, mode: 0o644, size, ..EntryMeta::implicit_dir() }
    }

    /// A directory created because an entry below it came first: mode 0755, owned by root.
    pub(crate) fn implicit_dir() -> EntryMeta {
        EntryMeta {
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            target: None,
            rdev: (0, 0),
            xattrs: BTreeMap::new(),
        }
    }
}

pub struct IndexBuilder {
    nodes: Vec<Node>,
    chunks: Vec<ChunkRef>,
    entries: Vec<BTreeMap<String, NodeId>>,
}

impl Default for IndexBuilder {
    fn default() -> Self {
        IndexBuilder::new()
    }
}

/// Splits a layer path into components: `./a//b/` → [a, b]; `..` is refused.
pub(crate) fn components(path: &str) -> Result<Vec<&str>, IndexError> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.contains(&"..") {
        return Err(IndexError::UnsafePath(path.to_string()));
    }
    Ok(parts)
}

impl IndexBuilder {
    pub fn new() -> IndexBuilder {
        let mut b = IndexBuilder { nodes: Vec::new(), chunks: Vec::new(), entries: Vec::new() };
        b.push_node(String::new(), ROOT, &EntryMeta::implicit_dir());
        b
    }

    fn push_node(&mut self, name: String, parent: NodeId, meta: &EntryMeta) -> NodeId {
        let id = self.nodes.len() as NodeId;
        self.nodes.push(node_from(name, parent, meta));
        self.entries.push(BTreeMap::new());
        if id != ROOT {
            let name = self.nodes[id as usize].name.clone();
            self.entries[parent as usize].insert(name, id);
        }
        id
    }

    fn dir_of(&mut self, path: &str, parents: &[&str]) -> Result<NodeId, IndexError> {
        let mut dir = ROOT;
        for (i, name) in parents.iter().enumerate() {
            dir = match self.entries[dir as usize].get(*name) {
                Some(&id) if self.nodes[id as usize].kind == Kind::Dir => id,
                Some(_) => {
                    return Err(IndexError::NotADirectory {
                        path: path.to_string(),
                        parent: parents[..=i].join("/"),
                    })
                }
                None => self.push_node(name.to_string(), dir, &EntryMeta::implicit_dir()),
            };
        }
        Ok(dir)
    }

    /// Adds (or replaces) the entry at `path`.
    pub fn add(&mut self, path: &str, meta: EntryMeta) -> Result<NodeId, IndexError> {
        let parts = components(path)?;
        let Some((name, parents)) = parts.split_last() else {
            if meta.kind == Kind::Dir {
                self.set_meta(ROOT, &meta);
            }
            return Ok(ROOT);
        };
        let dir = self.dir_of(path, parents)?;
        match self.entries[dir as usize].get(*name).copied() {
            Some(id) => {
                let keep_children = meta.kind == Kind::Dir && self.nodes[id as usize].kind == Kind::Dir;
                if !keep_children {
                    self.entries[id as usize].clear();
                    self.nodes[id as usize].chunks = 0..0;
                    self.nodes[id as usize].link = None;
                }
                self.set_meta(id, &meta);
                Ok(id)
            }
            None => Ok(self.push_node(name.to_string(), dir, &meta)),
        }
    }

    fn set_meta(&mut self, id: NodeId, meta: &EntryMeta) {
        let node = &mut self.nodes[id as usize];
        let fresh = node_from(std::mem::take(&mut node.name), node.parent, meta);
        *node = Node { chunks: node.chunks.clone(), link: node.link, ..fresh };
    }

    /// Adds `path` as another name of the earlier file `target`.
    pub fn add_hardlink(&mut self, path: &str, target: &str) -> Result<NodeId, IndexError> {
        let bad = || IndexError::BadHardlink { path: path.to_string(), target: target.to_string() };
        let target_id = self.resolve(target)?.ok_or_else(bad)?;
        if self.nodes[target_id as usize].kind == Kind::Dir {
            return Err(bad());
        }
        let primary = self.nodes[target_id as usize].link.unwrap_or(target_id);
        let source = self.nodes[primary as usize].clone();
        let meta = EntryMeta {
            kind: source.kind,
            mode: source.mode,
            uid: source.uid,
            gid: source.gid,
            size: source.size,
            mtime: source.mtime,
            target: source.target.clone(),
            rdev: source.rdev,
            xattrs: source.xattrs.clone(),
        };
        let id = self.add(path, meta)?;
        if id == primary {
            return Ok(id);
        }
        let node = &mut self.nodes[id as usize];
        node.link = Some(primary);
        node.chunks = source.chunks;
        Ok(id)
    }

    fn resolve(&self, path: &str) -> Result<Option<NodeId>, IndexError> {
        let mut cur = ROOT;
        for name in components(path)? {
            match self.entries[cur as usize].get(name) {
                Some(&id) => cur = id,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Appends the next chunk of file `id`; a file's chunks come in order, one after another.
    pub fn push_chunk(&mut self, id: NodeId, chunk: ChunkRef) -> Result<(), IndexError> {
        let index = self.chunks.len() as u32;
        let node = &mut self.nodes[id as usize];
        let expected = if node.chunks.is_empty() {
            0
        } else {
            let last = &self.chunks[node.chunks.end as usize - 1];
            last.file_offset + last.len
        };
        if chunk.file_offset != expected || (!node.chunks.is_empty() && node.chunks.end != index) {
            let path = node.name.clone();
            return Err(IndexError::ChunkOrder { path, offset: chunk.file_offset });
        }
        if node.chunks.is_empty() {
            node.chunks = index..index;
        }
        node.chunks.end = index + 1;
        self.chunks.push(chunk);
        Ok(())
    }

    /// Sorts directories, shares chunks among hardlinks and counts links.
    pub fn finish(mut self) -> LayerIndex {
        let mut names: HashMap<NodeId, u32> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.kind != Kind::Dir && self.is_reachable(i as NodeId) {
                *names.entry(node.link.unwrap_or(i as NodeId)).or_default() += 1;
            }
        }
        for i in 0..self.nodes.len() {
            let children: Vec<NodeId> = self.entries[i].values().copied().collect();
            let subdirs =
                children.iter().filter(|c| self.nodes[**c as usize].kind == Kind::Dir).count() as u32;
            let node = &self.nodes[i];
            let nlink = match node.kind {
                Kind::Dir => 2 + subdirs,
                _ => names.get(&node.link.unwrap_or(i as NodeId)).copied().unwrap_or(1),
            };
            let shared = node.link.map(|p| self.nodes[p as usize].chunks.clone());
            let node = &mut self.nodes[i];
            node.children = children;
            node.nlink = nlink;
            if let Some(chunks) = shared {
                node.chunks = chunks;
            }
        }
        LayerIndex { nodes: self.nodes, chunks: self.chunks, prefetch_end: None }
    }

    /// Whether `id` is still named (a replaced entry's node is not reachable from its parent).
    fn is_reachable(&self, id: NodeId) -> bool {
        let node = &self.nodes[id as usize];
        id == ROOT || self.entries[node.parent as usize].get(&node.name) == Some(&id)
    }
}

fn node_from(name: String, parent: NodeId, meta: &EntryMeta) -> Node {
    Node {
        name,
        parent,
        kind: meta.kind,
        mode: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        size: if meta.kind == Kind::File { meta.size } else { 0 },
        mtime: meta.mtime,
        target: meta.target.clone(),
        rdev: meta.rdev,
        xattrs: meta.xattrs.clone(),
        children: Vec::new(),
        chunks: 0..0,
        link: None,
        nlink: 1,
    }
}

impl LayerIndex {
    /// Checks a deserialized index for references that would make lookups panic.
    pub fn validate(&self) -> Result<(), IndexError> {
        let n = self.nodes.len() as u32;
        let damaged = |why: String| Err(IndexError::Damaged(why));
        if n == 0 || self.nodes[0].kind != Kind::Dir {
            return damaged("no root directory".into());
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.parent >= n
                || node.children.iter().any(|c| *c >= n || *c == 0)
                || node.link.is_some_and(|l| l >= n)
            {
                return damaged(format!("node {i} points outside the index"));
            }
            if node.chunks.start > node.chunks.end || node.chunks.end as usize > self.chunks.len() {
                return damaged(format!("node {i} has chunks outside the chunk table"));
            }
            let sorted = node
                .children
                .windows(2)
                .all(|w| self.nodes[w[0] as usize].name < self.nodes[w[1] as usize].name);
            if !sorted {
                return damaged(format!("directory {i} is not sorted"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Codec;
    use crate::Digest;

    fn meta(kind: Kind, size: u64) -> EntryMeta {
        EntryMeta::for_test(kind, size)
    }

    fn chunk(file_offset: u64, len: u64) -> ChunkRef {
        ChunkRef {
            digest: Digest::of(&file_offset.to_le_bytes()),
            file_offset,
            len,
            codec: Codec::Gzip,
            offset: 0,
            compressed_len: 0,
            inner_offset: 0,
        }
    }

    #[test]
    fn builds_a_tree_with_implicit_dirs_replacements_and_hardlinks() {
        let mut b = IndexBuilder::new();
        let f = b.add("./usr/bin/tool", meta(Kind::File, 10)).unwrap();
        b.push_chunk(f, chunk(0, 6)).unwrap();
        b.push_chunk(f, chunk(6, 4)).unwrap();
        b.add("usr/", EntryMeta { mode: 0o700, ..meta(Kind::Dir, 0) }).unwrap();
        b.add_hardlink("usr/bin/alias", "usr/bin/tool").unwrap();
        b.add("etc/conf", meta(Kind::File, 1)).unwrap();
        b.add("etc/conf", EntryMeta { target: Some("x".into()), ..meta(Kind::Symlink, 0) }).unwrap();
        let idx = b.finish();
        idx.validate().unwrap();

        let usr = idx.resolve("usr").unwrap();
        assert_eq!(idx.node(usr).mode, 0o700, "a later dir entry updates metadata and keeps children");
        assert_eq!(idx.node(usr).nlink, 3);
        let tool = idx.resolve("/usr/bin/tool").unwrap();
        let alias = idx.resolve("usr/bin/alias").unwrap();
        assert_eq!(idx.node(alias).link, Some(tool));
        assert_eq!((idx.node(tool).nlink, idx.node(alias).nlink), (2, 2));
        assert_eq!(idx.file_chunks(alias), idx.file_chunks(tool));
        assert_eq!(idx.chunks(tool, 5..7).len(), 2);
        assert_eq!(idx.chunks(tool, 6..10).len(), 1);
        assert_eq!(idx.chunks(tool, 10..20).len(), 0);
        let conf = idx.resolve("etc/conf").unwrap();
        assert_eq!(idx.node(conf).kind, Kind::Symlink);
        assert_eq!(idx.path_of(alias), "usr/bin/alias");
        let names: Vec<&str> = idx.node(0).children.iter().map(|c| idx.node(*c).name.as_str()).collect();
        assert_eq!(names, ["etc", "usr"]);

        let round = LayerIndex::from_bytes(&idx.to_bytes()).unwrap();
        assert_eq!(round, idx);
    }

    #[test]
    fn refuses_unsafe_and_inconsistent_entries() {
        let mut b = IndexBuilder::new();
        assert_eq!(
            b.add("a/../../etc/passwd", meta(Kind::File, 0)),
            Err(IndexError::UnsafePath("a/../../etc/passwd".into()))
        );
        b.add("file", meta(Kind::File, 0)).unwrap();
        assert!(matches!(b.add("file/below", meta(Kind::File, 0)), Err(IndexError::NotADirectory { .. })));
        assert!(matches!(b.add_hardlink("l", "missing"), Err(IndexError::BadHardlink { .. })));
        let f = b.add("g", meta(Kind::File, 8)).unwrap();
        assert!(matches!(b.push_chunk(f, chunk(4, 4)), Err(IndexError::ChunkOrder { .. })));
    }
}
