//! `status.runtime`: what the relay itself reports (hosts, events, sequence, coverage,
//! collections), sampled by the operator from the relay's internal listener. No floats:
//! rates are whole events per second, shares are basis points (1/100 of a percent), and the
//! printer columns read preformatted strings.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The relay's own state, sampled at most once per interval and written only when a
/// shown value changed (never more than once per interval).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStatus {
    /// When the values below were sampled (it moves only together with a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_at: Option<Time>,
    /// Node the relay pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why the last sample has no relay values (no pod, relay not answering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Connected and known upstream hosts as `connected/known` (the `Hosts` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<String>,
    /// Upstream hosts with an open subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_connected: Option<i64>,
    /// Upstream hosts the relay knows, banned ones excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_known: Option<i64>,
    /// Events sequenced per second over the last sampling interval, rounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<i64>,
    /// Highest sequence number written to the relay's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<i64>,
    /// The relay's self-measured coverage against its best reference (the one that
    /// delivered the most commits), e.g. `99.12%` (the `Coverage` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<String>,
    /// The self-check's last sample per reference (`relay serve --coverage-reference`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coverage_references: Vec<CoverageSample>,
    /// Collections in the relay's directory (`20+` beyond the relay's top-20 gauge; the
    /// `Collections` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<String>,
    /// Listed (DID, collection) pairs in the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection_pairs: Option<i64>,
    /// Collection directory backfill and indexing progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillProgress>,
}

/// One reference of the relay's coverage self-check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoverageSample {
    /// The reference relay's URL.
    pub reference: String,
    /// Share of the reference's commits this relay delivered too, in basis points (10000 = all).
    pub basis_points: i64,
    /// Commits the reference delivered in the sample's window.
    pub reference_commits: i64,
}

/// Progress of the collection directory.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillProgress {
    /// DIDs found by backfill jobs (imports and crawls) since the relay started.
    pub dids_found: i64,
    /// Pairs waiting for identity verification before they are listed.
    pub pending_verification: i64,
    /// Sequence numbers the live collection indexer is behind the log.
    pub indexer_behind: i64,
}
