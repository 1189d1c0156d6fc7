//! From one scrape of a relay's `/metrics` to the values `status.runtime` shows. Pure: the
//! previous scrape's event counter comes in, the new one goes out, so the rate is computed
//! over the operator's own sampling interval.

use super::exposition::Sample;
use crate::crd::runtime::{BackfillProgress, CoverageSample, RuntimeStatus};
use std::time::Instant;

/// The relay exports at most this many `relay_collection_dids` series (its top collections).
pub const TOP_COLLECTIONS: usize = 20;

/// The event counter at one scrape, kept until the next one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counter {
    pub at: Instant,
    pub events: f64,
}

/// The values of one scrape; `previous` is the counter of the scrape before it.
pub fn summarise(
    samples: &[Sample],
    at: Instant,
    previous: Option<Counter>,
) -> (RuntimeStatus, Option<Counter>) {
    let counter = value(samples, "relay_events_sequenced_total").map(|events| Counter { at, events });
    let connected = value(samples, "relay_hosts_connected").map(whole);
    let known = known_hosts(samples);
    let head = value(samples, "relay_seq_head").map(whole);
    let references = coverage(samples);
    let status = RuntimeStatus {
        hosts: connected.zip(known).map(|(c, k)| format!("{c}/{k}")),
        hosts_connected: connected,
        hosts_known: known,
        events_per_second: previous.zip(counter).and_then(|(before, now)| rate(before, now)),
        last_seq: head,
        coverage: best(&references).map(|best| percent(best.basis_points)),
        coverage_references: references,
        collections: collections(samples),
        collection_pairs: value(samples, "relay_collections_pairs").map(whole),
        backfill: backfill(samples, head),
        ..RuntimeStatus::default()
    };
    (status, counter)
}

fn value(samples: &[Sample], name: &str) -> Option<f64> {
    samples.iter().find(|s| s.name == name).map(|s| s.value).filter(|v| v.is_finite())
}

fn sum(samples: &[Sample], name: &str) -> Option<f64> {
    let mut matching = samples.iter().filter(|s| s.name == name && s.value.is_finite()).peekable();
    matching.peek()?;
    Some(matching.map(|s| s.value).sum())
}

/// Gauges and counters are whole numbers; the format carries them as floats.
fn whole(value: f64) -> i64 {
    value.round() as i64
}

/// Hosts by status, banned ones left out: those the relay would subscribe to.
fn known_hosts(samples: &[Sample]) -> Option<i64> {
    let hosts: Vec<&Sample> = samples.iter().filter(|s| s.name == "relay_hosts").collect();
    if hosts.is_empty() {
        return None;
    }
    Some(hosts.iter().filter(|s| s.label("status") != Some("banned")).map(|s| whole(s.value)).sum())
}

/// Events per second between two scrapes; none when the counter went back (the relay
/// restarted) or no time passed.
fn rate(before: Counter, now: Counter) -> Option<i64> {
    let seconds = now.at.checked_duration_since(before.at)?.as_secs_f64();
    if seconds <= 0.0 || now.events < before.events {
        return None;
    }
    Some(whole((now.events - before.events) / seconds))
}

fn coverage(samples: &[Sample]) -> Vec<CoverageSample> {
    let mut references: Vec<CoverageSample> = samples
        .iter()
        .filter(|s| s.name == "relay_coverage_ratio" && s.value.is_finite())
        .filter_map(|s| {
            let reference = s.label("reference")?.to_string();
            let commits = samples
                .iter()
                .find(|c| {
                    c.name == "relay_coverage_reference_commits" && c.label("reference") == Some(&reference)
                })
                .map(|c| whole(c.value))
                .unwrap_or(0);
            let basis_points = whole(s.value.clamp(0.0, 1.0) * 10_000.0);
            Some(CoverageSample { reference, basis_points, reference_commits: commits })
        })
        .collect();
    references.sort_by(|a, b| a.reference.cmp(&b.reference));
    references
}

/// The reference that delivered the most commits is the one worth comparing against.
fn best(references: &[CoverageSample]) -> Option<&CoverageSample> {
    references.iter().max_by_key(|r| r.reference_commits)
}

/// Basis points as a percentage with two decimals: 9912 → `99.12%`.
pub fn percent(basis_points: i64) -> String {
    format!("{}.{:02}%", basis_points / 100, basis_points % 100)
}

