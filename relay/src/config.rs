//! `relay serve` configuration: one struct, every setting a flag and an environment
//! variable (indigo's names where the concept is the same), every limit with its default.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 72h, 30m, 10s"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => return Ok(Duration::from_millis(value)),
        "m" => value * 60,
        "h" => value * 3600,
        "d" => value * 86_400,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs(seconds))
}

#[derive(Args, Debug, Clone)]
pub struct ServeConfig {
    /// Data directory: SQLite database and event log live here unless overridden.
    #[arg(long, env = "RELAY_DATA_DIR", default_value = "data/relay")]
    pub data_dir: PathBuf,

    /// Database URL: sqlite://PATH or postgres://... Default: SQLite in the data dir.
    #[arg(long = "db-url", env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Maximum database connections.
    #[arg(long, env = "MAX_DB_CONNECTIONS", default_value_t = 40)]
    pub max_db_connections: u32,

    /// Event log directory. Default: <data-dir>/persist.
    #[arg(long, env = "RELAY_PERSIST_DIR")]
    pub persist_dir: Option<PathBuf>,

    /// How long events stay replayable for consumers with a cursor.
    #[arg(long, env = "RELAY_REPLAY_WINDOW", default_value = "72h", value_parser = parse_duration)]
    pub replay_window: Duration,

    /// Event log segment size in bytes.
    #[arg(long, env = "RELAY_LOG_SEGMENT_BYTES", default_value_t = 256 << 20)]
    pub log_segment_bytes: u64,

    /// Bytes of event log between two entries of a segment's in-memory seek index (a replay
    /// from a cursor scans at most this much before its first event).
    #[arg(long, env = "RELAY_LOG_INDEX_STRIDE_BYTES", default_value_t = crate::sequence::log::DEFAULT_INDEX_STRIDE_BYTES)]
    pub log_index_stride_bytes: u64,

    /// Public listener: firehose and XRPC.
    #[arg(long = "bind", env = "RELAY_API_BIND", default_value = "0.0.0.0:2470")]
    pub api_bind: String,

    /// Internal listener: admin API, metrics, health and readiness.
    #[arg(long = "metrics-listen", env = "RELAY_METRICS_LISTEN", default_value = "0.0.0.0:2471")]
    pub internal_bind: String,

    /// Admin tokens (comma-separated; several allow rotation). Accepted as Bearer or Basic admin:<token>.
    #[arg(long = "admin-password", env = "RELAY_ADMIN_PASSWORD", value_delimiter = ',')]
    pub admin_tokens: Vec<String>,

    /// PLC directory URL (trusted, even on loopback).
    #[arg(long = "plc-host", env = "RELAY_PLC_HOST", default_value = "https://plc.directory")]
    pub plc_url: String,

    /// Bootstrap relay whose listHosts seeds the host list; empty disables bootstrap.
    #[arg(long, env = "RELAY_UPSTREAM", default_value = "bsky.network")]
    pub upstream: String,

    /// Accounts allowed per new, untrusted host.
    #[arg(long, env = "RELAY_DEFAULT_ACCOUNT_LIMIT", default_value_t = 100)]
    pub default_account_limit: i64,

    /// Accounts allowed per trusted host.
    #[arg(long, env = "RELAY_TRUSTED_ACCOUNT_LIMIT", default_value_t = 10_000_000)]
    pub trusted_account_limit: i64,

    /// New hosts accepted per day through public requestCrawl.
    #[arg(long, env = "RELAY_NEW_HOSTS_PER_DAY_LIMIT", default_value_t = 50)]
    pub new_hosts_per_day: u32,

    /// Trusted host patterns (exact, or "*.suffix"); comma-separated.
    #[arg(long, env = "RELAY_TRUSTED_DOMAINS", value_delimiter = ',', default_value = "*.host.bsky.network")]
    pub trusted_domains: Vec<String>,

    /// Allow http/ws hosts and loopback targets (development and tests on one machine).
    #[arg(long, env = "RELAY_ALLOW_INSECURE_HOSTS")]
    pub allow_insecure_hosts: bool,

    /// Accept pre-Sync-1.1 upstreams (no prevData / op prev) from every host.
    #[arg(long, env = "RELAY_LENIENT_SYNC_VALIDATION")]
    pub lenient_sync_validation: bool,

