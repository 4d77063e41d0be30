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
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer},
    message::{Header, Headers, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, Producer},
};
use sluice_crds::config::ProcessorConfig;
use sluice_engine::{Engine, Record};
use tracing::{info, warn};

const TIMEOUT: Duration = Duration::from_secs(30);

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
}

/// What the HTTP side shares with the processing loop.
pub struct Shared {
    /// The engine: the loop processes records with it, the HTTP side runs pull queries.
    pub engine: Mutex<Engine>,
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
}

impl Shared {
    /// Build the engine from the config's SQL and properties.
    pub fn new(config: &ProcessorConfig) -> anyhow::Result<Arc<Shared>> {
        let mut engine = Engine::default();
        // Outputs come back through Kafka, so every query reads only what it owns.
        engine.chain = false;
        for (k, v) in &config.properties {
            engine.set_property(k, v).map_err(|e| anyhow!("properties.{k}: {e}"))?;
        }
        engine.execute_script(&config.sql).map_err(|e| anyhow!("sql: {e}"))?;
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
        Ok(Arc::new(Shared {
            engine: Mutex::new(engine),
            ready: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            metrics,
            registry,
            application_id: config.application_id.clone(),
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
fn partition_counts(consumer: &BaseConsumer) -> anyhow::Result<BTreeMap<String, i32>> {
    let metadata = consumer.fetch_metadata(None, TIMEOUT).context("fetching topic metadata")?;
    Ok(metadata.topics().iter().map(|t| (t.name().to_owned(), t.partitions().len() as i32)).collect())
}

/// Check the sources, create the sinks and the processing log; returns partition counts.
fn prepare_topics(
    config: &ProcessorConfig,
    shared: &Shared,
    consumer: &BaseConsumer,
) -> anyhow::Result<BTreeMap<String, i32>> {
    let engine = shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?;
    let (read, written) = engine.topics();
    let mut counts = partition_counts(consumer)?;
    let missing: Vec<&String> = read.iter().filter(|t| !written.contains(t) && !counts.contains_key(*t)).collect();
    if !missing.is_empty() {
        bail!(
            "source topic(s) missing: {}; create them (the processor creates only the topics its queries write)",
            missing.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
        );
    }
    let replication = match config.properties.get("ksql.sink.replicas").or(config.properties.get("replication.factor"))
    {
        Some(r) => r.parse::<i32>().map_err(|_| anyhow!("properties: replication factor {r:?} is not a number"))?,
        None => -1,
    };
    // A sink gets the partition count of its query's first input (ksqlDB's default).
    let mut wanted: Vec<(String, i32)> = Vec::new();
    for q in &engine.queries {
        let Some(sink) = engine.catalog.get(&q.sink) else { continue };
        if counts.contains_key(&sink.topic) || wanted.iter().any(|(t, _)| *t == sink.topic) {
            continue;
        }
        let partitions =
            sink.partitions.or_else(|| q.inputs.iter().filter_map(|t| counts.get(t).copied()).max()).unwrap_or(1);
        wanted.push((sink.topic.clone(), partitions));
        if q.inputs.len() == 2 {
            let (a, b) = (counts.get(&q.inputs[0]), counts.get(&q.inputs[1]));
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
    let log = format!("{}-processing-log", config.application_id);
    if !counts.contains_key(&log) {
        wanted.push((log, 1));
    }
    drop(engine);
    if !wanted.is_empty() {
        let admin: AdminClient<DefaultClientContext> = client_config(config)?.create()?;
        let topics: Vec<NewTopic<'_>> = wanted
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(replication)))
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
        let deadline = Instant::now() + TIMEOUT;
        loop {
            counts = partition_counts(consumer)?;
            if wanted.iter().all(|(t, _)| counts.contains_key(t)) {
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

/// Run the replica until `shared.stop` is set.
pub fn run(config: &ProcessorConfig, ordinal: i32, shared: Arc<Shared>) -> anyhow::Result<()> {
    if config.replicas < 1 || ordinal < 0 || ordinal >= config.replicas {
        bail!("ordinal {ordinal} is outside 0..{} (replicas)", config.replicas);
    }
    {
        let engine = shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?;
        if config.replicas > 1
            && let Some(q) =
                engine.queries.iter().find(|q| !q.internal_topics.iter().all(|t| t.ends_with("-changelog")))
        {
            bail!(
                "query {} needs a repartition topic, which this processor supports with replicas: 1 only so far; \
                 set replicas: 1",
                q.id
            );
        }
    }
    let reset = config.properties.get("auto.offset.reset").cloned().unwrap_or_else(|| "earliest".into());
    let consumer: BaseConsumer = client_config(config)?
        .set("group.id", &config.application_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", &reset)
        .create()
        .context("creating the consumer")?;
    let counts = prepare_topics(config, &shared, &consumer)?;
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
        producer.init_transactions(TIMEOUT).context("initialising transactions")?;
        producer.begin_transaction()?;
    }
    shared.ready.store(true, Ordering::SeqCst);
    let log_topic = format!("{}-processing-log", config.application_id);
    let idle =
        Duration::from_millis(config.properties.get("max.task.idle.ms").and_then(|v| v.parse().ok()).unwrap_or(250));
    let commit_every = config.commit_interval.get();

    let mut queues: HashMap<(String, i32), VecDeque<Record>> = HashMap::new();
    let mut empty_since: HashMap<(String, i32), Instant> =
        owned.iter().map(|tp| (tp.clone(), Instant::now())).collect();
    let mut positions: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut last_commit = Instant::now();
    let mut pending = 0usize;
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        // Fetch what is there.
        let mut fetched = 0;
        while fetched < 10_000 {
            let timeout = if fetched == 0 && queues.values().all(VecDeque::is_empty) && !stopping {
                Duration::from_millis(50)
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
                    let headers = m
                        .headers()
                        .map(|h| h.iter().map(|x| (x.key.to_owned(), x.value.map(<[u8]>::to_vec))).collect())
                        .unwrap_or_default();
                    let rec = Record {
                        topic: m.topic().to_owned(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        timestamp: m.timestamp().to_millis().unwrap_or(0),
                        partition: m.partition(),
                        offset: m.offset(),
                        headers,
                    };
                    let tp = (rec.topic.clone(), rec.partition);
                    empty_since.remove(&tp);
                    queues.entry(tp).or_default().push_back(rec);
                }
            }
        }
        // Process in timestamp order while every partition has data or has idled long enough.
        loop {
            let now = Instant::now();
            let blocked = owned.iter().any(|tp| {
                queues.get(tp).is_none_or(VecDeque::is_empty)
                    && empty_since.get(tp).is_none_or(|since| now.duration_since(*since) < idle)
            });
            if blocked && !stopping {
                break;
            }
            let Some(tp) = queues
                .iter()
                .filter_map(|(tp, q)| q.front().map(|r| (r.timestamp, tp.clone())))
                .min()
                .map(|(_, tp)| tp)
            else {
                break;
            };
            let Some(queue) = queues.get_mut(&tp) else { break };
            let Some(rec) = queue.pop_front() else { break };
            if queue.is_empty() {
                empty_since.insert(tp.clone(), now);
            }
            shared.metrics.records_in.inc();
            let (outputs, errors) = {
                let mut engine = shared.engine.lock().map_err(|_| anyhow!("engine lock poisoned"))?;
                let out = engine.process(rec.clone());
                let errors = std::mem::take(&mut engine.errors);
                (out, errors)
            };
            for out in outputs {
                send(&producer, &out)?;
                shared.metrics.records_out.inc();
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
                    timestamp: rec.timestamp,
                    partition: 0,
                    offset: 0,
                    headers: Vec::new(),
                };
                send(&producer, &log)?;
            }
            positions.insert(tp, rec.offset + 1);
            pending += 1;
        }
        producer.poll(Duration::ZERO);
        if pending > 0 && (last_commit.elapsed() >= commit_every || stopping || pending > 50_000) {
            commit(config, &producer, &consumer, &positions)?;
            shared.metrics.commits.inc();
            pending = 0;
            last_commit = Instant::now();
        }
        if stopping {
            info!("stopping: committed what was processed");
            if config.exactly_once {
                producer.abort_transaction(TIMEOUT).ok();
            }
            return Ok(());
        }
    }
}

fn send(producer: &BaseProducer, rec: &Record) -> anyhow::Result<()> {
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
    consumer: &BaseConsumer,
    positions: &BTreeMap<(String, i32), i64>,
) -> anyhow::Result<()> {
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in positions {
        offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
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
