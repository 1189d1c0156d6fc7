//! `relay coverage firehose`: subscribe to every given relay at once and compare what each
//! delivers in one common window.
//!
//! Timeline: every relay is dialled at once, without a cursor (live only); after the warm-up
//! (connections settle, a reconnect burst passes) comes the window, the same wall-clock span
//! for all relays. Counts (events by type, unique DIDs, unique `(did, rev)` commits) are
//! taken inside the window. For coverage, a commit is in the *union* when some relay
//! delivered it inside the window, and a relay *covers* it when it delivered it inside the
//! window widened by the grace on both sides: a relay that is a little slower or faster than
//! another is not charged for a commit that fell just across an edge.
//!
//! A relay that replays old events would inflate the union with commits nobody else
//! delivered in the window, so such relays are flagged first and left out of the union:
//! flagged when it delivers far more events than the median relay, when a share of its
//! commits carry revs much older than the window, or when its seq goes backwards (a live
//! stream's seq only grows). Frames are read with the counting decoder ([`super::wire`]),
//! and each relay is counted by its own task with its own sets, so relays scale across cores.

use super::report::{FirehoseRelay, FirehoseReport};
use super::wire::{self, EventKind};
use super::{key_of, CoverageError, Progress, RelayEndpoint, PROGRESS_INTERVAL};
use crate::config::parse_duration;
use clap::Args;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Args, Debug, Clone)]
pub struct FirehoseArgs {
    /// A relay to subscribe to (repeat, or comma-separated in the env; at least two). The
    /// first is the reference and is listed first. `host`, `https://host`, `ws://host:port`.
    #[arg(long = "relay", env = "RELAY_COVERAGE_RELAYS", value_delimiter = ',', required = true)]
    pub relays: Vec<String>,
    /// Time to connect and settle before the window opens.
    #[arg(long, env = "RELAY_COVERAGE_WARMUP", default_value = "10s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The common window the figures are taken over.
    #[arg(long, env = "RELAY_COVERAGE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub window: Duration,
    /// A commit delivered this close to the window (before or after it) still counts as
    /// covered: relays' latencies differ.
    #[arg(long, env = "RELAY_COVERAGE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    /// A relay delivering more than this many times the median relay's events is flagged as
    /// replaying.
    #[arg(long, env = "RELAY_COVERAGE_REPLAY_FACTOR", default_value_t = 3.0)]
    pub replay_factor: f64,
    /// A commit whose rev is older than this before the window opens is stale (replayed):
    /// counted apart, never as coverage.
    #[arg(long, env = "RELAY_COVERAGE_STALE_REV_AGE", default_value = "10m", value_parser = parse_duration)]
    pub stale_rev_age: Duration,
    /// A relay whose stale commits are more than this share of its commits is flagged as
    /// replaying.
    #[arg(long, env = "RELAY_COVERAGE_STALE_SHARE", default_value_t = 0.10)]
    pub stale_share: f64,
    /// Unique commits, and unique DIDs, remembered per relay (about 20 bytes each); beyond
    /// it the relay's figures are marked truncated.
    #[arg(long, env = "RELAY_COVERAGE_MAX_COMMITS_PER_RELAY", default_value_t = 2_000_000)]
    pub max_commits_per_relay: usize,
    /// How long a relay may take to accept the WebSocket.
    #[arg(long, env = "RELAY_COVERAGE_CONNECT_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

/// Largest frame accepted from a watched relay (the sync spec's 5 MB, with room).
const MAX_FRAME_BYTES: usize = 2 * crate::atproto::frame::MAX_FRAME_BYTES;

/// Where the run is; frames are counted by the phase they arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Connecting and settling: nothing counted.
    Warmup = 0,
    /// The grace before the window: deliveries count as covering, nothing else.
    Lead = 1,
    Window = 2,
    /// The grace after the window.
    Trail = 3,
    Done = 4,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Warmup,
            1 => Phase::Lead,
            2 => Phase::Window,
            3 => Phase::Trail,
            _ => Phase::Done,
        }
    }
}

/// Commit flags in a relay's tally.
const IN_WINDOW: u8 = 1;
const DELIVERED: u8 = 2;

/// One relay's counts; owned by the task reading that relay.
pub struct Tally {
    events: [u64; EventKind::ALL.len()],
    dids: HashSet<u64, foldhash::fast::RandomState>,
    commits: HashMap<u64, u8, foldhash::fast::RandomState>,
    stale_commits: u64,
    seq_regressions: u64,
    last_seq: Option<i64>,
    undecodable: u64,
    truncated: bool,
    cap: usize,
    /// Commits with a rev older than this (unix µs) are stale.
    stale_before_micros: u64,
}

