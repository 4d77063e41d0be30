//! The autoscaler loop: every function's lag read from Kafka every `pollInterval`, the pure
//! [`Autoscaler`] asked what to run, the result written through the Deployment's scale
//! subresource, and each change recorded (status, an Event, metrics).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        events::{Event, EventType, Recorder},
        reflector::Store,
    },
};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
};
use sluice_crds::{
    Pipeline,
    config::KafkaConfig,
    pipeline::{FunctionSpec, KafkaSpec, ScaleEvent, StartingPosition},
};

use crate::{
    autoscale::{Autoscaler, Policy, Reading},
    render::names,
};

/// What the loop knows of one function, for the controller's status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Lag at the last reading.
    pub lag: Option<i64>,
    /// Partitions of the source.
    pub partitions: Option<i32>,
    /// What the autoscaler asks for.
    pub desired: Option<i32>,
    /// The last change of replicas.
    pub last_scale: Option<ScaleEvent>,
}

struct Entry {
    autoscaler: Autoscaler,
    next: Instant,
    seen: Observation,
    /// A reading of this function is under way (each function is read on its own task, so a
    /// slow or unreachable cluster delays only its own functions).
    busy: bool,
}

/// Shared between the loop and the controller.
#[derive(Default)]
pub struct Scalers {
    entries: Mutex<HashMap<(String, String, String), Entry>>,
}

impl Scalers {
    /// What the loop last saw of a function.
    pub fn observation(&self, namespace: &str, pipeline: &str, function: &str) -> Option<Observation> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(&(namespace.to_owned(), pipeline.to_owned(), function.to_owned())).map(|e| e.seen.clone())
    }
}

/// librdkafka settings for reading a Pipeline's lag, credentials read from its Secrets: the
/// connection settings, only the allowed keys of the Pipeline's properties (this client runs in
/// the operator, with the operator's ServiceAccount), and the administrator's properties.
pub(crate) async fn kafka_properties(
    client: &Client,
    ns: &str,
    spec: &KafkaSpec,
    trusted: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut credentials = HashMap::new();
    if let Some(sasl) = &spec.sasl {
        let secret = secrets.get(&sasl.secret_ref.name).await?;
        for key in ["username", "password"] {
            let value =
                secret.data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).into_owned());
            let var = if key == "username" {
                sluice_crds::config::SASL_USERNAME_ENV
            } else {
                sluice_crds::config::SASL_PASSWORD_ENV
            };
            credentials.insert(var.to_string(), value.unwrap_or_default());
        }
    }
    let config = KafkaConfig { trusted_properties: trusted.clone(), ..KafkaConfig::from_spec(spec, None) };
    let mut props = config.operator_client_properties(|name| credentials.get(name).cloned())?;
    if let Some(ca) = spec.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        let secret = secrets.get(&ca.name).await?;
        let pem = secret.data.as_ref().and_then(|d| d.get(&ca.key)).map(|b| String::from_utf8_lossy(&b.0).into_owned());
        props.insert("ssl.ca.pem".into(), pem.unwrap_or_default());
    }
    Ok(props)
}

/// Which of `topics` the Pipeline's Kafka cluster does not have (one metadata request, with the
/// operator's narrowed client properties).
pub async fn missing_topics(
    client: &Client,
    ns: &str,
    spec: &KafkaSpec,
    trusted: &BTreeMap<String, String>,
    topics: &[String],
) -> anyhow::Result<Vec<String>> {
    let props = kafka_properties(client, ns, spec, trusted).await?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut c = ClientConfig::new();
        for (k, v) in &props {
            c.set(k, v);
        }
        let consumer: BaseConsumer = c.create()?;
        // Short: the reconcile waits for it.
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(5))?;
        let present: Vec<&str> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.name())
            .collect();
        Ok(topics.into_iter().filter(|t| !present.contains(&t.as_str())).collect())
    })
    .await?
}

