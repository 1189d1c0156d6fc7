//! The running relay: shared state that the stages and HTTP handlers use.

use crate::atproto::frame::{Account as AccountEvent, Event};
use crate::config::ServeConfig;
use crate::fanout::{Fanout, FanoutConfig};
use crate::identity::{IdentityConfig, Resolver};
use crate::ingest::{self, crawl, HostHandle};
use crate::metrics::Metrics;
use crate::sequence::log::{EventLog, LogConfig};
use crate::sequence::{self, Outgoing, SequencerConfig, SequencerHandle};
use crate::storage::{Account, Host, Store};
use crate::validate::stage::{self, ValidationStage};
use crate::validate::Policy;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Settings derived from the config that the stages need at run time.
pub struct Relay {
    pub config: ServeConfig,
    pub store: Store,
    pub resolver: Resolver,
    pub metrics: Metrics,
    pub sequencer: SequencerHandle,
    pub fanout: Arc<Fanout>,
    pub validation: ValidationStage,
    pub policy: Policy,
    pub hosts: Mutex<HashMap<i64, HostHandle>>,
    /// Accounts the relay has stored, by DID (a cache in front of SQL, bounded by bytes).
    accounts: Mutex<crate::cache::ByteLru<Account>>,
    new_hosts: Mutex<VecDeque<Instant>>,
    pub request_crawl_enabled: AtomicBool,
    last_accepted_unix: AtomicU64,
    pub started: Instant,
    sibling_client: reqwest::Client,
    /// The collection directory; `None` when turned off.
    pub collections: Option<Arc<crate::collections::Collections>>,
    /// What the coverage self-check measured (empty without `--coverage-reference`).
    pub coverage: crate::coverage::selfcheck::CoverageStatus,
}

