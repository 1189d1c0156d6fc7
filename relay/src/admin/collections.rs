//! Admin routes of the collection directory: backfill jobs (zlay-compatible
//! `/admin/backfill-collections?source=HOST`, plus crawl jobs) and per-collection counts.

use crate::app::Relay;
use crate::collections::backfill::{self, BackfillError, CollectionSources};
use crate::collections::Collections;
use crate::http::XrpcError;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

type AdminResult = Result<Response, XrpcError>;

pub fn routes() -> Router<Arc<Relay>> {
    Router::new()
        .route("/admin/backfill-collections", post(start_import).get(import_status).delete(stop_import))
        .route("/admin/backfill-crawl", post(start_crawl).get(crawl_status).delete(stop_crawl))
        .route("/admin/collections", get(list_collections))
        .route("/admin/collections/prune", post(prune_now))
}

fn directory(relay: &Relay) -> Result<Arc<Collections>, XrpcError> {
    relay.collections.clone().ok_or_else(|| {
        XrpcError::new(StatusCode::NOT_IMPLEMENTED, "MethodNotImplemented", "the collection directory is off")
    })
}

fn backfill_error(error: BackfillError) -> XrpcError {
    match error {
        BackfillError::AlreadyRunning(..) => {
            XrpcError::new(StatusCode::CONFLICT, "AlreadyRunning", error.to_string())
        }
        BackfillError::Store(e) => XrpcError::internal(e),
        other => XrpcError::bad_request(other.to_string()),
    }
}

/// The name an import is kept under: the upstream's base URL, however `source` was written.
fn import_name(relay: &Relay, source: &str) -> Result<String, XrpcError> {
    backfill::source_base(source, relay.config.allow_insecure_hosts)
        .map(|(base, _)| base)
        .map_err(backfill_error)
}

#[derive(Deserialize)]
struct SourceParam {
    source: Option<String>,
}

async fn start_import(
    State(relay): State<Arc<Relay>>,
    Query(params): Query<SourceParam>,
    body: Bytes,
) -> AdminResult {
    let collections = directory(&relay)?;
    let source = params
        .source
        .filter(|s| !s.is_empty())
        .or_else(|| Some(relay.config.backfill_source.clone()).filter(|s| !s.is_empty()))
        .ok_or_else(|| XrpcError::bad_request("source (the upstream host) is required"))?;
    let mut sources: CollectionSources = if body.iter().all(u8::is_ascii_whitespace) {
        CollectionSources::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| XrpcError::bad_request(format!("invalid JSON body: {e}")))?
    };
    if sources.collections.is_empty() && sources.collections_url.is_none() && !sources.include_indexed {
        sources.collections = relay.config.backfill_collections.clone();
        sources.collections_url = relay.config.backfill_collections_url.clone();
    }
    if let Some(bad) = sources.collections.iter().find(|c| crate::atproto::syntax::validate_nsid(c).is_err())
    {
        return Err(XrpcError::bad_request(format!("{bad:?} is not an NSID")));
    }
    let base = import_name(&relay, &source)?;
    if collections.running_job("import", &base).is_some() {
        return Err(backfill_error(BackfillError::AlreadyRunning("import", base)));
    }
    let nsids = backfill::resolve_collections(&collections, &sources).await.map_err(backfill_error)?;
    backfill::start_import(&relay.store, &collections, &source, &nsids).await.map_err(backfill_error)?;
    let body = json!({ "status": "started", "source": base, "collections": nsids });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

fn job_json(job: &backfill::Job) -> serde_json::Value {
    json!({
        "kind": job.kind,
        "source": job.source,
        "found": job.found.load(Ordering::Relaxed),
        "elapsedSeconds": job.started.elapsed().as_secs(),
    })
}

async fn import_status(State(relay): State<Arc<Relay>>, Query(params): Query<SourceParam>) -> AdminResult {
    let collections = directory(&relay)?;
    let pending = collections.index.pending_estimate();
    let Some(source) = params.source.filter(|s| !s.is_empty()) else {
        let jobs: Vec<_> = collections.running_jobs().iter().map(|j| job_json(j)).collect();
        return Ok(Json(json!({ "jobs": jobs, "pendingVerification": pending })).into_response());
    };
    let host = import_name(&relay, &source)?;
    let progress = relay.store.import_progress(&host).await.map_err(XrpcError::internal)?;
    let running = collections.running_job("import", &host);
    let imported: i64 = progress.iter().map(|p| p.imported).sum();
    let done = progress.iter().filter(|p| p.done).count();
    Ok(Json(json!({
        "source": host,
        "running": running.is_some(),
        "job": running.as_deref().map(job_json),
        "imported": imported,
        "collectionsDone": done,
        "collectionsTotal": progress.len(),
        "pendingVerification": pending,
        "collections": progress,
    }))
    .into_response())
}

