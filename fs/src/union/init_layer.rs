//! The mount points a container runtime adds to every container (`/proc`, `/sys`, `/dev`,
//! `/etc/hosts`…), held in a layer of their own above the image's, as docker's "init layer"
//! holds them. Mounting over them then writes nothing into the container's upper directory,
//! so they show in no `diff` and go into no `commit`.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use super::resolve::{join, Found};
use super::{LayerView, Union};
use crate::index::{EntryMeta, IndexBuilder, Kind, LayerIndex, Node, NodeId};

/// One entry of an init layer: a mount point the image lacks, or a directory of the image on
/// the way to one, copied so that the layer does not change how the image shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitEntry {
    /// Relative to the root, `/`-separated.
    pub path: String,
    pub meta: EntryMeta,
    /// For a copied directory: the link count the image shows, plus the directories the
    /// layer adds in it.
    pub nlink: Option<u32>,
}

/// What the image shows at a path: its entry's metadata and link count.
pub type Shown = (EntryMeta, u32);

/// The entries an init layer needs for `points` (absolute paths, each a directory or a file
/// to mount on), given what the image shows at a path (`None`: nothing). Parents come before
/// their children.
///
/// A point the image has as a symlink is shadowed, as docker's init layer does: the mount
/// then lands on the point itself, not wherever the link leads. A point the image already
/// has (of any other kind), or one below a parent that is not a directory, needs nothing.
pub fn init_entries(points: &[(&str, Kind)], shown: impl Fn(&str) -> Option<Shown>) -> Vec<InitEntry> {
    let mut entries: BTreeMap<String, InitEntry> = BTreeMap::new();
    'points: for &(point, kind) in points {
        let parts: Vec<&str> = point.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
        if parts.is_empty() || parts.contains(&"..") {
            continue;
        }
        let mut parents: Vec<InitEntry> = Vec::new();
        let mut path = String::new();
        for (i, name) in parts.iter().enumerate() {
            path = join(&path, name);
            let leaf = i + 1 == parts.len();
            match shown(&path) {
                Some((meta, nlink)) if !leaf && meta.kind == Kind::Dir => {
                    parents.push(InitEntry { path: path.clone(), meta, nlink: Some(nlink) });
                }
                Some((meta, _)) if !(leaf && meta.kind == Kind::Symlink) => continue 'points,
                _ => {
                    // Missing (or a symlink to shadow): this and everything below it is new.
                    for parent in parents.drain(..) {
                        entries.entry(parent.path.clone()).or_insert(parent);
                    }
                    let mut new = path.clone();
                    for (j, name) in parts.iter().enumerate().skip(i) {
                        if j > i {
                            new = join(&new, name);
                        }
                        let kind = if j + 1 == parts.len() { kind } else { Kind::Dir };
                        add_new(&mut entries, &new, kind);
                    }
                    continue 'points;
                }
            }
        }
    }
    entries.into_values().collect()
}

/// Adds a new, empty entry owned by root; a new directory counts in its copied parent's links.
fn add_new(entries: &mut BTreeMap<String, InitEntry>, path: &str, kind: Kind) {
    if entries.contains_key(path) {
        return;
    }
    let mode = if kind == Kind::Dir { 0o755 } else { 0o644 };
    let meta = EntryMeta { kind, mode, ..EntryMeta::implicit_dir() };
    entries.insert(path.to_string(), InitEntry { path: path.to_string(), meta, nlink: None });
    if kind == Kind::Dir {
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        if let Some(nlink) = entries.get_mut(parent).and_then(|p| p.nlink.as_mut()) {
            *nlink += 1;
        }
    }
}

/// An init layer: empty files and directories, with nothing to read.
struct InitLayer {
    index: LayerIndex,
}

impl LayerView for InitLayer {
    fn index(&self) -> &LayerIndex {
        &self.index
    }

