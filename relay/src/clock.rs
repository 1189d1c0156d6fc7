//! Wall-clock time as the relay's stages use it: Unix seconds for idle detection and
//! liveness, Unix microseconds for the time events carry and verdicts judge against.
//! One place, so no stage reaches into another for the time.

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Microseconds since the Unix epoch: the time the log and live events carry (the same
/// clock the protocol core's verdicts use).
pub fn now_micros() -> u64 {
    relay_atproto::validate::verdict::now_micros()
}
