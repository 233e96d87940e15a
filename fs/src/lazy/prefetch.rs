//! Background prefetch: fetching the chunks a workload is known to read (its profile) before
//! it asks, in large coalesced requests, always yielding to reads a process is waiting for.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{LazyError, LazyLayer, PLANNED_GAP};
use crate::index::ChunkRef;
use crate::union::PrefetchChunk;

/// Counts foreground reads in progress; background work waits while there are any.
#[derive(Debug, Default)]
pub struct Priority {
    foreground: AtomicUsize,
}

/// Marks one foreground read for as long as it lives.
pub struct Foreground<'a>(&'a Priority);

impl Priority {
    pub fn foreground(&self) -> Foreground<'_> {
        self.foreground.fetch_add(1, Ordering::SeqCst);
        Foreground(self)
    }

    /// Waits until no foreground read is in progress.
    pub fn yield_to_foreground(&self) {
        while self.foreground.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        self.0.foreground.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Paces a prefetch's requests so that its bytes arrive in the order they were asked for and
/// the link still never idles: the next request goes out once the bytes owed by those on
/// their way fall to what the link carries while a request is answered (its bandwidth ×
/// delay, both measured). Requests fetched side by side instead share the link, so each
/// arrives later than it would alone; a profile's order is the order the workload waits in.
#[derive(Debug, Default)]
pub struct Pacer {
    pace: Mutex<Pace>,
    turn: Condvar,
}

#[derive(Debug, Default)]
struct Pace {
    /// Bytes admitted and not arrived yet.
    owed: u64,
    /// The shortest wait seen from a request to its answer: the link's delay and the server's.
    delay: Option<Duration>,
    /// The fastest one answer's bytes have been seen to arrive, in bytes a second.
    rate: f64,
}

/// The fewest bytes owed before the next request goes out: more than a request costs to
/// send, and a margin for a delay or rate not yet measured.
const MIN_AHEAD: u64 = 64 << 10;
/// The most: a bound on requests in flight however fast and far the registry.
const MAX_AHEAD: u64 = 16 << 20;
/// Answers shorter than this are not timed for the rate: a shaper's burst and the first
/// segments of a window make them look faster than the link.
const RATE_SAMPLE: u64 = 256 << 10;

impl Pace {
    /// How many bytes may be owed when the next request goes out: twice the bandwidth ×
    /// delay, so that jitter in either leaves the link busy.
    fn ahead(&self) -> u64 {
        let bdp = self.delay.map_or(0.0, |d| self.rate * d.as_secs_f64());
        ((2.0 * bdp) as u64).clamp(MIN_AHEAD, MAX_AHEAD)
    }
}

impl Pacer {
    /// Waits for the turn of the next request, then takes it from `next` (an item and the
    /// bytes it will fetch), which it owes until the ticket has them or drops. `None` when
    /// `next` has nothing left.
    pub fn admit<T>(&self, next: impl FnOnce() -> Option<(T, u64)>) -> Option<(T, Ticket<'_>)> {
        let mut pace = self.pace.lock().unwrap();
        while pace.owed > 0 && pace.owed > pace.ahead() {
            pace = self.turn.wait(pace).unwrap();
        }
        let (item, bytes) = next()?;
        pace.owed += bytes;
        Some((item, Ticket { pacer: Some(self), owed: Cell::new(bytes) }))
    }

    fn repay(&self, bytes: u64) {
        if bytes > 0 {
            let mut pace = self.pace.lock().unwrap();
            pace.owed = pace.owed.saturating_sub(bytes);
            self.turn.notify_all();
        }
    }

    fn observe(&self, delay: Duration, bytes: u64, took: Duration) {
        let mut pace = self.pace.lock().unwrap();
        pace.delay = Some(pace.delay.map_or(delay, |d| d.min(delay)));
        if bytes >= RATE_SAMPLE && !took.is_zero() {
            pace.rate = pace.rate.max(bytes as f64 / took.as_secs_f64());
        }
    }
}

/// What the pacer measured: the delay, the rate and the bytes it lets be owed.
impl std::fmt::Display for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pace = self.pace.lock().unwrap();
        let delay = pace.delay.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        write!(f, "delay {delay:.2} ms, {:.1} MB/s, {} KiB ahead", pace.rate / 1e6, pace.ahead() >> 10)
    }
}

/// The bytes one admitted request still owes its [`Pacer`]; what has not arrived when it
/// drops (chunks another reader fetched, a failed request) is forgiven then.
#[derive(Debug)]
pub struct Ticket<'a> {
    pacer: Option<&'a Pacer>,
    owed: Cell<u64>,
}

impl Ticket<'_> {
    /// A ticket for a fetch no pacer waits for.
    pub fn unpaced() -> Ticket<'static> {
        Ticket { pacer: None, owed: Cell::new(0) }
    }

    /// `bytes` of the request have arrived, or need not.
    pub fn arrived(&self, bytes: u64) {
        if let Some(pacer) = self.pacer {
            let paid = bytes.min(self.owed.get());
            self.owed.set(self.owed.get() - paid);
            pacer.repay(paid);
        }
    }

    /// One answer of the request: `delay` from asking to its first bytes, then `bytes` in
    /// `took`.
    pub fn timed(&self, delay: Duration, bytes: u64, took: Duration) {
        if let Some(pacer) = self.pacer {
            pacer.observe(delay, bytes, took);
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(pacer) = self.pacer {
            pacer.repay(self.owed.get());
        }
    }
}

