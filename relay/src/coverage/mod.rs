//! `relay coverage`: is a relay seeing the whole network? Three ways to ask, one report.
//!
//! - [`firehose`]: subscribe to several relays at once and compare what each delivers in one
//!   common window (commit coverage against the union of all of them).
//! - [`collections`]: compare `listReposByCollection` answers, NSID by NSID.
//! - [`correctness`]: follow sampled repos to their PDS and compare the relay's answers.
//!
//! These run on the protocol code only (`atproto`, `identity`), never on the daemon's storage,
//! so the same binary runs them from a laptop or a CronJob against any implementation.
//! [`selfcheck`] is the exception: the daemon's own coverage sampler (`relay serve
//! --coverage-reference`), which reads the relay's output in process.
//!
//! Exit status: non-zero only when the run itself failed (bad arguments, no relay reachable,
//! an unreadable NSID list), never because a coverage figure is low: the caller decides what
//! is low.

pub mod collections;
pub mod correctness;
pub mod firehose;
pub mod http;
pub mod report;
pub mod selfcheck;
pub mod summary;
pub mod wire;

use clap::{Args, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

pub use report::Report;

/// Most relays compared in one run (the firehose tallies keep one bit per relay).
pub const MAX_RELAYS: usize = 32;

/// `relay coverage ...`
#[derive(Args, Debug, Clone)]
pub struct CoverageArgs {
    /// Report format: a dated markdown report, or JSON (schema in docs/coverage.md).
    #[arg(long, value_enum, env = "RELAY_COVERAGE_FORMAT", default_value = "markdown", global = true)]
    pub format: Format,
    /// Write the report to this file instead of stdout.
    #[arg(long, env = "RELAY_COVERAGE_OUTPUT", global = true)]
    pub output: Option<PathBuf>,
    /// Also write a compact JSON summary (integers per relay, at most 4,096 bytes) here, also
    /// when the run fails: `/dev/termination-log` in the operator's coverage CronJob.
    #[arg(long, env = "RELAY_COVERAGE_SUMMARY_FILE", global = true)]
    pub summary_file: Option<PathBuf>,
    #[command(subcommand)]
    pub mode: CoverageMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Markdown,
    Json,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CoverageMode {
    /// Subscribe to every relay at once and compare what each delivers in one window.
    Firehose(firehose::FirehoseArgs),
    /// Compare listReposByCollection counts and DIDs, NSID by NSID.
    Collections(collections::CollectionsArgs),
    /// Follow sampled repos to their PDS and compare the relay's commit and status answers.
    Correctness(correctness::CorrectnessArgs),
}

impl CoverageMode {
    /// The mode's name, as reports and summaries spell it.
    pub fn name(&self) -> &'static str {
        match self {
            CoverageMode::Firehose(_) => "firehose",
            CoverageMode::Collections(_) => "collections",
            CoverageMode::Correctness(_) => "correctness",
        }
    }
}

/// Why a run failed (one variant per stage). Low coverage is never an error.
#[derive(Debug, thiserror::Error)]
pub enum CoverageError {
    #[error("bad arguments: {0}")]
    Arguments(String),
    #[error("reading the NSID list from {source_name}: {reason}")]
    NsidSource { source_name: String, reason: String },
    #[error("no relay could be reached: {0}")]
    NoRelayReachable(String),
    #[error("sampling repos from {relay}: {reason}")]
    Sampling { relay: String, reason: String },
    #[error("writing the report to {path}: {reason}")]
    Output { path: String, reason: String },
    #[error("starting the runtime: {0}")]
    Runtime(String),
}

/// One relay as given on the command line, with the URLs the modes use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayEndpoint {
    /// As given (reports name relays this way).
    pub label: String,
    /// `http(s)://host[:port]` for XRPC.
    pub http_base: String,
    /// `ws(s)://…/xrpc/com.atproto.sync.subscribeRepos`.
    pub firehose_url: String,
}

const SUBSCRIBE_PATH: &str = "/xrpc/com.atproto.sync.subscribeRepos";

impl RelayEndpoint {
    /// Accepts `host`, `https://host`, `http://host:port`, `wss://host` or a full
    /// `subscribeRepos` URL; a bare host means TLS.
    pub fn parse(text: &str) -> Result<RelayEndpoint, CoverageError> {
        let trimmed = text.trim();
        let (secure, rest) = match trimmed.split_once("://") {
            Some(("https" | "wss", rest)) => (true, rest),
            Some(("http" | "ws", rest)) => (false, rest),
            Some((scheme, _)) => {
                return Err(CoverageError::Arguments(format!("relay {text:?}: unknown scheme {scheme:?}")))
            }
            None => (true, trimmed),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || authority.contains(char::is_whitespace) {
            return Err(CoverageError::Arguments(format!("relay {text:?} has no host")));
        }
        let (http, ws) = if secure { ("https", "wss") } else { ("http", "ws") };
        Ok(RelayEndpoint {
            label: trimmed.to_string(),
            http_base: format!("{http}://{authority}"),
            firehose_url: format!("{ws}://{authority}{SUBSCRIBE_PATH}"),
        })
    }

    /// Parses a list of relays, checking how many there are.
    pub fn parse_all(texts: &[String], at_least: usize) -> Result<Vec<RelayEndpoint>, CoverageError> {
        let relays: Vec<RelayEndpoint> = texts
            .iter()
            .filter(|t| !t.trim().is_empty())
            .map(|t| RelayEndpoint::parse(t))
            .collect::<Result<_, _>>()?;
        if relays.len() < at_least {
            return Err(CoverageError::Arguments(format!(
                "give at least {at_least} relay(s) with --relay (got {})",
                relays.len()
            )));
        }
        if relays.len() > MAX_RELAYS {
            return Err(CoverageError::Arguments(format!(
                "at most {MAX_RELAYS} relays (got {})",
                relays.len()
            )));
        }
        Ok(relays)
    }
}

/// Progress of a long run: plain lines on a terminal, log events otherwise (a CronJob's
/// logs), so an operator watching either sees the run move.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    terminal: bool,
}

