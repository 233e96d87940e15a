//! Background prefetch: fetching the chunks a workload is known to read (its profile) before
//! it asks, in large coalesced requests, always yielding to reads a process is waiting for.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{coalesced_len, LazyError, LazyLayer, PLANNED_GAP};
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
    /// The fastest the prefetch's bytes have been seen to arrive, in bytes a second, over a
    /// window of at least `RATE_WINDOW` and two delays.
    rate: f64,
    /// Since when, and how many bytes have arrived since, while some were owed.
    window: Option<(Instant, u64)>,
}

/// The fewest bytes owed before the next request goes out: more than a request costs to
/// send, with a margin.
const MIN_AHEAD: u64 = 64 << 10;
/// The most: a bound on requests in flight however fast and far the registry.
const MAX_AHEAD: u64 = 16 << 20;
/// Until the link's rate is known: about two batches on their way, as a far registry needs
/// from the start (a near one's measured delay soon cuts that to `MIN_AHEAD`).
const FIRST_AHEAD: u64 = 512 << 10;
/// The rate that decides, with a delay measured, whether the registry is near enough for
/// `MIN_AHEAD` before the rate itself is known: a fast link's.
const ASSUMED_RATE: f64 = 125e6;
/// The shortest window a rate is measured over: shorter ones see a shaper's bursts and
/// segments coalesced by the kernel as the link's rate.
const RATE_WINDOW: Duration = Duration::from_millis(10);

impl Pace {
    /// How many bytes may be owed when the next request goes out: twice the bandwidth ×
    /// delay, so that jitter in either leaves the link busy.
    fn ahead(&self) -> u64 {
        let Some(delay) = self.delay else { return FIRST_AHEAD };
        let delay = delay.as_secs_f64();
        if self.rate > 0.0 {
            ((2.0 * self.rate * delay) as u64).clamp(MIN_AHEAD, MAX_AHEAD)
        } else {
            ((2.0 * ASSUMED_RATE * delay) as u64).clamp(MIN_AHEAD, FIRST_AHEAD)
        }
    }

