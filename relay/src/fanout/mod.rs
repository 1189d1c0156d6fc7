//! Fan-out stage: `com.atproto.sync.subscribeRepos` for consumers.
//!
//! Each consumer follows the live broadcast while it keeps up. When it falls behind
//! (its slot in the in-memory buffer is overwritten) it does not get dropped, as in
//! indigo: it reads from the event log on disk from where it was, then rejoins live.
//! Only a consumer whose position has left the replay window gets `ConsumerTooSlow`.
//! Memory per consumer is one disk chunk (bounded in events and bytes) at most.

use crate::atproto::frame;
use crate::metrics::Metrics;
use crate::sequence::{log::LogRecord, Sequenced, SequencerReader};
use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Consumer limits; defaults are used by `relay serve`.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Events read from disk per chunk when catching up.
    pub replay_chunk_events: usize,
    /// Frame bytes read from disk per chunk.
    pub replay_chunk_bytes: usize,
    /// A send that takes longer than this closes the connection.
    pub write_timeout: Duration,
    /// Interval between WebSocket pings.
    pub ping_interval: Duration,
    /// Longest wait for a closing handshake: a peer that stopped reading cannot take the
    /// close frame either, and must not hold its task and buffers any longer than this.
    pub close_timeout: Duration,
    /// Consumers connected at once, in total.
    pub max_consumers: usize,
    /// Consumers connected at once from one IP address.
    pub max_consumers_per_ip: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            // Each lagging consumer holds at most one chunk: 100 of them at 1 MiB stay small.
            replay_chunk_events: 1000,
            replay_chunk_bytes: 1 << 20,
            write_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            max_consumers: 10_000,
            max_consumers_per_ip: 100,
        }
    }
}

/// Where a new consumer starts, or why it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Send events with seq > this value (`#info OutdatedCursor` first when `outdated`).
    After { seq: u64, outdated: bool },
    /// The cursor is ahead of the log: send `FutureCursor` and close.
    Future,
}

/// The spec's cursor rules, as a pure function of the cursor and the log's bounds.
pub fn start_position(cursor: Option<u64>, head: u64, oldest: Option<u64>) -> Start {
    let before_oldest = oldest.map_or(head, |o| o.saturating_sub(1));
    match cursor {
        None => Start::After { seq: head, outdated: false },
        Some(c) if c > head => Start::Future,
        Some(0) => Start::After { seq: before_oldest, outdated: false },
        Some(c) if c < before_oldest => Start::After { seq: before_oldest, outdated: true },
        Some(c) => Start::After { seq: c, outdated: false },
    }
}

/// Shared state for all consumers.
pub struct Fanout {
    pub sequencer: SequencerReader,
    pub config: FanoutConfig,
    pub metrics: Metrics,
    pub consumers: Mutex<HashMap<u64, Arc<ConsumerInfo>>>,
    next_id: AtomicU64,
    admitted: Mutex<Admitted>,
}

/// Connections counted against the consumer limits (from admission to the socket's end).
#[derive(Default)]
struct Admitted {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a new consumer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooManyConsumers { limit: usize },
    TooManyFromAddress { limit: usize },
}

impl Refused {
    /// Label for `relay_consumers_refused_total`.
    pub fn limit_name(&self) -> &'static str {
        match self {
            Refused::TooManyConsumers { .. } => "total",
            Refused::TooManyFromAddress { .. } => "per_ip",
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::TooManyConsumers { limit } => {
                write!(f, "the relay serves its maximum of {limit} consumers; try again later")
            }
            Refused::TooManyFromAddress { limit } => {
                write!(f, "at most {limit} consumers may connect from one address")
            }
        }
    }
}

