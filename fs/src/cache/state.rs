//! Which chunks the cache holds and which are being fetched: the in-memory index, recency
//! order, byte accounting, pins and counters. No I/O here; `store` owns the bytes on disk.
//!
//! Every method runs under the cache's index lock, so each one is short and never blocks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::CacheStats;
use crate::Digest;

/// Locks `mutex`, ignoring poisoning: no caller code ever runs under the cache's locks, so a
/// panic there cannot leave the state half-updated in a way a later caller could observe.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a fetch (or a verification) of one chunk ended, as seen by the threads that waited.
#[derive(Clone)]
pub(super) enum Outcome {
    /// The chunk is now in the index: look it up again.
    Stored,
    /// The chunk was served but not kept (no room beside pinned chunks): here are its bytes.
    Unstored(Arc<[u8]>),
    /// The fetch failed or was aborted: each waiter looks again and may become the fetcher.
    Abandoned,
}

/// One chunk being fetched, verified or replaced; other threads wanting it block here until
/// its single owner finishes.
#[derive(Default)]
pub(super) struct Flight {
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
}

impl Flight {
    pub(super) fn wait(&self) -> Outcome {
        let mut outcome = lock(&self.outcome);
        loop {
            if let Some(o) = outcome.as_ref() {
                return o.clone();
            }
            outcome = self.done.wait(outcome).unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub(super) fn finish(&self, outcome: Outcome) {
        *lock(&self.outcome) = Some(outcome);
        self.done.notify_all();
    }
}

/// A chunk whose bytes are on disk.
#[derive(Clone, Copy)]
struct Entry {
    /// Distinguishes this entry from a later one for the same digest, so a pin taken on a
    /// replaced entry is never released against its successor.
    id: u64,
    len: u64,
    pins: u32,
    /// Its bytes were hashed (or written) by this process.
    verified: bool,
    /// Position in `Index::recency`.
    tick: u64,
}

/// What a lookup found.
pub(super) enum Lookup {
    /// On disk and verified; a pin was taken for the caller.
    Pinned { id: u64, len: u64 },
    /// On disk, not yet verified by this process; the caller owns `flight` and must verify it.
    Verify { id: u64, len: u64, flight: Arc<Flight> },
    /// Another thread owns it for now; wait on the flight, then look again.
    Busy(Arc<Flight>),
    /// Not cached; the caller owns `flight` and must fetch it.
    Claimed(Arc<Flight>),
}

/// What `Index::victims` should free.
#[derive(Clone, Copy, Debug)]
pub(super) enum Want {
    /// Room for a new chunk of this many bytes, or nothing at all if that is impossible.
    RoomFor(u64),
    /// As much as needed (and possible) to bring usage back within the budget.
    Trim,
    /// Every unpinned chunk.
    All,
}

/// A chunk taken out of the index for eviction; its file is still to be deleted.
pub(super) struct Victim {
    pub(super) digest: Digest,
    entry: Entry,
}

impl Victim {
    pub(super) fn len(&self) -> u64 {
        self.entry.len
    }
}

#[derive(Default)]
struct Counters {
    hits: u64,
    misses: u64,
    fills: u64,
    bytes_filled: u64,
    evictions: u64,
    bytes_evicted: u64,
    corrupt: u64,
    unstored: u64,
}

/// The index of one cache directory.
pub(super) struct Index {
    ready: HashMap<Digest, Entry>,
    /// Ready chunks by last use, oldest first.
    recency: BTreeMap<u64, Digest>,
    flights: HashMap<Digest, Arc<Flight>>,
    next_tick: u64,
    next_id: u64,
    /// Bytes of all ready chunks.
    used: u64,
    budget: u64,
    counters: Counters,
}

impl Index {
    pub(super) fn new(budget: u64) -> Index {
        Index {
            ready: HashMap::new(),
            recency: BTreeMap::new(),
            flights: HashMap::new(),
            next_tick: 0,
            next_id: 0,
            used: 0,
            budget,
            counters: Counters::default(),
        }
    }

    /// Adds a chunk found on disk at open; call in order of last use, oldest first.
    pub(super) fn recover(&mut self, digest: Digest, len: u64) {
        self.add(digest, len, 0, false);
    }

    /// Looks `digest` up for a reader, taking a pin or ownership as [`Lookup`] describes.
    pub(super) fn lookup(&mut self, digest: &Digest) -> Lookup {
        if let Some(flight) = self.flights.get(digest) {
            return Lookup::Busy(flight.clone());
        }
        let tick = self.tick();
        match self.ready.get_mut(digest) {
            Some(entry) if entry.verified => {
                entry.pins += 1;
                let (id, len) = (entry.id, entry.len);
                self.touch(digest, tick);
                self.counters.hits += 1;
                Lookup::Pinned { id, len }
            }
            Some(entry) => {
                let (id, len) = (entry.id, entry.len);
                Lookup::Verify { id, len, flight: self.start_flight(digest) }
            }
            None => {
                self.counters.misses += 1;
                Lookup::Claimed(self.start_flight(digest))
            }
        }
    }

    /// Takes ownership of `digest` for a fetch if it is neither cached nor in flight.
    pub(super) fn claim(&mut self, digest: &Digest) -> Option<Arc<Flight>> {
        if self.flights.contains_key(digest) || self.ready.contains_key(digest) {
            return None;
        }
        self.counters.misses += 1;
        Some(self.start_flight(digest))
    }

    /// Ends the flight on `digest` without a result (the owner wakes its waiters).
    pub(super) fn end_flight(&mut self, digest: &Digest) {
        self.flights.remove(digest);
    }

    /// Records a successful verification of entry `id`: marks it verified, pins it for the
    /// verifier and ends the verification flight (the verifier wakes its waiters).
    pub(super) fn verified(&mut self, digest: &Digest, id: u64) {
        let tick = self.tick();
        if let Some(entry) = self.ready.get_mut(digest).filter(|e| e.id == id) {
            entry.verified = true;
            entry.pins += 1;
            self.touch(digest, tick);
            self.counters.hits += 1;
        }
        self.flights.remove(digest);
    }

    /// Releases a pin on entry `id`. Returns whether the chunk just became evictable while the
    /// cache is over budget (after `set_budget` lowered it), in which case the caller trims.
    pub(super) fn unpin(&mut self, digest: &Digest, id: u64) -> bool {
        if let Some(entry) = self.ready.get_mut(digest).filter(|e| e.id == id) {
            entry.pins = entry.pins.saturating_sub(1);
            return entry.pins == 0 && self.used > self.budget;
        }
        false
    }

    /// Releases a pin on entry `id` whose file failed a cheap check (missing, wrong length),
    /// so that the next lookup verifies it again, and removes it if that fails.
    pub(super) fn unpin_suspect(&mut self, digest: &Digest, id: u64) {
        if let Some(entry) = self.ready.get_mut(digest).filter(|e| e.id == id) {
            entry.pins = entry.pins.saturating_sub(1);
            entry.verified = false;
        }
    }

    /// Drops entry `id`, whose file failed verification and has been deleted; the caller
    /// still owns the flight and goes on to fetch the chunk.
    pub(super) fn forget_corrupt(&mut self, digest: &Digest, id: u64) {
        if self.ready.get(digest).is_some_and(|e| e.id == id) {
            self.remove(digest);
        }
        self.counters.corrupt += 1;
        self.counters.misses += 1;
    }

    /// Whether a chunk of `len` bytes could be stored, evicting unpinned chunks if needed.
    pub(super) fn fits(&self, len: u64) -> bool {
        // Under budget, as on nearly every commit, with no walk over the index.
        if self.used.saturating_add(len) <= self.budget {
            return true;
        }
        let evictable: u64 = self.evictable().map(|(_, e)| e.len).sum();
        (self.used - evictable).saturating_add(len) <= self.budget
    }

    /// Takes least-recently-used unpinned chunks out of the index to free what `want` asks.
    /// Returns `None`, taking nothing, when `Want::RoomFor` cannot be satisfied.
    pub(super) fn victims(&mut self, want: Want) -> Option<Vec<Victim>> {
        let target = match want {
            Want::RoomFor(len) => self.budget.checked_sub(len)?,
            Want::Trim => self.budget,
            Want::All => 0,
        };
        let mut chosen = Vec::new();
        let mut left = self.used;
        if left <= target {
            return Some(Vec::new());
        }
        for (digest, entry) in self.evictable() {
            if left <= target {
                break;
            }
            chosen.push(*digest);
            left -= entry.len;
        }
        if left > target && matches!(want, Want::RoomFor(_)) {
            return None;
        }
        let victims: Vec<Victim> = chosen
            .into_iter()
            .map(|digest| {
                let entry = self.remove(&digest);
                self.counters.evictions += 1;
                self.counters.bytes_evicted += entry.len;
                Victim { digest, entry }
            })
            .collect();
        Some(victims)
    }

    /// Puts back a victim whose file could not be deleted: it is still on disk.
    pub(super) fn restore(&mut self, victim: Victim) {
        let Victim { digest, entry } = victim;
        self.counters.evictions -= 1;
        self.counters.bytes_evicted -= entry.len;
        if !self.ready.contains_key(&digest) {
            self.add(digest, entry.len, 0, false);
        }
    }

    /// Records a newly committed chunk, pinned once for its committer, and ends its flight
    /// (the committer wakes its waiters). Returns the entry's id.
    pub(super) fn insert(&mut self, digest: Digest, len: u64) -> u64 {
        if self.ready.contains_key(&digest) {
            // A victim restored after a failed delete while this chunk was being fetched.
            self.remove(&digest);
        }
        let id = self.add(digest, len, 1, true);
        self.counters.fills += 1;
        self.counters.bytes_filled += len;
        self.flights.remove(&digest);
        id
    }

    /// Records a chunk served to its committer without being kept, and ends its flight.
    pub(super) fn unstored(&mut self, digest: &Digest) {
        self.counters.unstored += 1;
        self.flights.remove(digest);
    }

    /// Counts a reader served from another thread's unstored fetch.
    pub(super) fn count_hit(&mut self) {
        self.counters.hits += 1;
    }

    pub(super) fn over_budget(&self) -> bool {
        self.used > self.budget
    }

    pub(super) fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
    }

    pub(super) fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            hits: c.hits,
            misses: c.misses,
            fills: c.fills,
            bytes_filled: c.bytes_filled,
            evictions: c.evictions,
            bytes_evicted: c.bytes_evicted,
            corrupt: c.corrupt,
            unstored: c.unstored,
            chunks: self.ready.len() as u64,
            pinned: self.ready.values().filter(|e| e.pins > 0).count() as u64,
            bytes_used: self.used,
            budget: self.budget,
        }
    }

    /// Unpinned chunks not owned by a flight, least recently used first.
    fn evictable(&self) -> impl Iterator<Item = (&Digest, &Entry)> {
        self.recency.values().filter_map(|digest| {
            let entry = &self.ready[digest];
            (entry.pins == 0 && !self.flights.contains_key(digest)).then_some((digest, entry))
        })
    }

    fn start_flight(&mut self, digest: &Digest) -> Arc<Flight> {
        let flight = Arc::new(Flight::default());
        self.flights.insert(*digest, flight.clone());
        flight
    }

    fn add(&mut self, digest: Digest, len: u64, pins: u32, verified: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let tick = self.tick();
        self.ready.insert(digest, Entry { id, len, pins, verified, tick });
        self.recency.insert(tick, digest);
        self.used += len;
        id
    }

    fn remove(&mut self, digest: &Digest) -> Entry {
        let entry = self.ready.remove(digest).expect("removing a chunk the index holds");
        self.recency.remove(&entry.tick);
        self.used -= entry.len;
        entry
    }

    fn touch(&mut self, digest: &Digest, tick: u64) {
        if let Some(entry) = self.ready.get_mut(digest) {
            self.recency.remove(&entry.tick);
            entry.tick = tick;
            self.recency.insert(tick, *digest);
        }
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn fill(index: &mut Index, digest: Digest, len: u64) -> u64 {
        assert!(matches!(index.lookup(&digest), Lookup::Claimed(_)));
        index.insert(digest, len)
    }

    fn names(victims: &[Victim]) -> Vec<Digest> {
        victims.iter().map(|v| v.digest).collect()
    }

    #[test]
    fn victims_are_least_recently_used_and_unpinned() {
        let mut index = Index::new(300);
        let ids: Vec<u64> = (0..3).map(|n| fill(&mut index, d(n), 100)).collect();
        assert!(!index.unpin(&d(0), ids[0]));
        assert!(!index.unpin(&d(2), ids[2]));
        // d(1) stays pinned by its committer; d(0) is older than d(2).
        let victims = index.victims(Want::RoomFor(100)).unwrap();
        assert_eq!(names(&victims), vec![d(0)]);
        assert!(index.fits(200) && !index.fits(201));
        assert!(index.victims(Want::RoomFor(201)).is_none(), "all-or-nothing took something");
        assert_eq!(index.stats().chunks, 2);
        assert_eq!(names(&index.victims(Want::All).unwrap()), vec![d(2)]);
        assert_eq!(index.stats().bytes_used, 100);
    }

    #[test]
    fn a_lookup_refreshes_recency() {
        let mut index = Index::new(300);
        for n in 0..3 {
            let id = fill(&mut index, d(n), 100);
            index.unpin(&d(n), id);
        }
        let Lookup::Pinned { id, .. } = index.lookup(&d(0)) else { panic!("d(0) not ready") };
        index.unpin(&d(0), id);
        assert_eq!(names(&index.victims(Want::RoomFor(100)).unwrap()), vec![d(1)]);
    }

    #[test]
    fn a_pin_on_a_replaced_entry_is_not_released_against_its_successor() {
        let mut index = Index::new(1000);
        let old = fill(&mut index, d(0), 10);
        index.unpin_suspect(&d(0), old);
        let Lookup::Verify { id, .. } = index.lookup(&d(0)) else { panic!("expected a verify") };
        index.forget_corrupt(&d(0), id);
        let new = index.insert(d(0), 10);
        index.unpin(&d(0), old);
        assert_eq!(index.stats().pinned, 1);
        index.unpin(&d(0), new);
        assert_eq!(index.stats().pinned, 0);
    }

    #[test]
    fn trim_frees_what_it_can_when_pinned_chunks_exceed_the_budget() {
        let mut index = Index::new(300);
        let ids: Vec<u64> = (0..3).map(|n| fill(&mut index, d(n), 100)).collect();
        index.unpin(&d(0), ids[0]);
        index.set_budget(50);
        assert_eq!(names(&index.victims(Want::Trim).unwrap()), vec![d(0)]);
        assert!(index.over_budget());
        assert!(index.unpin(&d(1), ids[1]), "an unpinned chunk over budget must ask for a trim");
        assert_eq!(names(&index.victims(Want::Trim).unwrap()), vec![d(1)]);
        assert!(index.over_budget(), "d(2) is pinned and over budget");
        assert!(index.unpin(&d(2), ids[2]));
        assert_eq!(names(&index.victims(Want::Trim).unwrap()), vec![d(2)]);
        assert!(!index.over_budget());
    }
}
