//! The `CaughtUp` condition: whether the relay says it has caught up (upstream hosts
//! connected, events flowing, coverage good: its `/_ready`, shown in `/_summary` as
//! `ready`). It is kept apart from `Ready`, which follows the pod's readiness probe
//! (`/_serving`: the relay can serve replays and live reads), so that a restarted relay is
//! back in its public Service within seconds while thousands of hosts are still being
//! dialled, and "caught up" is still visible. The runtime sampler writes it under its own
//! field manager (the conditions list merges by type), so the reconcile never removes it.
//! Pure: the sampler gives it what it read.

use crate::crd::conditions::{Desired, Status};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const CAUGHT_UP: &str = "CaughtUp";

/// What one sample said about catching up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `/_summary` said ready.
    CaughtUp,
    /// `/_summary` said not ready, with the relay's reason.
    Behind(String),
    /// No answer to go by (no pod, no answer, or a relay too old for `/_summary`).
    Unknown(String),
}

/// The condition for a verdict, before timestamps.
pub fn desired(verdict: &Verdict) -> Desired {
    match verdict {
        Verdict::CaughtUp => {
            Desired::new(CAUGHT_UP, Status::True, "CaughtUp", "the relay reports it is caught up")
        }
        Verdict::Behind(reason) => Desired::new(CAUGHT_UP, Status::False, "CatchingUp", reason.clone()),
        Verdict::Unknown(why) => Desired::new(CAUGHT_UP, Status::Unknown, "NotSampled", why.clone()),
    }
}

/// Whether the Relay's current `CaughtUp` condition says something else than `want`.
pub fn changed(existing: &[Condition], want: &Desired, generation: i64) -> bool {
    match existing.iter().find(|c| c.type_ == CAUGHT_UP) {
        None => true,
        Some(old) => {
            old.status != want.status.as_str()
                || old.reason != want.reason
                || old.message != want.message
                || old.observed_generation != Some(generation)
        }
    }
}

/// The condition to write: `lastTransitionTime` moves only when the status flips.
pub fn condition(existing: &[Condition], want: &Desired, generation: i64, now: &Time) -> Condition {
    let last_transition_time = match existing.iter().find(|c| c.type_ == CAUGHT_UP) {
        Some(old) if old.status == want.status.as_str() => old.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: CAUGHT_UP.into(),
        status: want.status.as_str().into(),
        reason: want.reason.into(),
        message: want.message.clone(),
        observed_generation: Some(generation),
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    #[test]
    fn the_reconcile_neither_writes_nor_removes_it() {
        // The reconcile applies only the types it owns and compares only those, so the
        // sampler's condition survives every status write of the reconcile and costs none.
        assert!(!crate::crd::conditions::OWNED.contains(&CAUGHT_UP));
    }

    #[test]
    fn verdicts_map_onto_the_condition() {
        // (verdict, status, reason, message)
        let cases = [
            (Verdict::CaughtUp, "True", "CaughtUp", "the relay reports it is caught up"),
            (Verdict::Behind("no hosts connected".into()), "False", "CatchingUp", "no hosts connected"),
            (Verdict::Unknown("no relay pod".into()), "Unknown", "NotSampled", "no relay pod"),
        ];
        for (verdict, status, reason, message) in cases {
            let want = desired(&verdict);
            assert_eq!((want.status.as_str(), want.reason, want.message.as_str()), (status, reason, message));
        }
    }

    #[test]
    fn written_only_on_change_and_the_transition_time_moves_only_on_a_flip() {
        let behind = desired(&Verdict::Behind("no hosts connected".into()));
        assert!(changed(&[], &behind, 1));
        let first = condition(&[], &behind, 1, &time(100));
        assert!(!changed(std::slice::from_ref(&first), &behind, 1));
        assert!(changed(std::slice::from_ref(&first), &behind, 2), "a new generation is news");
        let other_reason = desired(&Verdict::Behind("no events for 60s".into()));
        assert!(changed(std::slice::from_ref(&first), &other_reason, 1));
        let same_status = condition(std::slice::from_ref(&first), &other_reason, 1, &time(200));
        assert_eq!(same_status.last_transition_time, time(100));
        let caught_up = desired(&Verdict::CaughtUp);
        let flipped = condition(&[same_status], &caught_up, 1, &time(300));
        assert_eq!((flipped.status.as_str(), flipped.last_transition_time), ("True", time(300)));
    }
}
