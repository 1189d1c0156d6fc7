//! Condition types, reasons and the merge rule of `meta.SetStatusCondition`:
//! `lastTransitionTime` moves only when a condition's status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::Schema;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const WORKLOAD_AVAILABLE: &str = "WorkloadAvailable";
pub const RECONCILIATION_PAUSED: &str = "ReconciliationPaused";
pub const COVERAGE_OK: &str = "CoverageOK";
/// The relay's own node (`spec.node`) is created, joined and Ready.
pub const NODE_PROVISIONED: &str = "NodeProvisioned";

/// The condition types this operator owns, in the order they are written.
pub const OWNED: [&str; 7] =
    [READY, RECONCILING, STALLED, WORKLOAD_AVAILABLE, RECONCILIATION_PAUSED, COVERAGE_OK, NODE_PROVISIONED];

/// True / False / Unknown, as the API spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }

    pub fn from_bool(value: bool) -> Status {
        if value {
            Status::True
        } else {
            Status::False
        }
    }
}

/// One desired condition, before timestamps and generation are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: Status,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Desired { type_, status, reason, message: message.into() }
    }
}

/// Merges `desired` into `existing`: keeps conditions of other writers, keeps
/// `lastTransitionTime` when the status did not change, and drops owned types that
/// are no longer desired (e.g. `ReconciliationPaused` after un-pausing).
pub fn merge(existing: &[Condition], desired: &[Desired], generation: i64, now: &Time) -> Vec<Condition> {
    let mut merged: Vec<Condition> =
        existing.iter().filter(|c| !OWNED.contains(&c.type_.as_str())).cloned().collect();
    for want in desired {
        let previous = existing.iter().find(|c| c.type_ == want.type_);
        let last_transition_time = match previous {
            Some(old) if old.status == want.status.as_str() => old.last_transition_time.clone(),
            _ => now.clone(),
        };
        merged.push(Condition {
            type_: want.type_.to_string(),
            status: want.status.as_str().to_string(),
            reason: want.reason.to_string(),
            message: want.message.clone(),
            observed_generation: Some(generation),
            last_transition_time,
        });
    }
    merged
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Schema of the conditions list: metav1.Condition items, merged by `type` under
/// server-side apply.
pub fn schema(generator: &mut schemars::SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": item,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first =
            merge(&[], &[Desired::new(READY, Status::False, "Progressing", "starting")], 1, &time(100));
        let same =
            merge(&first, &[Desired::new(READY, Status::False, "Progressing", "still")], 2, &time(200));
        assert_eq!(same[0].last_transition_time, time(100));
        assert_eq!(same[0].observed_generation, Some(2));
        assert_eq!(same[0].message, "still");
        let flipped = merge(&same, &[Desired::new(READY, Status::True, "RelayReady", "ok")], 2, &time(300));
        assert_eq!(flipped[0].last_transition_time, time(300));
    }

    #[test]
    fn foreign_conditions_are_kept_and_stale_owned_ones_dropped() {
        let existing = vec![
            Condition {
                type_: "ExternalCheck".into(),
                status: "True".into(),
                reason: "Fine".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: time(1),
            },
            Condition {
                type_: RECONCILIATION_PAUSED.into(),
                status: "True".into(),
                reason: "Paused".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: time(1),
            },
        ];
        let merged =
            merge(&existing, &[Desired::new(READY, Status::Unknown, "Reconciling", "")], 3, &time(5));
        let types: Vec<&str> = merged.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, vec!["ExternalCheck", READY]);
    }
}
