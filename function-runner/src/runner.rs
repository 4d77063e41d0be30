//! The dispatcher: one task that owns every partition's state and turns what the consumer
//! delivers into invocations, retries, dead letters and commits, driving the pure pieces
//! (batcher, retry policy, key scheduler, offset tracker).
//!
//! * `ordering: partition`: a partition's work is a queue; its head is the only thing in
//!   flight, so batches (and their retries, halves and dead letters) run strictly in order.
//! * `ordering: key`: a partition's records wait in a [`KeyScheduler`]; batches hold at most one
//!   record per key, several batches of a partition run at once, and a key's next record starts
//!   only when its previous one finished (delivered or dead-lettered).
//! * At-least-once: an invocation's outputs are produced and acknowledged before its records
//!   count as finished; the lowest unfinished offset (with the finished ones above it in the
//!   metadata) is committed every [`COMMIT_EVERY`].
//! * Exactly-once: outputs, dead letters and the new positions of the partitions they finish go
//!   into one transaction per commit interval, one transaction at a time.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc,
    },
    time::{Duration, Instant},
};

use axum::body::Bytes;
use futures::future::join_all;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use rand::Rng;
use rdkafka::{
    consumer::Consumer,
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    batch::{Batcher, Ready},
    event::{InputRecord, encode_event, event_overhead, record_cost},
    invoke::{InvokeError, Invoker},
    kafka::{Commit, ConsumerThread, FromConsumer, ToConsumer, offsets_list},
    ordering::{Delivery, KeyScheduler, OffsetTracker},
    outputs::OutputCheck,
    response::{OutputRecord, parse_response},
    retry::{Attempt, Next, on_failure, split_partial},
    settings::Settings,
};

/// How often finished positions are committed under at-least-once, and the longest outputs wait
/// for their transaction under exactly-once.
pub const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// Labels of the per-outcome invocation counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok`, `partial`, `timeout`, `function_error`, `http_error`, `transport_error`,
    /// `bad_response`.
    pub outcome: String,
}

/// Labels of per-partition gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// The source partition.
    pub partition: String,
}

/// The runner's metrics (`/metrics`).
pub struct Metrics {
    /// Records consumed.
    pub records_in: Counter,
    /// Records produced from functions' responses.
    pub records_out: Counter,
    /// Invocations by outcome.
    pub invocations: Family<OutcomeLabel, Counter>,
    /// Invocation durations.
    pub invocation_seconds: Histogram,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: Counter,
    /// Failed invocations, undeliverable records and production errors.
    pub processing_errors: Counter,
    /// Consumer lag per partition (end offset − committed position).
    pub lag: Family<PartitionLabel, Gauge>,
    /// Transactions committed (exactly-once).
    pub transactions: Counter,
    /// Invocations running now (the function's concurrency in use).
    pub in_flight: Gauge,
    /// Exits of the function processes the runner started (local runs), each restarted.
    pub process_exits: Counter,
}

impl Metrics {
    /// Metrics registered under `sluice_function_runner_*`, labelled with the pipeline and the
    /// function.
    pub fn new(pipeline: &str, function: &str) -> (Arc<Metrics>, Registry) {
        let m = Metrics {
            records_in: Counter::default(),
            records_out: Counter::default(),
            invocations: Family::default(),
            invocation_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            dead_lettered: Counter::default(),
            processing_errors: Counter::default(),
            lag: Family::default(),
            transactions: Counter::default(),
            in_flight: Gauge::default(),
            process_exits: Counter::default(),
        };
        let labels = [
            (std::borrow::Cow::Borrowed("pipeline"), std::borrow::Cow::Owned(pipeline.to_owned())),
            (std::borrow::Cow::Borrowed("function"), std::borrow::Cow::Owned(function.to_owned())),
        ];
        let mut r = Registry::with_prefix_and_labels("sluice_function_runner", labels.into_iter());
        r.register("records_in", "Records consumed from the source topic", m.records_in.clone());
        r.register("records_out", "Records produced from the function's responses", m.records_out.clone());
        r.register("invocations", "Invocations by outcome", m.invocations.clone());
        r.register("invocation_duration_seconds", "Invocation durations", m.invocation_seconds.clone());
        r.register("dead_lettered_records", "Records sent to the dead-letter topic", m.dead_lettered.clone());
        r.register(
            "processing_errors",
            "Failed invocations, undeliverable records, production errors",
            m.processing_errors.clone(),
        );
        r.register("consumer_lag_records", "Records behind the end of each assigned partition", m.lag.clone());
        r.register("transactions", "Kafka transactions committed (exactly-once)", m.transactions.clone());
        r.register("invocations_in_flight", "Invocations running now", m.in_flight.clone());
        r.register(
            "function_process_exits",
            "Exits of the function processes the runner started (each restarted)",
            m.process_exits.clone(),
        );
        (Arc::new(m), r)
    }
}

/// What the processes around the dispatcher share with it.
pub struct Env {
    /// Resolved settings.
    pub settings: Arc<Settings>,
    /// How the function is invoked.
    pub invoker: Invoker,
    /// The producer (transactional under exactly-once).
    pub producer: FutureProducer,
    /// What the output topics accept.
    pub outputs: Arc<OutputCheck>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Bumped when an invocation timed out (a supervised process is then replaced).
    pub timed_out: watch::Sender<u64>,
    /// Cancelled to stop: in-flight invocations finish, positions are committed, the group is
    /// left.
    pub stop: CancellationToken,
    /// Set when the dispatcher gave up (a fatal Kafka error): the process exits non-zero.
    pub failed: Arc<AtomicBool>,
}

/// A unit of work of one partition.
#[derive(Debug)]
enum Work {
    /// Invoke with these records, not before the instant.
    Invoke(Attempt, Instant),
    /// Send to the dead-letter topic.
    DeadLetter(Attempt, String),
    /// Cannot be invoked and there is no dead-letter topic: the partition waits here for an
    /// operator (never skipping).
    Blocked(InputRecord, String),
}