impl Tally {
    pub fn new(cap: usize, stale_before_micros: u64) -> Tally {
        Tally {
            events: [0; EventKind::ALL.len()],
            dids: HashSet::default(),
            commits: HashMap::default(),
            stale_commits: 0,
            seq_regressions: 0,
            last_seq: None,
            undecodable: 0,
            truncated: false,
            cap,
            stale_before_micros,
        }
    }

    /// Counts one frame that arrived in `phase`.
    pub fn observe(&mut self, frame: &[u8], phase: Phase) {
        if matches!(phase, Phase::Warmup | Phase::Done) {
            return;
        }
        let in_window = phase == Phase::Window;
        let Ok(summary) = wire::summarize(frame) else {
            self.undecodable += u64::from(in_window);
            return;
        };
        if let Some(seq) = summary.seq {
            if self.last_seq.is_some_and(|last| seq <= last) {
                self.seq_regressions += 1;
            }
            self.last_seq = Some(seq);
        }
        if in_window {
            self.events[summary.kind.index()] += 1;
            if let Some(did) = summary.did {
                self.remember_did(did);
            }
        }
        if let (EventKind::Commit, Some(did), Some(rev)) = (summary.kind, summary.did, summary.rev) {
            self.remember_commit(did, rev, in_window);
        }
    }

    fn remember_did(&mut self, did: &str) {
        let key = key_of(&[did]);
        if self.dids.len() < self.cap || self.dids.contains(&key) {
            self.dids.insert(key);
        } else {
            self.truncated = true;
        }
    }

    fn remember_commit(&mut self, did: &str, rev: &str, in_window: bool) {
        if wire::tid_micros(rev).is_some_and(|micros| micros < self.stale_before_micros) {
            self.stale_commits += u64::from(in_window);
            return;
        }
        let key = key_of(&[did, rev]);
        let flags = if in_window { IN_WINDOW | DELIVERED } else { DELIVERED };
        if let Some(existing) = self.commits.get_mut(&key) {
            *existing |= flags;
        } else if self.commits.len() < self.cap {
            self.commits.insert(key, flags);
        } else {
            self.truncated = true;
        }
    }

    pub fn events_in_window(&self) -> u64 {
        self.events.iter().sum()
    }

    fn unique_commits(&self) -> u64 {
        self.commits.values().filter(|flags| *flags & IN_WINDOW != 0).count() as u64
    }

    fn delivered(&self, key: u64) -> bool {
        self.commits.get(&key).is_some_and(|flags| flags & DELIVERED != 0)
    }
}

/// The shared clock: the phase every reader counts by, moved on by one timer task.
struct Clock {
    phase: AtomicU8,
}

impl Clock {
    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }
}

/// The run's schedule, as instants and for the report as unix times.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    lead_at: Instant,
    window_at: Instant,
    trail_at: Instant,
    done_at: Instant,
    window_start_micros: u64,
}

impl Schedule {
    fn new(args: &FirehoseArgs) -> Schedule {
        let now = Instant::now();
        let window_at = now + args.warmup;
        let trail_at = window_at + args.window;
        Schedule {
            lead_at: window_at - args.grace.min(args.warmup),
            window_at,
            trail_at,
            done_at: trail_at + args.grace,
            window_start_micros: super::unix_micros_now() + args.warmup.as_micros() as u64,
        }
    }

    async fn drive(self, clock: Arc<Clock>) {
        for (at, phase) in [
            (self.lead_at, Phase::Lead),
            (self.window_at, Phase::Window),
            (self.trail_at, Phase::Trail),
            (self.done_at, Phase::Done),
        ] {
            tokio::time::sleep_until(at.into()).await;
            clock.phase.store(phase as u8, Ordering::Relaxed);
        }
    }
}

/// How a relay's subscription went.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Open until the end of the run.
    Open,
    /// The relay closed the stream (or sent an error frame and closed) before the end.
    Closed { after: Duration },
    /// A read failed before the end.
    Failed { after: Duration, error: String },
    /// Never connected.
    Unreachable { error: String },
}

struct Watched {
    tally: Tally,
    outcome: Outcome,
}

