//! The one place the relay is put together: opens storage and the event log, builds each
//! stage with the handles it uses (and only those), starts their tasks, and keeps every
//! task handle so shutdown can stop them in order and wait for each.
//!
//! ```text
//! ingest (HostRegistry) ─► validation (ValidationDeps) ─► sequencer thread ─► fan-out
//!                                                            │   (log)          │
//!                                                            └► state writer    └► collections
//! ```
//!
//! Shutdown is the same order: ingest stops (each subscription saves its cursor), the
//! validation intake closes and its workers finish what is queued, the sequencer's input
//! closes and its thread writes the rest and closes the log, the state writer stores the
//! repo state, the cursors are saved once more (everything in flight is durable now), and
//! the collection index closes last. No step sleeps: each waits for the tasks before it.
//!
//! Stage modules never import this module (CI checks it); only `main` and tests do.

use crate::accounts::Accounts;
use crate::app::Relay;
use crate::collections::{Collections, CollectionsConfig};
use crate::config::ServeConfig;
use crate::coverage::selfcheck::{self, SelfCheckConfig, SelfCheckDeps};
use crate::fanout::{Fanout, FanoutConfig};
use crate::identity::{IdentityConfig, Resolver};
use crate::ingest::HostRegistry;
use crate::metrics::Metrics;
use crate::progress::Activity;
use crate::sequence::log::{EventLog, LogConfig, LogError};
use crate::sequence::{self, SequencerConfig, StateUpdate};
use crate::storage::{RepoStateUpdate, Store};
use crate::validate::stage::{self, ValidationDeps};
use crate::validate::Policy;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{JoinHandle, JoinSet};

/// A started relay: the façade for the HTTP handlers and the tasks shutdown waits for.
pub struct Running {
    pub relay: Arc<Relay>,
    tasks: Tasks,
}

/// Every task the relay started, by the step of shutdown that ends it.
struct Tasks {
    /// Loops with no work of their own in flight: the cursor flusher, the idle-host watcher,
    /// the coverage self-check, host discovery. Aborted first.
    background: JoinSet<()>,
    /// One per validation queue; they end when the intake is closed and their queue is empty.
    validation: Vec<JoinHandle<()>>,
    /// Owns the event log; ends when its input is closed and drained.
    sequencer: std::thread::JoinHandle<Result<(), LogError>>,
    /// Stores repo state from durable events; ends when the sequencer thread has.
    state_writer: JoinHandle<()>,
    /// Live indexer, verifier, pruner and gauges of the collection directory.
    collections: Vec<JoinHandle<()>>,
}

