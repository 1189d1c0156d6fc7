//! The validation stage at run time: events are sharded by DID over a fixed set of
//! workers, so each account's events are judged in arrival order while different
//! accounts are validated in parallel. The queue in front of the workers has a byte
//! budget (a semaphore of bytes): ingest waits when it is spent, which slows the
//! upstream sockets down instead of dropping events.

use super::verdict::{verify_event, AccountView, Policy, Rejection, RepoState};
use crate::accounts::Accounts;
use crate::atproto::frame::Event;
use crate::config::ServeConfig;
use crate::identity::Resolver;
use crate::metrics::Metrics;
use crate::progress::{Activity, InFlight};
use crate::sequence::{Outgoing, SequencerInput};
use crate::storage::{AccountStatus, Store};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

pub struct Incoming {
    pub host_id: i64,
    pub hostname: Arc<str>,
    pub event: Event,
    in_flight: InFlight,
    _budget: OwnedSemaphorePermit,
}

/// The stage's intake, shared by ingest and the admin re-sync. Closing it (shutdown) drops
/// the queues' senders: each worker finishes what is queued and ends.
#[derive(Clone)]
pub struct ValidationStage {
    shards: Arc<RwLock<Option<Vec<mpsc::Sender<Incoming>>>>>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

/// The stage takes no more events (the relay is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the validation stage is closed")]
pub struct Closed;

/// What the validation workers use, and nothing else.
pub struct ValidationDeps {
    pub config: Arc<ServeConfig>,
    pub store: Store,
    pub accounts: Arc<Accounts>,
    pub resolver: Arc<Resolver>,
    pub metrics: Metrics,
    pub policy: Policy,
    pub sequencer: SequencerInput,
    pub activity: Arc<Activity>,
    /// The stage's own intake, for the queue-size gauge.
    pub intake: ValidationStage,
}

/// Creates the queues; the receivers go to `spawn_workers`.
pub fn channels(
    workers: usize,
    shard_queue_events: usize,
    budget_bytes: usize,
) -> (ValidationStage, Vec<mpsc::Receiver<Incoming>>) {
    let workers = workers.max(1);
    // The byte budget bounds memory; the per-shard queues only need to absorb bursts.
    let (shards, receivers) = (0..workers).map(|_| mpsc::channel(shard_queue_events.max(1))).unzip();
    let budget_bytes = budget_bytes.clamp(8 << 20, u32::MAX as usize >> 4);
    let stage = ValidationStage {
        shards: Arc::new(RwLock::new(Some(shards))),
        budget: Arc::new(Semaphore::new(budget_bytes)),
        budget_bytes,
    };
    (stage, receivers)
}

fn shard_of(did: &str, shards: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    did.hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

impl ValidationStage {
    /// Queues an event, waiting while the byte budget is spent. `Err(Closed)` once the
    /// relay is shutting down: the event was not taken (nor is its `in_flight` done, so the
    /// caller must not move its cursor past it).
    pub async fn submit(
        &self,
        host_id: i64,
        hostname: Arc<str>,
        event: Event,
        size: usize,
        in_flight: InFlight,
    ) -> Result<(), Closed> {
        let permits = size.clamp(1, self.budget_bytes) as u32;
        let Ok(budget) = self.budget.clone().acquire_many_owned(permits).await else {
            in_flight.abandon();
            return Err(Closed);
        };
        let Some(sender) = self.sender_for(event.did().unwrap_or_default()) else {
            in_flight.abandon();
            return Err(Closed);
        };
        let incoming = Incoming { host_id, hostname, event, in_flight, _budget: budget };
        match sender.send(incoming).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(refused)) => {
                refused.in_flight.abandon();
                Err(Closed)
            }
        }
    }

    /// The queue of the worker that judges `did`'s events; `None` once closed.
    fn sender_for(&self, did: &str) -> Option<mpsc::Sender<Incoming>> {
        let shards = self.shards.read().unwrap_or_else(|p| p.into_inner());
        let shards = shards.as_ref()?;
        Some(shards[shard_of(did, shards.len())].clone())
    }

