//! Backfill jobs that fill the collection index from the network.
//!
//! - **import** (`kind = "import"`, one per upstream): pages of the upstream's
//!   `listReposByCollection` for a list of NSIDs; each page's DIDs go to the verification
//!   queue and the cursor is saved in SQL after the page, so a crash repeats at most one page
//!   per collection. A collection is done when the upstream returns no cursor.
//! - **crawl** (`kind = "crawl"`, source `*` or one hostname): each host's `listRepos`, each
//!   active DID queued for a `describeRepo` check; finds collections no upstream knows.
//!
//! Requests are paced per host and back off on 429/5xx (see [`super::ratelimit`]); hosts
//! are worked on concurrently, so one that refuses for minutes only delays itself.

use super::{Collections, CHECK_MARKER};
use crate::atproto::syntax;
use crate::storage::Store;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running job's shared state.
pub struct Job {
    pub kind: &'static str,
    /// The job's name: the upstream's base URL (import) or `*`/a hostname (crawl).
    pub source: String,
    /// The host its requests go to (pacing key).
    pub host: String,
    pub started: Instant,
    pub found: AtomicU64,
    stop: AtomicBool,
    stopped: tokio::sync::Notify,
}

impl Job {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps, returning early (false) when the job is asked to stop.
    async fn pause(&self, duration: Duration) -> bool {
        if self.stopping() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(duration) => !self.stopping(),
            _ = self.stopped.notified() => false,
        }
    }
}

/// Running jobs by `kind:source`.
#[derive(Default)]
pub struct Jobs {
    running: HashMap<String, Arc<Job>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("a {0} backfill for {1} is already running")]
    AlreadyRunning(&'static str, String),
    #[error("no collections to import: give a list, a list URL, or index something first")]
    NoCollections,
    #[error("invalid source host: {0}")]
    BadSource(String),
    #[error("fetching the collection list: {0}")]
    CollectionList(String),
    #[error("storage: {0}")]
    Store(#[from] crate::storage::StoreError),
}

/// Where an import's NSID list comes from (merged, deduplicated).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectionSources {
    #[serde(default)]
    pub collections: Vec<String>,
    #[serde(default)]
    pub collections_url: Option<String>,
    /// Also re-import every collection the index already holds.
    #[serde(default)]
    pub include_indexed: bool,
}

fn job_key(kind: &str, source: &str) -> String {
    format!("{kind}:{source}")
}

impl Collections {
    fn register_job(&self, kind: &'static str, source: &str, host: &str) -> Result<Arc<Job>, BackfillError> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let key = job_key(kind, source);
        if jobs.running.contains_key(&key) {
            return Err(BackfillError::AlreadyRunning(kind, source.to_string()));
        }
        let job = Arc::new(Job {
            kind,
            source: source.to_string(),
            host: host.to_string(),
            started: Instant::now(),
            found: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            stopped: tokio::sync::Notify::new(),
        });
        jobs.running.insert(key, job.clone());
        Ok(job)
    }

    fn finish_job(&self, job: &Job) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.running.remove(&job_key(job.kind, &job.source));
    }

    pub fn running_job(&self, kind: &str, source: &str) -> Option<Arc<Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).running.get(&job_key(kind, source)).cloned()
    }

    pub fn running_jobs(&self) -> Vec<Arc<Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).running.values().cloned().collect()
    }

    /// Asks a job to stop; its progress stays in SQL for a later start. False when not running.
    pub fn stop_job(&self, kind: &str, source: &str) -> bool {
        match self.running_job(kind, source) {
            Some(job) => {
                job.stop.store(true, Ordering::Relaxed);
                job.stopped.notify_waiters();
                true
            }
            None => false,
        }
    }
}

/// The upstream's base URL (`https://host[:port]`, `http://` only for insecure test setups),
/// which is also the job's name in the API and in SQL, and the host key used for pacing.
pub fn source_base(source: &str, insecure: bool) -> Result<(String, String), BackfillError> {
    let normalized = crate::ingest::crawl::normalize_hostname(source, insecure)
        .map_err(|e| BackfillError::BadSource(e.to_string()))?;
    let scheme = if normalized.ssl { "https" } else { "http" };
    Ok((format!("{scheme}://{}", normalized.hostname), normalized.hostname))
}

