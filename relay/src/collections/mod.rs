//! The collection directory: `com.atproto.sync.listReposByCollection` served from an inline
//! RocksDB index that the relay keeps complete by itself.
//!
//! - [`index`]: the RocksDB layout and every change it accepts (idempotent);
//! - [`live`]: follows the relay's validated output and indexes creates, last deletes and
//!   account status changes;
//! - [`verify`]: settles DIDs that need a look at the network: pairs found by a backfill
//!   (listed only once the DID's identity checks out) and repos whose commit could not tell
//!   whether a collection emptied (`describeRepo`);
//! - [`backfill`]: import from an upstream's `listReposByCollection`, and crawl of hosts'
//!   `listRepos`, resumable from progress kept in SQL;
//! - [`prune`]: a periodic pass that hides accounts whose host is gone or banned;
//! - [`ratelimit`]: per-host pacing that honours `Retry-After` and `RateLimit-*`.

pub mod backfill;
pub mod index;
pub mod live;
pub mod prune;
pub mod ratelimit;
pub mod verify;

use crate::config::ServeConfig;
use index::{Index, IndexConfig};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The pending-key marker that asks for a `describeRepo` check rather than an import check.
pub const CHECK_MARKER: &str = "";

/// Settings of the collection directory, derived from [`ServeConfig`].
#[derive(Debug, Clone)]
pub struct CollectionsConfig {
    pub dir: PathBuf,
    pub index: IndexConfig,
    pub host_requests_per_second: f64,
    pub max_backoff: Duration,
    pub import_page_size: usize,
    pub import_concurrency: usize,
    pub crawl_concurrency: usize,
    pub verify_concurrency: usize,
    pub verify_identity: bool,
    pub prune_interval: Duration,
    pub allow_insecure_hosts: bool,
}

impl CollectionsConfig {
    pub fn from_serve(config: &ServeConfig) -> CollectionsConfig {
        CollectionsConfig {
            dir: config.collections_dir.clone().unwrap_or_else(|| config.data_dir.join("collections")),
            index: IndexConfig {
                block_cache_bytes: config.collections_cache_bytes,
                write_buffer_bytes: config.collections_write_buffer_bytes,
                fact_cache_bytes: config.collections_fact_cache_bytes,
            },
            host_requests_per_second: config.backfill_host_requests_per_second,
            max_backoff: config.max_backoff,
            import_page_size: config.backfill_page_size.clamp(1, 2000),
            import_concurrency: config.backfill_concurrency.max(1),
            crawl_concurrency: config.backfill_concurrency.max(1),
            verify_concurrency: config.backfill_verify_concurrency.max(1),
            verify_identity: config.backfill_verify_identity,
            prune_interval: config.collections_prune_interval,
            allow_insecure_hosts: config.allow_insecure_hosts,
        }
    }
}

/// Metrics of the collection directory (registered in the relay's registry).
#[derive(Clone)]
pub struct CollectionMetrics {
    pub pairs: IntGauge,
    pub changes: IntCounterVec,
    pub indexed_seq: IntGauge,
    pub fell_behind: IntCounter,
    pub describe_fallbacks: IntCounter,
    pub backfill_dids: IntCounterVec,
    pub backfill_pages: IntCounterVec,
    pub backfill_rate_limited: IntCounter,
    pub backfill_errors: IntCounterVec,
    pub verified: IntCounterVec,
    pub pending: IntGauge,
    pub pruned: IntCounterVec,
    pub top_collections: IntGaugeVec,
    /// Distinct collections with at least one listed DID.
    pub collections: IntGauge,
    pub list_seconds: prometheus::Histogram,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

impl CollectionMetrics {
    pub fn new(registry: &Registry) -> CollectionMetrics {
        let counter =
            |name: &str, help: &str| register(registry, IntCounter::new(name, help).expect("metric"));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("metric"))
        };
        let gauge = |name: &str, help: &str| register(registry, IntGauge::new(name, help).expect("metric"));
        let metrics = CollectionMetrics {
            pairs: gauge("relay_collections_pairs", "Listed (DID, collection) pairs (RocksDB estimate)"),
            changes: counter_vec(
                "relay_collections_changes_total",
                "Listed pairs added and removed by the index",
                &["change"],
            ),
            indexed_seq: gauge("relay_collections_indexed_seq", "Relay seq the live indexer has applied"),
            fell_behind: counter(
                "relay_collections_fell_behind_total",
                "Times the live indexer fell out of the replay window",
            ),
            describe_fallbacks: counter(
                "relay_collections_describe_fallbacks_total",
                "Events whose proof could not tell whether a collection emptied (describeRepo queued)",
            ),
            backfill_dids: counter_vec(
                "relay_backfill_dids_total",
                "DIDs found by backfill jobs, by job kind",
                &["kind"],
            ),
            backfill_pages: counter_vec(
                "relay_backfill_pages_total",
                "Pages fetched by backfill jobs",
                &["kind"],
            ),
            backfill_rate_limited: counter(
                "relay_backfill_rate_limited_total",
                "HTTP 429 responses seen by backfill and verification",
            ),
            backfill_errors: counter_vec(
                "relay_backfill_errors_total",
                "Failed backfill requests (retried), by kind",
                &["kind"],
            ),
            verified: counter_vec(
                "relay_collections_verified_total",
                "DIDs settled by verification, by result",
                &["result"],
            ),
            pending: gauge("relay_collections_pending", "Pairs waiting for verification (RocksDB estimate)"),
            pruned: counter_vec(
                "relay_collections_pruned_total",
                "Accounts hidden by pruning, by reason",
                &["reason"],
            ),
            collections: gauge("relay_collections", "Distinct collections with at least one listed DID"),
            top_collections: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "relay_collection_dids",
                        "Listed DIDs of the largest collections (top 20 only)",
                    ),
                    &["collection"],
                )
                .expect("metric"),
            ),
            list_seconds: register(
                registry,
                prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "relay_collections_list_seconds",
                        "listReposByCollection index read time",
                    )
                    .buckets(vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25]),
                )
                .expect("metric"),
            ),
        };
        metrics.initialise_series();
        metrics
    }

    /// Puts a zero series of each labelled counter in `/metrics` from the start: a counter
    /// vector with no series prints nothing, so rates and alerts over it (and the check
    /// that dashboards name real metrics) would see no metric at all until first used.
    fn initialise_series(&self) {
        for kind in ["import", "crawl"] {
            self.backfill_dids.with_label_values(&[kind]);
            self.backfill_pages.with_label_values(&[kind]);
        }
        for kind in ["import", "crawl", "describe"] {
            self.backfill_errors.with_label_values(&[kind]);
        }
        for result in ["listed", "deleted", "deferred"] {
            self.verified.with_label_values(&[result]);
        }
        for change in ["added", "removed"] {
            self.changes.with_label_values(&[change]);
        }
        for reason in ["inactive", "host_gone", "no_pds", "tombstoned", "unknown_host"] {
            self.pruned.with_label_values(&[reason]);
        }
    }

    pub fn note_changes(&self, added: u64, removed: u64) {
        self.changes.with_label_values(&["added"]).inc_by(added);
        self.changes.with_label_values(&["removed"]).inc_by(removed);
    }
}

