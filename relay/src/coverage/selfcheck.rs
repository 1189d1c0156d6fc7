//! The relay's own coverage check (`relay serve --coverage-reference URL`): on a schedule the
//! relay watches a reference relay's firehose for a short window and asks which of the
//! commits the reference delivered it delivered too. The share is exported as
//! `relay_coverage_ratio{reference}`, and `/_ready` fails, with the reason, once it has stayed
//! below the threshold for [`LOW_SAMPLES_TO_FAIL`] samples in a row. A relay serving a
//! fraction of the network with every host it knows connected passes every other check; this
//! one catches it.
//!
//! One sample: the references are dialled (live, no cursor); then the relay's own output is
//! followed in process from its current head (the fanout's [`Follower`], the same feed a
//! consumer gets) for grace + window + grace, while each reference's commits are taken during
//! the window only, which opens one grace after the own feed started. A commit the reference
//! delivered in the window counts as covered when the relay delivered the same (did, rev)
//! anywhere in that wider span, so ordinary differences in latency do not count.
//!
//! Cost: reference frames are not validated, only read by the counting decoder; commits are
//! kept as 8-byte hashes, at most [`OWN_COMMITS_CAP`] of the relay's own and
//! [`REFERENCE_COMMITS_CAP`] per reference (about 20 MiB and 5 MiB at most, during a sample
//! only; at today's network rate a 60 s sample holds well under a tenth of that).

use super::wire::{self, EventKind};
use super::{key_of, RelayEndpoint};
use crate::fanout::{Fanout, Followed, Follower};
use crate::metrics::Metrics;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Samples below the threshold in a row that make the relay not ready.
pub const LOW_SAMPLES_TO_FAIL: u32 = 2;
/// The relay's own commits remembered during one sample.
pub const OWN_COMMITS_CAP: usize = 1_000_000;
/// A reference's commits compared per sample (the first ones of the window beyond this).
pub const REFERENCE_COMMITS_CAP: usize = 250_000;
/// Fewer reference commits than this in a window say too little to judge on.
pub const MIN_REFERENCE_COMMITS: usize = 10;
/// How long a reference may take to accept the WebSocket.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

type KeySet = HashSet<u64, foldhash::fast::RandomState>;

/// The self-check settings, from `ServeConfig`.
#[derive(Debug, Clone)]
pub struct SelfCheckConfig {
    pub references: Vec<RelayEndpoint>,
    pub window: Duration,
    pub interval: Duration,
    pub grace: Duration,
    pub threshold: f64,
}