/// What a finished task reports.
#[derive(Debug)]
enum Finished {
    /// An invocation (its outputs already produced under at-least-once).
    Invoked { attempt: Attempt, result: Result<Vec<(String, i32, i64)>, String>, outputs: Vec<OutputRecord> },
    /// Records dead-lettered (produced under at-least-once).
    DeadLettered { attempt: Attempt },
    /// Interrupted through no fault of its records: run again, not counted as a failure.
    Interrupted { attempt: Attempt, reason: String },
    /// Cancelled before it started (revocation or stop).
    Cancelled,
}

struct Report {
    partition: i32,
    epoch: u64,
    finished: Finished,
}

#[derive(Default)]
struct Part {
    epoch: u64,
    tracker: OffsetTracker,
    /// `ordering: partition`: work in order; the head alone runs.
    queue: VecDeque<Work>,
    /// `ordering: key`: records waiting for their key.
    keys: KeyScheduler<Vec<u8>>,
    held: BTreeMap<i64, InputRecord>,
    /// `ordering: key`: retries and dead letters of records whose key is held.
    retries: VecDeque<Work>,
    waiting_since: Option<Instant>,
    /// `ordering: key`: every waiting record's key is busy; nothing can start before one
    /// finishes.
    stalled: bool,
    /// Tasks running for this partition.
    in_flight: usize,
    /// Records held (not finished).
    buffered: usize,
    paused: bool,
    revoking: bool,
    cancel: CancellationToken,
    last_commit: Option<(i64, String)>,
    end: Option<i64>,
    blocked_logged: Option<Instant>,
}

struct Revocation {
    /// The partitions and the epoch of their ownership being revoked: if a partition is
    /// assigned again before this revocation is finished (its drain timed out), the new
    /// ownership has another epoch and is left alone.
    partitions: Vec<(i32, u64)>,
    ack: std_mpsc::Sender<Vec<Commit>>,
}

/// Outputs and positions waiting for their transaction.
#[derive(Default)]
struct Pending {
    outputs: Vec<OutputRecord>,
    finished: Vec<(i32, u64, Vec<i64>)>,
    since: Option<Instant>,
}

/// Run the dispatcher until `env.stop`, then drain, commit and close the consumer.
pub async fn run(env: Env, consumer: ConsumerThread, mut inbox: mpsc::UnboundedReceiver<FromConsumer>) {
    let settings = env.settings.clone();
    let (report_tx, mut reports) = mpsc::unbounded_channel::<Report>();
    let (tx_done_tx, mut tx_done) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut d = Dispatcher {
        batcher: Batcher::new(settings.limits, &settings.bootstrap_servers),
        overhead: event_overhead(&settings.bootstrap_servers),
        semaphore: Arc::new(Semaphore::new(settings.concurrency())),
        parts: HashMap::new(),
        revocations: Vec::new(),
        pending: Pending::default(),
        tx_in_flight: false,
        started: Instant::now(),
        next_epoch: 1,
        report_tx,
        tx_done_tx,
        consumer,
        env,
        settings,
    };
    let mut commit_tick = tokio::time::interval(COMMIT_EVERY);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = d.env.stop.clone();
    loop {
        let deadline = d.next_deadline();
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(result) = tx_done.recv() => d.on_transaction(result),
            Some(report) = reports.recv() => d.on_report(report),
            Some(message) = inbox.recv() => d.on_consumer(message),
            _ = commit_tick.tick() => d.commit_finished(false),
            _ = sleep_until(deadline) => {}
        }
        if d.env.failed.load(Ordering::SeqCst) {
            break;
        }
        if d.consumer.done.load(Ordering::SeqCst) {
            tracing::error!(
                "the Kafka consumer thread stopped unexpectedly; stopping so that a fresh instance resumes"
            );
            d.env.failed.store(true, Ordering::SeqCst);
            break;
        }
        d.on_time();
        d.pump();
        d.finish_revocations();
    }
    d.shutdown(&mut reports, &mut tx_done, &mut inbox).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

struct Dispatcher {
    env: Env,
    settings: Arc<Settings>,
    batcher: Batcher,
    overhead: usize,
    semaphore: Arc<Semaphore>,
    parts: HashMap<i32, Part>,
    revocations: Vec<Revocation>,
    pending: Pending,
    tx_in_flight: bool,
    started: Instant,
    next_epoch: u64,
    report_tx: mpsc::UnboundedSender<Report>,
    tx_done_tx: mpsc::UnboundedSender<Result<(), String>>,
    consumer: ConsumerThread,
}

impl Dispatcher {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn pause_limit(&self) -> usize {
        (self.settings.limits.max_records * 4).max(2000)
    }

