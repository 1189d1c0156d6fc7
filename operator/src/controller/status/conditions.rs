//! The conditions of a Relay, one small builder per subsystem, merged in one place
//! ([`assemble`]). Each builder reads only what it needs from [`Observed`] and returns
//! the condition it owns; `Ready` and `Reconciling` summarise the others. A new subsystem
//! (coverage, nodes) adds a field to `Observed`, a builder here with its table test, and
//! one line in `assemble`.

use super::workload::Workload;
use crate::crd::conditions::{self as cond, Desired, Status};

/// A problem only the user can fix, as reported by the reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall<'a> {
    pub reason: &'static str,
    pub message: &'a str,
}

/// Everything the condition builders look at, taken once from a reconcile's outcome.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub workload: &'a Workload,
    /// `spec.operation.stopped`.
    pub stopped: bool,
    /// `spec.operation.reconciliationPaused`.
    pub paused: bool,
    pub stall: Option<Stall<'a>>,
    /// The coverage comparisons' newest result; none without `spec.coverage`.
    pub coverage: Option<CoverageCheck<'a>>,
}

/// What `CoverageOK` judges: the thresholds and the newest comparison run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoverageCheck<'a> {
    pub degraded_below: i64,
    pub critical_below: i64,
    /// This relay's firehose coverage relative to the best reference, in basis points.
    pub best: Option<i64>,
    /// Whether any run has finished.
    pub ran: bool,
    /// Why the newest run failed (the Job failed, or a summary carries `error`).
    pub run_error: Option<&'a str>,
    /// No run finished within two schedule periods after the first expected one.
    pub overdue: Option<&'a str>,
}

/// `WorkloadAvailable`: the StatefulSet has its ready, updated pod.
pub fn workload_available(work: &Workload) -> Desired {
    Desired::new(
        cond::WORKLOAD_AVAILABLE,
        Status::from_bool(work.available),
        work.reason,
        work.message.clone(),
    )
}

/// `Stalled` (kstatus): true only while a change by the user is needed.
pub fn stalled(stall: Option<Stall>, paused: bool) -> Desired {
    match (stall, paused) {
        (Some(stall), _) => Desired::new(cond::STALLED, Status::True, stall.reason, stall.message),
        (None, true) => Desired::new(cond::STALLED, Status::False, "Paused", ""),
        (None, false) => Desired::new(cond::STALLED, Status::False, "ReconcileSucceeded", ""),
    }
}

/// `ReconciliationPaused`: present only while paused (merge drops it afterwards).
pub fn reconciliation_paused(paused: bool) -> Option<Desired> {
    paused.then(|| {
        Desired::new(
            cond::RECONCILIATION_PAUSED,
            Status::True,
            "Paused",
            "spec.operation.reconciliationPaused is true: the operator changes nothing",
        )
    })
}

/// `Reconciling` (kstatus): true while the operator is converging. A stalled or paused
/// Relay is not converging (nothing will happen without the user), nor is a stopped one.
pub fn reconciling(observed: &Observed) -> Desired {
    let work = observed.workload;
    if let Some(stall) = observed.stall {
        return Desired::new(
            cond::RECONCILING,
            Status::False,
            stall.reason,
            "waiting for a change to the Relay",
        );
    }
    if observed.paused {
        return Desired::new(cond::RECONCILING, Status::False, "Paused", "reconciliation is paused");
    }
    if !work.available && !observed.stopped {
        return Desired::new(cond::RECONCILING, Status::True, work.reason, work.message.clone());
    }
    Desired::new(cond::RECONCILING, Status::False, "ReconcileSucceeded", "")
}

/// `Ready`: the summary `kubectl wait` and health checks read. A stall explains itself;
/// otherwise the workload's state decides.
pub fn ready(observed: &Observed) -> Desired {
    let work = observed.workload;
    if let Some(stall) = observed.stall {
        return Desired::new(cond::READY, Status::False, stall.reason, stall.message);
    }
    if !work.available {
        return Desired::new(cond::READY, Status::False, work.reason, work.message.clone());
    }
    // While paused the operator vouches for nothing beyond the workload itself.
    let message =
        if observed.paused { work.message.clone() } else { format!("relay serving; {}", work.message) };
    Desired::new(cond::READY, Status::True, "RelayReady", message)
}