/// Extracts NSIDs from a newline list (one per line; `#` comments, bullets and trailing text
/// are ignored, as in lexicon garden's `llms.txt`).
pub fn parse_nsid_list(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches(['-', '*', ' ']);
            let token = line.split_whitespace().next()?;
            let token = token.trim_matches(|c: char| c == '`' || c == ',' || c == ':');
            syntax::validate_nsid(token).is_ok().then(|| token.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Resolves the NSID list of an import from its sources.
pub async fn resolve_collections(
    collections: &Collections,
    sources: &CollectionSources,
) -> Result<Vec<String>, BackfillError> {
    let mut out: Vec<String> =
        sources.collections.iter().filter(|c| syntax::validate_nsid(c).is_ok()).cloned().collect();
    if let Some(url) = sources.collections_url.as_deref().filter(|u| !u.is_empty()) {
        let response = collections
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| BackfillError::CollectionList(e.to_string()))?;
        if !response.status().is_success() {
            return Err(BackfillError::CollectionList(format!("{url}: HTTP {}", response.status())));
        }
        let text = response.text().await.map_err(|e| BackfillError::CollectionList(e.to_string()))?;
        out.extend(parse_nsid_list(&text));
    }
    if sources.include_indexed {
        let mut after: Option<String> = None;
        while let Ok(page) = collections.index.collections(after.as_deref(), 10_000) {
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            out.extend(page.into_iter().map(|(c, _)| c));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Starts (or resumes) an import from `source`. An empty `nsids` resumes the collections
/// already recorded for that source.
pub async fn start_import(
    store: &Store,
    collections: &Arc<Collections>,
    source: &str,
    nsids: &[String],
) -> Result<(), BackfillError> {
    let (base, host) = source_base(source, collections.config.allow_insecure_hosts)?;
    let job = collections.register_job("import", &base, &host)?;
    let prepared = async {
        store.add_import_collections(&base, nsids).await?;
        store.restart_import_collections(&base, nsids).await?;
        let pending: Vec<_> = store.import_progress(&base).await?.into_iter().filter(|p| !p.done).collect();
        if pending.is_empty() {
            return Err(BackfillError::NoCollections);
        }
        store.set_backfill_run("import", &base, "running").await?;
        Ok(pending)
    }
    .await;
    let pending = match prepared {
        Ok(pending) => pending,
        Err(error) => {
            collections.finish_job(&job);
            return Err(error);
        }
    };
    let (store, collections) = (store.clone(), collections.clone());
    tokio::spawn(async move {
        let reporter = tokio::spawn(report_progress(collections.clone(), job.clone()));
        futures_util::stream::iter(pending)
            .for_each_concurrent(collections.config.import_concurrency, |progress| {
                import_collection(&store, &collections, &job, &base, progress.collection, progress.cursor)
            })
            .await;
        reporter.abort();
        let state = if job.stopping() { "stopped" } else { "done" };
        if let Err(error) = store.set_backfill_run("import", &job.source, state).await {
            tracing::warn!(%error, "backfill: recording the end of an import");
        }
        tracing::info!(source = %job.source, found = job.found.load(Ordering::Relaxed), state, "backfill: import finished");
        collections.finish_job(&job);
    });
    Ok(())
}

async fn import_collection(
    store: &Store,
    collections: &Arc<Collections>,
    job: &Arc<Job>,
    base: &str,
    collection: String,
    mut cursor: Option<String>,
) {
    let page_size = collections.config.import_page_size;
    while !job.stopping() {
        let mut url = format!(
            "{base}/xrpc/com.atproto.sync.listReposByCollection?collection={collection}&limit={page_size}"
        );
        if let Some(cursor) = &cursor {
            url.push_str("&cursor=");
            url.push_str(&urlencode(cursor));
        }
        let page = match fetch_json(collections, job, &job.host, &url, "import").await {
            Fetched::Json(page) => page,
            Fetched::Refused(message) => {
                // The upstream will not serve this collection (e.g. no such endpoint): record and move on.
                tracing::warn!(source = %job.source, %collection, %message, "backfill: import refused");
                let _ = store.save_import_page(&job.source, &collection, None, 0, Some(&message)).await;
                return;
            }
            Fetched::Stopped => return,
        };
        let dids: Vec<String> = page["repos"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["did"].as_str())
            .filter(|did| syntax::validate_did(did).is_ok())
            .map(str::to_string)
            .collect();
        let next = page["cursor"].as_str().filter(|c| !c.is_empty()).map(str::to_string);
        let pairs: Vec<(String, String)> = dids.iter().map(|did| (did.clone(), collection.clone())).collect();
        let index = collections.index.clone();
        match tokio::task::spawn_blocking(move || index.add_pending(&pairs)).await {
            Ok(Ok(())) => {}
            _ => {
                tracing::error!(%collection, "backfill: writing imported DIDs failed; retrying the page");
                if !job.pause(Duration::from_secs(5)).await {
                    return;
                }
                continue;
            }
        }
        collections.work.notify_one();
        // An empty page ends the collection even with a cursor: nothing more can follow it.
        let next = if dids.is_empty() { None } else { next };
        if let Err(error) =
            store.save_import_page(&job.source, &collection, next.as_deref(), dids.len() as i64, None).await
        {
            tracing::error!(%error, %collection, "backfill: saving import progress (the page will be repeated)");
        }
        job.found.fetch_add(dids.len() as u64, Ordering::Relaxed);
        collections.metrics.backfill_dids.with_label_values(&["import"]).inc_by(dids.len() as u64);
        collections.metrics.backfill_pages.with_label_values(&["import"]).inc();
        match next {
            Some(next) => cursor = Some(next),
            None => return,
        }
    }
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

enum Fetched {
    Json(serde_json::Value),
    /// A client error that retrying will not fix.
    Refused(String),
    Stopped,
}

/// GET with pacing and retries: waits out 429s and 5xx (honouring the server's headers),
/// retries connection errors, gives up only on other 4xx or when the job stops.
async fn fetch_json(collections: &Collections, job: &Job, host: &str, url: &str, kind: &str) -> Fetched {
    // Paced per address: hostnames behind one server share its limit.
    let pacing = collections.limiter.pacing_key(host).await;
    loop {
        while let Some(until) = collections.limiter.try_take(&pacing) {
            if !job.pause(until.saturating_duration_since(Instant::now())).await {
                return Fetched::Stopped;
            }
        }
        if job.stopping() {
            return Fetched::Stopped;
        }
        let response = match collections.client.get(url).send().await {
            Ok(response) => response,
            Err(error) => {
                let wait = collections.limiter.observe_failure(&pacing);
                collections.metrics.backfill_errors.with_label_values(&[kind]).inc();
                tracing::debug!(%host, error = ?error, ?wait, "backfill: request failed, retrying");
                continue;
            }
        };
        let status = response.status().as_u16();
        if let Some(wait) = collections.limiter.observe(&pacing, status, response.headers()) {
            if status == 429 {
                collections.metrics.backfill_rate_limited.inc();
            } else {
                collections.metrics.backfill_errors.with_label_values(&[kind]).inc();
            }
            tracing::info!(%host, status, wait_seconds = wait.as_secs(), "backfill: host refused, backing off");
            continue;
        }
        if !(200..300).contains(&status) {
            let body = response.text().await.unwrap_or_default();
            return Fetched::Refused(format!(
                "HTTP {status}: {}",
                body.chars().take(200).collect::<String>()
            ));
        }
        match response.json().await {
            Ok(json) => return Fetched::Json(json),
            Err(error) => {
                collections.limiter.observe_failure(&pacing);
                collections.metrics.backfill_errors.with_label_values(&[kind]).inc();
                tracing::debug!(%host, %error, "backfill: bad JSON, retrying");
            }
        }
    }
}

/// Logs a job's progress every few seconds.
async fn report_progress(collections: Arc<Collections>, job: Arc<Job>) {
    let mut last = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        let found = job.found.load(Ordering::Relaxed);
        let per_minute = (found - last) * 12;
        last = found;
        tracing::info!(
            kind = job.kind,
            source = %job.source,
            found,
            per_minute,
            pending = collections.index.pending_estimate(),
            elapsed_seconds = job.started.elapsed().as_secs(),
            "backfill progress"
        );
    }
}

/// Starts (or resumes) a crawl of every active host (`source = "*"`) or of one host.
pub async fn start_crawl(
    store: &Store,
    collections: &Arc<Collections>,
    source: &str,
) -> Result<(), BackfillError> {
    let source = if source.is_empty() { "*" } else { source };
    let hosts = if source == "*" {
        let mut hosts = Vec::new();
        let mut after = 0;
        loop {
            let page = store.list_hosts(after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            hosts.extend(page.into_iter().filter(|h| h.status.is_reachable()));
        }
        hosts
    } else {
        let (_, hostname) = source_base(source, collections.config.allow_insecure_hosts)?;
        match store.host_by_name(&hostname).await? {
            Some(host) => vec![host],
            None => return Err(BackfillError::BadSource(format!("{hostname} is not a known host"))),
        }
    };
    let job = collections.register_job("crawl", source, source)?;
    let started = store.set_backfill_run("crawl", source, "running").await;
    if let Err(error) = started {
        collections.finish_job(&job);
        return Err(error.into());
    }
    let (store, collections) = (store.clone(), collections.clone());
    tokio::spawn(async move {
        let reporter = tokio::spawn(report_progress(collections.clone(), job.clone()));
        futures_util::stream::iter(hosts)
            .for_each_concurrent(collections.config.crawl_concurrency, |host| {
                crawl_host(&store, &collections, &job, host)
            })
            .await;
        reporter.abort();
        let state = if job.stopping() { "stopped" } else { "done" };
        let _ = store.set_backfill_run("crawl", &job.source, state).await;
        tracing::info!(source = %job.source, found = job.found.load(Ordering::Relaxed), state, "backfill: crawl finished");
        collections.finish_job(&job);
    });
    Ok(())
}

async fn crawl_host(
    store: &Store,
    collections: &Arc<Collections>,
    job: &Arc<Job>,
    host: crate::storage::Host,
) {
    let progress = store.crawl_progress(&host.hostname).await.ok().flatten();
    if progress.as_ref().is_some_and(|p| p.done) {
        return;
    }
    let mut cursor = progress.and_then(|p| p.cursor);
    let scheme = if host.ssl { "https" } else { "http" };
    let base = format!("{scheme}://{}", host.hostname);
    while !job.stopping() {
        let mut url = format!("{base}/xrpc/com.atproto.sync.listRepos?limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str("&cursor=");
            url.push_str(&urlencode(cursor));
        }
        let page = match fetch_json(collections, job, &host.hostname, &url, "crawl").await {
            Fetched::Json(page) => page,
            Fetched::Refused(message) => {
                tracing::warn!(host = %host.hostname, %message, "backfill: listRepos refused");
                let _ = store.save_crawl_page(&host.hostname, None, 0, Some(&message)).await;
                return;
            }
            Fetched::Stopped => return,
        };
        let repos = page["repos"].as_array().cloned().unwrap_or_default();
        let checks: Vec<(String, String)> = repos
            .iter()
            .filter(|r| r["active"].as_bool() != Some(false))
            .filter_map(|r| r["did"].as_str())
            .filter(|did| syntax::validate_did(did).is_ok())
            .map(|did| (did.to_string(), CHECK_MARKER.to_string()))
            .collect();
        let count = checks.len() as u64;
        let index = collections.index.clone();
        if !matches!(tokio::task::spawn_blocking(move || index.add_pending(&checks)).await, Ok(Ok(()))) {
            if !job.pause(Duration::from_secs(5)).await {
                return;
            }
            continue;
        }
        collections.work.notify_one();
        let next = page["cursor"].as_str().filter(|c| !c.is_empty() && !repos.is_empty()).map(str::to_string);
        if let Err(error) = store.save_crawl_page(&host.hostname, next.as_deref(), count as i64, None).await {
            tracing::error!(%error, host = %host.hostname, "backfill: saving crawl progress");
        }
        job.found.fetch_add(count, Ordering::Relaxed);
        collections.metrics.backfill_dids.with_label_values(&["crawl"]).inc_by(count);
        collections.metrics.backfill_pages.with_label_values(&["crawl"]).inc();
        match next {
            Some(next) => cursor = Some(next),
            None => return,
        }
    }
}

/// Resumes jobs that were running when the relay stopped.
pub async fn resume(store: &Store, collections: &Arc<Collections>) {
    let running = match store.running_backfills().await {
        Ok(running) => running,
        Err(error) => {
            tracing::warn!(%error, "backfill: reading jobs to resume");
            return;
        }
    };
    for (kind, source) in running {
        let result = match kind.as_str() {
            "import" => start_import(store, collections, &source, &[]).await,
            "crawl" => start_crawl(store, collections, &source).await,
            _ => continue,
        };
        match result {
            Ok(()) => tracing::info!(%kind, %source, "backfill: resumed"),
            Err(error) => tracing::warn!(%kind, %source, %error, "backfill: could not resume"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsid_lists_take_one_nsid_per_line() {
        let text = "# Lexicons\n- app.bsky.feed.post: posts\n* `sh.tangled.repo`\nnot an nsid\n\napp.bsky.feed.post\nfyi.unravel.frontpage.post extra words\n";
        assert_eq!(
            parse_nsid_list(text),
            vec!["app.bsky.feed.post", "fyi.unravel.frontpage.post", "sh.tangled.repo"]
        );
    }
}
