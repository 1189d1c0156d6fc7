//! DID resolution with a bounded, TTL'd cache.
//!
//! `did:plc` goes to the configured PLC directory (trusted: it may be on loopback
//! in tests); `did:web` goes to `https://<host>/.well-known/did.json` through the
//! SSRF-guarded client. Definite failures (not found, tombstoned, a broken document)
//! are cached for a shorter time so a flood of events for a broken DID does not become a
//! flood of lookups. Transient failures (timeouts, connection errors, 5xx, 429) are never
//! cached: they say nothing about the DID, and the validation stage holds the account's
//! events and asks again instead of dropping them. The cache is bounded by bytes.

use super::doc::{parse_document, DocError, Identity};
use super::ssrf::{guarded_client, SsrfPolicy};
use crate::atproto::syntax;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("invalid DID syntax")]
    InvalidDid,
    #[error("unsupported DID method")]
    UnsupportedMethod,
    #[error("DID not found (or tombstoned)")]
    NotFound,
    #[error("resolution failed: {0}")]
    Failed(String),
    /// The directory or the did:web host could not answer now; the DID may be fine.
    #[error("resolution unavailable: {0}")]
    Transient(String),
    #[error(transparent)]
    Document(#[from] DocError),
}

impl ResolveError {
    /// Whether asking again later may give a different answer.
    pub fn is_transient(&self) -> bool {
        matches!(self, ResolveError::Transient(_))
    }
}

/// Whether an HTTP status from a directory means "try again later" rather than an answer.
fn status_is_transient(code: u16) -> bool {
    code == 408 || code == 425 || code == 429 || code >= 500
}

/// Limits and endpoints for resolution. Every field has a default used by `relay`.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub plc_url: String,
    pub timeout: Duration,
    pub cache_entries: usize,
    /// Memory bound of the cache (identities and negative answers together).
    pub cache_bytes: usize,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub max_document_bytes: usize,
    pub ssrf: SsrfPolicy,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            plc_url: "https://plc.directory".to_string(),
            timeout: Duration::from_secs(10),
            cache_entries: 1_000_000,
            cache_bytes: 192 << 20,
            cache_ttl: Duration::from_secs(24 * 3600),
            negative_ttl: Duration::from_secs(120),
            max_document_bytes: 64 * 1024,
            ssrf: SsrfPolicy::default(),
        }
    }
}

struct CacheEntry(Instant, Result<Arc<Identity>, ResolveError>);

impl crate::cache::Weigh for CacheEntry {
    fn weigh(&self) -> usize {
        let inline = std::mem::size_of::<CacheEntry>();
        match &self.1 {
            Ok(identity) => inline + identity.weigh(),
            Err(error) => inline + error.to_string().len(),
        }
    }
}

pub struct Resolver {
    config: IdentityConfig,
    plc_client: reqwest::Client,
    web_client: reqwest::Client,
    cache: Mutex<crate::cache::ByteLru<CacheEntry>>,
}

impl Resolver {
    pub fn new(config: IdentityConfig) -> Resolver {
        let plc_client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("static HTTP client configuration is valid");
        let web_client = guarded_client(config.ssrf, config.timeout);
        let cache = crate::cache::ByteLru::new(config.cache_bytes, config.cache_entries);
        Resolver { config, plc_client, web_client, cache: Mutex::new(cache) }
    }

    fn cached(&self, did: &str) -> Option<Result<Arc<Identity>, ResolveError>> {
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let CacheEntry(stored, result) = cache.get(did)?;
        let ttl = if result.is_ok() { self.config.cache_ttl } else { self.config.negative_ttl };
        if stored.elapsed() < ttl {
            Some(result.clone())
        } else {
            cache.pop(did);
            None
        }
    }

    fn store(&self, did: &str, result: Result<Arc<Identity>, ResolveError>) {
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.put(did.to_string(), CacheEntry(Instant::now(), result));
    }

    /// Whether a lookup of `did` would be answered from the cache (no network).
    pub fn is_cached(&self, did: &str) -> bool {
        self.cache.lock().map(|cache| cache.contains(did)).unwrap_or(false)
    }

    /// Resolves through the cache.
    pub async fn resolve(&self, did: &str) -> Result<Arc<Identity>, ResolveError> {
        if let Some(hit) = self.cached(did) {
            return hit;
        }
        self.refresh(did).await
    }

    /// Resolves from the network, replacing any cached entry.
    pub async fn refresh(&self, did: &str) -> Result<Arc<Identity>, ResolveError> {
        let result = self.fetch(did).await.map(Arc::new);
        match &result {
            // Not remembered at all: the next event of this DID asks again (after the
            // validation stage's backoff), and a cached answer stays until replaced.
            Err(error) if error.is_transient() => {}
            _ => self.store(did, result.clone()),
        }
        result
    }

