//! `spec.coverage` and `status.coverage`: scheduled comparisons of this relay with other
//! relays (`relay coverage` in its three modes, run by a CronJob the operator owns) and
//! their results. No floats: shares are basis points (10000 = all).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most references one comparison may name (`relay coverage` compares at most 32 relays,
/// this one included; fewer keep a run's summary well inside a termination message).
pub const MAX_REFERENCES: usize = 16;

/// Scheduled coverage comparisons against other relays.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.criticalBelowBasisPoints <= self.degradedBelowBasisPoints")
        .message("coverage.criticalBelowBasisPoints must not be above coverage.degradedBelowBasisPoints")
)]
#[serde(rename_all = "camelCase")]
pub struct CoverageSpec {
    /// When to compare, as a five-field cron expression in UTC (minute hour day-of-month
    /// month day-of-week; numbers, `*`, ranges, lists and `/` steps).
    #[serde(default = "default_schedule")]
    #[schemars(regex(pattern = r"^\s*[0-9*,/-]+(\s+[0-9*,/-]+){4}\s*$"), length(max = 128))]
    pub schedule: String,
    /// Length of the common firehose window (`relay coverage firehose --window`), e.g. `5m`.
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"), length(max = 16))]
    pub firehose_window: String,
    /// Relays to compare with: another Relay of this namespace by name, or any relay by URL.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("coverage.references needs at least one reference"))]
    #[schemars(length(max = 16))]
    pub references: Vec<CoverageReference>,
    /// NSID source of the collection comparison (`relay coverage collections --nsids`): a URL
    /// of a newline list, inline NSIDs, or `relays:first` (every NSID this relay indexes).
    #[serde(default = "default_nsids")]
    #[schemars(length(min = 1, max = 2048))]
    pub nsids: String,
    /// Repos sampled per relay by the correctness comparison.
    #[serde(default = "default_sample")]
    #[schemars(range(min = 1, max = 1000))]
    pub correctness_sample: i64,
    /// `CoverageOK` turns False (Degraded) below this share of the best reference's coverage.
    #[serde(default = "default_degraded")]
    #[schemars(range(min = 0, max = 10000))]
    pub degraded_below_basis_points: i64,
    /// `CoverageOK` turns False (Critical) below this share of the best reference's coverage.
    #[serde(default = "default_critical")]
    #[schemars(range(min = 0, max = 10000))]
    pub critical_below_basis_points: i64,
    /// Suspend the CronJob (runs already started finish).
    #[serde(default)]
    pub suspend: bool,
    /// Runs kept in `status.coverage.history`.
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 20))]
    pub history_limit: i64,
}

/// One relay to compare with: exactly one of `relay` and `url`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.relay) != has(self.url)")
        .message("a coverage reference names exactly one of relay and url")
)]
#[serde(rename_all = "camelCase")]
pub struct CoverageReference {
    /// Another Relay in this namespace (compared through its in-cluster Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub relay: Option<String>,
    /// Any relay by URL, e.g. `wss://bsky.network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(wss|https|ws|http)://[^\s,]+$"), length(max = 512))]
    pub url: Option<String>,
}

fn default_schedule() -> String {
    // A fixed minute off the hour: no randomness, so the rendered CronJob is stable.
    "17 * * * *".into()
}

fn default_window() -> String {
    "5m".into()
}

fn default_nsids() -> String {
    "relays:first".into()
}

fn default_sample() -> i64 {
    50
}

fn default_degraded() -> i64 {
    9000
}

fn default_critical() -> i64 {
    7000
}

fn default_history() -> i64 {
    5
}

/// What the last coverage runs found.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoverageStatus {
    /// When the newest finished run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    /// When the CronJob will start the next run (from the schedule, in UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<Time>,
    /// The Job of the newest finished run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Why the newest run has no (or partial) figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// This relay's firehose coverage relative to the best reference's, in basis points
    /// (what `CoverageOK` compares with the thresholds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_reference_basis_points: Option<i64>,
    /// `bestReferenceBasisPoints` as a percentage (the `Compared` column), e.g. `99.41%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_reference: Option<String>,
    /// This relay's own figures in the newest run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own: Option<CoverageFigures>,
    /// Each reference's figures in the newest run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<CoverageFigures>,
    /// The last runs, oldest first, at most `spec.coverage.historyLimit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<CoverageHistoryEntry>,
}

/// One relay's figures in one run (each mode fills its own fields).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoverageFigures {
    /// The relay's URL as compared.
    pub relay: String,
    /// Share of the window's commits (the union of all relays) it delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firehose_basis_points: Option<i64>,
    /// Distinct DIDs it delivered in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_dids: Option<i64>,
    /// NSIDs where it lists as many DIDs as the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections_complete: Option<i64>,
    /// NSIDs where it lists fewer DIDs than the leader (but some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections_behind: Option<i64>,
    /// NSIDs where it lists none while another relay lists some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections_zero: Option<i64>,
    /// Share of sampled repos whose rev, CID and status match their PDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct_basis_points: Option<i64>,
    /// Why some of its figures are missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One past run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoverageHistoryEntry {
    /// When the run ended.
    pub time: Time,
    /// `bestReferenceBasisPoints` of that run (absent when it had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis_points: Option<i64>,
}