    /// Hosts whose events are validated leniently (pre-Sync-1.1: no prevData / op prev),
    /// the others staying strict; exact names or "*.suffix", comma-separated. Empty: none.
    #[arg(long, env = "RELAY_LENIENT_HOSTS", value_delimiter = ',')]
    pub lenient_hosts: Vec<String>,

    /// Lowest seq the relay emits.
    /// At most 2^53 - 1, so JavaScript consumers read every seq exactly.
    #[arg(long, env = "RELAY_INITIAL_SEQ_NUMBER", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=crate::atproto::cbor::MAX_SAFE_INTEGER))]
    pub initial_seq_number: u64,

    /// Sibling relays (base URLs, comma-separated) that successful requestCrawl and host/account
    /// admin changes are forwarded to (indigo's RELAY_SIBLING_RELAYS). For relays of this
    /// project, give their internal listener's URL.
    #[arg(long, env = "RELAY_SIBLING_RELAYS", value_delimiter = ',')]
    pub sibling_relays: Vec<String>,

    /// Refuse public requestCrawl.
    #[arg(long, env = "RELAY_DISABLE_REQUEST_CRAWL")]
    pub disable_request_crawl: bool,

    /// Validation workers (async tasks; per-DID order is kept). Many more than cores, so
    /// that identity lookups and database waits of some accounts do not idle the CPU.
    #[arg(long, env = "RELAY_VALIDATION_WORKERS", default_value_t = 64)]
    pub validation_workers: usize,

    /// Byte budget of the queue between ingest and validation.
    #[arg(long, env = "RELAY_INGEST_QUEUE_BYTES", default_value_t = 64 << 20)]
    pub ingest_queue_bytes: usize,

    /// Events queued between validation and the sequencer.
    #[arg(long, env = "RELAY_SEQUENCER_QUEUE_EVENTS", default_value_t = 4096)]
    pub sequencer_queue_events: usize,

    /// How long the sequencer waits for more events before writing a small batch: fewer
    /// fsyncs and fewer wake-ups of every consumer, for at most this much added latency.
    #[arg(long, env = "RELAY_SEQUENCER_LINGER", default_value = "2ms", value_parser = parse_duration)]
    pub sequencer_linger: Duration,

    /// Events kept in memory for live consumers.
    #[arg(long, env = "RELAY_LIVE_BUFFER_EVENTS", default_value_t = 8192)]
    pub live_buffer_events: usize,

    /// Identity cache entries.
    #[arg(long, env = "RELAY_IDENT_CACHE_SIZE", default_value_t = 1_000_000)]
    pub identity_cache_entries: usize,

    /// Memory bound of the identity cache, bytes (whichever of this and the entry count
    /// is reached first evicts).
    #[arg(long, env = "RELAY_IDENT_CACHE_BYTES", default_value_t = 192 << 20)]
    pub identity_cache_bytes: usize,

    /// Memory bound of the account cache in front of the database, bytes.
    #[arg(long, env = "RELAY_ACCOUNT_CACHE_BYTES", default_value_t = 64 << 20)]
    pub account_cache_bytes: usize,

    /// Identity lookups per second one untrusted host's events may cause (DIDs not in the
    /// cache, and every `#identity`); beyond it the host's socket is read more slowly, so a
    /// host cannot make the relay query the directory on its behalf without bound.
    #[arg(long, env = "RELAY_HOST_IDENTITY_LOOKUPS_PER_SECOND", default_value_t = 20.0)]
    pub host_identity_lookups_per_second: f64,

    /// Identity lookups per second a trusted host's events may cause.
    #[arg(long, env = "RELAY_TRUSTED_HOST_IDENTITY_LOOKUPS_PER_SECOND", default_value_t = 2000.0)]
    pub trusted_host_identity_lookups_per_second: f64,

    /// How long an account's events wait for its did:web host to answer before they are
    /// dropped as `identity_unavailable`. A PLC directory that cannot answer holds events
    /// for as long as it takes (it is the relay's own dependency, not the account's).
    #[arg(long, env = "RELAY_DID_WEB_HOLD", default_value = "2m", value_parser = parse_duration)]
    pub did_web_hold: Duration,

