//! Tests of the whole cache against a temp directory: fills, single flight, claims, budget,
//! eviction order, recovery and corruption.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use super::*;

#[derive(Debug, thiserror::Error)]
#[error("registry unreachable")]
struct Unreachable;

/// A chunk of `len` bytes that differs for each `seed`.
fn chunk(seed: u8, len: usize) -> (Digest, Vec<u8>) {
    let bytes: Vec<u8> = (0..len).map(|i| seed.wrapping_mul(31).wrapping_add(i as u8)).collect();
    (Digest::of(&bytes), bytes)
}

fn filled(bytes: &[u8]) -> impl FnOnce() -> Result<Vec<u8>, Unreachable> + '_ {
    move || Ok(bytes.to_vec())
}

fn must_not_fill() -> Result<Vec<u8>, Unreachable> {
    panic!("fill ran for a chunk that should be cached")
}

/// Total bytes of chunk files on disk, counted independently of the cache's bookkeeping.
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    for fan_out in fs::read_dir(dir.join("sha256")).unwrap() {
        for file in fs::read_dir(fan_out.unwrap().path()).unwrap() {
            total += file.unwrap().metadata().unwrap().len();
        }
    }
    total
}

fn on_disk(cache: &ChunkCache, digest: &Digest) -> bool {
    cache.shared.store.chunk_path(digest).exists()
}

fn temp_files(dir: &Path) -> usize {
    fs::read_dir(dir.join("tmp")).unwrap().count()
}

#[test]
fn a_miss_fills_and_a_hit_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let (digest, bytes) = chunk(1, 1000);
    let handle = cache.get_or_fill(&digest, filled(&bytes)).unwrap();
    assert_eq!(handle.to_vec().unwrap(), bytes);
    drop(handle);
    let handle = cache.get_or_fill(&digest, must_not_fill).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(handle.read_at(990, &mut buf).unwrap(), 10);
    assert_eq!(&buf[..10], &bytes[990..]);
    assert_eq!(handle.read_at(1000, &mut buf).unwrap(), 0);
    assert!(handle.file().is_some());
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.fills, stats.bytes_filled), (1, 1, 1, 1000));
    assert_eq!((stats.chunks, stats.pinned, stats.bytes_used), (1, 1, 1000));
    assert!(serde_json::to_string(&stats).unwrap().contains("\"bytes_used\":1000"));
}

#[test]
fn identical_bytes_in_two_layers_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let (digest, bytes) = chunk(2, 4096);
    let layer_a = cache.get_or_fill(&digest, filled(&bytes)).unwrap();
    let layer_b = cache.get_or_fill(&digest, must_not_fill).unwrap();
    assert_eq!(layer_b.to_vec().unwrap(), bytes);
    assert_eq!(disk_usage(dir.path()), 4096);
    assert_eq!(cache.stats().pinned, 1);
    drop((layer_a, layer_b));
}

#[test]
fn concurrent_misses_of_one_chunk_fill_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let (digest, bytes) = chunk(3, 64 * 1024);
    let fills = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(8));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (cache, bytes, fills, start) = (cache.clone(), bytes.clone(), fills.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let handle = cache
                    .get_or_fill(&digest, || {
                        fills.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(Duration::from_millis(100));
                        Ok::<_, Unreachable>(bytes.clone())
                    })
                    .unwrap();
                assert_eq!(handle.to_vec().unwrap(), bytes);
            })
        })
        .collect();
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(fills.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.hits, stats.fills, stats.pinned), (1, 7, 1, 0));
}

#[test]
fn a_failed_fill_propagates_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let (digest, bytes) = chunk(4, 100);
    let err = cache.get_or_fill(&digest, || Err(Unreachable)).unwrap_err();
    assert!(matches!(err, CacheError::Fill { digest: d, source: Unreachable } if d == digest));
    assert!(err.to_string().contains(&digest.to_string()));
    assert_eq!((disk_usage(dir.path()), temp_files(dir.path()), cache.stats().chunks), (0, 0, 0));
    // Not remembered as failed: the next reader fetches it.
    cache.get_or_fill(&digest, filled(&bytes)).unwrap();
    assert!(on_disk(&cache, &digest));
}

