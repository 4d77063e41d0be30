//! The Kafka side: the consumer on a thread of its own (librdkafka's rebalance callbacks run on
//! the polling thread, and a revocation must block there until the revoked partitions' work is
//! drained and committed), and the producer.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc,
    },
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, ClientContext, Message, Offset, Statistics, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    message::BorrowedMessage,
    producer::FutureProducer,
};
use sluice_crds::pipeline::StartingPosition;
use tokio::sync::mpsc;

use crate::{
    event::{InputRecord, TimestampType},
    settings::Settings,
};

/// A partition's position to commit: offset and metadata.
pub type Commit = (i32, i64, String);

/// What the consumer thread tells the dispatcher.
#[derive(Debug)]
pub enum FromConsumer {
    /// Partitions newly assigned, each with its committed offset and metadata (if any).
    Assigned(Vec<(i32, Option<(i64, String)>)>),
    /// Partitions being revoked: the dispatcher drains them and answers with what to commit
    /// (under exactly-once it commits them in a transaction itself and answers with nothing).
    Revoked(Vec<i32>, std_mpsc::Sender<Vec<Commit>>),
    /// A record.
    Record(InputRecord),
    /// From librdkafka's statistics, per partition: the end offset (last stable offset, for
    /// `read_committed`), for lag, and the fetch positions, for passing transaction markers.
    Ends(Vec<PartitionStats>),
    /// An offset commit of these partitions failed (say, during a rebalance): commit again.
    CommitFailed(Vec<i32>),
}

/// One partition in librdkafka's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStats {
    /// The partition.
    pub partition: i32,
    /// Its end: the last stable offset (`read_committed`), else the high watermark.
    pub end: i64,
    /// librdkafka's application position: one past the last record handed to the runner, or
    /// past the transaction markers and aborted records after it, which are never handed over
    /// (-1: none yet).
    pub delivered: i64,
    /// Records fetched and not handed over yet.
    pub queued: i64,
}

/// What the dispatcher asks of the consumer thread.
#[derive(Debug)]
pub enum ToConsumer {
    /// Commit these positions (asynchronously).
    Commit(Vec<Commit>),
    /// Commit synchronously and acknowledge.
    CommitSync(Vec<Commit>, std_mpsc::Sender<()>),
    /// Stop fetching these partitions (too much buffered).
    Pause(Vec<i32>),
    /// Fetch them again.
    Resume(Vec<i32>),
    /// Leave the group and end the thread.
    Close,
}

/// The consumer's context: forwards rebalances and statistics to the dispatcher.
pub struct Context {
    topic: String,
    to_dispatcher: mpsc::UnboundedSender<FromConsumer>,
    /// Set once the runner is stopping: revocations during close need no hand-over (the
    /// dispatcher has already committed everything).
    closing: Arc<AtomicBool>,
    /// Longest a revocation waits for in-flight work.
    drain_timeout: Duration,
    /// Set after the first assignment (even an empty one): the runner has joined its group.
    pub joined: Arc<AtomicBool>,
    /// `startingPosition: earliest`.
    earliest: bool,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        let ends: Vec<PartitionStats> = topic
            .partitions
            .values()
            .filter(|p| p.partition >= 0 && p.desired)
            .map(|p| PartitionStats {
                partition: p.partition,
                end: if p.ls_offset >= 0 { p.ls_offset } else { p.hi_offset },
                delivered: p.app_offset,
                queued: p.fetchq_cnt,
            })
            .filter(|s| s.end >= 0)
            .collect();
        if !ends.is_empty() {
            let _ = self.to_dispatcher.send(FromConsumer::Ends(ends));
        }
    }
}