    fn on_consumer(&mut self, message: FromConsumer) {
        match message {
            FromConsumer::Assigned(partitions) => {
                for (p, committed) in partitions {
                    let epoch = self.next_epoch;
                    self.next_epoch += 1;
                    let tracker = match &committed {
                        Some((offset, metadata)) => OffsetTracker::restore(*offset, metadata),
                        None => OffsetTracker::new(),
                    };
                    let part = Part { epoch, tracker, last_commit: committed, ..Part::default() };
                    self.parts.insert(p, part);
                }
            }
            FromConsumer::Revoked(partitions, ack) => {
                let mut revoked = Vec::with_capacity(partitions.len());
                for p in &partitions {
                    if let Some(part) = self.parts.get_mut(p) {
                        part.revoking = true;
                        part.cancel.cancel();
                        part.queue.clear();
                        part.retries.clear();
                        part.keys = KeyScheduler::new();
                        part.held.clear();
                        revoked.push((*p, part.epoch));
                    }
                    self.batcher.take(&self.settings.topic, *p);
                }
                self.revocations.push(Revocation { partitions: revoked, ack });
            }
            FromConsumer::Record(record) => self.on_record(record),
            FromConsumer::CommitFailed(partitions) => {
                for p in partitions {
                    if let Some(part) = self.parts.get_mut(&p) {
                        part.last_commit = None;
                    }
                }
            }
            FromConsumer::Ends(ends) => {
                let mut skipped = Vec::new();
                for stats in ends {
                    let (p, end) = (stats.partition, stats.end);
                    if let Some(part) = self.parts.get_mut(&p) {
                        part.end = Some(end);
                        // Caught up on a transactional source: librdkafka's application
                        // position has moved past the last transaction's marker (and aborted
                        // records), which no record hands over. Every record below it reached
                        // the dispatcher before these statistics (same thread, same order):
                        // with nothing queued, buffered or running and all of them finished and
                        // committed, the offsets up to it hold nothing to process.
                        let committed = part.last_commit.as_ref().map(|c| c.0);
                        let idle = stats.queued == 0
                            && part.buffered == 0
                            && part.in_flight == 0
                            && part.queue.is_empty()
                            && part.retries.is_empty()
                            && part.held.is_empty()
                            && !part.revoking
                            && !self.tx_in_flight
                            && !self.pending.finished.iter().any(|(q, _, _)| *q == p);
                        if idle
                            && part.tracker.pending() == 0
                            && committed.is_some_and(|c| c < stats.delivered)
                            && stats.delivered <= end
                            && part.tracker.skip_to(stats.delivered)
                            && let Some(c) = part.tracker.commit()
                        {
                            skipped.push((p, c.0, c.1.clone()));
                            part.last_commit = Some(c);
                        }
                        let position = part.tracker.commit().map(|(o, _)| o).or(part.last_commit.as_ref().map(|c| c.0));
                        let lag = position.map_or(0, |pos| (end - pos).max(0));
                        self.env.metrics.lag.get_or_create(&PartitionLabel { partition: p.to_string() }).set(lag);
                    }
                }
                if !skipped.is_empty() {
                    let _ = self.consumer.commands.send(ToConsumer::Commit(skipped));
                }
            }
        }
    }

    fn on_record(&mut self, record: InputRecord) {
        let now = self.now();
        let pause_limit = self.pause_limit();
        let Some(part) = self.parts.get_mut(&record.partition) else { return };
        if part.revoking || part.tracker.deliver(record.offset) == Delivery::AlreadyDone {
            return;
        }
        self.env.metrics.records_in.inc();
        part.buffered += 1;
        if part.buffered > pause_limit && !part.paused {
            part.paused = true;
            let _ = self.consumer.commands.send(ToConsumer::Pause(vec![record.partition]));
        }
        if self.settings.key_ordering {
            part.keys.push(record.offset, record.key.clone());
            part.stalled = false;
            part.waiting_since.get_or_insert_with(Instant::now);
            part.held.insert(record.offset, record);
        } else {
            for ready in self.batcher.push(record, now) {
                self.queue_ready(ready);
            }
        }
    }

    fn queue_ready(&mut self, ready: Ready) {
        let (partition, work) = match ready {
            Ready::Batch(records) => {
                let p = records[0].partition;
                (p, Work::Invoke(Attempt { records, failures: 0 }, Instant::now()))
            }
            Ready::Oversize(record, reason) => (record.partition, self.undeliverable(record, reason)),
        };
        if let Some(part) = self.parts.get_mut(&partition) {
            part.queue.push_back(work);
        }
    }

    fn undeliverable(&self, record: InputRecord, reason: String) -> Work {
        self.env.metrics.processing_errors.inc();
        if self.settings.dead_letter_topic.is_some() {
            Work::DeadLetter(Attempt { records: vec![record], failures: 0 }, reason)
        } else {
            Work::Blocked(record, reason)
        }
    }

    /// Batches whose `maxWait` passed.
    fn on_time(&mut self) {
        let now = self.now();
        for ready in self.batcher.due(now) {
            self.queue_ready(ready);
        }
    }

    /// The next time something may become startable. Only what could start then counts: a
    /// deadline already past for work that must wait on something else would spin the loop.
    fn next_deadline(&self) -> Option<Instant> {
        let concurrency = self.settings.concurrency();
        let batch = self.batcher.next_deadline().map(|d| self.started + d);
        let keys = self
            .parts
            .values()
            .filter(|p| p.keys.waiting() > 0 && p.in_flight < concurrency && !p.revoking && !p.stalled)
            .filter_map(|p| p.waiting_since.map(|s| s + self.settings.limits.max_wait))
            .min();
        let retries = self
            .parts
            .values()
            .filter(|p| !p.revoking)
            .flat_map(|p| {
                let head = if p.in_flight == 0 { p.queue.front() } else { None };
                head.into_iter().chain(p.retries.iter())
            })
            .filter_map(|w| match w {
                Work::Invoke(_, at) => Some(*at),
                _ => None,
            })
            .min();
        let tx = if self.tx_in_flight { None } else { self.pending.since.map(|s| s + COMMIT_EVERY) };
        [batch, keys, retries, tx].into_iter().flatten().min()
    }

    /// Start whatever may start now.
    fn pump(&mut self) {
        let now = Instant::now();
        let partitions: Vec<i32> = self.parts.keys().copied().collect();
        for p in partitions {
            if self.settings.key_ordering {
                self.pump_keys(p, now);
            } else {
                self.pump_partition(p, now);
            }
        }
        if self.settings.exactly_once {
            self.maybe_start_transaction(false);
        }
    }