/// Runs the firehose comparison.
pub async fn run(args: &FirehoseArgs, progress: Progress) -> Result<FirehoseReport, CoverageError> {
    let relays = RelayEndpoint::parse_all(&args.relays, 2)?;
    check_args(args)?;
    let schedule = Schedule::new(args);
    let clock = Arc::new(Clock { phase: AtomicU8::new(Phase::Warmup as u8) });
    let stale_before = schedule.window_start_micros.saturating_sub(args.stale_rev_age.as_micros() as u64);
    let received: Vec<Arc<AtomicU64>> = relays.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let timer = tokio::spawn(schedule.drive(clock.clone()));
    let reporter = tokio::spawn(report_progress(relays.clone(), received.clone(), clock.clone(), progress));
    let watchers: Vec<_> = relays
        .iter()
        .zip(&received)
        .map(|(relay, counter)| {
            let tally = Tally::new(args.max_commits_per_relay, stale_before);
            let task =
                watch(relay.clone(), tally, clock.clone(), schedule, args.connect_timeout, counter.clone());
            tokio::spawn(task)
        })
        .collect();
    let mut watched = Vec::with_capacity(watchers.len());
    for (relay, watcher) in relays.iter().zip(watchers) {
        let result = watcher.await.unwrap_or_else(|e| Watched {
            tally: Tally::new(0, 0),
            outcome: Outcome::Failed { after: Duration::ZERO, error: format!("counting task failed: {e}") },
        });
        tracing::debug!(relay = %relay.label, outcome = ?result.outcome, "firehose: relay done");
        watched.push(result);
    }
    timer.abort();
    reporter.abort();
    if watched.iter().all(|w| matches!(w.outcome, Outcome::Unreachable { .. })) {
        let errors: Vec<String> = relays
            .iter()
            .zip(&watched)
            .filter_map(|(r, w)| match &w.outcome {
                Outcome::Unreachable { error } => Some(format!("{}: {error}", r.label)),
                _ => None,
            })
            .collect();
        return Err(CoverageError::NoRelayReachable(errors.join("; ")));
    }
    Ok(analyse(args, &relays, &watched, schedule.window_start_micros))
}

fn check_args(args: &FirehoseArgs) -> Result<(), CoverageError> {
    if args.window.is_zero() {
        return Err(CoverageError::Arguments("--window must be longer than 0".into()));
    }
    // Written so that NaN is refused too.
    if args.replay_factor.partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater) {
        return Err(CoverageError::Arguments("--replay-factor must be above 1".into()));
    }
    if !(0.0..=1.0).contains(&args.stale_share) {
        return Err(CoverageError::Arguments("--stale-share must be between 0 and 1".into()));
    }
    Ok(())
}

async fn connect(
    relay: &RelayEndpoint,
    timeout: Duration,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    let mut request = relay.firehose_url.as_str().into_client_request().map_err(|e| e.to_string())?;
    let agent = concat!("atproto-relay-coverage/", env!("CARGO_PKG_VERSION"));
    request.headers_mut().insert("user-agent", reqwest::header::HeaderValue::from_static(agent));
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(MAX_FRAME_BYTES);
    config.max_frame_size = Some(MAX_FRAME_BYTES);
    let dial = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(timeout, dial).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
    }
}

/// Reads one relay until the end of the run, counting into its own tally.
async fn watch(
    relay: RelayEndpoint,
    mut tally: Tally,
    clock: Arc<Clock>,
    schedule: Schedule,
    connect_timeout: Duration,
    received: Arc<AtomicU64>,
) -> Watched {
    let started = Instant::now();
    let mut socket = match connect(&relay, connect_timeout).await {
        Ok(socket) => socket,
        Err(error) => return Watched { tally, outcome: Outcome::Unreachable { error } },
    };
    let end = tokio::time::sleep_until(schedule.done_at.into());
    tokio::pin!(end);
    let outcome = loop {
        tokio::select! {
            biased;
            _ = &mut end => break Outcome::Open,
            message = socket.next() => match message {
                Some(Ok(Message::Binary(frame))) => {
                    received.fetch_add(1, Ordering::Relaxed);
                    tally.observe(&frame, clock.phase());
                }
                Some(Ok(Message::Close(_))) | None => break Outcome::Closed { after: started.elapsed() },
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    break Outcome::Failed { after: started.elapsed(), error: error.to_string() }
                }
            },
        }
    };
    // Closing politely is best effort; the figures are taken either way.
    let _ = tokio::time::timeout(super::CLOSE_TIMEOUT, socket.close(None)).await;
    Watched { tally, outcome }
}

async fn report_progress(
    relays: Vec<RelayEndpoint>,
    received: Vec<Arc<AtomicU64>>,
    clock: Arc<Clock>,
    progress: Progress,
) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let counts: Vec<String> = relays
            .iter()
            .zip(&received)
            .map(|(relay, n)| format!("{} {}", relay.label, n.load(Ordering::Relaxed)))
            .collect();
        progress.line(&format!(
            "firehose: {:?} phase, {}s elapsed; events received: {}",
            clock.phase(),
            started.elapsed().as_secs(),
            counts.join(", ")
        ));
    }
}

