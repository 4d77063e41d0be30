//! What happens after an invocation fails: a pure decision over the failed batch.
//!
//! * Every record of a failed attempt has its attempt count raised.
//! * With `bisectBatch`, a failing batch of several records is split in halves, each retried on
//!   its own, until the failing record is alone — so one poison record does not hold back the
//!   rest of its batch.
//! * A record (or, without bisection, a batch) that has failed more than `maxRetries` times goes
//!   to the dead-letter topic; without one it is retried forever, the backoff capped at
//!   `backoff.max`: nothing is ever skipped.
//! * `batchItemFailures` (a partial failure) completes the records before the first failed one
//!   of each partition and retries that one and those after it.
//! * Waits grow exponentially from `backoff.initial` to `backoff.max`, with jitter (each wait is
//!   drawn between half and all of its nominal length) so that many partitions failing together do
//!   not retry in lockstep.

use std::time::Duration;

use crate::event::InputRecord;

/// The function's `onFailure` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Retries of a record before it is dead-lettered.
    pub max_retries: u32,
    /// First wait.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
    /// Split failing batches.
    pub bisect: bool,
    /// Whether a dead-letter topic is configured.
    pub dead_letter: bool,
}

/// Records being processed together, with how often they have failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The records, in offset order.
    pub records: Vec<InputRecord>,
    /// Failed attempts so far.
    pub failures: u32,
}

/// What to do next with (part of) a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Invoke again after `after`.
    Retry {
        /// The records and their failure count.
        attempt: Attempt,
        /// Wait before invoking.
        after: Duration,
    },
    /// Send to the dead-letter topic with the error headers.
    DeadLetter {
        /// The records and how often they failed.
        attempt: Attempt,
        /// The last error.
        error: String,
    },
}

/// The nominal wait before the `failures`-th retry, before jitter: `initial × 2^(failures−1)`,
/// capped at `max`.
pub fn nominal_backoff(policy: &Policy, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(32);
    policy.initial.saturating_mul(1u32 << exponent.min(31)).min(policy.max)
}

/// A wait with jitter: `jitter` in `[0, 1)` picks a point between half and all of the nominal wait.
pub fn backoff(policy: &Policy, failures: u32, jitter: f64) -> Duration {
    let nominal = nominal_backoff(policy, failures);
    nominal.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0)).min(policy.max)
}

/// Decide what follows the failure of `attempt` with `error`. `jitter` supplies values in
/// `[0, 1)`, one per retry decided.
pub fn on_failure(policy: &Policy, attempt: Attempt, error: &str, jitter: &mut impl FnMut() -> f64) -> Vec<Next> {
    let failures = attempt.failures + 1;
    let records = attempt.records;
    if records.is_empty() {
        return Vec::new();
    }
    if policy.bisect && records.len() > 1 {
        // Splitting is how the failing record is found, not a retry of the same batch: the
        // halves keep the count, which rises only when a half fails again.
        let mut first = records;
        let second = first.split_off(first.len() / 2);
        let after = backoff(policy, failures, jitter());
        return vec![
            Next::Retry { attempt: Attempt { records: first, failures: attempt.failures }, after },
            Next::Retry { attempt: Attempt { records: second, failures: attempt.failures }, after },
        ];
    }
    let attempt = Attempt { records, failures };
    if failures > policy.max_retries && policy.dead_letter {
        return vec![Next::DeadLetter { attempt, error: error.to_owned() }];
    }
    vec![Next::Retry { after: backoff(policy, failures, jitter()), attempt }]
}

