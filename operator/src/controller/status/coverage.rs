//! `status.coverage` from the coverage CronJob's newest finished Job: each container's
//! termination message is the `relay coverage --summary-file` summary of its mode
//! (mirrored here as [`Summary`], the shape in docs/coverage.md), merged per relay into
//! figures, this relay's firehose share set against the best reference's, and the run
//! appended to a short history. Pure: the read stage lists the Jobs and pods.

use crate::crd::coverage::{CoverageFigures, CoverageHistoryEntry, CoverageSpec, CoverageStatus};
use crate::cron::Schedule;
use crate::runtime::summary::percent;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;

/// One mode's summary, as `relay coverage --summary-file` writes it (schema version 1).
/// Unknown fields are ignored, so a newer relay's additions do not break reading.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub v: u32,
    pub mode: String,
    #[serde(default)]
    pub finished_at: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub relays: Vec<RelaySummary>,
    #[serde(default)]
    pub omitted: u32,
}

/// One relay's integers in a summary (each mode fills its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelaySummary {
    pub relay: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub coverage_bp: Option<i64>,
    #[serde(default)]
    pub unique_dids: Option<i64>,
    #[serde(default)]
    pub collections_complete: Option<i64>,
    #[serde(default)]
    pub collections_behind: Option<i64>,
    #[serde(default)]
    pub collections_zero: Option<i64>,
    #[serde(default)]
    pub correct_bp: Option<i64>,
    #[serde(default)]
    pub sampled: Option<i64>,
}

/// A finished run: when it ended, whether the Job failed, and the summaries it left.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub job: String,
    pub finished: Timestamp,
    /// Why the run failed (the Job's Failed condition, a container without a summary,
    /// or a summary carrying `error`).
    pub errors: Vec<String>,
    pub summaries: Vec<Summary>,
}

/// The newest Job that finished (Complete or Failed), with its finish time.
pub fn newest_finished(jobs: &[Job]) -> Option<(&Job, Timestamp)> {
    jobs.iter().filter_map(|job| finished_at(job).map(|at| (job, at))).max_by_key(|(_, at)| *at)
}

/// When a Job finished, if it did: the time its Complete or Failed condition turned True.
fn finished_at(job: &Job) -> Option<Timestamp> {
    let status = job.status.as_ref()?;
    let terminal = status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    status
        .completion_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| terminal.last_transition_time.as_ref().map(|t| t.0))
}

fn job_failure(job: &Job) -> Option<String> {
    let failed = job
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")?;
    let reason = failed.reason.clone().unwrap_or_else(|| "Failed".into());
    Some(
        format!(
            "job {}: {reason} {}",
            job.metadata.name.clone().unwrap_or_default(),
            failed.message.clone().unwrap_or_default()
        )
        .trim_end()
        .to_string(),
    )
}

/// The run of `job` from its pods' termination messages.
pub fn run_of(job: &Job, finished: Timestamp, pods: &[Pod]) -> Run {
    let mut errors: Vec<String> = job_failure(job).into_iter().collect();
    let mut summaries = Vec::new();
    // The newest pod of the Job (backoffLimit 0 makes it the only one).
    let pod = pods.iter().max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let statuses =
        pod.and_then(|p| p.status.as_ref()).and_then(|s| s.container_statuses.clone()).unwrap_or_default();
    if pod.is_none() {
        errors.push("the run's pod is gone; no summaries to read".into());
    }
    for status in statuses {
        let terminated = status.state.as_ref().and_then(|s| s.terminated.as_ref());
        let message = terminated.and_then(|t| t.message.as_deref()).unwrap_or_default();
        match serde_json::from_str::<Summary>(message.trim()) {
            Ok(summary) => {
                if let Some(error) = &summary.error {
                    errors.push(format!("{}: {error}", summary.mode));
                }
                summaries.push(summary);
            }
            Err(_) => {
                let code = terminated.map(|t| t.exit_code.to_string()).unwrap_or_else(|| "none".into());
                errors.push(format!(
                    "{}: no summary in the termination message (exit code {code})",
                    status.name
                ));
            }
        }
    }
    summaries.sort_by(|a, b| a.mode.cmp(&b.mode));
    errors.sort();
    Run { job: job.metadata.name.clone().unwrap_or_default(), finished, errors, summaries }
}