    fn pump_partition(&mut self, p: i32, now: Instant) {
        let Some(part) = self.parts.get_mut(&p) else { return };
        if part.revoking || part.in_flight > 0 {
            return;
        }
        match part.queue.front() {
            Some(Work::Invoke(_, at)) if *at <= now => {}
            Some(Work::DeadLetter(..)) => {}
            Some(Work::Blocked(record, reason)) => {
                if part.blocked_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::error!(partition = p, offset = record.offset, %reason,
                        "the record cannot be invoked and there is no dead-letter topic: the partition waits here (set onFailure.deadLetterTopic to move past it)");
                    part.blocked_logged = Some(Instant::now());
                }
                return;
            }
            _ => return,
        }
        let Some(work) = part.queue.pop_front() else { return };
        self.start(p, work);
    }

    fn pump_keys(&mut self, p: i32, now: Instant) {
        let concurrency = self.settings.concurrency();
        let limits = self.settings.limits;
        let overhead = self.overhead;
        let Some(part) = self.parts.get_mut(&p) else { return };
        if part.revoking {
            return;
        }
        // Retries and dead letters first: their keys are held until they finish.
        let mut starting = Vec::new();
        let mut keep = VecDeque::new();
        while let Some(w) = part.retries.pop_front() {
            match &w {
                Work::Invoke(_, at) if *at > now => keep.push_back(w),
                Work::Blocked(..) => keep.push_back(w),
                _ => starting.push(w),
            }
        }
        part.retries = keep;
        let full = part.keys.waiting() >= limits.max_records;
        let waited = part.waiting_since.is_some_and(|s| now.duration_since(s) >= limits.max_wait);
        while part.in_flight + starting.len() < concurrency && part.keys.waiting() > 0 && (full || waited) {
            let ready = part.keys.ready(limits.max_records);
            if ready.is_empty() {
                part.stalled = true;
                break;
            }
            // Cut into batches that fit maxBytes (each record alone fits: larger ones were set
            // aside when they arrived).
            let mut batch: Vec<InputRecord> = Vec::new();
            let mut bytes = overhead;
            for (offset, _) in ready {
                let Some(record) = part.held.remove(&offset) else { continue };
                let cost = record_cost(&record, batch.is_empty(), batch.is_empty());
                if !batch.is_empty() && bytes + cost > limits.max_bytes {
                    starting.push(Work::Invoke(Attempt { records: std::mem::take(&mut batch), failures: 0 }, now));
                    bytes = overhead;
                }
                bytes += record_cost(&record, batch.is_empty(), batch.is_empty());
                batch.push(record);
            }
            if !batch.is_empty() {
                starting.push(Work::Invoke(Attempt { records: batch, failures: 0 }, now));
            }
            part.waiting_since = if part.keys.waiting() > 0 { Some(now) } else { None };
        }
        for work in starting {
            // An oversize record alone in its batch cannot be sent.
            let work = match work {
                Work::Invoke(a, _)
                    if a.records.len() == 1 && overhead + record_cost(&a.records[0], true, true) > limits.max_bytes =>
                {
                    let record = a.records.into_iter().next().expect("one record");
                    let reason = format!("record too large for one invocation (over maxBytes {})", limits.max_bytes);
                    match self.undeliverable(record, reason) {
                        Work::Blocked(r, why) => {
                            if let Some(part) = self.parts.get_mut(&p) {
                                part.retries.push_back(Work::Blocked(r, why));
                            }
                            continue;
                        }
                        other => other,
                    }
                }
                other => other,
            };
            self.start(p, work);
        }
    }

    fn start(&mut self, p: i32, work: Work) {
        if self.settings.exactly_once
            && let Work::DeadLetter(attempt, error) = &work
        {
            // The dead letters and their positions join the next transaction.
            let records = dead_letters(&self.settings, attempt, error);
            tracing::warn!(partition = p, offsets = ?attempt.records.iter().map(|r| r.offset).collect::<Vec<_>>(), %error, "dead-lettering");
            self.env.metrics.dead_lettered.inc_by(records.len() as u64);
            self.pending.outputs.extend(records);
            self.note_finished(p, attempt.records.iter().map(|r| r.offset).collect());
            if let Some(part) = self.parts.get_mut(&p) {
                for r in &attempt.records {
                    part.keys.finished(&r.key);
                }
                part.stalled = false;
                part.buffered = part.buffered.saturating_sub(attempt.records.len());
            }
            return;
        }
        let Some(part) = self.parts.get_mut(&p) else { return };
        part.in_flight += 1;
        let report = Reporter { tx: self.report_tx.clone(), partition: p, epoch: part.epoch };
        let cancel = part.cancel.clone();
        let stop = self.env.stop.clone();
        match work {
            Work::Invoke(attempt, at) => {
                let task = InvokeTask {
                    settings: self.settings.clone(),
                    invoker: self.env.invoker.clone(),
                    producer: self.env.producer.clone(),
                    outputs: self.env.outputs.clone(),
                    metrics: self.env.metrics.clone(),
                    semaphore: self.semaphore.clone(),
                    timed_out: self.env.timed_out.clone(),
                };
                tokio::spawn(async move { report.send(task.run(attempt, at, cancel, stop).await) });
            }
            Work::DeadLetter(attempt, error) => {
                let producer = self.env.producer.clone();
                let metrics = self.env.metrics.clone();
                let records = dead_letters(&self.settings, &attempt, &error);
                tokio::spawn(async move {
                    tracing::warn!(partition = p, offsets = ?attempt.records.iter().map(|r| r.offset).collect::<Vec<_>>(), %error, "dead-lettering");
                    let n = records.len() as u64;
                    // A dead letter is never dropped: if Kafka refuses it for good (the
                    // dead-letter topic was deleted, or takes smaller records than the source),
                    // the partition waits here, saying why, until that is fixed.
                    let mut wait = Duration::from_secs(1);
                    while let Err(e) = produce_all(&producer, records.clone(), &metrics).await {
                        tracing::error!(partition = p, error = %e, ?wait,
                            "cannot dead-letter: Kafka refuses the record; the partition waits here until the dead-letter topic takes it");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(60));
                    }
                    metrics.dead_lettered.inc_by(n);
                    report.send(Finished::DeadLettered { attempt });
                });
            }
            Work::Blocked(..) => part.in_flight -= 1,
        }
    }

    fn on_report(&mut self, report: Report) {
        let exactly_once = self.settings.exactly_once;
        let Some(part) = self.parts.get_mut(&report.partition) else { return };
        if part.epoch != report.epoch {
            return; // from an earlier ownership of the partition
        }
        part.in_flight = part.in_flight.saturating_sub(1);
        part.stalled = false;
        // A revoked partition's finished work still counts: its outputs are produced (or join
        // the transaction) and its offsets are committed before the partition is released, so
        // the next owner does not repeat it. Only retries no longer start here.
        let revoking = part.revoking;
        match report.finished {
            Finished::Cancelled => {}
            Finished::Interrupted { attempt, reason } => {
                if !revoking {
                    tracing::info!(partition = report.partition, records = attempt.records.len(), %reason, "invoking again");
                    let work = Work::Invoke(attempt, Instant::now() + self.settings.policy.initial);
                    if self.settings.key_ordering {
                        part.retries.push_back(work);
                    } else {
                        part.queue.push_front(work);
                    }
                }
            }
            Finished::DeadLettered { attempt } => {
                let offsets: Vec<i64> = attempt.records.iter().map(|r| r.offset).collect();
                for r in &attempt.records {
                    part.keys.finished(&r.key);
                }
                part.buffered = part.buffered.saturating_sub(offsets.len());
                if !offsets.is_empty() {
                    for o in &offsets {
                        part.tracker.complete(*o);
                    }
                }
            }
            Finished::Invoked { attempt, result, outputs } => {
                let (done, failed, error) = match result {
                    Ok(failures) if failures.is_empty() => (attempt.records, Vec::new(), String::new()),
                    Ok(failures) => match split_partial(&attempt, &failures) {
                        Some((done, failed)) => (done, failed, "reported in batchItemFailures".to_owned()),
                        None => (
                            Vec::new(),
                            attempt.records,
                            "malformed response: batchItemFailures names a record that is not in the batch".to_owned(),
                        ),
                    },
                    Err(e) => (Vec::new(), attempt.records, e),
                };
                let offsets: Vec<i64> = done.iter().map(|r| r.offset).collect();
                for r in &done {
                    part.keys.finished(&r.key);
                }
                part.buffered = part.buffered.saturating_sub(done.len());
                if exactly_once {
                    self.pending.outputs.extend(outputs);
                    self.note_finished(report.partition, offsets);
                } else {
                    for o in offsets {
                        part.tracker.complete(o);
                    }
                }
                if !failed.is_empty() {
                    self.env.metrics.processing_errors.inc();
                    if !revoking {
                        self.retry(report.partition, Attempt { records: failed, failures: attempt.failures }, &error);
                    }
                }
            }
        }
        if !revoking {
            self.maybe_resume(report.partition);
        }
    }

    fn retry(&mut self, p: i32, attempt: Attempt, error: &str) {
        let mut rng = rand::rng();
        let next = on_failure(&self.settings.policy, attempt, error, &mut || rng.random::<f64>());
        let Some(part) = self.parts.get_mut(&p) else { return };
        let work: Vec<Work> = next
            .into_iter()
            .map(|n| match n {
                Next::Retry { attempt, after } => {
                    tracing::info!(partition = p, records = attempt.records.len(), failures = attempt.failures, ?after, %error, "retrying");
                    Work::Invoke(attempt, Instant::now() + after)
                }
                Next::DeadLetter { attempt, error } => Work::DeadLetter(attempt, error),
            })
            .collect();
        if self.settings.key_ordering {
            part.retries.extend(work);
        } else {
            for w in work.into_iter().rev() {
                part.queue.push_front(w);
            }
        }
    }

    fn maybe_resume(&mut self, p: i32) {
        let limit = self.pause_limit() / 2;
        if let Some(part) = self.parts.get_mut(&p)
            && part.paused
            && part.buffered < limit
        {
            part.paused = false;
            let _ = self.consumer.commands.send(ToConsumer::Resume(vec![p]));
        }
    }

    fn note_finished(&mut self, p: i32, offsets: Vec<i64>) {
        let Some(part) = self.parts.get(&p) else { return };
        self.pending.finished.push((p, part.epoch, offsets));
        self.pending.since.get_or_insert_with(Instant::now);
    }

    /// Commit what finished (at-least-once), to the consumer thread.
    fn commit_finished(&mut self, sync: bool) {
        if self.settings.exactly_once {
            return;
        }
        let commits = self.changed_commits(|_| true);
        if commits.is_empty() && !sync {
            return;
        }
        let _ = self.consumer.commands.send(ToConsumer::Commit(commits));
    }

    fn changed_commits(&mut self, include: impl Fn(i32) -> bool) -> Vec<Commit> {
        let mut commits = Vec::new();
        for (p, part) in self.parts.iter_mut() {
            if !include(*p) {
                continue;
            }
            if let Some(c) = part.tracker.commit()
                && part.last_commit.as_ref() != Some(&c)
            {
                commits.push((*p, c.0, c.1.clone()));
                part.last_commit = Some(c);
            }
        }
        commits
    }

    fn all_commits(&mut self, include: impl Fn(i32) -> bool) -> Vec<Commit> {
        let mut commits = Vec::new();
        for (p, part) in self.parts.iter_mut() {
            if let Some(c) = part.tracker.commit()
                && include(*p)
            {
                commits.push((*p, c.0, c.1.clone()));
                part.last_commit = Some(c);
            }
        }
        commits
    }

    /// Under exactly-once: start a transaction with what is pending, when one is due.
    fn maybe_start_transaction(&mut self, now: bool) {
        if self.tx_in_flight || self.pending.since.is_none() {
            return;
        }
        let due = now
            || !self.revocations.is_empty()
            || self.pending.since.is_some_and(|s| s.elapsed() >= COMMIT_EVERY)
            || self.pending.outputs.len() >= 10_000;
        if !due {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut touched = Vec::new();
        for (p, epoch, offsets) in pending.finished {
            if let Some(part) = self.parts.get_mut(&p)
                && part.epoch == epoch
            {
                for o in offsets {
                    part.tracker.complete(o);
                }
                touched.push(p);
            }
        }
        let commits = self.changed_commits(|p| touched.contains(&p));
        let Some(group) = self.consumer.consumer.group_metadata() else {
            tracing::error!("no consumer group metadata for the transaction");
            self.env.failed.store(true, Ordering::SeqCst);
            return;
        };
        self.tx_in_flight = true;
        let producer = self.env.producer.clone();
        let topic = self.settings.topic.clone();
        let done = self.tx_done_tx.clone();
        let metrics = self.env.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let result = transaction(&producer, &topic, pending.outputs, &commits, &group, &metrics);
            let _ = done.send(result);
        });
    }

    fn on_transaction(&mut self, result: Result<(), String>) {
        self.tx_in_flight = false;
        if let Err(e) = result {
            // Nothing of it is visible; the records are consumed again after the restart.
            tracing::error!(error = %e, "the transaction failed; stopping so that a fresh instance resumes from the last commit");
            self.env.failed.store(true, Ordering::SeqCst);
        }
    }

    /// Hand revoked partitions over once their work is drained (and, under exactly-once,
    /// committed).
    fn finish_revocations(&mut self) {
        let mut i = 0;
        while i < self.revocations.len() {
            let r = &self.revocations[i];
            let drained = r
                .partitions
                .iter()
                .all(|(p, epoch)| self.parts.get(p).is_none_or(|part| part.epoch != *epoch || part.in_flight == 0));
            let committed = !self.settings.exactly_once
                || (!self.tx_in_flight
                    && !self.pending.finished.iter().any(|(p, e, _)| r.partitions.contains(&(*p, *e))));
            if drained && !committed && self.settings.exactly_once {
                self.maybe_start_transaction(true);
            }
            if drained && committed {
                let r = self.revocations.remove(i);
                let ours = |p: i32, parts: &HashMap<i32, Part>| {
                    parts.get(&p).is_some_and(|part| r.partitions.contains(&(p, part.epoch)))
                };
                let revoked: Vec<i32> =
                    r.partitions.iter().map(|(p, _)| *p).filter(|p| ours(*p, &self.parts)).collect();
                let commits =
                    if self.settings.exactly_once { Vec::new() } else { self.all_commits(|p| revoked.contains(&p)) };
                for p in &revoked {
                    self.parts.remove(p);
                    self.env.metrics.lag.remove(&PartitionLabel { partition: p.to_string() });
                }
                let _ = r.ack.send(commits);
            } else {
                i += 1;
            }
        }
    }

    /// Stop: let in-flight invocations finish (they are bounded by the invocation timeout),
    /// commit, leave the group.
    async fn shutdown(
        mut self,
        reports: &mut mpsc::UnboundedReceiver<Report>,
        tx_done: &mut mpsc::UnboundedReceiver<Result<(), String>>,
        inbox: &mut mpsc::UnboundedReceiver<FromConsumer>,
    ) {
        let failed = self.env.failed.load(Ordering::SeqCst);
        tracing::info!(
            in_flight = self.parts.values().map(|p| p.in_flight).sum::<usize>(),
            "stopping: finishing in-flight work"
        );
        // Everything below fits in the pod's grace period (invocation timeout + 30 s): in-flight
        // work up to the timeout + 5 s, the last commit or transaction up to 10 s, the producer's
        // flush up to 5 s. What does not make it is consumed again (at-least-once) or aborted
        // and fenced (exactly-once) — never lost.
        let deadline = Instant::now() + self.settings.timeout + Duration::from_secs(5);
        // Tasks see `stop` too: those not yet invoking return at once.
        while !failed
            && (self.parts.values().any(|p| p.in_flight > 0) || self.tx_in_flight)
            && Instant::now() < deadline
        {
            tokio::select! {
                Some(r) = reports.recv() => self.on_report_draining(r),
                Some(t) = tx_done.recv() => self.on_transaction(t),
                Some(m) = inbox.recv() => {
                    if let FromConsumer::Revoked(_, ack) = m { let _ = ack.send(Vec::new()); }
                }
                _ = tokio::time::sleep_until(deadline.into()) => break,
            }
        }
        if !failed && !self.env.failed.load(Ordering::SeqCst) {
            if self.settings.exactly_once {
                self.maybe_start_transaction(true);
                if self.tx_in_flight {
                    match tokio::time::timeout(Duration::from_secs(10), tx_done.recv()).await {
                        Ok(Some(t)) => self.on_transaction(t),
                        Ok(None) => {}
                        Err(_) => tracing::warn!(
                            "the last transaction did not finish in 10 s; its records will be consumed again"
                        ),
                    }
                }
            } else {
                let commits = self.all_commits(|_| true);
                let (ack, done) = std_mpsc::channel();
                let _ = self.consumer.commands.send(ToConsumer::CommitSync(commits, ack));
                let _ = tokio::task::spawn_blocking(move || done.recv_timeout(Duration::from_secs(10))).await;
            }
        }
        for r in self.revocations.drain(..) {
            let _ = r.ack.send(Vec::new());
        }
        let Dispatcher { consumer, env, .. } = self;
        let _ = consumer.commands.send(ToConsumer::Close);
        let ConsumerThread { handle, consumer: client, .. } = consumer;
        // The consumer closes (and leaves the group) when its last handle goes; answer the
        // revocation that closing brings meanwhile.
        let closing = tokio::task::spawn_blocking(move || {
            let _ = handle.join();
            drop(client);
        });
        tokio::pin!(closing);
        loop {
            tokio::select! {
                _ = &mut closing => break,
                Some(m) = inbox.recv() => {
                    if let FromConsumer::Revoked(_, ack) = m { let _ = ack.send(Vec::new()); }
                }
            }
        }
        if let Err(e) = env.producer.flush(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "flushing the producer");
        }
        tracing::info!("stopped");
    }

    fn on_report_draining(&mut self, report: Report) {
        // While stopping, results still count (their outputs are produced), retries do not start.
        self.on_report(report);
        for part in self.parts.values_mut() {
            part.queue.clear();
            part.retries.clear();
        }
    }
}

