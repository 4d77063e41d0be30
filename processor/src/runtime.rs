//! One processor replica: the engine's queries over Kafka. Owns partitions `p mod replicas ==
//! ordinal` of every topic it reads (`assign()`, no rebalancing), processes buffered records in
//! timestamp order across its partitions, and commits outputs with the input offsets in one Kafka
//! transaction per commit interval (exactly-once), or produces idempotently and commits offsets
//! afterwards (at-least-once).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::{ClientContext, DefaultClientContext},
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext},
    message::{Header, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, Producer},
    statistics::Statistics,
};
use sluice_crds::config::{ProcessorConfig, TopicCreation};
use sluice_engine::{Engine, PUSH_PREFIX, PushQuery, Record};
use tracing::{info, warn};

use crate::state::RocksStore;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The longest an empty partition with records still on the broker holds the others back.
const FETCH_WAIT: Duration = Duration::from_secs(30);

/// Counters exported on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Records read.
    pub records_in: Counter,
    /// Records written by queries.
    pub records_out: Counter,
    /// Records skipped with an error (also in the processing log).
    pub processing_errors: Counter,
    /// Transactions (or offset commits) completed.
    pub commits: Counter,
    /// Changelog records applied while restoring state.
    pub restored: Counter,
    /// Records read, per source topic (a query's input rate, for the live view).
    pub topic_in: Family<Vec<(&'static str, String)>, Counter>,
    /// Records written, per sink topic.
    pub topic_out: Family<Vec<(&'static str, String)>, Counter>,
    /// Bytes each state store holds on disk and in memory (RocksDB's estimate), refreshed every
    /// few seconds.
    pub store_bytes: Family<Vec<(&'static str, String)>, Gauge>,
}

/// How often the stores' sizes are read.
const STORE_SIZES_EVERY: Duration = Duration::from_secs(5);

/// The consumer's context: per partition, from librdkafka's statistics (every 100 ms), the last
/// stable offset and the offset after the last record handed to the processor, so an empty
/// partition holds the others back only while the broker has records of it to fetch.
#[derive(Default)]
pub struct Lag(Mutex<HashMap<(String, i32), (i64, i64)>>);

impl ClientContext for Lag {
    fn stats(&self, statistics: Statistics) {
        let Ok(mut lag) = self.0.lock() else { return };
        for (name, topic) in statistics.topics {
            for (_, p) in topic.partitions {
                if p.partition >= 0 {
                    // Before any record of it was handed over: an empty partition is at its
                    // end; otherwise the start is the committed offset (the fetch position
                    // runs ahead of what was handed over, so it cannot tell).
                    let handed = if p.app_offset >= 0 {
                        p.app_offset
                    } else if p.hi_offset >= 0 && p.hi_offset == p.lo_offset {
                        p.hi_offset
                    } else {
                        p.committed_offset
                    };
                    lag.insert((name.clone(), p.partition), (p.ls_offset, handed));
                }
            }
        }
    }
}

impl ConsumerContext for Lag {}

impl Lag {
    /// Whether the broker has nothing more of this partition (`false` while unknown).
    fn caught_up(&self, topic: &str, partition: i32) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|l| l.get(&(topic.to_owned(), partition)).copied())
            .is_some_and(|(stable, handed)| stable >= 0 && handed >= stable)
    }
}

/// Where a push query's rows go.
pub type PushSender = tokio::sync::mpsc::Sender<Vec<serde_json::Value>>;

/// What the HTTP side shares with the processing loop.
pub struct Shared {
    /// The engine: the loop processes records with it, the HTTP side runs pull queries.
    pub engine: Mutex<Engine<RocksStore>>,
    /// Set once partitions are assigned and the producer is ready.
    pub ready: AtomicBool,
    /// Set to stop: the loop commits what it has and returns.
    pub stop: AtomicBool,
    /// Counters.
    pub metrics: Metrics,
    /// The Prometheus registry holding them.
    pub registry: Registry,
    /// `applicationId`.
    pub application_id: String,
    /// Replicas of the StatefulSet.
    pub replicas: i32,
    /// This replica's ordinal.
    pub ordinal: i32,
    /// Peer HTTP addresses by ordinal.
    pub peers: Vec<String>,
    /// Partition counts of the topics, once known.
    pub partitions: Mutex<BTreeMap<String, i32>>,
    /// Push queries' clients, by the topic name their outputs carry.
    pub push: Mutex<HashMap<String, (PushQuery, PushSender)>>,
    /// The repartition topics, with the inputs whose partition count they take.
    pub repartition_topics: Vec<(String, Vec<String>)>,
    /// Source topics the start waits for (they do not exist and nothing in the Pipeline writes
    /// them); `/readyz` names them.
    pub waiting_for: Mutex<Vec<String>>,
}