/// The figures of one relay across the modes' summaries. Summaries list the relays in the
/// order of the `--relay` flags (this relay first), so a relay is found by its position:
/// the URL a summary names is the one the process was given, which need not be the one
/// the operator wrote (a proxy or a DNS rewrite may stand between).
fn figures(relay: &str, position: usize, summaries: &[Summary]) -> CoverageFigures {
    let mut figures = CoverageFigures { relay: relay.to_string(), ..CoverageFigures::default() };
    let mut errors = Vec::new();
    for summary in summaries {
        // Relays left out for size are the last ones: positions of the others hold.
        let Some(found) = summary.relays.get(position) else { continue };
        if let Some(error) = &found.error {
            errors.push(format!("{}: {error}", summary.mode));
        }
        match summary.mode.as_str() {
            "firehose" => {
                figures.firehose_basis_points = found.coverage_bp;
                figures.unique_dids = found.unique_dids;
            }
            "collections" => {
                figures.collections_complete = found.collections_complete;
                figures.collections_behind = found.collections_behind;
                figures.collections_zero = found.collections_zero;
            }
            "correctness" => figures.correct_basis_points = found.correct_bp,
            _ => {}
        }
    }
    figures.error = (!errors.is_empty()).then(|| errors.join("; "));
    figures
}

/// This relay's firehose share relative to the best reference's (10000 when it did at
/// least as well), or none when either side has no figure.
pub fn relative_to_best(own: &CoverageFigures, references: &[CoverageFigures]) -> Option<i64> {
    let mine = own.firehose_basis_points?;
    let best = references.iter().filter_map(|r| r.firehose_basis_points).max()?;
    if best <= 0 {
        return None;
    }
    Some((mine.saturating_mul(10_000) / best).clamp(0, 10_000))
}

/// `status.coverage` for a run (or none yet), keeping the history of earlier runs.
pub fn coverage_status(
    spec: &CoverageSpec,
    own_url: &str,
    references: &[String],
    run: Option<&Run>,
    existing: Option<&CoverageStatus>,
    next_run: Option<Timestamp>,
) -> CoverageStatus {
    let mut history = existing.map(|e| e.history.clone()).unwrap_or_default();
    let Some(run) = run else {
        return CoverageStatus { next_run_time: next_run.map(Time), history, ..CoverageStatus::default() };
    };
    let own = figures(own_url, 0, &run.summaries);
    let others: Vec<CoverageFigures> =
        references.iter().enumerate().map(|(i, r)| figures(r, i + 1, &run.summaries)).collect();
    let best = relative_to_best(&own, &others);
    if history.last().is_none_or(|last| last.time.0 < run.finished) {
        history.push(CoverageHistoryEntry { time: Time(run.finished), basis_points: best });
    }
    let limit = usize::try_from(spec.history_limit.max(1)).unwrap_or(1);
    if history.len() > limit {
        history.drain(..history.len() - limit);
    }
    CoverageStatus {
        last_run_time: Some(Time(run.finished)),
        next_run_time: next_run.map(Time),
        job: Some(run.job.clone()),
        error: (!run.errors.is_empty()).then(|| super::truncate(&run.errors.join("; "), 1000)),
        best_reference_basis_points: best,
        best_reference: best.map(percent),
        own: Some(own),
        references: others,
        history,
    }
}

/// When a run is overdue: two schedule periods after the first run expected after
/// `since` (the last finished run, or the CronJob's creation). None while suspended or
/// for a schedule that never fires.
pub fn overdue_at(spec: &CoverageSpec, since: Timestamp) -> Option<Timestamp> {
    if spec.suspend {
        return None;
    }
    let schedule = Schedule::parse(&spec.schedule).ok()?;
    let first = schedule.next_after(since)?;
    let second = schedule.next_after(first)?;
    schedule.next_after(second)
}

