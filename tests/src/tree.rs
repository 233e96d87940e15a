//! A layer's tree as a comparable map: every entry's type, mode, owner, size, mtime, link
//! target, xattrs and content digest. Built from a tar file, or read through a `LazyLayer`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use skiff::Digest;
use skiff_fs::index::{Kind, ROOT};
use skiff_fs::lazy::LazyLayer;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    /// Symlink target, or for hardlinks the path of the other name.
    pub target: Option<String>,
    pub rdev: (u32, u32),
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub content: Option<Digest>,
}

fn normalize(path: &str) -> String {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

/// The entries of a gzip (or plain) tar file, later entries replacing earlier ones; hardlinks
/// resolved to the content of their target. Landmarks and the eStargz TOC are left out.
pub fn from_tar(path: &Path) -> BTreeMap<String, Entry> {
    let file = std::fs::File::open(path).unwrap();
    let mut magic = [0u8; 2];
    std::fs::File::open(path).unwrap().read_exact(&mut magic).unwrap();
    let reader: Box<dyn Read> = if magic == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = normalize(&entry.path().unwrap().to_string_lossy());
        if name.is_empty() || skiff_fs::estargz::RESERVED_NAMES.contains(&name.as_str()) {
            continue;
        }
        let h = entry.header().clone();
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for ext in pax {
                let ext = ext.unwrap();
                if let Some(k) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.insert(k.to_string(), ext.value_bytes().to_vec());
                }
            }
        }
        let link = entry.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
        let (kind, target) = match h.entry_type() {
            tar::EntryType::Directory => (Kind::Dir, None),
            tar::EntryType::Symlink => (Kind::Symlink, link),
            tar::EntryType::Char => (Kind::CharDevice, None),
            tar::EntryType::Block => (Kind::BlockDevice, None),
            tar::EntryType::Fifo => (Kind::Fifo, None),
            tar::EntryType::Link => {
                let target = normalize(&link.unwrap());
                let mut e: Entry = out.get(&target).cloned().unwrap();
                e.target = Some(target);
                out.insert(name, e);
                continue;
            }
            _ => (Kind::File, None),
        };
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        let rdev = match kind {
            Kind::CharDevice | Kind::BlockDevice => {
                (h.device_major().unwrap().unwrap_or(0), h.device_minor().unwrap().unwrap_or(0))
            }
            _ => (0, 0),
        };
        out.insert(
            name,
            Entry {
                kind,
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap() as u32,
                gid: h.gid().unwrap() as u32,
                size: if kind == Kind::File { content.len() as u64 } else { 0 },
                mtime: h.mtime().unwrap() as i64,
                target,
                rdev,
                xattrs,
                content: (kind == Kind::File).then(|| Digest::of(&content)),
            },
        );
    }
    out
}

/// Every entry of a lazy layer, each file read whole through `read` in `read_size` pieces.
pub fn from_lazy(layer: &LazyLayer, read_size: usize) -> BTreeMap<String, Entry> {
    let index = layer.index();
    let mut out = BTreeMap::new();
    for id in index.ids() {
        if id == ROOT {
            continue;
        }
        let n = index.node(id);
        if index.node(n.parent).children.binary_search_by(|c| index.node(*c).name.cmp(&n.name)).is_err() {
            continue; // replaced by a later entry of the same name
        }
        let content = (n.kind == Kind::File).then(|| {
            let mut bytes = Vec::new();
            let mut buf = vec![0u8; read_size];
            loop {
                let got = layer.read(id, bytes.len() as u64, &mut buf).unwrap();
                if got == 0 {
                    break;
                }
                bytes.extend_from_slice(&buf[..got]);
            }
            assert_eq!(bytes.len() as u64, n.size, "{}", index.path_of(id));
            Digest::of(&bytes)
        });
        let target = match n.link {
            Some(primary) => Some(index.path_of(primary)),
            None => n.target.clone(),
        };
        out.insert(
            index.path_of(id),
            Entry {
                kind: n.kind,
                mode: n.mode,
                uid: n.uid,
                gid: n.gid,
                size: n.size,
                mtime: n.mtime,
                target,
                rdev: n.rdev,
                xattrs: n.xattrs.clone(),
                content,
            },
        );
    }
    out
}

/// Asserts two trees are equal, naming the first entry that differs.
#[track_caller]
pub fn assert_same(expected: &BTreeMap<String, Entry>, actual: &BTreeMap<String, Entry>) {
    for (path, e) in expected {
        assert_eq!(actual.get(path), Some(e), "entry {path:?} differs");
    }
    for path in actual.keys() {
        assert!(expected.contains_key(path), "unexpected entry {path:?}");
    }
}