impl Shared {
    /// Build the engine from the config's SQL and properties.
    pub fn new(config: &ProcessorConfig, ordinal: i32) -> anyhow::Result<Arc<Shared>> {
        let path = std::path::Path::new(&config.state_dir).join(&config.application_id);
        let mut engine = Engine::new(RocksStore::open(&path)?);
        // Outputs come back through Kafka, so every query reads only what it owns.
        engine.chain = false;
        for (k, v) in &config.properties {
            engine.set_property(k, v).map_err(|e| anyhow!("properties.{k}: {e}"))?;
        }
        engine.execute_script(&config.sql).map_err(|e| anyhow!("sql: {e}"))?;
        // Re-keyed streams go through repartition topics, with any replica count, so the state
        // layout does not depend on how many replicas there are.
        let repartition_topics = engine.use_repartition_topics(&format!("{}-", config.application_id));
        let metrics = Metrics::default();
        let mut registry = Registry::with_prefix_and_labels(
            "sluice_processor",
            [(std::borrow::Cow::Borrowed("pipeline"), std::borrow::Cow::Owned(config.application_id.clone()))]
                .into_iter(),
        );
        registry.register("records_in", "Records read from source topics", metrics.records_in.clone());
        registry.register("records_out", "Records written by queries", metrics.records_out.clone());
        registry.register(
            "processing_errors",
            "Records skipped with an error (see the processing-log topic)",
            metrics.processing_errors.clone(),
        );
        registry.register("commits", "Transactions or offset commits completed", metrics.commits.clone());
        registry.register("restored", "Changelog records applied while restoring state", metrics.restored.clone());
        registry.register("topic_records_in", "Records read, per source topic", metrics.topic_in.clone());
        registry.register("topic_records_out", "Records written by queries, per sink topic", metrics.topic_out.clone());
        registry.register("store_bytes", "Size of each state store (RocksDB's estimate)", metrics.store_bytes.clone());
        Ok(Arc::new(Shared {
            engine: Mutex::new(engine),
            ready: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            metrics,
            registry,
            application_id: config.application_id.clone(),
            replicas: config.replicas,
            ordinal,
            peers: config.peers.clone(),
            partitions: Mutex::new(BTreeMap::new()),
            push: Mutex::new(HashMap::new()),
            repartition_topics,
            waiting_for: Mutex::new(Vec::new()),
        }))
    }
}

fn client_config(config: &ProcessorConfig) -> anyhow::Result<ClientConfig> {
    let props = config.kafka.client_properties(|name| std::env::var(name).ok())?;
    let mut c = ClientConfig::new();
    for (k, v) in props {
        c.set(k, v);
    }
    Ok(c)
}

/// Partition counts of every topic the cluster has.
fn partition_counts<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> anyhow::Result<BTreeMap<String, i32>> {
    let metadata = consumer.fetch_metadata(None, TIMEOUT).context("fetching topic metadata")?;
    Ok(metadata.topics().iter().map(|t| (t.name().to_owned(), t.partitions().len() as i32)).collect())
}

/// A topic a start creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopicPlan {
    /// Its name.
    pub topic: String,
    /// Its partitions.
    pub partitions: i32,
    /// Its replication factor; `None`: the processor's (`ksql.sink.replicas`, else the broker's).
    pub replication: Option<i32>,
}

/// What a start needs of the cluster's topics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicPlan {
    /// Topics to create, in order.
    pub create: Vec<NewTopicPlan>,
    /// Sources nothing in the Pipeline writes and the cluster does not have (yet): the start
    /// waits for them, creating nothing.
    pub missing: Vec<String>,
}