    /// Events per second taken from an untrusted host; beyond it the relay reads the socket
    /// more slowly (the host is slowed down, nothing is dropped).
    #[arg(long, env = "RELAY_HOST_EVENTS_PER_SECOND", default_value_t = 50.0)]
    pub host_events_per_second: f64,

    /// Events per second taken from a trusted host.
    #[arg(long, env = "RELAY_TRUSTED_HOST_EVENTS_PER_SECOND", default_value_t = 5000.0)]
    pub trusted_host_events_per_second: f64,

    /// How often the upstream cursors of all hosts are saved (one transaction for all that
    /// moved). A crash loses nothing either way: hosts re-send from the saved cursor and
    /// duplicates are dropped by rev.
    #[arg(long, env = "RELAY_CURSOR_FLUSH_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub cursor_flush_interval: Duration,

    /// A connected host that sends nothing for this long is marked `idle` (0 disables).
    #[arg(long, env = "RELAY_IDLE_AFTER", default_value = "12h", value_parser = parse_duration)]
    pub idle_after: Duration,

    /// Re-read the upstream's listHosts this often to discover new hosts (0 disables).
    #[arg(long, env = "RELAY_REDISCOVERY_INTERVAL", default_value = "6h", value_parser = parse_duration)]
    pub rediscovery_interval: Duration,

    /// Seconds between dials when starting many host subscriptions.
    #[arg(long, env = "RELAY_CONNECT_STAGGER", default_value = "20ms", value_parser = parse_duration)]
    pub connect_stagger: Duration,

    /// Longest backoff between reconnects to a failing host.
    #[arg(long, env = "RELAY_MAX_BACKOFF", default_value = "5m", value_parser = parse_duration)]
    pub max_backoff: Duration,

    /// Readiness fails when no event has been accepted for this long (0 disables).
    #[arg(long, env = "RELAY_READY_MAX_SILENCE", default_value = "5m", value_parser = parse_duration)]
    pub ready_max_silence: Duration,

    /// Readiness fails when fewer than this share of active hosts are connected.
    #[arg(long, env = "RELAY_READY_MIN_CONNECTED_SHARE", default_value_t = 0.5)]
    pub ready_min_connected_share: f64,

    /// Collection directory (listReposByCollection index). Default: <data-dir>/collections.
    #[arg(long, env = "RELAY_COLLECTIONS_DIR")]
    pub collections_dir: Option<PathBuf>,

    /// Turn the collection directory (index, listReposByCollection, backfill) off.
    #[arg(long, env = "RELAY_COLLECTIONS_DISABLED")]
    pub collections_disabled: bool,

    /// RocksDB block cache of the collection index, bytes.
    #[arg(long, env = "RELAY_COLLECTIONS_CACHE_BYTES", default_value_t = 64 << 20)]
    pub collections_cache_bytes: usize,

    /// RocksDB write buffer per column family of the collection index, bytes (all
    /// memtables together are bounded by four times this).
    #[arg(long, env = "RELAY_COLLECTIONS_WRITE_BUFFER_BYTES", default_value_t = 16 << 20)]
    pub collections_write_buffer_bytes: usize,

    /// Memory for recent index answers kept in front of RocksDB (which repos list which
    /// collections, which accounts are active), bytes.
    #[arg(long, env = "RELAY_COLLECTIONS_FACT_CACHE_BYTES", default_value_t = 16 << 20)]
    pub collections_fact_cache_bytes: usize,

    /// How often the pruning pass over the collection index starts (0 disables).
    #[arg(long, env = "RELAY_COLLECTIONS_PRUNE_INTERVAL", default_value = "6h", value_parser = parse_duration)]
    pub collections_prune_interval: Duration,

    /// Upstream whose listReposByCollection a backfill imports (zlay's `source`); empty: none
    /// at start (admins can still start one through the admin API).
    #[arg(long, env = "RELAY_BACKFILL_SOURCE", default_value = "")]
    pub backfill_source: String,

    /// Collections (NSIDs, comma-separated) to import from the backfill source at start.
    #[arg(long, env = "RELAY_BACKFILL_COLLECTIONS", value_delimiter = ',')]
    pub backfill_collections: Vec<String>,

