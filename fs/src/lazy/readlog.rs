//! What a workload read of a layer: the distinct byte ranges of each file, so a benchmark can
//! compare what was fetched with what was needed (each byte counted once, however often read).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::index::NodeId;

/// Distinct ranges read per file.
#[derive(Debug, Default)]
pub struct ReadLog {
    files: Mutex<HashMap<NodeId, Vec<(u64, u64)>>>,
}

impl ReadLog {
    /// Notes that `start..end` of `node` was read; returns how many bytes just before
    /// `start` were read without a gap: how far the file has been read in order up to here.
    pub fn note(&self, node: NodeId, start: u64, end: u64) -> u64 {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let ranges = files.entry(node).or_default();
        // Ranges are sorted, disjoint and apart: the first not ending before `start` is the
        // only one that can hold the byte before it.
        let in_order = match ranges.get(ranges.partition_point(|r| r.1 < start)) {
            Some(&(s, _)) if s < start => start - s,
            _ => 0,
        };
        if start < end {
            merge(ranges, start, end);
        }
        in_order
    }

    /// Calls `f(node, start, end)` for every distinct range read.
    pub fn for_each(&self, mut f: impl FnMut(NodeId, u64, u64)) {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        for (node, ranges) in files.iter() {
            for &(start, end) in ranges {
                f(*node, start, end);
            }
        }
    }
}

/// Adds `start..end` to sorted, disjoint `ranges`, joining those it touches.
pub(crate) fn merge(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    // Reads are mostly sequential: the common case is extending the last range.
    if let Some(last) = ranges.last_mut() {
        if last.0 <= start && start <= last.1 {
            last.1 = last.1.max(end);
            return;
        }
    }
    let first = ranges.partition_point(|r| r.1 < start);
    let past = ranges.partition_point(|r| r.0 <= end);
    if first == past {
        ranges.insert(first, (start, end));
        return;
    }
    let joined = (ranges[first].0.min(start), ranges[past - 1].1.max(end));
    ranges.splice(first..past, [joined]);
}

/// The parts of `start..end` that sorted, disjoint `ranges` do not cover, in order.
pub(crate) fn uncovered(ranges: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    for &(s, e) in &ranges[ranges.partition_point(|r| r.1 <= start)..] {
        if s >= end {
            break;
        }
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_and_repeated_reads_count_once() {
        let log = ReadLog::default();
        log.note(1, 0, 100);
        log.note(1, 50, 150);
        log.note(1, 0, 10);
        log.note(1, 300, 400);
        log.note(1, 200, 250);
        log.note(1, 150, 200);
        log.note(2, 0, 7);
        assert_eq!(log.note(3, 0, 10), 0, "a file's start");
        assert_eq!(log.note(3, 10, 20), 10, "on from the last read");
        assert_eq!(log.note(3, 40, 50), 0, "a jump");
        assert_eq!(log.note(3, 15, 30), 15, "into what was read");
        let mut total = 0;
        log.for_each(|_, start, end| total += end - start);
        assert_eq!(total, 250 + 100 + 7 + 30 + 10);
        let mut ranges = vec![(0, 10), (20, 30), (40, 50)];
        merge(&mut ranges, 5, 45);
        assert_eq!(ranges, [(0, 50)]);
    }

    #[test]
    fn uncovered_parts_of_a_range() {
        let ranges = [(10, 20), (30, 40), (50, 60)];
        assert_eq!(uncovered(&ranges, 0, 70), [(0, 10), (20, 30), (40, 50), (60, 70)]);
        assert_eq!(uncovered(&ranges, 15, 35), [(20, 30)]);
        assert_eq!(uncovered(&ranges, 12, 18), []);
        assert_eq!(uncovered(&ranges, 20, 30), [(20, 30)]);
        assert_eq!(uncovered(&[], 5, 9), [(5, 9)]);
    }
}