/// A consumer's place under the limits; released when dropped (also when the upgrade fails).
pub struct Admission {
    fanout: Arc<Fanout>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut admitted = self.fanout.admitted.lock().unwrap_or_else(|p| p.into_inner());
        admitted.total = admitted.total.saturating_sub(1);
        if let Some(count) = admitted.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                admitted.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Fanout {
    pub fn new(sequencer: SequencerReader, config: FanoutConfig, metrics: Metrics) -> Fanout {
        Fanout {
            sequencer,
            config,
            metrics,
            consumers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            admitted: Mutex::default(),
        }
    }

    /// Consumers holding a place under the limits (admitted, upgrading or connected).
    pub fn admitted(&self) -> usize {
        self.admitted.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Takes a place for a new consumer from `ip`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refused> {
        let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = admitted.per_ip.get(&ip).copied().unwrap_or(0);
        let refused = if admitted.total >= self.config.max_consumers {
            Some(Refused::TooManyConsumers { limit: self.config.max_consumers })
        } else if from_ip >= self.config.max_consumers_per_ip {
            Some(Refused::TooManyFromAddress { limit: self.config.max_consumers_per_ip })
        } else {
            None
        };
        if let Some(refused) = refused {
            self.metrics.consumers_refused.with_label_values(&[refused.limit_name()]).inc();
            return Err(refused);
        }
        admitted.total += 1;
        *admitted.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Admission { fanout: self.clone(), ip })
    }

    /// A snapshot of connected consumers (admin API).
    pub fn list_consumers(&self) -> Vec<serde_json::Value> {
        let consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = consumers
            .values()
            .map(|c| {
                serde_json::json!({
                    "id": c.id,
                    "remote_addr": c.remote_addr,
                    "user_agent": c.user_agent,
                    "events_consumed": c.events_sent.load(Ordering::Relaxed),
                    "connected_at": c.connected_at,
                })
            })
            .collect();
        out.sort_by_key(|v| v["id"].as_u64());
        out
    }
}

/// What the admin API shows about a consumer.
pub struct ConsumerInfo {
    pub id: u64,
    pub remote_addr: String,
    pub user_agent: String,
    pub connected_at: String,
    pub events_sent: AtomicU64,
}

enum Next {
    /// A frame read from disk, with its sequencing time.
    Frame(Vec<u8>, u64),
    Shared(Arc<Sequenced>),
    TooSlow,
    Closed,
}

/// Produces a consumer's frames in order, from disk or live.
struct Feed {
    position: u64,
    pending: VecDeque<LogRecord>,
    live: tokio::sync::broadcast::Receiver<Arc<Sequenced>>,
    catching_up: bool,
}

impl Feed {
    fn purged(fanout: &Fanout, did: &str, seq: u64) -> bool {
        let marks = fanout.sequencer.purges.read().unwrap_or_else(|p| p.into_inner());
        marks.get(did).is_some_and(|mark| seq < *mark)
    }

    async fn next(&mut self, fanout: &Fanout) -> Next {
        loop {
            if let Some(record) = self.pending.pop_front() {
                self.position = record.seq;
                if Self::purged(fanout, &record.did, record.seq) {
                    continue;
                }
                return Next::Frame(record.frame, record.time_micros);
            }
            if self.catching_up {
                let view = fanout.sequencer.view();
                if self.position >= view.head() {
                    self.catching_up = false;
                    continue;
                }
                if view.oldest_seq().is_some_and(|oldest| self.position + 1 < oldest) {
                    return Next::TooSlow;
                }
                let (after, events, bytes) =
                    (self.position, fanout.config.replay_chunk_events, fanout.config.replay_chunk_bytes);
                let chunk = tokio::task::spawn_blocking(move || view.read_after(after, events, bytes)).await;
                match chunk {
                    Ok(Ok(records)) if !records.is_empty() => self.pending.extend(records),
                    Ok(Ok(_)) => self.catching_up = false,
                    Ok(Err(error)) => {
                        tracing::error!(%error, "reading the event log for a consumer");
                        return Next::Closed;
                    }
                    Err(_) => return Next::Closed,
                }
                continue;
            }
            match self.live.recv().await {
                Ok(event) if event.seq <= self.position => continue,
                Ok(event) if event.seq > self.position + 1 => {
                    // Something between was broadcast before we subscribed: fetch it from disk.
                    self.catching_up = true;
                    self.pending.clear();
                    // This event will be re-read from disk in order.
                    continue;
                }
                Ok(event) => {
                    self.position = event.seq;
                    return Next::Shared(event);
                }
                Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => return Next::Closed,
            }
        }
    }
}

/// What a [`Follower`] yields.
pub enum Followed {
    Event {
        seq: u64,
        frame: bytes::Bytes,
    },
    /// The follower was behind the replay window; it continues from the oldest event kept.
    FellBehind {
        resumed_after: u64,
    },
    Closed,
}

/// An in-process reader of the relay's own output in seq order from a position: the same
/// disk-then-live feed a consumer with a cursor gets (the collection indexer uses it).
pub struct Follower {
    feed: Feed,
    fanout: Arc<Fanout>,
}

impl Follower {
    pub fn new(fanout: Arc<Fanout>, after: u64) -> Follower {
        let live = fanout.sequencer.live.subscribe();
        let feed = Feed { position: after, pending: VecDeque::new(), live, catching_up: true };
        Follower { feed, fanout }
    }