    /// URL of a newline-separated NSID list to import (lexicon garden's llms.txt style).
    #[arg(long, env = "RELAY_BACKFILL_COLLECTIONS_URL")]
    pub backfill_collections_url: Option<String>,

    /// Crawl every host's listRepos + describeRepo at start (when no crawl has finished yet).
    #[arg(long, env = "RELAY_BACKFILL_CRAWL")]
    pub backfill_crawl: bool,

    /// Requests per second a backfill sends to one host (429s and Retry-After slow it further).
    #[arg(long, env = "RELAY_BACKFILL_HOST_REQUESTS_PER_SECOND", default_value_t = 8.0)]
    pub backfill_host_requests_per_second: f64,

    /// DIDs per import page (the lexicon allows up to 2000; zlay and indigo use 1000).
    #[arg(long, env = "RELAY_BACKFILL_PAGE_SIZE", default_value_t = 1000)]
    pub backfill_page_size: usize,

    /// Collections imported, or hosts crawled, at the same time.
    #[arg(long, env = "RELAY_BACKFILL_CONCURRENCY", default_value_t = 4)]
    pub backfill_concurrency: usize,

    /// DIDs verified at the same time (identity lookups, describeRepo calls).
    #[arg(long, env = "RELAY_BACKFILL_VERIFY_CONCURRENCY", default_value_t = 32)]
    pub backfill_verify_concurrency: usize,

    /// Verify each imported DID's identity (resolves, PDS is a live known host) before listing
    /// it. Off trusts the source, as zlay does.
    #[arg(long, env = "RELAY_BACKFILL_VERIFY_IDENTITY", default_value_t = true, action = clap::ArgAction::Set)]
    pub backfill_verify_identity: bool,

    /// Firehose consumers connected at once; more are refused with 503 TooManyConsumers.
    #[arg(long, env = "RELAY_MAX_CONSUMERS", default_value_t = 10_000)]
    pub max_consumers: usize,

    /// Firehose consumers connected at once from one IP address; more get 429. Behind a
    /// proxy every consumer has the proxy's address: raise this, or limit at the proxy.
    #[arg(long, env = "RELAY_MAX_CONSUMERS_PER_IP", default_value_t = 100)]
    pub max_consumers_per_ip: usize,

    /// A consumer write that takes longer than this closes the connection.
    #[arg(long, env = "RELAY_CONSUMER_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub consumer_write_timeout: Duration,

    /// Interval between WebSocket pings to each consumer.
    #[arg(long, env = "RELAY_CONSUMER_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub consumer_ping_interval: Duration,

    /// Longest wait for one upstream connection (DNS, TCP, TLS and the WebSocket upgrade).
    #[arg(long, env = "RELAY_UPSTREAM_CONNECT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// Longest wait for a new host's `describeServer` probe (requestCrawl, bootstrap).
    #[arg(long, env = "RELAY_CRAWL_PROBE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub crawl_probe_timeout: Duration,

    /// Longest wait for the ordered shutdown (ingest stops, queues drain, the log and the
    /// indexes close) before the process exits anyway; what was not durable by then is
    /// re-sent by the hosts after the restart.
    #[arg(long, env = "RELAY_SHUTDOWN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// An upstream connection that delivers nothing for this long is treated as dead and
    /// reconnected (an idle host is normal; a dead TCP connection must not hang forever).
    #[arg(long, env = "RELAY_UPSTREAM_READ_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub upstream_read_timeout: Duration,

    /// Events each validation shard's queue holds (the byte budget bounds memory; this only
    /// absorbs bursts).
    #[arg(long, env = "RELAY_VALIDATION_SHARD_QUEUE_EVENTS", default_value_t = 1024)]
    pub validation_shard_queue_events: usize,

    /// Repo state updates queued between the sequencer and the SQL writer (the sequencer waits
    /// when it is full).
    #[arg(long, env = "RELAY_STATE_QUEUE_UPDATES", default_value_t = 65_536)]
    pub state_queue_updates: usize,

    /// Let the allocator use transparent huge pages (off by default: freed memory handed
    /// back to the kernel in small runs made every later touch zero a whole 2 MiB page,
    /// which cost CPU and inflated RSS).
    #[arg(long, env = "RELAY_TRANSPARENT_HUGE_PAGES")]
    pub transparent_huge_pages: bool,