/// Plan the topics of a start from the counts the cluster has. Each topic is planned with the
/// partitions of the topics it derives from, counting those created earlier in the same plan:
/// a query that reads another query's sink (CSAS → grouped CTAS, join → aggregate) gets the
/// partitions that sink is created with, not the 1 of a topic not yet there (which made every
/// later start refuse the repartition topic it had created); a function's output that the SQL
/// reads (`functions`) gets its spec's partitions or those of the function's source, which may
/// itself be a sink of this plan.
pub fn plan_topics<S: sluice_engine::store::StateStore>(
    engine: &Engine<S>,
    repartition_topics: &[(String, Vec<String>)],
    functions: &[sluice_crds::config::TopicSpec],
    counts: &BTreeMap<String, i32>,
    application_id: &str,
) -> anyhow::Result<TopicPlan> {
    let (read, written) = engine.topics();
    let from_functions = |t: &String| functions.iter().find(|f| &f.topic == t);
    let missing: Vec<String> = read
        .iter()
        .filter(|t| !written.contains(t) && !counts.contains_key(*t) && from_functions(t).is_none())
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Ok(TopicPlan { create: Vec::new(), missing });
    }
    // What each topic has, or will have once this plan is carried out.
    let mut planned = counts.clone();
    let mut create: Vec<NewTopicPlan> = Vec::new();
    let want = |planned: &mut BTreeMap<String, i32>, create: &mut Vec<NewTopicPlan>, topic: &str, n: i32, r| {
        planned.insert(topic.to_owned(), n);
        create.push(NewTopicPlan { topic: topic.to_owned(), partitions: n, replication: r });
    };
    // Sinks and the function topics the SQL reads depend on each other (a sink feeds a function
    // whose output a later query reads): plan whatever has its inputs planned, until nothing
    // changes. A sink gets the partition count of its query's inputs (ksqlDB's default) unless
    // its WITH clause names one.
    loop {
        let mut changed = false;
        for f in functions {
            if !read.contains(&f.topic) || planned.contains_key(&f.topic) {
                continue;
            }
            let n = match (f.partitions, &f.partitions_of) {
                (Some(n), _) => Some(n),
                (None, Some(of)) => planned.get(of).copied().or((!written.contains(of)).then_some(1)),
                (None, None) => Some(1),
            };
            if let Some(n) = n {
                want(&mut planned, &mut create, &f.topic, n, f.replication_factor);
                changed = true;
            }
        }
        for q in &engine.queries {
            let Some(sink) = engine.catalog.get(&q.sink) else { continue };
            if planned.contains_key(&sink.topic) || !q.inputs.iter().all(|t| planned.contains_key(t)) {
                continue;
            }
            let n = sink.partitions.or_else(|| q.inputs.iter().filter_map(|t| planned.get(t).copied()).max());
            want(&mut planned, &mut create, &sink.topic, n.unwrap_or(1), sink.replicas.map(i32::from));
            changed = true;
        }
        if !changed {
            break;
        }
    }
    if let Some(q) = engine.queries.iter().find(|q| q.inputs.iter().any(|t| !planned.contains_key(t))) {
        bail!(
            "query {}: its inputs feed each other in a cycle no topic breaks; create one of them: {:?}",
            q.id,
            q.inputs
        );
    }
    for q in &engine.queries {
        if q.inputs.len() == 2 {
            let (a, b) = (planned.get(&q.inputs[0]), planned.get(&q.inputs[1]));
            if let (Some(a), Some(b)) = (a, b)
                && a != b
            {
                bail!(
                    "query {}: the join's sources are not co-partitioned: '{}' has {a} partitions, '{}' has {b}",
                    q.id,
                    q.inputs[0],
                    q.inputs[1]
                );
            }
        }
    }
    // A repartition topic takes the partition count of its query's inputs.
    for (topic, inputs) in repartition_topics {
        let partitions = inputs.iter().filter_map(|t| planned.get(t).copied()).max().unwrap_or(1);
        match counts.get(topic) {
            Some(n) if *n != partitions => bail!(
                "the repartition topic '{topic}' has {n} partitions and its query's inputs {partitions}; \
                 delete it (it holds only records in flight) or recreate the inputs"
            ),
            Some(_) => {}
            None => want(&mut planned, &mut create, topic, partitions, None),
        }
    }
    let log = format!("{application_id}-processing-log");
    if !planned.contains_key(&log) {
        want(&mut planned, &mut create, &log, 1, None);
    }
    let changelog = format!("{application_id}-changelog");
    let max_partitions = read.iter().filter_map(|t| planned.get(t).copied()).max().unwrap_or(1);
    match counts.get(&changelog) {
        Some(n) if *n < max_partitions => {
            bail!("the changelog topic '{changelog}' has {n} partitions, fewer than the sources' {max_partitions}")
        }
        Some(_) => {}
        None => want(&mut planned, &mut create, &changelog, max_partitions, None),
    }
    Ok(TopicPlan { create, missing: Vec::new() })
}