/// Median of the event counts of the relays that connected.
fn median(mut values: Vec<u64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let middle = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[middle - 1] + values[middle]) as f64 / 2.0
    } else {
        values[middle] as f64
    }
}

/// Why a relay looks like it replays old events (empty: it does not).
fn replay_flags(args: &FirehoseArgs, tally: &Tally, median_events: f64) -> Vec<String> {
    let mut flags = Vec::new();
    let events = tally.events_in_window() as f64;
    if median_events > 0.0 && events > args.replay_factor * median_events {
        flags.push(format!("events {:.1}x the median", events / median_events));
    }
    let commits = tally.unique_commits() + tally.stale_commits;
    if tally.stale_commits > 0 && tally.stale_commits as f64 > args.stale_share * commits as f64 {
        flags.push(format!(
            "{} commits with revs older than {}s",
            tally.stale_commits,
            args.stale_rev_age.as_secs()
        ));
    }
    if tally.seq_regressions > 0 {
        flags.push(format!("seq went backwards {} times", tally.seq_regressions));
    }
    flags
}

fn analyse(
    args: &FirehoseArgs,
    relays: &[RelayEndpoint],
    watched: &[Watched],
    window_start_micros: u64,
) -> FirehoseReport {
    let connected = |w: &Watched| !matches!(w.outcome, Outcome::Unreachable { .. });
    let median_events =
        median(watched.iter().filter(|w| connected(w)).map(|w| w.tally.events_in_window()).collect());
    let flags: Vec<Vec<String>> =
        watched.iter().map(|w| replay_flags(args, &w.tally, median_events)).collect();
    let counted: Vec<&Watched> =
        watched.iter().zip(&flags).filter(|(w, f)| connected(w) && f.is_empty()).map(|(w, _)| w).collect();
    // Every relay flagged: there is nothing better to compare against than all of them.
    let basis: Vec<&Watched> = if counted.is_empty() { watched.iter().collect() } else { counted };
    let union = union_of(&basis);
    let window_seconds = args.window.as_secs_f64();
    let rows = relays
        .iter()
        .zip(watched)
        .zip(flags)
        .map(|((relay, w), flags)| {
            let covered = union.iter().filter(|key| w.tally.delivered(**key)).count() as u64;
            relay_row(relay, w, flags, covered, union.len() as u64, window_seconds)
        })
        .collect();
    let window_end_micros = window_start_micros + args.window.as_micros() as u64;
    FirehoseReport {
        warmup_seconds: args.warmup.as_secs_f64(),
        window_seconds,
        grace_seconds: args.grace.as_secs_f64(),
        window_start: micros_rfc3339(window_start_micros),
        window_end: micros_rfc3339(window_end_micros),
        window_start_unix_micros: window_start_micros,
        window_end_unix_micros: window_end_micros,
        union_commits: union.len() as u64,
        median_events,
        relays: rows,
    }
}

/// Every commit some relay of `basis` delivered inside the window.
fn union_of(basis: &[&Watched]) -> HashSet<u64, foldhash::fast::RandomState> {
    let mut union = HashSet::default();
    for w in basis {
        union.extend(w.tally.commits.iter().filter(|(_, f)| **f & IN_WINDOW != 0).map(|(k, _)| *k));
    }
    union
}

fn relay_row(
    relay: &RelayEndpoint,
    w: &Watched,
    flags: Vec<String>,
    covered: u64,
    union: u64,
    window_seconds: f64,
) -> FirehoseRelay {
    let (status, error, ended_after) = match &w.outcome {
        Outcome::Open => ("ok", None, None),
        Outcome::Closed { after } => ("closed", None, Some(after.as_secs_f64())),
        Outcome::Failed { after, error } => ("error", Some(error.clone()), Some(after.as_secs_f64())),
        Outcome::Unreachable { error } => ("unreachable", Some(error.clone()), None),
    };
    let events: BTreeMap<String, u64> =
        EventKind::ALL.iter().map(|kind| (kind.name().to_string(), w.tally.events[kind.index()])).collect();
    let total = w.tally.events_in_window();
    FirehoseRelay {
        relay: relay.label.clone(),
        status: status.to_string(),
        error,
        ended_after_seconds: ended_after,
        events,
        events_total: total,
        events_per_second: if window_seconds > 0.0 { total as f64 / window_seconds } else { 0.0 },
        unique_dids: w.tally.dids.len() as u64,
        unique_commits: w.tally.unique_commits(),
        covered_commits: covered,
        coverage: (union > 0).then(|| covered as f64 / union as f64),
        stale_commits: w.tally.stale_commits,
        seq_regressions: w.tally.seq_regressions,
        undecodable: w.tally.undecodable,
        truncated: w.tally.truncated,
        replaying: !flags.is_empty(),
        flags,
    }
}

