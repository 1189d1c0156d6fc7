//! The operator's one configuration struct (flags and environment variables).

use clap::Args;
use std::time::Duration;

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 30s, 5m, 1h"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(value)),
        "ms" => Ok(Duration::from_millis(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        "h" => Ok(Duration::from_secs(value * 3600)),
        _ => Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunConfig {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "OPERATOR_PROBE_ADDR", default_value = "0.0.0.0:8081")]
    pub probe_addr: String,

    /// Relays reconciled at the same time.
    #[arg(long, env = "OPERATOR_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,

    /// Periodic re-reconcile of every Relay (a no-op when nothing drifted).
    #[arg(long, env = "OPERATOR_RESYNC_INTERVAL", default_value = "1h", value_parser = parse_seconds)]
    pub resync_interval: Duration,

    /// Longest retry delay after transient errors.
    #[arg(long, env = "OPERATOR_MAX_BACKOFF", default_value = "5m", value_parser = parse_seconds)]
    pub max_backoff: Duration,

    /// How often to look again for a Secret the spec names but that does not exist.
    #[arg(long, env = "OPERATOR_MISSING_SECRET_POLL", default_value = "30s", value_parser = parse_seconds)]
    pub missing_secret_poll: Duration,

    /// How often each relay's own state (hosts, events/s, seq, coverage, collections) is read
    /// from its internal listener into `status.runtime`: one request per relay per interval,
    /// and at most one status write per relay per interval. `0` turns it off.
    #[arg(long, env = "OPERATOR_RUNTIME_INTERVAL", default_value = "60s", value_parser = parse_seconds)]
    pub runtime_interval: Duration,

    /// How long the answer "does the cluster have ServiceMonitors" is cached.
    #[arg(long, env = "OPERATOR_DISCOVERY_TTL", default_value = "60s", value_parser = parse_seconds)]
    pub discovery_ttl: Duration,

    /// Take a Lease before reconciling, so several replicas can run (one active).
    #[arg(long, env = "OPERATOR_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,

    /// Name of the leader-election Lease.
    #[arg(long, env = "OPERATOR_LEASE_NAME", default_value = "relay-operator-leader")]
    pub lease_name: String,

    /// Namespace of the Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a Lease is valid without renewal.
    #[arg(long, env = "OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = parse_seconds)]
    pub lease_duration: Duration,

    /// How often the leader renews its Lease.
    #[arg(long, env = "OPERATOR_LEASE_RENEW", default_value = "5s", value_parser = parse_seconds)]
    pub lease_renew: Duration,

    /// This replica's identity (Events and the Lease holder); the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
}
