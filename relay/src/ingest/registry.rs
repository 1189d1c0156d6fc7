//! The host registry: the ingest stage's handle. It owns the running subscriptions (one
//! per upstream host), admits new hosts (requestCrawl, the daily limit, bans), resets
//! cursors, saves them, marks silent hosts idle, and stops every subscription at shutdown.
//! It is given what ingest uses and nothing else: the store, the metrics, the validation
//! stage's intake, the identity cache (to budget lookups) and the config's settings.

use super::{crawl, HostHandle, HostProgress};
use crate::config::ServeConfig;
use crate::identity::Resolver;
use crate::metrics::Metrics;
use crate::storage::{Host, HostStatus, Store, StoreError};
use crate::validate::stage::ValidationStage;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct HostRegistry {
    pub(crate) config: Arc<ServeConfig>,
    pub(crate) store: Store,
    pub(crate) metrics: Metrics,
    pub(crate) validation: ValidationStage,
    pub(crate) resolver: Arc<Resolver>,
    running: Mutex<HashMap<i64, HostHandle>>,
    /// When each host added in the last 24 hours was added (the new-hosts-per-day limit).
    new_hosts: Mutex<VecDeque<Instant>>,
    request_crawl_enabled: AtomicBool,
    /// Set at shutdown: no subscription starts after it.
    closed: AtomicBool,
}

