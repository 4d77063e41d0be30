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
    message::{BorrowedMessage, Headers},
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
    /// The end offset (last stable offset, for `read_committed`) of partitions, for lag.
    Ends(Vec<(i32, i64)>),
    /// An offset commit of these partitions failed (say, during a rebalance): commit again.
    CommitFailed(Vec<i32>),
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
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        let ends: Vec<(i32, i64)> = topic
            .partitions
            .values()
            .filter(|p| p.partition >= 0 && p.desired)
            .map(|p| (p.partition, if p.ls_offset >= 0 { p.ls_offset } else { p.hi_offset }))
            .filter(|(_, end)| *end >= 0)
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
    c.remove("group.instance.id");
    if !kip848 {
        c.set("partition.assignment.strategy", "cooperative-sticky");
    }
    c
}

/// The producer: idempotent, `acks=all`; transactional under exactly-once.
pub fn producer(settings: &Settings, transactional_id: Option<&str>) -> anyhow::Result<FutureProducer> {
    let mut c = base_config(settings);
    for consumer_only in ["group.protocol", "group.remote.assignor"] {
        c.remove(consumer_only);
    }
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
    let headers = m
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
        .unwrap_or_default();
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
}

/// Create the consumer, subscribe, and start polling on a thread of its own.
pub fn start_consumer(
    settings: &Settings,
    to_dispatcher: mpsc::UnboundedSender<FromConsumer>,
) -> anyhow::Result<ConsumerThread> {
    let closing = Arc::new(AtomicBool::new(false));
    let joined = Arc::new(AtomicBool::new(false));
    let context = Context {
        topic: settings.topic.clone(),
        to_dispatcher: to_dispatcher.clone(),
        closing: closing.clone(),
        drain_timeout: settings.timeout + Duration::from_secs(30),
        joined: joined.clone(),
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
    let handle = std::thread::Builder::new()
        .name("consumer".into())
        .spawn(move || poll_loop(&topic, &polling, &inbox, &to_dispatcher, &closing))?;
    Ok(ConsumerThread { commands, consumer, handle, joined })
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