#[test]
fn wrong_bytes_from_a_fill_are_refused_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let (digest, _) = chunk(5, 100);
    let (actual, wrong) = chunk(6, 100);
    let err = cache.get_or_fill(&digest, filled(&wrong)).unwrap_err();
    match &err {
        CacheError::Mismatch { expected, actual: got, len: 100 } => {
            assert_eq!((*expected, *got), (digest, actual));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&digest.to_string()) && message.contains(&actual.to_string()), "{message}");
    assert!(!on_disk(&cache, &digest) && !on_disk(&cache, &actual));
    assert_eq!((disk_usage(dir.path()), temp_files(dir.path())), (0, 0));
    assert!(cache.claim(&[digest]).len() == 1, "the failed claim was not released");
}

#[test]
fn filling_more_than_the_budget_never_exceeds_it() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 1000;
    let cache = ChunkCache::open(dir.path(), budget).unwrap();
    for seed in 0..20u8 {
        let (digest, bytes) = chunk(seed, 150 + seed as usize * 7);
        let handle = cache.get_or_fill(&digest, filled(&bytes)).unwrap();
        assert_eq!(handle.to_vec().unwrap(), bytes);
        drop(handle);
        let usage = disk_usage(dir.path());
        assert!(usage <= budget, "{usage} bytes on disk after chunk {seed}, budget {budget}");
        assert_eq!(cache.stats().bytes_used, usage);
    }
    let stats = cache.stats();
    assert!(stats.evictions > 0 && stats.evictions + stats.chunks == 20, "{stats:?}");
}

#[test]
fn pinned_chunks_are_not_evicted_and_a_chunk_without_room_is_served_unkept() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 250).unwrap();
    let (a, a_bytes) = chunk(7, 100);
    let (b, b_bytes) = chunk(8, 100);
    let (c, c_bytes) = chunk(9, 100);
    let pin_a = cache.get_or_fill(&a, filled(&a_bytes)).unwrap();
    let pin_b = cache.get_or_fill(&b, filled(&b_bytes)).unwrap();
    let c_handle = cache.get_or_fill(&c, filled(&c_bytes)).unwrap();
    assert_eq!(c_handle.to_vec().unwrap(), c_bytes);
    assert!(c_handle.file().is_none(), "c was kept although a and b fill the budget");
    assert_eq!(c_handle.read_at(1000, &mut [0u8; 8]).unwrap(), 0);
    assert!(on_disk(&cache, &a) && on_disk(&cache, &b) && !on_disk(&cache, &c));
    assert_eq!(disk_usage(dir.path()), 200);
    assert_eq!(cache.stats().unstored, 1);
    drop((c_handle, pin_a));
    // With a released, the next fill of c evicts it; b stays pinned.
    let c_handle = cache.get_or_fill(&c, filled(&c_bytes)).unwrap();
    assert!(c_handle.file().is_some());
    assert!(!on_disk(&cache, &a) && on_disk(&cache, &b) && on_disk(&cache, &c));
    assert_eq!(cache.prune().unwrap(), 0, "prune evicted a pinned chunk");
    drop((c_handle, pin_b));
    assert_eq!(cache.prune().unwrap(), 200);
    assert_eq!(disk_usage(dir.path()), 0);
}

#[test]
fn a_chunk_larger_than_the_budget_is_served_but_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 100).unwrap();
    let (small, small_bytes) = chunk(10, 50);
    let (big, big_bytes) = chunk(11, 101);
    drop(cache.get_or_fill(&small, filled(&small_bytes)).unwrap());
    let handle = cache.get_or_fill(&big, filled(&big_bytes)).unwrap();
    assert_eq!(handle.to_vec().unwrap(), big_bytes);
    assert!(on_disk(&cache, &small), "evicted for a chunk that could never fit");
    assert_eq!((disk_usage(dir.path()), temp_files(dir.path())), (50, 0));
}

