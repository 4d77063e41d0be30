//! Key-ordered concurrency within a partition (`ordering: key`), as pure state machines:
//!
//! * [`KeyScheduler`] hands out records so that records of different keys run concurrently while
//!   each key's records run strictly one after another, in offset order.
//! * [`OffsetTracker`] knows what may be committed: the lowest offset not yet finished, plus the
//!   offsets above it that already finished, carried in the commit metadata so that a restart or
//!   a rebalance skips them instead of invoking the function for them again.
//!
//! Records without a key are ordered among themselves as if they shared one key.

use std::collections::{BTreeSet, HashSet, VecDeque};

/// Most bytes of commit metadata we write (brokers accept 4096 by default,
/// `offset.metadata.max.bytes`). When the finished offsets do not fit, the highest are left out:
/// they would be invoked again after a restart (at-least-once), never skipped.
pub const MAX_METADATA_BYTES: usize = 4000;

const METADATA_PREFIX: &str = "sluice1:";

/// What the partition's offsets allow to be committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetTracker {
    /// One past the highest offset seen.
    next: Option<i64>,
    /// Seen and not finished.
    pending: BTreeSet<i64>,
    /// Finished, but above a pending offset (or restored from metadata and not yet seen).
    done: BTreeSet<i64>,
}

/// What to do with a record the consumer delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Process it.
    Process,
    /// It finished before the last commit (it is in the commit metadata): skip it.
    AlreadyDone,
}

impl OffsetTracker {
    /// A tracker for a partition with no commit metadata of ours.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker resuming from a committed offset and its metadata (ours, or anything else —
    /// foreign or damaged metadata is ignored, which only means more records are processed again).
    pub fn restore(committed: i64, metadata: &str) -> Self {
        let done = parse_metadata(committed, metadata);
        OffsetTracker { next: Some(committed), pending: BTreeSet::new(), done }
    }

