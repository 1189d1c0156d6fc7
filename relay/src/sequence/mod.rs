//! Sequence/persist stage: gives each accepted event the relay's own seq, writes it to
//! the event log durably, and only then hands it to the fan-out.
//!
//! One thread owns the log. It takes events from a bounded queue in batches (group
//! commit: one `fdatasync` per batch), so throughput stays high while every broadcast
//! event is already on disk.

pub mod log;

use crate::atproto::frame::{self, Event};
use log::{EventLog, LogError, LogView};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// An event ready to sequence.
#[derive(Debug)]
pub struct Outgoing {
    pub did: String,
    pub event: Event,
    /// Marks the upstream event done when dropped, which happens after the fsync.
    pub in_flight: Option<crate::progress::InFlight>,
    /// Repo state to store once the event is durable.
    pub state: Option<StateUpdate>,
}

/// The repo state an accepted `#commit`/`#sync` sets. It is written to SQL only after the
/// event is in the log (and replayed from the log on start), so SQL never claims a rev the
/// log does not have: a host re-sending an event after a crash gets exactly-once behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateUpdate {
    pub rev: String,
    pub data: String,
    pub commit: Option<String>,
}

/// (relay seq, DID, update), in seq order.
pub type StateSender = mpsc::Sender<(u64, String, StateUpdate)>;

/// A sequenced event as sent to consumers.
#[derive(Debug)]
pub struct Sequenced {
    pub seq: u64,
    pub did: String,
    /// When it was sequenced (µs since the epoch; the log keeps the same time).
    pub time_micros: u64,
    /// Shared by every consumer: sending it to one more consumer is a reference-count bump.
    pub frame: bytes::Bytes,
}

/// Limits of the stage; defaults are used by `relay serve`.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// Lowest seq the relay will emit (indigo's RELAY_INITIAL_SEQ_NUMBER).
    pub initial_seq: u64,
    /// Most events written per fsync.
    pub max_batch_events: usize,
    /// Most frame bytes written per fsync.
    pub max_batch_bytes: usize,
    /// Events kept in memory for live consumers (each consumer lagging further reads from disk).
    pub live_buffer_events: usize,
    /// How long events stay replayable.
    pub replay_window: Duration,
    /// How often old segments are collected.
    pub gc_interval: Duration,
    /// How long to wait for more events before writing a batch smaller than `LINGER_ENOUGH`.
    pub linger: Duration,
}

/// A batch this large is written at once, without lingering.
const LINGER_ENOUGH: usize = 64;

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            initial_seq: 1,
            max_batch_events: 1024,
            max_batch_bytes: 8 << 20,
            live_buffer_events: 8192,
            replay_window: Duration::from_secs(72 * 3600),
            gc_interval: Duration::from_secs(60),
            linger: Duration::ZERO,
        }
    }
}

/// Why the log cannot be written right now (`None` while it can). While set, the
/// sequencer retries its batch and takes nothing new: the queues in front of it fill and
/// intake stops, so no upstream cursor moves past an event that is not on disk.
pub type WriteFailure = Arc<RwLock<Option<String>>>;

/// First wait before writing a failed batch again; doubled per failure up to the cap.
const WRITE_RETRY_FIRST: Duration = Duration::from_millis(100);
const WRITE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Events of a DID with seq below the mark are not replayed (takedown purge).
pub type PurgeMarks = Arc<RwLock<HashMap<String, u64>>>;

/// The writer end: what the validation stage (and an operator's takedown) sends events
/// through. Closing it is how shutdown tells the sequencer that no more events come: the
/// thread writes what is queued, then ends, and the log closes with it.
#[derive(Clone)]
pub struct SequencerInput {
    sender: Arc<RwLock<Option<mpsc::Sender<Outgoing>>>>,
}

/// The sequencer no longer takes events (the relay is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the sequencer is closed")]
pub struct Closed;