/// Apply a partial failure: `failed` lists `(partition, offset)` of the records the function
/// reported; the first failed record of each partition and every later record of that partition
/// fail, the rest are done. Returns `None` when an identifier names no record of the attempt
/// (the response is then malformed and the whole batch fails).
pub fn split_partial(
    attempt: &Attempt,
    topic_failed: &[(String, i32, i64)],
) -> Option<(Vec<InputRecord>, Vec<InputRecord>)> {
    let mut first_failed: Vec<(&str, i32, i64)> = Vec::new();
    for (topic, partition, offset) in topic_failed {
        if !attempt.records.iter().any(|r| r.topic == *topic && r.partition == *partition && r.offset == *offset) {
            return None;
        }
        match first_failed.iter_mut().find(|(t, p, _)| t == topic && p == partition) {
            Some(entry) => entry.2 = entry.2.min(*offset),
            None => first_failed.push((topic, *partition, *offset)),
        }
    }
    let (failed, done): (Vec<_>, Vec<_>) = attempt
        .records
        .iter()
        .cloned()
        .partition(|r| first_failed.iter().any(|(t, p, o)| r.topic == *t && r.partition == *p && r.offset >= *o));
    Some((done, failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TimestampType;
    use proptest::prelude::*;

    fn policy(max_retries: u32, bisect: bool, dead_letter: bool) -> Policy {
        Policy { max_retries, initial: Duration::from_millis(100), max: Duration::from_secs(30), bisect, dead_letter }
    }

    fn rec(partition: i32, offset: i64) -> InputRecord {
        InputRecord {
            topic: "t".into(),
            partition,
            offset,
            timestamp: 0,
            timestamp_type: TimestampType::CreateTime,
            key: None,
            value: Some(vec![]),
            headers: vec![],
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy(3, false, true);
        let waits: Vec<u128> = (1..=12).map(|f| nominal_backoff(&p, f).as_millis()).collect();
        assert_eq!(&waits[..5], [100, 200, 400, 800, 1600]);
        assert_eq!(waits[11], 30_000);
        assert_eq!(backoff(&p, 1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(&p, 1, 0.999_999).as_millis(), 99);
        assert_eq!(nominal_backoff(&p, u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn bisection_isolates_the_poison_record_then_it_is_dead_lettered() {
        let p = policy(2, true, true);
        let poison = 5;
        let mut queue = vec![Attempt { records: (0..8).map(|o| rec(0, o)).collect(), failures: 0 }];
        let (mut delivered, mut dead) = (Vec::new(), Vec::new());
        while let Some(attempt) = queue.pop() {
            if attempt.records.iter().any(|r| r.offset == poison) {
                for next in on_failure(&p, attempt, "boom", &mut || 0.5) {
                    match next {
                        Next::Retry { attempt, .. } => queue.push(attempt),
                        Next::DeadLetter { attempt, error } => {
                            assert_eq!(error, "boom");
                            assert_eq!(attempt.failures, 3, "failed once more than maxRetries");
                            dead.extend(attempt.records.iter().map(|r| r.offset));
                        }
                    }
                }
            } else {
                delivered.extend(attempt.records.iter().map(|r| r.offset));
            }
        }
        delivered.sort();
        assert_eq!(delivered, [0, 1, 2, 3, 4, 6, 7]);
        assert_eq!(dead, [poison]);
    }

    #[test]
    fn without_a_dead_letter_topic_nothing_is_skipped() {
        let p = policy(1, false, false);
        let mut attempt = Attempt { records: vec![rec(0, 1)], failures: 0 };
        for _ in 0..50 {
            let next = on_failure(&p, attempt, "down", &mut || 0.99);
            let [Next::Retry { attempt: a, after }] = next.as_slice() else { panic!("{next:?}") };
            assert!(*after <= p.max);
            attempt = a.clone();
        }
        assert_eq!(attempt.failures, 50);
    }

    #[test]
    fn partial_failures_complete_the_records_before_the_failed_one() {
        let attempt = Attempt { records: vec![rec(0, 1), rec(0, 2), rec(0, 3), rec(1, 7), rec(1, 8)], failures: 0 };
        let (done, failed) = split_partial(&attempt, &[("t".into(), 0, 2)]).unwrap();
        assert_eq!(done.iter().map(|r| (r.partition, r.offset)).collect::<Vec<_>>(), [(0, 1), (1, 7), (1, 8)]);
        assert_eq!(failed.iter().map(|r| (r.partition, r.offset)).collect::<Vec<_>>(), [(0, 2), (0, 3)]);
        assert!(split_partial(&attempt, &[("t".into(), 0, 99)]).is_none(), "an unknown record is malformed");
    }

    proptest! {
        /// Under any pattern of failing records, every record ends delivered or dead-lettered
        /// (with a dead-letter topic) exactly once, and only records that really failed more than
        /// maxRetries times are dead-lettered.
        #[test]
        fn nothing_lost_nothing_doubled(
            n in 1usize..40,
            poison in prop::collection::btree_set(0i64..40, 0..5),
            max_retries in 0u32..4,
            bisect in any::<bool>(),
        ) {
            let p = policy(max_retries, bisect, true);
            let mut queue = vec![Attempt { records: (0..n as i64).map(|o| rec(0, o)).collect(), failures: 0 }];
            let (mut delivered, mut dead) = (Vec::new(), Vec::new());
            let mut steps = 0;
            while let Some(attempt) = queue.pop() {
                steps += 1;
                prop_assert!(steps < 10_000);
                if attempt.records.iter().any(|r| poison.contains(&r.offset)) {
                    for next in on_failure(&p, attempt, "e", &mut || 0.3) {
                        match next {
                            Next::Retry { attempt, after } => { prop_assert!(after <= p.max); queue.push(attempt) }
                            Next::DeadLetter { attempt, .. } => {
                                prop_assert!(attempt.failures > max_retries);
                                if bisect { prop_assert!(attempt.records.iter().all(|r| poison.contains(&r.offset))); }
                                dead.extend(attempt.records.iter().map(|r| r.offset));
                            }
                            }
                    }
                } else {
                    delivered.extend(attempt.records.iter().map(|r| r.offset));
                }
            }
            let mut all: Vec<i64> = delivered.iter().chain(&dead).copied().collect();
            all.sort();
            prop_assert_eq!(all, (0..n as i64).collect::<Vec<_>>());
        }
    }
}