    /// Number of cached entries (for metrics).
    pub fn cache_len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Bytes held by the cache (for metrics).
    pub fn cache_bytes(&self) -> usize {
        self.cache.lock().map(|c| c.bytes()).unwrap_or(0)
    }

    async fn fetch(&self, did: &str) -> Result<Identity, ResolveError> {
        syntax::validate_did(did).map_err(|_| ResolveError::InvalidDid)?;
        let (client, url) = if did.starts_with("did:plc:") {
            (&self.plc_client, format!("{}/{}", self.config.plc_url.trim_end_matches('/'), did))
        } else if let Some(host) = did.strip_prefix("did:web:") {
            (&self.web_client, did_web_url(host)?)
        } else {
            return Err(ResolveError::UnsupportedMethod);
        };
        let response = client.get(&url).send().await.map_err(|e| ResolveError::Transient(e.to_string()))?;
        match response.status().as_u16() {
            200 => {}
            404 | 410 => return Err(ResolveError::NotFound),
            code if status_is_transient(code) => {
                return Err(ResolveError::Transient(format!("HTTP {code} from {url}")))
            }
            code => return Err(ResolveError::Failed(format!("HTTP {code} from {url}"))),
        }
        let body = read_limited(response, self.config.max_document_bytes).await?;
        Ok(parse_document(did, &body)?)
    }
}

/// Top-level domains that never resolve publicly (the handle spec's disallowed list).
const RESERVED_TLDS: [&str; 7] = ["alt", "arpa", "internal", "invalid", "local", "localhost", "onion"];

/// `did:web` is supported for bare hostnames only (no paths), per atproto; a port only on
/// `localhost` (development), and never a reserved top-level domain.
fn did_web_url(host: &str) -> Result<String, ResolveError> {
    if host.contains(':') && !host.contains("%3A") {
        return Err(ResolveError::UnsupportedMethod);
    }
    let host = host.replace("%3A", ":");
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host.as_str(), None),
    };
    if name != "localhost" {
        syntax::validate_handle(name).map_err(|_| ResolveError::InvalidDid)?;
        if port.is_some() {
            return Err(ResolveError::InvalidDid);
        }
        let tld = name.rsplit('.').next().unwrap_or_default().to_ascii_lowercase();
        if RESERVED_TLDS.contains(&tld.as_str()) {
            return Err(ResolveError::InvalidDid);
        }
    }
    let scheme = if name == "localhost" { "http" } else { "https" };
    Ok(format!("{scheme}://{host}/.well-known/did.json"))
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ResolveError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| ResolveError::Transient(e.to_string()))? {
        if body.len() + chunk.len() > limit {
            return Err(ResolveError::Failed(format!("DID document larger than {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directory_trouble_is_transient() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(status_is_transient(code), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 451] {
            assert!(!status_is_transient(code), "{code}");
        }
        assert!(ResolveError::Transient("timeout".into()).is_transient());
        assert!(!ResolveError::NotFound.is_transient());
        assert!(!ResolveError::Failed("HTTP 400".into()).is_transient());
    }

    #[tokio::test]
    async fn transient_failures_are_not_cached_but_answers_are() {
        use axum::routing::get;
        use std::sync::atomic::{AtomicUsize, Ordering};
        // A directory that answers 503 twice, then 404.
        let calls = Arc::new(AtomicUsize::new(0));
        let served = calls.clone();
        let app = axum::Router::new().route(
            "/{did}",
            get(move || {
                let n = served.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        axum::http::StatusCode::NOT_FOUND
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let resolver =
            Resolver::new(IdentityConfig { plc_url: format!("http://{addr}"), ..IdentityConfig::default() });
        let did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
        assert!(resolver.resolve(did).await.expect_err("503").is_transient());
        assert!(!resolver.is_cached(did), "a 503 is not remembered");
        assert!(resolver.resolve(did).await.expect_err("503").is_transient());
        assert_eq!(resolver.resolve(did).await, Err(ResolveError::NotFound));
        assert!(resolver.is_cached(did));
        assert_eq!(resolver.resolve(did).await, Err(ResolveError::NotFound), "answered from the cache");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn did_web_urls() {
        assert_eq!(did_web_url("example.com").as_deref(), Ok("https://example.com/.well-known/did.json"));
        assert!(did_web_url("example.com:path").is_err());
        assert_eq!(
            did_web_url("localhost%3A8080").as_deref(),
            Ok("http://localhost:8080/.well-known/did.json")
        );
        assert_eq!(
            did_web_url("example.com%3A8443"),
            Err(ResolveError::InvalidDid),
            "a port only on localhost"
        );
        for reserved in
            ["printer.local", "hidden.onion", "1.0.0.127.in-addr.arpa", "svc.internal", "x.invalid"]
        {
            assert_eq!(did_web_url(reserved), Err(ResolveError::InvalidDid), "{reserved}");
        }
    }
}