/// Check the sources, create the sinks and the processing log; returns partition counts.
fn prepare_topics(
    config: &ProcessorConfig,
    shared: &Shared,
    consumer: &BaseConsumer<Lag>,
) -> anyhow::Result<BTreeMap<String, i32>> {
    let mut counts = partition_counts(consumer)?;
    let replication = match config.properties.get("ksql.sink.replicas").or(config.properties.get("replication.factor"))
    {
        Some(r) => r.parse::<i32>().map_err(|_| anyhow!("properties: replication factor {r:?} is not a number"))?,
        None => -1,
    };
    // Sources nothing in the Pipeline writes may appear later (created by hand, by another
    // team, by an operator like Strimzi's): wait for them, saying which, instead of exiting into
    // a crash loop.
    let mut announced = Vec::new();
    let plan = loop {
        let plan = plan_topics(
            &*shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?,
            &shared.repartition_topics,
            &config.function_topics,
            &counts,
            &config.application_id,
        )?;
        *shared.waiting_for.lock().map_err(|_| anyhow!("lock poisoned"))? = plan.missing.clone();
        if plan.missing.is_empty() {
            break plan;
        }
        if plan.missing != announced {
            warn!(topics = ?plan.missing, "waiting for source topics that do not exist (nothing in the Pipeline writes them)");
            announced = plan.missing.clone();
        }
        for _ in 0..20 {
            if shared.stop.load(Ordering::SeqCst) {
                bail!("stopped while waiting for source topics {:?}", plan.missing);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A broker that does not answer for a moment is no reason to exit: wait on.
        match partition_counts(consumer) {
            Ok(c) => counts = c,
            Err(e) => warn!(error = %e, "reading topic metadata while waiting for source topics; retrying"),
        }
    };
    if !announced.is_empty() {
        info!("every source topic exists now");
    }
    let wanted: Vec<(String, i32)> = plan.create.iter().map(|t| (t.topic.clone(), t.partitions)).collect();
    let replication_of =
        |name: &str| plan.create.iter().find(|t| t.topic == name).and_then(|t| t.replication).unwrap_or(replication);
    let changelog = changelog_topic(config);
    if !wanted.is_empty() && config.topic_creation == TopicCreation::AutoCreate {
        // A cluster that creates topics on first use (the demo's embedded Kafka, which has no
        // admin API): asking for their metadata creates them, with its default partitions.
        let auto: BaseConsumer = client_config(config)?.set("allow.auto.create.topics", "true").create()?;
        for (name, _) in &wanted {
            auto.fetch_metadata(Some(name), TIMEOUT).with_context(|| format!("creating topic '{name}'"))?;
            info!(topic = %name, "asked the cluster to create topic");
        }
    } else if !wanted.is_empty() {
        let admin: AdminClient<DefaultClientContext> = client_config(config)?.create()?;
        let topics: Vec<NewTopic<'_>> = wanted
            .iter()
            .map(|(name, partitions)| {
                let topic = NewTopic::new(name, *partitions, TopicReplication::Fixed(replication_of(name)));
                if *name == changelog { topic.set("cleanup.policy", "compact") } else { topic }
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        for result in rt.block_on(admin.create_topics(&topics, &AdminOptions::new()))? {
            match result {
                Ok(name) => info!(topic = %name, "created topic"),
                Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    info!(topic = %name, "topic exists")
                }
                Err((name, code)) => bail!("creating topic '{name}': {code}"),
            }
        }
    }
    if !wanted.is_empty() {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            counts = partition_counts(consumer)?;
            if wanted.iter().all(|(t, _)| counts.contains_key(t)) {
                // A topic made meanwhile by someone else with another count would be refused by
                // the next start (repartition, changelog) or break co-partitioning: say so now.
                if config.topic_creation != TopicCreation::AutoCreate
                    && let Some((t, n)) = wanted.iter().find(|(t, n)| counts.get(t).is_some_and(|c| c != n))
                {
                    bail!(
                        "topic '{t}' has {} partitions where this Pipeline needs {n}; it was created meanwhile \
                         with another count: delete it or recreate it with {n}",
                        counts[t]
                    );
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("created topics did not appear in the metadata within {TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(counts)
}

/// `<applicationId>-changelog`: every store's changes, partitioned like the inputs.
pub fn changelog_topic(config: &ProcessorConfig) -> String {
    format!("{}-changelog", config.application_id)
}

/// A partition's low and high watermarks, waiting out what a topic created a moment ago goes
/// through (no leader yet, not yet in the metadata) for up to [`TIMEOUT`].
fn watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> anyhow::Result<(i64, i64)> {
    use rdkafka::{error::KafkaError, types::RDKafkaErrorCode::*};
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match consumer.fetch_watermarks(topic, partition, TIMEOUT) {
            Ok(w) => return Ok(w),
            Err(KafkaError::MetadataFetch(
                NotLeaderForPartition | LeaderNotAvailable | UnknownTopicOrPartition | UnknownPartition,
            )) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("reading the offsets of {topic}-{partition}")),
        }
    }
}

/// Rebuild the owned partitions' state from the changelog: from the checkpoint of a clean stop,
/// else (a crash, or no state) from the beginning into an emptied database.
fn restore(config: &ProcessorConfig, shared: &Shared, partitions: &[i32]) -> anyhow::Result<()> {
    let topic = changelog_topic(config);
    let mut engine = shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?;
    let checkpoint = engine.store.take_checkpoint()?;
    if checkpoint.is_none() {
        engine.store.wipe()?;
    }
    let consumer: BaseConsumer = client_config(config)?
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("group.id", format!("{}-restore", config.application_id))
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in partitions {
        let (low, high) = watermarks(&consumer, &topic, *p)?;
        let from = checkpoint.as_ref().and_then(|c| c.get(p).copied());
        if from.unwrap_or(low) >= high {
            continue;
        }
        ends.insert(*p, high);
        tpl.add_partition_offset(&topic, *p, from.map_or(Offset::Beginning, Offset::Offset))?;
    }
    let started = Instant::now();
    let mut restored = 0u64;
    if !ends.is_empty() {
        info!(partitions = ends.len(), from_checkpoint = checkpoint.is_some(), "restoring state from {topic}");
        consumer.assign(&tpl)?;
        // Up to where each partition was applied, from the records themselves; the consumer's
        // positions (which also pass transaction markers) are asked when the records pause.
        let mut applied: BTreeMap<i32, i64> = BTreeMap::new();
        loop {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let key = m.key().unwrap_or_default();
                    engine.store.restore(m.partition(), key, m.payload())?;
                    applied.insert(m.partition(), m.offset() + 1);
                    restored += 1;
                    shared.metrics.restored.inc();
                    if restored.is_multiple_of(100_000) {
                        info!(records = restored, "restoring");
                        if shared.stop.load(Ordering::SeqCst) {
                            bail!("stopped while restoring");
                        }
                    }
                    if !ends.iter().all(|(p, end)| applied.get(p).is_some_and(|o| o >= end)) {
                        continue;
                    }
                }
                Some(Err(e)) => warn!(error = %e, "restore consumer error"),
                None => {}
            }
            if ends.iter().all(|(p, end)| applied.get(p).is_some_and(|o| o >= end)) {
                break;
            }
            let positions = consumer.position()?;
            let done = ends.iter().all(|(p, end)| {
                positions
                    .find_partition(&topic, *p)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o >= *end),
                        _ => None,
                    })
                    .unwrap_or(false)
            });
            if done {
                break;
            }
            if shared.stop.load(Ordering::SeqCst) {
                bail!("stopped while restoring");
            }
        }
    }
    engine.store.finish_restore()?;
    info!(records = restored, elapsed_ms = started.elapsed().as_millis() as u64, "state restored");
    Ok(())
}