fn micros_rfc3339(micros: u64) -> String {
    chrono::DateTime::from_timestamp_micros(micros as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atproto::frame::{self, Event};

    fn commit(seq: i64, did: &str, rev_micros: u64) -> Vec<u8> {
        let key = crate::atproto::crypto::SigningKey::from_seed(crate::atproto::crypto::Curve::K256, b"fh");
        let mut repo = crate::atproto::repo::Repo::new(did, key);
        let write = crate::atproto::repo::Write::Create {
            path: format!("app.bsky.feed.post/{}", crate::atproto::syntax::tid_from_parts(rev_micros, 1)),
            record: crate::atproto::repo::sample_post("x", "2026-11-26T00:00:00.000Z"),
        };
        let commit = repo.commit(&[write], seq, rev_micros).expect("commit");
        frame::encode(&Event::Commit(commit)).expect("encode")
    }

    fn args() -> FirehoseArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: FirehoseArgs,
        }
        Wrapper::parse_from(["x", "--relay", "a.example", "--relay", "b.example"]).args
    }

    fn watched(tally: Tally) -> Watched {
        Watched { tally, outcome: Outcome::Open }
    }

    #[test]
    fn grace_counts_as_covered_but_not_as_union() {
        let now = 1_800_000_000_000_000;
        let (a, b, c) = (
            commit(1, "did:plc:aaaa", now),
            commit(2, "did:plc:bbbb", now + 1),
            commit(3, "did:plc:cccc", now + 2),
        );
        let mut first = Tally::new(100, 0);
        let mut second = Tally::new(100, 0);
        for frame in [&a, &b, &c] {
            first.observe(frame, Phase::Window);
        }
        second.observe(&a, Phase::Lead); // early, inside the grace: covered
        second.observe(&b, Phase::Window);
        second.observe(&c, Phase::Warmup); // too early: not covered
        let relays =
            [RelayEndpoint::parse("a.example").expect("a"), RelayEndpoint::parse("b.example").expect("b")];
        let report = analyse(&args(), &relays, &[watched(first), watched(second)], now);
        assert_eq!(report.union_commits, 3);
        assert_eq!(report.relays[0].coverage, Some(1.0));
        assert_eq!(report.relays[1].covered_commits, 2);
        assert_eq!(report.relays[1].unique_commits, 1, "only in-window deliveries are its own commits");
    }

    #[test]
    fn stale_revs_flag_a_replaying_relay_and_stay_out_of_the_union() {
        let now = 1_800_000_000_000_000;
        let hour = 3_600_000_000;
        let mut live = Tally::new(100, now - hour / 6);
        let mut replaying = Tally::new(100, now - hour / 6);
        for i in 0..10 {
            let fresh = commit(2 * i, &format!("did:plc:live{i}"), now + i as u64);
            live.observe(&fresh, Phase::Window);
            replaying.observe(&fresh, Phase::Window);
            replaying.observe(&commit(2 * i + 1, &format!("did:plc:old{i}"), now - 2 * hour), Phase::Window);
        }
        let relays =
            [RelayEndpoint::parse("a.example").expect("a"), RelayEndpoint::parse("b.example").expect("b")];
        let report = analyse(&args(), &relays, &[watched(live), watched(replaying)], now);
        assert!(!report.relays[0].replaying);
        assert_eq!(report.relays[1].flags.len(), 1, "{:?}", report.relays[1].flags);
        assert!(report.relays[1].flags[0].contains("older"), "{:?}", report.relays[1].flags);
        assert_eq!(report.relays[1].stale_commits, 10);
        assert_eq!(report.union_commits, 10);
        assert_eq!(report.relays[0].coverage, Some(1.0));
    }

    #[test]
    fn seq_regressions_are_counted() {
        let now = 1_800_000_000_000_000;
        let mut tally = Tally::new(100, 0);
        for seq in [5, 6, 7, 1, 2] {
            tally.observe(&commit(seq, "did:plc:x", now + seq as u64), Phase::Window);
        }
        assert_eq!(tally.seq_regressions, 1);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3, 1, 2]), 2.0);
        assert_eq!(median(vec![10, 1, 2, 4]), 3.0);
    }
}