/// Opens storage and the log, builds the stages and starts their tasks. Ingest is built
/// but subscribes to nothing until [`Running::start_ingest`].
pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // Starting on a full disk would fail later in ways that say less (RocksDB aborts on its
    // own assertion): refuse now, naming the directory and what is missing.
    for dir in [config.data_dir.clone(), config.persist_dir()] {
        crate::disk::ensure_free_space(&dir, config.min_free_disk_bytes)?;
    }
    let store = Store::connect(&config.database_url(), config.max_db_connections)
        .await
        .context("opening the database")?;
    let metrics = Metrics::new();
    let log = open_log(&config)?;
    recover_state(&store, &log).await.context("replaying repo state from the event log")?;

    // Sequencer: the writer end goes to validation (and takedowns), the reader end to fan-out.
    let (state_tx, state_rx) = tokio::sync::mpsc::channel(config.state_queue_updates.max(1));
    let (sequencer_input, sequencer, sequencer_thread) = sequence::start(
        log,
        sequencer_config(&config),
        config.sequencer_queue_events,
        metrics.clone(),
        state_tx,
    );
    for (did, before) in store.purges().await.context("loading takedown purges")? {
        sequencer.purges.write().unwrap_or_else(|p| p.into_inner()).insert(did, before as u64);
    }
    let state_writer = tokio::spawn(write_state(store.clone(), state_rx, config.state_flush_interval));
    let fanout = Arc::new(Fanout::new(sequencer.clone(), fanout_config(&config), metrics.clone()));

    // Validation: explicit dependencies, one worker per queue.
    let resolver = Arc::new(Resolver::new(identity_config(&config)));
    let accounts = Arc::new(Accounts::new(store.clone(), config.account_cache_bytes));
    let activity = Arc::new(Activity::default());
    let (validation, receivers) =
        stage::channels(config.workers(), config.validation_shard_queue_events, config.ingest_queue_bytes);
    let validation_workers = stage::spawn_workers(
        Arc::new(ValidationDeps {
            config: config.clone(),
            store: store.clone(),
            accounts: accounts.clone(),
            resolver: resolver.clone(),
            metrics: metrics.clone(),
            policy: Policy { lenient: config.lenient_sync_validation, ..Policy::default() },
            sequencer: sequencer_input.clone(),
            activity: activity.clone(),
            intake: validation.clone(),
        }),
        receivers,
    );

    // Ingest: the host registry with the validation intake.
    let hosts = Arc::new(HostRegistry::new(
        config.clone(),
        store.clone(),
        metrics.clone(),
        validation.clone(),
        resolver.clone(),
    ));
    let mut background = JoinSet::new();
    background.spawn(crate::ingest::flush_cursors(hosts.clone()));
    background.spawn(crate::ingest::registry::watch_idle_hosts(hosts.clone()));

    // Collections: the store, the resolver and the fan-out (the live indexer follows it).
    let collections = open_collections(&config, &metrics)?;
    let collection_tasks = match &collections {
        Some(directory) => crate::collections::spawn(
            crate::collections::Lookups { store: store.clone(), resolver: resolver.clone() },
            fanout.clone(),
            directory,
        ),
        None => Vec::new(),
    };

    // Coverage self-check: the fan-out (the relay's own output) and the status readiness reads.
    let coverage = Arc::new(selfcheck::CoverageStatus::default());
    let self_check =
        SelfCheckDeps { fanout: fanout.clone(), metrics: metrics.clone(), coverage: coverage.clone() };
    if let Some(task) = selfcheck::spawn(self_check, SelfCheckConfig::from_serve(&config)?) {
        background.spawn(async move {
            let _ = task.await;
        });
    }

    let relay = Arc::new(Relay {
        sibling_client: sibling_client()?,
        config,
        store,
        resolver,
        metrics,
        hosts,
        accounts,
        validation,
        sequencer,
        sequencer_input,
        fanout,
        collections,
        coverage,
        activity,
    });
    let tasks = Tasks {
        background,
        validation: validation_workers,
        sequencer: sequencer_thread,
        state_writer,
        collections: collection_tasks,
    };
    Ok(Running { relay, tasks })
}

impl Running {
    /// Subscribes to the stored hosts, resumes and starts backfills, then discovers hosts
    /// from the upstream relay (periodically when configured), in the background.
    pub fn start_ingest(&mut self) {
        let relay = self.relay.clone();
        self.tasks.background.spawn(async move {
            if let Err(error) = relay.hosts.resume_hosts().await {
                tracing::error!(%error, "resuming host subscriptions");
            }
            if let Some(collections) = &relay.collections {
                start_backfills(&relay.config, &relay.store, collections).await;
            }
            crate::ingest::bootstrap::discover(relay.hosts.clone()).await;
        });
    }