    pub async fn next(&mut self) -> Followed {
        match self.feed.next(&self.fanout).await {
            Next::Frame(bytes, _) => Followed::Event { seq: self.feed.position, frame: bytes.into() },
            Next::Shared(event) => Followed::Event { seq: event.seq, frame: event.frame.clone() },
            Next::TooSlow => {
                let oldest = self.fanout.sequencer.view().oldest_seq().unwrap_or(1);
                self.feed.position = oldest.saturating_sub(1);
                self.feed.pending.clear();
                Followed::FellBehind { resumed_after: self.feed.position }
            }
            Next::Closed => Followed::Closed,
        }
    }

    /// The next event if one is available without waiting (for batching).
    pub fn next_ready(&mut self) -> Option<Followed> {
        match self.feed.next_ready(&self.fanout)? {
            Next::Frame(bytes, _) => Some(Followed::Event { seq: self.feed.position, frame: bytes.into() }),
            Next::Shared(event) => Some(Followed::Event { seq: event.seq, frame: event.frame.clone() }),
            Next::TooSlow | Next::Closed => None,
        }
    }
}

/// Most frames written before one flush.
const MAX_BURST: usize = 64;

impl Feed {
    /// The next frame if one is available without waiting (in order, same rules as `next`).
    fn next_ready(&mut self, fanout: &Fanout) -> Option<Next> {
        loop {
            if let Some(record) = self.pending.pop_front() {
                self.position = record.seq;
                if Self::purged(fanout, &record.did, record.seq) {
                    continue;
                }
                return Some(Next::Frame(record.frame, record.time_micros));
            }
            if self.catching_up {
                return None;
            }
            match self.live.try_recv() {
                Ok(event) if event.seq <= self.position => continue,
                Ok(event) if event.seq == self.position + 1 => {
                    self.position = event.seq;
                    return Some(Next::Shared(event));
                }
                Ok(_) | Err(TryRecvError::Lagged(_)) => {
                    self.catching_up = true;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }
}

fn info_frame(name: &str, message: &str) -> Vec<u8> {
    let info = frame::Info { name: name.to_string(), message: Some(message.to_string()) };
    frame::encode(&frame::Event::Info(info)).expect("info frames always encode")
}

/// Runs one consumer connection to completion. `admission` holds its place under the
/// consumer limits until the connection is gone.
pub async fn serve_consumer(
    socket: WebSocket,
    cursor: Option<u64>,
    fanout: Arc<Fanout>,
    remote_addr: String,
    user_agent: String,
    admission: Admission,
) {
    fanout.metrics.consumers.inc();
    let id = fanout.next_id.fetch_add(1, Ordering::Relaxed);
    let info = Arc::new(ConsumerInfo {
        id,
        remote_addr,
        user_agent,
        connected_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        events_sent: AtomicU64::new(0),
    });
    fanout.consumers.lock().unwrap_or_else(|p| p.into_inner()).insert(id, info.clone());
    let _guard = ConsumerGuard { fanout: fanout.clone(), id, admission: Some(admission) };
    // Subscribe before reading the head, so nothing written after this moment is missed.
    let live = fanout.sequencer.live.subscribe();
    let view = fanout.sequencer.view();
    let (mut sink, mut incoming) = socket.split();
    let timeout = fanout.config.write_timeout;
    let start = start_position(cursor, view.head(), view.oldest_seq());
    let position = match start {
        Start::Future => {
            let frame = frame::error_frame("FutureCursor", Some("cursor is ahead of the relay's sequence"));
            let _ = tokio::time::timeout(timeout, sink.send(Message::Binary(frame.into()))).await;
            let _ = tokio::time::timeout(fanout.config.close_timeout, sink.close()).await;
            return;
        }
        Start::After { seq, outdated } => {
            if outdated {
                let frame = info_frame("OutdatedCursor", "cursor is older than the replay window");
                if tokio::time::timeout(timeout, sink.send(Message::Binary(frame.into()))).await.is_err() {
                    return;
                }
            }
            seq
        }
    };
    let mut feed = Feed { position, pending: VecDeque::new(), live, catching_up: cursor.is_some() };
    let mut ping = tokio::time::interval(fanout.config.ping_interval);
    ping.tick().await;
    loop {
        tokio::select! {
            next = feed.next(&fanout) => {
                let (message, oldest) = match next {
                    Next::Frame(bytes, time) => (Message::Binary(bytes.into()), time),
                    Next::Shared(event) => (Message::Binary(event.frame.clone()), event.time_micros),
                    Next::TooSlow => {
                        fanout.metrics.consumer_too_slow.inc();
                        let frame = frame::error_frame("ConsumerTooSlow", Some("fell out of the replay window"));
                        let _ = tokio::time::timeout(timeout, sink.send(Message::Binary(frame.into()))).await;
                        break;
                    }
                    Next::Closed => break,
                };
                // Queue this frame and whatever else is ready, then flush once: one write
                // syscall per burst instead of one per frame.
                let mut burst = vec![message];
                while burst.len() < MAX_BURST {
                    match feed.next_ready(&fanout) {
                        Some(Next::Frame(bytes, _)) => burst.push(Message::Binary(bytes.into())),
                        Some(Next::Shared(event)) => burst.push(Message::Binary(event.frame.clone())),
                        _ => break,
                    }
                }
                let count = burst.len() as u64;
                let write = async {
                    for message in burst {
                        sink.feed(message).await?;
                    }
                    sink.flush().await
                };
                match tokio::time::timeout(timeout, write).await {
                    Ok(Ok(())) => {
                        info.events_sent.fetch_add(count, Ordering::Relaxed);
                        // One observation per write (not per frame): cheap at 100 consumers.
                        let lag = crate::sequence::now_micros().saturating_sub(oldest);
                        fanout.metrics.consumer_delivery_lag_seconds.observe(lag as f64 / 1e6);
                    }
                    _ => break,
                }
            }
            message = incoming.next() => {
                // Frames from consumers are ignored; a close or error ends the connection.
                match message {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                if !matches!(tokio::time::timeout(timeout, sink.send(Message::Ping(Vec::new().into()))).await, Ok(Ok(()))) {
                    break;
                }
            }
        }
    }
    // Bounded: a peer that stopped reading never completes the closing handshake; after the
    // deadline the socket is dropped, which releases the task and its buffers.
    let _ = tokio::time::timeout(fanout.config.close_timeout, sink.close()).await;
}

struct ConsumerGuard {
    fanout: Arc<Fanout>,
    id: u64,
    admission: Option<Admission>,
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        // The place under the limits goes first: whoever sees the consumer gone from the
        // list can connect again at once.
        self.admission.take();
        self.fanout.metrics.consumers.dec();
        self.fanout.consumers.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admission_counts_per_address_and_in_total_and_releases() {
        let metrics = Metrics::new();
        let dir = std::env::temp_dir().join(format!("relay-fanout-admit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = crate::sequence::log::EventLog::open(crate::sequence::log::LogConfig {
            dir: dir.clone(),
            segment_bytes: 1 << 20,
            sync: false,
            index_stride_bytes: 4096,
        })
        .expect("log");
        let (state_tx, _state_rx) = tokio::sync::mpsc::channel(16);
        let (_input, sequencer, _thread) =
            crate::sequence::start(log, Default::default(), 16, metrics.clone(), state_tx);
        let config = FanoutConfig { max_consumers: 3, max_consumers_per_ip: 2, ..FanoutConfig::default() };
        let fanout = Arc::new(Fanout::new(sequencer, config, metrics));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().expect("ip"), "192.0.2.2".parse().expect("ip"));
        let first = fanout.admit(a).expect("first");
        let _second = fanout.admit(a).expect("second");
        assert_eq!(fanout.admit(a).err(), Some(Refused::TooManyFromAddress { limit: 2 }));
        let _third = fanout.admit(b).expect("another address");
        assert_eq!(fanout.admit(b).err(), Some(Refused::TooManyConsumers { limit: 3 }));
        drop(first);
        assert!(fanout.admit(a).is_ok(), "a released place is free again");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cursor_rules() {
        // Log holds seqs 100..=200.
        let (head, oldest) = (200, Some(100));
        assert_eq!(start_position(None, head, oldest), Start::After { seq: 200, outdated: false });
        assert_eq!(start_position(Some(201), head, oldest), Start::Future);
        assert_eq!(start_position(Some(0), head, oldest), Start::After { seq: 99, outdated: false });
        assert_eq!(start_position(Some(5), head, oldest), Start::After { seq: 99, outdated: true });
        assert_eq!(start_position(Some(99), head, oldest), Start::After { seq: 99, outdated: false });
        assert_eq!(start_position(Some(150), head, oldest), Start::After { seq: 150, outdated: false });
        assert_eq!(start_position(Some(200), head, oldest), Start::After { seq: 200, outdated: false });
        // Empty log.
        assert_eq!(start_position(Some(0), 0, None), Start::After { seq: 0, outdated: false });
        assert_eq!(start_position(Some(1), 0, None), Start::Future);
    }
}