impl ConsumerContext for Context {
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        let failed: Vec<i32> = offsets
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic && (result.is_err() || e.error().is_err()))
            .map(|e| e.partition())
            .collect();
        if !failed.is_empty() {
            let _ = self.to_dispatcher.send(FromConsumer::CommitFailed(failed));
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.commit_starting_positions(consumer, tpl);
            return;
        }
        let Rebalance::Revoke(tpl) = rebalance else { return };
        let partitions: Vec<i32> =
            tpl.elements().iter().filter(|e| e.topic() == self.topic).map(|e| e.partition()).collect();
        tracing::info!(?partitions, "partitions revoked: draining them");
        if partitions.is_empty() || self.closing.load(Ordering::SeqCst) {
            return;
        }
        let (ack, answer) = std_mpsc::channel();
        if self.to_dispatcher.send(FromConsumer::Revoked(partitions, ack)).is_err() {
            return;
        }
        match answer.recv_timeout(self.drain_timeout) {
            Ok(commits) if !commits.is_empty() => {
                if let Err(e) = consumer.commit(&commit_list(&self.topic, &commits), CommitMode::Sync) {
                    tracing::warn!(error = %e, "committing revoked partitions failed; their new owner repeats some records");
                }
            }
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(timeout = ?self.drain_timeout, "revoked partitions not drained in time; releasing them anyway")
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mine: Vec<i32> =
                    tpl.elements().iter().filter(|e| e.topic() == self.topic).map(|e| e.partition()).collect();
                let mut assigned: Vec<(i32, Option<(i64, String)>)> = mine.iter().map(|p| (*p, None)).collect();
                if !mine.is_empty() {
                    let mut query = TopicPartitionList::new();
                    for p in &mine {
                        query.add_partition(&self.topic, *p);
                    }
                    match consumer.committed_offsets(query, Duration::from_secs(30)) {
                        Ok(committed) => {
                            for e in committed.elements() {
                                if let (Offset::Offset(o), Some(slot)) =
                                    (e.offset(), assigned.iter_mut().find(|(p, _)| *p == e.partition()))
                                {
                                    slot.1 = Some((o, e.metadata().to_owned()));
                                }
                            }
                        }
                        // Without the metadata, records finished out of order are processed
                        // again (at-least-once), never skipped.
                        Err(e) => tracing::warn!(error = %e, "reading committed offsets failed"),
                    }
                }
                tracing::info!(partitions = ?mine, "partitions assigned");
                self.joined.store(true, Ordering::SeqCst);
                let _ = self.to_dispatcher.send(FromConsumer::Assigned(assigned));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

impl Context {
    /// Before newly assigned partitions are fetched: give each one the group has no commit for
    /// a commit at `startingPosition` (the log's start or end now). Fetching then starts there,
    /// and so does every later owner: without it, records that arrive after a `latest` start
    /// and before the first commit would be skipped by a restarted replica (which resolves
    /// `latest` again), and the operator could not tell this group's lag.
    fn commit_starting_positions(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let timeout = Duration::from_secs(10);
        let mut query = TopicPartitionList::new();
        for e in tpl.elements().iter().filter(|e| e.topic() == self.topic) {
            query.add_partition(&self.topic, e.partition());
        }
        if query.count() == 0 {
            return;
        }
        let committed = match consumer.committed_offsets(query, timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading committed offsets before fetching; startingPosition applies");
                return;
            }
        };
        let mut start = TopicPartitionList::new();
        for e in committed.elements() {
            if matches!(e.offset(), Offset::Offset(_)) {
                continue;
            }
            // A topic created a moment ago (the processor's sink) may not have a leader yet.
            let mut read = consumer.fetch_watermarks(&self.topic, e.partition(), timeout);
            for _ in 0..25 {
                if !matches!(&read, Err(rdkafka::error::KafkaError::MetadataFetch(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
                read = consumer.fetch_watermarks(&self.topic, e.partition(), timeout);
            }
            match read {
                Ok((low, high)) => {
                    let at = if self.earliest { low } else { high };
                    let _ = start.add_partition_offset(&self.topic, e.partition(), Offset::Offset(at));
                }
                Err(e) => tracing::warn!(error = %e, "reading a partition's offsets; startingPosition applies"),
            }
        }
        if start.count() > 0 {
            match consumer.commit(&start, CommitMode::Sync) {
                Ok(()) => tracing::info!(
                    partitions = start.count(),
                    earliest = self.earliest,
                    "committed the starting position of new partitions"
                ),
                Err(e) => tracing::warn!(error = %e, "committing starting positions; startingPosition applies"),
            }
        }
    }
}

fn commit_list(topic: &str, commits: &[Commit]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (partition, offset, metadata) in commits {
        let mut e = tpl.add_partition(topic, *partition);
        if e.set_offset(Offset::Offset(*offset)).is_ok() {
            e.set_metadata(metadata.as_str());
        }
    }
    tpl
}

/// A list of positions for `send_offsets_to_transaction`.
pub fn offsets_list(topic: &str, commits: &[Commit]) -> TopicPartitionList {
    commit_list(topic, commits)
}

fn base_config(settings: &Settings) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &settings.kafka {
        c.set(k, v);
    }
    c
}

/// The consumer's librdkafka settings: our group, manual commits, `read_committed`, incremental
/// rebalancing (cooperative-sticky, unless the properties chose the KIP-848 protocol, whose
/// assignment the broker does), no static membership.
pub fn consumer_config(settings: &Settings) -> ClientConfig {
    let mut c = base_config(settings);
    let kip848 = settings.kafka.get("group.protocol").is_some_and(|p| p == "consumer");
    c.set("group.id", &settings.group)
        .set("client.id", format!("sluice-runner-{}", settings.function))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set(
            "auto.offset.reset",
            match settings.starting_position {
                StartingPosition::Earliest => "earliest",
                StartingPosition::Latest => "latest",
            },
        )
        .set("statistics.interval.ms", "5000")
        .set("queued.max.messages.kbytes", "16384");
    // A revocation holds the polling thread until the revoked partitions are drained (up to
    // the invocation timeout plus 30 s): the poll interval must outlast that, or the member is
    // evicted mid-drain. Never lower than Kafka's default of 5 minutes.
    if !settings.kafka.contains_key("max.poll.interval.ms") {
        let drain = settings.timeout + Duration::from_secs(30 + 60);
        let ms = u128::max(300_000, drain.as_millis()).min(i32::MAX as u128);
        c.set("max.poll.interval.ms", ms.to_string());
    }
    c.remove("group.instance.id");
    if !kip848 {
        c.set("partition.assignment.strategy", "cooperative-sticky");
    }
    c
}

/// Settings for a client that only produces or administers (no consumer-group properties).
pub fn client_config(settings: &Settings) -> ClientConfig {
    let mut c = base_config(settings);
    for consumer_only in ["group.protocol", "group.remote.assignor"] {
        c.remove(consumer_only);
    }
    c
}

/// Create the topics the function writes that do not exist yet (the source must exist: a
/// topic without its own partition count takes the source's). A topic someone creates at the
/// same moment is fine; any other refusal is an error naming the field.
pub async fn create_written_topics(settings: &Settings, producer: &FutureProducer) -> anyhow::Result<()> {
    use rdkafka::{
        admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
        client::DefaultClientContext,
        producer::Producer,
        types::RDKafkaErrorCode,
    };
    if settings.written_topics.is_empty() {
        return Ok(());
    }
    let p = producer.clone();
    let counts: std::collections::BTreeMap<String, usize> = tokio::task::spawn_blocking(move || {
        p.client().fetch_metadata(None, Duration::from_secs(30)).map(|md| {
            md.topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| (t.name().to_owned(), t.partitions().len()))
                .collect()
        })
    })
    .await?
    .map_err(|e| anyhow::anyhow!("reading the topics' metadata: {e}"))?;
    let wanted: Vec<(String, i32, i32)> = settings
        .written_topics
        .iter()
        .filter(|t| !counts.contains_key(&t.topic))
        .map(|t| {
            let from_source = t.partitions_of.as_ref().and_then(|s| counts.get(s)).map(|n| *n as i32);
            (t.topic.clone(), t.partitions.or(from_source).unwrap_or(1), t.replication_factor.unwrap_or(-1))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(settings).create()?;
    let topics: Vec<NewTopic<'_>> =
        wanted.iter().map(|(t, n, r)| NewTopic::new(t, *n, TopicReplication::Fixed(*r))).collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                let field = if settings.output_topic.as_deref() == Some(name.as_str()) {
                    "function.output.topic"
                } else {
                    "function.onFailure.deadLetterTopic"
                };
                anyhow::bail!("{field}: creating topic '{name}': {code}");
            }
        }
    }
    Ok(())
}