/// `CoverageOK`: present only with `spec.coverage`. A run that is overdue or failed says
/// so before any figure does (an old figure would claim more than is known); then the
/// relay's firehose coverage relative to the best reference against the thresholds.
/// `Ready` does not read it: a relay serving 80 % of the network still serves.
pub fn coverage_ok(check: Option<&CoverageCheck>) -> Option<Desired> {
    let check = check?;
    let desired =
        |status, reason, message: String| Some(Desired::new(cond::COVERAGE_OK, status, reason, message));
    if let Some(overdue) = check.overdue {
        return desired(Status::False, "NoRecentRun", overdue.to_string());
    }
    if let Some(error) = check.run_error {
        return desired(Status::False, "RunFailed", error.to_string());
    }
    let Some(best) = check.best else {
        return if check.ran {
            desired(
                Status::False,
                "RunFailed",
                "the newest run has no firehose figure for this relay and a reference".into(),
            )
        } else {
            desired(Status::Unknown, "AwaitingFirstRun", "no coverage run has finished yet".into())
        };
    };
    let shown = crate::runtime::summary::percent(best);
    if best < check.critical_below {
        let limit = crate::runtime::summary::percent(check.critical_below);
        return desired(
            Status::False,
            "Critical",
            format!("firehose coverage {shown} of the best reference's, below {limit}"),
        );
    }
    if best < check.degraded_below {
        let limit = crate::runtime::summary::percent(check.degraded_below);
        return desired(
            Status::False,
            "Degraded",
            format!("firehose coverage {shown} of the best reference's, below {limit}"),
        );
    }
    desired(Status::True, "CoverageOK", format!("firehose coverage {shown} of the best reference's"))
}

