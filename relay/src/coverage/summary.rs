//! The run summary for machines: a few integers per relay, small enough for a Kubernetes
//! container's termination message (4,096 bytes), which is how the operator's coverage
//! CronJob hands its result back without the job needing any API permission
//! (`relay coverage --summary-file /dev/termination-log ...`).
//!
//! Integers only (shares in basis points): the operator's status schema has no floats.
//! Schema version 1; fields that do not apply to a mode are left out.

use super::report::{CollectionsReport, CorrectnessReport, FirehoseReport, Report};
use serde::{Deserialize, Serialize};

/// Kubernetes keeps at most this many bytes of a termination message.
pub const MAX_SUMMARY_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub v: u32,
    /// `firehose`, `collections` or `correctness`.
    pub mode: String,
    pub finished_at: String,
    /// Set when the run itself failed (then `relays` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub relays: Vec<RelaySummary>,
    /// Relays left out to stay within [`MAX_SUMMARY_BYTES`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelaySummary {
    /// As given with `--relay`.
    pub relay: String,
    /// Why this relay has no figures (the others still do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Firehose: commits covered of the window's union, in basis points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage_bp: Option<u32>,
    /// Firehose: distinct DIDs seen in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_dids: Option<u64>,
    /// Collections: NSIDs where this relay lists as many DIDs as the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections_complete: Option<u64>,
    /// Collections: NSIDs where it lists fewer (but some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections_behind: Option<u64>,
    /// Collections: NSIDs where it lists none while another relay lists some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections_zero: Option<u64>,
    /// Correctness: verifiable sampled repos the relay has right, in basis points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct_bp: Option<u32>,
    /// Correctness: repos sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<u64>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// A share in [0, 1] as basis points.
fn basis_points(share: f64) -> u32 {
    (share.clamp(0.0, 1.0) * 10_000.0).round() as u32
}

impl Summary {
    /// The summary of a completed run.
    pub fn of(report: &Report) -> Summary {
        let relays = if let Some(firehose) = &report.firehose {
            firehose_relays(firehose)
        } else if let Some(collections) = &report.collections {
            collections_relays(collections)
        } else if let Some(correctness) = &report.correctness {
            correctness_relays(correctness)
        } else {
            Vec::new()
        };
        Summary {
            v: 1,
            mode: report.mode.clone(),
            finished_at: report.finished_at.clone(),
            error: None,
            relays,
            omitted: 0,
        }
    }

    /// The summary of a run that failed.
    pub fn failed(mode: &str, finished_at: String, error: &str) -> Summary {
        let error: String = error.chars().take(1024).collect();
        Summary { v: 1, mode: mode.into(), finished_at, error: Some(error), relays: Vec::new(), omitted: 0 }
    }

    /// Compact JSON within [`MAX_SUMMARY_BYTES`]: relays at the end of the list are left
    /// out (and counted in `omitted`) when all of them would not fit.
    pub fn to_json(&self) -> String {
        let mut summary = self.clone();
        loop {
            let text = serde_json::to_string(&summary).unwrap_or_default();
            if text.len() <= MAX_SUMMARY_BYTES || summary.relays.is_empty() {
                return text;
            }
            summary.relays.pop();
            summary.omitted += 1;
        }
    }
}

fn firehose_relays(report: &FirehoseReport) -> Vec<RelaySummary> {
    report
        .relays
        .iter()
        .map(|relay| RelaySummary {
            relay: relay.relay.clone(),
            error: relay.error.clone(),
            coverage_bp: relay.coverage.map(basis_points),
            unique_dids: Some(relay.unique_dids),
            ..RelaySummary::default()
        })
        .collect()
}

