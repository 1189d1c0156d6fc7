//! Per-host request pacing for backfill traffic, and what a response says about limits.
//!
//! Each host gets a token bucket (requests per second, burst of one second's worth) and a
//! "blocked until" instant set from `Retry-After` or `RateLimit-Remaining: 0` +
//! `RateLimit-Reset`, or from our own backoff after a 429/5xx. Bluesky's PDS shards share a
//! limit (3,000 requests per 300 s), so honouring the headers matters more than the bucket.
//!
//! Buckets are kept per *address*, not per name ([`HostLimiter::pacing_key`]): many PDS
//! hostnames often sit behind one server or load balancer, which enforces one limit for all of
//! them, so pacing each name on its own would multiply the rate that address sees.

use reqwest::header::HeaderMap;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Bucket {
    tokens: f64,
    refilled: Instant,
    blocked_until: Option<Instant>,
    /// Consecutive failures, for exponential backoff.
    failures: u32,
}

pub struct HostLimiter {
    per_second: f64,
    max_backoff: Duration,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Host name (with port) → the address it is paced under, and when that was looked up.
    keys: Mutex<HashMap<String, (Instant, String)>>,
}

/// How long a host's resolved address is reused for pacing.
const PACING_KEY_TTL: Duration = Duration::from_secs(600);
/// Longest wait for the DNS answer behind a pacing key (the name itself is used after it).
const PACING_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