#[test]
fn eviction_takes_the_least_recently_used_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 300).unwrap();
    let chunks: Vec<_> = (20..24).map(|seed| chunk(seed, 100)).collect();
    for (digest, bytes) in &chunks[..3] {
        drop(cache.get_or_fill(digest, filled(bytes)).unwrap());
    }
    drop(cache.get_or_fill(&chunks[0].0, must_not_fill).unwrap());
    drop(cache.get_or_fill(&chunks[3].0, filled(&chunks[3].1)).unwrap());
    let kept: Vec<bool> = chunks.iter().map(|(d, _)| on_disk(&cache, d)).collect();
    assert_eq!(kept, [true, false, true, true]);
}

#[test]
fn lowering_the_budget_evicts_now_and_when_pins_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 300).unwrap();
    let (a, a_bytes) = chunk(25, 100);
    let (b, b_bytes) = chunk(26, 100);
    drop(cache.get_or_fill(&a, filled(&a_bytes)).unwrap());
    let pin_b = cache.get_or_fill(&b, filled(&b_bytes)).unwrap();
    cache.set_budget(50).unwrap();
    assert_eq!(disk_usage(dir.path()), 100);
    drop(pin_b);
    assert_eq!((disk_usage(dir.path()), cache.stats().budget), (0, 50));
}

#[test]
fn reopening_recovers_usage_contents_and_lru_order() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (30..34).map(|seed| chunk(seed, 100)).collect();
    {
        let cache = ChunkCache::open(dir.path(), 300).unwrap();
        for (digest, bytes) in &chunks[..3] {
            drop(cache.get_or_fill(digest, filled(bytes)).unwrap());
            // Past the filesystem's timestamp granularity, so mtimes order the fills.
            thread::sleep(Duration::from_millis(30));
        }
    }
    {
        let cache = ChunkCache::open(dir.path(), 300).unwrap();
        let stats = cache.stats();
        assert_eq!((stats.chunks, stats.bytes_used, stats.pinned), (3, 300, 0));
        // The first use in this process verifies chunk 0 and marks it recently used on disk.
        let handle = cache.get_or_fill(&chunks[0].0, must_not_fill).unwrap();
        assert_eq!(handle.to_vec().unwrap(), chunks[0].1);
    }
    let cache = ChunkCache::open(dir.path(), 300).unwrap();
    drop(cache.get_or_fill(&chunks[3].0, filled(&chunks[3].1)).unwrap());
    let kept: Vec<bool> = chunks.iter().map(|(d, _)| on_disk(&cache, d)).collect();
    assert_eq!(kept, [true, false, true, true], "chunk 1 was the least recently used");
}

#[test]
fn reopening_with_a_smaller_budget_trims_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (35..38).map(|seed| chunk(seed, 100)).collect();
    {
        let cache = ChunkCache::open(dir.path(), 300).unwrap();
        for (digest, bytes) in &chunks {
            drop(cache.get_or_fill(digest, filled(bytes)).unwrap());
            thread::sleep(Duration::from_millis(30));
        }
    }
    let cache = ChunkCache::open(dir.path(), 200).unwrap();
    assert_eq!(disk_usage(dir.path()), 200);
    assert!(!on_disk(&cache, &chunks[0].0));
}

#[test]
fn a_chunk_corrupted_on_disk_is_detected_deleted_and_refilled() {
    let dir = tempfile::tempdir().unwrap();
    let (digest, bytes) = chunk(40, 500);
    let path = {
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        drop(cache.get_or_fill(&digest, filled(&bytes)).unwrap());
        cache.shared.store.chunk_path(&digest)
    };
    let mut flipped = bytes.clone();
    flipped[250] ^= 1;
    fs::write(&path, &flipped).unwrap();

    let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let fills = AtomicUsize::new(0);
    let handle = cache
        .get_or_fill(&digest, || {
            fills.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Unreachable>(bytes.clone())
        })
        .unwrap();
    assert_eq!(fills.load(Ordering::SeqCst), 1);
    assert_eq!(handle.to_vec().unwrap(), bytes);
    assert_eq!(fs::read(&path).unwrap(), bytes);
    let stats = cache.stats();
    assert_eq!((stats.corrupt, stats.chunks, stats.bytes_used), (1, 1, 500));
}

