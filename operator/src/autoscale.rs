//! The lag autoscaler's decision: a pure function of the policy, what it has seen before, and
//! the latest lag reading. The operator's loop reads lag from Kafka, calls [`Autoscaler::decide`]
//! and writes the result through the Deployment's scale subresource; everything that can be
//! decided without IO is decided here and tested here.
//!
//! The rules (CONTRACTS.md, `scaling`):
//! * `desired = ceil(lag / targetLagPerReplica)`, clamped to `[minReplicas, min(maxReplicas,
//!   partitions)]` — never above the partition count, and no tolerance band that would stop one
//!   replica short of the cap.
//! * At zero replicas, start only once `lag >= activationLag`.
//! * Scale to zero (when `minReplicas` is 0) only after `scaleToZeroAfter` with no lag and no new
//!   records; until then at least one replica stays.
//! * Scale up at once; scale down only to the highest recommendation of the last
//!   `scaleDownStabilization`, so oscillating lag does not make replicas flap.
//! * When lag cannot be read, hold the current replicas: an error is never "idle".

use std::{collections::VecDeque, time::Duration};

use sluice_crds::pipeline::ScalingSpec;

/// The scaling parameters of one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Fewest replicas (0 allows scale to zero).
    pub min_replicas: i32,
    /// Most replicas (the partition count caps it further).
    pub max_replicas: i32,
    /// Lag one replica is expected to keep up with.
    pub target_lag_per_replica: i64,
    /// Lag that starts a function at zero replicas.
    pub activation_lag: i64,
    /// Idle time before scaling to zero.
    pub scale_to_zero_after: Duration,
    /// Window whose highest recommendation a scale-down goes to.
    pub scale_down_stabilization: Duration,
}

impl From<&ScalingSpec> for Policy {
    fn from(spec: &ScalingSpec) -> Self {
        Policy {
            min_replicas: spec.min_replicas.max(0),
            max_replicas: spec.max_replicas.max(0),
            target_lag_per_replica: spec.target_lag_per_replica.max(1),
            activation_lag: spec.activation_lag.max(1),
            scale_to_zero_after: spec.scale_to_zero_after.get(),
            scale_down_stabilization: spec.scale_down_stabilization.get(),
        }
    }
}

/// One reading of the function's consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Lag was read.
    Lag {
        /// Total lag over the source's partitions, in records (a group with no commits counts
        /// from its starting position).
        lag: i64,
        /// Partitions of the source topic.
        partitions: i32,
        /// Sum of the partitions' end offsets: a change means new records arrived.
        end_offsets: i64,
    },
    /// Lag could not be read (broker unreachable, authorization, missing topic, …).
    Unavailable {
        /// Why, for status and events.
        reason: String,
    },
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Replicas to run.
    pub desired: i32,
    /// Why, in words for status, Events and logs.
    pub reason: String,
}

/// The autoscaler of one function: the policy and the memory the rules need.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    policy: Policy,
    /// Recent recommendations `(time, replicas)`, oldest first, within the stabilization window.
    recommendations: VecDeque<(Duration, i32)>,
    /// Last time there was lag, new records, or an unreadable lag.
    last_activity: Option<Duration>,
    /// End offsets at the previous reading.
    last_end_offsets: Option<i64>,
}

