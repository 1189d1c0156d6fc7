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
    pub in_flight: Option<crate::ingest::InFlight>,
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

/// Events of a DID with seq below the mark are not replayed (takedown purge).
pub type PurgeMarks = Arc<RwLock<HashMap<String, u64>>>;

/// What the rest of the relay holds to talk to the sequencer.
#[derive(Clone)]
pub struct SequencerHandle {
    pub input: mpsc::Sender<Outgoing>,
    pub live: broadcast::Sender<Arc<Sequenced>>,
    pub head: watch::Receiver<u64>,
    log: Arc<Mutex<EventLog>>,
    pub purges: PurgeMarks,
}

impl SequencerHandle {
    /// A snapshot of the log for readers.
    pub fn view(&self) -> LogView {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).view()
    }

    pub fn current_head(&self) -> u64 {
        *self.head.borrow()
    }
}

/// Microseconds since the Unix epoch: the time the log and live events carry.
pub fn now_micros() -> u64 {
    crate::validate::verdict::now_micros()
}

/// Starts the sequencer thread. The thread ends when every input sender is dropped.
pub fn start(
    log: EventLog,
    config: SequencerConfig,
    queue_events: usize,
    metrics: crate::metrics::Metrics,
    state_tx: StateSender,
) -> (SequencerHandle, std::thread::JoinHandle<Result<(), LogError>>) {
    let (input, rx) = mpsc::channel(queue_events.max(1));
    let (live, _) = broadcast::channel(config.live_buffer_events.max(16));
    let (head_tx, head) = watch::channel(log.head());
    metrics.seq_head.set(log.head() as i64);
    let log = Arc::new(Mutex::new(log));
    let handle =
        SequencerHandle { input, live: live.clone(), head, log: log.clone(), purges: PurgeMarks::default() };
    let thread = std::thread::Builder::new()
        .name("sequencer".into())
        .spawn(move || run(log, rx, live, head_tx, config, metrics, state_tx))
        .expect("spawning the sequencer thread");
    (handle, thread)
}

fn run(
    log: Arc<Mutex<EventLog>>,
    mut rx: mpsc::Receiver<Outgoing>,
    live: broadcast::Sender<Arc<Sequenced>>,
    head_tx: watch::Sender<u64>,
    config: SequencerConfig,
    metrics: crate::metrics::Metrics,
    state_tx: StateSender,
) -> Result<(), LogError> {
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
                    // A few events at a time under light load: each batch costs an fsync and
                    // wakes every consumer, so wait a moment for company.
                    let now = std::time::Instant::now();
                    if now >= linger_until {
                        break;
                    }
                    std::thread::sleep((linger_until - now).min(Duration::from_micros(250)));
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
        log.lock().unwrap_or_else(|p| p.into_inner()).append_batch(&records)?;
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
            let removed = log.lock().unwrap_or_else(|p| p.into_inner()).collect_garbage(cutoff)?;
            if removed > 0 {
                tracing::info!(removed, "collected event log segments older than the replay window");
            }
        }
    }
    Ok(())
}

fn approx_size(event: &Event) -> usize {
    match event {
        Event::Commit(c) => c.blocks.len() + 256,
        Event::Sync(s) => s.blocks.len() + 128,
        _ => 128,
    }
}
