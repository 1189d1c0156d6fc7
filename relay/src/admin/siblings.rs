//! Forwarding to sibling relays (indigo's `--sibling-relays`): after a `requestCrawl` or a
//! host/account admin change succeeds here, the same request is sent to every sibling, so a
//! fleet of relays behind one name stays consistent without a second runbook step.
//!
//! Forwarding happens after the local success, in the background, with a deadline per
//! sibling; the request keeps its `Authorization`, `Content-Type`, `Accept` and `User-Agent`
//! and gains `Via: <version> atproto-relay`. A request that already came from a relay (its
//! `Via` or `User-Agent` says `atproto-relay`) is not forwarded again, so siblings that list
//! each other do not loop.

use crate::app::Relay;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;

/// Largest body forwarded (admin bodies are a hostname or a DID).
const MAX_BODY_BYTES: usize = 64 * 1024;
const MARK: &str = "atproto-relay";

/// Routes whose successful calls are forwarded (indigo's list, plus public requestCrawl).
pub fn forwarded(method: &Method, path: &str) -> bool {
    method == Method::POST
        && matches!(
            path,
            "/xrpc/com.atproto.sync.requestCrawl"
                | "/admin/pds/requestCrawl"
                | "/admin/pds/changeLimits"
                | "/admin/pds/block"
                | "/admin/pds/unblock"
                | "/admin/subs/killUpstream"
                | "/admin/subs/banDomain"
                | "/admin/subs/unbanDomain"
                | "/admin/repo/takeDown"
                | "/admin/repo/reverseTakedown"
        )
}

/// Whether the request was itself forwarded by a relay.
pub fn from_a_relay(headers: &HeaderMap) -> bool {
    let says = |name: header::HeaderName| {
        headers.get_all(name).iter().any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains(MARK)))
    };
    says(header::VIA) || says(header::USER_AGENT)
}

/// Middleware for both listeners: runs the request, then forwards it when it succeeded.
pub async fn forward(State(relay): State<Arc<Relay>>, request: Request, next: Next) -> Response {
    let siblings = &relay.config.sibling_relays;
    if siblings.iter().all(|s| s.is_empty())
        || !forwarded(request.method(), request.uri().path())
        || from_a_relay(request.headers())
    {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return crate::http::XrpcError::bad_request(format!("body larger than {MAX_BODY_BYTES} bytes"))
                .into_response()
        }
    };
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let headers = parts.headers.clone();
    let response = next.run(Request::from_parts(parts, Body::from(bytes.clone()))).await;
    if response.status().is_success() {
        let relay = relay.clone();
        tokio::spawn(async move { send_to_siblings(&relay, &path_and_query, &headers, bytes).await });
    }
    response
}

async fn send_to_siblings(relay: &Relay, path_and_query: &str, headers: &HeaderMap, body: Bytes) {
    let client = relay.sibling_client();
    for sibling in relay.config.sibling_relays.iter().filter(|s| !s.is_empty()) {
        let url = format!("{}{path_and_query}", sibling.trim_end_matches('/'));
        let mut request = client
            .post(&url)
            .header(header::VIA, concat!("HTTP/1.1 ", env!("CARGO_PKG_VERSION"), " atproto-relay"))
            .body(body.clone());
        for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT] {
            if let Some(value) = headers.get(&name) {
                request = request.header(name, value);
            }
        }
        let result = match request.send().await {
            Ok(response) if response.status().is_success() => "ok",
            Ok(response) => {
                tracing::warn!(%url, status = %response.status(), "sibling relay refused a forwarded request");
                "refused"
            }
            Err(error) => {
                tracing::warn!(%url, %error, "forwarding to a sibling relay failed");
                "failed"
            }
        };
        relay.metrics.sibling_forwards.with_label_values(&[result]).inc();
    }
}

/// The timeout of one forwarded request (indigo uses the same).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_only_mutations_and_never_loops() {
        assert!(forwarded(&Method::POST, "/admin/pds/block"));
        assert!(forwarded(&Method::POST, "/xrpc/com.atproto.sync.requestCrawl"));
        assert!(!forwarded(&Method::GET, "/admin/pds/list"));
        assert!(!forwarded(&Method::POST, "/admin/subs/setEnabled"));
        let mut headers = HeaderMap::new();
        assert!(!from_a_relay(&headers));
        headers.insert(header::VIA, "HTTP/1.1 0.3.0 atproto-relay".parse().unwrap());
        assert!(from_a_relay(&headers));
        let mut headers = HeaderMap::new();
        headers.insert(header::USER_AGENT, "atproto-relay/0.1.0".parse().unwrap());
        assert!(from_a_relay(&headers));
    }
}
