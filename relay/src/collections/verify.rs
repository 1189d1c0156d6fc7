//! Settles DIDs that need a look at the network before the index may list them.
//!
//! Two kinds of pending work share one persisted queue (the index's `pending` family):
//! - pairs imported by a backfill: the DID must resolve, and its current PDS must be a host
//!   this relay knows and does not consider gone, or the pairs are dropped as ghosts;
//! - `describeRepo` checks (the marker collection `""`): a commit whose proof could not tell
//!   whether a collection emptied, a `#sync`, or a DID found by a crawl. The PDS's answer
//!   replaces what the index holds for the repo.
//!
//! The verifier sweeps the queue in DID order; a DID whose PDS is rate-limiting us right now
//! is left for the next sweep, so one slow host never holds up the others.

use super::index::Change;
use super::Lookups;
use super::{Collections, CHECK_MARKER};
use crate::storage::HostStatus;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// DIDs read from the queue per step.
const SWEEP_BATCH: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Checked; the index now holds what the network says.
    Done,
    /// Not listed: `reason` says why (ghost, gone host, ...).
    Dropped(&'static str),
    /// Try again later (rate limited, transient failure).
    Deferred,
}

pub async fn run(lookups: Lookups, collections: Arc<Collections>) {
    let mut after: Option<String> = None;
    loop {
        let index = collections.index.clone();
        let from = after.clone();
        let batch = tokio::task::spawn_blocking(move || index.pending(from.as_deref(), SWEEP_BATCH)).await;
        let batch = match batch {
            Ok(Ok(batch)) => batch,
            Ok(Err(super::index::IndexError::Closed)) => return,
            Ok(Err(error)) => {
                tracing::error!(%error, "collections: reading the verification queue");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(_) => return,
        };
        let Some(last) = batch.last() else {
            if after.take().is_none() {
                // Queue empty: wait for work (or re-sweep deferred DIDs now and then).
                let _ = tokio::time::timeout(Duration::from_secs(5), collections.work.notified()).await;
            }
            continue;
        };
        after = Some(last.0.clone());
        // Imported pairs with identity checks off need no network: settle them in bulk.
        let (trusted, batch): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(_, pending)| {
            !collections.config.verify_identity && !pending.iter().any(|c| c == CHECK_MARKER)
        });
        if !trusted.is_empty() {
            settle_trusted(&lookups, &collections, trusted).await;
        }
        if batch.is_empty() {
            continue;
        }
        let total = batch.len();
        let deferred = futures_util::stream::iter(batch)
            .map(|(did, pending)| {
                let (lookups, collections) = (lookups.clone(), collections.clone());
                async move {
                    let settled = settle(&lookups, &collections, &did, &pending).await;
                    record(&collections, &did, &pending, &settled).await;
                    settled == Settled::Deferred
                }
            })
            .buffer_unordered(collections.config.verify_concurrency)
            .filter(|deferred| std::future::ready(*deferred))
            .count()
            .await;
        if deferred == total {
            // Everything here waits on rate limits: do not spin.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Lists imported pairs without identity checks (the operator chose to trust the source);
/// accounts the relay knows as inactive are still hidden, deleted ones still dropped.
async fn settle_trusted(
    lookups: &Lookups,
    collections: &Arc<Collections>,
    batch: Vec<(String, Vec<String>)>,
) {
    let dids: Vec<&str> = batch.iter().map(|(did, _)| did.as_str()).collect();
    let inactive = match lookups.store.inactive_statuses(&dids).await {
        Ok(inactive) => inactive,
        Err(error) => {
            tracing::warn!(%error, "collections: reading account statuses; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    let index = collections.index.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut changes = Vec::new();
        let mut dropped = 0u64;
        for (did, pending) in &batch {
            if index.inactive_status(did)?.as_deref() == Some("deleted") {
                dropped += 1;
                continue;
            }
            if let Some(status) = inactive.get(did) {
                changes.push(Change::Status {
                    did: did.clone(),
                    active: false,
                    status: Some(status.as_str().to_string()),
                });
            }
            changes.extend(pending.iter().map(|c| Change::Add { did: did.clone(), collection: c.clone() }));
        }
        let totals = index.apply(&changes)?;
        index.remove_pending(&batch)?;
        Ok::<_, super::index::IndexError>((totals, batch.len() as u64 - dropped, dropped))
    })
    .await;
    match result {
        Ok(Ok(((added, removed), listed, dropped))) => {
            collections.metrics.note_changes(added, removed);
            collections.metrics.verified.with_label_values(&["listed"]).inc_by(listed);
            collections.metrics.verified.with_label_values(&["deleted"]).inc_by(dropped);
        }
        Ok(Err(error)) => tracing::error!(%error, "collections: settling imported pairs"),
        Err(_) => {}
    }
}

async fn record(collections: &Arc<Collections>, did: &str, pending: &[String], settled: &Settled) {
    let result = match settled {
        Settled::Done => "listed",
        Settled::Dropped(reason) => reason,
        Settled::Deferred => {
            collections.metrics.verified.with_label_values(&["deferred"]).inc();
            return;
        }
    };
    collections.metrics.verified.with_label_values(&[result]).inc();
    let (index, settled) = (collections.index.clone(), vec![(did.to_string(), pending.to_vec())]);
    let removed = tokio::task::spawn_blocking(move || index.remove_pending(&settled)).await;
    if !matches!(removed, Ok(Ok(_))) {
        tracing::warn!("collections: removing settled work from the queue failed; it will be redone");
    }
}

async fn apply(collections: &Arc<Collections>, changes: Vec<Change>) -> Result<(), ()> {
    let index = collections.index.clone();
    match tokio::task::spawn_blocking(move || index.apply(&changes)).await {
        Ok(Ok((added, removed))) => {
            collections.metrics.note_changes(added, removed);
            Ok(())
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "collections: applying verified changes");
            Err(())
        }
        Err(_) => Err(()),
    }
}

/// Works out what the network says about one DID and applies it.
pub async fn settle(
    lookups: &Lookups,
    collections: &Arc<Collections>,
    did: &str,
    pending: &[String],
) -> Settled {
    let check = pending.iter().any(|c| c == CHECK_MARKER);
    let imported: Vec<String> = pending.iter().filter(|c| c.as_str() != CHECK_MARKER).cloned().collect();
    if matches!(collections.index.inactive_status(did), Ok(Some(status)) if status == "deleted") {
        return Settled::Dropped("deleted");
    }
    let mut changes = Vec::new();
    // What the relay itself knows wins over anything an import says about status.
    if let Ok(Some(account)) = lookups.store.account(did).await {
        if !account.is_active() {
            let status = account.effective_status().to_string();
            changes.push(Change::Status { did: did.to_string(), active: false, status: Some(status) });
        }
    }
    let needs_identity = check || collections.config.verify_identity;
    let endpoint = if needs_identity {
        match pds_of(lookups, did).await {
            Ok(endpoint) => Some(endpoint),
            Err(settled) => return settled,
        }
    } else {
        None
    };
    changes.extend(imported.iter().map(|c| Change::Add { did: did.to_string(), collection: c.clone() }));
    if check {
        let endpoint = endpoint.expect("resolved above when checking");
        match describe_repo(collections, &endpoint, did).await {
            Described::Collections(found) => {
                let mut all = found;
                all.extend(imported.iter().cloned());
                all.sort();
                all.dedup();
                changes.push(Change::Replace { did: did.to_string(), collections: all });
            }
            Described::Status(status) => {
                changes.push(Change::Status {
                    did: did.to_string(),
                    active: false,
                    status: Some(status.into()),
                });
            }
            Described::Refused => return Settled::Dropped("describe_refused"),
            Described::Later => return Settled::Deferred,
        }
    }
    match apply(collections, changes).await {
        Ok(()) => Settled::Done,
        Err(()) => Settled::Deferred,
    }
}

/// The DID's PDS endpoint, if it is on a host this relay knows and has not given up on.
async fn pds_of(lookups: &Lookups, did: &str) -> Result<String, Settled> {
    let identity = match lookups.resolver.resolve(did).await {
        Ok(identity) => identity,
        Err(error) if error.is_transient() => return Err(Settled::Deferred),
        Err(_) => return Err(Settled::Dropped("unresolvable")),
    };
    let (Some(endpoint), Some(hostname)) = (identity.pds_endpoint.clone(), identity.pds_host()) else {
        return Err(Settled::Dropped("no_pds"));
    };
    match lookups.store.host_by_name(hostname).await {
        Ok(Some(host)) if host.status == HostStatus::Banned => Err(Settled::Dropped("banned_host")),
        Ok(Some(host)) if host.status == HostStatus::Offline => Err(Settled::Dropped("host_offline")),
        Ok(Some(_)) => Ok(endpoint),
        Ok(None) => Err(Settled::Dropped("unknown_host")),
        Err(_) => Err(Settled::Deferred),
    }
}

enum Described {
    Collections(Vec<String>),
    /// The PDS says the account is not active (`deactivated`, `takendown`, `deleted`).
    Status(&'static str),
    /// A client error the PDS will keep giving (the check is dropped, not retried forever).
    Refused,
    Later,
}

fn host_key(endpoint: &str) -> String {
    url::Url::parse(endpoint)
        .ok()
        .and_then(|u| u.host_str().map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0))))
        .unwrap_or_else(|| endpoint.to_string())
}

async fn describe_repo(collections: &Arc<Collections>, endpoint: &str, did: &str) -> Described {
    let host = collections.limiter.pacing_key(&host_key(endpoint)).await;
    if collections.limiter.try_take(&host).is_some() {
        return Described::Later;
    }
    let url = format!("{}/xrpc/com.atproto.repo.describeRepo?repo={did}", endpoint.trim_end_matches('/'));
    let response = match collections.client.get(&url).send().await {
        Ok(response) => response,
        Err(_) => {
            collections.limiter.observe_failure(&host);
            collections.metrics.backfill_errors.with_label_values(&["describe"]).inc();
            return Described::Later;
        }
    };
    let status = response.status().as_u16();
    if collections.limiter.observe(&host, status, response.headers()).is_some() {
        if status == 429 {
            collections.metrics.backfill_rate_limited.inc();
        }
        return Described::Later;
    }
    let body: serde_json::Value = match response.json().await {
        Ok(body) => body,
        Err(_) => return Described::Later,
    };
    if status == 200 {
        let found = body["collections"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|c| c.as_str())
                    .filter(|c| crate::atproto::syntax::validate_nsid(c).is_ok())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        return Described::Collections(found);
    }
    match body["error"].as_str() {
        Some("RepoNotFound") => Described::Status("deleted"),
        Some("RepoDeactivated") => Described::Status("deactivated"),
        Some("RepoTakendown") => Described::Status("takendown"),
        Some("RepoSuspended") => Described::Status("suspended"),
        _ => {
            collections.metrics.backfill_errors.with_label_values(&["describe"]).inc();
            Described::Refused
        }
    }
}