    /// How long the repo state writer gathers updates before storing them in one
    /// transaction (SQL's copy of repo state lags the log by at most about this much).
    #[arg(long, env = "RELAY_STATE_FLUSH_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub state_flush_interval: Duration,

    /// Longest wait for a consumer's closing handshake before its socket is dropped.
    #[arg(long, env = "RELAY_CONSUMER_CLOSE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub consumer_close_timeout: Duration,

    /// Free bytes the data and event log directories need for the relay to start (a relay
    /// started on a full disk refuses with a clear message instead of failing later).
    #[arg(long, env = "RELAY_MIN_FREE_DISK_BYTES", default_value_t = 64 << 20)]
    pub min_free_disk_bytes: u64,

    /// fsync the event log before broadcasting (turn off only for throwaway test runs).
    #[arg(long, env = "RELAY_LOG_FSYNC", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_fsync: bool,

    /// Reference relays whose firehose the relay samples to measure its own commit coverage
    /// (repeatable; comma-separated in the env). None: no self-check. See docs/coverage.md.
    #[arg(long = "coverage-reference", env = "RELAY_COVERAGE_REFERENCES", value_delimiter = ',')]
    pub coverage_references: Vec<String>,

    /// Length of one coverage sample's window.
    #[arg(long, env = "RELAY_COVERAGE_CHECK_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub coverage_window: Duration,

    /// Time between coverage samples (the first is taken one interval after start).
    #[arg(long, env = "RELAY_COVERAGE_CHECK_INTERVAL", default_value = "15m", value_parser = parse_duration)]
    pub coverage_interval: Duration,

    /// Margin around a sample's window for commits the relay delivers a little before or
    /// after the reference.
    #[arg(long, env = "RELAY_COVERAGE_CHECK_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub coverage_grace: Duration,

    /// Readiness fails when coverage stays below this share for two samples in a row.
    #[arg(long, env = "RELAY_COVERAGE_THRESHOLD", default_value_t = 0.70)]
    pub coverage_threshold: f64,
}

impl ServeConfig {
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("relay.sqlite").display()))
    }

    pub fn persist_dir(&self) -> PathBuf {
        self.persist_dir.clone().unwrap_or_else(|| self.data_dir.join("persist"))
    }

    pub fn workers(&self) -> usize {
        self.validation_workers.max(1)
    }

    /// Whether a hostname matches a trusted pattern.
    pub fn is_trusted(&self, hostname: &str) -> bool {
        matches_host_pattern(&self.trusted_domains, hostname)
    }

    /// Whether a host's events are validated leniently (`RELAY_LENIENT_HOSTS`).
    pub fn is_lenient_host(&self, hostname: &str) -> bool {
        matches_host_pattern(&self.lenient_hosts, hostname)
    }
}

/// Whether `hostname` matches one of `patterns`: exact (with or without the port), or
/// "*.suffix".
fn matches_host_pattern(patterns: &[String], hostname: &str) -> bool {
    let host = hostname.split(':').next().unwrap_or(hostname);
    patterns.iter().filter(|p| !p.is_empty()).any(|pattern| match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => host == pattern || hostname == pattern,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_seq_stays_within_javascript_integers() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: ServeConfig,
        }
        assert!(Wrapper::try_parse_from(["relay", "--initial-seq-number", "9007199254740991"]).is_ok());
        assert!(Wrapper::try_parse_from(["relay", "--initial-seq-number", "9007199254740992"]).is_err());
        assert!(Wrapper::try_parse_from(["relay", "--initial-seq-number", "0"]).is_err());
    }

    #[test]
    fn host_patterns() {
        let patterns = vec!["*.host.bsky.network".to_string(), "old.pds.example".to_string(), String::new()];
        assert!(matches_host_pattern(&patterns, "morel.us-east.host.bsky.network"));
        assert!(matches_host_pattern(&patterns, "old.pds.example:443"));
        assert!(matches_host_pattern(&["localhost:2583".to_string()], "localhost:2583"));
        assert!(!matches_host_pattern(&["localhost:2583".to_string()], "localhost:2584"));
        assert!(!matches_host_pattern(&patterns, "new.pds.example"));
        assert!(!matches_host_pattern(&patterns, ""), "an empty pattern matches nothing");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
