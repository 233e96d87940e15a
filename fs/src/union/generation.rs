//! Counting changes to the merged tree, so that what is kept between requests (listings,
//! attributes of lower entries) is used only while the tree is as it was when it was made.
//! The count is odd while a change is under way, and nothing may be kept or used then.

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
}
