//! Re-syncing chosen accounts: the relay asks the account's PDS for its newest signed
//! commit (`getLatestCommit`, then `getBlocks` for that one block) and sends it through
//! validation as a `#sync` from that host. Consumers then learn the account's current state
//! even when `#commit`s were lost upstream; this replaces the "fake micro-PDS" operators
//! stand up today to push a `#sync` for a few accounts.
//!
//! The `#sync` is judged like any other: the signature against the DID document, host
//! authority, and a rev newer than the relay's (an account already current is left alone).

use crate::app::Relay;
use crate::atproto::{car, frame, syntax};
use crate::identity::ssrf::{guarded_client, SsrfPolicy};
use crate::storage::HostStatus;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// DIDs re-synced in one admin call.
pub const MAX_DIDS_PER_CALL: usize = 100;
/// Requests to PDSes in flight at once for one call.
const CONCURRENCY: usize = 8;
/// Longest wait for one PDS answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest `getBlocks` answer read (one commit block and CAR framing).
const MAX_BLOCKS_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("not a valid DID")]
    BadDid,
    #[error("the DID does not resolve: {0}")]
    Identity(String),
    #[error("the DID document names no PDS")]
    NoPds,
    #[error("the account's PDS {0} is not a host of this relay (requestCrawl it first)")]
    UnknownHost(String),
    #[error("the account's PDS {0} is banned")]
    BannedHost(String),
    #[error("asking the PDS: {0}")]
    Pds(String),
    #[error("the PDS's answer is unusable: {0}")]
    BadAnswer(String),
    #[error("database: {0}")]
    Store(#[from] crate::storage::StoreError),
    #[error("the relay is shutting down")]
    ShuttingDown,
}

/// What happened to one DID.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub did: String,
    /// `queued`: the `#sync` went to validation (it is relayed if it is newer than what the
    /// relay has); `failed`: see `error`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rev: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Re-syncs each DID (at most [`MAX_DIDS_PER_CALL`]), a few at a time.
pub async fn resync_all(relay: &Arc<Relay>, dids: Vec<String>) -> Vec<Outcome> {
    use futures_util::StreamExt;
    let client =
        guarded_client(SsrfPolicy { allow_loopback: relay.config.allow_insecure_hosts }, REQUEST_TIMEOUT);
    futures_util::stream::iter(dids)
        .map(|did| {
            let client = client.clone();
            async move {
                let outcome = match resync(relay, &client, &did).await {
                    Ok(rev) => Outcome { did, result: "queued", rev: Some(rev), error: None },
                    Err(error) => {
                        Outcome { did, result: "failed", rev: None, error: Some(error.to_string()) }
                    }
                };
                relay.metrics.resyncs.with_label_values(&[outcome.result]).inc();
                outcome
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await
}

/// Fetches the newest commit of `did` from its PDS and queues it as a `#sync` from that host.
async fn resync(relay: &Arc<Relay>, client: &reqwest::Client, did: &str) -> Result<String, ResyncError> {
    syntax::validate_did(did).map_err(|_| ResyncError::BadDid)?;
    let identity = relay.resolver.refresh(did).await.map_err(|e| ResyncError::Identity(e.to_string()))?;
    let (Some(endpoint), Some(hostname)) =
        (identity.pds_endpoint.clone(), identity.pds_host().map(str::to_string))
    else {
        return Err(ResyncError::NoPds);
    };
    let host = relay
        .store
        .host_by_name(&hostname)
        .await?
        .ok_or_else(|| ResyncError::UnknownHost(hostname.clone()))?;
    if host.status == HostStatus::Banned {
        return Err(ResyncError::BannedHost(hostname));
    }
    let (cid, rev) = latest_commit(client, &endpoint, did).await?;
    let block = commit_block(client, &endpoint, did, &cid).await?;
    let blocks = car::write(&[cid], [(&cid, block.as_slice())]);
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let event =
        frame::Event::Sync(frame::Sync { seq: 0, did: did.to_string(), blocks, rev: rev.clone(), time });
    let size = frame::encode(&event).map(|f| f.len()).unwrap_or(1024);
    let in_flight = crate::progress::InFlight::detached();
    relay
        .validation
        .submit(host.id, Arc::from(hostname.as_str()), event, size, in_flight)
        .await
        .map_err(|_| ResyncError::ShuttingDown)?;
    Ok(rev)
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<serde_json::Value, ResyncError> {
    let response = client.get(url).send().await.map_err(|e| ResyncError::Pds(e.to_string()))?;
    if !response.status().is_success() {
        return Err(ResyncError::Pds(format!("HTTP {} from {url}", response.status())));
    }
    response.json().await.map_err(|e| ResyncError::BadAnswer(e.to_string()))
}

/// `getLatestCommit`: the head commit's CID and rev.
async fn latest_commit(
    client: &reqwest::Client,
    endpoint: &str,
    did: &str,
) -> Result<(cid::Cid, String), ResyncError> {
    let url = format!("{endpoint}/xrpc/com.atproto.sync.getLatestCommit?did={did}");
    let body = get_json(client, &url).await?;
    let cid = body["cid"].as_str().and_then(|c| cid::Cid::try_from(c).ok());
    let rev = body["rev"].as_str().filter(|r| syntax::validate_tid(r).is_ok());
    match (cid, rev) {
        (Some(cid), Some(rev)) => Ok((cid, rev.to_string())),
        _ => Err(ResyncError::BadAnswer(format!("getLatestCommit gave {body}"))),
    }
}

/// `getBlocks` for the commit block alone, read with a size bound.
async fn commit_block(
    client: &reqwest::Client,
    endpoint: &str,
    did: &str,
    cid: &cid::Cid,
) -> Result<Vec<u8>, ResyncError> {
    let url = format!("{endpoint}/xrpc/com.atproto.sync.getBlocks?did={did}&cids={cid}");
    let mut response = client.get(&url).send().await.map_err(|e| ResyncError::Pds(e.to_string()))?;
    if !response.status().is_success() {
        return Err(ResyncError::Pds(format!("HTTP {} from {url}", response.status())));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| ResyncError::Pds(e.to_string()))? {
        if bytes.len() + chunk.len() > MAX_BLOCKS_BYTES {
            return Err(ResyncError::BadAnswer(format!("getBlocks answer over {MAX_BLOCKS_BYTES} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    let parsed = car::read(&bytes, MAX_BLOCKS_BYTES).map_err(|e| ResyncError::BadAnswer(e.to_string()))?;
    // `car::read` checks every block against its CID, so this is the commit the PDS named.
    parsed
        .get(cid)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| ResyncError::BadAnswer("getBlocks lacks the commit block".into()))
}
