//! Prometheus metrics of the operator.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Reconciles by result (`success` or an error reason) and the stage that failed.
    pub reconciles: IntCounterVec,
    pub reconcile_seconds: Histogram,
    /// API writes by kind: the idle operator must keep these flat.
    pub api_writes: IntCounterVec,
    /// Server-side-apply dry runs (reads that confirm a suspected drift), by kind.
    pub api_dry_runs: IntCounterVec,
    /// Relay objects that could not be read as a Relay (skipped, the others go on).
    pub invalid_objects: prometheus::IntCounter,
    /// 1 while this replica holds the leader Lease (or leader election is off).
    pub leader: IntGauge,
    /// Requests to relays' internal listeners for `status.runtime`, by result.
    pub runtime_scrapes: IntCounterVec,
    /// Hetzner Cloud API requests sent, by operation (from the operator-wide budget).
    pub hetzner_requests: IntCounterVec,
    /// Hetzner calls refused locally because the budget was spent or paused after a 429.
    pub hetzner_throttled: prometheus::IntCounter,
    /// 429 answers from the Hetzner API.
    pub hetzner_rate_limited: prometheus::IntCounter,
    /// 1 while the last Hetzner answer was not a 429, 401/403 or transport failure.
    pub hetzner_api_healthy: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("relay_operator_reconciles_total", "Reconciles of Relays by result and failed stage"),
            &["result", "stage"],
        )
        .expect("valid metric");
        let reconcile_seconds = Histogram::with_opts(
            HistogramOpts::new("relay_operator_reconcile_duration_seconds", "Duration of one reconcile")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");
        let api_writes = IntCounterVec::new(
            Opts::new(
                "relay_operator_api_writes_total",
                "Create/patch requests sent to the API server, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let api_dry_runs = IntCounterVec::new(
            Opts::new(
                "relay_operator_api_dry_runs_total",
                "Server-side-apply dry runs that checked a suspected drift (not writes), by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let invalid_objects = prometheus::IntCounter::new(
            "relay_operator_invalid_objects_total",
            "Relay objects that could not be read as a Relay (skipped; the others are reconciled)",
        )
        .expect("valid metric");
        let runtime_scrapes = IntCounterVec::new(
            Opts::new(
                "relay_operator_runtime_scrapes_total",
                "GET /metrics requests to relays for status.runtime (one per relay per interval), by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let hetzner_requests = IntCounterVec::new(
            Opts::new(
                "relay_operator_hetzner_requests_total",
                "Hetzner Cloud API requests sent, by operation (retries count again)",
            ),
            &["operation"],
        )
        .expect("valid metric");
        let hetzner_throttled = prometheus::IntCounter::new(
            "relay_operator_hetzner_throttled_total",
            "Hetzner calls refused locally by the operator-wide rate budget (no request sent)",
        )
        .expect("valid metric");
        let hetzner_rate_limited = prometheus::IntCounter::new(
            "relay_operator_hetzner_rate_limited_total",
            "429 answers from the Hetzner API (each pauses all calls for minutes)",
        )
        .expect("valid metric");
        let hetzner_api_healthy = IntGauge::new(
            "relay_operator_hetzner_api_healthy",
            "1 while the Hetzner API answers normally; 0 after a 429, a refused token or a transport failure",
        )
        .expect("valid metric");
        let leader = IntGauge::new("relay_operator_leader", "1 while this replica is the active leader")
            .expect("valid metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_seconds.clone()),
            Box::new(api_writes.clone()),
            Box::new(api_dry_runs.clone()),
            Box::new(invalid_objects.clone()),
            Box::new(leader.clone()),
            Box::new(runtime_scrapes.clone()),
            Box::new(hetzner_requests.clone()),
            Box::new(hetzner_throttled.clone()),
            Box::new(hetzner_rate_limited.clone()),
            Box::new(hetzner_api_healthy.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Metrics {
            registry,
            reconciles,
            reconcile_seconds,
            api_writes,
            api_dry_runs,
            invalid_objects,
            leader,
            runtime_scrapes,
            hetzner_requests,
            hetzner_throttled,
            hetzner_rate_limited,
            hetzner_api_healthy,
        }
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