    /// Takes no more events; the workers finish what is queued and end.
    pub fn close(&self) {
        self.shards.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.budget_bytes - self.budget.available_permits()
    }
}

/// Starts one worker per queue; each ends once the intake is closed and its queue is empty.
pub fn spawn_workers(
    deps: Arc<ValidationDeps>,
    receivers: Vec<mpsc::Receiver<Incoming>>,
) -> Vec<JoinHandle<()>> {
    receivers
        .into_iter()
        .map(|mut receiver| {
            let relay = deps.clone();
            tokio::spawn(async move {
                while let Some(incoming) = receiver.recv().await {
                    let started = std::time::Instant::now();
                    process(&relay, incoming).await;
                    relay.metrics.validation_seconds.observe(started.elapsed().as_secs_f64());
                    relay.metrics.validation_queue_bytes.set(relay.intake.queued_bytes() as i64);
                }
            })
        })
        .collect()
}

fn reject(relay: &ValidationDeps, reason: &str) {
    relay.metrics.rejections.with_label_values(&[reason]).inc();
}

async fn process(relay: &ValidationDeps, incoming: Incoming) {
    let Incoming { host_id, hostname, mut event, in_flight, .. } = incoming;
    // Shape first: nothing is looked up or stored for a malformed event.
    if let Err(rejection) = super::verdict::check_fields(&event) {
        tracing::debug!(host = %hostname, %rejection, "dropped malformed event");
        return reject(relay, rejection.reason());
    }
    let Some(did) = event.did().map(str::to_string) else {
        return;
    };
    let mut step = StepTimer::new();
    // Database trouble holds the event (and slows intake), it never drops it.
    let mut store_retry = StoreRetry::new(&did);
    let known = loop {
        match relay.accounts.known(&did).await {
            Ok(known) => break known,
            Err(error) => store_retry.wait(relay, "loading account state", error).await,
        }
    };
    // A new account costs a row: refuse it here when its host is full, before any lookup.
    if known.is_none() {
        let room = loop {
            match relay.accounts.host_has_room(host_id).await {
                Ok(room) => break room,
                Err(error) => store_retry.wait(relay, "counting the host's accounts", error).await,
            }
        };
        if !room {
            return reject(relay, "host_account_limit");
        }
    }
    step.done(&relay.metrics.validation_steps.account);
    // `#identity` announces a change: judge it on a fresh document.
    let fresh = matches!(event, Event::Identity(_));
    let mut identity = match resolve_holding(relay, &did, fresh).await {
        Ok(identity) => identity,
        Err(rejection) => return reject(relay, rejection.reason()),
    };
    step.done(&relay.metrics.validation_steps.identity);
    let last = known.as_ref().and_then(|account| match (&account.rev, &account.data_cid) {
        (Some(rev), Some(data)) => {
            cid::Cid::try_from(data.as_str()).ok().map(|data| RepoState { rev: rev.clone(), data })
        }
        _ => None,
    });
    // #account carries the upstream's status; judge the event itself as active.
    let active = matches!(event, Event::Account(_)) || known.as_ref().is_none_or(|a| a.is_active());
    let known_on_source = known.as_ref().is_some_and(|a| a.host_id == Some(host_id));
    let now = crate::clock::now_micros();
    // Lenient validation per host (RELAY_LENIENT_HOSTS) for upstreams not yet on Sync 1.1.
    let policy = match relay.config.is_lenient_host(&hostname) {
        true => Policy { lenient: true, ..relay.policy },
        false => relay.policy,
    };
    let judge = |identity: Option<&crate::identity::Identity>| {
        let view = AccountView { identity, active, source_host: Some(&hostname), known_on_source };
        verify_event(&event, &view, last.as_ref(), &policy, now)
    };
    let mut verdict = judge(identity.as_deref());
    step.done(&relay.metrics.validation_steps.verify);
    if !fresh && verdict.as_ref().err().is_some_and(Rejection::identity_may_be_stale) {
        // Key rotation or migration: look the identity up again once before dropping.
        identity = match resolve_holding(relay, &did, true).await {
            Ok(identity) => identity,
            Err(rejection) => return reject(relay, rejection.reason()),
        };
        verdict = judge(identity.as_deref());
    }
    relay.metrics.identity_cache_entries.set(relay.resolver.cache_len() as i64);
    relay.metrics.identity_cache_bytes.set(relay.resolver.cache_bytes() as i64);
    let accepted = match verdict {
        Ok(accepted) => accepted,
        Err(rejection) => {
            tracing::debug!(%did, host = %hostname, %rejection, "dropped event");
            return reject(relay, rejection.reason());
        }
    };
    if accepted.chain_break.is_some() {
        relay.metrics.chain_breaks.inc();
    }
    // Only now, for an event that passed, does the relay keep anything about the account.
    let account = match known {
        Some(account) => account,
        None => loop {
            match relay.accounts.create(&did, host_id).await {
                Ok(Some(account)) => break account,
                Ok(None) => return reject(relay, "host_account_limit"),
                Err(error) => store_retry.wait(relay, "storing a new account", error).await,
            }
        },
    };
    let state = loop {
        match apply(relay, &account, host_id, &mut event, &accepted).await {
            Ok(state) => break state,
            Err(error) => store_retry.wait(relay, "storing account state", error).await,
        }
    };
    step.done(&relay.metrics.validation_steps.apply);
    relay.metrics.events_accepted_by_type.inc(event.type_name());
    relay.activity.note_accepted();
    let outgoing = Outgoing { did, event, in_flight: Some(in_flight), state };
    if relay.sequencer.send(outgoing).await.is_err() {
        // Only at shutdown, after ingest stopped: the sequencer closes after these workers
        // end, so this does not happen; if it did, the host re-sends the event.
        tracing::warn!("sequencer closed before the validation stage drained");
    }
    step.done(&relay.metrics.validation_steps.sequencer_queue);
}