/// Wait until each topic exists, saying every 30 s which one is missing: the topics a function
/// reads and writes may be created by someone else (the processor, an administrator) after the
/// runner starts. `Err` only when `stop` fires first.
pub async fn await_topics(
    producer: &FutureProducer,
    topics: &[(&str, &str)],
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use rdkafka::producer::Producer;
    let mut said: Option<Instant> = None;
    loop {
        let mut missing = Vec::new();
        for (field, topic) in topics {
            let p = producer.clone();
            let t = (*topic).to_owned();
            let exists = tokio::task::spawn_blocking(move || {
                p.client()
                    .fetch_metadata(Some(&t), Duration::from_secs(10))
                    .map(|md| md.topics().first().is_some_and(|t| t.error().is_none() && !t.partitions().is_empty()))
            })
            .await?;
            match exists {
                Ok(true) => {}
                Ok(false) => missing.push(format!("{field}: topic '{topic}' does not exist")),
                Err(e) => missing.push(format!("{field}: reading the metadata of topic '{topic}': {e}")),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            tracing::warn!(missing = %missing.join("; "), "waiting for the function's topics");
            said = Some(Instant::now());
        }
        tokio::select! {
            _ = stop.cancelled() => anyhow::bail!("stopped while waiting for {}", missing.join("; ")),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// The producer: idempotent, `acks=all`; transactional under exactly-once.
pub fn producer(settings: &Settings, transactional_id: Option<&str>) -> anyhow::Result<FutureProducer> {
    let mut c = client_config(settings);
    // No linger: under at-least-once a partition's next batch waits for this batch's
    // acknowledgements, so every millisecond of linger is a millisecond of every batch.
    c.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "0");
    if let Some(id) = transactional_id {
        c.set("transactional.id", id).set("transaction.timeout.ms", "10000");
    }
    Ok(c.create()?)
}

/// The record as the event carries it.
pub fn input_record(m: &BorrowedMessage<'_>) -> InputRecord {
    let (timestamp, timestamp_type) = match m.timestamp() {
        rdkafka::Timestamp::CreateTime(t) => (t, TimestampType::CreateTime),
        rdkafka::Timestamp::LogAppendTime(t) => (t, TimestampType::LogAppendTime),
        rdkafka::Timestamp::NotAvailable => (-1, TimestampType::NotAvailable),
    };
    // Not rdkafka's `headers()`: it panics on a key that is not UTF-8.
    let headers = sluice_kafka::headers(m);
    InputRecord {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp,
        timestamp_type,
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// The consumer, running on its own thread until told to close.
pub struct ConsumerThread {
    /// Commands to it.
    pub commands: std_mpsc::Sender<ToConsumer>,
    /// Group metadata for transactions, shared with the transaction task.
    pub consumer: Arc<BaseConsumer<Context>>,
    /// The thread.
    pub handle: std::thread::JoinHandle<()>,
    /// Whether the runner has joined its group.
    pub joined: Arc<AtomicBool>,
    /// Set when the polling thread has ended (told to close, or not).
    pub done: Arc<AtomicBool>,
}

/// Sets its flag when dropped: the polling thread's end, however it ends (a panic included).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Create the consumer, subscribe, and start polling on a thread of its own.
pub fn start_consumer(
    settings: &Settings,
    to_dispatcher: mpsc::UnboundedSender<FromConsumer>,
    joined: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
) -> anyhow::Result<ConsumerThread> {
    let closing = Arc::new(AtomicBool::new(false));
    let context = Context {
        topic: settings.topic.clone(),
        to_dispatcher: to_dispatcher.clone(),
        closing: closing.clone(),
        drain_timeout: settings.timeout + Duration::from_secs(30),
        joined: joined.clone(),
        earliest: settings.starting_position == StartingPosition::Earliest,
    };
    let consumer: BaseConsumer<Context> = consumer_config(settings).create_with_context(context)?;
    // A missing topic is the user's mistake: say so before joining the group.
    let metadata = consumer
        .fetch_metadata(Some(&settings.topic), Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("reading the metadata of topic '{}': {e}", settings.topic))?;
    let missing = metadata.topics().first().is_none_or(|t| t.partitions().is_empty() || t.error().is_some());
    if missing {
        anyhow::bail!("function.source.topic: topic '{}' does not exist", settings.topic);
    }
    consumer.subscribe(&[&settings.topic])?;
    let consumer = Arc::new(consumer);
    let (commands, inbox) = std_mpsc::channel();
    let topic = settings.topic.clone();
    let polling = consumer.clone();
    let flag = SetOnDrop(done.clone());
    let handle = std::thread::Builder::new().name("consumer".into()).spawn(move || {
        let _flag = flag;
        poll_loop(&topic, &polling, &inbox, &to_dispatcher, &closing);
    })?;
    Ok(ConsumerThread { commands, consumer, handle, joined, done })
}

fn poll_loop(
    topic: &str,
    consumer: &BaseConsumer<Context>,
    inbox: &std_mpsc::Receiver<ToConsumer>,
    to_dispatcher: &mpsc::UnboundedSender<FromConsumer>,
    closing: &AtomicBool,
) {
    let mut last_error: Option<Instant> = None;
    loop {
        while let Ok(command) = inbox.try_recv() {
            match command {
                ToConsumer::Commit(commits) => {
                    if let Err(e) = consumer.commit(&commit_list(topic, &commits), CommitMode::Async) {
                        tracing::warn!(error = %e, "offset commit failed (retried with the next one)");
                    }
                }
                ToConsumer::CommitSync(commits, ack) => {
                    if !commits.is_empty()
                        && let Err(e) = consumer.commit(&commit_list(topic, &commits), CommitMode::Sync)
                    {
                        tracing::warn!(error = %e, "final offset commit failed");
                    }
                    let _ = ack.send(());
                }
                ToConsumer::Pause(ps) | ToConsumer::Resume(ps) if ps.is_empty() => {}
                ToConsumer::Pause(ps) => {
                    let _ = consumer.pause(&partition_list(topic, &ps));
                }
                ToConsumer::Resume(ps) => {
                    let _ = consumer.resume(&partition_list(topic, &ps));
                }
                ToConsumer::Close => {
                    // Dropping the last handle of the consumer closes it, which leaves the group
                    // at once, so the partitions move without waiting for a session timeout.
                    closing.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) if to_dispatcher.send(FromConsumer::Record(input_record(&m))).is_err() => return,
            Some(Err(e)) if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) => {
                tracing::warn!(error = %e, "consumer error");
                last_error = Some(Instant::now());
            }
            _ => {}
        }
    }
}

fn partition_list(topic: &str, partitions: &[i32]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    tpl
}