async fn stop_import(State(relay): State<Arc<Relay>>, Query(params): Query<SourceParam>) -> AdminResult {
    let collections = directory(&relay)?;
    let source = params
        .source
        .filter(|s| !s.is_empty())
        .ok_or_else(|| XrpcError::bad_request("source is required"))?;
    let host = import_name(&relay, &source)?;
    if collections.stop_job("import", &host) {
        Ok(Json(json!({ "status": "stopping", "source": host })).into_response())
    } else {
        Err(XrpcError::new(StatusCode::NOT_FOUND, "NotRunning", format!("no import from {host} is running")))
    }
}

#[derive(Deserialize)]
struct HostParam {
    host: Option<String>,
}

async fn start_crawl(State(relay): State<Arc<Relay>>, Query(params): Query<HostParam>) -> AdminResult {
    let collections = directory(&relay)?;
    let source = params.host.filter(|h| !h.is_empty()).unwrap_or_else(|| "*".to_string());
    if collections.running_job("crawl", &source).is_some() {
        return Err(backfill_error(BackfillError::AlreadyRunning("crawl", source)));
    }
    // An explicit start re-crawls hosts finished before; interrupted hosts resume.
    relay.store.reset_finished_crawls().await.map_err(XrpcError::internal)?;
    backfill::start_crawl(&relay.store, &collections, &source).await.map_err(backfill_error)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "status": "started", "source": source }))).into_response())
}

async fn crawl_status(State(relay): State<Arc<Relay>>) -> AdminResult {
    let collections = directory(&relay)?;
    let hosts = relay.store.all_crawl_progress().await.map_err(XrpcError::internal)?;
    let jobs: Vec<_> =
        collections.running_jobs().iter().filter(|j| j.kind == "crawl").map(|j| job_json(j)).collect();
    Ok(Json(json!({
        "running": !jobs.is_empty(),
        "jobs": jobs,
        "hostsDone": hosts.iter().filter(|h| h.done).count(),
        "reposFound": hosts.iter().map(|h| h.repos).sum::<i64>(),
        "pendingVerification": collections.index.pending_estimate(),
        "hosts": hosts,
    }))
    .into_response())
}

async fn stop_crawl(State(relay): State<Arc<Relay>>, Query(params): Query<HostParam>) -> AdminResult {
    let collections = directory(&relay)?;
    let source = params.host.filter(|h| !h.is_empty()).unwrap_or_else(|| "*".to_string());
    if collections.stop_job("crawl", &source) {
        Ok(Json(json!({ "status": "stopping", "source": source })).into_response())
    } else {
        Err(XrpcError::new(StatusCode::NOT_FOUND, "NotRunning", format!("no crawl of {source} is running")))
    }
}

#[derive(Deserialize)]
struct PageParams {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Collections with their listed-DID counts (a `listCollections`-style view).
async fn list_collections(State(relay): State<Arc<Relay>>, Query(params): Query<PageParams>) -> AdminResult {
    let collections = directory(&relay)?;
    let limit = params.limit.unwrap_or(500).clamp(1, 10_000);
    let index = collections.index.clone();
    let after = params.cursor.filter(|c| !c.is_empty());
    let page = tokio::task::spawn_blocking(move || index.collections(after.as_deref(), limit))
        .await
        .map_err(XrpcError::internal)?
        .map_err(XrpcError::internal)?;
    let mut body = json!({
        "collections": page.iter().map(|(c, n)| json!({ "collection": c, "dids": n })).collect::<Vec<_>>(),
    });
    if page.len() == limit {
        if let Some((last, _)) = page.last() {
            body["cursor"] = json!(last);
        }
    }
    Ok(Json(body).into_response())
}

async fn prune_now(State(relay): State<Arc<Relay>>) -> AdminResult {
    let collections = directory(&relay)?;
    tokio::spawn(async move {
        let lookups =
            crate::collections::Lookups { store: relay.store.clone(), resolver: relay.resolver.clone() };
        let (looked, hidden) = crate::collections::prune::prune_pass(&lookups, &collections).await;
        tracing::info!(looked, hidden, "collections: prune pass (admin) done");
    });
    Ok((StatusCode::ACCEPTED, Json(json!({ "status": "started" }))).into_response())
}
