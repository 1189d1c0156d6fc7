//! `relay coverage correctness`: is what a relay says about a repo what its PDS says?
//!
//! Samples repos from the relay's own listing (`listRepos`, or `listReposByCollection` for
//! one NSID; or takes the DIDs given), resolves each DID to its PDS, and compares the relay's
//! `getLatestCommit` / `getRepoStatus` with the PDS's:
//!
//! - **correct**: same active status (and the same inactive status), same rev and CID (the
//!   CID when both sides give one);
//! - **behind**: the relay's rev is older than the PDS's (by how much, from the revs' TID
//!   timestamps);
//! - **wrong**: a different status, the same rev with another CID, a rev newer than the
//!   PDS's, or a repo one side does not know;
//! - **unverifiable**: the DID does not resolve or the PDS cannot be asked (in no share).
//!
//! The PDS is asked first, then the relay. A repo that looks behind (or ahead) is asked again
//! after `--recheck-after`, both sides, so a commit landing between the two questions or a
//! relay's ordinary pipeline latency does not count against it.

use super::http::{self, FetchError, Pacer};
use super::report::{CorrectnessRelay, CorrectnessReport, RepoCheck};
use super::{CoverageError, Progress, RelayEndpoint, PROGRESS_INTERVAL};
use crate::atproto::syntax;
use crate::config::parse_duration;
use crate::identity::ssrf::SsrfPolicy;
use crate::identity::{IdentityConfig, Resolver};
use clap::Args;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct CorrectnessArgs {
    /// A relay to check (repeat, or comma-separated in the env). Each is sampled on its own;
    /// the first is the reference and is listed first.
    #[arg(long = "relay", env = "RELAY_COVERAGE_RELAYS", value_delimiter = ',', required = true)]
    pub relays: Vec<String>,
    /// Repos checked per relay.
    #[arg(long, env = "RELAY_COVERAGE_SAMPLE", default_value_t = 100)]
    pub sample: usize,
    /// Where the sample comes from: `repos` (listRepos) or `collection:NSID`
    /// (listReposByCollection).
    #[arg(long, env = "RELAY_COVERAGE_SAMPLE_FROM", default_value = "repos")]
    pub sample_from: String,
    /// DIDs read from the listing to draw the sample from; 0: ten times --sample. The sample
    /// is uniform over the first this-many repos of the listing, not over all of them.
    #[arg(long, env = "RELAY_COVERAGE_SAMPLE_POOL", default_value_t = 0)]
    pub sample_pool: usize,
    /// Check these DIDs instead of sampling (repeat, or comma-separated in the env).
    #[arg(long = "did", env = "RELAY_COVERAGE_DIDS", value_delimiter = ',')]
    pub dids: Vec<String>,
    /// Seed of the sample (default: random).
    #[arg(long, env = "RELAY_COVERAGE_SEED")]
    pub seed: Option<u64>,
    /// PLC directory for resolving did:plc.
    #[arg(long = "plc-url", env = "RELAY_PLC_HOST", default_value = "https://plc.directory")]
    pub plc_url: String,
    /// Repos checked at once.
    #[arg(long, env = "RELAY_COVERAGE_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// A repo that looks behind or ahead is asked again after this long.
    #[arg(long, env = "RELAY_COVERAGE_RECHECK_AFTER", default_value = "2s", value_parser = parse_duration)]
    pub recheck_after: Duration,
    /// Allow PDS endpoints on loopback (development and tests only: PDS addresses come from
    /// DID documents, so they are otherwise held to public addresses).
    #[arg(long, env = "RELAY_COVERAGE_ALLOW_LOOPBACK_PDS")]
    pub allow_loopback_pds: bool,
    /// Time limit of one request.
    #[arg(long, env = "RELAY_COVERAGE_REQUEST_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

/// Most DIDs read from a listing for one sample.
pub const MAX_SAMPLE_POOL: usize = 100_000;
/// The pool is this many times the sample unless --sample-pool says otherwise.
const DEFAULT_POOL_FACTOR: usize = 10;
/// Most "not correct" repos listed per relay in the report.
pub const MAX_DETAILS: usize = 500;
/// Requests in flight to one relay, and to one PDS.
const REQUESTS_PER_SERVER: usize = 4;
/// Page size for listings.
const LIST_PAGE: &str = "1000";

/// What one side says about a repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoState {
    /// `active`, the inactive status (`deactivated`, `takendown`, …), or `unknown` when the
    /// server does not know the repo.
    pub status: String,
    pub rev: Option<String>,
    pub cid: Option<String>,
}