/// Read a function's lag: the source's end offsets (last stable), its group's committed offsets.
/// A partition with no commit counts from `startingPosition`: from the start of the log for
/// `earliest`, from the end for `latest`. For `latest`, while the group has no members (the
/// function is at zero), the end is also committed for the group, so that records arriving
/// while the function is at zero are counted — and consumed once it starts. A group with
/// members is never written to: its runners commit their own starting positions when they are
/// assigned a partition, and a commit from outside could move the group past records a runner
/// is still working on.
fn read_lag(props: &BTreeMap<String, String>, group: &str, f: &FunctionSpec) -> Reading {
    match try_read_lag(props, group, f) {
        Ok(r) => r,
        Err(e) => Reading::Unavailable { reason: e.to_string() },
    }
}

fn try_read_lag(props: &BTreeMap<String, String>, group: &str, f: &FunctionSpec) -> anyhow::Result<Reading> {
    let mut c = ClientConfig::new();
    for (k, v) in props {
        c.set(k, v);
    }
    c.set("group.id", group).set("enable.auto.commit", "false").set("isolation.level", "read_committed");
    let consumer: BaseConsumer = c.create()?;
    let timeout = Duration::from_secs(10);
    let topic = &f.source.topic;
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let t = md.topics().first().ok_or_else(|| anyhow::anyhow!("no metadata for {topic}"))?;
    if let Some(e) = t.error() {
        anyhow::bail!("topic {topic}: {e:?}");
    }
    let partitions = t.partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let (mut lag, mut ends, mut initial) = (0i64, 0i64, TopicPartitionList::new());
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, e.partition(), timeout)?;
        ends += high;
        let position = match e.offset() {
            Offset::Offset(o) => o,
            _ => match f.source.starting_position {
                StartingPosition::Earliest => low,
                StartingPosition::Latest => {
                    initial.add_partition_offset(topic, e.partition(), Offset::Offset(high))?;
                    high
                }
            },
        };
        lag += (high - position).max(0);
    }
    if initial.count() > 0 && group_is_empty(&consumer, group, timeout) {
        // Best effort: a runner joining meanwhile makes the broker refuse it, and the runner
        // then commits its own starting position.
        if let Err(e) = consumer.commit(&initial, CommitMode::Sync) {
            tracing::debug!(group, error = %e, "committing the starting position of an empty group");
        }
    }
    Ok(Reading::Lag { lag, partitions, end_offsets: ends })
}

/// Whether the group has no members (it does not exist yet, or every runner left). Unknown
/// counts as not empty: then nothing is committed.
fn group_is_empty(consumer: &BaseConsumer, group: &str, timeout: Duration) -> bool {
    match consumer.fetch_group_list(Some(group), timeout) {
        Ok(list) => list.groups().iter().filter(|g| g.name() == group).all(|g| g.members().is_empty()),
        Err(_) => false,
    }
}

/// Run the loop until the process stops: scale the functions whose poll is due.
pub async fn run(
    client: Client,
    store: Store<Pipeline>,
    scalers: Arc<Scalers>,
    recorder: Recorder,
    metrics: Arc<crate::server::Metrics>,
    settings: crate::render::Settings,
) {
    let started = Instant::now();
    let trusted = Arc::new(settings.kafka_properties);
    // A fine tick, so that each function is read close to every `pollInterval` (a reading that
    // is still running when its next one falls due is followed at the next tick, not a second
    // later).
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for pipeline in store.state() {
            let ns = pipeline.namespace().unwrap_or_default();
            let name = pipeline.name_any();
            for f in &pipeline.spec.functions {
                let key = (ns.clone(), name.clone(), f.name.clone());
                let policy = Policy::from(&f.scaling);
                let due = {
                    let mut entries = scalers.entries.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
                        autoscaler: Autoscaler::new(policy.clone()),
                        next: Instant::now(),
                        seen: Observation::default(),
                        busy: false,
                    });
                    if entry.autoscaler.policy() != &policy {
                        entry.autoscaler.set_policy(policy.clone());
                    }
                    let due = !entry.busy && entry.next <= Instant::now();
                    if due {
                        entry.next = Instant::now() + f.scaling.poll_interval.get();
                        entry.busy = true;
                    }
                    due
                };
                if due {
                    let (pipeline, f) = (pipeline.clone(), f.clone());
                    let loop_ = Loop {
                        client: client.clone(),
                        scalers: scalers.clone(),
                        recorder: recorder.clone(),
                        metrics: metrics.clone(),
                        trusted: trusted.clone(),
                        started,
                    };
                    tokio::spawn(async move {
                        if let Err(e) = scale(&loop_, &pipeline, &f).await {
                            tracing::warn!(pipeline = %pipeline.name_any(), function = %f.name, error = %e, "autoscaling");
                        }
                        let mut entries = loop_.scalers.entries.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(entry) = entries.get_mut(&key) {
                            entry.busy = false;
                        }
                    });
                }
            }
        }
        // Forget functions that are gone.
        let live: Vec<(String, String, String)> = store
            .state()
            .iter()
            .flat_map(|p| {
                let (ns, name) = (p.namespace().unwrap_or_default(), p.name_any());
                p.spec.functions.iter().map(move |f| (ns.clone(), name.clone(), f.name.clone())).collect::<Vec<_>>()
            })
            .collect();
        scalers.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| {
            let keep = live.contains(k);
            if !keep {
                metrics.forget(&k.0, &k.1, &k.2);
            }
            keep
        });
    }
}

