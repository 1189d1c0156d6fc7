//! The admin API, on the internal listener: indigo's routes, paths and bodies, so
//! existing runbooks keep working. Auth: `Authorization: Bearer <token>` or Basic
//! `admin:<token>`; several tokens may be configured (rotation); constant-time compare.

use crate::app::Relay;
use crate::http::{crawl_error, known_host, XrpcError};
use crate::storage::HostStatus;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Equal-length digests compared without early exit, so timing says nothing about the token.
fn tokens_match(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token presented in an Authorization header, Bearer or Basic `admin:<token>`.
fn presented_token(value: &str) -> Option<String> {
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (user == "admin").then(|| password.to_string())
}

pub fn authorized(tokens: &[String], header_value: Option<&str>) -> bool {
    let Some(given) = header_value.and_then(presented_token) else {
        return false;
    };
    // Check every token (no early exit) so the number of configured tokens does not leak either.
    tokens.iter().filter(|t| !t.is_empty()).fold(false, |ok, expected| ok | tokens_match(&given, expected))
}

async fn require_admin(State(relay): State<Arc<Relay>>, request: Request, next: Next) -> Response {
    let header_value = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if authorized(&relay.config.admin_tokens, header_value) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"admin\"")],
            Json(json!({"error": "Unauthorized", "message": "admin token required"})),
        )
            .into_response()
    }
}

mod collections;
pub mod resync;
pub mod siblings;

pub fn router(relay: Arc<Relay>) -> Router {
    let router = Router::new();
    let router = router.merge(collections::routes());
    router
        .route("/admin/pds/requestCrawl", post(admin_request_crawl))
        .route("/admin/pds/list", get(list_pds))
        .route("/admin/pds/changeLimits", post(change_limits))
        .route("/admin/pds/resetCursor", post(reset_cursor))
        .route("/admin/pds/block", post(block_host))
        .route("/admin/pds/unblock", post(unblock_host))
        .route("/admin/subs/getUpstreamConns", get(upstream_conns))
        .route("/admin/subs/killUpstream", post(kill_upstream))
        .route("/admin/subs/getEnabled", get(get_enabled))
        .route("/admin/subs/setEnabled", post(set_enabled))
        .route("/admin/subs/listDomainBans", get(list_domain_bans))
        .route("/admin/subs/banDomain", post(ban_domain))
        .route("/admin/subs/unbanDomain", post(unban_domain))
        .route("/admin/repo/takeDown", post(take_down))
        .route("/admin/repo/reverseTakedown", post(reverse_takedown))
        .route("/admin/repo/resync", post(resync_repos))
        .route("/admin/consumers/list", get(list_consumers))
        .route_layer(axum::middleware::from_fn_with_state(relay.clone(), require_admin))
        .layer(axum::middleware::from_fn_with_state(relay.clone(), siblings::forward))
        .with_state(relay)
}

type AdminResult = Result<Response, XrpcError>;

fn ok() -> Response {
    Json(json!({"success": true})).into_response()
}

#[derive(Deserialize)]
struct HostnameBody {
    hostname: String,
}

async fn admin_request_crawl(State(relay): State<Arc<Relay>>, Json(body): Json<HostnameBody>) -> AdminResult {
    relay.hosts.request_crawl(&body.hostname, true).await.map_err(crawl_error)?;
    Ok(ok())
}

