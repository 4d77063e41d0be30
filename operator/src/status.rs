//! The Pipeline's status, and the processor's stop-the-world rescale, as pure decisions the
//! controller applies.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sluice_crds::pipeline::{FunctionStatus, Phase, PipelineStatus, ProcessorStatus, QueryStatus, ScaleEvent};

/// What was observed of one function.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionObserved {
    /// The function's name.
    pub name: String,
    /// Replicas of its Deployment.
    pub replicas: i32,
    /// Of those, ready.
    pub ready: i32,
    /// What the autoscaler asks for (the Deployment's spec until it has decided).
    pub desired: i32,
    /// Lag at the autoscaler's last reading.
    pub lag: Option<i64>,
    /// Partitions of the source.
    pub partitions: Option<i32>,
    /// The last change of replicas.
    pub last_scale: Option<ScaleEvent>,
}

/// What the controller observed of the children.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// `metadata.generation` of the Pipeline reconciled.
    pub generation: Option<i64>,
    /// The plan failed: (the SQL is at fault, message).
    pub invalid: Option<(bool, String)>,
    /// The processor: desired replicas, ready replicas, and whether a rescale is running.
    pub processor: Option<(i32, i32, bool)>,
    /// Persistent queries (id, sink).
    pub queries: Vec<(String, String)>,
    /// Per function.
    pub functions: Vec<FunctionObserved>,
    /// Source topics that do not exist and that nothing in the Pipeline writes.
    pub missing_topics: Vec<String>,
    /// Why the source topics could not be checked (Kafka unreachable, credentials refused).
    pub kafka_error: Option<String>,
}

/// The next status, keeping each condition's `lastTransitionTime` when nothing about it changed.
pub fn status(previous: Option<&PipelineStatus>, observed: &Observed, now: Time) -> PipelineStatus {
    let previous_conditions = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" }.to_string();
        let since = previous_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status && c.reason == reason)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: observed.generation,
        }
    };
    let mut conditions = Vec::new();
    if let Some((sql, message)) = &observed.invalid {
        if *sql {
            conditions.push(condition("SqlValid", false, "InvalidSql", message.clone()));
        }
        conditions.push(condition("Ready", false, if *sql { "InvalidSql" } else { "InvalidSpec" }, message.clone()));
        // What runs keeps running as it was: report it, but the phase is Failed.
        let mut s = previous.cloned().unwrap_or_default();
        s.observed_generation = observed.generation;
        s.phase = Some(Phase::Failed);
        let kept: Vec<Condition> =
            s.conditions.into_iter().filter(|c| !matches!(c.type_.as_str(), "SqlValid" | "Ready")).collect();
        s.conditions = conditions.into_iter().chain(kept).collect();
        return s;
    }
    conditions.push(condition("SqlValid", true, "Valid", String::new()));
    let processor_ready = match observed.processor {
        Some((_, _, true)) => {
            conditions.push(condition(
                "ProcessorReady",
                false,
                "Rescaling",
                "stop-the-world rescale: scaling to zero before the new replica count".into(),
            ));
            false
        }
        Some((want, ready, false)) => {
            let ok = ready >= want;
            conditions.push(condition(
                "ProcessorReady",
                ok,
                if ok { "Ready" } else { "NotReady" },
                format!("{ready}/{want} ready"),
            ));
            ok
        }
        None => true,
    };
    let waiting: Vec<&str> =
        observed.functions.iter().filter(|f| f.ready < f.replicas).map(|f| f.name.as_str()).collect();
    let functions_ready = waiting.is_empty();
    conditions.push(condition(
        "FunctionsReady",
        functions_ready,
        if functions_ready { "Ready" } else { "NotReady" },
        if functions_ready { String::new() } else { format!("not ready: {}", waiting.join(", ")) },
    ));
    let ready = processor_ready && functions_ready && observed.missing_topics.is_empty();
    let (reason, message) = if !observed.missing_topics.is_empty() {
        (
            "SourceTopicMissing",
            format!(
                "source topic(s) {} do not exist and nothing in the Pipeline writes them: create them; the Pipeline starts on its own once they exist",
                observed.missing_topics.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
            ),
        )
    } else if ready {
        ("Ready", String::new())
    } else if let Some(e) = &observed.kafka_error {
        // Not ready, and Kafka does not answer the operator either: the likely reason.
        ("KafkaUnavailable", format!("checking the source topics in Kafka failed: {e}"))
    } else {
        ("NotReady", String::new())
    };
    conditions.push(condition("Ready", ready, reason, message));
    let ever_ready = previous.and_then(|p| p.phase).is_some_and(|p| matches!(p, Phase::Running | Phase::Degraded));
    let rescaling = matches!(observed.processor, Some((_, _, true)));
    let phase = match (ready, ever_ready) {
        // A rescale stops a processor that ran: Degraded (CONTRACTS.md), with the
        // ProcessorReady/Rescaling condition saying why.
        _ if rescaling => Phase::Degraded,
        (true, _) => Phase::Running,
        (false, true) => Phase::Degraded,
        (false, false) => Phase::Pending,
    };
    let functions: Vec<FunctionStatus> = observed
        .functions
        .iter()
        .map(|f| FunctionStatus {
            name: f.name.clone(),
            replicas: f.replicas,
            desired_replicas: f.desired,
            lag: f.lag,
            partitions: f.partitions,
            last_scale: f.last_scale.clone(),
        })
        .collect();
    let processor = observed.processor.map(|(want, ready, rescaling)| {
        // ksqlDB's query states: every replica runs every query on its share of the partitions.
        let state = match (rescaling, ready) {
            (true, _) => "REBALANCING",
            (false, r) if r >= want && want > 0 => "RUNNING",
            (false, 0) => "NOT_RUNNING",
            (false, _) => "DEGRADED",
        };
        ProcessorStatus {
            replicas: want,
            ready_replicas: ready,
            queries: observed
                .queries
                .iter()
                .map(|(id, sink)| QueryStatus { id: id.clone(), sink: sink.clone(), state: state.into() })
                .collect(),
        }
    });
    let mut summary = Vec::new();
    if let Some((want, ready, _)) = observed.processor {
        summary.push(format!("processor {ready}/{want}"));
    }
    if !functions.is_empty() {
        summary.push(format!("functions {}", functions.iter().map(|f| f.replicas).sum::<i32>()));
    }
    let lag = functions.iter().filter_map(|f| f.lag).reduce(|a, b| a + b);
    PipelineStatus {
        observed_generation: observed.generation,
        phase: Some(phase),
        conditions,
        processor,
        functions,
        lag,
        replicas: Some(summary.join(", ")),
    }
}