impl Relay {
    /// Opens storage and the log, starts the sequencer and validation workers.
    pub async fn start(config: ServeConfig) -> anyhow::Result<Arc<Relay>> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        // Starting on a full disk would fail later in ways that say less (RocksDB aborts on
        // its own assertion): refuse now, naming the directory and what is missing.
        for dir in [config.data_dir.clone(), config.persist_dir()] {
            crate::disk::ensure_free_space(&dir, config.min_free_disk_bytes)?;
        }
        let store = Store::connect(&config.database_url(), config.max_db_connections)
            .await
            .context("opening the database")?;
        let metrics = Metrics::new();
        let log = EventLog::open(LogConfig {
            dir: config.persist_dir(),
            segment_bytes: config.log_segment_bytes,
            sync: config.log_fsync,
            index_stride_bytes: config.log_index_stride_bytes,
        })
        .context("opening the event log")?;
        let sequencer_config = SequencerConfig {
            initial_seq: config.initial_seq_number.max(1),
            live_buffer_events: config.live_buffer_events,
            replay_window: config.replay_window,
            linger: config.sequencer_linger,
            ..SequencerConfig::default()
        };
        recover_state(&store, &log).await.context("replaying repo state from the event log")?;
        let (state_tx, state_rx) = tokio::sync::mpsc::channel(config.state_queue_updates.max(1));
        let (sequencer, _thread) =
            sequence::start(log, sequencer_config, config.sequencer_queue_events, metrics.clone(), state_tx);
        for (did, before) in store.purges().await.context("loading takedown purges")? {
            sequencer.purges.write().unwrap_or_else(|p| p.into_inner()).insert(did, before as u64);
        }
        let resolver = Resolver::new(IdentityConfig {
            plc_url: config.plc_url.clone(),
            cache_entries: config.identity_cache_entries,
            cache_bytes: config.identity_cache_bytes,
            ssrf: crate::identity::ssrf::SsrfPolicy { allow_loopback: config.allow_insecure_hosts },
            ..IdentityConfig::default()
        });
        let coverage_check = crate::coverage::selfcheck::SelfCheckConfig::from_serve(&config)?;
        let fanout_config = FanoutConfig {
            write_timeout: config.consumer_write_timeout,
            ping_interval: config.consumer_ping_interval,
            close_timeout: config.consumer_close_timeout,
            max_consumers: config.max_consumers,
            max_consumers_per_ip: config.max_consumers_per_ip,
            ..FanoutConfig::default()
        };
        let fanout = Arc::new(Fanout::new(sequencer.clone(), fanout_config, metrics.clone()));
        let policy = Policy { lenient: config.lenient_sync_validation, ..Policy::default() };
        let (validation, receivers) = stage::channels(
            config.workers(),
            config.validation_shard_queue_events,
            config.ingest_queue_bytes,
        );
        let collections = match config.collections_disabled {
            true => None,
            false => Some(
                crate::collections::Collections::open(
                    crate::collections::CollectionsConfig::from_serve(&config),
                    &metrics.registry,
                )
                .context("opening the collection index")?,
            ),
        };
        let relay = Arc::new(Relay {
            store,
            resolver,
            metrics,
            sequencer,
            fanout,
            validation,
            policy,
            hosts: Mutex::new(HashMap::new()),
            accounts: Mutex::new(crate::cache::ByteLru::new(config.account_cache_bytes, usize::MAX)),
            new_hosts: Mutex::new(VecDeque::new()),
            request_crawl_enabled: AtomicBool::new(!config.disable_request_crawl),
            last_accepted_unix: AtomicU64::new(0),
            started: Instant::now(),
            sibling_client: reqwest::Client::builder()
                .timeout(crate::admin::siblings::FORWARD_TIMEOUT)
                .user_agent(concat!("atproto-relay/", env!("CARGO_PKG_VERSION")))
                .build()
                .context("building the sibling relay client")?,
            collections,
            coverage: Default::default(),
            config,
        });
        stage::spawn_workers(relay.clone(), receivers);
        if let Some(collections) = &relay.collections {
            crate::collections::spawn(&relay, collections);
        }
        tokio::spawn(write_state(relay.store.clone(), state_rx));
        tokio::spawn(watch_idle_hosts(relay.clone()));
        tokio::spawn(crate::ingest::flush_cursors(relay.clone()));
        crate::coverage::selfcheck::spawn(&relay, coverage_check);
        Ok(relay)
    }

    /// Subscribes to every active host in the database, staggered.
    pub async fn resume_hosts(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut after = 0;
        loop {
            let page = self.store.list_hosts(after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for host in page {
                if host.status == "active" || host.status == "offline" || host.status == "idle" {
                    self.subscribe(host);
                    tokio::time::sleep(self.config.connect_stagger).await;
                }
            }
        }
        self.refresh_host_metrics().await;
        Ok(())
    }

    /// The HTTP client for forwarding to sibling relays.
    pub fn sibling_client(&self) -> &reqwest::Client {
        &self.sibling_client
    }

    /// Resumes interrupted backfill jobs and starts the ones the config asks for.
    pub async fn start_backfills(self: &Arc<Self>) {
        if let Some(collections) = &self.collections {
            use crate::collections::backfill;
            backfill::resume(self, collections).await;
            let source = self.config.backfill_source.clone();
            let base = backfill::source_base(&source, self.config.allow_insecure_hosts).map(|(base, _)| base);
            let resumed = base.as_ref().is_ok_and(|base| collections.running_job("import", base).is_some());
            if !source.is_empty() && !resumed {
                let sources = backfill::CollectionSources {
                    collections: self.config.backfill_collections.clone(),
                    collections_url: self.config.backfill_collections_url.clone(),
                    include_indexed: false,
                };
                let started = match backfill::resolve_collections(collections, &sources).await {
                    Ok(nsids) => backfill::start_import(self, collections, &source, &nsids).await,
                    Err(error) => Err(error),
                };
                match started {
                    Ok(()) => tracing::info!(%source, "backfill: import started"),
                    // Finished earlier with nothing new to do, or already resumed.
                    Err(error) => tracing::info!(%source, %error, "backfill: import not started"),
                }
            }
            if self.config.backfill_crawl && collections.running_job("crawl", "*").is_none() {
                let finished =
                    self.store.all_crawl_progress().await.map(|p| !p.is_empty() && p.iter().all(|h| h.done));
                if !matches!(finished, Ok(true)) {
                    if let Err(error) = backfill::start_crawl(self, collections, "*").await {
                        tracing::warn!(%error, "backfill: crawl not started");
                    }
                }
            }
        }
    }

    /// Starts the subscription task for a host (no-op when already running).
    pub fn subscribe(self: &Arc<Self>, host: Host) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.contains_key(&host.id) {
            return;
        }
        let handle = ingest::spawn_subscription(self.clone(), host.clone());
        hosts.insert(host.id, handle);
    }

    /// Stops a host's subscription.
    pub fn unsubscribe(&self, host_id: i64) -> bool {
        let handle = self.hosts.lock().unwrap_or_else(|p| p.into_inner()).remove(&host_id);
        match handle {
            Some(handle) => {
                handle.stop();
                true
            }
            None => false,
        }
    }

    /// Restarts a host's subscription from `cursor` (an operator's reset: 0 resumes live
    /// only, a lower seq replays from there). The running subscription is stopped and waited
    /// for first, so its own cursor save cannot overwrite the reset.
    pub async fn reset_host_cursor(
        self: &Arc<Self>,
        host_id: i64,
        cursor: i64,
    ) -> Result<(), crate::storage::StoreError> {
        let running = self.hosts.lock().unwrap_or_else(|p| p.into_inner()).remove(&host_id);
        if let Some(handle) = running {
            handle.stop_and_wait().await;
        }
        self.store.set_host_cursor(host_id, cursor).await?;
        if let Some(host) = self.store.host_by_id(host_id).await? {
            if host.status != "banned" {
                self.subscribe(host);
            }
        }
        Ok(())
    }

    /// requestCrawl: validate, probe, store and subscribe. `admin` bypasses the public limits.
    pub async fn request_crawl(
        self: &Arc<Self>,
        hostname: &str,
        admin: bool,
    ) -> Result<Host, crawl::CrawlError> {
        if !admin && !self.request_crawl_enabled.load(Ordering::Relaxed) {
            return Err(crawl::CrawlError::Disabled);
        }
        let insecure_ok = self.config.allow_insecure_hosts;
        let host = crawl::normalize_hostname(hostname, insecure_ok)?;
        let bans = self.store.domain_bans().await.unwrap_or_default();
        if crawl::is_banned(&host.hostname, &bans) {
            return Err(crawl::CrawlError::Banned);
        }
        if let Ok(Some(existing)) = self.store.host_by_name(&host.hostname).await {
            if existing.status == "banned" {
                return Err(crawl::CrawlError::Banned);
            }
            self.subscribe(existing.clone());
            return Ok(existing);
        }
        // The daily limit is checked before the outbound probe, so requests beyond it cost
        // the relay nothing; the slot is taken only once the probe succeeded.
        if !admin {
            self.new_host_slot_free()?;
        }
        crawl::probe(&host, insecure_ok, Duration::from_secs(10)).await?;
        if !admin {
            self.take_new_host_slot()?;
        }
        let trusted = self.config.is_trusted(&host.hostname);
        let limit =
            if trusted { self.config.trusted_account_limit } else { self.config.default_account_limit };
        let stored = self
            .store
            .upsert_host(&host.hostname, host.ssl, limit, trusted)
            .await
            .map_err(|e| crawl::CrawlError::Probe(format!("storing host: {e}")))?;
        tracing::info!(host = %stored.hostname, admin, "added host");
        self.subscribe(stored.clone());
        self.refresh_host_metrics().await;
        Ok(stored)
    }

    /// Whether the new-hosts-per-day limit leaves room, without taking it.
    fn new_host_slot_free(&self) -> Result<(), crawl::CrawlError> {
        let mut window = self.new_hosts.lock().unwrap_or_else(|p| p.into_inner());
        let day = Duration::from_secs(86_400);
        while window.front().is_some_and(|t| t.elapsed() > day) {
            window.pop_front();
        }
        if window.len() as u32 >= self.config.new_hosts_per_day {
            return Err(crawl::CrawlError::DailyLimit);
        }
        Ok(())
    }

    fn take_new_host_slot(&self) -> Result<(), crawl::CrawlError> {
        self.new_host_slot_free()?;
        self.new_hosts.lock().unwrap_or_else(|p| p.into_inner()).push_back(Instant::now());
        Ok(())
    }

    /// The stored account row, through a cache in front of the database. Never creates one:
    /// rows are created only for events that passed validation (`create_account`).
    pub async fn known_account(&self, did: &str) -> Result<Option<Account>, crate::storage::StoreError> {
        if let Some(account) = self.accounts.lock().unwrap_or_else(|p| p.into_inner()).get(did) {
            return Ok(Some(account.clone()));
        }
        let account = self.store.account(did).await?;
        if let Some(account) = &account {
            self.cache_account(account.clone());
        }
        Ok(account)
    }

    /// Stores a new account served by `host_id`, unless the host is at its account limit
    /// (`Ok(None)`).
    pub async fn create_account(
        &self,
        did: &str,
        host_id: i64,
    ) -> Result<Option<Account>, crate::storage::StoreError> {
        if !self.host_has_room(host_id).await? {
            return Ok(None);
        }
        let account = self.store.ensure_account(did, Some(host_id)).await?;
        self.cache_account(account.clone());
        Ok(Some(account))
    }

    /// Whether a host may bring one more account (its account limit).
    pub async fn host_has_room(&self, host_id: i64) -> Result<bool, crate::storage::StoreError> {
        let Some(host) = self.store.host_by_id(host_id).await? else {
            return Ok(false);
        };
        Ok(self.store.count_host_accounts(host_id).await? < host.account_limit)
    }

    pub fn cache_account(&self, account: Account) {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner()).put(account.did.clone(), account);
    }

    pub fn forget_account(&self, did: &str) {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner()).pop(did);
    }

    pub fn note_accepted(&self) {
        self.last_accepted_unix.store(crate::ingest::unix_now(), Ordering::Relaxed);
    }

    /// Takes an account down (or restores it): stores the status, purges or not, emits `#account`.
    pub async fn set_takedown(&self, did: &str, takedown: bool) -> Result<bool, crate::storage::StoreError> {
        let status = if takedown { "takendown" } else { "active" };
        if !self.store.set_local_status(did, status).await? {
            return Ok(false);
        }
        self.forget_account(did);
        let account = self
            .store
            .account(did)
            .await?
            .ok_or(crate::storage::StoreError::Sql(sqlx::Error::RowNotFound))?;
        if takedown {
            // Everything of this DID before the takedown event leaves the replay window.
            let mark = self.sequencer.current_head() + 1;
            self.store.save_purge(did, mark as i64).await?;
            self.sequencer.purges.write().unwrap_or_else(|p| p.into_inner()).insert(did.to_string(), mark);
        }
        let event = Event::Account(AccountEvent {
            seq: 0,
            did: did.to_string(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            active: account.is_active(),
            status: (!account.is_active()).then(|| account.effective_status().to_string()),
        });
        let _ = self
            .sequencer
            .input
            .send(Outgoing { did: did.to_string(), event, in_flight: None, state: None })
            .await;
        Ok(true)
    }

    /// Readiness: relaying for real, not just up.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(reason) = self.sequencer.write_failure() {
            return Err(reason);
        }
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let total = hosts.len();
        let connected = hosts.values().filter(|h| h.is_connected()).count();
        drop(hosts);
        if total == 0 {
            return Err("no upstream hosts configured".into());
        }
        if connected == 0 {
            return Err("no upstream host is connected".into());
        }
        let share = connected as f64 / total as f64;
        if share < self.config.ready_min_connected_share {
            return Err(format!("only {connected} of {total} hosts connected"));
        }
        let silence = self.config.ready_max_silence;
        if !silence.is_zero() && self.started.elapsed() > silence {
            let last = self.last_accepted_unix.load(Ordering::Relaxed);
            if crate::ingest::unix_now().saturating_sub(last) > silence.as_secs() {
                return Err(format!("no event accepted for more than {}s", silence.as_secs()));
            }
        }
        if let Some(reason) = self.coverage.failing(self.config.coverage_threshold) {
            return Err(reason);
        }
        Ok(())
    }

    pub async fn refresh_host_metrics(&self) {
        let counts = match self.store.count_hosts_by_status().await {
            Ok(counts) => counts,
            Err(error) => {
                tracing::warn!(%error, "counting hosts by status");
                return;
            }
        };
        for status in ["active", "idle", "offline", "throttled", "banned"] {
            self.metrics.hosts.with_label_values(&[status]).set(counts.get(status).copied().unwrap_or(0));
        }
    }
}