/// Run the replica until `shared.stop` is set.
pub fn run(config: &ProcessorConfig, ordinal: i32, shared: Arc<Shared>) -> anyhow::Result<()> {
    if config.replicas < 1 || ordinal < 0 || ordinal >= config.replicas {
        bail!("ordinal {ordinal} is outside 0..{} (replicas)", config.replicas);
    }
    {
        let engine = shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?;
        if config.replicas > 1
            && let Some(q) = engine.queries.iter().find(|q| q.needs_repartition())
        {
            bail!("query {} re-groups a table, which keeps its state in one partition: it needs replicas: 1", q.id);
        }
    }
    let reset = config.properties.get("auto.offset.reset").cloned().unwrap_or_else(|| "earliest".into());
    let consumer: BaseConsumer<Lag> = client_config(config)?
        .set("group.id", &config.application_id)
        // The consumer's lag per partition, for the idle wait (see `Lag`).
        .set("statistics.interval.ms", "100")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", &reset)
        .create_with_context(Lag::default())
        .context("creating the consumer")?;
    let counts = prepare_topics(config, &shared, &consumer)?;
    *shared.partitions.lock().map_err(|_| anyhow!("lock poisoned"))? = counts.clone();
    let repartition_topics: std::collections::BTreeSet<String> =
        shared.repartition_topics.iter().map(|(t, _)| t.clone()).collect();
    shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?.repartition_partitions =
        repartition_topics.iter().filter_map(|t| counts.get(t).map(|n| (t.clone(), *n))).collect();
    let (read, _) = shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?.topics();
    let mut assignment = TopicPartitionList::new();
    let mut owned: Vec<(String, i32)> = Vec::new();
    for topic in &read {
        let n = counts.get(topic).copied().unwrap_or(0);
        for p in (0..n).filter(|p| p % config.replicas == ordinal) {
            assignment.add_partition_offset(topic, p, Offset::Stored)?;
            owned.push((topic.clone(), p));
        }
    }
    consumer.assign(&assignment).context("assigning partitions")?;
    info!(partitions = owned.len(), ordinal, replicas = config.replicas, "assigned partitions");

    let mut producer_config = client_config(config)?;
    producer_config.set("partitioner", "murmur2_random").set("enable.idempotence", "true").set("linger.ms", "5");
    if config.exactly_once {
        producer_config
            .set("transactional.id", format!("{}-{ordinal}", config.application_id))
            .set("transaction.timeout.ms", "60000");
    }
    let producer: BaseProducer = producer_config.create().context("creating the producer")?;
    if config.exactly_once {
        // Fences a previous incarnation and aborts its open transaction, so the changelog's
        // committed records are final before they are restored.
        producer.init_transactions(TIMEOUT).context("initialising transactions")?;
    }
    let changelog = changelog_topic(config);
    let changelog_partitions: Vec<i32> =
        (0..counts.get(&changelog).copied().unwrap_or(0)).filter(|p| p % config.replicas == ordinal).collect();
    restore(config, &shared, &changelog_partitions)?;
    if config.exactly_once {
        producer.begin_transaction()?;
    }
    shared.ready.store(true, Ordering::SeqCst);
    let log_topic = format!("{}-processing-log", config.application_id);
    // Kafka Streams' `max.task.idle.ms` (default 0): how long a caught-up empty partition is
    // waited for. One with records still on the broker (or not known yet) is always waited for,
    // up to `FETCH_WAIT` so that a partition that cannot be fetched does not stop the others.
    let idle =
        Duration::from_millis(config.properties.get("max.task.idle.ms").and_then(|v| v.parse().ok()).unwrap_or(0));
    let commit_every = config.commit_interval.get();

    // Per owned partition, by its index in `owned`: buffered records, since when it is empty,
    // and the next offset to commit.
    let mut slot: HashMap<String, Vec<Option<usize>>> = HashMap::new();
    for (i, (topic, p)) in owned.iter().enumerate() {
        let slots = slot.entry(topic.clone()).or_default();
        let p = *p as usize;
        if slots.len() <= p {
            slots.resize(p + 1, None);
        }
        slots[p] = Some(i);
    }
    let tasks = owned.iter().map(|(_, p)| *p as usize + 1).max().unwrap_or(1);
    // The per-topic counters, by partition index (no lookup per record) and by sink topic.
    let topic_in: Vec<Counter> =
        owned.iter().map(|(t, _)| shared.metrics.topic_in.get_or_create(&vec![("topic", t.clone())]).clone()).collect();
    let mut topic_out: HashMap<String, Counter> = HashMap::new();
    let mut sizes_read = Instant::now() - STORE_SIZES_EVERY;
    let mut queues: Vec<VecDeque<Record>> = vec![VecDeque::new(); owned.len()];
    let mut empty_since: Vec<Instant> = vec![Instant::now(); owned.len()];
    let mut positions: Vec<Option<i64>> = vec![None; owned.len()];
    let mut last_commit = Instant::now();
    let mut pending = 0usize;
    // Whether the last pass was held back by an empty partition: the next poll then waits a
    // little for records instead of spinning.
    let mut held = false;
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        // Fetch what is there.
        let mut fetched = 0;
        while fetched < 10_000 {
            let timeout = if fetched == 0 && queues.iter().all(VecDeque::is_empty) && !stopping {
                Duration::from_millis(50)
            } else if fetched == 0 && held && !stopping {
                Duration::from_millis(5)
            } else {
                Duration::ZERO
            };
            match consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    warn!(error = %e, "consumer error");
                    break;
                }
                Some(Ok(m)) => {
                    fetched += 1;
                    // Not rdkafka's `headers()`: it panics on a key that is not UTF-8.
                    let headers = sluice_kafka::headers(&m);
                    let rec = Record {
                        topic: m.topic().to_owned(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        timestamp: m.timestamp().to_millis().unwrap_or(0),
                        partition: m.partition(),
                        offset: m.offset(),
                        headers,
                    };
                    let Some(i) = slot.get(&rec.topic).and_then(|s| s.get(rec.partition as usize).copied().flatten())
                    else {
                        continue;
                    };
                    queues[i].push_back(rec);
                }
            }
        }
        // Process in timestamp order while every partition has data or has idled long enough.
        // An empty partition holds the others back while the broker has records of it not
        // fetched yet (or its lag is not known yet), as Kafka Streams does (KIP-695), so records
        // are processed in timestamp order across partitions; a caught-up one holds them back
        // for `max.task.idle.ms` only.
        let now = Instant::now();
        let mut caught_up: Vec<Option<bool>> = vec![None; owned.len()];
        loop {
            // Partitions with the same number form a task (co-partitioned join inputs, a
            // query's input and its repartition topic): an empty one holds back its task only.
            let mut held_task = vec![false; tasks];
            if !stopping {
                for (i, q) in queues.iter().enumerate() {
                    let task = owned[i].1 as usize;
                    if q.is_empty() && !held_task[task] && now.duration_since(empty_since[i]) < FETCH_WAIT {
                        let done = *caught_up[i].get_or_insert_with(|| {
                            let (topic, p) = &owned[i];
                            consumer.context().caught_up(topic, *p)
                        });
                        held_task[task] = !done || now.duration_since(empty_since[i]) < idle;
                    }
                }
            }
            let mut next: Option<(i64, usize)> = None;
            for (i, q) in queues.iter().enumerate() {
                if held_task[owned[i].1 as usize] {
                    continue;
                }
                if let Some(r) = q.front()
                    && next.is_none_or(|(t, _)| r.timestamp < t)
                {
                    next = Some((r.timestamp, i));
                }
            }
            held = next.is_none() && held_task.iter().any(|h| *h);
            let Some((_, i)) = next else { break };
            let Some(rec) = queues[i].pop_front() else { break };
            if queues[i].is_empty() {
                empty_since[i] = now;
                caught_up[i] = None;
            }
            shared.metrics.records_in.inc();
            topic_in[i].inc();
            let (timestamp, offset) = (rec.timestamp, rec.offset);
            let (outputs, errors, changes) = {
                let mut engine = shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?;
                let out = engine.process(rec);
                let errors = std::mem::take(&mut engine.errors);
                (out, errors, engine.store.take_changes())
            };
            for (partition, key, value) in changes {
                let change = Record {
                    topic: changelog.clone(),
                    key: Some(key),
                    value,
                    timestamp,
                    partition,
                    offset: 0,
                    headers: Vec::new(),
                };
                send_to(&producer, &change, Some(partition))?;
            }
            for out in outputs {
                if out.topic.starts_with(PUSH_PREFIX) {
                    deliver_push(&shared, &out)?;
                    continue;
                }
                if repartition_topics.contains(&out.topic) {
                    send_to(&producer, &out, Some(out.partition))?;
                    pending += 1;
                    continue;
                }
                send(&producer, &out)?;
                shared.metrics.records_out.inc();
                match topic_out.get(&out.topic) {
                    Some(c) => {
                        c.inc();
                    }
                    None => {
                        let c = shared.metrics.topic_out.get_or_create(&vec![("topic", out.topic.clone())]).clone();
                        c.inc();
                        topic_out.insert(out.topic.clone(), c);
                    }
                }
                pending += 1;
            }
            for e in errors {
                shared.metrics.processing_errors.inc();
                warn!(query = %e.query, topic = %e.topic, partition = e.partition, offset = e.offset, error = %e.message, "record skipped");
                let entry = serde_json::json!({
                    "query": e.query, "message": e.message,
                    "topic": e.topic, "partition": e.partition, "offset": e.offset,
                });
                let log = Record {
                    topic: log_topic.clone(),
                    key: None,
                    value: Some(entry.to_string().into_bytes()),
                    timestamp,
                    partition: 0,
                    offset: 0,
                    headers: Vec::new(),
                };
                send(&producer, &log)?;
            }
            positions[i] = Some(offset + 1);
            pending += 1;
        }
        producer.poll(Duration::ZERO);
        if pending > 0 && (last_commit.elapsed() >= commit_every || stopping || pending > 50_000) {
            // Stream time goes into the state (and its changelog) once per commit.
            let changes = {
                let mut engine = shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?;
                engine.save_stream_times();
                engine.store.take_changes()
            };
            for (partition, key, value) in changes {
                let change = Record {
                    topic: changelog.clone(),
                    key: Some(key),
                    value,
                    timestamp: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64),
                    partition,
                    offset: 0,
                    headers: Vec::new(),
                };
                send_to(&producer, &change, Some(partition))?;
            }
            let committed = commit(config, &producer, &consumer, &owned, &positions);
            let mut engine = shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?;
            if let Err(e) = committed {
                // The transaction's state changes never reached the changelog: drop them too.
                engine.store.rollback();
                return Err(e);
            }
            engine.store.commit()?;
            if sizes_read.elapsed() >= STORE_SIZES_EVERY {
                for (store, bytes) in engine.store.sizes() {
                    shared.metrics.store_bytes.get_or_create(&vec![("store", store)]).set(bytes);
                }
                sizes_read = Instant::now();
            }
            drop(engine);
            shared.metrics.commits.inc();
            pending = 0;
            last_commit = Instant::now();
        }
        if stopping {
            if config.exactly_once {
                producer.abort_transaction(TIMEOUT).ok();
            }
            // A clean stop: record how far the changelog goes, so the next start restores only
            // what follows.
            let mut checkpoint = BTreeMap::new();
            for p in &changelog_partitions {
                let (_, high) = watermarks(&consumer, &changelog, *p)?;
                checkpoint.insert(*p, high);
            }
            shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?.store.write_checkpoint(&checkpoint)?;
            info!("stopped: committed what was processed and checkpointed the state");
            return Ok(());
        }
    }
}