/// First wait after a transient lookup failure; doubled per attempt up to the cap.
const HOLD_FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(250);
const HOLD_MAX_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// The account's identity: `Ok(Some)` resolved, `Ok(None)` a definite "no identity" (not
/// found, tombstoned, unusable document). A transient failure (timeout, 5xx, 429, connection
/// error) never becomes a drop: this worker holds the event, which keeps the account's later
/// events behind it in order and, once the byte budget is spent, slows the hosts down, and
/// asks again with backoff. A did:web host that stays unreachable for `did_web_hold` is
/// treated as having no working identity (`identity_unavailable`); the PLC directory is
/// waited for as long as it takes.
async fn resolve_holding(
    relay: &ValidationDeps,
    did: &str,
    fresh: bool,
) -> Result<Option<Arc<crate::identity::Identity>>, Rejection> {
    let error = match lookup(relay, did, fresh).await {
        Ok(identity) => return Ok(identity),
        Err(error) => error,
    };
    let _held = HeldAccount::new(relay);
    let started = std::time::Instant::now();
    let mut delay = HOLD_FIRST_RETRY;
    let mut attempts = 1u32;
    let mut last_error = error;
    loop {
        if did.starts_with("did:web:") && started.elapsed() >= relay.config.did_web_hold {
            tracing::warn!(%did, attempts, error = %last_error, "did:web identity unavailable; dropping its event");
            return Err(Rejection::IdentityUnavailable);
        }
        if attempts == 1 || attempts % 10 == 0 {
            tracing::warn!(%did, attempts, error = %last_error, "identity lookup failed transiently; holding the account's events");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(HOLD_MAX_RETRY);
        relay.metrics.identity_lookup_retries.inc();
        attempts += 1;
        match lookup(relay, did, true).await {
            Err(error) => last_error = error,
            Ok(identity) => return Ok(identity),
        }
    }
}

/// One lookup: `Err` only for a transient failure.
async fn lookup(
    relay: &ValidationDeps,
    did: &str,
    fresh: bool,
) -> Result<Option<Arc<crate::identity::Identity>>, crate::identity::ResolveError> {
    let result = if fresh { relay.resolver.refresh(did).await } else { relay.resolver.resolve(did).await };
    match result {
        Ok(identity) => Ok(Some(identity)),
        Err(error) if error.is_transient() => Err(error),
        Err(_) => Ok(None),
    }
}

/// Backoff for database calls of one event: each failure is logged (the first, then every
/// tenth) and waited out; the event is then tried again, never dropped.
struct StoreRetry<'d> {
    did: &'d str,
    failures: u32,
    delay: std::time::Duration,
}

