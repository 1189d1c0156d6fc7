//! The relay workload as the StatefulSet reports it: available or not, and why. The
//! conditions builders read this instead of the StatefulSet itself.

use k8s_openapi::api::apps::v1::StatefulSet;

/// State of the relay workload as read from its StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub available: bool,
    pub ready_replicas: i32,
    pub reason: &'static str,
    pub message: String,
}

impl Workload {
    fn unavailable(ready_replicas: i32, reason: &'static str, message: String) -> Workload {
        Workload { available: false, ready_replicas, reason, message }
    }
}

/// Reads the workload state; `stopped` is `spec.operation.stopped` (a stopped relay is
/// never available, whatever its StatefulSet says while scaling down).
pub fn workload(statefulset: Option<&StatefulSet>, stopped: bool) -> Workload {
    let Some(statefulset) = statefulset else {
        return Workload::unavailable(0, "StatefulSetMissing", "the StatefulSet does not exist yet".into());
    };
    let status = statefulset.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let wanted = statefulset.spec.replicas.unwrap_or(1);
    let generation = statefulset.metadata.generation.unwrap_or(0);
    if stopped {
        return Workload::unavailable(
            ready,
            "Stopped",
            "the relay is stopped (spec.operation.stopped)".into(),
        );
    }
    if status.observed_generation.unwrap_or(0) < generation {
        return Workload::unavailable(
            ready,
            "RolloutPending",
            "the StatefulSet controller has not seen the latest spec yet".into(),
        );
    }
    if status.update_revision.is_some() && status.current_revision != status.update_revision {
        let updated = status.updated_replicas.unwrap_or(0);
        return Workload::unavailable(
            ready,
            "RollingOut",
            format!("rolling out: {updated}/{wanted} pods updated, {ready} ready"),
        );
    }
    if ready < wanted {
        return Workload::unavailable(ready, "PodsNotReady", format!("{ready}/{wanted} relay pods ready"));
    }
    Workload {
        available: true,
        ready_replicas: ready,
        reason: "StatefulSetReady",
        message: format!("{ready}/{wanted} relay pods ready"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};

    fn statefulset(generation: i64, status: StatefulSetStatus) -> StatefulSet {
        let mut sts = StatefulSet {
            spec: StatefulSetSpec { replicas: Some(1), ..StatefulSetSpec::default() },
            status: Some(status),
            ..StatefulSet::default()
        };
        sts.metadata.generation = Some(generation);
        sts
    }

    fn revisions(current: &str, update: &str) -> StatefulSetStatus {
        StatefulSetStatus {
            current_revision: Some(current.into()),
            update_revision: Some(update.into()),
            ..StatefulSetStatus::default()
        }
    }

    #[test]
    fn reasons_by_statefulset_state() {
        let ready = StatefulSetStatus {
            observed_generation: Some(2),
            ready_replicas: Some(1),
            ..revisions("a", "a")
        };
        let stale = StatefulSetStatus { observed_generation: Some(1), ..ready.clone() };
        let rolling = StatefulSetStatus { observed_generation: Some(2), ..revisions("a", "b") };
        let not_ready = StatefulSetStatus { ready_replicas: Some(0), ..ready.clone() };
        let cases: [(&str, Option<StatefulSet>, bool, bool, &str); 6] = [
            ("missing", None, false, false, "StatefulSetMissing"),
            ("stopped", Some(statefulset(2, ready.clone())), true, false, "Stopped"),
            ("stale", Some(statefulset(2, stale)), false, false, "RolloutPending"),
            ("rolling", Some(statefulset(2, rolling)), false, false, "RollingOut"),
            ("not ready", Some(statefulset(2, not_ready)), false, false, "PodsNotReady"),
            ("ready", Some(statefulset(2, ready)), false, true, "StatefulSetReady"),
        ];
        for (name, sts, stopped, available, reason) in cases {
            let work = workload(sts.as_ref(), stopped);
            assert_eq!((work.available, work.reason), (available, reason), "{name}");
        }
    }
}