/// Hand a push query's output to its client; a client that went away ends its query.
fn deliver_push(shared: &Shared, out: &Record) -> anyhow::Result<()> {
    let mut push = shared.push.lock().map_err(|_| anyhow!("lock poisoned"))?;
    let Some((query, tx)) = push.get(&out.topic) else { return Ok(()) };
    let Some(row) = query.row(out) else { return Ok(()) };
    match tx.try_send(row) {
        Ok(()) => {}
        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
            warn!(query = %query.id, "push query client is too slow: a row was dropped");
        }
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
            let id = query.id.clone();
            push.remove(&out.topic);
            shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?.remove_query(&id);
            info!(query = %id, "push query ended");
        }
    }
    Ok(())
}

fn send(producer: &BaseProducer, rec: &Record) -> anyhow::Result<()> {
    send_to(producer, rec, None)
}

fn send_to(producer: &BaseProducer, rec: &Record, partition: Option<i32>) -> anyhow::Result<()> {
    let mut headers = OwnedHeaders::new();
    for (k, v) in &rec.headers {
        headers = headers.insert(Header { key: k, value: v.as_deref() });
    }
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&rec.topic).timestamp(rec.timestamp).headers(headers);
    if let Some(k) = &rec.key {
        record = record.key(k.as_slice());
    }
    if let Some(v) = &rec.value {
        record = record.payload(v.as_slice());
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    let mut record = record;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                producer.poll(Duration::from_millis(10));
                record = r;
            }
            Err((e, _)) => return Err(anyhow!("producing to '{}': {e}", rec.topic)),
        }
    }
}

