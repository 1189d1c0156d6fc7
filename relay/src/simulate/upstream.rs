//! A simulated upstream collection directory: `listReposByCollection` over millions of
//! synthetic DIDs without storing them (DID `i` is computed), so imports can be tested and
//! benchmarked at network scale on one machine. Every tenth DID is a "ghost" that the
//! simulated PLC does not know (an account whose PDS died), when ghosts are on.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Digits of synthetic DIDs, in ASCII order so that string order is numeric order.
const DIGITS: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";
const PREFIX: &str = "did:plc:syn";
const WIDTH: usize = 21;

/// The `i`-th synthetic DID.
pub fn synthetic_did(mut i: u64) -> String {
    let mut digits = [b'2'; WIDTH];
    for slot in digits.iter_mut().rev() {
        *slot = DIGITS[(i % 32) as usize];
        i /= 32;
    }
    format!("{PREFIX}{}", std::str::from_utf8(&digits).unwrap_or_default())
}

/// The index of a synthetic DID, if it is one.
pub fn synthetic_index(did: &str) -> Option<u64> {
    let digits = did.strip_prefix(PREFIX)?;
    if digits.len() != WIDTH {
        return None;
    }
    digits.bytes().try_fold(0u64, |n, b| Some(n * 32 + DIGITS.iter().position(|d| *d == b)? as u64))
}

/// Ghost DIDs (when enabled): every tenth.
pub fn is_ghost(i: u64) -> bool {
    i % 10 == 7
}

/// One collection of the upstream: DIDs `i * stride` for `i < count`.
#[derive(Debug, Clone)]
pub struct SyntheticCollection {
    pub nsid: String,
    pub count: u64,
    pub stride: u64,
}

pub struct SimUpstream {
    pub addr: SocketAddr,
    collections: Vec<SyntheticCollection>,
    /// Every n-th request is refused with 429 + Retry-After: 1 (0 = never).
    throttle_every: u64,
    requests: AtomicU64,
    pub refused: AtomicU64,
    /// (collection, cursor) → times served, to measure repeated work after a restart.
    served: Mutex<HashMap<(String, String), u32>>,
}

impl SimUpstream {
    pub async fn start(
        bind: &str,
        collections: Vec<SyntheticCollection>,
        throttle_every: u64,
    ) -> anyhow::Result<Arc<SimUpstream>> {
        let listener = tokio::net::TcpListener::bind((bind, 0)).await?;
        let upstream = Arc::new(SimUpstream {
            addr: listener.local_addr()?,
            collections,
            throttle_every,
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            served: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/xrpc/com.atproto.sync.listReposByCollection", get(list_repos_by_collection))
            .with_state(upstream.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(upstream)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every DID of a collection, in order (for checking an import's result).
    pub fn dids(&self, nsid: &str) -> Vec<String> {
        self.collections
            .iter()
            .filter(|c| c.nsid == nsid)
            .flat_map(|c| (0..c.count).map(move |i| synthetic_did(i * c.stride)))
            .collect()
    }

    /// Pages served more than once: (collection, cursor) pairs and their extra servings.
    pub fn repeated_pages(&self) -> HashMap<String, u32> {
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = HashMap::new();
        for ((collection, _), times) in served.iter() {
            if *times > 1 {
                *out.entry(collection.clone()).or_default() += times - 1;
            }
        }
        out
    }

    pub fn pages_served(&self) -> usize {
        self.served.lock().map(|s| s.values().map(|n| *n as usize).sum()).unwrap_or(0)
    }
}

#[derive(serde::Deserialize)]
struct Params {
    collection: String,
    cursor: Option<String>,
    limit: Option<u64>,
}

async fn list_repos_by_collection(
    State(upstream): State<Arc<SimUpstream>>,
    Query(params): Query<Params>,
) -> Response {
    let n = upstream.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if upstream.throttle_every > 0 && n % upstream.throttle_every == 0 {
        upstream.refused.fetch_add(1, Ordering::Relaxed);
        let headers = [(axum::http::header::RETRY_AFTER, "1")];
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            headers,
            Json(json!({"error": "RateLimitExceeded"})),
        )
            .into_response();
    }
    let limit = params.limit.unwrap_or(500).clamp(1, 2000);
    let Some(collection) = upstream.collections.iter().find(|c| c.nsid == params.collection) else {
        return Json(json!({ "repos": [] })).into_response();
    };
    // DIDs are i * stride in order; the cursor is the last DID returned.
    let start = match params.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => 0,
        Some(cursor) => match synthetic_index(cursor) {
            Some(index) => index / collection.stride + 1,
            None => {
                let body = Json(json!({"error": "InvalidRequest", "message": "bad cursor"}));
                return (axum::http::StatusCode::BAD_REQUEST, body).into_response();
            }
        },
    };
    let end = (start + limit).min(collection.count);
    let dids: Vec<String> = (start..end).map(|i| synthetic_did(i * collection.stride)).collect();
    upstream
        .served
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((collection.nsid.clone(), params.cursor.clone().unwrap_or_default()))
        .and_modify(|n| *n += 1)
        .or_insert(1);
    let mut body = json!({ "repos": dids.iter().map(|did| json!({ "did": did })).collect::<Vec<_>>() });
    if end < collection.count {
        body["cursor"] = json!(dids.last());
    }
    Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_dids_sort_like_their_index_and_round_trip() {
        let dids: Vec<String> =
            [0u64, 1, 31, 32, 1_000_000, 40_000_000].iter().map(|i| synthetic_did(*i)).collect();
        let mut sorted = dids.clone();
        sorted.sort();
        assert_eq!(dids, sorted);
        assert_eq!(synthetic_index(&dids[4]), Some(1_000_000));
        assert_eq!(dids[0].len(), "did:plc:".len() + 24);
        assert!(crate::atproto::syntax::validate_did(&dids[3]).is_ok());
    }
}
