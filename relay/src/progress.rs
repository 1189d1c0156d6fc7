//! Where each upstream event is between ingest and the log, and when the relay last
//! accepted one. Ingest creates the trackers, the validation stage carries an [`InFlight`]
//! with each event and the sequencer drops it once the event is durable (or validation
//! drops it with a rejected event), so neither stage names the other's types.

use crate::clock::unix_now;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Where a host's events are: the last upstream seq received, and the seqs still in the
/// pipeline (queued, being validated, or waiting for the log's fsync). The cursor saved to
/// the database stays below anything in flight, so after a crash the host re-sends exactly
/// what had not reached the log.
#[derive(Debug, Default)]
pub struct HostProgress {
    received: AtomicI64,
    /// Unix seconds of the last event (for idle detection); 0 = none yet.
    last_event_unix: AtomicU64,
    /// Set when the host was marked `idle`; the next event marks it `active` again.
    pub idle: AtomicBool,
    in_flight: std::sync::Mutex<std::collections::BTreeSet<i64>>,
    /// The cursor last stored in the database.
    pub(crate) saved: AtomicI64,
}

impl HostProgress {
    pub fn new(cursor: i64) -> HostProgress {
        HostProgress {
            received: AtomicI64::new(cursor),
            last_event_unix: unix_now().into(),
            idle: AtomicBool::new(false),
            in_flight: Default::default(),
            saved: AtomicI64::new(cursor),
        }
    }

    pub fn received(&self) -> i64 {
        self.received.load(Ordering::Relaxed)
    }

    pub(crate) fn reset(&self, cursor: i64) {
        self.received.store(cursor, Ordering::Relaxed);
    }

    /// Seconds since the host's last event (or since the subscription started).
    pub fn silent_for(&self) -> u64 {
        unix_now().saturating_sub(self.last_event_unix.load(Ordering::Relaxed))
    }

    /// Marks `seq` received and in flight; the guard finishes it when dropped.
    pub fn start(self: &Arc<Self>, seq: i64) -> InFlight {
        // Under the in-flight lock, so `durable_cursor` never sees `seq` received but
        // not yet in flight (it would call it durable).
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        in_flight.insert(seq);
        self.received.store(seq, Ordering::Relaxed);
        drop(in_flight);
        self.last_event_unix.store(unix_now(), Ordering::Relaxed);
        InFlight { progress: self.clone(), seq }
    }

    /// The highest seq below which everything is persisted or dropped.
    pub fn durable_cursor(&self) -> i64 {
        let in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match in_flight.first() {
            Some(first) => first - 1,
            None => self.received(),
        }
    }

    /// Events received and not yet durable nor dropped.
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The cursor last stored in the database.
    pub fn saved(&self) -> i64 {
        self.saved.load(Ordering::Relaxed)
    }
}

/// An upstream event still in the pipeline; dropping it (after the log's fsync, or when
/// the event is rejected) marks it done.
#[derive(Debug)]
pub struct InFlight {
    progress: Arc<HostProgress>,
    seq: i64,
}

impl InFlight {
    /// An event that did not come from a subscription (an admin re-sync): finishing it moves
    /// no host's cursor.
    pub fn detached() -> InFlight {
        InFlight { progress: Arc::new(HostProgress::new(0)), seq: 0 }
    }

    /// Leaves the event in flight for good: it was not taken (the relay is shutting down),
    /// so the host's durable cursor must stay below it and the host sends it again after
    /// the restart.
    pub fn abandon(self) {
        std::mem::forget(self);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.progress.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.seq);
    }
}

/// When the relay last accepted an event, for readiness ("no event accepted for N s").
#[derive(Debug)]
pub struct Activity {
    last_accepted_unix: AtomicU64,
    started: std::time::Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity { last_accepted_unix: AtomicU64::new(0), started: std::time::Instant::now() }
    }
}

impl Activity {
    pub fn note_accepted(&self) {
        self.last_accepted_unix.store(unix_now(), Ordering::Relaxed);
    }

    /// Seconds since the last accepted event (since the epoch when none was accepted yet).
    pub fn silent_for(&self) -> u64 {
        unix_now().saturating_sub(self.last_accepted_unix.load(Ordering::Relaxed))
    }

    /// How long the relay has been running.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}