impl<'d> StoreRetry<'d> {
    fn new(did: &'d str) -> Self {
        StoreRetry { did, failures: 0, delay: HOLD_FIRST_RETRY }
    }

    async fn wait(&mut self, relay: &ValidationDeps, what: &str, error: crate::storage::StoreError) {
        self.failures += 1;
        if self.failures == 1 || self.failures % 10 == 0 {
            tracing::error!(%error, did = %self.did, failures = self.failures, "{what} failed; holding the event and retrying");
        }
        relay.metrics.store_retries.inc();
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(HOLD_MAX_RETRY);
    }
}

/// Counts an account in `relay_identity_held_accounts` while it waits.
struct HeldAccount<'r>(&'r ValidationDeps);

impl<'r> HeldAccount<'r> {
    fn new(relay: &'r ValidationDeps) -> Self {
        relay.metrics.identity_held_accounts.inc();
        HeldAccount(relay)
    }
}

impl Drop for HeldAccount<'_> {
    fn drop(&mut self) {
        self.0.metrics.identity_held_accounts.dec();
    }
}

/// One event in this many has its steps timed.
const STEP_SAMPLE_EVERY: u32 = 8;

thread_local! {
    static STEP_SAMPLE_COUNTER: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Observes the time since the previous step into `relay_validation_step_seconds`, for one
/// event in [`STEP_SAMPLE_EVERY`]: five histogram updates per event, on histograms both
/// workers write, cost ~0.6 µs per event at saturation; a sample shows the same split.
struct StepTimer {
    last: Option<std::time::Instant>,
}

impl StepTimer {
    fn new() -> Self {
        let sampled = STEP_SAMPLE_COUNTER.with(|counter| {
            let n = counter.get().wrapping_add(1);
            counter.set(n);
            n % STEP_SAMPLE_EVERY == 0
        });
        StepTimer { last: sampled.then(std::time::Instant::now) }
    }

    fn done(&mut self, step: &prometheus::Histogram) {
        if let Some(last) = self.last {
            let now = std::time::Instant::now();
            step.observe(now.duration_since(last).as_secs_f64());
            self.last = Some(now);
        }
    }
}

/// Persists what an accepted event changes, and adjusts the outgoing event.
async fn apply(
    relay: &ValidationDeps,
    account: &crate::storage::Account,
    host_id: i64,
    event: &mut Event,
    accepted: &super::verdict::Accepted,
) -> Result<Option<crate::sequence::StateUpdate>, crate::storage::StoreError> {
    let mut updated = account.clone();
    if account.host_id != Some(host_id) {
        relay.store.set_account_host(&account.did, account.host_id, host_id).await?;
        updated.host_id = Some(host_id);
    }
    // (`#identity` needs nothing here: it was judged on a freshly fetched document, which
    // is now cached.)
    if let Event::Account(upstream) = event {
        let status = AccountStatus::from_event(upstream.active, upstream.status.as_deref());
        relay.store.set_upstream_status(&account.did, &status).await?;
        updated.upstream_status = status;
        // Hop by hop: consumers see the status at this relay (a local takedown wins).
        upstream.active = updated.is_active();
        upstream.status = (!updated.is_active()).then(|| updated.effective_status().to_string());
    }
    // The new repo state is cached now (the next event of this DID needs it) and stored in
    // SQL by the sequencer's state writer once the event is durable in the log.
    let mut update = None;
    if let Some(state) = &accepted.new_state {
        let commit_cid = match event {
            Event::Commit(commit) => Some(commit.commit.to_string()),
            _ => None,
        };
        let data = state.data.to_string();
        updated.rev = Some(state.rev.clone());
        updated.data_cid = Some(data.clone());
        if commit_cid.is_some() {
            updated.commit_cid = commit_cid.clone();
        }
        update = Some(crate::sequence::StateUpdate { rev: state.rev.clone(), data, commit: commit_cid });
    }
    relay.accounts.remember(updated);
    Ok(update)
}