impl HostLimiter {
    pub fn new(per_second: f64, max_backoff: Duration) -> HostLimiter {
        HostLimiter {
            per_second: per_second.max(0.01),
            max_backoff,
            buckets: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The key a host (`name` or `name:port`, https's 443 by default) is paced under: the
    /// lowest of the addresses its name resolves to, with the port, so that names served from
    /// one address share one bucket. Falls back to the name when it does not resolve.
    pub async fn pacing_key(&self, host: &str) -> String {
        if let Some((at, key)) = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(host) {
            if at.elapsed() < PACING_KEY_TTL {
                return key.clone();
            }
        }
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => (name, port.parse().unwrap_or(443)),
            _ => (host, 443),
        };
        let lookup = tokio::time::timeout(PACING_LOOKUP_TIMEOUT, tokio::net::lookup_host((name, port))).await;
        let key = match lookup {
            Ok(Ok(addrs)) => addrs.min().map_or_else(|| host.to_string(), |addr| addr.to_string()),
            _ => host.to_string(),
        };
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string(), (Instant::now(), key.clone()));
        key
    }

    /// Takes a request slot now (`None`), or says when one will be free.
    pub fn try_take(&self, host: &str) -> Option<Instant> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let burst = self.per_second.max(1.0);
        let bucket = buckets.entry(host.to_string()).or_insert(Bucket {
            tokens: burst,
            refilled: now,
            blocked_until: None,
            failures: 0,
        });
        if let Some(until) = bucket.blocked_until {
            if until > now {
                return Some(until);
            }
            bucket.blocked_until = None;
        }
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return None;
        }
        let wait = (1.0 - bucket.tokens) / self.per_second;
        Some(now + Duration::from_secs_f64(wait))
    }

    /// Waits for a request slot.
    pub async fn take(&self, host: &str) {
        while let Some(until) = self.try_take(host) {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// Whether the host is blocked right now (without taking a slot).
    pub fn blocked(&self, host: &str) -> bool {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.get(host).and_then(|b| b.blocked_until).is_some_and(|until| until > Instant::now())
    }

    fn block(&self, host: &str, until: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(host) {
            bucket.blocked_until = Some(bucket.blocked_until.map_or(until, |b| b.max(until)));
        }
    }

    /// A response came back: learn from its status and headers. Returns how long the host is
    /// blocked for when the response was a refusal (429 or 5xx).
    pub fn observe(&self, host: &str, status: u16, headers: &HeaderMap) -> Option<Duration> {
        let now = Instant::now();
        let told = retry_after(headers).or_else(|| exhausted_until(headers));
        let refused = status == 429 || status >= 500;
        let failures = {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let bucket = buckets.get_mut(host)?;
            bucket.failures = if refused { bucket.failures.saturating_add(1) } else { 0 };
            bucket.failures
        };
        if let Some(wait) = told {
            // The server said when: believe it (bounded, plus a little jitter so hosts sharing a
            // limit are not hit by every worker at the same instant).
            let wait = wait.min(Duration::from_secs(3600)) + jitter(Duration::from_millis(250));
            self.block(host, now + wait);
            return refused.then_some(wait);
        }
        if !refused {
            return None;
        }
        let wait = self.backoff(failures);
        self.block(host, now + wait);
        Some(wait)
    }

    /// A connection error counts like a 5xx.
    pub fn observe_failure(&self, host: &str) -> Duration {
        let failures = {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            match buckets.get_mut(host) {
                Some(bucket) => {
                    bucket.failures = bucket.failures.saturating_add(1);
                    bucket.failures
                }
                None => 1,
            }
        };
        let wait = self.backoff(failures);
        self.block(host, Instant::now() + wait);
        wait
    }

    fn backoff(&self, failures: u32) -> Duration {
        let base = Duration::from_secs(1).saturating_mul(1 << failures.min(10).saturating_sub(1));
        let capped = base.min(self.max_backoff);
        capped / 2 + jitter(capped / 2)
    }
}

fn jitter(max: Duration) -> Duration {
    max.mul_f64(fastrand::f64())
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let now = chrono::Utc::now();
    Some((date.with_timezone(&chrono::Utc) - now).to_std().unwrap_or_default())
}

/// `RateLimit-Remaining: 0` with `RateLimit-Reset` (delta seconds, or a Unix time as the
/// atproto PDS sends it): the window is used up until then.
pub fn exhausted_until(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
    if number("ratelimit-remaining")? > 0 {
        return None;
    }
    let reset = number("ratelimit-reset")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    // Anything that looks like a timestamp is one; small numbers are a delta.
    let delta = if reset > 1_000_000_000 { reset.saturating_sub(now) } else { reset };
    Some(Duration::from_secs(delta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn bucket_paces_requests() {
        let limiter = HostLimiter::new(2.0, Duration::from_secs(60));
        assert!(limiter.try_take("a").is_none());
        assert!(limiter.try_take("a").is_none());
        assert!(limiter.try_take("a").is_some(), "burst of 2 used up");
        assert!(limiter.try_take("b").is_none(), "hosts are independent");
    }

    #[tokio::test]
    async fn names_on_one_address_share_a_bucket() {
        let limiter = HostLimiter::new(1.0, Duration::from_secs(60));
        let by_name = limiter.pacing_key("localhost:4000").await;
        let by_address = limiter.pacing_key("127.0.0.1:4000").await;
        assert_eq!(by_name, by_address, "one address, one key");
        assert_ne!(limiter.pacing_key("127.0.0.1:4001").await, by_address, "another port is another server");
        assert_eq!(limiter.pacing_key("no-such-host.invalid").await, "no-such-host.invalid");
        // The one token of the shared bucket, taken through one name, is gone for the other.
        assert!(limiter.try_take(&by_name).is_none());
        assert!(limiter.try_take(&by_address).is_some());
    }

    #[test]
    fn retry_after_blocks_the_host_only() {
        let limiter = HostLimiter::new(100.0, Duration::from_secs(60));
        assert!(limiter.try_take("slow").is_none());
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("120"));
        let wait = limiter.observe("slow", 429, &headers).expect("refused");
        assert!(wait >= Duration::from_secs(120));
        assert!(limiter.blocked("slow"));
        assert!(limiter.try_take("slow").is_some());
        assert!(limiter.try_take("fast").is_none());
    }

    #[test]
    fn exhausted_window_blocks_even_on_success() {
        let limiter = HostLimiter::new(100.0, Duration::from_secs(60));
        assert!(limiter.try_take("pds").is_none());
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit-remaining", HeaderValue::from_static("0"));
        let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 30;
        headers.insert("ratelimit-reset", HeaderValue::from_str(&reset.to_string()).unwrap());
        assert_eq!(limiter.observe("pds", 200, &headers), None);
        assert!(limiter.blocked("pds"));
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap() {
        let limiter = HostLimiter::new(100.0, Duration::from_secs(8));
        assert!(limiter.try_take("h").is_none());
        let waits: Vec<Duration> = (0..6).map(|_| limiter.observe_failure("h")).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(8)));
        assert!(waits[5] >= Duration::from_secs(4), "capped backoff stays near the cap: {waits:?}");
    }
}
