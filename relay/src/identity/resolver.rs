//! DID resolution with a bounded, TTL'd cache.
//!
//! `did:plc` goes to the configured PLC directory (trusted: it may be on loopback
//! in tests); `did:web` goes to `https://<host>/.well-known/did.json` through the
//! SSRF-guarded client. Failures are cached for a shorter time so a flood of
//! events for a broken DID does not become a flood of lookups.

use super::doc::{parse_document, DocError, Identity};
use super::ssrf::{guarded_client, SsrfPolicy};
use crate::atproto::syntax;
use std::num::NonZeroUsize;
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
    #[error(transparent)]
    Document(#[from] DocError),
}

/// Limits and endpoints for resolution. Every field has a default used by `relay`.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub plc_url: String,
    pub timeout: Duration,
    pub cache_entries: usize,
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
            cache_ttl: Duration::from_secs(24 * 3600),
            negative_ttl: Duration::from_secs(120),
            max_document_bytes: 64 * 1024,
            ssrf: SsrfPolicy::default(),
        }
    }
}

type CacheEntry = (Instant, Result<Arc<Identity>, ResolveError>);

pub struct Resolver {
    config: IdentityConfig,
    plc_client: reqwest::Client,
    web_client: reqwest::Client,
    cache: Mutex<lru::LruCache<String, CacheEntry>>,
}

impl Resolver {
    pub fn new(config: IdentityConfig) -> Resolver {
        let plc_client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("static HTTP client configuration is valid");
        let web_client = guarded_client(config.ssrf, config.timeout);
        let capacity = NonZeroUsize::new(config.cache_entries.max(1)).expect("max(1) is non-zero");
        Resolver { config, plc_client, web_client, cache: Mutex::new(lru::LruCache::new(capacity)) }
    }

    fn cached(&self, did: &str) -> Option<Result<Arc<Identity>, ResolveError>> {
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (stored, result) = cache.get(did)?;
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
        cache.put(did.to_string(), (Instant::now(), result));
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
        // Transport failures are not remembered as long as definite answers.
        self.store(did, result.clone());
        result
    }

    /// Number of cached entries (for metrics).
    pub fn cache_len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
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
        let response = client.get(&url).send().await.map_err(|e| ResolveError::Failed(e.to_string()))?;
        match response.status().as_u16() {
            200 => {}
            404 | 410 => return Err(ResolveError::NotFound),
            code => return Err(ResolveError::Failed(format!("HTTP {code} from {url}"))),
        }
        let body = read_limited(response, self.config.max_document_bytes).await?;
        Ok(parse_document(did, &body)?)
    }
}

/// `did:web` is supported for bare hostnames only (no paths), per atproto.
fn did_web_url(host: &str) -> Result<String, ResolveError> {
    if host.contains(':') && !host.contains("%3A") {
        return Err(ResolveError::UnsupportedMethod);
    }
    let host = host.replace("%3A", ":");
    let name = host.split(':').next().unwrap_or_default();
    if name != "localhost" {
        syntax::validate_handle(name).map_err(|_| ResolveError::InvalidDid)?;
    }
    let scheme = if name == "localhost" { "http" } else { "https" };
    Ok(format!("{scheme}://{host}/.well-known/did.json"))
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ResolveError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| ResolveError::Failed(e.to_string()))? {
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
    fn did_web_urls() {
        assert_eq!(did_web_url("example.com").as_deref(), Ok("https://example.com/.well-known/did.json"));
        assert!(did_web_url("example.com:path").is_err());
        assert_eq!(
            did_web_url("localhost%3A8080").as_deref(),
            Ok("http://localhost:8080/.well-known/did.json")
        );
    }
}
