//! HTTP listeners: the public one (firehose + XRPC) and the internal one (admin,
//! metrics, liveness, readiness). Keeping admin and metrics off the public listener
//! means exposing the relay does not expose its controls.

use crate::app::Relay;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// The public API: XRPC and the firehose. Write requests a sibling relay should see too
/// (requestCrawl) are forwarded to them.
pub fn public_router(relay: Arc<Relay>) -> Router {
    crate::xrpc::router(relay.clone())
        .layer(axum::middleware::from_fn_with_state(relay, crate::admin::siblings::forward))
        .layer(axum::middleware::from_fn(crate::http::lexicon_errors))
}

/// The internal API: metrics, health, readiness and admin; also the public requestCrawl,
/// so sibling relays of this project can be configured with one (internal) URL each.
pub fn internal_router(relay: Arc<Relay>) -> Router {
    let crawl = Router::new()
        .route("/xrpc/com.atproto.sync.requestCrawl", post(crate::xrpc::request_crawl))
        .layer(axum::middleware::from_fn_with_state(relay.clone(), crate::admin::siblings::forward))
        .with_state(relay.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/_health", get(crate::xrpc::health))
        .route("/_ready", get(ready))
        .route("/_serving", get(serving))
        .route("/_summary", get(summary))
        .with_state(relay.clone())
        .merge(crate::admin::router(relay))
        .merge(crawl)
        .layer(axum::middleware::from_fn(crate::http::lexicon_errors))
}

async fn metrics(State(relay): State<Arc<Relay>>) -> Response {
    relay.metrics.queue_bytes.with_label_values(&["validation"]).set(relay.validation.queued_bytes() as i64);
    for (label, dir) in [("data", relay.config.data_dir.clone()), ("log", relay.config.persist_dir())] {
        if let Ok(free) = crate::disk::free_bytes(&dir) {
            relay.metrics.disk_free_bytes.with_label_values(&[label]).set(free as i64);
        }
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], relay.metrics.render())
        .into_response()
}

async fn ready(State(relay): State<Arc<Relay>>) -> Response {
    match relay.readiness() {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready", "reason": reason})))
                .into_response()
        }
    }
}

async fn summary(State(relay): State<Arc<Relay>>) -> Response {
    Json(crate::summary::summary(&relay).await).into_response()
}

/// Serving: the firehose (live and replay) and XRPC can be answered now — the log is open
/// and the database answers. Unlike `/_ready` it does not wait for upstream hosts to connect
/// (replays do not need them), so a restarted relay is back in its public Service within
/// seconds while thousands of hosts are still being dialled. `/_ready` stays the "caught up"
/// signal: hosts connected, events flowing, coverage good.
async fn serving(State(relay): State<Arc<Relay>>) -> Response {
    match relay.store.ping().await {
        Ok(()) => Json(json!({"status": "serving", "head": relay.sequencer.current_head()})).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not serving", "reason": "database unavailable"})),
        )
            .into_response(),
    }
}

/// Binds both listeners; returns their actual addresses (useful with port 0 in tests).
pub async fn bind(relay: &Arc<Relay>) -> anyhow::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    use anyhow::Context;
    let public = tokio::net::TcpListener::bind(&relay.config.api_bind)
        .await
        .with_context(|| format!("binding the public listener {}", relay.config.api_bind))?;
    let internal = tokio::net::TcpListener::bind(&relay.config.internal_bind)
        .await
        .with_context(|| format!("binding the internal listener {}", relay.config.internal_bind))?;
    Ok((public, internal))
}

/// Serves both listeners until `shutdown` resolves.
pub async fn serve(
    relay: Arc<Relay>,
    public: tokio::net::TcpListener,
    internal: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let public_app = public_router(relay.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let internal_app = internal_router(relay).into_make_service_with_connect_info::<SocketAddr>();
    let public_server = axum::serve(public, public_app).with_graceful_shutdown(wait(stop_rx.clone()));
    let internal_server = axum::serve(internal, internal_app).with_graceful_shutdown(wait(stop_rx));
    tokio::try_join!(public_server, internal_server)?;
    Ok(())
}