async fn list_pds(State(relay): State<Arc<Relay>>) -> AdminResult {
    let hosts = relay.store.list_hosts(0, 10_000).await.map_err(XrpcError::internal)?;
    // (connected, last upstream seq received) of each running subscription.
    let running: std::collections::HashMap<i64, (bool, i64)> = relay
        .hosts
        .connections()
        .into_iter()
        .map(|(id, _, connected, received)| (id, (connected, received)))
        .collect();
    let out: Vec<_> = hosts
        .iter()
        .map(|h| {
            let handle = running.get(&h.id);
            json!({
                "ID": h.id, "Host": h.hostname, "SSL": h.ssl, "Cursor": handle.map_or(h.last_seq, |x| x.1),
                "Status": h.status, "Blocked": h.status == HostStatus::Banned, "RepoLimit": h.account_limit, "Trusted": h.trusted,
                "HasActiveConnection": handle.is_some_and(|x| x.0), "CreatedAt": h.created_at,
            })
        })
        .collect();
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
struct LimitsBody {
    host: String,
    repo_limit: Option<i64>,
}

async fn change_limits(State(relay): State<Arc<Relay>>, Json(body): Json<LimitsBody>) -> AdminResult {
    let host = known_host(&relay.store, &body.host).await?;
    if let Some(limit) = body.repo_limit {
        if limit < 0 {
            return Err(XrpcError::bad_request("repo_limit must be >= 0"));
        }
        relay.store.set_host_account_limit(host.id, limit).await.map_err(XrpcError::internal)?;
    }
    Ok(ok())
}

#[derive(Deserialize)]
struct HostQuery {
    host: String,
    #[serde(default)]
    block: Option<bool>,
}

async fn block_host(State(relay): State<Arc<Relay>>, Query(query): Query<HostQuery>) -> AdminResult {
    let host = known_host(&relay.store, &query.host).await?;
    relay.store.set_host_status(host.id, HostStatus::Banned).await.map_err(XrpcError::internal)?;
    relay.hosts.unsubscribe(host.id);
    relay.hosts.refresh_host_metrics().await;
    Ok(ok())
}

async fn unblock_host(State(relay): State<Arc<Relay>>, Query(query): Query<HostQuery>) -> AdminResult {
    let host = known_host(&relay.store, &query.host).await?;
    relay.store.set_host_status(host.id, HostStatus::Active).await.map_err(XrpcError::internal)?;
    relay.hosts.refresh_host_metrics().await;
    Ok(ok())
}

async fn upstream_conns(State(relay): State<Arc<Relay>>) -> AdminResult {
    let mut names: Vec<String> = relay
        .hosts
        .connections()
        .into_iter()
        .filter(|(_, _, connected, _)| *connected)
        .map(|(_, hostname, _, _)| hostname)
        .collect();
    names.sort();
    Ok(Json(names).into_response())
}

#[derive(Deserialize)]
struct ResetCursorBody {
    host: String,
    /// The upstream seq to resume after; 0 (the default) resumes live only.
    #[serde(default)]
    cursor: i64,
}

/// Restarts a host's subscription from another cursor (after the PDS's sequence was reset,
/// or to replay what it still holds after an incident).
async fn reset_cursor(State(relay): State<Arc<Relay>>, Json(body): Json<ResetCursorBody>) -> AdminResult {
    if body.cursor < 0 {
        return Err(XrpcError::bad_request("cursor must be 0 or more"));
    }
    let host = known_host(&relay.store, &body.host).await?;
    relay.hosts.reset_host_cursor(host.id, body.cursor).await.map_err(XrpcError::internal)?;
    tracing::info!(host = %host.hostname, cursor = body.cursor, "upstream cursor reset by an admin");
    Ok(Json(json!({ "host": host.hostname, "cursor": body.cursor })).into_response())
}

async fn kill_upstream(State(relay): State<Arc<Relay>>, Query(query): Query<HostQuery>) -> AdminResult {
    let host = known_host(&relay.store, &query.host).await?;
    if !relay.hosts.unsubscribe(host.id) {
        return Err(XrpcError::bad_request("no active connection to that host"));
    }
    if query.block == Some(true) {
        relay.store.set_host_status(host.id, HostStatus::Banned).await.map_err(XrpcError::internal)?;
        relay.hosts.refresh_host_metrics().await;
    }
    Ok(ok())
}

async fn get_enabled(State(relay): State<Arc<Relay>>) -> AdminResult {
    Ok(Json(json!({"enabled": relay.hosts.request_crawl_enabled()})).into_response())
}

#[derive(Deserialize)]
struct EnabledQuery {
    enabled: bool,
}

async fn set_enabled(State(relay): State<Arc<Relay>>, Query(query): Query<EnabledQuery>) -> AdminResult {
    relay.hosts.set_request_crawl_enabled(query.enabled);
    Ok(ok())
}

async fn list_domain_bans(State(relay): State<Arc<Relay>>) -> AdminResult {
    let bans = relay.store.domain_bans().await.map_err(XrpcError::internal)?;
    Ok(Json(json!({"banned_domains": bans})).into_response())
}

#[derive(Deserialize)]
struct DomainBody {
    #[serde(alias = "Domain")]
    domain: String,
}

async fn ban_domain(State(relay): State<Arc<Relay>>, Json(body): Json<DomainBody>) -> AdminResult {
    let domain = body.domain.trim().to_ascii_lowercase();
    crate::atproto::syntax::validate_handle(&domain).map_err(|e| XrpcError::bad_request(e.to_string()))?;
    relay.store.ban_domain(&domain).await.map_err(XrpcError::internal)?;
    Ok(ok())
}

async fn unban_domain(State(relay): State<Arc<Relay>>, Json(body): Json<DomainBody>) -> AdminResult {
    relay.store.unban_domain(&body.domain.trim().to_ascii_lowercase()).await.map_err(XrpcError::internal)?;
    Ok(ok())
}

#[derive(Deserialize)]
struct DidBody {
    did: String,
}

async fn take_down(State(relay): State<Arc<Relay>>, Json(body): Json<DidBody>) -> AdminResult {
    set_takedown(&relay, &body.did, true).await
}

async fn reverse_takedown(State(relay): State<Arc<Relay>>, Json(body): Json<DidBody>) -> AdminResult {
    set_takedown(&relay, &body.did, false).await
}

async fn set_takedown(relay: &Relay, did: &str, takedown: bool) -> AdminResult {
    crate::atproto::syntax::validate_did(did).map_err(|e| XrpcError::bad_request(e.to_string()))?;
    match relay.set_takedown(did, takedown).await.map_err(XrpcError::internal)? {
        true => Ok(ok()),
        false => Err(XrpcError::new(StatusCode::NOT_FOUND, "RepoNotFound", "unknown account")),
    }
}

#[derive(Deserialize)]
struct ResyncBody {
    dids: Vec<String>,
}

/// Re-syncs up to 100 accounts from their PDSes (see [`resync`]).
async fn resync_repos(State(relay): State<Arc<Relay>>, Json(body): Json<ResyncBody>) -> AdminResult {
    if body.dids.is_empty() || body.dids.len() > resync::MAX_DIDS_PER_CALL {
        let message = format!("give 1 to {} DIDs", resync::MAX_DIDS_PER_CALL);
        return Err(XrpcError::bad_request(message));
    }
    let outcomes = resync::resync_all(&relay, body.dids).await;
    Ok(Json(json!({ "results": outcomes })).into_response())
}

async fn list_consumers(State(relay): State<Arc<Relay>>) -> AdminResult {
    Ok(Json(relay.fanout.list_consumers()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_auth_forms() {
        let tokens = vec!["old-token".to_string(), "new-token".to_string()];
        assert!(authorized(&tokens, Some("Bearer new-token")));
        assert!(authorized(&tokens, Some("Bearer old-token")));
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:new-token");
        assert!(authorized(&tokens, Some(&format!("Basic {basic}"))));
        let wrong_user = base64::engine::general_purpose::STANDARD.encode("root:new-token");
        assert!(!authorized(&tokens, Some(&format!("Basic {wrong_user}"))));
        assert!(!authorized(&tokens, Some("Bearer nope")));
        assert!(!authorized(&tokens, None));
        assert!(!authorized(&[], Some("Bearer ")));
    }
}
