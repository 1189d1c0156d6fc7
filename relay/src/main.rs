//! The `relay` binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use relay::validate::scenario::Scenario;
use std::path::PathBuf;
use std::process::ExitCode;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verify {
            files,
            lenient,
            json,
        } => verify(&files, lenient, json),
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

/// Returns whether every verdict matched its expectation.
fn verify(files: &[PathBuf], lenient: bool, json: bool) -> anyhow::Result<bool> {
    let mut all_match = true;
    for file in files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let mut scenario =
            Scenario::parse(&bytes).with_context(|| format!("parsing {}", file.display()))?;
        scenario.lenient |= lenient;
        let results = scenario
            .run()
            .with_context(|| format!("loading accounts of {}", file.display()))?;
        if !json {
            println!(
                "{} ({} messages, {})",
                file.display(),
                results.len(),
                mode(scenario.lenient)
            );
            println!(
                "{:>4}  {:<10} {:<6} {:<9} detail",
                "#", "type", "verdict", "expected"
            );
        }
        for result in &results {
            let verdict = if result.dropped() { "drop" } else { "pass" };
            let expected = match result.expected_drop {
                Some(true) => "drop",
                Some(false) => "pass",
                None => "-",
            };
            let detail = match &result.outcome {
                Ok(accepted) => accepted
                    .chain_break
                    .as_ref()
                    .map(|b| format!("chain break: {b:?}"))
                    .unwrap_or_default(),
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
                let flag = if result.as_expected() {
                    ""
                } else {
                    "  <-- MISMATCH"
                };
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
