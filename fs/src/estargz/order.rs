//! The order in which the converter writes a layer's entries when some files are prioritized:
//! those files first (each after its parent directories and, for a hardlink, its target), then
//! everything else in input order.

use std::collections::HashMap;

use super::tar_stream::TarEntry;
use super::toc::{normalize_name, EntryKind, NameError};

#[derive(Debug, thiserror::Error)]
#[error("prioritized path {path:?}: {reason}")]
pub struct OrderError {
    pub path: String,
    pub reason: NameError,
}

/// Indexes into the input's entries.
#[derive(Debug, PartialEq, Eq)]
pub struct Order {
    /// The prioritized entries and what they need, to be written before the landmark.
    pub first: Vec<usize>,
    /// Everything else, in input order.
    pub rest: Vec<usize>,
    /// Prioritized paths the layer does not have.
    pub missing: Vec<String>,
}

pub fn prioritized_order(entries: &[TarEntry], prioritized: &[String]) -> Result<Order, OrderError> {
    // In a tar stream a later entry of the same name replaces an earlier one.
    let last: HashMap<&str, usize> = entries.iter().enumerate().map(|(i, e)| (e.name.as_str(), i)).collect();
    let mut planner =
        Planner { entries, last: &last, scheduled: vec![false; entries.len()], first: Vec::new() };
    let mut missing = Vec::new();
    for path in prioritized {
        let name = normalize_name(path).map_err(|reason| OrderError { path: path.clone(), reason })?;
        match last.get(name.as_str()) {
            Some(&i) => planner.schedule(i),
            None => missing.push(path.clone()),
        }
    }
    let Planner { scheduled, first, .. } = planner;
    // An entry replaced by a later one that moved ahead would otherwise undo it.
    let rest =
        (0..entries.len()).filter(|&i| !scheduled[i] && !scheduled[last[entries[i].name.as_str()]]).collect();
    Ok(Order { first, rest, missing })
}

struct Planner<'a> {
    entries: &'a [TarEntry],
    last: &'a HashMap<&'a str, usize>,
    scheduled: Vec<bool>,
    first: Vec<usize>,
}

impl Planner<'_> {
    fn schedule(&mut self, i: usize) {
        if self.scheduled[i] {
            return;
        }
        self.scheduled[i] = true;
        let entries = self.entries;
        let entry = &entries[i];
        let parents = entry.name.match_indices('/').map(|(at, _)| &entry.name[..at]);
        for dir in std::iter::once("").chain(parents) {
            if let Some(&j) = self.last.get(dir) {
                self.schedule(j);
            }
        }
        if entry.kind == EntryKind::Hardlink {
            if let Some(&j) = self.last.get(entry.link_name.as_str()) {
                self.schedule(j);
            }
        }
        self.first.push(i);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn entry(name: &str, kind: EntryKind, link_name: &str) -> TarEntry {
        TarEntry {
            header_offset: 0,
            raw_header: Vec::new(),
            name: name.to_string(),
            kind,
            size: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            user_name: String::new(),
            group_name: String::new(),
            mtime: 0,
            link_name: link_name.to_string(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: BTreeMap::new(),
        }
    }

    #[test]
    fn prioritized_files_come_after_their_directories_and_link_targets() {
        use EntryKind::*;
        let entries = [
            entry("", Dir, ""),          // 0
            entry("usr", Dir, ""),       // 1
            entry("usr/bin", Dir, ""),   // 2
            entry("usr/bin/a", Reg, ""), // 3
            entry("etc", Dir, ""),       // 4
            entry("etc/conf", Reg, ""),  // 5 (replaced by 8)
            entry("usr/bin/b", Hardlink, "usr/bin/a"),
            entry("other", Reg, ""), // 7
            entry("etc/conf", Reg, ""),
        ];
        let prioritized = ["/usr/bin/b", "./etc/conf", "nope", "usr/bin/a"].map(String::from);
        let order = prioritized_order(&entries, &prioritized).unwrap();
        assert_eq!(order.first, [0, 1, 2, 3, 6, 4, 8]);
        assert_eq!(order.rest, [7]);
        assert_eq!(order.missing, ["nope"]);

        let err = prioritized_order(&entries, &["../x".to_string()]).unwrap_err();
        assert!(err.to_string().contains("../x"), "{err}");
    }
}
