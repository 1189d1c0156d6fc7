//! Pruning: a slow, continuous walk over the DIDs the index holds that hides accounts the
//! relay knows to be inactive (its accounts table says so) or whose PDS is gone (banned or
//! offline host, identity no longer resolving), so listings do not fill with ghosts. Hidden
//! accounts come back when the relay next sees them active (`#account`, or a valid commit).

use super::index::Change;
use super::Collections;
use super::Lookups;
use crate::identity::resolver::ResolveError;
use crate::storage::AccountStatus;
use std::sync::Arc;
use std::time::Duration;

/// Status the index gives accounts hidden because their PDS is gone.
pub const PDS_GONE: &str = "pds_gone";

/// DIDs looked at per step; steps are spaced so a full pass takes about `prune_interval`
/// for a small index and proceeds at `MAX_DIDS_PER_SECOND` for a large one.
const STEP_DIDS: usize = 200;
const MAX_DIDS_PER_SECOND: f64 = 200.0;

pub async fn run(lookups: Lookups, collections: Arc<Collections>) {
    let interval = collections.config.prune_interval;
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(interval).await;
        let (looked, hidden) = prune_pass(&lookups, &collections).await;
        tracing::info!(looked, hidden, "collections: prune pass done");
    }
}

/// One pass over every DID; returns (DIDs looked at, accounts hidden).
pub async fn prune_pass(lookups: &Lookups, collections: &Arc<Collections>) -> (u64, u64) {
    let mut after: Option<String> = None;
    let (mut looked, mut hidden) = (0u64, 0u64);
    let step_pause = Duration::from_secs_f64(STEP_DIDS as f64 / MAX_DIDS_PER_SECOND);
    loop {
        let index = collections.index.clone();
        let from = after.clone();
        let Ok(Ok(dids)) = tokio::task::spawn_blocking(move || index.dids(from.as_deref(), STEP_DIDS)).await
        else {
            break;
        };
        let Some(last) = dids.last() else { break };
        after = Some(last.clone());
        for did in dids {
            looked += 1;
            if let Some(reason) = prune_reason(lookups, collections, &did).await {
                let change =
                    Change::Status { did: did.clone(), active: false, status: Some(reason.status.into()) };
                let index = collections.index.clone();
                if let Ok(Ok((_, removed))) =
                    tokio::task::spawn_blocking(move || index.apply(&[change])).await
                {
                    collections.metrics.note_changes(0, removed);
                    collections.metrics.pruned.with_label_values(&[reason.metric]).inc();
                    hidden += 1;
                }
            }
        }
        tokio::time::sleep(step_pause).await;
    }
    (looked, hidden)
}

struct Reason {
    status: &'static str,
    metric: &'static str,
}

async fn prune_reason(lookups: &Lookups, collections: &Arc<Collections>, did: &str) -> Option<Reason> {
    if collections.index.inactive_status(did).ok().flatten().is_some() {
        return None; // already hidden
    }
    if let Ok(Some(account)) = lookups.store.account(did).await {
        if !account.is_active() {
            let status = match account.effective_status() {
                AccountStatus::Takendown => "takendown",
                AccountStatus::Deleted => "deleted",
                AccountStatus::Suspended => "suspended",
                _ => "deactivated",
            };
            return Some(Reason { status, metric: "inactive" });
        }
        if let Some(host_id) = account.host_id {
            if let Ok(Some(host)) = lookups.store.host_by_id(host_id).await {
                if !host.status.is_reachable() {
                    return Some(Reason { status: PDS_GONE, metric: "host_gone" });
                }
                return None;
            }
        }
    }
    // Not relayed yet (imported or crawled): the identity decides.
    match lookups.resolver.resolve(did).await {
        Err(ResolveError::NotFound) => Some(Reason { status: "deleted", metric: "tombstoned" }),
        Ok(identity) => match identity.pds_host() {
            None => Some(Reason { status: PDS_GONE, metric: "no_pds" }),
            Some(hostname) => match lookups.store.host_by_name(hostname).await {
                Ok(Some(host)) if !host.status.is_reachable() => {
                    Some(Reason { status: PDS_GONE, metric: "host_gone" })
                }
                Ok(None) => Some(Reason { status: PDS_GONE, metric: "unknown_host" }),
                _ => None,
            },
        },
        Err(_) => None,
    }
}