/// What one reading of one function needs of the loop.
struct Loop {
    client: Client,
    scalers: Arc<Scalers>,
    recorder: Recorder,
    metrics: Arc<crate::server::Metrics>,
    /// The administrator's Kafka properties.
    trusted: Arc<BTreeMap<String, String>>,
    started: Instant,
}

async fn scale(loop_: &Loop, pipeline: &Pipeline, f: &FunctionSpec) -> anyhow::Result<()> {
    let Loop { client, scalers, recorder, metrics, trusted, started } = loop_;
    let ns = pipeline.namespace().unwrap_or_default();
    let name = pipeline.name_any();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment_name = names::function(&name, &f.name);
    let Some(deployment) = deployments.get_opt(&deployment_name).await? else { return Ok(()) };
    let current = deployment.spec.replicas.unwrap_or(1);
    let group = format!("{ns}.{name}.{}", f.name);
    let reading = match kafka_properties(client, &ns, &pipeline.spec.kafka, trusted).await {
        Ok(props) => {
            let f = f.clone();
            tokio::task::spawn_blocking(move || read_lag(&props, &group, &f))
                .await
                .unwrap_or_else(|e| Reading::Unavailable { reason: e.to_string() })
        }
        Err(e) => Reading::Unavailable { reason: format!("Kafka credentials: {e}") },
    };
    let decision = {
        let mut entries = scalers.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = entries.get_mut(&(ns.clone(), name.clone(), f.name.clone())) else { return Ok(()) };
        let d = entry.autoscaler.decide(started.elapsed(), current, &reading);
        if let Reading::Lag { lag, partitions, .. } = &reading {
            entry.seen.lag = Some(*lag);
            entry.seen.partitions = Some(*partitions);
        }
        entry.seen.desired = Some(d.desired);
        d
    };
    metrics.reading(&ns, &name, &f.name, if let Reading::Lag { lag, .. } = &reading { Some(*lag) } else { None });
    if decision.desired == current {
        metrics.replicas(&ns, &name, &f.name, current, decision.desired);
        return Ok(());
    }
    tracing::info!(pipeline = %name, function = %f.name, from = current, to = decision.desired, reason = %decision.reason, "scaling");
    let patch = serde_json::json!({"spec": {"replicas": decision.desired}});
    deployments.patch_scale(&deployment_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    metrics.replicas(&ns, &name, &f.name, decision.desired, decision.desired);
    metrics.scaled(&ns, &name, &f.name, current, decision.desired);
    let event = ScaleEvent {
        time: Time(k8s_openapi::jiff::Timestamp::now()),
        from: current,
        to: decision.desired,
        reason: decision.reason.clone(),
    };
    {
        let mut entries = scalers.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get_mut(&(ns.clone(), name.clone(), f.name.clone())) {
            entry.seen.last_scale = Some(event);
        }
    }
    let note = format!("function {}: {current} → {} replicas ({})", f.name, decision.desired, decision.reason);
    let ev = Event {
        type_: EventType::Normal,
        reason: "Scaled".into(),
        note: Some(note),
        action: "Scale".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &pipeline.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an Event");
    }
    Ok(())
}