fn collections_relays(report: &CollectionsReport) -> Vec<RelaySummary> {
    report
        .relays
        .iter()
        .map(|relay| {
            let (mut complete, mut behind, mut zero) = (0u64, 0u64, 0u64);
            for result in &report.results {
                let leader = result.counts.iter().filter_map(|count| count.dids).max().unwrap_or(0);
                let mine = result.counts.iter().find(|count| count.relay == relay.relay).and_then(|c| c.dids);
                match mine {
                    None => {}
                    Some(0) if leader > 0 => zero += 1,
                    Some(dids) if dids >= leader => complete += 1,
                    Some(_) => behind += 1,
                }
            }
            RelaySummary {
                relay: relay.relay.clone(),
                collections_complete: Some(complete),
                collections_behind: Some(behind),
                collections_zero: Some(zero),
                ..RelaySummary::default()
            }
        })
        .collect()
}

fn correctness_relays(report: &CorrectnessReport) -> Vec<RelaySummary> {
    report
        .relays
        .iter()
        .map(|relay| RelaySummary {
            relay: relay.relay.clone(),
            error: relay.error.clone(),
            correct_bp: relay.correct_share.map(basis_points),
            sampled: Some(relay.sampled),
            ..RelaySummary::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coverage::report::{NsidCount, NsidResult};

    fn count(relay: &str, dids: Option<u64>) -> NsidCount {
        NsidCount { relay: relay.into(), dids, error: None, compared: false }
    }

    fn nsid(counts: Vec<NsidCount>) -> NsidResult {
        NsidResult { nsid: "app.bsky.feed.post".into(), leader: None, counts, zero: vec![], missing: vec![] }
    }

    #[test]
    fn collections_are_complete_behind_or_zero_against_the_leader() {
        let report = CollectionsReport {
            nsid_source: "list".into(),
            nsids: 4,
            page_limit: 1000,
            compare_max_dids: 0,
            relays: ["a", "b"]
                .iter()
                .map(|r| crate::coverage::report::CollectionsRelay {
                    relay: r.to_string(),
                    nsids_answered: 0,
                    nsids_failed: 0,
                    nsids_zero: 0,
                    nsids_led: 0,
                    total_dids: 0,
                    requests: 0,
                    throttled: 0,
                })
                .collect(),
            results: vec![
                nsid(vec![count("a", Some(10)), count("b", Some(10))]),
                nsid(vec![count("a", Some(10)), count("b", Some(7))]),
                nsid(vec![count("a", Some(3)), count("b", Some(0))]),
                nsid(vec![count("a", Some(0)), count("b", None)]),
            ],
        };
        let relays = collections_relays(&report);
        // a: leads or ties everywhere (the all-zero NSID counts as complete).
        assert_eq!(
            (relays[0].collections_complete, relays[0].collections_behind, relays[0].collections_zero),
            (Some(4), Some(0), Some(0))
        );
        // b: one tie, one behind, one zero, one failed (in no count).
        assert_eq!(
            (relays[1].collections_complete, relays[1].collections_behind, relays[1].collections_zero),
            (Some(1), Some(1), Some(1))
        );
    }

    #[test]
    fn shares_are_basis_points_and_the_json_fits_a_termination_message() {
        assert_eq!(basis_points(0.98765), 9877);
        assert_eq!(basis_points(1.5), 10_000);
        let many = Summary {
            v: 1,
            mode: "firehose".into(),
            finished_at: "2026-11-30T00:00:00Z".into(),
            error: None,
            relays: (0..200)
                .map(|i| RelaySummary {
                    relay: format!("wss://relay-{i}.example.com"),
                    coverage_bp: Some(9000),
                    unique_dids: Some(123_456),
                    ..RelaySummary::default()
                })
                .collect(),
            omitted: 0,
        };
        let text = many.to_json();
        assert!(text.len() <= MAX_SUMMARY_BYTES, "{} bytes", text.len());
        let back: Summary = serde_json::from_str(&text).expect("parses");
        assert_eq!(back.relays.len() + back.omitted as usize, 200);
        assert!(back.omitted > 0);
        let failed = Summary::failed("collections", "t".into(), &"x".repeat(10_000)).to_json();
        assert!(failed.len() < 1200 && failed.contains("\"error\""), "{failed}");
    }
}