struct Reporter {
    tx: mpsc::UnboundedSender<Report>,
    partition: i32,
    epoch: u64,
}

impl Reporter {
    fn send(self, finished: Finished) {
        let _ = self.tx.send(Report { partition: self.partition, epoch: self.epoch, finished });
    }
}

struct InvokeTask {
    settings: Arc<Settings>,
    invoker: Invoker,
    producer: FutureProducer,
    outputs: Arc<OutputCheck>,
    metrics: Arc<Metrics>,
    semaphore: Arc<Semaphore>,
    timed_out: watch::Sender<u64>,
}

impl InvokeTask {
    /// Wait for the retry time and a free slot (giving up when the partition is revoked or the
    /// runner stops), then invoke: once started, an invocation runs to its end.
    async fn run(self, attempt: Attempt, at: Instant, cancel: CancellationToken, stop: CancellationToken) -> Finished {
        let waited = async {
            tokio::time::sleep_until(at.into()).await;
            self.semaphore.clone().acquire_owned().await.ok()
        };
        let permit = tokio::select! {
            p = waited => p,
            _ = cancel.cancelled() => None,
            _ = stop.cancelled() => None,
        };
        let Some(_permit) = permit else { return Finished::Cancelled };
        let event = Bytes::from(encode_event(&self.settings.bootstrap_servers, &attempt.records));
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let result = self.invoker.invoke(event, self.settings.timeout).await;
        self.metrics.in_flight.dec();
        self.metrics.invocation_seconds.observe(started.elapsed().as_secs_f64());
        let parsed = result.and_then(|body| {
            parse_response(&body, self.settings.output_topic.as_deref()).map_err(InvokeError::Response)
        });
        match parsed {
            Ok(response) => {
                let failures: Vec<(String, i32, i64)> =
                    response.failures.iter().map(|f| (f.topic.clone(), f.partition, f.offset)).collect();
                // A response is applied whole or not at all: anything wrong with it fails the
                // batch before a single output is produced.
                if let Err(e) = self.applicable(&attempt, &failures, &response.records).await {
                    self.metrics.invocations.get_or_create(&OutcomeLabel { outcome: "bad_response".into() }).inc();
                    tracing::warn!(records = attempt.records.len(), partition = attempt.records[0].partition,
                        first_offset = attempt.records[0].offset, error = %e, "invocation failed");
                    return Finished::Invoked { attempt, result: Err(e), outputs: Vec::new() };
                }
                let outcome = if failures.is_empty() { "ok" } else { "partial" };
                self.metrics.invocations.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
                let outputs = if self.settings.exactly_once {
                    response.records
                } else {
                    if let Err(e) = produce_all(&self.producer, response.records, &self.metrics).await {
                        // Some outputs may be out already: the retry repeats them (at-least-once).
                        tracing::warn!(partition = attempt.records[0].partition, first_offset = attempt.records[0].offset,
                            error = %e, "Kafka refused an output record");
                        return Finished::Invoked { attempt, result: Err(e), outputs: Vec::new() };
                    }
                    Vec::new()
                };
                Finished::Invoked { attempt, result: Ok(failures), outputs }
            }
            Err(InvokeError::Stopped) => Finished::Cancelled,
            Err(InvokeError::Interrupted(reason)) => {
                self.metrics.invocations.get_or_create(&OutcomeLabel { outcome: "interrupted".into() }).inc();
                Finished::Interrupted { attempt, reason }
            }
            Err(e) => {
                self.metrics.invocations.get_or_create(&OutcomeLabel { outcome: e.outcome().into() }).inc();
                if matches!(e, InvokeError::Timeout(_)) {
                    self.timed_out.send_modify(|n| *n += 1);
                }
                tracing::warn!(records = attempt.records.len(), partition = attempt.records[0].partition,
                    first_offset = attempt.records[0].offset, error = %e, "invocation failed");
                Finished::Invoked { attempt, result: Err(e.to_string()), outputs: Vec::new() }
            }
        }
    }
}