const ACTIVE: &str = "active";
const UNKNOWN: &str = "unknown";

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Correct,
    Behind { seconds: Option<f64> },
    Wrong { reason: String, ahead: bool },
    Unverifiable { reason: String },
}

impl Verdict {
    fn name(&self) -> &'static str {
        match self {
            Verdict::Correct => "correct",
            Verdict::Behind { .. } => "behind",
            Verdict::Wrong { .. } => "wrong",
            Verdict::Unverifiable { .. } => "unverifiable",
        }
    }

    fn worth_a_second_look(&self) -> bool {
        matches!(self, Verdict::Behind { .. } | Verdict::Wrong { ahead: true, .. })
    }
}

/// Compares the relay's view of a repo with its PDS's.
pub fn compare(relay: &RepoState, pds: &RepoState) -> Verdict {
    if relay.status != pds.status {
        let reason = format!("status: relay {}, PDS {}", relay.status, pds.status);
        return Verdict::Wrong { reason, ahead: false };
    }
    if relay.status != ACTIVE {
        return Verdict::Correct;
    }
    let Some(pds_rev) = &pds.rev else {
        return Verdict::Unverifiable { reason: "the PDS reports no commit".into() };
    };
    let Some(relay_rev) = &relay.rev else {
        return Verdict::Wrong { reason: "the relay reports no commit".into(), ahead: false };
    };
    // A CID is compared when both sides give one (a relay may know a repo's rev from a
    // `#sync` without its commit's CID).
    let cids_differ = matches!((&relay.cid, &pds.cid), (Some(r), Some(p)) if r != p);
    match relay_rev.cmp(pds_rev) {
        std::cmp::Ordering::Equal if !cids_differ => Verdict::Correct,
        std::cmp::Ordering::Equal => {
            Verdict::Wrong { reason: "same rev, different commit CID".into(), ahead: false }
        }
        std::cmp::Ordering::Less => Verdict::Behind { seconds: rev_gap_seconds(relay_rev, pds_rev) },
        std::cmp::Ordering::Greater => {
            Verdict::Wrong { reason: "the relay's rev is newer than the PDS's".into(), ahead: true }
        }
    }
}

fn rev_gap_seconds(older: &str, newer: &str) -> Option<f64> {
    let (older, newer) = (super::wire::tid_micros(older)?, super::wire::tid_micros(newer)?);
    Some(newer.saturating_sub(older) as f64 / 1e6)
}

struct Context<'a> {
    args: &'a CorrectnessArgs,
    client: reqwest::Client,
    pds_client: reqwest::Client,
    policy: SsrfPolicy,
    resolver: Resolver,
    /// One request budget per PDS endpoint, so a PDS's 429 pauses only that PDS.
    pds_pacers: Mutex<HashMap<String, Arc<Pacer>>>,
}

impl Context<'_> {
    fn pds_pacer(&self, endpoint: &str) -> Arc<Pacer> {
        let mut pacers = self.pds_pacers.lock().unwrap_or_else(|p| p.into_inner());
        pacers
            .entry(endpoint.to_string())
            .or_insert_with(|| Arc::new(Pacer::new(REQUESTS_PER_SERVER)))
            .clone()
    }
}

/// Runs the correctness check.
pub async fn run(args: &CorrectnessArgs, progress: Progress) -> Result<CorrectnessReport, CoverageError> {
    let relays = RelayEndpoint::parse_all(&args.relays, 1)?;
    check_args(args)?;
    let policy = SsrfPolicy { allow_loopback: args.allow_loopback_pds };
    let context = Context {
        args,
        client: http::relay_client(args.request_timeout),
        pds_client: crate::identity::ssrf::guarded_client(policy, args.request_timeout),
        policy,
        resolver: Resolver::new(IdentityConfig {
            plc_url: args.plc_url.clone(),
            timeout: args.request_timeout,
            ssrf: policy,
            ..IdentityConfig::default()
        }),
        pds_pacers: Mutex::new(HashMap::new()),
    };
    let mut rows = Vec::with_capacity(relays.len());
    for relay in &relays {
        rows.push(check_relay(&context, relay, progress).await);
    }
    if rows.iter().all(|r| r.error.is_some()) {
        let reasons: Vec<String> =
            rows.iter().map(|r| format!("{}: {}", r.relay, r.error.as_deref().unwrap_or(""))).collect();
        let relay = relays.first().map(|r| r.label.clone()).unwrap_or_default();
        return Err(CoverageError::Sampling { relay, reason: reasons.join("; ") });
    }
    let sample_source =
        if args.dids.is_empty() { sample_source_name(&args.sample_from) } else { "dids".into() };
    let requested = if args.dids.is_empty() { args.sample } else { args.dids.len() };
    Ok(CorrectnessReport { sample_source, sample_requested: requested as u64, relays: rows })
}

