//! One rate budget for every Hetzner call the operator makes.
//!
//! Hetzner allows 3,600 requests per hour per project, refilled at one per second, and
//! tells how much is left only in response headers, which the `hcloud` crate drops. So
//! the budget is kept here: a token bucket (refill 1/s, a bounded burst so the CCM and
//! others sharing the project keep headroom), a pause of minutes after a 429 (doubling,
//! capped), the API's health for a `HetznerAPIReachable`-style condition, and plain
//! per-operation call counters the caller exports as metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::CloudError;

/// The budget's knobs; the defaults follow Hetzner's published limit.
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    /// Tokens added per second (Hetzner refills 1/s).
    pub refill_per_second: f64,
    /// Bucket size: the burst allowed after a quiet period.
    pub burst: u32,
    /// How long a call may wait for a token before it fails with `RateLimited`
    /// (a reconcile should requeue rather than hold a worker for minutes).
    pub max_wait: Duration,
    /// The pause after the first 429; doubled on each further 429 up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            refill_per_second: 1.0,
            // 3,600/hour is the whole project's budget; a burst of 120 leaves the rest of
            // the bucket to the CCM, Terraform or people sharing the project.
            burst: 120,
            max_wait: Duration::from_secs(5),
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(15 * 60),
        }
    }
}

/// What the last call said about the API, for a condition reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiHealth {
    /// The API answered (any answer that is not one of the below).
    Ok,
    /// A 429 was received (or the local budget is spent) and calls are paused.
    RateLimited,
    /// The token was refused (401/403).
    Unauthorized,
    /// Timeouts, resets, 5xx.
    Unreachable,
}

impl ApiHealth {
    /// The condition reason: `HetznerAPIReachable` is True only for `Ok`.
    pub fn reason(self) -> &'static str {
        match self {
            ApiHealth::Ok => "Reachable",
            ApiHealth::RateLimited => "RateLimited",
            ApiHealth::Unauthorized => "Unauthorized",
            ApiHealth::Unreachable => "Unreachable",
        }
    }

    pub fn is_ok(self) -> bool {
        self == ApiHealth::Ok
    }
}

/// Every call the client makes, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    CreateServer,
    GetServer,
    ListServers,
    DeleteServer,
    GetAction,
    ListFirewalls,
    CreateFirewall,
    DeleteFirewall,
    ListSshKeys,
    ListNetworks,
}

impl Op {
    pub const ALL: [Op; 10] = [
        Op::CreateServer,
        Op::GetServer,
        Op::ListServers,
        Op::DeleteServer,
        Op::GetAction,
        Op::ListFirewalls,
        Op::CreateFirewall,
        Op::DeleteFirewall,
        Op::ListSshKeys,
        Op::ListNetworks,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::CreateServer => "create_server",
            Op::GetServer => "get_server",
            Op::ListServers => "list_servers",
            Op::DeleteServer => "delete_server",
            Op::GetAction => "get_action",
            Op::ListFirewalls => "list_firewalls",
            Op::CreateFirewall => "create_firewall",
            Op::DeleteFirewall => "delete_firewall",
            Op::ListSshKeys => "list_ssh_keys",
            Op::ListNetworks => "list_networks",
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// HTTP requests sent, per operation (retries count again).
    pub calls: Vec<(Op, u64)>,
    /// Calls refused locally because the budget was spent or paused (no request sent).
    pub throttled: u64,
    /// 429 responses received.
    pub rate_limited: u64,
}

impl CallCounts {
    pub fn total(&self) -> u64 {
        self.calls.iter().map(|(_, n)| n).sum()
    }

    pub fn of(&self, op: Op) -> u64 {
        self.calls.iter().find(|(o, _)| *o == op).map_or(0, |(_, n)| *n)
    }