impl InvokeTask {
    /// Why the response cannot be applied, if it cannot: `batchItemFailures` naming a record not
    /// in the batch, a record with no topic (and no `output.topic`), or a record Kafka refuses
    /// for good.
    async fn applicable(
        &self,
        attempt: &Attempt,
        failures: &[(String, i32, i64)],
        records: &[OutputRecord],
    ) -> Result<(), String> {
        if !failures.is_empty() && split_partial(attempt, failures).is_none() {
            return Err("malformed response: batchItemFailures names a record that is not in the batch".into());
        }
        if records.iter().any(|r| r.topic.is_empty()) {
            return Err("malformed response: a record names no topic and the function has no output.topic".into());
        }
        self.outputs.check(records).await.map_err(|e| format!("malformed response: {e}"))
    }
}

fn headers_of(record: &OutputRecord) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(record.headers.len());
    for (k, v) in &record.headers {
        h = h.insert(Header { key: k, value: v.as_ref() });
    }
    h
}

fn future_record(record: &OutputRecord) -> FutureRecord<'_, [u8], [u8]> {
    let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&record.topic).headers(headers_of(record));
    if let Some(k) = &record.key {
        r = r.key(k.as_slice());
    }
    if let Some(v) = &record.value {
        r = r.payload(v.as_slice());
    }
    if let Some(p) = record.partition {
        r = r.partition(p);
    }
    r
}