fn check_args(args: &CorrectnessArgs) -> Result<(), CoverageError> {
    if args.sample == 0 && args.dids.is_empty() {
        return Err(CoverageError::Arguments("--sample must be at least 1".into()));
    }
    if args.concurrency == 0 {
        return Err(CoverageError::Arguments("--concurrency must be at least 1".into()));
    }
    if let Some(bad) = args.dids.iter().find(|d| syntax::validate_did(d).is_err()) {
        return Err(CoverageError::Arguments(format!("{bad:?} is not a DID")));
    }
    SampleFrom::parse(&args.sample_from).map(|_| ())
}

/// Where a relay's sample comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SampleFrom {
    Repos,
    Collection(String),
}

impl SampleFrom {
    fn parse(text: &str) -> Result<SampleFrom, CoverageError> {
        match text.split_once(':') {
            None if text == "repos" => Ok(SampleFrom::Repos),
            Some(("collection", nsid)) if syntax::validate_nsid(nsid).is_ok() => {
                Ok(SampleFrom::Collection(nsid.to_string()))
            }
            _ => Err(CoverageError::Arguments(format!(
                "--sample-from {text:?}: use `repos` or `collection:NSID`"
            ))),
        }
    }
}

fn sample_source_name(text: &str) -> String {
    match SampleFrom::parse(text) {
        Ok(SampleFrom::Repos) => "listRepos".into(),
        Ok(SampleFrom::Collection(nsid)) => format!("listReposByCollection:{nsid}"),
        Err(_) => text.to_string(),
    }
}

async fn check_relay(context: &Context<'_>, relay: &RelayEndpoint, progress: Progress) -> CorrectnessRelay {
    let pacer = Pacer::new(REQUESTS_PER_SERVER);
    let dids = if context.args.dids.is_empty() {
        match sample(context, relay, &pacer).await {
            Ok(dids) => dids,
            Err(error) => return failed_relay(relay, error),
        }
    } else {
        context.args.dids.clone()
    };
    progress.line(&format!("correctness: {} repos of {} to check", dids.len(), relay.label));
    let mut checks = futures_util::stream::iter(dids.iter())
        .map(|did| check_repo(context, relay, &pacer, did))
        .buffer_unordered(context.args.concurrency);
    let mut results = Vec::with_capacity(dids.len());
    let mut last_line = Instant::now();
    while let Some(check) = checks.next().await {
        results.push(check);
        if last_line.elapsed() >= PROGRESS_INTERVAL {
            last_line = Instant::now();
            progress.line(&format!(
                "correctness: {}: {}/{} repos checked",
                relay.label,
                results.len(),
                dids.len()
            ));
        }
    }
    summarise(relay, results)
}

fn failed_relay(relay: &RelayEndpoint, error: String) -> CorrectnessRelay {
    let mut row = summarise(relay, Vec::new());
    row.error = Some(error);
    row
}

/// DIDs from the relay's listing: the first `pool` of them, then `sample` drawn at random.
async fn sample(context: &Context<'_>, relay: &RelayEndpoint, pacer: &Pacer) -> Result<Vec<String>, String> {
    let args = context.args;
    let pool_size = if args.sample_pool == 0 { args.sample * DEFAULT_POOL_FACTOR } else { args.sample_pool };
    let pool_size = pool_size.clamp(args.sample, MAX_SAMPLE_POOL.max(args.sample));
    let (path, collection) = match SampleFrom::parse(&args.sample_from).map_err(|e| e.to_string())? {
        SampleFrom::Repos => ("/xrpc/com.atproto.sync.listRepos", None),
        SampleFrom::Collection(nsid) => ("/xrpc/com.atproto.sync.listReposByCollection", Some(nsid)),
    };
    let mut pool: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    while pool.len() < pool_size {
        let mut params = vec![("limit", LIST_PAGE)];
        if let Some(nsid) = &collection {
            params.push(("collection", nsid.as_str()));
        }
        if let Some(cursor) = &cursor {
            params.push(("cursor", cursor.as_str()));
        }
        let url = http::with_query(&relay.http_base, path, &params);
        let page = http::get_json(&context.client, pacer, &url).await.map_err(|e| format!("{path}: {e}"))?;
        let repos = page["repos"].as_array().ok_or_else(|| format!("{path}: no repos array"))?;
        pool.extend(repos.iter().filter_map(|r| r["did"].as_str()).map(String::from));
        match page["cursor"].as_str().filter(|c| !c.is_empty()) {
            Some(next) if !repos.is_empty() && Some(next) != cursor.as_deref() => {
                cursor = Some(next.to_string())
            }
            _ => break,
        }
    }
    pool.truncate(pool_size);
    let mut rng = args.seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    rng.shuffle(&mut pool);
    pool.truncate(args.sample);
    pool.sort();
    Ok(pool)
}

