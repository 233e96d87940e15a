//! User and group id mappings of a user namespace: which ids inside a container are which
//! ids on the host. The union serves an image's owners shifted through such a map, so that a
//! container whose root is an unprivileged host uid owns its image's files; ids it writes are
//! mapped back, keeping the upper layer in the image's own terms.

use serde::{Deserialize, Serialize};

/// The id the kernel shows for one that has no mapping.
pub const OVERFLOW_ID: u32 = 65534;

/// `len` ids from `inside` in the container are `len` ids from `outside` on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub len: u32,
}

impl IdRange {
    /// Parses `INSIDE:OUTSIDE:LEN` (podman's `--uidmap` syntax).
    pub fn parse(text: &str) -> Result<IdRange, String> {
        let fields: Vec<&str> = text.split(':').collect();
        let numbers: Option<Vec<u32>> = fields.iter().map(|f| f.parse().ok()).collect();
        match numbers.as_deref() {
            Some(&[inside, outside, len])
                if len > 0 && inside.checked_add(len).is_some() && outside.checked_add(len).is_some() =>
            {
                Ok(IdRange { inside, outside, len })
            }
            _ => Err(format!("invalid id mapping {text:?} (expected CONTAINER:HOST:SIZE, SIZE > 0)")),
        }
    }

    /// The line of `/proc/PID/uid_map` this range is.
    pub fn proc_line(&self) -> String {
        format!("{} {} {}\n", self.inside, self.outside, self.len)
    }
}

/// The uid and gid ranges of a user namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

impl IdMap {
    /// Container ids `0..len` as host ids `base..base + len`, for users and groups alike.
    pub fn shifted(base: u32, len: u32) -> IdMap {
        let range = IdRange { inside: 0, outside: base, len };
        IdMap { uids: vec![range], gids: vec![range] }
    }

    /// Whether no id changes (no user namespace).
    pub fn is_identity(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty()
    }

    pub fn uid_to_host(&self, uid: u32) -> u32 {
        outward(&self.uids, uid)
    }

    pub fn gid_to_host(&self, gid: u32) -> u32 {
        outward(&self.gids, gid)
    }

    pub fn uid_from_host(&self, uid: u32) -> u32 {
        inward(&self.uids, uid)
    }

    pub fn gid_from_host(&self, gid: u32) -> u32 {
        inward(&self.gids, gid)
    }
}

fn outward(ranges: &[IdRange], id: u32) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    ranges
        .iter()
        .find(|r| id >= r.inside && id - r.inside < r.len)
        .map_or(OVERFLOW_ID, |r| r.outside + (id - r.inside))
}

fn inward(ranges: &[IdRange], id: u32) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    ranges
        .iter()
        .find(|r| id >= r.outside && id - r.outside < r.len)
        .map_or(OVERFLOW_ID, |r| r.inside + (id - r.outside))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_both_ways_and_unmapped_ones_overflow() {
        let map = IdMap::shifted(100_000, 65_536);
        assert_eq!(map.uid_to_host(0), 100_000);
        assert_eq!(map.gid_to_host(1000), 101_000);
        assert_eq!(map.uid_to_host(70_000), OVERFLOW_ID);
        assert_eq!(map.uid_from_host(100_005), 5);
        assert_eq!(map.gid_from_host(0), OVERFLOW_ID);
        let none = IdMap::default();
        assert!(none.is_identity());
        assert_eq!(none.uid_to_host(7), 7);
        assert_eq!(none.uid_from_host(7), 7);
    }

    #[test]
    fn mappings_parse_as_podman_writes_them() {
        assert_eq!(
            IdRange::parse("0:100000:65536"),
            Ok(IdRange { inside: 0, outside: 100_000, len: 65_536 })
        );
        for bad in ["0:1", "a:b:c", "0:0:0", "1:4294967295:2", "0:1:2:3"] {
            assert!(IdRange::parse(bad).is_err(), "{bad}");
        }
    }
}