/// The running collection directory.
pub struct Collections {
    pub config: CollectionsConfig,
    pub index: Arc<Index>,
    pub metrics: CollectionMetrics,
    pub limiter: ratelimit::HostLimiter,
    pub client: reqwest::Client,
    pub jobs: Mutex<backfill::Jobs>,
    /// Wakes the verifier when new work is queued.
    pub work: tokio::sync::Notify,
}

impl Collections {
    pub fn open(
        config: CollectionsConfig,
        registry: &Registry,
    ) -> Result<Arc<Collections>, index::IndexError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| index::IndexError::Io(format!("creating {}: {e}", config.dir.display())))?;
        let index = Arc::new(Index::open(&config.dir, &config.index)?);
        let limiter = ratelimit::HostLimiter::new(config.host_requests_per_second, config.max_backoff);
        let client = crate::identity::ssrf::guarded_client(
            crate::identity::ssrf::SsrfPolicy { allow_loopback: config.allow_insecure_hosts },
            Duration::from_secs(30),
        );
        Ok(Arc::new(Collections {
            config,
            index,
            metrics: CollectionMetrics::new(registry),
            limiter,
            client,
            jobs: Mutex::new(backfill::Jobs::default()),
            work: tokio::sync::Notify::new(),
        }))
    }

    /// Queues a `describeRepo` check for a DID (persisted, so a restart does not lose it).
    pub fn request_check(&self, did: &str) {
        let pair = [(did.to_string(), CHECK_MARKER.to_string())];
        if let Err(error) = self.index.add_pending(&pair) {
            tracing::warn!(%error, %did, "collections: queueing a describeRepo check");
        }
        self.work.notify_one();
    }

    /// Stops using RocksDB (graceful shutdown): background work ends at its next step.
    pub fn close(&self) {
        self.index.close();
        self.work.notify_waiters();
    }

    /// Refreshes gauges that come from RocksDB estimates and the top-N collections.
    pub fn refresh_gauges(&self) {
        self.metrics.pairs.set(self.index.pairs_estimate() as i64);
        self.metrics.pending.set(self.index.pending_estimate() as i64);
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        while let Ok(page) = self.index.collections(after.as_deref(), 10_000) {
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            all.extend(page);
        }
        self.metrics.collections.set(all.len() as i64);
        all.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        self.metrics.top_collections.reset();
        for (collection, count) in all.iter().take(20) {
            self.metrics.top_collections.with_label_values(&[collection]).set(*count);
        }
    }
}

/// What the collection directory's background work reads besides its own index: the
/// accounts table and hosts (is an account still active, is its PDS gone) and identities.
#[derive(Clone)]
pub struct Lookups {
    pub store: crate::storage::Store,
    pub resolver: Arc<crate::identity::Resolver>,
}

/// Starts live indexing, verification, pruning and the gauge refresher; returns their
/// tasks (shutdown stops them before the index closes).
pub fn spawn(
    lookups: Lookups,
    fanout: Arc<crate::fanout::Fanout>,
    collections: &Arc<Collections>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let gauges = collections.clone();
    vec![
        tokio::spawn(live::run(collections.clone(), fanout)),
        tokio::spawn(verify::run(lookups.clone(), collections.clone())),
        tokio::spawn(prune::run(lookups, collections.clone())),
        tokio::spawn(async move {
            loop {
                let refresh = gauges.clone();
                let _ = tokio::task::spawn_blocking(move || refresh.refresh_gauges()).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }),
    ]
}

/// `listReposByCollection` cursors are opaque to clients: base64url of the last DID.
pub fn encode_cursor(did: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(did)
}

pub fn decode_cursor(cursor: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let did = String::from_utf8(bytes).ok()?;
    did.starts_with("did:").then_some(did)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = super::encode_cursor("did:plc:abc");
        assert_eq!(super::decode_cursor(&cursor).as_deref(), Some("did:plc:abc"));
        assert_eq!(super::decode_cursor("!!"), None);
        assert_eq!(super::decode_cursor(&super::encode_cursor("nope")), None);
    }
}