impl Autoscaler {
    /// A fresh autoscaler (after an operator restart, as if activity had just been seen: a
    /// restart never scales a function to zero by itself).
    pub fn new(policy: Policy) -> Self {
        Autoscaler { policy, recommendations: VecDeque::new(), last_activity: None, last_end_offsets: None }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replace the policy (the Pipeline changed); the history is kept.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Decide the replicas at time `now` (any monotonic clock), given the `current` replicas and
    /// the latest `reading`.
    pub fn decide(&mut self, now: Duration, current: i32, reading: &Reading) -> Decision {
        // The replicas running when the autoscaler starts (or when lag was unreadable) count as a
        // recommendation: a restarted operator, or one that just got lag back, does not scale
        // down before a whole stabilization window has passed.
        if self.recommendations.is_empty() {
            self.recommendations.push_back((now, current));
        }
        let p = &self.policy;
        let (lag, partitions, end_offsets) = match reading {
            Reading::Unavailable { reason } => {
                // Not knowing is not idleness: restart the idle clock and keep what runs.
                self.last_activity = Some(now);
                self.recommendations.push_back((now, current));
                return Decision { desired: current, reason: format!("holding {current}: lag unavailable ({reason})") };
            }
            Reading::Lag { lag, partitions, end_offsets } => ((*lag).max(0), (*partitions).max(0), *end_offsets),
        };
        let new_records = self.last_end_offsets.is_some_and(|previous| previous != end_offsets);
        self.last_end_offsets = Some(end_offsets);
        if lag > 0 || new_records || self.last_activity.is_none() {
            self.last_activity = Some(now);
        }
        let idle_for = now.saturating_sub(self.last_activity.unwrap_or(now));

        let cap = p.max_replicas.min(partitions);
        let floor = p.min_replicas.min(cap);
        let by_lag = i32::try_from(div_ceil(lag, p.target_lag_per_replica)).unwrap_or(i32::MAX);
        let mut recommendation = by_lag.clamp(floor, cap.max(floor));
        let mut why = format!("lag {lag}, target {} per replica", p.target_lag_per_replica);
        if recommendation == 0 && cap > 0 {
            // Lag is zero and zero replicas are allowed: stay at one until idle long enough, and
            // from zero start only at the activation lag.
            if current > 0 && idle_for < p.scale_to_zero_after {
                recommendation = 1;
                why = format!(
                    "no lag, idle {}s of {}s before scaling to zero",
                    idle_for.as_secs(),
                    p.scale_to_zero_after.as_secs()
                );
            } else if current > 0 {
                why = format!("idle for {}s (no lag, no new records)", idle_for.as_secs());
            }
        }
        if current == 0 && recommendation > 0 && lag < p.activation_lag && floor == 0 {
            recommendation = 0;
            why = format!("lag {lag} below activation lag {}", p.activation_lag);
        }
        if by_lag > cap && cap > 0 {
            why = format!("{why}; capped at {cap} (maxReplicas {}, partitions {partitions})", p.max_replicas);
        }

        // Stabilize scale-downs: remember this recommendation, forget those outside the window.
        self.recommendations.push_back((now, recommendation));
        while self.recommendations.front().is_some_and(|(t, _)| now.saturating_sub(*t) > p.scale_down_stabilization) {
            self.recommendations.pop_front();
        }
        let desired = if recommendation >= current {
            recommendation
        } else if recommendation == 0 && idle_for >= p.scale_to_zero_after && floor == 0 {
            // Scale to zero has its own, longer timer; it does not wait for the window too.
            0
        } else {
            let highest = self.recommendations.iter().map(|(_, r)| *r).max().unwrap_or(recommendation);
            let stabilized = highest.min(current).min(cap.max(floor));
            if stabilized > recommendation {
                why = format!(
                    "{why}; scale-down held at {stabilized} by the {}s stabilization window",
                    p.scale_down_stabilization.as_secs()
                );
            }
            stabilized
        };
        Decision { desired, reason: why }
    }
}

fn div_ceil(a: i64, b: i64) -> i64 {
    if a <= 0 { 0 } else { (a - 1) / b + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy {
            min_replicas: 0,
            max_replicas: 50,
            target_lag_per_replica: 100,
            activation_lag: 1,
            scale_to_zero_after: Duration::from_secs(300),
            scale_down_stabilization: Duration::from_secs(60),
        }
    }

    fn lag(lag: i64, partitions: i32, end_offsets: i64) -> Reading {
        Reading::Lag { lag, partitions, end_offsets }
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn scales_up_at_once_to_ceil_of_lag_over_target() {
        let mut a = Autoscaler::new(policy());
        assert_eq!(a.decide(s(0), 1, &lag(1200, 16, 5000)).desired, 12);
        assert_eq!(a.decide(s(10), 12, &lag(1201, 16, 5001)).desired, 13);
    }

    #[test]
    fn never_above_partitions_and_no_dead_zone_below_the_cap() {
        let mut a = Autoscaler::new(policy());
        let d = a.decide(s(0), 1, &lag(100_000, 8, 1));
        assert_eq!(d.desired, 8);
        assert!(d.reason.contains("capped at 8"), "{}", d.reason);
        // Just over 7 replicas' worth of lag needs the 8th.
        let mut a = Autoscaler::new(policy());
        assert_eq!(a.decide(s(0), 1, &lag(701, 8, 1)).desired, 8);
    }

    #[test]
    fn activation_from_zero_needs_the_activation_lag() {
        let mut a = Autoscaler::new(Policy { activation_lag: 50, ..policy() });
        assert_eq!(a.decide(s(0), 0, &lag(49, 4, 10)).desired, 0);
        assert_eq!(a.decide(s(10), 0, &lag(50, 4, 11)).desired, 1);
    }

    #[test]
    fn scales_to_zero_only_after_idle_time() {
        let mut a = Autoscaler::new(policy());
        assert_eq!(a.decide(s(0), 3, &lag(0, 4, 100)).desired, 3, "first reading: just seen, stabilization holds");
        assert_eq!(a.decide(s(61), 3, &lag(0, 4, 100)).desired, 1, "window passed: down to one, not zero");
        assert_eq!(a.decide(s(200), 1, &lag(0, 4, 100)).desired, 1, "idle 200s < 300s");
        // New records (end offsets moved) without lag still count as activity.
        assert_eq!(a.decide(s(290), 1, &lag(0, 4, 105)).desired, 1);
        assert_eq!(a.decide(s(500), 1, &lag(0, 4, 105)).desired, 1, "idle 210s since the new records");
        let d = a.decide(s(591), 1, &lag(0, 4, 105));
        assert_eq!(d.desired, 0, "{}", d.reason);
    }

    #[test]
    fn min_replicas_prevents_scale_to_zero() {
        let mut a = Autoscaler::new(Policy { min_replicas: 2, ..policy() });
        assert_eq!(a.decide(s(0), 0, &lag(0, 4, 0)).desired, 2);
        assert_eq!(a.decide(s(10_000), 2, &lag(0, 4, 0)).desired, 2);
    }

    #[test]
    fn unreadable_lag_holds_and_never_scales_to_zero() {
        let mut a = Autoscaler::new(policy());
        a.decide(s(0), 2, &lag(0, 4, 0));
        let down = Reading::Unavailable { reason: "broker down".into() };
        for t in [100, 400, 1000] {
            let d = a.decide(s(t), 2, &down);
            assert_eq!(d.desired, 2);
            assert!(d.reason.contains("lag unavailable (broker down)"));
        }
        // Lag readable again and zero: the idle clock restarted at the last error.
        assert_eq!(a.decide(s(1010), 2, &lag(0, 4, 0)).desired, 2);
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let mut a = Autoscaler::new(policy());
        assert_eq!(a.decide(s(0), 1, &lag(800, 16, 1)).desired, 8);
        assert_eq!(a.decide(s(10), 8, &lag(200, 16, 2)).desired, 8, "held: 8 was recommended 10s ago");
        assert_eq!(a.decide(s(50), 8, &lag(300, 16, 3)).desired, 8);
        let d = a.decide(s(65), 8, &lag(300, 16, 4));
        assert_eq!(d.desired, 3, "{}", d.reason);
    }

    fn any_policy() -> impl Strategy<Value = Policy> {
        (0i32..5, 1i32..20, 1i64..500, 1i64..100, 0u64..400, 0u64..200).prop_map(
            |(min, max, target, activation, zero_after, window)| Policy {
                min_replicas: min.min(max),
                max_replicas: max,
                target_lag_per_replica: target,
                activation_lag: activation,
                scale_to_zero_after: s(zero_after),
                scale_down_stabilization: s(window),
            },
        )
    }

    fn readings() -> impl Strategy<Value = Vec<(u64, Option<(i64, i64)>)>> {
        // (seconds since the previous reading, Some((lag, new records)) or None = unavailable)
        prop::collection::vec((1u64..60, proptest::option::weighted(0.9, (0i64..5000, 0i64..3))), 1..60)
    }

    proptest! {
        /// Desired replicas stay within [min(min, cap), cap], and cap never exceeds partitions.
        #[test]
        fn bounds(policy in any_policy(), partitions in 0i32..32, steps in readings()) {
            let mut a = Autoscaler::new(policy.clone());
            let (mut now, mut current, mut offsets) = (0u64, 0i32, 0i64);
            let cap = policy.max_replicas.min(partitions);
            for (dt, reading) in steps {
                now += dt;
                let reading = match reading {
                    Some((lag, new)) => { offsets += new; Reading::Lag { lag, partitions, end_offsets: offsets } }
                    None => Reading::Unavailable { reason: "x".into() },
                };
                let d = a.decide(s(now), current, &reading);
                if matches!(reading, Reading::Unavailable { .. }) {
                    prop_assert_eq!(d.desired, current, "an error holds");
                } else {
                    prop_assert!(d.desired <= cap, "{} > cap {}", d.desired, cap);
                    prop_assert!(d.desired <= partitions);
                    prop_assert!(d.desired >= policy.min_replicas.min(cap), "{} < min", d.desired);
                }
                current = d.desired;
            }
        }

        /// After any change of replicas, no scale-down happens within the stabilization window
        /// unless it is the (separately timed) scale to zero: oscillating lag cannot flap.
        #[test]
        fn no_flapping(policy in any_policy(), steps in readings()) {
            let mut a = Autoscaler::new(policy.clone());
            let (mut now, mut current, mut offsets) = (0u64, 1i32, 0i64);
            let mut last_up: Option<u64> = None;
            for (dt, reading) in steps {
                now += dt;
                let reading = match reading {
                    Some((lag, new)) => { offsets += new; Reading::Lag { lag, partitions: 16, end_offsets: offsets } }
                    None => Reading::Unavailable { reason: "x".into() },
                };
                let d = a.decide(s(now), current, &reading);
                if d.desired > current {
                    last_up = Some(now);
                } else if d.desired < current && d.desired > 0 && let Some(up) = last_up {
                    prop_assert!(now - up > policy.scale_down_stabilization.as_secs(),
                        "scaled down at {}s, {}s after scaling up (window {:?})", now, now - up, policy.scale_down_stabilization);
                }
                current = d.desired;
            }
        }

        /// With lag well above what the cap can serve, the cap is reached at once (no dead zone).
        #[test]
        fn reaches_the_cap(policy in any_policy(), partitions in 1i32..32, extra in 0i64..1000) {
            let cap = policy.max_replicas.min(partitions);
            let lag = policy.target_lag_per_replica * i64::from(cap - 1) + 1 + extra;
            let lag = lag.max(policy.activation_lag);
            let mut a = Autoscaler::new(policy);
            prop_assert_eq!(a.decide(s(0), 0, &Reading::Lag { lag, partitions, end_offsets: 1 }).desired, cap);
        }
    }
}
