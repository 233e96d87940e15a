//! Where a path of the merged tree comes from: the upper dir, or which lower layer, and —
//! for directories — which lower directories merge beneath it. The rules are overlayfs's,
//! with OCI whiteouts in the lowers (`.wh.NAME`, `.wh..wh..opq`) and kernel-style ones in
//! the upper (0/0 character devices, `trusted.overlay.opaque=y`).

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::Arc;

use super::upper;
use super::view::LayerView;
use super::Union;
use crate::index::{Kind, NodeId, ROOT};

pub(crate) const WHITEOUT_PREFIX: &str = ".wh.";
pub(crate) const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// A lower directory taking part in a merge: (layer, node), layers counted from the top.
pub(crate) type LowerDir = (usize, NodeId);

#[derive(Clone, Debug)]
pub(crate) enum Found {
    Upper(Metadata),
    Lower { layer: usize, node: NodeId },
}

#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub found: Found,
    /// For directories: the lower directories merged beneath, top first.
    pub lowers: Vec<LowerDir>,
}

impl Resolved {
    pub fn upper(meta: Metadata) -> Resolved {
        Resolved { found: Found::Upper(meta), lowers: Vec::new() }
    }

    pub fn kind(&self, union: &Union) -> Kind {
        match &self.found {
            Found::Upper(m) => kind_of(m),
            Found::Lower { layer, node } => union.layers[*layer].index().node(*node).kind,
        }
    }

    pub fn in_upper(&self) -> bool {
        matches!(self.found, Found::Upper(_))
    }
}

pub(crate) fn kind_of(m: &Metadata) -> Kind {
    let t = m.file_type();
    if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Symlink
    } else if t.is_char_device() {
        Kind::CharDevice
    } else if t.is_block_device() {
        Kind::BlockDevice
    } else if t.is_fifo() {
        Kind::Fifo
    } else if t.is_socket() {
        Kind::Socket
    } else {
        Kind::File
    }
}

pub(crate) fn is_whiteout(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// The lower layers alone, top first: how they merge beneath the upper.
pub(crate) struct Lowers<'a>(pub &'a [Arc<dyn LayerView>]);

impl Lowers<'_> {
    fn is_opaque(&self, layer: usize, dir: NodeId) -> bool {
        self.0[layer].index().lookup(dir, OPAQUE_MARKER).is_some()
    }

    /// The lower directories of the root, top first.
    pub fn root(&self) -> Vec<LowerDir> {
        let mut lowers = Vec::new();
        for layer in 0..self.0.len() {
            lowers.push((layer, ROOT));
            if self.is_opaque(layer, ROOT) {
                break;
            }
        }
        lowers
    }

    /// The lower directories named `name` inside `scope`, top first, down to the first
    /// whiteout, non-directory or opaque directory.
    fn dirs(&self, scope: &[LowerDir], name: &str) -> Vec<LowerDir> {
        let mut out = Vec::new();
        for &(layer, dir) in scope {
            let index = self.0[layer].index();
            match index.lookup(dir, name) {
                Some(node) if index.node(node).kind == Kind::Dir => {
                    out.push((layer, node));
                    if self.is_opaque(layer, node) {
                        break;
                    }
                }
                Some(_) => break,
                None if index.lookup(dir, &format!("{WHITEOUT_PREFIX}{name}")).is_some() => break,
                None => {}
            }
        }
        out
    }

    /// The entry `name` among the lower directories `scope`.
    pub fn child(&self, scope: &[LowerDir], name: &str) -> Option<Resolved> {
        for (i, &(layer, dir)) in scope.iter().enumerate() {
            let index = self.0[layer].index();
            if let Some(node) = index.lookup(dir, name) {
                let lowers = if index.node(node).kind == Kind::Dir {
                    let mut v = vec![(layer, node)];
                    if !self.is_opaque(layer, node) {
                        v.extend(self.dirs(&scope[i + 1..], name));
                    }
                    v
                } else {
                    Vec::new()
                };
                return Some(Resolved { found: Found::Lower { layer, node }, lowers });
            }
            if index.lookup(dir, &format!("{WHITEOUT_PREFIX}{name}")).is_some() {
                return None;
            }
        }
        None
    }

    /// `path` as the lower directories `scope` (the root's, or fewer) resolve it; a symlink
    /// at its end is not followed.
    pub fn resolve(&self, mut scope: Vec<LowerDir>, path: &str) -> Option<Resolved> {
        let mut found = None;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            let r = self.child(&scope, name)?;
            scope = r.lowers.clone();
            found = Some(r);
        }
        found
    }

    /// The lower file at `path`, symlinks followed as the kernel follows them (at most
    /// `MAX_LINKS`, `..` taken within the tree); `None` when it is missing or not a file.
    pub fn file(&self, path: &str) -> Option<(usize, NodeId)> {
        const MAX_LINKS: usize = 16;
        let mut todo: std::collections::VecDeque<String> = components(path).collect();
        // The scopes of the directories above `scope`, for `..`; above the root is the root.
        let mut parents: Vec<Vec<LowerDir>> = Vec::new();
        let mut scope = self.root();
        let mut links = 0;
        while let Some(name) = todo.pop_front() {
            match name.as_str() {
                "." => continue,
                ".." => {
                    scope = parents.pop().unwrap_or_else(|| self.root());
                    continue;
                }
                _ => {}
            }
            let found = self.child(&scope, &name)?;
            let Found::Lower { layer, node } = found.found else { return None };
            let entry = self.0[layer].index().node(node);
            match entry.kind {
                Kind::Dir => parents.push(std::mem::replace(&mut scope, found.lowers)),
                Kind::Symlink => {
                    links += 1;
                    let target = entry.target.as_deref().filter(|_| links <= MAX_LINKS)?;
                    // A relative target goes on from the link's own directory: `scope` still.
                    if target.starts_with('/') {
                        parents.clear();
                        scope = self.root();
                    }
                    for c in components(target).collect::<Vec<_>>().into_iter().rev() {
                        todo.push_front(c);
                    }
                }
                Kind::File if todo.is_empty() => return Some((layer, node)),
                _ => return None,
            }
        }
        None
    }
}

fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/').filter(|c| !c.is_empty()).map(str::to_owned)
}

impl Union {
    fn lowers(&self) -> Lowers<'_> {
        Lowers(&self.layers)
    }

    /// The root of the merged tree.
    pub(crate) fn resolve_root(&self) -> Resolved {
        let lowers = self.lowers().root();
        let meta = upper::lstat(&self.upper, "").expect("the upper dir exists");
        let lowers = if upper::is_opaque(&self.upper, "") { Vec::new() } else { lowers };
        Resolved { found: Found::Upper(meta), lowers }
    }

    /// The entry `name` in the resolved directory `parent` (at `parent_path`).
    pub(crate) fn resolve_child(&self, parent: &Resolved, parent_path: &str, name: &str) -> Option<Resolved> {
        if name.starts_with(WHITEOUT_PREFIX) {
            return None;
        }
        if parent.in_upper() {
            let path = join(parent_path, name);
            if let Some(meta) = upper::lstat(&self.upper, &path) {
                if is_whiteout(&meta) {
                    return None;
                }
                let lowers = if meta.is_dir() && !upper::is_opaque(&self.upper, &path) {
                    self.lowers().dirs(&parent.lowers, name)
                } else {
                    Vec::new()
                };
                return Some(Resolved { found: Found::Upper(meta), lowers });
            }
        }
        self.resolve_lower_child(&parent.lowers, name)
    }

    /// `path` as the lower layers alone resolve it (the upper ignored).
    pub(crate) fn resolve_lower_only(&self, path: &str) -> Option<Resolved> {
        self.lowers().resolve(self.resolve_root().lowers, path)
    }

    /// The entry `name` among the lower directories `scope` alone (ignoring the upper).
    pub(crate) fn resolve_lower_child(&self, scope: &[LowerDir], name: &str) -> Option<Resolved> {
        self.lowers().child(scope, name)
    }

    /// Resolves a whole path from the root: its parent directory from the cache of
    /// directories, the last component afresh (so its metadata is current).
    pub(crate) fn resolve(&self, path: &str) -> Option<Resolved> {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return Some(self.resolve_root());
        }
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = self.resolve_dir(parent)?;
        self.resolve_child(&dir, parent, name)
    }

    /// The directory at `path` (`None` if it is not one), from the cache when it is there.
    /// Its metadata may be stale: only where it lives and its lower directories are used.
    fn resolve_dir(&self, path: &str) -> Option<Resolved> {
        let made = self.structure.stable();
        if let Some(r) = self.dirs.get(path, made) {
            return Some(r);
        }
        let r = self.resolve(path).filter(|r| r.kind(self) == Kind::Dir)?;
        self.dirs.keep(path.to_string(), r.clone(), made, &self.structure);
        Some(r)
    }

    /// Makes the kept resolutions of directories stale: called by every change that moves,
    /// removes, copies up or makes opaque a directory.
    pub(crate) fn forget_dirs(&self) {
        self.structure.advance();
    }

    /// The merged entries of a resolved directory: name → kind.
    pub(crate) fn list(&self, dir: &Resolved, path: &str) -> std::io::Result<BTreeMap<String, Kind>> {
        let mut seen: BTreeMap<String, Kind> = BTreeMap::new();
        let mut hidden: std::collections::HashSet<String> = Default::default();
        if dir.in_upper() {
            for (name, meta) in upper::entries(&self.upper, path)? {
                if is_whiteout(&meta) {
                    hidden.insert(name);
                } else {
                    seen.insert(name, kind_of(&meta));
                }
            }
        }
        for &(layer, node) in &dir.lowers {
            let index = self.layers[layer].index();
            let mut whiteouts = Vec::new();
            for &child in &index.node(node).children {
                let c = index.node(child);
                if let Some(target) = c.name.strip_prefix(WHITEOUT_PREFIX) {
                    if c.name != OPAQUE_MARKER {
                        whiteouts.push(target.to_string());
                    }
                    continue;
                }
                if !hidden.contains(&c.name) && !seen.contains_key(&c.name) {
                    seen.insert(c.name.clone(), c.kind);
                }
            }
            hidden.extend(whiteouts);
        }
        Ok(seen)
    }
}

pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}