/// What a server answers about a repo (`Err`: it could not be asked).
async fn repo_state(
    client: &reqwest::Client,
    pacer: &Pacer,
    base: &str,
    did: &str,
) -> Result<RepoState, String> {
    let status_url = http::with_query(base, "/xrpc/com.atproto.sync.getRepoStatus", &[("did", did)]);
    let (status, status_rev) = match http::get_json(client, pacer, &status_url).await {
        Ok(body) => match body["active"].as_bool() {
            Some(true) => (ACTIVE.to_string(), body["rev"].as_str().map(String::from)),
            Some(false) => (body["status"].as_str().unwrap_or("inactive").to_string(), None),
            None => return Err("getRepoStatus: no active field".into()),
        },
        Err(FetchError::Refused { error, .. }) if error == "RepoNotFound" => (UNKNOWN.to_string(), None),
        Err(error) => return Err(format!("getRepoStatus: {error}")),
    };
    let commit_url = http::with_query(base, "/xrpc/com.atproto.sync.getLatestCommit", &[("did", did)]);
    let (rev, cid) = match http::get_json(client, pacer, &commit_url).await {
        Ok(body) => (body["rev"].as_str().map(String::from), body["cid"].as_str().map(String::from)),
        // An inactive or unknown repo has no latest commit to show (the status says why);
        // an active one may still have a rev in its status.
        Err(FetchError::Refused { .. }) => (status_rev, None),
        Err(error) => return Err(format!("getLatestCommit: {error}")),
    };
    Ok(RepoState { status, rev, cid })
}

/// The PDS endpoint of a DID, held to the SSRF policy (names are checked again at connect).
async fn pds_of(context: &Context<'_>, did: &str) -> Result<String, String> {
    let identity = context.resolver.resolve(did).await.map_err(|e| format!("identity: {e}"))?;
    let endpoint = identity.pds_endpoint.clone().ok_or("the DID document names no PDS")?;
    context.policy.check_url(&endpoint).map_err(|e| format!("PDS {endpoint}: {e}"))?;
    Ok(endpoint)
}

/// Both sides' answers, the PDS first.
async fn both_states(
    context: &Context<'_>,
    relay: &RelayEndpoint,
    relay_pacer: &Pacer,
    pds: &str,
    did: &str,
) -> Result<(RepoState, RepoState), Verdict> {
    let pds_pacer = context.pds_pacer(pds);
    let pds_state = repo_state(&context.pds_client, &pds_pacer, pds, did)
        .await
        .map_err(|e| Verdict::Unverifiable { reason: format!("PDS {pds}: {e}") })?;
    let relay_state = repo_state(&context.client, relay_pacer, &relay.http_base, did)
        .await
        .map_err(|e| Verdict::Unverifiable { reason: format!("relay: {e}") })?;
    Ok((relay_state, pds_state))
}

async fn check_repo(context: &Context<'_>, relay: &RelayEndpoint, pacer: &Pacer, did: &str) -> RepoCheck {
    let pds = match pds_of(context, did).await {
        Ok(pds) => pds,
        Err(reason) => return repo_check(did, Verdict::Unverifiable { reason }, None),
    };
    let mut states = both_states(context, relay, pacer, &pds, did).await;
    let looks_off = matches!(&states, Ok((r, p)) if compare(r, p).worth_a_second_look());
    if looks_off {
        tokio::time::sleep(context.args.recheck_after).await;
        states = both_states(context, relay, pacer, &pds, did).await;
    }
    match states {
        Ok((relay_state, pds_state)) => {
            repo_check(did, compare(&relay_state, &pds_state), Some((relay_state, pds_state)))
        }
        Err(verdict) => repo_check(did, verdict, None),
    }
}

