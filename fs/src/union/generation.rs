//! Counting changes to the merged tree, so that what is kept between requests (listings,
//! attributes of lower entries, where directories resolve to) is used only while the tree is
//! as it was when it was made. The count is odd while a change is under way, and nothing may
//! be kept or used then.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
pub(crate) struct Generation(AtomicU64);

impl Generation {
    /// The current generation, or `None` while a change is under way.
    pub fn stable(&self) -> Option<u64> {
        let g = self.0.load(Ordering::Acquire);
        (g % 2 == 0).then_some(g)
    }

    /// Holds `lock` (the union's lock on changes) for one change to the tree: what was kept
    /// before it is stale from its start, whether it succeeds or not.
    pub fn change<'a>(&'a self, lock: &'a Mutex<()>) -> Change<'a> {
        let guard = lock.lock().unwrap();
        self.0.fetch_add(1, Ordering::AcqRel);
        Change { _lock: guard, generation: self }
    }

    /// Marks a change made under a lock held elsewhere: what was kept is stale from now.
    pub fn advance(&self) {
        self.0.fetch_add(2, Ordering::AcqRel);
    }
}

pub(crate) struct Change<'a> {
    _lock: MutexGuard<'a, ()>,
    generation: &'a Generation,
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        self.generation.0.fetch_add(1, Ordering::Release);
    }
}

/// Values kept per key while the generation is the one they were made in; at most `cap` of
/// them (past it, all are dropped).
pub(crate) struct Kept<K, V> {
    map: Mutex<HashMap<K, (u64, V)>>,
    cap: usize,
}

impl<K: Hash + Eq, V: Clone> Kept<K, V> {
    pub fn new(cap: usize) -> Kept<K, V> {
        Kept { map: Mutex::default(), cap }
    }

    /// The value kept for `key` in generation `now` (`Generation::stable`).
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q, now: Option<u64>) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let map = self.map.lock().unwrap();
        map.get(key).filter(|(g, _)| Some(*g) == now).map(|(_, v)| v.clone())
    }

    /// Keeps `value`, made from what the tree was in generation `made` (read before making
    /// it), unless the tree has changed since.
    pub fn keep(&self, key: K, value: V, made: Option<u64>, generation: &Generation) {
        let Some(g) = made.filter(|&g| generation.stable() == Some(g)) else { return };
        let mut map = self.map.lock().unwrap();
        if map.len() >= self.cap {
            map.clear();
        }
        map.insert(key, (g, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generation_is_unstable_during_a_change_and_new_after_it() {
        let g = Generation::default();
        let lock = Mutex::new(());
        let before = g.stable().unwrap();
        let change = g.change(&lock);
        assert_eq!(g.stable(), None);
        drop(change);
        assert!(g.stable().is_some_and(|after| after != before));
    }

    #[test]
    fn kept_values_serve_their_generation_only() {
        let (g, lock) = (Generation::default(), Mutex::new(()));
        let kept = Kept::new(2);
        let made = g.stable();
        kept.keep(1, "one", made, &g);
        assert_eq!(kept.get(&1, g.stable()), Some("one"));
        // Made before a change, kept after it: not kept.
        let stale = g.stable();
        drop(g.change(&lock));
        kept.keep(2, "two", stale, &g);
        assert_eq!(kept.get(&2, g.stable()), None);
        assert_eq!(kept.get(&1, g.stable()), None);
        g.advance();
        assert!(g.stable().is_some());
    }
}
