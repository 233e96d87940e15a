//! Reading merged directories without open handles. An entry's offset (its cookie) comes from
//! a hash of its name, so it stays valid while other entries come and go, and a read resumes
//! at any cookie with no state kept between calls: the kernel then makes no opendir or
//! releasedir round trips, and keeps the listings it read. Listings are kept here too, per
//! directory, until the tree next changes (see `generation`), so a large directory read in
//! many requests is listed once.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::generation::{Generation, Kept};
use super::{FsResult, Ino};

/// Offsets 1 and 2 follow `.` and `..`; entries' cookies are above them.
pub(crate) const FIRST_COOKIE: u64 = 3;
/// Directories whose listings are kept at most; past it they are all dropped.
const KEPT: usize = 4096;

/// The cookie of `name`: 62 bits of hash, so two names of a directory share one with odds
/// the size of the directory squared in 2^62.
pub(crate) fn cookie(name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() >> 2) + FIRST_COOKIE
}

/// A directory's entry names, in cookie order.
pub(crate) type Names = Arc<[(u64, String)]>;

pub(crate) struct Listings {
    kept: Kept<Ino, Names>,
}

impl Default for Listings {
    fn default() -> Listings {
        Listings { kept: Kept::new(KEPT) }
    }
}

impl Listings {
    /// The names of directory `ino`, made by `list` unless a listing is kept from the tree's
    /// current generation.
    pub fn names(
        &self,
        ino: Ino,
        generation: &Generation,
        list: impl FnOnce() -> FsResult<Vec<String>>,
    ) -> FsResult<Names> {
        let made = generation.stable();
        if let Some(names) = self.kept.get(&ino, made) {
            return Ok(names);
        }
        let mut names: Vec<(u64, String)> = list()?.into_iter().map(|n| (cookie(&n), n)).collect();
        names.sort_unstable();
        let names: Names = names.into();
        self.kept.keep(ino, names.clone(), made, generation);
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_are_in_cookie_order_and_kept_until_the_tree_changes() {
        let listings = Listings::default();
        let (generation, changes) = (Generation::default(), std::sync::Mutex::new(()));
        let names = listings.names(1, &generation, || Ok(vec!["b".into(), "a".into(), "c".into()])).unwrap();
        assert!(names.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(names.iter().all(|(c, n)| *c == cookie(n) && *c >= FIRST_COOKIE));
        let again = listings.names(1, &generation, || panic!("listed again while nothing changed")).unwrap();
        assert!(Arc::ptr_eq(&names, &again));
        drop(generation.change(&changes));
        let after = listings.names(1, &generation, || Ok(vec!["a".into()])).unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(cookie("a"), names.iter().find(|(_, n)| n == "a").unwrap().0, "cookies do not move");
    }
}
