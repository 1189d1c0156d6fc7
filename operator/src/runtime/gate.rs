//! The write rule of `status.runtime`: write only when a shown value changed, and never
//! more than once per interval per Relay. Pure, so the bound the docs state is tested here.

use crate::crd::runtime::RuntimeStatus;
use std::time::{Duration, Instant};

/// Whether two runtime states show the same thing (the sample time is not shown).
pub fn same_shown(a: &RuntimeStatus, b: &RuntimeStatus) -> bool {
    let strip = |s: &RuntimeStatus| RuntimeStatus { sampled_at: None, ..s.clone() };
    strip(a) == strip(b)
}

/// When this Relay's runtime status was last written.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteGate {
    last_write: Option<Instant>,
}

impl WriteGate {
    /// Whether to write `next` over `current` at `now`: only a change, and only once an
    /// interval has passed since the last write.
    pub fn allows(
        &self,
        current: Option<&RuntimeStatus>,
        next: &RuntimeStatus,
        now: Instant,
        interval: Duration,
    ) -> bool {
        let changed = current.is_none_or(|current| !same_shown(current, next));
        changed && self.rested(now, interval)
    }

    /// Whether an interval has passed since the last write (a change of the `CaughtUp`
    /// condition alone is written under the same bound).
    pub fn rested(&self, now: Instant, interval: Duration) -> bool {
        self.last_write.is_none_or(|at| now.saturating_duration_since(at) >= interval)
    }

    pub fn wrote(&mut self, at: Instant) {
        self.last_write = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn status(seq: i64) -> RuntimeStatus {
        RuntimeStatus { last_seq: Some(seq), hosts: Some("1/1".into()), ..RuntimeStatus::default() }
    }

    #[test]
    fn writes_only_changes_and_at_most_once_per_interval() {
        let interval = Duration::from_secs(60);
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut gate = WriteGate::default();
        // (case, current, next, at, expected)
        let steps: [(&str, Option<RuntimeStatus>, RuntimeStatus, Instant, bool); 6] = [
            ("first value", None, status(1), at(0), true),
            ("unchanged", Some(status(1)), status(1), at(60), false),
            ("changed, interval passed", Some(status(1)), status(2), at(60), true),
            ("changed again too soon", Some(status(2)), status(3), at(90), false),
            ("changed, one interval after the last write", Some(status(2)), status(3), at(120), true),
            ("unchanged but time moved", Some(status(3)), status(3), at(600), false),
        ];
        for (case, current, next, now, expected) in steps {
            let allowed = gate.allows(current.as_ref(), &next, now, interval);
            assert_eq!(allowed, expected, "{case}");
            if allowed {
                gate.wrote(now);
            }
        }
    }

    #[test]
    fn the_sample_time_alone_is_no_change() {
        let stamped = RuntimeStatus { sampled_at: Some(Time(jiff::Timestamp::UNIX_EPOCH)), ..status(5) };
        assert!(same_shown(&stamped, &status(5)));
        let gate = WriteGate::default();
        assert!(!gate.allows(Some(&stamped), &status(5), Instant::now(), Duration::from_secs(60)));
    }

    #[test]
    fn writes_over_an_hour_stay_within_the_bound() {
        // A relay whose values change at every 10 s sample: still one write per interval.
        let interval = Duration::from_secs(60);
        let start = Instant::now();
        let mut gate = WriteGate::default();
        let mut shown = None;
        let mut writes = 0;
        for tick in 0..360u64 {
            let next = status(tick as i64);
            let now = start + Duration::from_secs(tick * 10);
            if gate.allows(shown.as_ref(), &next, now, interval) {
                gate.wrote(now);
                shown = Some(next);
                writes += 1;
            }
        }
        assert_eq!(writes, 60, "3600 s / 60 s");
    }
}
