//! Public XRPC endpoints (`com.atproto.sync.*`) and the firehose route.

use crate::app::Relay;
use crate::atproto::syntax;
use crate::http::{crawl_error, known_host, XrpcError, XrpcResult};
use crate::storage::AccountStatus;
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

fn parse_limit(raw: Option<&str>, default: i64, max: i64) -> Result<i64, XrpcError> {
    match raw {
        None => Ok(default),
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(XrpcError::bad_request(format!("limit must be an integer from 1 to {max}"))),
        },
    }
}

pub fn router(relay: Arc<Relay>) -> Router {
    let router = Router::new();
    let router = router.route("/xrpc/com.atproto.sync.listReposByCollection", get(list_repos_by_collection));
    router
        .route("/", get(banner))
        .route("/_health", get(health))
        .route("/xrpc/_health", get(health))
        .route("/xrpc/com.atproto.sync.subscribeRepos", get(subscribe_repos))
        .route("/xrpc/com.atproto.sync.listHosts", get(list_hosts))
        .route("/xrpc/com.atproto.sync.getHostStatus", get(get_host_status))
        .route("/xrpc/com.atproto.sync.requestCrawl", post(request_crawl))
        .route("/xrpc/com.atproto.sync.listRepos", get(list_repos))
        .route("/xrpc/com.atproto.sync.getRepoStatus", get(get_repo_status))
        .route("/xrpc/com.atproto.sync.getLatestCommit", get(get_latest_commit))
        .route("/xrpc/com.atproto.sync.getRepo", get(get_repo))
        .with_state(relay)
}

async fn banner() -> &'static str {
    "ATProto relay. Firehose: /xrpc/com.atproto.sync.subscribeRepos\n"
}

pub async fn health(State(relay): State<Arc<Relay>>) -> Response {
    // A relay that cannot write its log accepts nothing: not healthy, and the body says why.
    if let Some(reason) = relay.sequencer.write_failure() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "error", "msg": reason })))
            .into_response();
    }
    match relay.store.ping().await {
        Ok(()) => Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") })).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "status": "error", "msg": "database unavailable" })),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct CursorParams {
    cursor: Option<String>,
    limit: Option<String>,
}