impl Progress {
    pub fn detect() -> Progress {
        Progress { terminal: std::io::stderr().is_terminal() }
    }

    /// Logs only (tests, and the daemon's self-check).
    pub fn quiet() -> Progress {
        Progress { terminal: false }
    }

    pub fn line(&self, message: &str) {
        if self.terminal {
            eprintln!("{message}");
        }
        tracing::info!(target: "relay::coverage", "{message}");
    }
}

/// How often long runs report progress.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// Longest wait for a watched firehose's closing handshake (the figures are taken already).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs one mode and returns its report.
pub async fn run(args: &CoverageArgs, progress: Progress) -> Result<Report, CoverageError> {
    let started_at = now_rfc3339();
    let (relays, body) = match &args.mode {
        CoverageMode::Firehose(mode) => {
            let report = firehose::run(mode, progress).await?;
            (mode.relays.clone(), report::ModeReport::Firehose(report))
        }
        CoverageMode::Collections(mode) => {
            let report = collections::run(mode, progress).await?;
            (mode.relays.clone(), report::ModeReport::Collections(report))
        }
        CoverageMode::Correctness(mode) => {
            let report = correctness::run(mode, progress).await?;
            (mode.relays.clone(), report::ModeReport::Correctness(report))
        }
    };
    Ok(Report::new(started_at, now_rfc3339(), relays, body))
}

/// The binary's entry point: runs the mode, writes the report; `Ok(true)` for any completed
/// run (low coverage included), an error (exit status 2) for a failed one.
pub fn run_blocking(args: CoverageArgs) -> anyhow::Result<bool> {
    let progress = Progress::detect();
    // On a terminal the progress lines say it all; JSON log lines would only clutter them.
    if !progress.terminal {
        init_logs();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CoverageError::Runtime(e.to_string()))?;
    let outcome = runtime.block_on(run(&args, progress));
    if let Some(path) = &args.summary_file {
        let summary = match &outcome {
            Ok(report) => summary::Summary::of(report),
            Err(error) => summary::Summary::failed(args.mode.name(), now_rfc3339(), &error.to_string()),
        };
        std::fs::write(path, summary.to_json())
            .map_err(|e| CoverageError::Output { path: path.display().to_string(), reason: e.to_string() })?;
    }
    write_report(&outcome?, args.format, args.output.as_deref())?;
    Ok(true)
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELAY_LOG_LEVEL")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The report in the chosen format.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Markdown => report::markdown(report),
        Format::Json => report::json(report),
    }
}

fn write_report(
    report: &Report,
    format: Format,
    output: Option<&std::path::Path>,
) -> Result<(), CoverageError> {
    let text = render(report, format);
    match output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| CoverageError::Output { path: path.display().to_string(), reason: e.to_string() }),
        None => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| CoverageError::Output { path: "stdout".into(), reason: e.to_string() })
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) fn unix_micros_now() -> u64 {
    crate::validate::verdict::now_micros()
}

/// Hash of a (did, rev) pair or a DID: the sets of seen commits keep 8 bytes per entry
/// instead of the strings (a collision among a few million entries has odds of ~1e-7).
pub(crate) fn key_of(parts: &[&str]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    /// Fixed so that keys computed in different tasks compare.
    const SEED: u64 = 0x636f_7665_7261_6765;
    let mut hasher = foldhash::quality::FixedState::with_seed(SEED).build_hasher();
    for part in parts {
        hasher.write(part.as_bytes());
        hasher.write_u8(0xff);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls() {
        let bare = RelayEndpoint::parse("bsky.network").expect("bare");
        assert_eq!(bare.http_base, "https://bsky.network");
        assert_eq!(bare.firehose_url, "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos");
        let local = RelayEndpoint::parse("http://127.0.0.1:2470/").expect("http");
        assert_eq!(local.firehose_url, "ws://127.0.0.1:2470/xrpc/com.atproto.sync.subscribeRepos");
        let full =
            RelayEndpoint::parse("wss://relay.example/xrpc/com.atproto.sync.subscribeRepos").expect("wss");
        assert_eq!(full.http_base, "https://relay.example");
        assert!(RelayEndpoint::parse("ftp://x").is_err());
        assert!(RelayEndpoint::parse("https://").is_err());
        assert!(RelayEndpoint::parse_all(&["a.example".into()], 2).is_err());
    }

    #[test]
    fn keys_separate_their_parts() {
        assert_ne!(key_of(&["did:a", "b"]), key_of(&["did:ab", ""]));
        assert_eq!(key_of(&["did:a", "rev"]), key_of(&["did:a", "rev"]));
    }
}