fn commit(
    config: &ProcessorConfig,
    producer: &BaseProducer,
    consumer: &BaseConsumer<Lag>,
    owned: &[(String, i32)],
    positions: &[Option<i64>],
) -> anyhow::Result<()> {
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in owned.iter().zip(positions) {
        if let Some(offset) = offset {
            offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
    }
    if config.exactly_once {
        let group = consumer.group_metadata().ok_or_else(|| anyhow!("the consumer has no group metadata"))?;
        producer
            .send_offsets_to_transaction(&offsets, &group, TIMEOUT)
            .context("sending offsets to the transaction")?;
        producer.commit_transaction(TIMEOUT).context("committing the transaction")?;
        producer.begin_transaction()?;
    } else {
        producer.flush(TIMEOUT).context("flushing the producer")?;
        consumer.commit(&offsets, CommitMode::Sync).context("committing offsets")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN: &str = "
        CREATE TABLE USERS (userid VARCHAR PRIMARY KEY, region VARCHAR) WITH (kafka_topic='users', value_format='json');
        CREATE STREAM TRADES (userid VARCHAR KEY, symbol VARCHAR, qty INT) WITH (kafka_topic='trades', value_format='json');
        CREATE STREAM ENRICHED AS SELECT t.userid AS userid, t.symbol AS symbol, t.qty AS qty, u.region AS region
          FROM TRADES t JOIN USERS u ON t.userid = u.userid;
        CREATE STREAM BIG AS SELECT * FROM ENRICHED WHERE qty > 10;
        CREATE TABLE PER_REGION AS SELECT region, COUNT(*) AS n, SUM(qty) AS q FROM BIG GROUP BY region;";

    fn plan_with(
        sql: &str,
        functions: &[sluice_crds::config::TopicSpec],
        counts: &[(&str, i32)],
    ) -> anyhow::Result<TopicPlan> {
        let mut engine = Engine::default();
        engine.chain = false;
        engine.execute_script(sql).map_err(|e| anyhow!("{e}"))?;
        let repartition = engine.use_repartition_topics("app-");
        let counts: BTreeMap<String, i32> = counts.iter().map(|(t, n)| (t.to_string(), *n)).collect();
        plan_topics(&engine, &repartition, functions, &counts, "app")
    }

    fn plan(sql: &str, counts: &[(&str, i32)]) -> anyhow::Result<BTreeMap<String, i32>> {
        let p = plan_with(sql, &[], counts)?;
        if !p.missing.is_empty() {
            bail!("missing {:?}", p.missing);
        }
        Ok(p.create.into_iter().map(|t| (t.topic, t.partitions)).collect())
    }

    #[test]
    fn a_chain_plans_every_level_with_the_partitions_of_the_sources() {
        let wanted = plan(CHAIN, &[("users", 4), ("trades", 4)]).unwrap();
        let repartition: Vec<_> = wanted.iter().filter(|(t, _)| t.ends_with("-repartition")).collect();
        assert_eq!(repartition.len(), 1, "{wanted:?}");
        assert_eq!(*repartition[0].1, 4, "{wanted:?}");
        for topic in ["ENRICHED", "BIG", "PER_REGION", "app-changelog"] {
            assert_eq!(wanted.get(topic), Some(&4), "{topic}: {wanted:?}");
        }
        assert_eq!(wanted.get("app-processing-log"), Some(&1));
    }

    #[test]
    fn a_restart_of_a_chain_creates_nothing_and_refuses_nothing() {
        let first = plan(CHAIN, &[("users", 4), ("trades", 4)]).unwrap();
        let mut now: Vec<(&str, i32)> = vec![("users", 4), ("trades", 4)];
        now.extend(first.iter().map(|(t, n)| (t.as_str(), *n)));
        assert_eq!(plan(CHAIN, &now).unwrap(), BTreeMap::new());
    }

    #[test]
    fn a_repartition_topic_of_the_wrong_size_is_still_refused() {
        let first = plan(CHAIN, &[("users", 4), ("trades", 4)]).unwrap();
        let mut now: Vec<(String, i32)> = vec![("users".into(), 4), ("trades".into(), 4)];
        now.extend(first.iter().map(|(t, n)| (t.clone(), if t.ends_with("-repartition") { 1 } else { *n })));
        let now: Vec<(&str, i32)> = now.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        let e = plan(CHAIN, &now).unwrap_err().to_string();
        assert!(e.contains("has 1 partitions and its query's inputs 4"), "{e}");
    }

    #[test]
    fn a_sink_that_names_its_partitions_passes_them_down_the_chain() {
        let sql = "CREATE STREAM A (k VARCHAR KEY, v VARCHAR) WITH (kafka_topic='a', value_format='json');
                   CREATE STREAM B WITH (partitions = 6) AS SELECT * FROM A;
                   CREATE TABLE C AS SELECT v, COUNT(*) AS n FROM B GROUP BY v;";
        let wanted = plan(sql, &[("a", 2)]).unwrap();
        assert_eq!(wanted.get("B"), Some(&6));
        assert_eq!(wanted.get("C"), Some(&6));
        assert_eq!(wanted.iter().find(|(t, _)| t.ends_with("-repartition")).map(|(_, n)| *n), Some(6));
        assert_eq!(wanted.get("app-changelog"), Some(&6));
    }

    #[test]
    fn a_missing_source_is_waited_for_and_nothing_is_created_meanwhile() {
        let p = plan_with(CHAIN, &[], &[("users", 4)]).unwrap();
        assert_eq!(p.missing, ["trades"]);
        assert!(p.create.is_empty());
    }

    /// The seed's shape: stocktrade → (SQL) user_trades → (function) trade-settlements → (SQL)
    /// per-minute tables. The function's output is created by the processor, with the
    /// partitions of the function's source, which is itself a sink of the same plan.
    #[test]
    fn a_function_output_the_sql_reads_is_created_with_its_sources_partitions() {
        let sql = "CREATE STREAM TRADES (k VARCHAR KEY, v VARCHAR) WITH (kafka_topic='stocktrade', value_format='json');
                   CREATE STREAM USER_TRADES WITH (kafka_topic='user_trades') AS SELECT * FROM TRADES;
                   CREATE STREAM SETTLED (k VARCHAR KEY, d VARCHAR) WITH (kafka_topic='trade-settlements', value_format='json');
                   CREATE TABLE PER_D AS SELECT d, COUNT(*) AS n FROM SETTLED GROUP BY d;";
        let settle = sluice_crds::config::TopicSpec {
            topic: "trade-settlements".into(),
            partitions: None,
            partitions_of: Some("user_trades".into()),
            replication_factor: Some(1),
        };
        let dlq = sluice_crds::config::TopicSpec { topic: "user_trades.dlq".into(), ..settle.clone() };
        let p = plan_with(sql, &[settle.clone(), dlq], &[("stocktrade", 3)]).unwrap();
        assert!(p.missing.is_empty());
        let get = |t: &str| p.create.iter().find(|x| x.topic == t).cloned();
        assert_eq!(get("user_trades").map(|t| t.partitions), Some(3));
        assert_eq!(get("trade-settlements").map(|t| (t.partitions, t.replication)), Some((3, Some(1))));
        assert_eq!(get("PER_D").map(|t| t.partitions), Some(3));
        assert_eq!(get("user_trades.dlq"), None, "the SQL does not read it: the runner creates it");
        // Explicit partitions win.
        let six = sluice_crds::config::TopicSpec { partitions: Some(6), ..settle };
        let p = plan_with(sql, &[six], &[("stocktrade", 3)]).unwrap();
        assert_eq!(p.create.iter().find(|x| x.topic == "PER_D").map(|t| t.partitions), Some(6));
        // Without the function it is a missing source.
        assert_eq!(plan_with(sql, &[], &[("stocktrade", 3)]).unwrap().missing, ["trade-settlements"]);
    }
}
