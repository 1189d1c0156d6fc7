//! The `relay` binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use relay::validate::scenario::Scenario;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "relay", version, about = "ATProto relay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay: subscribe to PDS hosts, validate, sequence, persist, serve the firehose.
    Serve(Box<relay::config::ServeConfig>),
    /// Run a simulated PDS fleet (and PLC) on loopback, optionally registered with a relay.
    Simulate(relay::simulate::SimulateConfig),
    /// Validate a file of firehose frames and print a verdict for each.
    ///
    /// The file is a scenario in atproto JSON: `{lenient?, accounts: [...], messages:
    /// [{frame: {header, body}, drop?}]}` (the format of indigo's relay scenarios; see
    /// docs/validation.md). Exits non-zero when a message's verdict differs from its
    /// `drop` field, or when the file cannot be read.
    Verify {
        /// Scenario files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Accept commits without prevData / op prev (pre-Sync-1.1 upstreams),
        /// whatever the file says.
        #[arg(long, env = "RELAY_LENIENT_SYNC_VALIDATION")]
        lenient: bool,
        /// Print verdicts as JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Call the admin API of a running relay (hosts, takedowns, domains, backfill, ...).
    Admin(relay::admin_cli::AdminArgs),
    /// Compare relays' firehoses, collection directories and data (docs/coverage.md).
    ///
    /// Exits non-zero only when the run itself failed (bad arguments, no relay reachable),
    /// never because a coverage figure is low.
    Coverage(relay::coverage::CoverageArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verify { files, lenient, json } => verify(&files, lenient, json),
        Command::Serve(config) => {
            if !config.transparent_huge_pages {
                disable_transparent_huge_pages();
            }
            run_async(serve(*config))
        }
        Command::Simulate(config) => run_async(simulate(config)),
        // Not run_async: its JSON tracing would mix with the tables printed to the operator.
        Command::Admin(args) => relay::admin_cli::run_blocking(args),
        // Its own runtime and logging: the report goes to stdout, progress to a terminal or
        // to the logs.
        Command::Coverage(args) => relay::coverage::run_blocking(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for huge pages on its
/// arenas and later returns freed 64 KiB runs of them to the kernel; the next touch of such a
/// run faulted in and zeroed a whole 2 MiB page. At saturation that was ~20 % of the
/// sequencer thread's CPU and the peak RSS 145 MiB instead of 80 MiB. The flag applies at
/// fault time to every mapping, so setting it this late (after start-up allocations) works.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result != 0 {
        eprintln!("warning: could not turn transparent huge pages off: {}", std::io::Error::last_os_error());
    }
}

fn run_async(future: impl std::future::Future<Output = anyhow::Result<bool>>) -> anyhow::Result<bool> {
    init_tracing();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(future)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELAY_LOG_LEVEL")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

async fn serve(mut config: relay::config::ServeConfig) -> anyhow::Result<bool> {
    if config.admin_tokens.iter().all(|t| t.is_empty()) {
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        tracing::warn!(
            "no RELAY_ADMIN_PASSWORD set; generated an admin token for this run (see the next line)"
        );
        eprintln!("generated admin token: {token}");
        config.admin_tokens = vec![token];
    }
    let mut running = relay::wiring::start(config).await?;
    let relay = running.relay.clone();
    let (public, internal) = relay::server::bind(&relay).await?;
    tracing::info!(public = %public.local_addr()?, internal = %internal.local_addr()?, "relay listening");
    running.start_ingest();
    relay::server::serve(relay.clone(), public, internal, shutdown_signal()).await?;
    tracing::info!("shutting down: stopping subscriptions and draining queues");
    let timeout = relay.config.shutdown_timeout;
    if tokio::time::timeout(timeout, running.shutdown()).await.is_err() {
        tracing::error!(
            seconds = timeout.as_secs(),
            "shutdown did not finish in time; exiting anyway (the hosts re-send what was not durable)"
        );
    }
    Ok(true)
}

async fn simulate(config: relay::simulate::SimulateConfig) -> anyhow::Result<bool> {
    let admin = config.relay_admin_url.clone();
    let token = config.relay_admin_token.clone().unwrap_or_default();
    let sim = relay::simulate::Simulation::start(config).await?;
    println!("PLC directory: {}", sim.plc_url());
    for host in &sim.hosts {
        println!("PDS host: http://{}", host.hostname());
    }
    if let Some(admin) = admin {
        sim.register_with_relay(&admin, &token).await?;
        println!("registered {} hosts with {admin}", sim.hosts.len());
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    sim.create_accounts();
    let runner = Arc::clone(&sim);
    tokio::select! {
        _ = runner.run() => {}
        _ = shutdown_signal() => {}
    }
    println!("commits made: {}", sim.commits.load(std::sync::atomic::Ordering::Relaxed));
    Ok(true)
}

/// Returns whether every verdict matched its expectation.
fn verify(files: &[PathBuf], lenient: bool, json: bool) -> anyhow::Result<bool> {
    let mut all_match = true;
    for file in files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let mut scenario = Scenario::parse(&bytes).with_context(|| format!("parsing {}", file.display()))?;
        scenario.lenient |= lenient;
        let results = scenario.run().with_context(|| format!("loading accounts of {}", file.display()))?;
        if !json {
            println!("{} ({} messages, {})", file.display(), results.len(), mode(scenario.lenient));
            println!("{:>4}  {:<10} {:<7} {:<9} detail", "#", "type", "verdict", "expected");
        }
        for result in &results {
            let verdict = if result.dropped() { "drop" } else { "pass" };
            let expected = match result.expected_drop {
                Some(true) => "drop",
                Some(false) => "pass",
                None => "-",
            };
            let detail = match &result.outcome {
                Ok(accepted) => {
                    accepted.chain_break.as_ref().map(|b| format!("chain break: {b:?}")).unwrap_or_default()
                }
                Err(drop) => format!("{}: {drop}", drop.reason()),
            };
            all_match &= result.as_expected();
            if json {
                let line = serde_json::json!({
                    "file": file.display().to_string(), "index": result.index, "type": result.kind,
                    "verdict": verdict, "expected": expected, "matches": result.as_expected(), "detail": detail,
                });
                println!("{line}");
            } else {
                let flag = if result.as_expected() { "" } else { "  <-- MISMATCH" };
                println!(
                    "{:>4}  {:<10} {:<7} {:<9} {detail}{flag}",
                    result.index, result.kind, verdict, expected
                );
            }
        }
    }
    Ok(all_match)
}

fn mode(lenient: bool) -> &'static str {
    if lenient {
        "lenient"
    } else {
        "strict Sync 1.1"
    }
}