    /// The consumer delivered `offset`.
    ///
    /// Besides the offsets the metadata names, anything below the commit position that is not
    /// pending is finished: when nothing is pending, the position moves past finished offsets
    /// that the consumer has not delivered yet (a restore from metadata), and those must still
    /// be skipped when they arrive.
    pub fn deliver(&mut self, offset: i64) -> Delivery {
        let behind = self.commit_offset().is_some_and(|floor| offset < floor) && !self.pending.contains(&offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
        if behind || self.done.contains(&offset) {
            self.prune();
            return Delivery::AlreadyDone;
        }
        self.pending.insert(offset);
        Delivery::Process
    }

    /// The record at `offset` is finished (its outputs acknowledged, or dead-lettered).
    pub fn complete(&mut self, offset: i64) {
        if self.pending.remove(&offset) {
            self.done.insert(offset);
            self.prune();
        }
    }

    /// Move the position to `offset` when nothing is pending and everything delivered is below
    /// it: the offsets in between hold no records for us (transaction markers, aborted records),
    /// so a caught-up consumer of a transactional topic does not show a lag of one per partition
    /// forever. Returns whether it moved.
    pub fn skip_to(&mut self, offset: i64) -> bool {
        if !self.pending.is_empty() || self.next.is_some_and(|n| n >= offset) {
            return false;
        }
        self.next = Some(offset);
        self.prune();
        true
    }

    /// Offsets delivered and not finished.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The offset to commit and its metadata, or `None` before anything was delivered.
    pub fn commit(&self) -> Option<(i64, String)> {
        let offset = self.commit_offset()?;
        Some((offset, encode_metadata(offset, self.done.range(offset..))))
    }

    fn commit_offset(&self) -> Option<i64> {
        match self.pending.first() {
            Some(&lowest) => Some(lowest),
            None => self.next,
        }
    }

    /// Drop finished offsets the commit offset already covers; when nothing is pending, move
    /// past finished offsets right at the position.
    fn prune(&mut self) {
        if self.pending.is_empty()
            && let Some(mut next) = self.next
        {
            while self.done.contains(&next) {
                next += 1;
            }
            self.next = Some(next);
        }
        if let Some(floor) = self.commit_offset() {
            self.done = self.done.split_off(&floor);
        }
    }
}

/// Finished offsets above `base` as ranges relative to it: `sluice1:2-3,5`.
fn encode_metadata<'a>(base: i64, done: impl Iterator<Item = &'a i64>) -> String {
    let mut out = String::from(METADATA_PREFIX);
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for &o in done {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == o => *end = o,
            _ => ranges.push((o, o)),
        }
    }
    for (i, (start, end)) in ranges.into_iter().enumerate() {
        let item = if start == end { format!("{}", start - base) } else { format!("{}-{}", start - base, end - base) };
        if out.len() + item.len() + 1 > MAX_METADATA_BYTES {
            break;
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out
}

fn parse_metadata(base: i64, metadata: &str) -> BTreeSet<i64> {
    let mut done = BTreeSet::new();
    let Some(body) = metadata.strip_prefix(METADATA_PREFIX) else { return done };
    for item in body.split(',').filter(|s| !s.is_empty()) {
        let parsed = match item.split_once('-') {
            Some((a, b)) => a.parse::<i64>().ok().zip(b.parse::<i64>().ok()),
            None => item.parse::<i64>().ok().map(|a| (a, a)),
        };
        // Anything malformed: stop trusting the rest (processing again is safe, skipping is not).
        let Some((a, b)) = parsed.filter(|(a, b)| *a > 0 && a <= b && b - a < 1_000_000) else { return done };
        done.extend((a..=b).map(|d| base + d));
    }
    done
}

/// Hands out a partition's records so that each key is processed strictly in offset order and
/// different keys concurrently.
#[derive(Debug, Clone, Default)]
pub struct KeyScheduler<K> {
    waiting: VecDeque<(i64, Option<K>)>,
    running: HashSet<Option<K>>,
}

impl<K: std::hash::Hash + Eq + Clone> KeyScheduler<K> {
    /// An empty scheduler.
    pub fn new() -> Self {
        KeyScheduler { waiting: VecDeque::new(), running: HashSet::new() }
    }

    /// Queue a record (records must be pushed in offset order).
    pub fn push(&mut self, offset: i64, key: Option<K>) {
        self.waiting.push_back((offset, key));
    }

    /// Up to `max` records that may start now: the earliest waiting record of each key that has
    /// nothing running, in offset order.
    pub fn ready(&mut self, max: usize) -> Vec<(i64, Option<K>)> {
        let mut out = Vec::new();
        let mut blocked: HashSet<Option<K>> = HashSet::new();
        let mut i = 0;
        while i < self.waiting.len() && out.len() < max {
            let key = &self.waiting[i].1;
            if self.running.contains(key) || blocked.contains(key) {
                blocked.insert(key.clone());
                i += 1;
                continue;
            }
            let (offset, key) = self.waiting.remove(i).expect("index is in range");
            self.running.insert(key.clone());
            out.push((offset, key));
        }
        out
    }

    /// The record of `key` that was running finished.
    pub fn finished(&mut self, key: &Option<K>) {
        self.running.remove(key);
    }

    /// Records waiting to start.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_idle_position_skips_past_markers_only_when_nothing_is_pending() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.deliver(10), Delivery::Process);
        assert!(!t.skip_to(12), "10 is pending");
        t.complete(10);
        assert_eq!(t.commit().map(|c| c.0), Some(11));
        assert!(t.skip_to(12), "11 is a marker");
        assert_eq!(t.commit().map(|c| c.0), Some(12));
        assert!(!t.skip_to(12) && !t.skip_to(5), "never backwards");
        assert_eq!(t.deliver(12), Delivery::Process, "the next record is processed");
    }

    #[test]
    fn commits_at_the_lowest_unfinished_offset_with_finished_ones_in_metadata() {
        let mut t = OffsetTracker::new();
        for o in 10..16 {
            assert_eq!(t.deliver(o), Delivery::Process);
        }
        t.complete(11);
        t.complete(12);
        t.complete(14);
        assert_eq!(t.commit(), Some((10, "sluice1:1-2,4".to_string())));
        t.complete(10);
        assert_eq!(t.commit(), Some((13, "sluice1:1".to_string())));
        t.complete(13);
        t.complete(15);
        assert_eq!(t.commit(), Some((16, "sluice1:".to_string())));
    }

    #[test]
    fn a_restart_skips_what_the_metadata_says_finished() {
        let mut t = OffsetTracker::restore(10, "sluice1:1-2,4");
        let deliveries: Vec<Delivery> = (10..16).map(|o| t.deliver(o)).collect();
        use Delivery::*;
        assert_eq!(deliveries, [Process, AlreadyDone, AlreadyDone, Process, AlreadyDone, Process]);
        t.complete(10);
        t.complete(13);
        t.complete(15);
        assert_eq!(t.commit(), Some((16, "sluice1:".to_string())));
    }

    #[test]
    fn finished_offsets_stay_skipped_after_the_position_moves_past_them() {
        // 10 runs and finishes before 11 and 12 (finished before the restart) are delivered.
        let mut t = OffsetTracker::restore(10, "sluice1:1-2,4");
        assert_eq!(t.deliver(10), Delivery::Process);
        t.complete(10);
        assert_eq!(t.commit(), Some((13, "sluice1:1".to_string())));
        use Delivery::*;
        let rest: Vec<Delivery> = (11..16).map(|o| t.deliver(o)).collect();
        assert_eq!(rest, [AlreadyDone, AlreadyDone, Process, AlreadyDone, Process]);
    }

    #[test]
    fn foreign_or_damaged_metadata_is_ignored() {
        for metadata in ["", "hello", "sluice1:x", "sluice1:-3", "sluice1:0", "sluice1:5-2"] {
            let mut t = OffsetTracker::restore(10, metadata);
            assert_eq!(t.deliver(11), Delivery::Process, "{metadata:?}");
        }
    }

    #[test]
    fn metadata_stays_within_the_broker_limit() {
        let mut t = OffsetTracker::new();
        for o in 0..20_000 {
            t.deliver(o);
        }
        for o in (1..20_000).step_by(2) {
            t.complete(o);
        }
        let (offset, metadata) = t.commit().unwrap();
        assert_eq!(offset, 0);
        assert!(metadata.len() <= MAX_METADATA_BYTES);
        // What did not fit is processed again, never skipped.
        let mut restored = OffsetTracker::restore(offset, &metadata);
        assert_eq!(restored.deliver(19_999), Delivery::Process);
    }

    #[test]
    fn keys_run_concurrently_each_in_order() {
        let mut s = KeyScheduler::new();
        for (o, k) in [(0, "a"), (1, "b"), (2, "a"), (3, "c"), (4, "b")] {
            s.push(o, Some(k));
        }
        let first: Vec<i64> = s.ready(10).into_iter().map(|(o, _)| o).collect();
        assert_eq!(first, [0, 1, 3]);
        assert!(s.ready(10).is_empty(), "a and b are running; their next records wait");
        s.finished(&Some("b"));
        assert_eq!(s.ready(10), [(4, Some("b"))]);
        s.finished(&Some("a"));
        assert_eq!(s.ready(10), [(2, Some("a"))]);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Deliver,
        /// Finish one of the running records (index modulo the running count).
        Finish(usize),
        Crash,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![4 => Just(Step::Deliver), 4 => (0usize..8).prop_map(Step::Finish), 1 => Just(Step::Crash)],
            1..200,
        )
    }

    proptest! {
        /// A partition of keyed records, processed with key ordering, random completion order and
        /// crashes that restart from the last commit: every record is processed, each key in
        /// offset order with one record at a time, the commit never passes an unfinished record,
        /// and a record finished before a commit is never processed again after a crash.
        #[test]
        fn key_order_commits_and_restarts(keys in prop::collection::vec(0u8..4, 1..60), steps in steps()) {
            let total = keys.len() as i64;
            let mut processed: Vec<Vec<i64>> = vec![Vec::new(); 4];
            let mut finished_ever: BTreeSet<i64> = BTreeSet::new();
            let mut committed: Option<(i64, String)> = None;
            let mut committed_done: BTreeSet<i64> = BTreeSet::new();

            let mut tracker = OffsetTracker::new();
            let mut scheduler: KeyScheduler<u8> = KeyScheduler::new();
            let mut running: Vec<(i64, Option<u8>)> = Vec::new();
            let mut position = 0i64;

            let run_until_done = steps.len() + 4 * keys.len();
            for i in 0..run_until_done {
                let step = steps.get(i).cloned().unwrap_or(if running.is_empty() { Step::Deliver } else { Step::Finish(0) });
                match step {
                    Step::Deliver => {
                        if position < total {
                            let o = position;
                            position += 1;
                            if tracker.deliver(o) == Delivery::Process {
                                // What the last commit says finished never runs again.
                                prop_assert!(!committed_done.contains(&o), "{} runs again though committed as done", o);
                                scheduler.push(o, Some(keys[o as usize]));
                            } else {
                                prop_assert!(committed_done.contains(&o), "skipped {} which was not committed as done", o);
                            }
                        }
                    }
                    Step::Finish(n) => {
                        if !running.is_empty() {
                            let (o, key) = running.remove(n % running.len());
                            tracker.complete(o);
                            scheduler.finished(&key);
                            finished_ever.insert(o);
                        }
                    }
                    Step::Crash => {
                        // Restart from the last commit; everything in memory is lost.
                        let (offset, metadata) = committed.clone().unwrap_or((0, String::new()));
                        tracker = OffsetTracker::restore(offset, &metadata);
                        scheduler = KeyScheduler::new();
                        running.clear();
                        position = offset;
                        // Ordering is per run: after a restart unfinished records go again.
                        processed = vec![Vec::new(); 4];
                    }
                }
                for (o, key) in scheduler.ready(3) {
                    let k = key.expect("keyed") as usize;
                    prop_assert!(!running.iter().any(|(_, rk)| *rk == key), "two records of key {} in flight", k);
                    if let Some(&last) = processed[k].last() {
                        prop_assert!(o > last, "key {} out of order: {} after {}", k, o, last);
                    }
                    processed[k].push(o);
                    running.push((o, key));
                }
                if let Some((offset, metadata)) = tracker.commit() {
                    // Never past an unfinished record.
                    for (o, _) in &running {
                        prop_assert!(*o >= offset, "commit {} passes running {}", offset, o);
                    }
                    committed_done = parse_metadata(offset, &metadata);
                    committed_done.extend(0..offset);
                    committed = Some((offset, metadata));
                }
            }
            // Drain: with no more crashes everything finishes.
            let mut guard = 0;
            while position < total || !running.is_empty() || scheduler.waiting() > 0 {
                guard += 1;
                prop_assert!(guard < 10_000, "no progress");
                if let Some((o, key)) = running.pop() {
                    tracker.complete(o);
                    scheduler.finished(&key);
                    finished_ever.insert(o);
                } else if position < total {
                    let o = position;
                    position += 1;
                    if tracker.deliver(o) == Delivery::Process {
                        scheduler.push(o, Some(keys[o as usize]));
                    }
                }
                for item in scheduler.ready(3) {
                    running.push(item);
                }
            }
            prop_assert_eq!(finished_ever.len() as i64, total, "every record finished");
            prop_assert_eq!(tracker.commit().map(|c| c.0), Some(total));
        }
    }
}