    /// The counts since `earlier` (for one scenario of a test).
    pub fn since(&self, earlier: &CallCounts) -> CallCounts {
        CallCounts {
            calls: self.calls.iter().map(|&(op, n)| (op, n.saturating_sub(earlier.of(op)))).collect(),
            throttled: self.throttled.saturating_sub(earlier.throttled),
            rate_limited: self.rate_limited.saturating_sub(earlier.rate_limited),
        }
    }
}

impl std::fmt::Display for CallCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "total {}", self.total())?;
        for (op, n) in self.calls.iter().filter(|(_, n)| *n > 0) {
            write!(f, ", {} {n}", op.as_str())?;
        }
        write!(f, " (throttled locally {}, 429s {})", self.throttled, self.rate_limited)
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
    paused_until: Option<Instant>,
    next_backoff: Duration,
    health: ApiHealth,
}

/// The operator-wide budget. Share one `Arc<RateBudget>` between every client.
#[derive(Debug)]
pub struct RateBudget {
    config: BudgetConfig,
    bucket: Mutex<Bucket>,
    calls: [AtomicU64; Op::ALL.len()],
    throttled: AtomicU64,
    rate_limited: AtomicU64,
}

impl RateBudget {
    pub fn new(config: BudgetConfig) -> RateBudget {
        let bucket = Bucket {
            tokens: f64::from(config.burst),
            refilled_at: Instant::now(),
            paused_until: None,
            next_backoff: config.backoff_initial,
            health: ApiHealth::Ok,
        };
        RateBudget {
            config,
            bucket: Mutex::new(bucket),
            calls: Default::default(),
            throttled: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Takes a token for `op`, waiting up to `max_wait` for one; fails with
    /// `RateLimited` while a 429 pause runs or when the wait would be longer.
    pub async fn acquire(&self, op: Op) -> Result<(), CloudError> {
        loop {
            match self.try_take(Instant::now()) {
                Ok(()) => {
                    self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(wait) if wait <= self.config.max_wait => tokio::time::sleep(wait).await,
                Err(wait) => {
                    self.throttled.fetch_add(1, Ordering::Relaxed);
                    return Err(CloudError::RateLimited { retry_after: wait });
                }
            }
        }
    }

    /// The pure core of `acquire`: a token now, or how long until one is there.
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.lock();
        if let Some(until) = bucket.paused_until {
            if now < until {
                return Err(until - now);
            }
            bucket.paused_until = None;
        }
        self.refill(&mut bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - bucket.tokens;
        Err(Duration::from_secs_f64(missing / self.config.refill_per_second.max(f64::MIN_POSITIVE)))
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.refilled_at).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * self.config.refill_per_second).min(f64::from(self.config.burst));
        bucket.refilled_at = now;
    }

    /// Records a 429: pauses every call for the current back-off, empties the bucket
    /// (the project's budget is spent), doubles the next back-off. Returns the pause.
    pub fn on_rate_limited(&self, now: Instant) -> Duration {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
        let mut bucket = self.lock();
        let pause = bucket.next_backoff;
        bucket.paused_until = Some(now + pause);
        bucket.tokens = 0.0;
        bucket.refilled_at = now + pause;
        bucket.next_backoff = (pause * 2).min(self.config.backoff_max);
        bucket.health = ApiHealth::RateLimited;
        pause
    }

    /// Records the outcome of a call that reached the API (or failed on the way).
    pub fn record<T>(&self, result: &Result<T, CloudError>) {
        let health = match result {
            Ok(_) => ApiHealth::Ok,
            Err(CloudError::RateLimited { .. }) => ApiHealth::RateLimited,
            Err(CloudError::Unauthorized { .. }) => ApiHealth::Unauthorized,
            Err(CloudError::Transient(_)) => ApiHealth::Unreachable,
            // The API answered: not found, name taken, no capacity, invalid input.
            Err(_) => ApiHealth::Ok,
        };
        let mut bucket = self.lock();
        if health == ApiHealth::Ok {
            bucket.next_backoff = self.config.backoff_initial;
        }
        bucket.health = health;
    }

    /// The API's health as of the last call; `RateLimited` while a pause runs.
    pub fn health(&self) -> ApiHealth {
        self.lock().health
    }

    /// How long calls stay paused after a 429 (None when not paused).
    pub fn paused_for(&self, now: Instant) -> Option<Duration> {
        self.lock().paused_until.and_then(|until| until.checked_duration_since(now)).filter(|d| !d.is_zero())
    }

    /// The tokens left now (for a gauge).
    pub fn tokens(&self, now: Instant) -> f64 {
        let mut bucket = self.lock();
        self.refill(&mut bucket, now);
        bucket.tokens
    }

    pub fn counts(&self) -> CallCounts {
        CallCounts {
            calls: Op::ALL.iter().map(|&op| (op, self.calls[op as usize].load(Ordering::Relaxed))).collect(),
            throttled: self.throttled.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // A panic while holding this lock cannot leave the bucket inconsistent (every
        // update is a few assignments), so a poisoned lock is still usable.
        self.bucket.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for RateBudget {
    fn default() -> Self {
        RateBudget::new(BudgetConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(burst: u32) -> RateBudget {
        RateBudget::new(BudgetConfig { burst, ..BudgetConfig::default() })
    }

    #[test]
    fn the_burst_is_spent_then_tokens_come_back_at_one_per_second() {
        let b = budget(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.try_take(t0), Ok(()));
        }
        let wait = b.try_take(t0).expect_err("bucket is empty");
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900), "{wait:?}");
        assert_eq!(b.try_take(t0 + Duration::from_secs(1)), Ok(()));
        // Never more than the burst, however long the quiet period.
        let later = t0 + Duration::from_secs(3600);
        assert!((b.tokens(later) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_429_pauses_for_minutes_and_the_pause_doubles_up_to_the_cap() {
        let b = RateBudget::new(BudgetConfig {
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(150),
            ..BudgetConfig::default()
        });
        let t0 = Instant::now();
        assert_eq!(b.on_rate_limited(t0), Duration::from_secs(60));
        assert_eq!(b.health(), ApiHealth::RateLimited);
        assert_eq!(b.try_take(t0 + Duration::from_secs(59)), Err(Duration::from_secs(1)));
        assert_eq!(b.on_rate_limited(t0), Duration::from_secs(120));
        assert_eq!(b.on_rate_limited(t0), Duration::from_secs(150));
        // A success resets the back-off.
        b.record::<()>(&Ok(()));
        assert_eq!(b.health(), ApiHealth::Ok);
        assert_eq!(b.on_rate_limited(t0), Duration::from_secs(60));
    }

    #[test]
    fn health_follows_the_last_outcome() {
        let b = budget(10);
        b.record::<()>(&Err(CloudError::Transient("reset".into())));
        assert_eq!(b.health().reason(), "Unreachable");
        b.record::<()>(&Err(CloudError::NotFound("x".into())));
        assert!(b.health().is_ok());
        b.record::<()>(&Err(CloudError::Unauthorized {
            code: "unauthorized".into(),
            message: String::new(),
        }));
        assert_eq!(b.health().reason(), "Unauthorized");
    }

    #[tokio::test]
    async fn acquire_counts_per_operation_and_refuses_long_waits() {
        let b = RateBudget::new(BudgetConfig {
            burst: 2,
            max_wait: Duration::from_millis(10),
            ..BudgetConfig::default()
        });
        b.acquire(Op::GetServer).await.expect("token");
        b.acquire(Op::CreateServer).await.expect("token");
        let refused = b.acquire(Op::GetServer).await.expect_err("a second's wait is over max_wait");
        assert!(matches!(refused, CloudError::RateLimited { .. }));
        let counts = b.counts();
        assert_eq!((counts.of(Op::GetServer), counts.of(Op::CreateServer), counts.throttled), (1, 1, 1));
        assert_eq!(counts.total(), 2);
    }
}
