//! The validation stage at run time: events are sharded by DID over a fixed set of
//! workers, so each account's events are judged in arrival order while different
//! accounts are validated in parallel. The queue in front of the workers has a byte
//! budget (a semaphore of bytes): ingest waits when it is spent, which slows the
//! upstream sockets down instead of dropping events.

use super::verdict::{verify_event, AccountView, Rejection, RepoState};
use crate::app::Relay;
use crate::atproto::frame::Event;
use crate::sequence::Outgoing;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

pub struct Incoming {
    pub host_id: i64,
    pub hostname: Arc<str>,
    pub event: Event,
    in_flight: crate::ingest::InFlight,
    _budget: OwnedSemaphorePermit,
}

pub struct ValidationStage {
    shards: Vec<mpsc::Sender<Incoming>>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

/// Creates the queues; the receivers go to `spawn_workers`.
pub fn channels(workers: usize, budget_bytes: usize) -> (ValidationStage, Vec<mpsc::Receiver<Incoming>>) {
    let workers = workers.max(1);
    // The byte budget bounds memory; the per-shard queues only need to absorb bursts.
    let (shards, receivers) = (0..workers).map(|_| mpsc::channel(1024)).unzip();
    let budget_bytes = budget_bytes.clamp(8 << 20, u32::MAX as usize >> 4);
    let stage = ValidationStage { shards, budget: Arc::new(Semaphore::new(budget_bytes)), budget_bytes };
    (stage, receivers)
}

fn shard_of(did: &str, shards: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    did.hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

impl ValidationStage {
    /// Queues an event, waiting while the byte budget is spent.
    pub async fn submit(
        &self,
        host_id: i64,
        hostname: Arc<str>,
        event: Event,
        size: usize,
        in_flight: crate::ingest::InFlight,
    ) {
        let permits = size.clamp(1, self.budget_bytes) as u32;
        let Ok(budget) = self.budget.clone().acquire_many_owned(permits).await else {
            return;
        };
        let shard = shard_of(event.did().unwrap_or_default(), self.shards.len());
        let _ =
            self.shards[shard].send(Incoming { host_id, hostname, event, in_flight, _budget: budget }).await;
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.budget_bytes - self.budget.available_permits()
    }
}

pub fn spawn_workers(relay: Arc<Relay>, receivers: Vec<mpsc::Receiver<Incoming>>) {
    for mut receiver in receivers {
        let relay = relay.clone();
        tokio::spawn(async move {
            while let Some(incoming) = receiver.recv().await {
                let started = std::time::Instant::now();
                process(&relay, incoming).await;
                relay.metrics.validation_seconds.observe(started.elapsed().as_secs_f64());
                relay
                    .metrics
                    .queue_bytes
                    .with_label_values(&["validation"])
                    .set(relay.validation.queued_bytes() as i64);
            }
        });
    }
}

fn reject(relay: &Relay, reason: &str) {
    relay.metrics.rejections.with_label_values(&[reason]).inc();
}

async fn process(relay: &Arc<Relay>, incoming: Incoming) {
    let Incoming { host_id, hostname, mut event, in_flight, .. } = incoming;
    let Some(did) = event.did().map(str::to_string) else {
        return;
    };
    let mut step = StepTimer::new(relay);
    let account = match relay.account(&did, Some(host_id)).await {
        Ok(account) => account,
        Err(error) => {
            tracing::error!(%error, %did, "loading account state");
            return reject(relay, "store_error");
        }
    };
    if !account_within_host_limit(relay, &account, host_id).await {
        return reject(relay, "host_account_limit");
    }
    step.done("account");
    let mut identity = relay.resolver.resolve(&did).await.ok();
    step.done("identity");
    let last = match (&account.rev, &account.data_cid) {
        (Some(rev), Some(data)) => {
            cid::Cid::try_from(data.as_str()).ok().map(|data| RepoState { rev: rev.clone(), data })
        }
        _ => None,
    };
    // #account carries the upstream's status; judge the event itself as active.
    let active = matches!(event, Event::Account(_)) || account.is_active();
    let now = super::verdict::now_micros();
    let judge = |identity: Option<&crate::identity::Identity>| {
        let view = AccountView { identity, active, source_host: Some(&hostname) };
        verify_event(&event, &view, last.as_ref(), &relay.policy, now)
    };
    let mut verdict = judge(identity.as_deref());
    step.done("verify");
    if verdict.as_ref().err().is_some_and(Rejection::identity_may_be_stale) {
        // Key rotation or migration: look the identity up again once before dropping.
        identity = relay.resolver.refresh(&did).await.ok();
        verdict = judge(identity.as_deref());
    }
    relay.metrics.identity_cache_entries.set(relay.resolver.cache_len() as i64);
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
    let state = match apply(relay, &account, host_id, &mut event, &accepted).await {
        Ok(state) => state,
        Err(error) => {
            tracing::error!(%error, %did, "storing account state");
            return reject(relay, "store_error");
        }
    };
    step.done("apply");
    relay.metrics.events_accepted.with_label_values(&[event.type_name()]).inc();
    relay.note_accepted();
    let outgoing = Outgoing { did, event, in_flight: Some(in_flight), state };
    let _ = relay.sequencer.input.send(outgoing).await;
    step.done("sequencer_queue");
}

/// Observes the time since the previous step into `relay_validation_step_seconds`.
struct StepTimer<'r> {
    relay: &'r Relay,
    last: std::time::Instant,
}

impl<'r> StepTimer<'r> {
    fn new(relay: &'r Relay) -> Self {
        StepTimer { relay, last: std::time::Instant::now() }
    }

    fn done(&mut self, step: &str) {
        let now = std::time::Instant::now();
        let seconds = now.duration_since(self.last).as_secs_f64();
        self.relay.metrics.validation_step_seconds.with_label_values(&[step]).observe(seconds);
        self.last = now;
    }
}

/// Refuses events for accounts beyond a host's account limit (new accounts only).
async fn account_within_host_limit(relay: &Relay, account: &crate::storage::Account, host_id: i64) -> bool {
    if account.rev.is_some() || account.host_id != Some(host_id) {
        return true;
    }
    let Ok(Some(host)) = relay.store.host_by_id(host_id).await else {
        return true;
    };
    match relay.store.count_host_accounts(host_id).await {
        Ok(count) => count <= host.account_limit,
        Err(_) => true,
    }
}

/// Persists what an accepted event changes, and adjusts the outgoing event.
async fn apply(
    relay: &Relay,
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
    match event {
        Event::Account(upstream) => {
            let status = if upstream.active {
                "active".to_string()
            } else {
                upstream.status.clone().unwrap_or_else(|| "deactivated".into())
            };
            relay.store.set_upstream_status(&account.did, &status).await?;
            updated.upstream_status = status;
            // Hop by hop: consumers see the status at this relay (a local takedown wins).
            upstream.active = updated.is_active();
            upstream.status = (!updated.is_active()).then(|| updated.effective_status().to_string());
        }
        Event::Identity(_) => {
            let _ = relay.resolver.refresh(&account.did).await;
        }
        _ => {}
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
    relay.cache_account(updated);
    Ok(update)
}