impl HostRegistry {
    pub fn new(
        config: Arc<ServeConfig>,
        store: Store,
        metrics: Metrics,
        validation: ValidationStage,
        resolver: Arc<Resolver>,
    ) -> HostRegistry {
        HostRegistry {
            request_crawl_enabled: AtomicBool::new(!config.disable_request_crawl),
            config,
            store,
            metrics,
            validation,
            resolver,
            running: Mutex::new(HashMap::new()),
            new_hosts: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<i64, HostHandle>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the subscription task for a host (no-op when already running or shutting down).
    pub fn subscribe(self: &Arc<Self>, host: Host) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut running = self.running();
        if running.contains_key(&host.id) {
            return;
        }
        let handle = super::spawn_subscription(self.clone(), host.clone());
        running.insert(host.id, handle);
    }

    /// Stops a host's subscription.
    pub fn unsubscribe(&self, host_id: i64) -> bool {
        let handle = self.running().remove(&host_id);
        match handle {
            Some(handle) => {
                handle.stop();
                true
            }
            None => false,
        }
    }

    /// Subscriptions open (connected) and running (connected or reconnecting).
    pub fn connected(&self) -> usize {
        self.running().values().filter(|h| h.is_connected()).count()
    }

    pub fn running_count(&self) -> usize {
        self.running().len()
    }

    /// (host id, hostname, connected, last upstream seq received) of every running subscription.
    pub fn connections(&self) -> Vec<(i64, String, bool, i64)> {
        self.running()
            .iter()
            .map(|(id, handle)| {
                (*id, handle.hostname.clone(), handle.is_connected(), handle.progress.received())
            })
            .collect()
    }

    /// The progress tracker of every running subscription.
    pub(crate) fn progress_of_all(&self) -> Vec<(i64, Arc<HostProgress>)> {
        self.running().iter().map(|(id, handle)| (*id, handle.progress.clone())).collect()
    }

    /// Whether requestCrawl from the public listener is accepted.
    pub fn request_crawl_enabled(&self) -> bool {
        self.request_crawl_enabled.load(Ordering::Relaxed)
    }

    pub fn set_request_crawl_enabled(&self, enabled: bool) {
        self.request_crawl_enabled.store(enabled, Ordering::Relaxed);
    }

    /// Subscribes to every host in the database that is not banned, staggered.
    pub async fn resume_hosts(self: &Arc<Self>) -> Result<(), StoreError> {
        let mut after = 0;
        loop {
            let page = self.store.list_hosts(after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for host in page {
                if host.status.is_subscribed() {
                    self.subscribe(host);
                    tokio::time::sleep(self.config.connect_stagger).await;
                }
            }
        }
        self.refresh_host_metrics().await;
        Ok(())
    }

    /// Restarts a host's subscription from `cursor` (an operator's reset: 0 resumes live
    /// only, a lower seq replays from there). The running subscription is stopped and waited
    /// for first, so its own cursor save cannot overwrite the reset.
    pub async fn reset_host_cursor(self: &Arc<Self>, host_id: i64, cursor: i64) -> Result<(), StoreError> {
        let running = self.running().remove(&host_id);
        if let Some(handle) = running {
            handle.stop_and_wait().await;
        }
        self.store.set_host_cursor(host_id, cursor).await?;
        if let Some(host) = self.store.host_by_id(host_id).await? {
            if host.status != HostStatus::Banned {
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
        if !admin && !self.request_crawl_enabled() {
            return Err(crawl::CrawlError::Disabled);
        }
        let insecure_ok = self.config.allow_insecure_hosts;
        let host = crawl::normalize_hostname(hostname, insecure_ok)?;
        let bans = self.store.domain_bans().await.unwrap_or_default();
        if crawl::is_banned(&host.hostname, &bans) {
            return Err(crawl::CrawlError::Banned);
        }
        if let Ok(Some(existing)) = self.store.host_by_name(&host.hostname).await {
            if existing.status == HostStatus::Banned {
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
        crawl::probe(&host, insecure_ok, self.config.crawl_probe_timeout).await?;
        if !admin {
            self.take_new_host_slot()?;
        }
        let stored = self
            .store_host(&host)
            .await
            .map_err(|e| crawl::CrawlError::Probe(format!("storing host: {e}")))?;
        tracing::info!(host = %stored.hostname, admin, "added host");
        self.subscribe(stored.clone());
        self.refresh_host_metrics().await;
        Ok(stored)
    }

    /// Stores a host (if new) with the account limit its trust level gives it.
    pub(crate) async fn store_host(&self, host: &crawl::NormalizedHost) -> Result<Host, StoreError> {
        let trusted = self.config.is_trusted(&host.hostname);
        let limit =
            if trusted { self.config.trusted_account_limit } else { self.config.default_account_limit };
        self.store.upsert_host(&host.hostname, host.ssl, limit, trusted).await
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

    pub async fn refresh_host_metrics(&self) {
        let counts = match self.store.count_hosts_by_status().await {
            Ok(counts) => counts,
            Err(error) => {
                tracing::warn!(%error, "counting hosts by status");
                return;
            }
        };
        for status in HostStatus::ALL {
            let count = counts.get(&status).copied().unwrap_or(0);
            self.metrics.hosts.with_label_values(&[status.as_str()]).set(count);
        }
    }

    /// Shutdown's first step: no new subscription starts, every running one closes its
    /// socket, and this returns once each task has ended (having saved its cursor).
    pub async fn stop_all(&self) {
        self.closed.store(true, Ordering::Release);
        let handles: Vec<HostHandle> = self.running().drain().map(|(_, handle)| handle).collect();
        for handle in &handles {
            handle.stop();
        }
        let stopped = handles.len();
        for handle in handles {
            handle.stop_and_wait().await;
        }
        tracing::info!(hosts = stopped, "ingest stopped");
    }

    /// Saves the durable cursor of every given host (shutdown's last step, once everything
    /// in flight has reached the log or been dropped).
    pub async fn save_cursors(&self, hosts: Vec<(i64, Arc<HostProgress>)>) {
        super::save_moved_cursors(self, hosts).await;
    }
}

/// Marks connected hosts that have been silent for `idle_after` as `idle` (indigo's intent:
/// such hosts are expected to send requestCrawl when they come back; we also flip them back
/// to `active` on their next event).
pub(crate) async fn watch_idle_hosts(registry: Arc<HostRegistry>) {
    let idle_after = registry.config.idle_after;
    if idle_after.is_zero() {
        return;
    }
    let period = (idle_after / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::time::sleep(period).await;
        let silent: Vec<i64> = registry
            .running()
            .iter()
            .filter(|(_, h)| h.is_connected() && !h.progress.idle.load(Ordering::Relaxed))
            .filter(|(_, h)| h.progress.silent_for() >= idle_after.as_secs())
            .map(|(id, h)| {
                h.progress.idle.store(true, Ordering::Relaxed);
                *id
            })
            .collect();
        for id in &silent {
            if let Err(error) = registry.store.set_host_status(*id, HostStatus::Idle).await {
                tracing::warn!(%error, host_id = id, "marking host idle");
            }
        }
        if !silent.is_empty() {
            tracing::info!(hosts = silent.len(), "marked silent hosts idle");
            registry.refresh_host_metrics().await;
        }
    }
}