    /// Stops the relay in order, waiting for each step (see the module docs). Nothing that
    /// was accepted is lost: what is queued reaches the log, and every host's saved cursor
    /// covers exactly what did.
    pub async fn shutdown(self) {
        let Running { relay, tasks } = self;
        let Tasks { mut background, validation, sequencer, state_writer, collections } = tasks;
        let started = std::time::Instant::now();
        background.shutdown().await;
        let progress = relay.hosts.progress_of_all();
        let in_flight: usize = progress.iter().map(|(_, host)| host.in_flight_count()).sum();
        relay.hosts.stop_all().await;
        relay.validation.close();
        for worker in validation {
            let _ = worker.await;
        }
        relay.sequencer_input.close();
        match tokio::task::spawn_blocking(move || sequencer.join()).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::error!(%error, "the sequencer ended with an error"),
            Ok(Err(_)) | Err(_) => tracing::error!("the sequencer thread panicked"),
        }
        let _ = state_writer.await;
        relay.hosts.save_cursors(progress).await;
        for task in &collections {
            task.abort();
        }
        for task in collections {
            let _ = task.await;
        }
        // Close RocksDB; the live indexer resumes from its checkpoint on the next start.
        if let Some(collections) = &relay.collections {
            collections.close();
        }
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            events_in_flight_at_stop = in_flight,
            head = relay.sequencer.current_head(),
            "shutdown complete: queues drained, log and indexes closed"
        );
    }
}

fn open_log(config: &ServeConfig) -> anyhow::Result<EventLog> {
    EventLog::open(LogConfig {
        dir: config.persist_dir(),
        segment_bytes: config.log_segment_bytes,
        sync: config.log_fsync,
        index_stride_bytes: config.log_index_stride_bytes,
    })
    .context("opening the event log")
}

fn sequencer_config(config: &ServeConfig) -> SequencerConfig {
    SequencerConfig {
        initial_seq: config.initial_seq_number.max(1),
        live_buffer_events: config.live_buffer_events,
        replay_window: config.replay_window,
        linger: config.sequencer_linger,
        ..SequencerConfig::default()
    }
}

fn fanout_config(config: &ServeConfig) -> FanoutConfig {
    FanoutConfig {
        write_timeout: config.consumer_write_timeout,
        ping_interval: config.consumer_ping_interval,
        close_timeout: config.consumer_close_timeout,
        max_consumers: config.max_consumers,
        max_consumers_per_ip: config.max_consumers_per_ip,
        ..FanoutConfig::default()
    }
}

fn identity_config(config: &ServeConfig) -> IdentityConfig {
    IdentityConfig {
        plc_url: config.plc_url.clone(),
        cache_entries: config.identity_cache_entries,
        cache_bytes: config.identity_cache_bytes,
        ssrf: crate::identity::ssrf::SsrfPolicy { allow_loopback: config.allow_insecure_hosts },
        ..IdentityConfig::default()
    }
}

fn open_collections(config: &ServeConfig, metrics: &Metrics) -> anyhow::Result<Option<Arc<Collections>>> {
    if config.collections_disabled {
        return Ok(None);
    }
    let collections = Collections::open(CollectionsConfig::from_serve(config), &metrics.registry)
        .context("opening the collection index")?;
    Ok(Some(collections))
}

fn sibling_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(crate::admin::siblings::FORWARD_TIMEOUT)
        .user_agent(concat!("atproto-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the sibling relay client")
}

/// Resumes interrupted backfill jobs and starts the ones the config asks for.
async fn start_backfills(config: &ServeConfig, store: &Store, collections: &Arc<Collections>) {
    use crate::collections::backfill;
    backfill::resume(store, collections).await;
    let source = config.backfill_source.clone();
    let base = backfill::source_base(&source, config.allow_insecure_hosts).map(|(base, _)| base);
    let resumed = base.as_ref().is_ok_and(|base| collections.running_job("import", base).is_some());
    if !source.is_empty() && !resumed {
        let sources = backfill::CollectionSources {
            collections: config.backfill_collections.clone(),
            collections_url: config.backfill_collections_url.clone(),
            include_indexed: false,
        };
        let started = match backfill::resolve_collections(collections, &sources).await {
            Ok(nsids) => backfill::start_import(store, collections, &source, &nsids).await,
            Err(error) => Err(error),
        };
        match started {
            Ok(()) => tracing::info!(%source, "backfill: import started"),
            // Finished earlier with nothing new to do, or already resumed.
            Err(error) => tracing::info!(%source, %error, "backfill: import not started"),
        }
    }
    if config.backfill_crawl && collections.running_job("crawl", "*").is_none() {
        let finished = store.all_crawl_progress().await.map(|p| !p.is_empty() && p.iter().all(|h| h.done));
        if !matches!(finished, Ok(true)) {
            if let Err(error) = backfill::start_crawl(store, collections, "*").await {
                tracing::warn!(%error, "backfill: crawl not started");
            }
        }
    }
}

