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

    /// Hetzner Cloud API base URL (`spec.node.hetzner`); tests point it at a fake.
    #[arg(long, env = "OPERATOR_HETZNER_API_URL", default_value = "https://api.hetzner.cloud/v1")]
    pub hetzner_api_url: String,

    /// Steady state: how often a Relay's Hetzner server is checked (one `GET /servers/{id}`).
    /// The Node's state comes from the Kubernetes API and costs no Hetzner call.
    #[arg(long, env = "OPERATOR_HETZNER_CHECK_INTERVAL", default_value = "10m", value_parser = parse_seconds)]
    pub hetzner_check_interval: Duration,

    /// While a server is being created or boots: how often its action or state is polled.
    #[arg(long, env = "OPERATOR_HETZNER_POLL_INTERVAL", default_value = "5s", value_parser = parse_seconds)]
    pub hetzner_poll_interval: Duration,

    /// While waiting for a joined Node: how often the Node is looked at (Kubernetes API only).
    #[arg(long, env = "OPERATOR_HETZNER_JOIN_POLL", default_value = "10s", value_parser = parse_seconds)]
    pub hetzner_join_poll: Duration,

    /// Longest wait for the create action (phase `Creating`) before `CreateTimeout`.
    #[arg(long, env = "OPERATOR_HETZNER_CREATE_TIMEOUT", default_value = "10m", value_parser = parse_seconds)]
    pub hetzner_create_timeout: Duration,

    /// Longest wait for the server to be `running` (phase `WaitingForBoot`) before `BootTimeout`.
    #[arg(long, env = "OPERATOR_HETZNER_BOOT_TIMEOUT", default_value = "10m", value_parser = parse_seconds)]
    pub hetzner_boot_timeout: Duration,

    /// Longest wait for the Node to join and be Ready (phase `WaitingForJoin`) before `JoinTimeout`.
    #[arg(long, env = "OPERATOR_HETZNER_JOIN_TIMEOUT", default_value = "15m", value_parser = parse_seconds)]
    pub hetzner_join_timeout: Duration,

    /// Longest wait for a delete action and the 404 after it, within one reconcile.
    #[arg(long, env = "OPERATOR_HETZNER_DELETE_WAIT", default_value = "6m", value_parser = parse_seconds)]
    pub hetzner_delete_wait: Duration,

    /// Requests per second the operator-wide Hetzner budget refills (Hetzner: 3,600/h = 1/s).
    #[arg(long, env = "OPERATOR_HETZNER_REFILL_PER_SECOND", default_value_t = 1.0)]
    pub hetzner_refill_per_second: f64,

    /// Burst of the Hetzner budget (the project's 3,600/h is shared with the CCM and people).
    #[arg(long, env = "OPERATOR_HETZNER_BURST", default_value_t = 120)]
    pub hetzner_burst: u32,

    /// Pause after the first 429 from Hetzner (doubled per further 429, up to the max).
    #[arg(long, env = "OPERATOR_HETZNER_BACKOFF", default_value = "1m", value_parser = parse_seconds)]
    pub hetzner_backoff: Duration,

    /// Longest pause after repeated 429s.
    #[arg(long, env = "OPERATOR_HETZNER_BACKOFF_MAX", default_value = "15m", value_parser = parse_seconds)]
    pub hetzner_backoff_max: Duration,
}