/// One step of applying the processor's replica count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescale {
    /// Apply the StatefulSet as rendered (no change of count, or nothing runs).
    Apply,
    /// The count changes while pods run: scale to zero first (and apply nothing else of the
    /// processor, so that no pod of the old count restarts with the new config).
    ScaleToZero,
    /// Scaled to zero; pods of the old count still exist: wait.
    WaitForPods,
}

/// What to do with the processor's StatefulSet. `current` is the StatefulSet's `spec.replicas`
/// (None when it does not exist), `pods` the processor pods that still exist.
///
/// Pod N of R owns partitions `p mod R == N`: with two counts alive at once two pods would own
/// one partition, so a change of R goes through zero.
pub fn rescale(current: Option<i32>, desired: i32, pods: usize) -> Rescale {
    match current {
        None => Rescale::Apply,
        Some(c) if c == desired && (c != 0 || pods == 0) => Rescale::Apply,
        Some(0) if pods > 0 => Rescale::WaitForPods,
        Some(0) => Rescale::Apply,
        Some(_) => Rescale::ScaleToZero,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn invalid_sql_fails_and_keeps_what_runs() {
        let running = status(
            None,
            &Observed { generation: Some(1), processor: Some((1, 1, false)), ..Observed::default() },
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(running.phase, Some(Phase::Running));
        let failed = status(
            Some(&running),
            &Observed { generation: Some(2), invalid: Some((true, "line 2:8: boom".into())), ..Observed::default() },
            t("2026-01-01T00:01:00Z"),
        );
        assert_eq!(failed.phase, Some(Phase::Failed));
        assert_eq!(failed.observed_generation, Some(2));
        let sql = failed.conditions.iter().find(|c| c.type_ == "SqlValid").unwrap();
        assert_eq!((sql.status.as_str(), sql.message.as_str()), ("False", "line 2:8: boom"));
        assert_eq!(failed.processor, running.processor, "the running processor is still reported");
    }

    #[test]
    fn a_missing_source_topic_is_named_in_ready() {
        let missing = Observed {
            generation: Some(1),
            processor: Some((1, 0, false)),
            missing_topics: vec!["users".into()],
            ..Observed::default()
        };
        let s = status(None, &missing, t("2026-01-01T00:00:00Z"));
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "SourceTopicMissing"));
        assert!(ready.message.contains("'users'"), "{}", ready.message);
        assert_eq!(s.phase, Some(Phase::Pending));
        let there = Observed { processor: Some((1, 1, false)), missing_topics: Vec::new(), ..missing.clone() };
        assert_eq!(status(Some(&s), &there, t("2026-01-01T00:00:10Z")).phase, Some(Phase::Running));
    }

    #[test]
    fn kafka_that_does_not_answer_is_the_reason_only_while_not_ready() {
        let o = Observed {
            generation: Some(1),
            processor: Some((1, 0, false)),
            kafka_error: Some("Meta data fetch error: BrokerTransportFailure".into()),
            ..Observed::default()
        };
        let s = status(None, &o, t("2026-01-01T00:00:00Z"));
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "KafkaUnavailable"));
        assert!(ready.message.contains("BrokerTransportFailure"), "{}", ready.message);
        // A running Pipeline stays Ready through one failed check of the operator's own.
        let running = Observed { processor: Some((1, 1, false)), ..o };
        let s = status(Some(&s), &running, t("2026-01-01T00:00:10Z"));
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Ready"));
    }

    #[test]
    fn transition_times_move_only_on_change() {
        let o = Observed { generation: Some(1), processor: Some((2, 1, false)), ..Observed::default() };
        let a = status(None, &o, t("2026-01-01T00:00:00Z"));
        assert_eq!(a.phase, Some(Phase::Pending));
        let b = status(Some(&a), &o, t("2026-01-01T00:05:00Z"));
        assert_eq!(a, b, "same observation, same status: no write");
        let ready = Observed { processor: Some((2, 2, false)), ..o.clone() };
        let c = status(Some(&b), &ready, t("2026-01-01T00:06:00Z"));
        let cond = |s: &PipelineStatus, ty: &str| s.conditions.iter().find(|c| c.type_ == ty).unwrap().clone();
        assert_eq!(cond(&c, "ProcessorReady").last_transition_time, t("2026-01-01T00:06:00Z"));
        assert_eq!(cond(&c, "SqlValid").last_transition_time, t("2026-01-01T00:00:00Z"));
        assert_eq!(c.phase, Some(Phase::Running));
        let d = status(Some(&c), &o, t("2026-01-01T00:07:00Z"));
        assert_eq!(d.phase, Some(Phase::Degraded), "not ready after having run");
    }

    #[test]
    fn a_rescale_shows_in_phase_condition_and_query_state() {
        let queries = vec![("CSAS_X_0".to_owned(), "x".to_owned())];
        let o = Observed { generation: Some(1), processor: Some((2, 0, false)), queries, ..Observed::default() };
        let pending = status(None, &o, t("2026-01-01T00:00:00Z"));
        assert_eq!(pending.phase, Some(Phase::Pending));
        assert_eq!(pending.processor.as_ref().unwrap().queries[0].state, "NOT_RUNNING");
        let rescaling = Observed { processor: Some((3, 1, true)), ..o.clone() };
        let s = status(Some(&pending), &rescaling, t("2026-01-01T00:01:00Z"));
        assert_eq!(s.phase, Some(Phase::Degraded), "a rescale is Degraded even before the first Running");
        let c = s.conditions.iter().find(|c| c.type_ == "ProcessorReady").unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Rescaling"));
        assert_eq!(s.processor.as_ref().unwrap().queries[0].state, "REBALANCING");
        assert_eq!(s.processor.as_ref().unwrap().ready_replicas, 1, "readiness as the StatefulSet reports it");
        let running = Observed { processor: Some((3, 3, false)), ..o };
        let s = status(Some(&s), &running, t("2026-01-01T00:02:00Z"));
        assert_eq!(s.phase, Some(Phase::Running));
        assert_eq!(s.processor.as_ref().unwrap().queries[0].state, "RUNNING");
    }

    #[test]
    fn a_rescale_goes_through_zero() {
        assert_eq!(rescale(None, 3, 0), Rescale::Apply);
        assert_eq!(rescale(Some(2), 2, 2), Rescale::Apply);
        assert_eq!(rescale(Some(2), 3, 2), Rescale::ScaleToZero);
        assert_eq!(rescale(Some(0), 3, 2), Rescale::WaitForPods);
        assert_eq!(rescale(Some(0), 3, 0), Rescale::Apply);
    }
}