/// Most bytes one prefetch step claims: small enough that a foreground read never waits
/// behind much background work.
const STEP: u64 = 512 << 10;

impl LazyLayer {
    /// Fetches every chunk of `chunks` not cached yet, in blob order, `STEP` bytes at a time,
    /// yielding to foreground reads between steps; tells `ticket` of the bytes as they
    /// arrive. Returns the bytes fetched.
    pub fn prefetch_chunks(
        &self,
        chunks: &[PrefetchChunk],
        priority: &Priority,
        ticket: &Ticket<'_>,
    ) -> Result<u64, LazyError> {
        let mut chunks = chunks.to_vec();
        chunks.sort_by_key(|(_, c)| (c.offset, c.inner_offset));
        chunks.dedup_by_key(|(_, c)| c.digest);
        let mut fetched = 0;
        let mut rest = chunks.as_slice();
        while !rest.is_empty() {
            let mut take = 0;
            let mut bytes = 0;
            while take < rest.len() && (take == 0 || bytes + rest[take].1.compressed_len <= STEP) {
                bytes += rest[take].1.compressed_len;
                take += 1;
            }
            let (step, tail) = rest.split_at(take);
            rest = tail;
            priority.yield_to_foreground();
            tracing::debug!(bytes, chunks = take, "prefetching");
            let refs: Vec<ChunkRef> = step.iter().map(|(_, c)| *c).collect();
            let claims = self.cache.claim(&refs.iter().map(|c| c.digest).collect::<Vec<_>>());
            let claimed: Vec<&ChunkRef> =
                claims.iter().filter_map(|cl| refs.iter().find(|c| c.digest == *cl.digest())).collect();
            fetched += claimed.iter().map(|c| c.len).sum::<u64>();
            // Chunks cached or on their way for another reader owe nothing here.
            ticket.arrived(bytes - claimed.iter().map(|c| c.compressed_len).sum::<u64>());
            self.fill_claims(step[0].0, &refs, claims, PLANNED_GAP, ticket)?;
        }
        Ok(fetched)
    }
}

impl LazyLayer {
    pub fn priority(&self) -> Option<&Arc<Priority>> {
        self.priority.as_ref()
    }
}

#[cfg(test)]
impl Pacer {
    pub(crate) fn owed(&self) -> u64 {
        self.pace.lock().unwrap().owed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_bytes_let_ahead_are_twice_the_links_bandwidth_times_its_delay_within_bounds() {
        let pace = |delay: Option<Duration>, rate: f64| Pace { owed: 0, delay, rate }.ahead();
        assert_eq!(pace(None, 12.5e6), MIN_AHEAD, "nothing measured yet");
        assert_eq!(pace(Some(MS / 4), 12.5e6), MIN_AHEAD, "loopback: the floor");
        // 100 Mbit/s and 20 ms: 250 kB in flight, twice that let ahead.
        assert_eq!(pace(Some(20 * MS), 12.5e6), 500_000);
        assert_eq!(pace(Some(100 * MS), 1.25e9), MAX_AHEAD, "10 Gbit/s far away: the ceiling");
    }

    #[test]
    fn the_delay_is_the_shortest_seen_and_the_rate_the_fastest_of_long_answers() {
        let pacer = Pacer::default();
        pacer.observe(5 * MS, 1 << 20, 100 * MS);
        pacer.observe(2 * MS, 1 << 20, 200 * MS);
        // A short answer's rate is a burst's, not the link's.
        pacer.observe(3 * MS, 4 << 10, Duration::from_micros(10));
        let pace = pacer.pace.lock().unwrap();
        assert_eq!(pace.delay, Some(2 * MS));
        assert_eq!(pace.rate, (1u64 << 20) as f64 / 0.1);
    }

    #[test]
    fn a_request_waits_until_those_before_it_owe_no_more_than_the_bytes_let_ahead() {
        let pacer = Pacer::default();
        let (_, first) = pacer.admit(|| Some(((), 1 << 20))).unwrap();
        let (sent, admitted) = mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let (n, _ticket) = pacer.admit(|| Some((2, 512 << 10))).unwrap();
                sent.send(n).unwrap();
            });
            first.arrived((1 << 20) - MIN_AHEAD - 1);
            assert!(admitted.recv_timeout(50 * MS).is_err(), "admitted with more than the floor owed");
            first.arrived(1);
            assert_eq!(admitted.recv_timeout(Duration::from_secs(10)), Ok(2));
        });
        assert_eq!(pacer.owed(), MIN_AHEAD, "the first ticket still owes its last bytes");
        drop(first);
        assert_eq!(pacer.owed(), 0);
    }

    #[test]
    fn a_dropped_ticket_forgives_what_never_arrived_and_overpaying_owes_nothing() {
        let pacer = Pacer::default();
        let (_, ticket) = pacer.admit(|| Some(((), 1 << 20))).unwrap();
        ticket.arrived(4 << 20);
        assert_eq!(pacer.owed(), 0);
        let (_, other) = pacer.admit(|| Some(((), 1 << 20))).unwrap();
        drop(ticket);
        assert_eq!(pacer.owed(), 1 << 20, "one ticket's surplus is not another's payment");
        drop(other);
        assert_eq!(pacer.owed(), 0);
        assert!(pacer.admit(|| None::<((), u64)>).is_none(), "nothing left to take");
        assert_eq!(Ticket::unpaced().owed.get(), 0);
    }
}