/// Every condition the operator owns for this observation, in the order they are written.
pub fn assemble(observed: &Observed) -> Vec<Desired> {
    let mut conditions = vec![
        ready(observed),
        reconciling(observed),
        stalled(observed.stall, observed.paused),
        workload_available(observed.workload),
    ];
    conditions.extend(reconciliation_paused(observed.paused));
    conditions.extend(coverage_ok(observed.coverage.as_ref()));
    conditions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(available: bool, reason: &'static str) -> Workload {
        Workload { available, ready_replicas: i32::from(available), reason, message: format!("{reason} msg") }
    }

    const STALL: Stall = Stall { reason: "SecretNotFound", message: "no pg-url" };

    /// (case, status, reason, message) of one built condition.
    fn check(case: &str, got: &Desired, status: Status, reason: &str, message: &str) {
        assert_eq!((got.status, got.reason, got.message.as_str()), (status, reason, message), "{case}");
    }

    #[test]
    fn workload_available_follows_the_statefulset() {
        for (case, input, status) in [
            ("ready", work(true, "StatefulSetReady"), Status::True),
            ("rolling", work(false, "RollingOut"), Status::False),
            ("missing", work(false, "StatefulSetMissing"), Status::False),
        ] {
            let got = workload_available(&input);
            assert_eq!(got.type_, cond::WORKLOAD_AVAILABLE);
            check(case, &got, status, input.reason, &input.message);
        }
    }

    /// (case, stall, paused) → (status, reason, message)
    type StallRow = (&'static str, Option<Stall<'static>>, bool, Status, &'static str, &'static str);

    #[test]
    fn stalled_only_with_a_stall() {
        let cases: [StallRow; 4] = [
            ("stall", Some(STALL), false, Status::True, "SecretNotFound", "no pg-url"),
            ("stall wins over pause", Some(STALL), true, Status::True, "SecretNotFound", "no pg-url"),
            ("paused", None, true, Status::False, "Paused", ""),
            ("fine", None, false, Status::False, "ReconcileSucceeded", ""),
        ];
        for (case, stall, paused, status, reason, message) in cases {
            check(case, &stalled(stall, paused), status, reason, message);
        }
    }

    #[test]
    fn paused_condition_only_while_paused() {
        assert!(reconciliation_paused(false).is_none());
        let got = reconciliation_paused(true).expect("present while paused");
        assert_eq!(
            (got.type_, got.status, got.reason),
            (cond::RECONCILIATION_PAUSED, Status::True, "Paused")
        );
    }

    /// (case, workload, stopped, paused, stall) → (status, reason, message)
    type Row =
        (&'static str, Workload, bool, bool, Option<Stall<'static>>, Status, &'static str, &'static str);

    fn observed(row: &Row) -> Observed<'_> {
        Observed { workload: &row.1, stopped: row.2, paused: row.3, stall: row.4, coverage: None }
    }

    #[test]
    fn reconciling_while_converging_only() {
        let rows: [Row; 6] = [
            (
                "rolling out",
                work(false, "RollingOut"),
                false,
                false,
                None,
                Status::True,
                "RollingOut",
                "RollingOut msg",
            ),
            (
                "ready",
                work(true, "StatefulSetReady"),
                false,
                false,
                None,
                Status::False,
                "ReconcileSucceeded",
                "",
            ),
            ("stopped", work(false, "Stopped"), true, false, None, Status::False, "ReconcileSucceeded", ""),
            (
                "paused",
                work(false, "PodsNotReady"),
                false,
                true,
                None,
                Status::False,
                "Paused",
                "reconciliation is paused",
            ),
            (
                "stalled",
                work(false, "StatefulSetMissing"),
                false,
                false,
                Some(STALL),
                Status::False,
                "SecretNotFound",
                "waiting for a change to the Relay",
            ),
            (
                "stalled while paused",
                work(true, "StatefulSetReady"),
                false,
                true,
                Some(STALL),
                Status::False,
                "SecretNotFound",
                "waiting for a change to the Relay",
            ),
        ];
        for row in &rows {
            let got = reconciling(&observed(row));
            assert_eq!(got.type_, cond::RECONCILING);
            check(row.0, &got, row.5, row.6, row.7);
        }
    }

    #[test]
    fn ready_summarises_stall_pause_and_workload() {
        let rows: [Row; 6] = [
            (
                "serving",
                work(true, "StatefulSetReady"),
                false,
                false,
                None,
                Status::True,
                "RelayReady",
                "relay serving; StatefulSetReady msg",
            ),
            (
                "not ready",
                work(false, "PodsNotReady"),
                false,
                false,
                None,
                Status::False,
                "PodsNotReady",
                "PodsNotReady msg",
            ),
            ("stopped", work(false, "Stopped"), true, false, None, Status::False, "Stopped", "Stopped msg"),
            (
                "paused, available",
                work(true, "StatefulSetReady"),
                false,
                true,
                None,
                Status::True,
                "RelayReady",
                "StatefulSetReady msg",
            ),
            (
                "paused, not ready",
                work(false, "RollingOut"),
                false,
                true,
                None,
                Status::False,
                "RollingOut",
                "RollingOut msg",
            ),
            (
                "stalled",
                work(true, "StatefulSetReady"),
                false,
                false,
                Some(STALL),
                Status::False,
                "SecretNotFound",
                "no pg-url",
            ),
        ];
        for row in &rows {
            let got = ready(&observed(row));
            assert_eq!(got.type_, cond::READY);
            check(row.0, &got, row.5, row.6, row.7);
        }
    }

    #[test]
    fn assemble_writes_every_owned_type_in_order() {
        let available = work(true, "StatefulSetReady");
        let running =
            Observed { workload: &available, stopped: false, paused: false, stall: None, coverage: None };
        let types: Vec<&str> = assemble(&running).iter().map(|c| c.type_).collect();
        assert_eq!(types, [cond::READY, cond::RECONCILING, cond::STALLED, cond::WORKLOAD_AVAILABLE]);
        let check = CoverageCheck {
            degraded_below: 9000,
            critical_below: 7000,
            best: None,
            ran: false,
            run_error: None,
            overdue: None,
        };
        let paused = Observed { paused: true, coverage: Some(check), ..running };
        let types: Vec<&str> = assemble(&paused).iter().map(|c| c.type_).collect();
        // NodeProvisioned is the node subsystem's (status::node::apply), not assembled here.
        let assembled: Vec<&str> = cond::OWNED.into_iter().filter(|t| *t != cond::NODE_PROVISIONED).collect();
        assert_eq!(types, assembled);
    }

    #[test]
    fn coverage_ok_by_run_and_thresholds() {
        let base = CoverageCheck {
            degraded_below: 9000,
            critical_below: 7000,
            best: Some(9500),
            ran: true,
            run_error: None,
            overdue: None,
        };
        let rows: [(&str, CoverageCheck, Status, &str, &str); 9] = [
            ("healthy", base, Status::True, "CoverageOK", "firehose coverage 95.00% of the best reference's"),
            (
                "at the degraded line",
                CoverageCheck { best: Some(9000), ..base },
                Status::True,
                "CoverageOK",
                "firehose coverage 90.00% of the best reference's",
            ),
            (
                "degraded",
                CoverageCheck { best: Some(8999), ..base },
                Status::False,
                "Degraded",
                "firehose coverage 89.99% of the best reference's, below 90.00%",
            ),
            (
                "critical",
                CoverageCheck { best: Some(5000), ..base },
                Status::False,
                "Critical",
                "firehose coverage 50.00% of the best reference's, below 70.00%",
            ),
            (
                "failed run",
                CoverageCheck { run_error: Some("job x: BackoffLimitExceeded"), ..base },
                Status::False,
                "RunFailed",
                "job x: BackoffLimitExceeded",
            ),
            (
                "overdue wins",
                CoverageCheck { overdue: Some("no run since 10:00"), run_error: Some("x"), ..base },
                Status::False,
                "NoRecentRun",
                "no run since 10:00",
            ),
            (
                "no figure",
                CoverageCheck { best: None, ..base },
                Status::False,
                "RunFailed",
                "the newest run has no firehose figure for this relay and a reference",
            ),
            (
                "first run pending",
                CoverageCheck { best: None, ran: false, ..base },
                Status::Unknown,
                "AwaitingFirstRun",
                "no coverage run has finished yet",
            ),
            (
                "critical equals degraded",
                CoverageCheck { best: Some(8000), critical_below: 9000, ..base },
                Status::False,
                "Critical",
                "firehose coverage 80.00% of the best reference's, below 90.00%",
            ),
        ];
        for (case, input, status, reason, message) in rows {
            let got = coverage_ok(Some(&input)).expect("present with spec.coverage");
            assert_eq!(got.type_, cond::COVERAGE_OK);
            check(case, &got, status, reason, message);
        }
        assert!(coverage_ok(None).is_none(), "absent without spec.coverage");
    }
}