/// What the reconcile found about the coverage comparisons: the status to show and what
/// `CoverageOK` judges.
#[derive(Debug, Clone, PartialEq)]
pub struct CoverageObserved {
    pub status: CoverageStatus,
    pub run_error: Option<String>,
    pub overdue: Option<String>,
    /// When to look again even if nothing changes (the overdue deadline).
    pub recheck_at: Option<Timestamp>,
}

/// Everything the coverage part of status is computed from.
pub struct CoverageInputs<'a> {
    pub spec: &'a CoverageSpec,
    pub own_url: &'a str,
    pub references: &'a [String],
    /// The coverage CronJob's creation and last schedule times, if it exists.
    pub cronjob_created: Option<Timestamp>,
    pub last_schedule: Option<Timestamp>,
    pub run: Option<&'a Run>,
    pub existing: Option<&'a CoverageStatus>,
    pub now: Timestamp,
}

pub fn observe(inputs: &CoverageInputs) -> CoverageObserved {
    let schedule = Schedule::parse(&inputs.spec.schedule).ok();
    // The next run after the last scheduled one (or the CronJob's creation): stable between
    // runs, so status is not rewritten as time passes.
    let next_run = schedule
        .zip(inputs.last_schedule.or(inputs.cronjob_created))
        .and_then(|(schedule, since)| schedule.next_after(since));
    let status = coverage_status(
        inputs.spec,
        inputs.own_url,
        inputs.references,
        inputs.run,
        inputs.existing,
        next_run,
    );
    let since = inputs.run.map(|r| r.finished).or(inputs.cronjob_created);
    let deadline = since.and_then(|since| overdue_at(inputs.spec, since));
    let overdue = deadline.filter(|d| inputs.now >= *d).map(|_| match inputs.run {
        Some(run) => format!("no run finished since {} (schedule {:?})", run.finished, inputs.spec.schedule),
        None => {
            format!("no run finished since the CronJob was created (schedule {:?})", inputs.spec.schedule)
        }
    });
    CoverageObserved {
        status,
        run_error: inputs
            .run
            .filter(|r| !r.errors.is_empty())
            .map(|r| super::truncate(&r.errors.join("; "), 1000)),
        overdue,
        recheck_at: deadline.filter(|d| inputs.now < *d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};
    use serde_json::json;

    /// The example in docs/coverage.md ("Summary for machines"), byte for byte.
    const DOCS_SUMMARY: &str = r#"{"v":1,"mode":"firehose","finishedAt":"2026-11-30T23:40:02Z","relays":[
  {"relay":"http://relay-a:2470","coverageBp":9981,"uniqueDids":5120},
  {"relay":"wss://bsky.network","coverageBp":10000,"uniqueDids":5131}]}"#;

    fn spec() -> CoverageSpec {
        serde_json::from_value(json!({"references": [{"url": "wss://bsky.network"}]})).expect("spec")
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    #[test]
    fn the_documented_summary_reads() {
        let summary: Summary = serde_json::from_str(DOCS_SUMMARY).expect("docs example");
        assert_eq!((summary.v, summary.mode.as_str()), (1, "firehose"));
        assert_eq!(summary.relays[0].coverage_bp, Some(9981));
        assert_eq!(summary.relays[1].unique_dids, Some(5131));
        let failed: Summary = serde_json::from_str(
            r#"{"v":1,"mode":"collections","finishedAt":"x","error":"no relay could be reached: a"}"#,
        )
        .expect("failed run");
        assert!(failed.relays.is_empty() && failed.error.is_some());
    }

    fn job(name: &str, condition: &str, at_time: &str) -> Job {
        Job {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: condition.into(),
                    status: "True".into(),
                    reason: Some("BackoffLimitExceeded".into()),
                    last_transition_time: Some(Time(at(at_time))),
                    ..JobCondition::default()
                }]),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    fn pod(messages: &[(&str, Option<&str>, i32)]) -> Pod {
        let statuses = messages
            .iter()
            .map(|(name, message, code)| ContainerStatus {
                name: name.to_string(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: *code,
                        message: message.map(String::from),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            })
            .collect();
        Pod {
            status: Some(PodStatus { container_statuses: Some(statuses), ..PodStatus::default() }),
            ..Pod::default()
        }
    }

    #[test]
    fn the_newest_finished_job_counts() {
        let mut running = job("c", "Complete", "2026-12-01T10:00:00Z");
        running.status = Some(JobStatus::default());
        let jobs = [
            job("a", "Complete", "2026-12-01T08:00:00Z"),
            job("b", "Failed", "2026-12-01T09:00:00Z"),
            running,
        ];
        let (newest, finished) = newest_finished(&jobs).expect("a finished job");
        assert_eq!((newest.metadata.name.as_deref(), finished), (Some("b"), at("2026-12-01T09:00:00Z")));
        assert!(newest_finished(&[]).is_none());
    }

    #[test]
    fn a_run_merges_the_three_modes_per_relay() {
        let own = "http://relay-a.ns.svc:2470";
        let firehose = r#"{"v":1,"mode":"firehose","finishedAt":"t","relays":[
            {"relay":"http://relay-a.ns.svc:2470","coverageBp":4500,"uniqueDids":10},
            {"relay":"wss://bsky.network","coverageBp":9000,"uniqueDids":20}]}"#;
        let collections = r#"{"v":1,"mode":"collections","finishedAt":"t","relays":[
            {"relay":"http://relay-a.ns.svc:2470","collectionsComplete":3,"collectionsBehind":1,"collectionsZero":0},
            {"relay":"wss://bsky.network","error":"unreachable"}]}"#;
        let correctness = r#"{"v":1,"mode":"correctness","finishedAt":"t","relays":[
            {"relay":"http://relay-a.ns.svc:2470","correctBp":10000,"sampled":10}]}"#;
        let done = job("r-1", "Complete", "2026-12-01T10:00:00Z");
        let run = run_of(
            &done,
            at("2026-12-01T10:00:00Z"),
            &[pod(&[
                ("firehose", Some(firehose), 0),
                ("collections", Some(collections), 0),
                ("correctness", Some(correctness), 0),
            ])],
        );
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        let references = vec!["wss://bsky.network".to_string()];
        let status = coverage_status(&spec(), own, &references, Some(&run), None, None);
        assert_eq!(status.best_reference_basis_points, Some(5000), "4500 of the best reference's 9000");
        assert_eq!(status.best_reference.as_deref(), Some("50.00%"));
        let mine = status.own.clone().expect("own figures");
        assert_eq!(
            (
                mine.firehose_basis_points,
                mine.unique_dids,
                mine.collections_complete,
                mine.correct_basis_points
            ),
            (Some(4500), Some(10), Some(3), Some(10_000))
        );
        assert_eq!(status.references[0].error.as_deref(), Some("collections: unreachable"));
        assert_eq!(status.history.len(), 1);
        // The same run seen again adds nothing; history keeps at most historyLimit runs.
        let again = coverage_status(&spec(), own, &references, Some(&run), Some(&status), None);
        assert_eq!(again, status);
        let mut older = status.clone();
        older.history = (0..5)
            .map(|h| CoverageHistoryEntry {
                time: Time(at(&format!("2026-12-01T0{h}:00:00Z"))),
                basis_points: Some(h),
            })
            .collect();
        let bounded = coverage_status(&spec(), own, &references, Some(&run), Some(&older), None);
        assert_eq!(bounded.history.len(), 5);
        assert_eq!(bounded.history[0].basis_points, Some(1), "the oldest run dropped");
        assert_eq!(bounded.history[4].basis_points, Some(5000));
    }

    #[test]
    fn failures_are_reported() {
        let failed = job("r-2", "Failed", "2026-12-01T10:00:00Z");
        let error = r#"{"v":1,"mode":"firehose","finishedAt":"t","error":"no relay could be reached"}"#;
        let run = run_of(
            &failed,
            at("2026-12-01T10:00:00Z"),
            &[pod(&[("firehose", Some(error), 2), ("collections", None, 137)])],
        );
        assert_eq!(
            run.errors,
            [
                "collections: no summary in the termination message (exit code 137)",
                "firehose: no relay could be reached",
                "job r-2: BackoffLimitExceeded",
            ]
        );
        let gone = run_of(&failed, at("2026-12-01T10:00:00Z"), &[]);
        assert!(gone.errors.iter().any(|e| e.contains("pod is gone")));
    }

    #[test]
    fn relative_coverage() {
        let fig =
            |bp: Option<i64>| CoverageFigures { firehose_basis_points: bp, ..CoverageFigures::default() };
        assert_eq!(relative_to_best(&fig(Some(9000)), &[fig(Some(9000)), fig(Some(6000))]), Some(10_000));
        assert_eq!(relative_to_best(&fig(Some(9500)), &[fig(Some(9000))]), Some(10_000), "capped");
        assert_eq!(relative_to_best(&fig(Some(7200)), &[fig(Some(9000)), fig(None)]), Some(8000));
        assert_eq!(relative_to_best(&fig(None), &[fig(Some(9000))]), None);
        assert_eq!(relative_to_best(&fig(Some(1)), &[fig(Some(0))]), None);
    }

    #[test]
    fn observe_judges_staleness_and_failures() {
        let mut minutely = spec();
        minutely.schedule = "* * * * *".into();
        let references = vec!["wss://bsky.network".to_string()];
        fn inputs<'a>(
            spec: &'a CoverageSpec,
            references: &'a [String],
            now: &str,
            run: Option<&'a Run>,
        ) -> CoverageInputs<'a> {
            CoverageInputs {
                spec,
                own_url: "http://r.ns.svc:2470",
                references,
                cronjob_created: Some(at("2026-12-01T10:00:10Z")),
                last_schedule: Some(at("2026-12-01T10:05:00Z")),
                run,
                existing: None,
                now: at(now),
            }
        }
        let fresh = observe(&inputs(&minutely, &references, "2026-12-01T10:02:00Z", None));
        assert_eq!(fresh.overdue, None);
        assert_eq!(fresh.recheck_at, Some(at("2026-12-01T10:03:00Z")));
        assert_eq!(fresh.status.next_run_time, Some(Time(at("2026-12-01T10:06:00Z"))));
        let stale = observe(&inputs(&minutely, &references, "2026-12-01T10:03:00Z", None));
        assert!(stale.overdue.as_deref().is_some_and(|m| m.contains("since the CronJob was created")));
        let failed = Run {
            job: "r-1".into(),
            finished: at("2026-12-01T10:05:40Z"),
            errors: vec!["job r-1: DeadlineExceeded".into()],
            summaries: vec![],
        };
        let after_failure = observe(&inputs(&minutely, &references, "2026-12-01T10:06:00Z", Some(&failed)));
        assert_eq!(after_failure.overdue, None);
        assert_eq!(after_failure.run_error.as_deref(), Some("job r-1: DeadlineExceeded"));
        assert_eq!(after_failure.status.last_run_time, Some(Time(at("2026-12-01T10:05:40Z"))));
    }

    #[test]
    fn overdue_two_periods_after_the_first_expected_run() {
        let hourly = spec();
        assert_eq!(overdue_at(&hourly, at("2026-12-01T10:20:00Z")), Some(at("2026-12-01T13:17:00Z")));
        let mut every_minute = spec();
        every_minute.schedule = "* * * * *".into();
        assert_eq!(overdue_at(&every_minute, at("2026-12-01T10:00:30Z")), Some(at("2026-12-01T10:03:00Z")));
        every_minute.suspend = true;
        assert_eq!(overdue_at(&every_minute, at("2026-12-01T10:00:30Z")), None);
    }
}