/// Whether the filesystem under `dir` keeps user extended attributes (tmpfs before 6.6 does
/// not): without them every process hashes, and there is no mark to test.
fn keeps_user_xattrs(dir: &Path) -> bool {
    let probe = dir.join("xattr-probe");
    fs::write(&probe, b"").unwrap();
    let kept = xattr::set(&probe, "user.skiff.probe", b"1").is_ok();
    fs::remove_file(&probe).unwrap();
    kept
}

/// Changes a chunk file's bytes (same length) and puts its mtime back, as only losing the page
/// cache could: a process that trusts the file's mark serves the new bytes, one that hashes it
/// finds the damage.
fn damage_behind_the_mark(path: &Path) {
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    let mut bytes = fs::read(path).unwrap();
    bytes[250] ^= 1;
    fs::write(path, &bytes).unwrap();
    fs::File::options().write(true).open(path).unwrap().set_modified(mtime).unwrap();
}

#[test]
fn a_chunk_hashed_in_this_boot_is_not_hashed_again_by_the_next_process() {
    let dir = tempfile::tempdir().unwrap();
    if !keeps_user_xattrs(dir.path()) {
        eprintln!("skipped: {} keeps no user extended attributes", dir.path().display());
        return;
    }
    let (digest, bytes) = chunk(42, 500);
    let path = {
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        drop(cache.get_or_fill(&digest, filled(&bytes)).unwrap());
        cache.shared.store.chunk_path(&digest)
    };
    // Written (and so hashed) by the first process: the second trusts the mark.
    damage_behind_the_mark(&path);
    let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let served = cache.get_or_fill(&digest, filled(&bytes)).unwrap().to_vec().unwrap();
    assert_ne!(served, bytes, "the mark was not trusted");
    assert_eq!(cache.stats().corrupt, 0);
    drop(cache);

    // A mark from another boot is not trusted: the damage is found and the chunk refilled.
    let mark = xattr::get(&path, "user.skiff.verified").unwrap().unwrap();
    let (_, mtime) = std::str::from_utf8(&mark).unwrap().split_once(' ').unwrap();
    xattr::set(&path, "user.skiff.verified", format!("another-boot {mtime}").as_bytes()).unwrap();
    let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(cache.get_or_fill(&digest, filled(&bytes)).unwrap().to_vec().unwrap(), bytes);
    assert_eq!(cache.stats().corrupt, 1);
    drop(cache);

    // Refilled by that process, so marked again: trusted by the next one.
    damage_behind_the_mark(&path);
    let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    assert_ne!(cache.get_or_fill(&digest, filled(&bytes)).unwrap().to_vec().unwrap(), bytes);
}

#[test]
fn a_chunk_truncated_while_open_is_verified_again_and_refilled() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let (digest, bytes) = chunk(41, 500);
    drop(cache.get_or_fill(&digest, filled(&bytes)).unwrap());
    let path = cache.shared.store.chunk_path(&digest);
    fs::write(&path, &bytes[..10]).unwrap();
    let handle = cache.get_or_fill(&digest, filled(&bytes)).unwrap();
    assert_eq!(handle.to_vec().unwrap(), bytes);
    assert_eq!((fs::read(&path).unwrap(), cache.stats().corrupt), (bytes, 1));
}

#[test]
fn stale_temp_files_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(ChunkCache::open(dir.path(), 100).unwrap());
    fs::write(dir.path().join("tmp").join("0123.7"), b"half a chunk").unwrap();
    fs::create_dir(dir.path().join("tmp").join("junk")).unwrap();
    let cache = ChunkCache::open(dir.path(), 100).unwrap();
    assert_eq!((temp_files(dir.path()), cache.stats().bytes_used), (0, 0));
}

#[test]
fn two_opens_of_one_directory_share_its_chunks_and_keep_each_others_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let first = ChunkCache::open(dir.path(), 1000).unwrap();
    first.get_or_fill::<Infallible, _>(&Digest::of(b"shared"), || Ok(b"shared".to_vec())).unwrap();
    fs::write(dir.path().join("tmp").join("in-flight"), b"another process's fill").unwrap();
    let second = ChunkCache::open(dir.path(), 1000).unwrap();
    assert!(dir.path().join("tmp").join("in-flight").exists(), "a shared open removes no temp file");
    let hit =
        second.get_or_fill::<Infallible, _>(&Digest::of(b"shared"), || panic!("must be a hit")).unwrap();
    assert_eq!(hit.to_vec().unwrap(), b"shared");
}