    /// `bytes` arrived at `now`: closes the rate's window when it is long enough. A window
    /// spans only time with bytes owed, so the prefetch's own pauses do not count as a slow
    /// link; the fastest window wins, so one slowed by other traffic does not either.
    fn delivered(&mut self, bytes: u64, now: Instant) {
        let Some((since, n)) = self.window.as_mut() else {
            self.window = Some((now, 0));
            return;
        };
        *n += bytes;
        let span = now - *since;
        if span >= RATE_WINDOW.max(2 * self.delay.unwrap_or_default()) {
            self.rate = self.rate.max(*n as f64 / span.as_secs_f64());
            self.window = Some((now, 0));
        }
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

    /// `paid` bytes are owed no more; `arrived` came over the link.
    fn repay(&self, paid: u64, arrived: u64) {
        let mut pace = self.pace.lock().unwrap();
        if arrived > 0 {
            pace.delivered(arrived, Instant::now());
        }
        pace.owed = pace.owed.saturating_sub(paid);
        if pace.owed == 0 {
            pace.window = None;
        }
        self.turn.notify_all();
    }

    fn answered(&self, delay: Duration) {
        let mut pace = self.pace.lock().unwrap();
        pace.delay = Some(pace.delay.map_or(delay, |d| d.min(delay)));
        self.turn.notify_all();
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
/// drops (a failed request, chunks of another codec) is forgiven then.
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

    /// `bytes` of the request came over the link.
    pub fn arrived(&self, bytes: u64) {
        self.pay(bytes, bytes);
    }

    /// `bytes` of the request need not come: cached, or on their way for another reader.
    pub fn forgive(&self, bytes: u64) {
        self.pay(bytes, 0);
    }

    fn pay(&self, bytes: u64, arrived: u64) {
        if let Some(pacer) = self.pacer {
            let paid = bytes.min(self.owed.get());
            self.owed.set(self.owed.get() - paid);
            if paid > 0 || arrived > 0 {
                pacer.repay(paid, arrived);
            }
        }
    }

    /// A request's answer began `delay` after it was asked.
    pub fn answered(&self, delay: Duration) {
        if let Some(pacer) = self.pacer {
            pacer.answered(delay);
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.forgive(self.owed.get());
    }
}

/// Most bytes one prefetch step claims: small enough that a foreground read never waits
/// behind much background work.
const STEP: u64 = 512 << 10;

impl LazyLayer {
    /// `chunks` in blob order, each once, cut where a prefetch would start a new request, by
    /// the rule a read's misses coalesce by: at a gap over `PLANNED_GAP`, at another codec, or
    /// past `STEP` bytes.
    pub fn prefetch_requests(mut chunks: Vec<PrefetchChunk>) -> Vec<Vec<PrefetchChunk>> {
        chunks.sort_by_key(|(_, c)| (c.offset, c.inner_offset));
        chunks.dedup_by_key(|(_, c)| c.digest);
        let mut requests = Vec::new();
        let mut rest = chunks.as_slice();
        while !rest.is_empty() {
            let (request, tail) = rest.split_at(coalesced_len(rest, |(_, c)| c, PLANNED_GAP, STEP));
            requests.push(request.to_vec());
            rest = tail;
        }
        requests
    }

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
            ticket.forgive(bytes - claimed.iter().map(|c| c.compressed_len).sum::<u64>());
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
    use crate::index::Codec;
    use std::sync::mpsc;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_bytes_let_ahead_are_twice_the_links_bandwidth_times_its_delay_within_bounds() {
        let pace = |delay: Option<Duration>, rate: f64| Pace { delay, rate, ..Pace::default() }.ahead();
        assert_eq!(pace(None, 0.0), FIRST_AHEAD, "nothing measured yet");
        assert_eq!(pace(Some(20 * MS), 0.0), FIRST_AHEAD, "far, at an unknown rate");
        assert_eq!(pace(Some(MS / 4), 0.0), MIN_AHEAD, "near enough for the floor at any rate");
        assert_eq!(pace(Some(MS / 4), 12.5e6), MIN_AHEAD);
        // 100 Mbit/s and 20 ms: 250 kB in flight, twice that let ahead.
        assert_eq!(pace(Some(20 * MS), 12.5e6), 500_000);
        assert_eq!(pace(Some(100 * MS), 1.25e9), MAX_AHEAD, "10 Gbit/s far away: the ceiling");
    }

    #[test]
    fn the_rate_is_the_fastest_window_of_arrivals_at_least_two_delays_long() {
        let t0 = Instant::now();
        let mut pace = Pace { delay: Some(10 * MS), ..Pace::default() };
        // The first arrival opens the window; a burst within it is not a rate.
        pace.delivered(1 << 20, t0);
        pace.delivered(1 << 20, t0 + MS);
        assert_eq!(pace.rate, 0.0);
        pace.delivered(1 << 20, t0 + 20 * MS);
        assert_eq!(pace.rate, (2u64 << 20) as f64 / 0.02);
        // A slower window later leaves the fastest.
        pace.delivered(1 << 10, t0 + 60 * MS);
        assert_eq!(pace.rate, (2u64 << 20) as f64 / 0.02);
        pace.delivered(4 << 20, t0 + 80 * MS);
        assert_eq!(pace.rate, (4u64 << 20) as f64 / 0.02);
    }

    #[test]
    fn the_delay_is_the_shortest_seen_and_a_window_ends_when_nothing_is_owed() {
        let pacer = Pacer::default();
        pacer.answered(5 * MS);
        pacer.answered(2 * MS);
        pacer.answered(3 * MS);
        assert_eq!(pacer.pace.lock().unwrap().delay, Some(2 * MS));
        let (_, ticket) = pacer.admit(|| Some(((), 1000))).unwrap();
        ticket.arrived(500);
        assert!(pacer.pace.lock().unwrap().window.is_some());
        ticket.arrived(500);
        // Time with nothing asked for is not time the link was slow.
        assert!(pacer.pace.lock().unwrap().window.is_none());
    }

    #[test]
    fn a_request_waits_until_those_before_it_owe_no_more_than_the_bytes_let_ahead() {
        let pacer = Pacer::default();
        // A near registry, answering in a quarter of a millisecond.
        pacer.answered(MS / 4);
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
    fn a_prefetch_is_cut_into_requests_at_gaps_at_other_codecs_and_past_a_step() {
        let chunk = |offset: u64, compressed_len: u64, codec: Codec| ChunkRef {
            digest: crate::Digest::of(&offset.to_le_bytes()),
            file_offset: 0,
            len: 1,
            codec,
            offset,
            compressed_len,
            inner_offset: 0,
        };
        let gzip = |offset, len| (0, chunk(offset, len, Codec::Gzip));
        let far = 6001 + PLANNED_GAP;
        let chunks = vec![
            gzip(5000, 1000),
            gzip(0, 1000),
            gzip(1000, 1000),
            gzip(0, 1000),
            // 4 KiB between 2000 and 6000: within the gap.
            (0, chunk(100_000, 10, Codec::Uncompressed)),
            (0, chunk(100_010, 10, Codec::Uncompressed)),
            // Just over the gap after 6000; then a chunk that would make the request a byte
            // longer than a step.
            gzip(far, 1000),
            gzip(far + 1000, STEP - 999),
        ];
        let offsets: Vec<Vec<u64>> = LazyLayer::prefetch_requests(chunks)
            .iter()
            .map(|r| r.iter().map(|(_, c)| c.offset).collect())
            .collect();
        assert_eq!(offsets, [vec![0, 1000, 5000], vec![far], vec![far + 1000], vec![100_000], vec![100_010]]);
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
