//! Prometheus metrics. Labels are low-cardinality by construction: event types,
//! rejection reasons and host statuses are fixed sets; no DIDs or hostnames.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub events_in: IntCounterVec,
    pub events_accepted: IntCounterVec,
    pub rejections: IntCounterVec,
    pub chain_breaks: IntCounter,
    pub events_out: IntCounter,
    pub seq_head: IntGauge,
    pub log_write_seconds: Histogram,
    pub consumers: IntGauge,
    pub consumer_too_slow: IntCounter,
    pub consumer_delivery_lag_seconds: Histogram,
    pub hosts: IntGaugeVec,
    pub hosts_connected: IntGauge,
    pub host_throttled: IntCounter,
    pub cursor_flushes: IntCounter,
    pub queue_bytes: IntGaugeVec,
    pub identity_cache_entries: IntGauge,
    pub validation_seconds: Histogram,
    pub validation_step_seconds: HistogramVec,
    /// Resolved series of the per-event metrics (see [`ByEventType`]).
    pub events_in_by_type: ByEventType,
    pub events_accepted_by_type: ByEventType,
    pub validation_steps: ValidationSteps,
    pub validation_queue_bytes: IntGauge,
    pub sibling_forwards: IntCounterVec,
    pub identity_cache_bytes: IntGauge,
    pub identity_lookup_retries: IntCounter,
    pub identity_held_accounts: IntGauge,
    pub host_identity_throttled: IntCounter,
    pub log_write_failures: IntCounter,
    pub intake_stopped: IntGauge,
    pub consumers_refused: IntCounterVec,
    pub upstream_log_lines_suppressed: IntCounter,
    pub disk_free_bytes: IntGaugeVec,
    pub store_retries: IntCounter,
    pub resyncs: IntCounterVec,
    /// Coverage self-check (`--coverage-reference`); the label is a configured reference URL.
    pub coverage_ratio: GaugeVec,
    pub coverage_reference_commits: IntGaugeVec,
    pub coverage_low_samples: IntGaugeVec,
    pub coverage_samples: IntCounterVec,
}

/// One counter per event type, resolved once. `with_label_values` hashes the labels and takes
/// a lock on every call; done several times per event it cost ~2 % of the relay's CPU at
/// saturation (perf, 2026-12-01), so the hot paths hold the series themselves.
#[derive(Clone)]
pub struct ByEventType {
    vector: IntCounterVec,
    commit: IntCounter,
    sync: IntCounter,
    identity: IntCounter,
    account: IntCounter,
}

impl ByEventType {
    fn new(vector: IntCounterVec) -> ByEventType {
        let series = |label: &str| vector.with_label_values(&[label]);
        ByEventType {
            commit: series("#commit"),
            sync: series("#sync"),
            identity: series("#identity"),
            account: series("#account"),
            vector,
        }
    }

    /// Counts one event of `type_name` (as `Event::type_name` spells it).
    pub fn inc(&self, type_name: &str) {
        match type_name {
            "#commit" => self.commit.inc(),
            "#sync" => self.sync.inc(),
            "#identity" => self.identity.inc(),
            "#account" => self.account.inc(),
            other => self.vector.with_label_values(&[other]).inc(),
        }
    }
}

/// The validation stage's step histograms, resolved once (see [`ByEventType`]).
#[derive(Clone)]
pub struct ValidationSteps {
    pub account: Histogram,
    pub identity: Histogram,
    pub verify: Histogram,
    pub apply: Histogram,
    pub sequencer_queue: Histogram,
}