impl SequencerInput {
    /// Queues an event, waiting while the queue is full.
    pub async fn send(&self, outgoing: Outgoing) -> Result<(), Closed> {
        let sender = self.sender.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or(Closed)?;
        sender.send(outgoing).await.map_err(|_| Closed)
    }

    /// Takes no more events; those queued are still written.
    pub fn close(&self) {
        self.sender.write().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// The reader end: the live broadcast, the head, the log for replay, takedown purge marks
/// and the write-failure flag that health reports.
#[derive(Clone)]
pub struct SequencerReader {
    pub live: broadcast::Sender<Arc<Sequenced>>,
    pub head: watch::Receiver<u64>,
    log: Arc<Mutex<EventLog>>,
    pub purges: PurgeMarks,
    write_failure: WriteFailure,
}

impl SequencerReader {
    /// A snapshot of the log for readers.
    pub fn view(&self) -> LogView {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).view()
    }

    pub fn current_head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Why events cannot be written now, if they cannot (health reports it).
    pub fn write_failure(&self) -> Option<String> {
        self.write_failure.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Microseconds since the Unix epoch: the time the log and live events carry.
pub use crate::clock::now_micros;

/// Starts the sequencer thread. The thread ends once the input is closed and drained.
pub fn start(
    log: EventLog,
    config: SequencerConfig,
    queue_events: usize,
    metrics: crate::metrics::Metrics,
    state_tx: StateSender,
) -> (SequencerInput, SequencerReader, std::thread::JoinHandle<Result<(), LogError>>) {
    let (input, rx) = mpsc::channel(queue_events.max(1));
    let (live, _) = broadcast::channel(config.live_buffer_events.max(16));
    let (head_tx, head) = watch::channel(log.head());
    metrics.seq_head.set(log.head() as i64);
    let log = Arc::new(Mutex::new(log));
    let write_failure = WriteFailure::default();
    let input = SequencerInput { sender: Arc::new(RwLock::new(Some(input))) };
    let reader = SequencerReader {
        live: live.clone(),
        head,
        log: log.clone(),
        purges: PurgeMarks::default(),
        write_failure: write_failure.clone(),
    };
    let outputs = Outputs { live, head_tx, state_tx, write_failure };
    let thread = std::thread::Builder::new()
        .name("sequencer".into())
        .spawn(move || run(log, rx, outputs, config, metrics))
        .expect("spawning the sequencer thread");
    (input, reader, thread)
}

/// Where the sequencer thread sends what it wrote.
struct Outputs {
    live: broadcast::Sender<Arc<Sequenced>>,
    head_tx: watch::Sender<u64>,
    state_tx: StateSender,
    write_failure: WriteFailure,
}

fn run(
    log: Arc<Mutex<EventLog>>,
    mut rx: mpsc::Receiver<Outgoing>,
    outputs: Outputs,
    config: SequencerConfig,
    metrics: crate::metrics::Metrics,
) -> Result<(), LogError> {
    let Outputs { live, head_tx, state_tx, write_failure } = outputs;
    let mut next_seq = {
        let log = log.lock().unwrap_or_else(|p| p.into_inner());
        (log.head() + 1).max(config.initial_seq)
    };
    let mut last_gc = std::time::Instant::now();
    let mut batch: Vec<Outgoing> = Vec::with_capacity(config.max_batch_events);
    while let Some(first) = rx.blocking_recv() {
        let linger_until = std::time::Instant::now() + config.linger;
        batch.push(first);
        let mut bytes = 0usize;
        while batch.len() < config.max_batch_events && bytes < config.max_batch_bytes {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += approx_size(&item.event);
                    batch.push(item);
                }
                Err(mpsc::error::TryRecvError::Empty) if batch.len() < LINGER_ENOUGH => {
                    // A few events at a time: each batch costs an fsync and wakes every
                    // consumer, so wait a moment for company. One sleep for the rest of the
                    // linger, not a poll in small steps: at saturation every step was a
                    // syscall and a wake-up (about 11 % of this thread's CPU).
                    let now = std::time::Instant::now();
                    if now >= linger_until {
                        break;
                    }
                    std::thread::sleep(linger_until - now);
                }
                Err(_) => break,
            }
        }
        let now = now_micros();
        let mut sequenced = Vec::with_capacity(batch.len());
        let mut completions = Vec::with_capacity(batch.len());
        let mut states = Vec::new();
        for Outgoing { did, mut event, in_flight, state } in batch.drain(..) {
            completions.push(in_flight);
            event.set_seq(next_seq as i64);
            match frame::encode(&event) {
                Ok(bytes) => {
                    if let Some(state) = state {
                        states.push((next_seq, did.clone(), state));
                    }
                    sequenced.push(Sequenced { seq: next_seq, did, time_micros: now, frame: bytes.into() });
                    next_seq += 1;
                }
                Err(error) => tracing::error!(%error, "dropping an event that cannot be encoded"),
            }
        }
        let records: Vec<(u64, u64, &str, &[u8])> =
            sequenced.iter().map(|s| (s.seq, s.time_micros, s.did.as_str(), &s.frame[..])).collect();
        let write_started = std::time::Instant::now();
        write_until_done(&log, &records, &write_failure, &metrics);
        metrics.log_write_seconds.observe(write_started.elapsed().as_secs_f64());
        // Durable now: the upstream cursors may move past these events, and the repo
        // state they set may be stored.
        drop(completions);
        for update in states {
            if state_tx.blocking_send(update).is_err() {
                tracing::warn!("repo state writer has stopped; state will be recovered from the log");
                break;
            }
        }
        if let Some(last) = sequenced.last() {
            let _ = head_tx.send(last.seq);
            metrics.seq_head.set(last.seq as i64);
        }
        for event in sequenced {
            metrics.events_out.inc();
            // No receivers is fine: nobody is connected.
            let _ = live.send(Arc::new(event));
        }
        if last_gc.elapsed() >= config.gc_interval {
            last_gc = std::time::Instant::now();
            let cutoff = now.saturating_sub(config.replay_window.as_micros() as u64);
            match log.lock().unwrap_or_else(|p| p.into_inner()).collect_garbage(cutoff) {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(removed, "collected event log segments older than the replay window")
                }
                Err(error) => tracing::warn!(%error, "collecting old event log segments; retried next round"),
            }
        }
    }
    Ok(())
}