#[test]
fn claims_cover_missing_chunks_once_and_end_in_commit_or_abort() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let (a, a_bytes) = chunk(50, 100);
    let (b, b_bytes) = chunk(51, 100);
    let (c, c_bytes) = chunk(52, 100);
    drop(cache.get_or_fill(&c, filled(&c_bytes)).unwrap());

    let claims = cache.claim(&[a, b, a, c]);
    let claimed: Vec<Digest> = claims.iter().map(|claim| *claim.digest()).collect();
    assert_eq!(claimed, [a, b], "cached, duplicate or in-flight digests were claimed");
    assert!(cache.claim(&[a, b]).is_empty(), "in-flight digests were claimed twice");

    let mut claims = claims.into_iter();
    let a_claim = claims.next().unwrap();
    let b_claim = claims.next().unwrap();
    let handle = a_claim.commit(&a_bytes).unwrap();
    assert_eq!(handle.to_vec().unwrap(), a_bytes);
    b_claim.abort();
    assert!(!on_disk(&cache, &b));
    let again = cache.claim(&[a, b]);
    assert_eq!(again.len(), 1);
    drop(again); // dropping aborts too
    let b_claim = cache.claim(&[b]).pop().unwrap();
    let (_, wrong) = chunk(53, 100);
    assert!(matches!(b_claim.commit(&wrong), Err(CacheError::Mismatch { .. })));
    cache.claim(&[b]).pop().unwrap().commit(&b_bytes).unwrap();
    assert!(on_disk(&cache, &b));
}

#[test]
fn readers_waiting_on_a_claim_get_its_bytes_or_fetch_after_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let (a, a_bytes) = chunk(60, 100);
    let (b, b_bytes) = chunk(61, 100);
    let claims = cache.claim(&[a, b]);
    let fills = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = [(a, a_bytes.clone()), (b, b_bytes.clone())]
        .into_iter()
        .flat_map(|(digest, bytes)| (0..3).map(move |_| (digest, bytes.clone())))
        .map(|(digest, bytes)| {
            let (cache, fills) = (cache.clone(), fills.clone());
            thread::spawn(move || {
                let fill = || {
                    fills.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Unreachable>(bytes.clone())
                };
                assert_eq!(cache.get_or_fill(&digest, fill).unwrap().to_vec().unwrap(), bytes);
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    let mut claims = claims.into_iter();
    drop(claims.next().unwrap().commit(&a_bytes).unwrap());
    claims.next().unwrap().abort();
    for reader in readers {
        reader.join().unwrap();
    }
    // Nobody fetched a; after b's abort exactly one waiter fetched it and the rest waited.
    assert_eq!(fills.load(Ordering::SeqCst), 1);
    assert!(on_disk(&cache, &a) && on_disk(&cache, &b));
}

#[test]
fn the_cache_and_its_handles_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChunkCache>();
    assert_send_sync::<ChunkHandle>();
    assert_send_sync::<Claim>();
    assert_send_sync::<CacheError>();
}

#[test]
fn readers_waiting_on_a_chunk_that_cannot_be_kept_share_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), 100).unwrap();
    let (a, a_bytes) = chunk(70, 100);
    let (c, c_bytes) = chunk(71, 100);
    let pin_a = cache.get_or_fill(&a, filled(&a_bytes)).unwrap();
    let claim = cache.claim(&[c]).pop().unwrap();
    let fills = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (cache, fills, bytes) = (cache.clone(), fills.clone(), c_bytes.clone());
            thread::spawn(move || {
                let fill = || {
                    fills.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Unreachable>(bytes.clone())
                };
                let handle = cache.get_or_fill(&c, fill).unwrap();
                assert!(handle.file().is_none());
                assert_eq!(handle.to_vec().unwrap(), bytes);
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    assert!(claim.commit(&c_bytes).unwrap().file().is_none());
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(fills.load(Ordering::SeqCst), 0);
    assert_eq!((disk_usage(dir.path()), cache.stats().unstored), (100, 1));
    drop(pin_a);
}