/// Produce every record and wait for every acknowledgement. Failures Kafka may get over (a
/// broker away, a leader moving, a full queue) are retried with a capped backoff until they
/// succeed: an output is never dropped. A record Kafka refuses for good (too large, no such
/// partition or topic) is an `Err`: the batch fails and takes the retry and dead-letter path.
async fn produce_all(producer: &FutureProducer, records: Vec<OutputRecord>, metrics: &Metrics) -> Result<(), String> {
    let mut todo = records;
    let mut wait = Duration::from_millis(100);
    while !todo.is_empty() {
        let mut futures = Vec::with_capacity(todo.len());
        let mut failed = Vec::new();
        let mut refused = None;
        for record in todo {
            loop {
                match producer.send_result(future_record(&record)) {
                    Ok(f) => {
                        futures.push((record, f));
                        break;
                    }
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) if refused_for_good(&e) => {
                        refused.get_or_insert_with(|| format!("topic '{}': {e}", record.topic));
                        break;
                    }
                    Err((e, _)) => {
                        tracing::warn!(topic = %record.topic, error = %e, "cannot queue an output record; retrying");
                        failed.push(record);
                        break;
                    }
                }
            }
        }
        let (records, futures): (Vec<_>, Vec<_>) = futures.into_iter().unzip();
        for (record, result) in records.into_iter().zip(join_all(futures).await) {
            match result {
                Ok(Ok(_)) => {
                    metrics.records_out.inc();
                }
                Ok(Err((e, _))) if refused_for_good(&e) => {
                    refused.get_or_insert_with(|| format!("topic '{}': {e}", record.topic));
                }
                Ok(Err((e, _))) => {
                    tracing::warn!(topic = %record.topic, error = %e, "an output record was not acknowledged; retrying");
                    failed.push(record);
                }
                Err(_) => failed.push(record),
            }
        }
        if let Some(reason) = refused {
            metrics.processing_errors.inc();
            return Err(reason);
        }
        if !failed.is_empty() {
            metrics.processing_errors.inc();
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        todo = failed;
    }
    Ok(())
}

