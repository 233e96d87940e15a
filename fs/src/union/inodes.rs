//! Inode numbers of the merged tree: stable for the life of the mount, one per path, and
//! shared by the names of a hardlinked file.

use std::collections::HashMap;

use crate::index::NodeId;

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

/// What makes two paths the same file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Identity {
    /// A hardlinked lower file: (layer, the first name's node).
    Lower(usize, NodeId),
    /// A hardlinked upper file: its inode in the upper filesystem.
    Upper(u64),
}

pub(crate) struct Inodes {
    paths: HashMap<Ino, String>,
    by_path: HashMap<String, Ino>,
    by_identity: HashMap<Identity, Ino>,
    next: Ino,
}

impl Inodes {
    pub fn new() -> Inodes {
        let mut i =
            Inodes { paths: HashMap::new(), by_path: HashMap::new(), by_identity: HashMap::new(), next: 2 };
        i.paths.insert(ROOT_INO, String::new());
        i.by_path.insert(String::new(), ROOT_INO);
        i
    }

    pub fn path(&self, ino: Ino) -> Option<String> {
        self.paths.get(&ino).cloned()
    }

    /// The inode of `path`, allocated on first sight.
    pub fn ino_for(&mut self, path: &str, identity: Option<Identity>) -> Ino {
        if let Some(&ino) = self.by_path.get(path) {
            return ino;
        }
        if let Some(&ino) = identity.and_then(|id| self.by_identity.get(&id)) {
            self.by_path.insert(path.to_string(), ino);
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.paths.insert(ino, path.to_string());
        self.by_path.insert(path.to_string(), ino);
        if let Some(id) = identity {
            self.by_identity.insert(id, ino);
        }
        ino
    }

    /// Gives `path` an inode of its own (a hardlink broken by copy-up).
    pub fn detach(&mut self, path: &str) -> Ino {
        self.by_path.remove(path);
        self.ino_for(path, None)
    }

    /// Links another name to `ino` (a new hardlink).
    pub fn alias(&mut self, path: &str, ino: Ino, identity: Identity) {
        self.by_path.insert(path.to_string(), ino);
        self.by_identity.insert(identity, ino);
    }

    /// `path` and everything below it are gone.
    pub fn remove(&mut self, path: &str) {
        let prefix = format!("{path}/");
        self.by_path.retain(|p, _| p != path && !p.starts_with(&prefix));
    }

    /// `old` (and everything below it) is now called `new`.
    pub fn rename(&mut self, old: &str, new: &str) {
        self.remove(new);
        let prefix = format!("{old}/");
        let moved: Vec<(String, Ino)> = self
            .by_path
            .iter()
            .filter(|(p, _)| *p == old || p.starts_with(&prefix))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, ino) in moved {
            self.by_path.remove(&p);
            let renamed = format!("{new}{}", &p[old.len()..]);
            if self.paths.get(&ino) == Some(&p) {
                self.paths.insert(ino, renamed.clone());
            }
            self.by_path.insert(renamed, ino);
        }
    }

    /// After an exchange: `a` and `b` swap their subtrees.
    pub fn exchange(&mut self, a: &str, b: &str) {
        let tmp = format!("{a}\0exchange");
        self.rename(a, &tmp);
        self.rename(b, a);
        self.rename(&tmp, b);
    }

    /// Makes sure the path recorded for `ino` still names it (after its name was removed,
    /// another of its names takes over).
    pub fn repoint(&mut self, ino: Ino) {
        let current = self.paths.get(&ino).cloned();
        if current.as_ref().is_some_and(|p| self.by_path.get(p) == Some(&ino)) {
            return;
        }
        if let Some(other) = self.by_path.iter().find(|(_, i)| **i == ino).map(|(p, _)| p.clone()) {
            self.paths.insert(ino, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_are_stable_and_follow_renames() {
        let mut i = Inodes::new();
        let a = i.ino_for("a", None);
        let ab = i.ino_for("a/b", None);
        assert_eq!(i.ino_for("a", None), a);
        i.rename("a", "z");
        assert_eq!(i.path(ab).as_deref(), Some("z/b"));
        assert_eq!(i.ino_for("z/b", None), ab);
        let h1 = i.ino_for("h1", Some(Identity::Lower(0, 5)));
        assert_eq!(i.ino_for("h2", Some(Identity::Lower(0, 5))), h1);
        i.remove("h1");
        i.repoint(h1);
        assert_eq!(i.path(h1).as_deref(), Some("h2"));
        assert_ne!(i.detach("h2"), h1);
    }
}