fn repo_check(did: &str, verdict: Verdict, states: Option<(RepoState, RepoState)>) -> RepoCheck {
    let (relay, pds) = states.unzip();
    let (reason, behind_seconds) = match &verdict {
        Verdict::Correct => (None, None),
        Verdict::Behind { seconds } => {
            (Some("the relay's rev is older than the PDS's".to_string()), *seconds)
        }
        Verdict::Wrong { reason, .. } | Verdict::Unverifiable { reason } => (Some(reason.clone()), None),
    };
    RepoCheck {
        did: did.to_string(),
        verdict: verdict.name().to_string(),
        reason,
        relay_rev: relay.as_ref().and_then(|s| s.rev.clone()),
        pds_rev: pds.as_ref().and_then(|s| s.rev.clone()),
        relay_cid: relay.as_ref().and_then(|s| s.cid.clone()),
        pds_cid: pds.as_ref().and_then(|s| s.cid.clone()),
        relay_status: relay.map(|s| s.status),
        pds_status: pds.map(|s| s.status),
        behind_seconds,
    }
}

fn summarise(relay: &RelayEndpoint, mut checks: Vec<RepoCheck>) -> CorrectnessRelay {
    checks.sort_by(|a, b| a.did.cmp(&b.did));
    let count = |verdict: &str| checks.iter().filter(|c| c.verdict == verdict).count() as u64;
    let (correct, behind, wrong, unverifiable) =
        (count("correct"), count("behind"), count("wrong"), count("unverifiable"));
    let verifiable = correct + behind + wrong;
    let share = |n: u64| (verifiable > 0).then(|| n as f64 / verifiable as f64);
    let mut lags: Vec<f64> = checks.iter().filter_map(|c| c.behind_seconds).collect();
    lags.sort_by(f64::total_cmp);
    CorrectnessRelay {
        relay: relay.label.clone(),
        error: None,
        sampled: checks.len() as u64,
        correct,
        behind,
        wrong,
        unverifiable,
        correct_share: share(correct),
        behind_share: share(behind),
        wrong_share: share(wrong),
        behind_seconds_median: lags.get(lags.len() / 2).copied(),
        behind_seconds_max: lags.last().copied(),
        details: checks.into_iter().filter(|c| c.verdict != "correct").take(MAX_DETAILS).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: &str, rev: Option<&str>, cid: Option<&str>) -> RepoState {
        RepoState { status: status.into(), rev: rev.map(String::from), cid: cid.map(String::from) }
    }

    #[test]
    fn verdicts() {
        let older = crate::atproto::syntax::tid_from_parts(1_800_000_000_000_000, 0);
        let newer = crate::atproto::syntax::tid_from_parts(1_800_000_090_000_000, 0);
        let pds = state(ACTIVE, Some(&newer), Some("bafy-new"));
        assert_eq!(compare(&state(ACTIVE, Some(&newer), Some("bafy-new")), &pds), Verdict::Correct);
        assert_eq!(
            compare(&state(ACTIVE, Some(&older), Some("bafy-old")), &pds),
            Verdict::Behind { seconds: Some(90.0) }
        );
        assert!(matches!(
            compare(&state(ACTIVE, Some(&newer), Some("bafy-other")), &pds),
            Verdict::Wrong { ahead: false, .. }
        ));
        assert!(matches!(
            compare(&state(ACTIVE, Some(&newer), Some("x")), &state(ACTIVE, Some(&older), Some("y"))),
            Verdict::Wrong { ahead: true, .. }
        ));
        assert!(matches!(
            compare(&state("takendown", None, None), &pds),
            Verdict::Wrong { ahead: false, .. }
        ));
        assert_eq!(
            compare(&state("deactivated", None, None), &state("deactivated", None, None)),
            Verdict::Correct
        );
        assert!(matches!(compare(&state(UNKNOWN, None, None), &pds), Verdict::Wrong { .. }));
        assert!(matches!(compare(&state(ACTIVE, None, None), &pds), Verdict::Wrong { .. }));
        assert_eq!(compare(&state(ACTIVE, Some(&newer), None), &pds), Verdict::Correct, "no CID to compare");
    }

    #[test]
    fn sample_sources() {
        assert_eq!(SampleFrom::parse("repos").ok(), Some(SampleFrom::Repos));
        assert_eq!(
            SampleFrom::parse("collection:app.bsky.feed.post").ok(),
            Some(SampleFrom::Collection("app.bsky.feed.post".into()))
        );
        assert!(SampleFrom::parse("collection:nope").is_err());
        assert!(SampleFrom::parse("everything").is_err());
    }
}
