//! The coverage report: one JSON schema for all modes (stable; documented in
//! docs/coverage.md, consumed by the operator) and its markdown rendering, a dated report
//! with a table per mode and the reference relay (the first given) first.
//!
//! Compatibility rule for the JSON: fields are only ever added; a change that renames,
//! removes or re-types a field bumps [`SCHEMA_VERSION`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Version of the JSON schema below.
pub const SCHEMA_VERSION: u32 = 1;
/// Rows of "not correct" repos and DIDs of a missing-DID sample shown in markdown (the JSON
/// holds the whole bounded list).
const MARKDOWN_LIST_ROWS: usize = 20;
const MARKDOWN_SAMPLE_DIDS: usize = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    /// `firehose`, `collections` or `correctness`: which of the three objects below is set.
    pub mode: String,
    pub started_at: String,
    pub finished_at: String,
    /// The first relay given.
    pub reference: String,
    /// Every relay, as given, the reference first.
    pub relays: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firehose: Option<FirehoseReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<CollectionsReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correctness: Option<CorrectnessReport>,
}

/// One mode's result, before it is wrapped into a [`Report`].
pub enum ModeReport {
    Firehose(FirehoseReport),
    Collections(CollectionsReport),
    Correctness(CorrectnessReport),
}

impl Report {
    pub fn new(started_at: String, finished_at: String, relays: Vec<String>, body: ModeReport) -> Report {
        let relays: Vec<String> =
            relays.into_iter().map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
        let mut report = Report {
            schema_version: SCHEMA_VERSION,
            mode: String::new(),
            started_at,
            finished_at,
            reference: relays.first().cloned().unwrap_or_default(),
            relays,
            firehose: None,
            collections: None,
            correctness: None,
        };
        match body {
            ModeReport::Firehose(body) => {
                report.mode = "firehose".into();
                report.firehose = Some(body);
            }
            ModeReport::Collections(body) => {
                report.mode = "collections".into();
                report.collections = Some(body);
            }
            ModeReport::Correctness(body) => {
                report.mode = "correctness".into();
                report.correctness = Some(body);
            }
        }
        report
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirehoseReport {
    pub warmup_seconds: f64,
    pub window_seconds: f64,
    pub grace_seconds: f64,
    pub window_start: String,
    pub window_end: String,
    pub window_start_unix_micros: u64,
    pub window_end_unix_micros: u64,
    /// Unique (did, rev) commits some relay not flagged as replaying delivered in the window.
    pub union_commits: u64,
    /// Median in-window event count of the relays that connected.
    pub median_events: f64,
    pub relays: Vec<FirehoseRelay>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirehoseRelay {
    pub relay: String,
    /// `ok`, `closed` (the relay ended the stream early), `error` (a read failed),
    /// `unreachable` (never connected).
    pub status: String,
    pub error: Option<String>,
    /// Seconds after the start at which a `closed`/`error` relay's stream ended.
    pub ended_after_seconds: Option<f64>,
    /// In-window events by type: `#commit`, `#sync`, `#identity`, `#account`, `#info`,
    /// `error`, `other`.
    pub events: BTreeMap<String, u64>,
    pub events_total: u64,
    pub events_per_second: f64,
    pub unique_dids: u64,
    /// Unique (did, rev) commits delivered in the window (stale ones excluded).
    pub unique_commits: u64,
    /// Union commits this relay delivered within the window ± grace.
    pub covered_commits: u64,
    /// covered_commits ÷ union_commits; null when the union is empty.
    pub coverage: Option<f64>,
    /// In-window commits whose rev is older than the stale age before the window.
    pub stale_commits: u64,
    pub seq_regressions: u64,
    pub undecodable: u64,
    /// A memory cap was reached: the sets are incomplete.
    pub truncated: bool,
    /// Left out of the union; `flags` says why.
    pub replaying: bool,
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionsReport {
    /// The NSID source as given.
    pub nsid_source: String,
    pub nsids: u64,
    pub page_limit: u64,
    /// DIDs kept per NSID and relay for the comparison; above it only counts are reported.
    pub compare_max_dids: u64,
    pub relays: Vec<CollectionsRelay>,
    pub results: Vec<NsidResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionsRelay {
    pub relay: String,
    pub nsids_answered: u64,
    pub nsids_failed: u64,
    pub nsids_zero: u64,
    /// NSIDs this relay listed the most DIDs for (ties go to the earlier relay).
    pub nsids_led: u64,
    pub total_dids: u64,
    pub requests: u64,
    /// 429 answers (each honoured by pausing this relay for its Retry-After).
    pub throttled: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NsidResult {
    pub nsid: String,
    /// The relay listing the most DIDs; null when none answered.
    pub leader: Option<String>,
    /// One entry per relay, in the order given.
    pub counts: Vec<NsidCount>,
    /// Relays that answered with no DIDs.
    pub zero: Vec<String>,
    /// For each ordered pair of relays whose lists were compared, when non-empty: the DIDs
    /// `listed_by` lists and `relay` lacks.
    pub missing: Vec<MissingDids>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NsidCount {
    pub relay: String,
    /// null when the relay's answer failed (`error` says why).
    pub dids: Option<u64>,
    pub error: Option<String>,
    /// Whether this relay's list was kept for the missing-DID comparison.
    pub compared: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissingDids {
    /// The relay lacking the DIDs.
    pub relay: String,
    pub listed_by: String,
    pub count: u64,
    /// Up to `--missing-sample` of them, in DID order.
    pub sample: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrectnessReport {
    /// `listRepos`, `listReposByCollection:<nsid>` or `dids`.
    pub sample_source: String,
    pub sample_requested: u64,
    pub relays: Vec<CorrectnessRelay>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrectnessRelay {
    pub relay: String,
    /// Set when this relay could not be sampled at all (the others still are).
    pub error: Option<String>,
    pub sampled: u64,
    pub correct: u64,
    pub behind: u64,
    pub wrong: u64,
    /// The PDS could not be asked (identity or PDS unreachable): in no share.
    pub unverifiable: u64,
    /// Shares of the verifiable repos (correct + behind + wrong); null when there are none.
    pub correct_share: Option<f64>,
    pub behind_share: Option<f64>,
    pub wrong_share: Option<f64>,
    /// How far behind the behind repos are (rev timestamps), median and largest.
    pub behind_seconds_median: Option<f64>,
    pub behind_seconds_max: Option<f64>,
    /// Every repo that is not correct (bounded).
    pub details: Vec<RepoCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoCheck {
    pub did: String,
    /// `correct`, `behind`, `wrong` or `unverifiable`.
    pub verdict: String,
    pub reason: Option<String>,
    pub relay_rev: Option<String>,
    pub pds_rev: Option<String>,
    pub relay_cid: Option<String>,
    pub pds_cid: Option<String>,
    /// `active`, or the inactive status.
    pub relay_status: Option<String>,
    pub pds_status: Option<String>,
    pub behind_seconds: Option<f64>,
}

/// Pretty-printed JSON with a final newline.
pub fn json(report: &Report) -> String {
    let mut text = serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// The dated markdown report.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let date = report.started_at.get(..10).unwrap_or(&report.started_at);
    let _ = writeln!(out, "# Relay coverage: {}, {date}\n", report.mode);
    let _ = writeln!(
        out,
        "Run {} – {}. Reference: `{}` (listed first).\n",
        report.started_at, report.finished_at, report.reference
    );
    if let Some(firehose) = &report.firehose {
        firehose_markdown(&mut out, firehose, &report.reference);
    }
    if let Some(collections) = &report.collections {
        collections_markdown(&mut out, collections, &report.reference);
    }
    if let Some(correctness) = &report.correctness {
        correctness_markdown(&mut out, correctness, &report.reference);
    }
    out
}

fn name(relay: &str, reference: &str) -> String {
    if relay == reference {
        format!("`{relay}` (reference)")
    } else {
        format!("`{relay}`")
    }
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "–".to_string(), |s| format!("{:.1} %", s * 100.0))
}

fn firehose_markdown(out: &mut String, report: &FirehoseReport, reference: &str) {
    let _ = writeln!(
        out,
        "Window {:.0} s ({} – {}) after a {:.0} s warm-up; grace {:.0} s at both edges. \
         Commits delivered in the window by any relay not flagged as replaying (the union): **{}**.\n",
        report.window_seconds,
        report.window_start,
        report.window_end,
        report.warmup_seconds,
        report.grace_seconds,
        thousands(report.union_commits)
    );
    let _ = writeln!(
        out,
        "| relay | status | commit coverage | unique commits | events | events/s | #commit | #sync | #identity | #account | other | unique DIDs | flags |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in &report.relays {
        let count = |kind: &str| thousands(row.events.get(kind).copied().unwrap_or(0));
        let other: u64 =
            ["#info", "error", "other"].iter().map(|k| row.events.get(*k).copied().unwrap_or(0)).sum();
        let mut flags = row.flags.clone();
        if row.truncated {
            flags.push("truncated (memory cap)".into());
        }
        if let Some(error) = &row.error {
            flags.push(error.replace('|', "/"));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            name(&row.relay, reference),
            row.status,
            percent(row.coverage),
            thousands(row.unique_commits),
            thousands(row.events_total),
            row.events_per_second,
            count("#commit"),
            count("#sync"),
            count("#identity"),
            count("#account"),
            thousands(other),
            thousands(row.unique_dids),
            if flags.is_empty() { "–".to_string() } else { flags.join("; ") }
        );
    }
    out.push('\n');
}

fn collections_markdown(out: &mut String, report: &CollectionsReport, reference: &str) {
    let _ = writeln!(
        out,
        "{} NSIDs from `{}`; `listReposByCollection` paged with limit {}.\n",
        thousands(report.nsids),
        report.nsid_source,
        report.page_limit
    );
    let _ = writeln!(out, "## Relays\n");
    let _ = writeln!(out, "| relay | NSIDs answered | failed | zero | led | DIDs (sum) | requests | 429s |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for relay in &report.relays {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            name(&relay.relay, reference),
            thousands(relay.nsids_answered),
            thousands(relay.nsids_failed),
            thousands(relay.nsids_zero),
            thousands(relay.nsids_led),
            thousands(relay.total_dids),
            thousands(relay.requests),
            thousands(relay.throttled)
        );
    }
    let _ = writeln!(out, "\n## DIDs per NSID\n");
    let _ = write!(out, "| NSID |");
    for relay in &report.relays {
        let _ = write!(out, " {} |", name(&relay.relay, reference));
    }
    let _ = writeln!(out, " leader |");
    let _ = writeln!(out, "|---|{}---|", "---:|".repeat(report.relays.len()));
    for result in &report.results {
        let _ = write!(out, "| `{}` |", result.nsid);
        for count in &result.counts {
            let cell = match count.dids {
                None => "error".to_string(),
                Some(n) if Some(&count.relay) == result.leader.as_ref() && n > 0 => {
                    format!("**{}**", thousands(n))
                }
                Some(n) => thousands(n),
            };
            let _ = write!(out, " {cell} |");
        }
        let _ = writeln!(out, " {} |", result.leader.as_deref().map_or("–".into(), |l| format!("`{l}`")));
    }
    let missing: Vec<(&NsidResult, &MissingDids)> =
        report.results.iter().flat_map(|r| r.missing.iter().map(move |m| (r, m))).collect();
    if !missing.is_empty() {
        let _ = writeln!(out, "\n## DIDs one relay lists and another lacks\n");
        let _ = writeln!(out, "| NSID | lacking | listed by | missing | sample |");
        let _ = writeln!(out, "|---|---|---|---:|---|");
        for (result, m) in missing {
            let sample: Vec<String> =
                m.sample.iter().take(MARKDOWN_SAMPLE_DIDS).map(|d| format!("`{d}`")).collect();
            let _ = writeln!(
                out,
                "| `{}` | `{}` | `{}` | {} | {} |",
                result.nsid,
                m.relay,
                m.listed_by,
                thousands(m.count),
                sample.join(", ")
            );
        }
    }
    out.push('\n');
}

fn correctness_markdown(out: &mut String, report: &CorrectnessReport, reference: &str) {
    let _ = writeln!(
        out,
        "{} repos requested per relay, sampled from `{}`; each compared with its PDS's \
         `getLatestCommit` and `getRepoStatus`.\n",
        report.sample_requested, report.sample_source
    );
    let _ = writeln!(
        out,
        "| relay | sampled | correct | behind | wrong | unverifiable | median behind | max behind |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let seconds = |s: Option<f64>| s.map_or("–".to_string(), |s| format!("{s:.1} s"));
    for relay in &report.relays {
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}) | {} ({}) | {} ({}) | {} | {} | {} |",
            name(&relay.relay, reference),
            relay.sampled,
            relay.correct,
            percent(relay.correct_share),
            relay.behind,
            percent(relay.behind_share),
            relay.wrong,
            percent(relay.wrong_share),
            relay.unverifiable,
            seconds(relay.behind_seconds_median),
            seconds(relay.behind_seconds_max)
        );
    }
    let errors: Vec<&CorrectnessRelay> = report.relays.iter().filter(|r| r.error.is_some()).collect();
    for relay in errors {
        let _ = writeln!(
            out,
            "\n`{}` could not be sampled: {}",
            relay.relay,
            relay.error.as_deref().unwrap_or("")
        );
    }
    let details: Vec<(&str, &RepoCheck)> =
        report.relays.iter().flat_map(|r| r.details.iter().map(move |d| (r.relay.as_str(), d))).collect();
    if !details.is_empty() {
        let _ = writeln!(out, "\n## Repos that are not correct\n");
        let _ = writeln!(out, "| relay | DID | verdict | relay rev | PDS rev | why |");
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for (relay, check) in details.iter().take(MARKDOWN_LIST_ROWS) {
            let _ = writeln!(
                out,
                "| `{relay}` | `{}` | {} | {} | {} | {} |",
                check.did,
                check.verdict,
                check.relay_rev.as_deref().unwrap_or("–"),
                check.pds_rev.as_deref().unwrap_or("–"),
                check.reason.as_deref().unwrap_or("").replace('|', "/")
            );
        }
        if details.len() > MARKDOWN_LIST_ROWS {
            let _ = writeln!(out, "\n({} more in the JSON report.)", details.len() - MARKDOWN_LIST_ROWS);
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn json_round_trips_and_names_its_mode() {
        let body =
            CorrectnessReport { sample_source: "listRepos".into(), sample_requested: 3, relays: vec![] };
        let report = Report::new(
            "2026-11-27T10:00:00Z".into(),
            "2026-11-27T10:01:00Z".into(),
            vec!["a".into()],
            ModeReport::Correctness(body),
        );
        let text = json(&report);
        let back: Report = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, report);
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["mode"], "correctness");
        assert!(value.get("firehose").is_none());
        assert!(markdown(&report).starts_with("# Relay coverage: correctness, 2026-11-27"));
    }
}