impl ValidationSteps {
    fn new(vector: &HistogramVec) -> ValidationSteps {
        let step = |name: &str| vector.with_label_values(&[name]);
        ValidationSteps {
            account: step("account"),
            identity: step("identity"),
            verify: step("verify"),
            apply: step("apply"),
            sequencer_queue: step("sequencer_queue"),
        }
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn float_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let metric = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let metric =
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            let _ = registry.register(Box::new(process));
        }
        let fast = vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];
        let events_in = counter_vec(
            &registry,
            "relay_events_received_total",
            "Events received from upstream hosts, by type",
            &["type"],
        );
        let events_accepted = counter_vec(
            &registry,
            "relay_events_accepted_total",
            "Events that passed validation, by type",
            &["type"],
        );
        let queue_bytes =
            gauge_vec(&registry, "relay_queue_bytes", "Bytes held in the queue between stages", &["queue"]);
        let validation_step_seconds = histogram_vec(
            &registry,
            "relay_validation_step_seconds",
            "Time of each step of handling one event in the validation stage (waits included)",
            &["step"],
            fast.clone(),
        );
        let events_in_by_type = ByEventType::new(events_in.clone());
        let events_accepted_by_type = ByEventType::new(events_accepted.clone());
        let validation_steps = ValidationSteps::new(&validation_step_seconds);
        let validation_queue_bytes = queue_bytes.with_label_values(&["validation"]);
        let metrics = Metrics {
            events_in,
            events_accepted,
            rejections: counter_vec(
                &registry,
                "relay_events_rejected_total",
                "Events dropped, by reason",
                &["reason"],
            ),
            chain_breaks: counter(
                &registry,
                "relay_chain_breaks_total",
                "Accepted commits whose since/prevData did not follow the last known state",
            ),
            events_out: counter(
                &registry,
                "relay_events_sequenced_total",
                "Events written to the log and broadcast",
            ),
            seq_head: gauge(&registry, "relay_seq_head", "Highest sequence number written"),
            log_write_seconds: histogram(
                &registry,
                "relay_log_write_seconds",
                "Time to write and fsync one batch",
                fast.clone(),
            ),
            consumers: gauge(&registry, "relay_consumers", "Connected firehose consumers"),
            consumer_too_slow: counter(
                &registry,
                "relay_consumers_too_slow_total",
                "Consumers closed because they fell out of the replay window",
            ),
            consumer_delivery_lag_seconds: histogram(
                &registry,
                "relay_consumer_delivery_lag_seconds",
                "Per consumer write: age of its oldest event (since sequencing) when the write was flushed",
                vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0],
            ),
            hosts: gauge_vec(&registry, "relay_hosts", "Known upstream hosts, by status", &["status"]),
            cursor_flushes: counter(
                &registry,
                "relay_cursor_flushes_total",
                "Transactions that saved the upstream cursors of every host that moved",
            ),
            host_throttled: counter(
                &registry,
                "relay_host_throttled_events_total",
                "Events read later than they arrived because their host exceeded its event rate",
            ),
            hosts_connected: gauge(
                &registry,
                "relay_hosts_connected",
                "Upstream hosts with an open subscription",
            ),
            queue_bytes,
            identity_cache_entries: gauge(
                &registry,
                "relay_identity_cache_entries",
                "Entries in the DID resolution cache",
            ),
            validation_seconds: histogram(
                &registry,
                "relay_validation_seconds",
                "Time to validate one event",
                fast.clone(),
            ),
            validation_step_seconds,
            events_in_by_type,
            events_accepted_by_type,
            validation_steps,
            validation_queue_bytes,
            sibling_forwards: counter_vec(
                &registry,
                "relay_sibling_forwards_total",
                "Requests forwarded to sibling relays, by result (ok, refused, failed)",
                &["result"],
            ),
            identity_cache_bytes: gauge(
                &registry,
                "relay_identity_cache_bytes",
                "Bytes held by the DID resolution cache (bounded by RELAY_IDENT_CACHE_BYTES)",
            ),
            identity_lookup_retries: counter(
                &registry,
                "relay_identity_lookup_retries_total",
                "Identity lookups retried after a transient failure (the account's events were held, not dropped)",
            ),
            identity_held_accounts: gauge(
                &registry,
                "relay_identity_held_accounts",
                "Accounts whose events are waiting for their identity lookup to succeed",
            ),
            host_identity_throttled: counter(
                &registry,
                "relay_host_identity_throttled_events_total",
                "Events read later because their host exceeded its identity lookup budget",
            ),
            log_write_failures: counter(
                &registry,
                "relay_log_write_failures_total",
                "Event log writes that failed (the batch is retried; nothing is acknowledged upstream meanwhile)",
            ),
            intake_stopped: gauge(
                &registry,
                "relay_intake_stopped",
                "1 while the event log cannot be written and intake is stopped (see /_health for the reason)",
            ),
            consumers_refused: counter_vec(
                &registry,
                "relay_consumers_refused_total",
                "Firehose connections refused, by limit (total, per_ip)",
                &["limit"],
            ),
            upstream_log_lines_suppressed: counter(
                &registry,
                "relay_upstream_log_lines_suppressed_total",
                "Log lines about upstream input not written because of the per-host log rate limit",
            ),
            disk_free_bytes: gauge_vec(
                &registry,
                "relay_disk_free_bytes",
                "Bytes free on the filesystem of the data directory and of the event log",
                &["dir"],
            ),
            store_retries: counter(
                &registry,
                "relay_store_retries_total",
                "Database calls of the validation stage retried after an error (the event was held, not dropped)",
            ),
            resyncs: counter_vec(
                &registry,
                "relay_admin_resyncs_total",
                "Accounts re-synced through the admin API, by result (queued, failed)",
                &["result"],
            ),
            coverage_ratio: float_gauge_vec(
                &registry,
                "relay_coverage_ratio",
                "Share of the reference relay's commits (last sample's window) this relay delivered too",
                &["reference"],
            ),
            coverage_reference_commits: gauge_vec(
                &registry,
                "relay_coverage_reference_commits",
                "Commits the reference relay delivered in the last sample's window",
                &["reference"],
            ),
            coverage_low_samples: gauge_vec(
                &registry,
                "relay_coverage_low_samples",
                "Samples in a row whose coverage was below the threshold (readiness fails at 2)",
                &["reference"],
            ),
            coverage_samples: counter_vec(
                &registry,
                "relay_coverage_samples_total",
                "Coverage samples, by result (ok, low, too_few, truncated, failed)",
                &["reference", "result"],
            ),
            registry,
        };
        metrics.initialise_series();
        metrics
    }

    /// Puts a zero series of each labelled counter in `/metrics` from the start: a counter
    /// vector with no series prints nothing, so a rate over it (and the check that
    /// dashboards and alerts name real metrics) would find no metric until first used.
    fn initialise_series(&self) {
        // The event-type series exist from the start: `ByEventType` resolves them.
        // The reasons ingest and the validation stage give themselves; the verdict's own
        // reasons appear as they happen.
        for reason in [
            "bad_frame",
            "oversize",
            "oversize_frame",
            "seq_not_increasing",
            "unknown_type",
            "upstream_error",
            "upstream_info",
            "host_account_limit",
        ] {
            self.rejections.with_label_values(&[reason]);
        }
        for limit in ["total", "per_ip"] {
            self.consumers_refused.with_label_values(&[limit]);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(%error, "encoding metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