impl Relay {
    /// Graceful stop: close upstream sockets (saving cursors), then let the validation
    /// and sequencer queues drain so accepted events reach the log.
    pub async fn shutdown(&self) {
        let handles: Vec<HostHandle> =
            self.hosts.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, h)| h).collect();
        for handle in &handles {
            handle.stop();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let sequencer_idle = self.sequencer.input.capacity() == self.sequencer.input.max_capacity();
            if self.validation.queued_bytes() == 0 && sequencer_idle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Give the sequencer a moment to fsync the batch it took last.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Close RocksDB; the live indexer resumes from its checkpoint on the next start.
        if let Some(collections) = &self.collections {
            collections.close();
        }
    }
}

/// Seeds the host list from the upstream relay's `listHosts` (zlay's RELAY_UPSTREAM).
pub async fn bootstrap_from_upstream(relay: Arc<Relay>) {
    let base = if relay.config.upstream.starts_with("http") {
        relay.config.upstream.clone()
    } else {
        format!("https://{}", relay.config.upstream)
    };
    let client = crate::identity::ssrf::guarded_client(
        crate::identity::ssrf::SsrfPolicy { allow_loopback: relay.config.allow_insecure_hosts },
        Duration::from_secs(30),
    );
    let mut cursor: Option<String> = None;
    let mut added = 0usize;
    loop {
        let mut url = format!("{}/xrpc/com.atproto.sync.listHosts?limit=1000", base.trim_end_matches('/'));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => match response.json().await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "bootstrap: bad listHosts page");
                    break;
                }
            },
            Ok(response) => {
                tracing::warn!(status = %response.status(), "bootstrap: listHosts failed");
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "bootstrap: listHosts failed");
                break;
            }
        };
        let candidates: Vec<crawl::NormalizedHost> = page["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|host| matches!(host["status"].as_str().unwrap_or("active"), "active" | "idle"))
            .filter_map(|host| host["hostname"].as_str())
            .filter_map(|name| crawl::normalize_hostname(name, relay.config.allow_insecure_hosts).ok())
            .collect();
        added += add_bootstrap_hosts(&relay, candidates).await;
        cursor = page["cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    tracing::info!(added, upstream = %base, "bootstrap from upstream listHosts done");
    relay.refresh_host_metrics().await;
}

/// Hosts from the upstream's list probed at once (each probe may wait out its timeout).
const BOOTSTRAP_PROBE_CONCURRENCY: usize = 16;

/// Stores and subscribes hosts named by the upstream relay. A host the relay does not know
/// yet is probed first like a crawled one (`describeServer` through the SSRF guard, relays
/// refused): the upstream's list is input from another party, not a trusted one.
async fn add_bootstrap_hosts(relay: &Arc<Relay>, candidates: Vec<crawl::NormalizedHost>) -> usize {
    use futures_util::StreamExt;
    let bans = relay.store.domain_bans().await.unwrap_or_default();
    let probed: Vec<Option<crawl::NormalizedHost>> = futures_util::stream::iter(candidates)
        .filter(|host| std::future::ready(!crawl::is_banned(&host.hostname, &bans)))
        .map(|host| async move {
            if let Ok(Some(_)) = relay.store.host_by_name(&host.hostname).await {
                return Some(host);
            }
            match crawl::probe(&host, relay.config.allow_insecure_hosts, Duration::from_secs(10)).await {
                Ok(()) => Some(host),
                Err(error) => {
                    tracing::info!(host = %host.hostname, %error, "bootstrap: host refused");
                    None
                }
            }
        })
        .buffer_unordered(BOOTSTRAP_PROBE_CONCURRENCY)
        .collect()
        .await;
    let mut added = 0;
    for host in probed.into_iter().flatten() {
        let trusted = relay.config.is_trusted(&host.hostname);
        let limit =
            if trusted { relay.config.trusted_account_limit } else { relay.config.default_account_limit };
        if let Ok(stored) = relay.store.upsert_host(&host.hostname, host.ssl, limit, trusted).await {
            if stored.status != "banned" {
                relay.subscribe(stored);
                added += 1;
                tokio::time::sleep(relay.config.connect_stagger).await;
            }
        }
    }
    added
}

/// Most repo state updates stored in one transaction.
const STATE_BATCH: usize = 1024;

/// Applies repo state from durable events to SQL, in seq order, and advances the checkpoint:
/// whatever has queued up goes in one transaction, so SQL keeps up at any event rate.
async fn write_state(
    store: Store,
    mut updates: tokio::sync::mpsc::Receiver<(u64, String, crate::sequence::StateUpdate)>,
) {
    let mut batch = Vec::with_capacity(STATE_BATCH);
    while updates.recv_many(&mut batch, STATE_BATCH).await > 0 {
        let checkpoint = batch.last().map_or(0, |(seq, _, _)| *seq as i64);
        let rows: Vec<crate::storage::RepoStateUpdate> = batch
            .iter()
            .map(|(_, did, state)| crate::storage::RepoStateUpdate {
                did,
                rev: &state.rev,
                data_cid: &state.data,
                commit_cid: state.commit.as_deref(),
            })
            .collect();
        // Retried until stored: the checkpoint must not pass state that SQL does not have. While
        // the database is unavailable this queue fills and the sequencer waits (backpressure).
        let mut delay = Duration::from_millis(100);
        while let Err(error) = store.save_repo_states(&rows, checkpoint).await {
            tracing::error!(%error, updates = rows.len(), "storing repo state; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        drop(rows);
        batch.clear();
    }
}

/// Replays `#commit`/`#sync` events after the SQL checkpoint into the accounts table.
async fn recover_state(store: &Store, log: &EventLog) -> anyhow::Result<()> {
    use crate::atproto::{car, commit::SignedCommit, frame};
    let mut after = store.state_checkpoint().await? as u64;
    let mut replayed = 0usize;
    loop {
        let records = log.read_after(after, 2000, 16 << 20)?;
        let Some(last) = records.last() else { break };
        after = last.seq;
        // (did, rev, data, commit) of each #commit/#sync in this chunk, in seq order.
        let mut states: Vec<(String, String, String, Option<String>)> = Vec::new();
        for record in &records {
            let (did, blocks, commit_cid) = match frame::decode(&record.frame) {
                Ok(frame::Event::Commit(c)) => (c.repo, c.blocks, Some(c.commit.to_string())),
                Ok(frame::Event::Sync(s)) => (s.did, s.blocks, None),
                _ => continue,
            };
            let Ok(parsed) = car::read(&blocks, frame::MAX_COMMIT_BLOCKS_BYTES) else { continue };
            let Some(bytes) = parsed.get(&parsed.roots[0]) else { continue };
            let Ok(signed) = SignedCommit::decode(bytes) else { continue };
            store.ensure_account(&did, None).await?;
            states.push((did, signed.rev, signed.data.to_string(), commit_cid));
        }
        let rows: Vec<crate::storage::RepoStateUpdate> = states
            .iter()
            .map(|(did, rev, data, commit)| crate::storage::RepoStateUpdate {
                did,
                rev,
                data_cid: data,
                commit_cid: commit.as_deref(),
            })
            .collect();
        store.save_repo_states(&rows, after as i64).await?;
        replayed += rows.len();
    }
    if replayed > 0 {
        tracing::info!(replayed, "repo state recovered from the event log");
    }
    Ok(())
}

/// Marks connected hosts that have been silent for `idle_after` as `idle` (indigo's intent:
/// such hosts are expected to send requestCrawl when they come back; we also flip them back
/// to `active` on their next event).
async fn watch_idle_hosts(relay: Arc<Relay>) {
    let idle_after = relay.config.idle_after;
    if idle_after.is_zero() {
        return;
    }
    let period = (idle_after / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::time::sleep(period).await;
        let silent: Vec<i64> = {
            let hosts = relay.hosts.lock().unwrap_or_else(|p| p.into_inner());
            hosts
                .iter()
                .filter(|(_, h)| {
                    h.is_connected() && !h.progress.idle.load(std::sync::atomic::Ordering::Relaxed)
                })
                .filter(|(_, h)| h.progress.silent_for() >= idle_after.as_secs())
                .map(|(id, h)| {
                    h.progress.idle.store(true, std::sync::atomic::Ordering::Relaxed);
                    *id
                })
                .collect()
        };
        for id in &silent {
            if let Err(error) = relay.store.set_host_status(*id, "idle").await {
                tracing::warn!(%error, host_id = id, "marking host idle");
            }
        }
        if !silent.is_empty() {
            tracing::info!(hosts = silent.len(), "marked silent hosts idle");
            relay.refresh_host_metrics().await;
        }
    }
}