impl SelfCheckConfig {
    pub fn from_serve(config: &crate::config::ServeConfig) -> anyhow::Result<SelfCheckConfig> {
        let references = config
            .coverage_references
            .iter()
            .filter(|r| !r.trim().is_empty())
            .map(|r| RelayEndpoint::parse(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--coverage-reference: {e}"))?;
        if !(0.0..=1.0).contains(&config.coverage_threshold) {
            anyhow::bail!("--coverage-threshold must be between 0 and 1");
        }
        if !references.is_empty() && config.coverage_window.is_zero() {
            anyhow::bail!("--coverage-window must be longer than 0");
        }
        Ok(SelfCheckConfig {
            references,
            window: config.coverage_window,
            interval: config.coverage_interval,
            grace: config.coverage_grace,
            threshold: config.coverage_threshold,
        })
    }
}

/// What the last samples said, per reference; read by the relay's readiness check.
#[derive(Debug, Default)]
pub struct CoverageStatus {
    references: Mutex<HashMap<String, ReferenceState>>,
}

#[derive(Debug, Default, Clone)]
struct ReferenceState {
    last_ratio: Option<f64>,
    low_streak: u32,
}

impl CoverageStatus {
    /// Why the relay is not ready, when a reference's coverage stayed low long enough.
    pub fn failing(&self, threshold: f64) -> Option<String> {
        let references = self.references.lock().unwrap_or_else(|p| p.into_inner());
        let mut failing: Vec<(&String, &ReferenceState)> =
            references.iter().filter(|(_, s)| s.low_streak >= LOW_SAMPLES_TO_FAIL).collect();
        failing.sort_by(|a, b| a.0.cmp(b.0));
        let (reference, state) = failing.first()?;
        Some(format!(
            "coverage {:.2} below threshold {threshold:.2} against {reference} for {} samples",
            state.last_ratio.unwrap_or(0.0),
            state.low_streak
        ))
    }

    /// (reference, last judged ratio, low samples in a row) of every reference sampled so far,
    /// in reference order.
    pub fn snapshot(&self) -> Vec<(String, Option<f64>, u32)> {
        let references = self.references.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = references
            .iter()
            .map(|(name, state)| (name.clone(), state.last_ratio, state.low_streak))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The last judged ratio against a reference.
    pub fn last_ratio(&self, reference: &str) -> Option<f64> {
        self.references.lock().unwrap_or_else(|p| p.into_inner()).get(reference).and_then(|s| s.last_ratio)
    }

    fn record(&self, reference: &str, ratio: f64, threshold: f64) -> u32 {
        let mut references = self.references.lock().unwrap_or_else(|p| p.into_inner());
        let state = references.entry(reference.to_string()).or_default();
        state.last_ratio = Some(ratio);
        state.low_streak = if ratio < threshold { state.low_streak + 1 } else { 0 };
        state.low_streak
    }
}

/// How one sample against one reference went.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleOutcome {
    Measured {
        ratio: f64,
        reference_commits: usize,
    },
    /// Too few reference commits to judge (a quiet reference, or one that closed early).
    TooFew {
        reference_commits: usize,
    },
    /// The relay's own output went past its memory cap: not judged.
    Truncated,
    Failed(String),
}

impl SampleOutcome {
    fn label(&self, low: bool) -> &'static str {
        match self {
            SampleOutcome::Measured { .. } if low => "low",
            SampleOutcome::Measured { .. } => "ok",
            SampleOutcome::TooFew { .. } => "too_few",
            SampleOutcome::Truncated => "truncated",
            SampleOutcome::Failed(_) => "failed",
        }
    }
}

/// What the sampler uses: the relay's own output (through the fan-out), the metrics it
/// sets and the status readiness reads.
#[derive(Clone)]
pub struct SelfCheckDeps {
    pub fanout: Arc<Fanout>,
    pub metrics: Metrics,
    pub coverage: Arc<CoverageStatus>,
}

/// Starts the sampler when references are configured.
pub fn spawn(deps: SelfCheckDeps, config: SelfCheckConfig) -> Option<tokio::task::JoinHandle<()>> {
    if config.references.is_empty() {
        return None;
    }
    // Every (reference, result) series exists from the start at zero, so "no sample for an
    // hour" can be told from "never measured" (alerts compare increases).
    for reference in &config.references {
        for result in ["ok", "low", "too_few", "truncated", "failed"] {
            deps.metrics.coverage_samples.with_label_values(&[&reference.label, result]);
        }
    }
    Some(tokio::spawn(run(deps, config)))
}

async fn run(relay: SelfCheckDeps, config: SelfCheckConfig) {
    // The first sample waits one interval: a relay still connecting to its hosts at start is
    // not judged (the other readiness checks cover that time).
    // tokio's interval panics on a zero period.
    let mut ticker = tokio::time::interval(config.interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let outcomes = sample(&relay, &config).await;
        for (reference, outcome) in config.references.iter().zip(outcomes) {
            judge(&relay, &config, &reference.label, outcome);
        }
    }
}

fn judge(relay: &SelfCheckDeps, config: &SelfCheckConfig, reference: &str, outcome: SampleOutcome) {
    let metrics = &relay.metrics;
    let mut low = false;
    match &outcome {
        SampleOutcome::Measured { ratio, reference_commits } => {
            let streak = relay.coverage.record(reference, *ratio, config.threshold);
            low = *ratio < config.threshold;
            metrics.coverage_ratio.with_label_values(&[reference]).set(*ratio);
            metrics.coverage_reference_commits.with_label_values(&[reference]).set(*reference_commits as i64);
            metrics.coverage_low_samples.with_label_values(&[reference]).set(i64::from(streak));
            tracing::info!(reference, ratio, reference_commits, low_streak = streak, "coverage sample");
        }
        SampleOutcome::TooFew { reference_commits } => {
            tracing::info!(
                reference,
                reference_commits,
                "coverage sample: too few reference commits to judge"
            );
        }
        SampleOutcome::Truncated => {
            tracing::warn!(reference, "coverage sample: own output over the memory cap")
        }
        SampleOutcome::Failed(error) => tracing::warn!(reference, %error, "coverage sample failed"),
    }
    metrics.coverage_samples.with_label_values(&[reference, outcome.label(low)]).inc();
}

/// Takes one sample against every reference at once.
pub async fn sample(relay: &SelfCheckDeps, config: &SelfCheckConfig) -> Vec<SampleOutcome> {
    let dialled = futures_util::future::join_all(config.references.iter().map(dial)).await;
    let started = Instant::now();
    let window_start = started + config.grace;
    let window_end = window_start + config.window;
    let own = tokio::spawn(own_commits(relay.clone(), window_end + config.grace));
    let readers: Vec<_> = dialled
        .into_iter()
        .map(|socket| tokio::spawn(async move { reference_commits(socket?, window_start, window_end).await }))
        .collect();
    let mut taken = Vec::with_capacity(readers.len());
    for reader in readers {
        taken.push(reader.await.unwrap_or_else(|e| Err(format!("reader task: {e}"))));
    }
    let own = match own.await {
        Ok(own) => own,
        Err(error) => {
            return taken.iter().map(|_| SampleOutcome::Failed(format!("own output: {error}"))).collect()
        }
    };
    taken.into_iter().map(|reference| outcome(&own, reference)).collect()
}

fn outcome(own: &OwnCommits, reference: Result<KeySet, String>) -> SampleOutcome {
    let reference = match reference {
        Ok(reference) => reference,
        Err(error) => return SampleOutcome::Failed(error),
    };
    if own.truncated {
        return SampleOutcome::Truncated;
    }
    if reference.len() < MIN_REFERENCE_COMMITS {
        return SampleOutcome::TooFew { reference_commits: reference.len() };
    }
    let covered = reference.iter().filter(|key| own.keys.contains(key)).count();
    SampleOutcome::Measured {
        ratio: covered as f64 / reference.len() as f64,
        reference_commits: reference.len(),
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn dial(reference: &RelayEndpoint) -> Result<Socket, String> {
    let dial = tokio_tungstenite::connect_async(reference.firehose_url.as_str());
    match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(error)) => Err(format!("connecting to {}: {error}", reference.firehose_url)),
        Err(_) => Err(format!("connecting to {}: timed out", reference.firehose_url)),
    }
}

/// The (did, rev) of every commit the reference delivers inside the window.
async fn reference_commits(
    mut socket: Socket,
    window_start: Instant,
    window_end: Instant,
) -> Result<KeySet, String> {
    let mut keys = KeySet::default();
    let end = tokio::time::sleep_until(window_end.into());
    tokio::pin!(end);
    loop {
        tokio::select! {
            biased;
            _ = &mut end => break,
            message = socket.next() => match message {
                Some(Ok(Message::Binary(frame))) => {
                    if Instant::now() >= window_start && keys.len() < REFERENCE_COMMITS_CAP {
                        if let Some(key) = commit_key(&frame) {
                            keys.insert(key);
                        }
                    }
                }
                // A reference that ends early still gave a sample; it is judged on its size.
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(format!("reading the reference: {error}")),
            },
        }
    }
    let _ = tokio::time::timeout(super::CLOSE_TIMEOUT, socket.close(None)).await;
    Ok(keys)
}

struct OwnCommits {
    keys: KeySet,
    truncated: bool,
}

/// The (did, rev) of every commit the relay itself delivers from now until `until`.
async fn own_commits(relay: SelfCheckDeps, until: Instant) -> OwnCommits {
    let mut own = OwnCommits { keys: KeySet::default(), truncated: false };
    let mut follower = Follower::new(relay.fanout.clone(), relay.fanout.sequencer.current_head());
    let end = tokio::time::sleep_until(until.into());
    tokio::pin!(end);
    loop {
        let frame = tokio::select! {
            biased;
            _ = &mut end => break,
            next = follower.next() => match next {
                Followed::Event { frame, .. } => frame,
                Followed::FellBehind { .. } => continue,
                Followed::Closed => break,
            },
        };
        let Some(key) = commit_key(&frame) else { continue };
        if own.keys.len() < OWN_COMMITS_CAP {
            own.keys.insert(key);
        } else {
            own.truncated = true;
        }
    }
    own
}

/// The hash of a `#commit` frame's (repo, rev); nothing for other frames.
fn commit_key(frame: &[u8]) -> Option<u64> {
    let summary = wire::summarize(frame).ok()?;
    match (summary.kind, summary.did, summary.rev) {
        (EventKind::Commit, Some(did), Some(rev)) => Some(key_of(&[did, rev])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_fails_after_two_low_samples_in_a_row_and_recovers_after_one_good_one() {
        let status = CoverageStatus::default();
        let reference = "wss://bsky.network";
        status.record(reference, 0.5, 0.7);
        assert_eq!(status.failing(0.7), None, "one low sample is not enough");
        status.record(reference, 0.9, 0.7);
        status.record(reference, 0.4, 0.7);
        assert_eq!(status.failing(0.7), None, "the streak was broken");
        status.record(reference, 0.18, 0.7);
        assert_eq!(
            status.failing(0.7).as_deref(),
            Some("coverage 0.18 below threshold 0.70 against wss://bsky.network for 2 samples")
        );
        status.record(reference, 0.95, 0.7);
        assert_eq!(status.failing(0.7), None);
        assert_eq!(status.last_ratio(reference), Some(0.95));
    }

    #[test]
    fn outcomes() {
        let own = OwnCommits { keys: (0..15).collect(), truncated: false };
        let reference: KeySet = (5..25).collect();
        assert_eq!(
            outcome(&own, Ok(reference)),
            SampleOutcome::Measured { ratio: 0.5, reference_commits: 20 }
        );
        assert_eq!(outcome(&own, Ok((0..3).collect())), SampleOutcome::TooFew { reference_commits: 3 });
        assert!(matches!(outcome(&own, Err("down".into())), SampleOutcome::Failed(_)));
    }
}