/// Distinct collections, as far as the relay's top-N gauge can tell; none when the
/// relay runs without its collection directory.
fn collections(samples: &[Sample]) -> Option<String> {
    value(samples, "relay_collections_pairs")?;
    let listed = samples.iter().filter(|s| s.name == "relay_collection_dids").count();
    Some(if listed >= TOP_COLLECTIONS { format!("{TOP_COLLECTIONS}+") } else { listed.to_string() })
}

fn backfill(samples: &[Sample], head: Option<i64>) -> Option<BackfillProgress> {
    let pending = value(samples, "relay_collections_pending").map(whole)?;
    let indexed = value(samples, "relay_collections_indexed_seq").map(whole);
    Some(BackfillProgress {
        dids_found: sum(samples, "relay_backfill_dids_total").map(whole).unwrap_or(0),
        pending_verification: pending,
        indexer_behind: head.zip(indexed).map(|(h, i)| (h - i).max(0)).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::super::exposition::parse;
    use super::*;
    use std::time::Duration;

    const SCRAPE: &str = r#"
relay_hosts{status="active"} 3
relay_hosts{status="idle"} 1
relay_hosts{status="banned"} 2
relay_hosts_connected 3
relay_seq_head 5000
relay_events_sequenced_total 5000
relay_coverage_ratio{reference="wss://big.example"} 0.98766
relay_coverage_reference_commits{reference="wss://big.example"} 900
relay_coverage_ratio{reference="wss://small.example"} 0.5
relay_coverage_reference_commits{reference="wss://small.example"} 10
relay_collections_pairs 42
relay_collections_pending 7
relay_collections_indexed_seq 4990
relay_collection_dids{collection="app.bsky.feed.post"} 30
relay_collection_dids{collection="app.bsky.actor.profile"} 12
relay_backfill_dids_total{kind="import"} 100
relay_backfill_dids_total{kind="crawl"} 20
"#;

    #[test]
    fn a_scrape_becomes_the_shown_values() {
        let (status, counter) = summarise(&parse(SCRAPE), Instant::now(), None);
        assert_eq!(status.hosts.as_deref(), Some("3/4"));
        assert_eq!((status.hosts_connected, status.hosts_known), (Some(3), Some(4)));
        assert_eq!(status.last_seq, Some(5000));
        assert_eq!(status.events_per_second, None, "no rate from a single scrape");
        assert_eq!(status.coverage.as_deref(), Some("98.77%"), "against the reference with most commits");
        assert_eq!(status.coverage_references.len(), 2);
        assert_eq!(status.coverage_references[1].basis_points, 5000);
        assert_eq!(status.collections.as_deref(), Some("2"));
        assert_eq!(status.collection_pairs, Some(42));
        let backfill = status.backfill.expect("collections enabled");
        assert_eq!(
            (backfill.dids_found, backfill.pending_verification, backfill.indexer_behind),
            (120, 7, 10)
        );
        assert_eq!(counter.map(|c| c.events), Some(5000.0));
    }

    #[test]
    fn events_per_second_from_two_scrapes() {
        let start = Instant::now();
        let later = start + Duration::from_secs(60);
        let cases: [(&str, f64, Option<i64>); 3] = [
            ("steady", 5000.0 + 1230.0, Some(21)),
            ("idle", 5000.0, Some(0)),
            ("relay restarted", 10.0, None),
        ];
        for (case, events, expected) in cases {
            let previous = Counter { at: start, events: 5000.0 };
            let text = format!("relay_events_sequenced_total {events}\n");
            let (status, _) = summarise(&parse(&text), later, Some(previous));
            assert_eq!(status.events_per_second, expected, "{case}");
        }
    }

    #[test]
    fn absent_metrics_leave_fields_empty() {
        let (status, counter) = summarise(&parse("relay_hosts_connected 1\n"), Instant::now(), None);
        assert_eq!(status.hosts, None, "known hosts unknown");
        assert_eq!(status.hosts_connected, Some(1));
        assert_eq!((status.coverage, status.collections, status.backfill), (None, None, None));
        assert!(counter.is_none());
    }

    #[test]
    fn collections_beyond_the_top_gauge() {
        let mut text = String::from("relay_collections_pairs 1\n");
        for n in 0..TOP_COLLECTIONS {
            text.push_str(&format!("relay_collection_dids{{collection=\"a.b.c{n}\"}} 1\n"));
        }
        let (status, _) = summarise(&parse(&text), Instant::now(), None);
        assert_eq!(status.collections.as_deref(), Some("20+"));
    }

    #[test]
    fn percentages() {
        for (basis_points, shown) in [(10_000, "100.00%"), (9_912, "99.12%"), (5, "0.05%"), (0, "0.00%")] {
            assert_eq!(percent(basis_points), shown);
        }
    }
}