/// Most repo state updates stored in one transaction.
const STATE_BATCH: usize = 4096;

/// Applies repo state from durable events to SQL, in seq order, and advances the checkpoint:
/// what arrives within `flush_interval` of the first update goes in one transaction, so SQL
/// keeps up at any event rate. Ends when the sequencer thread has ended and everything it
/// sent is stored.
///
/// Why gather for an interval: a transaction is four round trips to the database (with
/// SQLite, to its worker thread), and at saturation one per sequencer batch cost more CPU
/// than the rows themselves; an active account's several updates in an interval also merge
/// into one row. SQL lagging the log by that much is harmless: validation reads the account
/// directory (which has the newest state first), and a restart replays the log from the
/// checkpoint.
async fn write_state(
    store: Store,
    mut updates: tokio::sync::mpsc::Receiver<(u64, String, StateUpdate)>,
    flush_interval: Duration,
) {
    let mut batch = Vec::with_capacity(STATE_BATCH);
    while updates.recv_many(&mut batch, STATE_BATCH).await > 0 {
        let deadline = tokio::time::Instant::now() + flush_interval;
        while batch.len() < STATE_BATCH {
            let room = STATE_BATCH - batch.len();
            match tokio::time::timeout_at(deadline, updates.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break, // the sequencer has ended, or the interval is over
                Ok(_) => {}
            }
        }
        let checkpoint = batch.last().map_or(0, |(seq, _, _)| *seq as i64);
        let rows: Vec<RepoStateUpdate> = batch
            .iter()
            .map(|(_, did, state)| RepoStateUpdate {
                did,
                rev: &state.rev,
                data_cid: &state.data,
                commit_cid: state.commit.as_deref(),
            })
            .collect();
        // Retried until stored: the checkpoint must not pass state that SQL does not have. While
        // the database is unavailable this queue fills and the sequencer waits (backpressure).
        let mut delay = Duration::from_millis(100);
        while let Err(error) = save_state_attempt(&store, &rows, checkpoint).await {
            tracing::error!(%error, updates = rows.len(), "storing repo state; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        drop(rows);
        batch.clear();
    }
}

/// One attempt to store a batch of repo state. A panic inside the database driver counts as
/// a failed attempt: in a soak whose disk filled up, this task ended during a minutes-long
/// run of "database or disk is full" (whatever it printed was lost to the full disk), and SQL's
/// repo state then stayed behind the log until a restart replayed it.
async fn save_state_attempt(
    store: &Store,
    rows: &[RepoStateUpdate<'_>],
    checkpoint: i64,
) -> Result<(), String> {
    use futures_util::FutureExt;
    let attempt = std::panic::AssertUnwindSafe(store.save_repo_states(rows, checkpoint)).catch_unwind();
    match attempt.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("the database driver panicked".to_string()),
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
            let (did, blocks, commit_cid) = match frame::decode_logged(&record.frame) {
                Ok(frame::Event::Commit(c)) => (c.repo, c.blocks, Some(c.commit.to_string())),
                Ok(frame::Event::Sync(s)) => (s.did, s.blocks, None),
                _ => continue,
            };
            // Validated before it was logged: no need to hash every block again.
            let Ok(parsed) = car::read_trusted(&blocks, frame::MAX_COMMIT_BLOCKS_BYTES) else { continue };
            let Some(bytes) = parsed.get(&parsed.roots[0]) else { continue };
            let Ok(signed) = SignedCommit::decode(bytes) else { continue };
            store.ensure_account(&did, None).await?;
            states.push((did, signed.rev, signed.data.to_string(), commit_cid));
        }
        let rows: Vec<RepoStateUpdate> = states
            .iter()
            .map(|(did, rev, data, commit)| RepoStateUpdate {
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