    fn read(&self, _node: NodeId, _offset: u64, _buf: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}

fn meta_of(n: &Node) -> EntryMeta {
    EntryMeta {
        kind: n.kind,
        mode: n.mode,
        uid: n.uid,
        gid: n.gid,
        size: n.size,
        mtime: n.mtime,
        target: n.target.clone(),
        rdev: n.rdev,
        xattrs: n.xattrs.clone(),
    }
}

impl Union {
    /// Puts an init layer holding the mount points `points` (see [`init_entries`]) above the
    /// lower layers. Called before the union is used.
    pub fn with_mount_points(mut self, points: &[(&str, Kind)]) -> Union {
        let entries = init_entries(points, |path| {
            let r = self.resolve_lower_only(path)?;
            let Found::Lower { layer, node } = r.found else { return None };
            let n = self.layers[layer].index().node(node);
            Some((meta_of(n), n.nlink))
        });
        if entries.is_empty() {
            return self;
        }
        let mut builder = IndexBuilder::new();
        let mut links = Vec::new();
        for e in &entries {
            let id = builder.add(&e.path, e.meta.clone()).expect("init entries have plain paths");
            links.extend(e.nlink.map(|n| (id, n)));
        }
        let mut index = builder.finish();
        for (id, nlink) in links {
            index.set_nlink(id, nlink);
        }
        self.layers.insert(0, Arc::new(InitLayer { index }));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(mode: u32, mtime: i64) -> Shown {
        (EntryMeta { kind: Kind::Dir, mode, mtime, ..EntryMeta::implicit_dir() }, 7)
    }

    const POINTS: [(&str, Kind); 4] = [
        ("/proc", Kind::Dir),
        ("/etc/hosts", Kind::File),
        ("/etc/resolv.conf", Kind::File),
        ("/dev", Kind::Dir),
    ];

    #[test]
    fn only_what_the_image_lacks_goes_in_with_its_parents_copied() {
        let shown = |path: &str| match path {
            "etc" => Some(dir(0o750, 42)),
            "dev" => Some(dir(0o755, 1)),
            "etc/resolv.conf" => {
                Some((EntryMeta { kind: Kind::File, size: 9, ..EntryMeta::implicit_dir() }, 1))
            }
            _ => None,
        };
        let entries = init_entries(&POINTS, shown);
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["etc", "etc/hosts", "proc"]);
        assert_eq!(entries[0].meta, dir(0o750, 42).0, "the image's /etc, unchanged");
        assert_eq!(entries[0].nlink, Some(7));
        assert_eq!(
            (entries[1].meta.kind, entries[1].meta.mode, entries[1].meta.size),
            (Kind::File, 0o644, 0)
        );
        assert_eq!((entries[2].meta.kind, entries[2].meta.mode), (Kind::Dir, 0o755));
    }

    #[test]
    fn an_image_without_etc_gets_one_and_a_symlinked_point_is_shadowed() {
        let link =
            EntryMeta { kind: Kind::Symlink, target: Some("/run/x".into()), ..EntryMeta::implicit_dir() };
        let shown = |path: &str| match path {
            "proc" | "dev" => Some(dir(0o555, 0)),
            "run" => Some((link.clone(), 1)),
            _ => None,
        };
        let points = [("/etc/hosts", Kind::File), ("/etc/resolv.conf", Kind::File), ("/run", Kind::Dir)];
        let entries = init_entries(&points, shown);
        let got: Vec<(&str, Kind)> = entries.iter().map(|e| (e.path.as_str(), e.meta.kind)).collect();
        assert_eq!(
            got,
            [
                ("etc", Kind::Dir),
                ("etc/hosts", Kind::File),
                ("etc/resolv.conf", Kind::File),
                ("run", Kind::Dir)
            ]
        );
        assert_eq!(entries[0].nlink, None, "a new directory's links are counted by the index");
    }

    #[test]
    fn a_point_below_a_file_or_a_symlinked_parent_needs_nothing() {
        let file = (EntryMeta { kind: Kind::File, ..EntryMeta::implicit_dir() }, 1);
        let link = (EntryMeta { kind: Kind::Symlink, ..EntryMeta::implicit_dir() }, 1);
        let shown = |path: &str| match path {
            "etc" => Some(file.clone()),
            "usr" => Some(link.clone()),
            "sys" => Some(file.clone()),
            _ => None,
        };
        let points = [("/etc/hosts", Kind::File), ("/usr/x", Kind::File), ("/sys", Kind::Dir)];
        assert_eq!(init_entries(&points, shown), []);
    }

    #[test]
    fn a_new_directory_counts_in_its_copied_parents_links() {
        let shown = |path: &str| (path == "a").then(|| dir(0o755, 0));
        let entries = init_entries(&[("/a/b/c", Kind::File)], shown);
        let got: Vec<(&str, Option<u32>)> = entries.iter().map(|e| (e.path.as_str(), e.nlink)).collect();
        assert_eq!(got, [("a", Some(8)), ("a/b", None), ("a/b/c", None)]);
    }
}
