//! From one `GET /_summary` of a relay's internal listener (the relay's state as one JSON
//! document of integers, docs/relay.md) to the values `status.runtime` shows. Pure, like
//! [`super::summary`], which reads `/metrics` for relays too old to serve `/_summary`.

use super::caught_up::Verdict;
use super::summary::{percent, Counter};
use crate::crd::runtime::{BackfillProgress, CoverageSample, RuntimeStatus};
use serde::Deserialize;
use std::time::Instant;

/// The fields of `/_summary` the operator shows; everything else is ignored, so a newer
/// relay may add fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RelaySummary {
    pub hosts: Hosts,
    pub events: Events,
    pub coverage: Vec<Coverage>,
    pub collections: Collections,
    pub backfill: Option<Backfill>,
    /// The relay's own "caught up" verdict (its `/_ready`); none from a relay that does not say.
    pub ready: Option<Readiness>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Readiness {
    pub ready: bool,
    pub reason: Option<String>,
}

/// The summary's readiness as the `CaughtUp` verdict.
pub fn caught_up(summary: &RelaySummary) -> Verdict {
    match &summary.ready {
        Some(Readiness { ready: true, .. }) => Verdict::CaughtUp,
        Some(Readiness { ready: false, reason }) => {
            Verdict::Behind(reason.clone().unwrap_or_else(|| "the relay gave no reason".into()))
        }
        None => Verdict::Unknown("the relay's /_summary has no readiness".into()),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Hosts {
    pub known: i64,
    pub connected: i64,
    pub by_status: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Events {
    pub sequenced_total: i64,
    pub last_seq: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Coverage {
    pub reference: String,
    /// None until the self-check has measured a sample.
    pub basis_points: Option<i64>,
    pub reference_commits: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Collections {
    pub enabled: bool,
    pub count: i64,
    pub pairs: i64,
    pub pending_verification: i64,
    pub indexed_seq: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Backfill {
    pub import: Import,
    pub crawl: Crawl,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Import {
    pub imported: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Crawl {
    pub repos_found: i64,
}

/// The values of one summary; `previous` is the event counter of the sample before it.
pub fn summarise(
    summary: &RelaySummary,
    at: Instant,
    previous: Option<Counter>,
) -> (RuntimeStatus, Option<Counter>) {
    let counter = Counter { at, events: summary.events.sequenced_total as f64 };
    let banned = summary.hosts.by_status.get("banned").copied().unwrap_or(0);
    // Hosts the relay would subscribe to: banned ones left out, as in the metrics path.
    let known = (summary.hosts.known - banned).max(0);
    let connected = summary.hosts.connected;
    let mut references: Vec<CoverageSample> = summary
        .coverage
        .iter()
        .filter_map(|c| {
            Some(CoverageSample {
                reference: c.reference.clone(),
                basis_points: c.basis_points?.clamp(0, 10_000),
                reference_commits: c.reference_commits,
            })
        })
        .collect();
    references.sort_by(|a, b| a.reference.cmp(&b.reference));
    let best = references.iter().max_by_key(|r| r.reference_commits).map(|r| percent(r.basis_points));
    let collections = &summary.collections;
    let status = RuntimeStatus {
        hosts: Some(format!("{connected}/{known}")),
        hosts_connected: Some(connected),
        hosts_known: Some(known),
        events_per_second: previous.and_then(|before| rate(before, counter)),
        last_seq: Some(summary.events.last_seq),
        coverage: best,
        coverage_references: references,
        collections: collections.enabled.then(|| collections.count.to_string()),
        collection_pairs: collections.enabled.then_some(collections.pairs),
        backfill: collections.enabled.then(|| BackfillProgress {
            dids_found: summary.backfill.as_ref().map_or(0, |b| b.import.imported + b.crawl.repos_found),
            pending_verification: collections.pending_verification,
            indexer_behind: (summary.events.last_seq - collections.indexed_seq).max(0),
        }),
        ..RuntimeStatus::default()
    };
    (status, Some(counter))
}

/// Whole events per second between two samples; none after a relay restart (the total
/// went back) or when no time passed.
fn rate(before: Counter, now: Counter) -> Option<i64> {
    let seconds = now.at.checked_duration_since(before.at)?.as_secs_f64();
    if seconds <= 0.0 || now.events < before.events {
        return None;
    }
    Some(((now.events - before.events) / seconds).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The example in docs/relay.md, as the relay documents it.
    const DOCS: &str = r#"{"version":"0.1.0",
 "hosts":{"known":2480,"subscribed":2475,"connected":2431,
          "byStatus":{"active":2460,"idle":12,"offline":3,"throttled":0,"banned":5}},
 "events":{"sequencedTotal":123456789,"lastSeq":9182736455},
 "coverage":[{"reference":"wss://bsky.network","basisPoints":9941,"referenceCommits":48211,"lowSamples":0}],
 "collections":{"enabled":true,"count":1234,"pairs":58211934,"pendingVerification":0,"indexedSeq":9182736443},
 "backfill":{"import":{"running":true,"collectionsDone":180,"collectionsTotal":200,"imported":1203311},
             "crawl":{"running":false,"hostsDone":12,"hostsTotal":12,"reposFound":5000}},
 "ready":{"ready":true,"reason":null}}"#;

    #[test]
    fn the_documented_summary_becomes_the_shown_values() {
        let summary: RelaySummary = serde_json::from_str(DOCS).expect("docs example");
        let start = Instant::now();
        let (status, counter) = summarise(&summary, start, None);
        assert_eq!(status.hosts.as_deref(), Some("2431/2475"), "banned hosts left out");
        assert_eq!(status.last_seq, Some(9_182_736_455));
        assert_eq!(status.events_per_second, None, "no rate from one sample");
        assert_eq!(status.coverage.as_deref(), Some("99.41%"));
        assert_eq!(status.collections.as_deref(), Some("1234"), "the exact count, not 20+");
        let backfill = status.backfill.expect("collections on");
        assert_eq!((backfill.dids_found, backfill.indexer_behind), (1_208_311, 12));
        let later = Counter { at: start + Duration::from_secs(60), events: 123_456_789.0 + 600.0 };
        let (next, _) = summarise(&summary, later.at, counter);
        assert_eq!(next.events_per_second, Some(0), "same total a minute later");
        let (after, _) = summarise(&summary, later.at + Duration::from_secs(60), Some(later));
        assert_eq!(after.events_per_second, None, "the total went back: a restarted relay");
    }

    #[test]
    fn unmeasured_references_and_no_directory_leave_fields_empty() {
        let text = r#"{"hosts":{"known":2,"connected":1},"events":{"sequencedTotal":5,"lastSeq":5},
            "coverage":[{"reference":"wss://a","basisPoints":null,"referenceCommits":0}],
            "collections":{"enabled":false},"backfill":null}"#;
        let summary: RelaySummary = serde_json::from_str(text).expect("summary");
        let (status, _) = summarise(&summary, Instant::now(), None);
        assert_eq!((status.coverage, status.coverage_references.len()), (None, 0));
        assert_eq!((status.collections, status.backfill), (None, None));
        assert_eq!(status.hosts.as_deref(), Some("1/2"));
        assert!(matches!(caught_up(&summary), Verdict::Unknown(_)), "no readiness in the summary");
    }

    #[test]
    fn the_relays_readiness_is_the_caught_up_verdict() {
        let summary: RelaySummary = serde_json::from_str(DOCS).expect("docs example");
        assert_eq!(caught_up(&summary), Verdict::CaughtUp);
        let behind: RelaySummary =
            serde_json::from_str(r#"{"ready":{"ready":false,"reason":"no hosts connected"}}"#)
                .expect("summary");
        assert_eq!(caught_up(&behind), Verdict::Behind("no hosts connected".into()));
    }
}