async fn subscribe_repos(
    State(relay): State<Arc<Relay>>,
    Query(params): Query<CursorParams>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> XrpcResult {
    let cursor = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => match text.parse::<u64>() {
            Ok(cursor) if cursor <= crate::atproto::cbor::MAX_SAFE_INTEGER => Some(cursor),
            _ => return Err(XrpcError::bad_request("cursor must be a non-negative integer")),
        },
    };
    let user_agent: String = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect();
    let fanout = relay.fanout.clone();
    let admission = fanout.admit(remote.ip()).map_err(|refused| {
        let status = match refused {
            crate::fanout::Refused::TooManyFromAddress { .. } => StatusCode::TOO_MANY_REQUESTS,
            crate::fanout::Refused::TooManyConsumers { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        XrpcError::new(status, "TooManyConsumers", refused.to_string())
    })?;
    // Consumers send nothing worth buffering; writes are flushed per burst.
    let upgrade = upgrade.read_buffer_size(4 * 1024).write_buffer_size(64 * 1024);
    Ok(upgrade.max_message_size(64 * 1024).on_upgrade(move |socket| {
        crate::fanout::serve_consumer(socket, cursor, fanout, remote.to_string(), user_agent, admission)
    }))
}

async fn host_json(relay: &Relay, host: &crate::storage::Host) -> serde_json::Value {
    let accounts = relay.store.count_host_accounts(host.id).await.unwrap_or(0);
    json!({ "hostname": host.hostname, "seq": host.last_seq, "accountCount": accounts, "status": host.status })
}

async fn list_hosts(State(relay): State<Arc<Relay>>, Query(params): Query<CursorParams>) -> XrpcResult {
    let limit = parse_limit(params.limit.as_deref(), 200, 1000)?;
    let after = match params.cursor.as_deref() {
        None | Some("") => 0,
        Some(text) => text.parse::<i64>().map_err(|_| XrpcError::bad_request("invalid cursor"))?,
    };
    let hosts = relay.store.list_hosts(after, limit).await.map_err(XrpcError::internal)?;
    let mut out = Vec::with_capacity(hosts.len());
    for host in &hosts {
        out.push(host_json(&relay, host).await);
    }
    let mut body = json!({ "hosts": out });
    if hosts.len() as i64 == limit {
        if let Some(last) = hosts.last() {
            body["cursor"] = json!(last.id.to_string());
        }
    }
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
struct HostnameParam {
    hostname: Option<String>,
}

async fn get_host_status(State(relay): State<Arc<Relay>>, Query(params): Query<HostnameParam>) -> XrpcResult {
    let hostname = params.hostname.ok_or_else(|| XrpcError::bad_request("hostname is required"))?;
    let host = known_host(&relay.store, &hostname).await?;
    Ok(Json(host_json(&relay, &host).await).into_response())
}

#[derive(Deserialize)]
pub struct CrawlBody {
    pub hostname: String,
}

pub async fn request_crawl(
    State(relay): State<Arc<Relay>>,
    body: Result<Json<CrawlBody>, axum::extract::rejection::JsonRejection>,
) -> XrpcResult {
    let Json(body) = body.map_err(|e| XrpcError::bad_request(e.body_text()))?;
    relay.hosts.request_crawl(&body.hostname, false).await.map_err(crawl_error)?;
    Ok(StatusCode::OK.into_response())
}

async fn list_repos(State(relay): State<Arc<Relay>>, Query(params): Query<CursorParams>) -> XrpcResult {
    let limit = parse_limit(params.limit.as_deref(), 500, 1000)?;
    let after = params.cursor.unwrap_or_default();
    let accounts = relay.store.list_repos(&after, limit).await.map_err(XrpcError::internal)?;
    let repos: Vec<_> = accounts
        .iter()
        .map(|a| json!({ "did": a.did, "head": a.commit_cid, "rev": a.rev, "active": true }))
        .collect();
    let mut body = json!({ "repos": repos });
    if accounts.len() as i64 == limit {
        if let Some(last) = accounts.last() {
            body["cursor"] = json!(last.did);
        }
    }
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
struct CollectionParams {
    collection: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// `listReposByCollection`: active repos with at least one record in the collection, in DID
/// order, from the inline index. Limit 1–2000, default 500 (lexicon).
async fn list_repos_by_collection(
    State(relay): State<Arc<Relay>>,
    Query(params): Query<CollectionParams>,
) -> XrpcResult {
    let collections = relay.collections.clone().ok_or_else(|| {
        XrpcError::new(StatusCode::NOT_IMPLEMENTED, "MethodNotImplemented", "the collection directory is off")
    })?;
    let collection = params.collection.ok_or_else(|| XrpcError::bad_request("collection is required"))?;
    syntax::validate_nsid(&collection)
        .map_err(|e| XrpcError::bad_request(format!("collection must be an NSID: {e}")))?;
    let limit = parse_limit(params.limit.as_deref(), 500, 2000)? as usize;
    let after = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(
            crate::collections::decode_cursor(cursor)
                .ok_or_else(|| XrpcError::bad_request("invalid cursor"))?,
        ),
    };
    let started = std::time::Instant::now();
    let index = collections.index.clone();
    let dids = tokio::task::spawn_blocking(move || index.list(&collection, after.as_deref(), limit))
        .await
        .map_err(XrpcError::internal)?
        .map_err(XrpcError::internal)?;
    collections.metrics.list_seconds.observe(started.elapsed().as_secs_f64());
    // Serialised from borrowed strings: a 2,000-DID page is one buffer, not 2,000 JSON values.
    #[derive(serde::Serialize)]
    struct Repo<'a> {
        did: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Page<'a> {
        repos: Vec<Repo<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    }
    let cursor =
        (dids.len() == limit).then(|| dids.last().map(|d| crate::collections::encode_cursor(d))).flatten();
    let page = Page { repos: dids.iter().map(|did| Repo { did }).collect(), cursor };
    Ok(Json(page).into_response())
}

#[derive(Deserialize)]
struct DidParam {
    did: Option<String>,
}

async fn account_for(relay: &Relay, did: Option<String>) -> Result<crate::storage::Account, XrpcError> {
    let did = did.ok_or_else(|| XrpcError::bad_request("did is required"))?;
    syntax::validate_did(&did).map_err(|e| XrpcError::bad_request(e.to_string()))?;
    relay
        .store
        .account(&did)
        .await
        .map_err(XrpcError::internal)?
        .ok_or_else(|| XrpcError::new(StatusCode::NOT_FOUND, "RepoNotFound", "repo not found"))
}

async fn get_repo_status(State(relay): State<Arc<Relay>>, Query(params): Query<DidParam>) -> XrpcResult {
    let account = account_for(&relay, params.did).await?;
    let mut body = json!({ "did": account.did, "active": account.is_active() });
    if account.is_active() {
        if let Some(rev) = &account.rev {
            body["rev"] = json!(rev);
        }
    } else {
        body["status"] = json!(account.effective_status());
    }
    Ok(Json(body).into_response())
}

fn inactive_error(account: &crate::storage::Account) -> Option<XrpcError> {
    if account.is_active() {
        return None;
    }
    let (name, message) = match account.effective_status() {
        AccountStatus::Takendown => ("RepoTakendown", "repo has been taken down"),
        AccountStatus::Suspended => ("RepoSuspended", "repo is suspended"),
        AccountStatus::Deactivated => ("RepoDeactivated", "repo is deactivated"),
        _ => ("RepoNotFound", "repo is not active"),
    };
    Some(XrpcError::new(StatusCode::BAD_REQUEST, name, message))
}

async fn get_latest_commit(State(relay): State<Arc<Relay>>, Query(params): Query<DidParam>) -> XrpcResult {
    let account = account_for(&relay, params.did).await?;
    if let Some(error) = inactive_error(&account) {
        return Err(error);
    }
    match (&account.commit_cid, &account.rev) {
        (Some(cid), Some(rev)) => Ok(Json(json!({ "cid": cid, "rev": rev })).into_response()),
        _ => Err(XrpcError::new(StatusCode::NOT_FOUND, "RepoNotFound", "no commit seen for this repo")),
    }
}

async fn get_repo(
    State(relay): State<Arc<Relay>>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> XrpcResult {
    let did = params.get("did").cloned();
    let account = account_for(&relay, did.clone()).await?;
    if let Some(error) = inactive_error(&account) {
        return Err(error);
    }
    let identity =
        relay.resolver.resolve(&account.did).await.map_err(|_| {
            XrpcError::new(StatusCode::NOT_FOUND, "RepoNotFound", "identity does not resolve")
        })?;
    let endpoint = identity
        .pds_endpoint
        .clone()
        .ok_or_else(|| XrpcError::new(StatusCode::NOT_FOUND, "RepoNotFound", "account has no PDS"))?;
    let mut url =
        url::Url::parse(&format!("{endpoint}/xrpc/com.atproto.sync.getRepo")).map_err(XrpcError::internal)?;
    url.query_pairs_mut().append_pair("did", &account.did);
    if let Some(since) = params.get("since") {
        url.query_pairs_mut().append_pair("since", since);
    }
    // A plain 302, as Bluesky's relay answers (non-archival relays redirect getRepo to the PDS).
    Ok((StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response())
}
