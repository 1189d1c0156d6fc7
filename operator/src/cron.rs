//! Five-field cron expressions (minute hour day-of-month month day-of-week, in UTC), just
//! what the coverage CronJob's schedule needs: validating it before it reaches a CronJob,
//! and the next run times for `status.coverage.nextRunTime` and the `NoRecentRun` rule.
//! Numbers, `*`, ranges `a-b`, lists `a,b` and steps `*/n`, `a-b/n`, `a/n`; day-of-week 0
//! and 7 are Sunday; when both day fields are restricted a day matching either counts (the
//! CronJob controller's rule). Small enough to own rather than add a dependency.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// Days searched for the next run: a schedule that fires less than once in four years (or
/// never, like `0 0 30 2 *`) has none.
const SEARCH_DAYS: usize = 4 * 366;

impl Schedule {
    pub fn parse(expression: &str) -> Result<Schedule, String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields.as_slice() else {
            return Err(format!("{expression:?} must have five fields (minute hour day month weekday)"));
        };
        let mut weekdays = field(weekday, 0, 7, "day of week")?;
        // 7 is Sunday too.
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Schedule {
            minutes: field(minute, 0, 59, "minute")?,
            hours: field(hour, 0, 23, "hour")?,
            days: field(day, 1, 31, "day of month")?,
            months: field(month, 1, 12, "month")?,
            weekdays,
            days_restricted: !day.starts_with('*'),
            weekdays_restricted: !weekday.starts_with('*'),
        })
    }

    /// The first run strictly after `after` (whole minutes, UTC).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let now = after.to_zoned(TimeZone::UTC);
        let mut date = now.date();
        // Minutes of the day at which the search may start on the first day.
        let mut from = i32::from(now.hour()) * 60 + i32::from(now.minute()) + 1;
        for _ in 0..SEARCH_DAYS {
            if self.day_matches(date) {
                if let Some(minute_of_day) = self.first_time_from(from) {
                    let (hour, minute) = (minute_of_day / 60, minute_of_day % 60);
                    let at = date.at(hour as i8, minute as i8, 0, 0).to_zoned(TimeZone::UTC).ok()?;
                    return Some(at.timestamp());
                }
            }
            date = date.tomorrow().ok()?;
            from = 0;
        }
        None
    }

    fn day_matches(&self, date: Date) -> bool {
        let month = self.months & (1 << date.month()) != 0;
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        let day_ok = match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            (true, false) => day,
            (false, true) => weekday,
            (false, false) => true,
        };
        month && day_ok
    }

    /// The first allowed minute of a day at or after `from` (minutes since midnight).
    fn first_time_from(&self, from: i32) -> Option<i32> {
        (from.max(0)..24 * 60)
            .find(|m| self.hours & (1 << (m / 60)) != 0 && self.minutes & (1 << (m % 60)) != 0)
    }
}

/// One field as a bit set of allowed values in `min..=max`.
fn field(text: &str, min: u32, max: u32, name: &str) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        bits |= part_bits(part, min, max).map_err(|why| format!("{name} {text:?}: {why}"))?;
    }
    Ok(bits)
}

fn part_bits(part: &str, min: u32, max: u32) -> Result<u64, String> {
    let (range, step) = match part.split_once('/') {
        Some((range, step)) => (range, number(step)?),
        None => (part, 1),
    };
    if step == 0 {
        return Err("a step of 0".into());
    }
    let (low, high) = match range {
        "*" => (min, max),
        _ => match range.split_once('-') {
            Some((low, high)) => (number(low)?, number(high)?),
            // `a/n` runs from a to the end of the field.
            None if part.contains('/') => (number(range)?, max),
            None => {
                let value = number(range)?;
                (value, value)
            }
        },
    };
    if low < min || high > max || low > high {
        return Err(format!("{range:?} is outside {min}-{max}"));
    }
    Ok((low..=high).step_by(step as usize).fold(0u64, |bits, value| bits | (1 << value)))
}

fn number(text: &str) -> Result<u32, String> {
    text.parse().map_err(|_| format!("{text:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    #[test]
    fn next_runs() {
        let cases = [
            ("17 * * * *", "2026-11-30T23:40:00Z", Some("2026-12-01T00:17:00Z")),
            ("17 * * * *", "2026-11-30T23:16:59Z", Some("2026-11-30T23:17:00Z")),
            ("17 * * * *", "2026-11-30T23:17:00Z", Some("2026-12-01T00:17:00Z")),
            ("* * * * *", "2026-11-30T23:40:30Z", Some("2026-11-30T23:41:00Z")),
            ("*/15 * * * *", "2026-11-30T23:40:00Z", Some("2026-11-30T23:45:00Z")),
            ("0 3 * * 1", "2026-11-30T23:40:00Z", Some("2026-12-07T03:00:00Z")),
            ("0 3 * * 7", "2026-11-30T23:40:00Z", Some("2026-12-06T03:00:00Z")),
            ("0 0 1,15 * *", "2026-12-02T00:00:00Z", Some("2026-12-15T00:00:00Z")),
            ("30 9-17/4 * * *", "2026-12-02T10:00:00Z", Some("2026-12-02T13:30:00Z")),
            ("0 0 29 2 *", "2026-12-02T00:00:00Z", Some("2028-02-29T00:00:00Z")),
            ("0 0 30 2 *", "2026-12-02T00:00:00Z", None),
            // Both day fields restricted: either matches (1 Dec 2026 is a Tuesday).
            ("0 0 1 * 5", "2026-11-30T12:00:00Z", Some("2026-12-01T00:00:00Z")),
        ];
        for (expression, after, expected) in cases {
            let schedule = Schedule::parse(expression).expect(expression);
            assert_eq!(schedule.next_after(at(after)), expected.map(at), "{expression} after {after}");
        }
    }

    #[test]
    fn bad_expressions_say_why() {
        for (expression, says) in [
            ("* * * *", "five fields"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("*/0 * * * *", "step of 0"),
            ("5-1 * * * *", "outside"),
            ("a * * * *", "not a number"),
        ] {
            let error = Schedule::parse(expression).expect_err(expression);
            assert!(error.contains(says), "{expression}: {error}");
        }
    }
}