/// Writes the batch, retrying for as long as the log refuses it (a full disk, an I/O error).
/// The batch's upstream events stay in flight meanwhile, so no host cursor moves past them;
/// the sequencer takes nothing new, so the queues fill and intake stops. When the write
/// goes through (space was freed), intake resumes by itself.
fn write_until_done(
    log: &Mutex<EventLog>,
    records: &[(u64, u64, &str, &[u8])],
    write_failure: &WriteFailure,
    metrics: &crate::metrics::Metrics,
) {
    let mut delay = WRITE_RETRY_FIRST;
    let mut failures = 0u32;
    loop {
        let result = log.lock().unwrap_or_else(|p| p.into_inner()).append_batch(records);
        let error = match result {
            Ok(()) => break,
            Err(error) => error,
        };
        failures += 1;
        metrics.log_write_failures.inc();
        metrics.intake_stopped.set(1);
        let reason = format!("event log write failed: {error}");
        if failures == 1 || failures % 20 == 0 {
            tracing::error!(%error, failures, events = records.len(), "cannot write the event log: intake stopped, retrying the batch (no upstream cursor moves meanwhile)");
        }
        *write_failure.write().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        std::thread::sleep(delay);
        delay = (delay * 2).min(WRITE_RETRY_MAX);
    }
    if failures > 0 {
        *write_failure.write().unwrap_or_else(|p| p.into_inner()) = None;
        metrics.intake_stopped.set(0);
        tracing::warn!(failures, "event log is writable again: intake resumed");
    }
}

fn approx_size(event: &Event) -> usize {
    match event {
        Event::Commit(c) => c.blocks.len() + 256,
        Event::Sync(s) => s.blocks.len() + 128,
        _ => 128,
    }
}