/// Errors no retry can get over: the record itself is wrong for its topic.
fn refused_for_good(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessageSize
                | InvalidMessage
                | InvalidRecord
                | UnknownPartition
                | UnknownTopic
                | UnknownTopicOrPartition
        )
    )
}

/// The dead-letter records of an attempt: the original key, value and headers, plus the error
/// headers of CONTRACTS.md.
fn dead_letters(settings: &Settings, attempt: &Attempt, error: &str) -> Vec<OutputRecord> {
    let Some(topic) = &settings.dead_letter_topic else { return Vec::new() };
    attempt
        .records
        .iter()
        .map(|r| {
            // The original headers as they were (a null value stays null).
            let mut headers: Vec<(String, Option<Vec<u8>>)> = r.headers.clone();
            headers.push(("sluice.error".into(), Some(error.as_bytes().to_vec())));
            headers.push(("sluice.attempts".into(), Some(attempt.failures.to_string().into_bytes())));
            headers.push(("sluice.source.topic".into(), Some(r.topic.clone().into_bytes())));
            headers.push(("sluice.source.partition".into(), Some(r.partition.to_string().into_bytes())));
            headers.push(("sluice.source.offset".into(), Some(r.offset.to_string().into_bytes())));
            OutputRecord { topic: topic.clone(), partition: None, key: r.key.clone(), value: r.value.clone(), headers }
        })
        .collect()
}

/// One transaction: the outputs, then the positions, then commit. Abortable failures are
/// retried a few times (aborting first); anything else is an error for the caller.
fn transaction(
    producer: &FutureProducer,
    topic: &str,
    outputs: Vec<OutputRecord>,
    commits: &[Commit],
    group: &rdkafka::consumer::ConsumerGroupMetadata,
    metrics: &Metrics,
) -> Result<(), String> {
    let timeout = Duration::from_secs(30);
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 << attempt));
        }
        let result = (|| -> Result<(), KafkaError> {
            producer.begin_transaction()?;
            let mut futures = Vec::with_capacity(outputs.len());
            for record in &outputs {
                loop {
                    match producer.send_result(future_record(record)) {
                        Ok(f) => {
                            futures.push(f);
                            break;
                        }
                        Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                            producer.poll(Duration::from_millis(10));
                        }
                        Err((e, _)) => return Err(e),
                    }
                }
            }
            if !commits.is_empty() {
                producer.send_offsets_to_transaction(&offsets_list(topic, commits), group, timeout)?;
            }
            producer.commit_transaction(timeout)?;
            for f in futures {
                if let Ok(Err((e, _))) = futures::executor::block_on(f) {
                    return Err(e);
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                metrics.transactions.inc();
                metrics.records_out.inc_by(outputs.len() as u64);
                return Ok(());
            }
            Err(e) => {
                last = e.to_string();
                let abortable = matches!(&e, KafkaError::Transaction(t) if t.txn_requires_abort() || t.is_retriable());
                if !abortable {
                    return Err(last);
                }
                tracing::warn!(error = %e, "transaction failed; aborting and retrying");
                if let Err(e) = producer.abort_transaction(timeout) {
                    return Err(format!("{last}; then aborting failed: {e}"));
                }
            }
        }
    }
    Err(last)
}
