//! What the public (XRPC) and internal (admin) HTTP APIs share: the lexicon's error shape
//! `{error, message}`, the middleware that puts every error answer in it, and lookups both
//! APIs answer with those errors. Neither API module imports the other.

use crate::storage::{Host, Store};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An XRPC error response: `{error, message}` with a status code.
pub struct XrpcError {
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl XrpcError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> XrpcError {
        XrpcError { status, error, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> XrpcError {
        XrpcError::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }

    pub fn internal(error: impl std::fmt::Display) -> XrpcError {
        tracing::error!(%error, "internal error serving a request");
        XrpcError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "internal error")
    }
}

impl IntoResponse for XrpcError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.error, "message": self.message }))).into_response()
    }
}

/// What a handler returns: a response or an error in the lexicon's shape.
pub type XrpcResult = Result<Response, XrpcError>;

/// Longest request target accepted (longer gets 414 in the lexicon's error shape).
const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes accepted (more gets 431 in the lexicon's error shape).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most bytes of a framework error's text body carried over into the JSON message.
const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// Every error answer in the XRPC shape `{error, message}` with a JSON content type, also
/// those the framework writes itself (405, a duplicate or malformed query parameter, a
/// missing WebSocket upgrade, an unknown path) and the size limits checked here.
pub async fn lexicon_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let uri_bytes = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_bytes > MAX_URI_BYTES {
        let message = format!("request target is {uri_bytes} bytes, over the {MAX_URI_BYTES}-byte limit");
        return XrpcError::new(StatusCode::URI_TOO_LONG, "InvalidRequest", message).into_response();
    }
    let header_bytes: usize =
        request.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if header_bytes > MAX_HEADER_BYTES {
        let message = format!("headers are {header_bytes} bytes, over the {MAX_HEADER_BYTES}-byte limit");
        return XrpcError::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "InvalidRequest", message)
            .into_response();
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_MESSAGE_BYTES * 4).await.unwrap_or_default();
    let mut message: String =
        String::from_utf8_lossy(&text).trim().chars().take(MAX_ERROR_MESSAGE_BYTES).collect();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_string();
    }
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::NOT_FOUND => "MethodNotImplemented",
        StatusCode::TOO_MANY_REQUESTS => "RateLimitExceeded",
        StatusCode::UNAUTHORIZED => "AuthenticationRequired",
        status if status.is_server_error() => "InternalServerError",
        _ => "InvalidRequest",
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    let body = json!({ "error": error, "message": message }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// A stored host named in user input (with or without scheme, any case); `HostNotFound` otherwise.
pub async fn known_host(store: &Store, input: &str) -> Result<Host, XrpcError> {
    let normalized = crate::ingest::crawl::normalize_hostname(input, true)
        .map(|h| h.hostname)
        .unwrap_or_else(|_| input.to_ascii_lowercase());
    store.host_by_name(&normalized).await.map_err(XrpcError::internal)?.ok_or_else(|| {
        XrpcError::new(StatusCode::NOT_FOUND, "HostNotFound", "host is not known to this relay")
    })
}

pub fn crawl_error(error: crate::ingest::crawl::CrawlError) -> XrpcError {
    use crate::ingest::crawl::CrawlError;
    match error {
        CrawlError::Banned => XrpcError::new(StatusCode::BAD_REQUEST, "HostBanned", error.to_string()),
        CrawlError::Disabled => XrpcError::new(StatusCode::FORBIDDEN, "Forbidden", error.to_string()),
        CrawlError::DailyLimit => {
            XrpcError::new(StatusCode::TOO_MANY_REQUESTS, "RateLimitExceeded", error.to_string())
        }
        CrawlError::Probe(_) | CrawlError::IsRelay => {
            XrpcError::new(StatusCode::BAD_REQUEST, "HostNotFound", error.to_string())
        }
        other => XrpcError::bad_request(other.to_string()),
    }
}
