//! XRPC GETs for the coverage modes, paced per relay: a bounded number of requests in flight
//! to each relay, and a 429 with `Retry-After` pauses every request to that relay (not the
//! others) for as long as it asks. Transient failures are retried a bounded number of times.

use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Attempts per request (429s, 5xx and connection errors are retried).
pub const MAX_ATTEMPTS: u32 = 8;
/// Wait after a 429 without a usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest `Retry-After` honoured as given; longer asks are capped (a run must end).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// First backoff after a 5xx or connection error (doubled per attempt).
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Largest answer body read (a 1,000-DID page is about 60 KB).
pub const MAX_BODY_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The server answered with an XRPC error (4xx other than 429): asking again will not help.
    #[error("HTTP {status}: {error}")]
    Refused { status: u16, error: String },
    /// Still failing after every attempt (connection errors, 5xx, 429s).
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("bad answer: {0}")]
    BadBody(String),
}

impl FetchError {
    /// The XRPC error name of a refusal (`RepoNotFound`, `RepoDeactivated`, …).
    pub fn xrpc_error(&self) -> Option<&str> {
        match self {
            FetchError::Refused { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// One relay's (or one PDS's) request budget.
pub struct Pacer {
    slots: tokio::sync::Semaphore,
    paused_until: Mutex<Option<Instant>>,
    pub requests: AtomicU64,
    pub throttled: AtomicU64,
}

impl Pacer {
    pub fn new(concurrency: usize) -> Pacer {
        Pacer {
            slots: tokio::sync::Semaphore::new(concurrency.max(1)),
            paused_until: Mutex::new(None),
            requests: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        }
    }

    fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    async fn wait_until_unpaused(&self) {
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until.into()).await,
                _ => return,
            }
        }
    }
}

/// A plain client: the URLs are the operator's relays. (PDS requests of the correctness mode
/// go through the SSRF guard instead: their addresses come from DID documents.)
pub fn relay_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("atproto-relay-coverage/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("static HTTP client configuration is valid")
}

/// GETs `url` as JSON through `pacer`, retrying 429s (after their `Retry-After`), 5xx and
/// connection errors.
pub async fn get_json(client: &reqwest::Client, pacer: &Pacer, url: &str) -> Result<Value, FetchError> {
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for _ in 0..MAX_ATTEMPTS {
        pacer.wait_until_unpaused().await;
        let permit = pacer.slots.acquire().await;
        pacer.requests.fetch_add(1, Ordering::Relaxed);
        let response = client.get(url).send().await;
        drop(permit);
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                last = error.to_string();
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                continue;
            }
        };
        let status = response.status().as_u16();
        if status == 429 {
            pacer.throttled.fetch_add(1, Ordering::Relaxed);
            let wait = retry_after(response.headers()).unwrap_or(DEFAULT_RETRY_AFTER).min(MAX_RETRY_AFTER);
            pacer.pause_for(wait);
            last = format!("HTTP 429 (Retry-After {}s)", wait.as_secs());
            continue;
        }
        if status >= 500 {
            last = format!("HTTP {status}");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            continue;
        }
        let body = read_body(response).await?;
        if !(200..300).contains(&status) {
            let error = body["error"].as_str().unwrap_or("unknown").to_string();
            return Err(FetchError::Refused { status, error });
        }
        return Ok(body);
    }
    Err(FetchError::Exhausted { attempts: MAX_ATTEMPTS, last })
}

async fn read_body(mut response: reqwest::Response) -> Result<Value, FetchError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| FetchError::BadBody(e.to_string()))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(FetchError::BadBody(format!("answer larger than {MAX_BODY_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| FetchError::BadBody(e.to_string()))
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (date.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

/// Appends query parameters, percent-encoded.
pub fn with_query(base: &str, path: &str, params: &[(&str, &str)]) -> String {
    let mut url = format!("{}{path}", base.trim_end_matches('/'));
    for (i, (name, value)) in params.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(name);
        url.push('=');
        url.extend(url::form_urlencoded::byte_serialize(value.as_bytes()));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded() {
        assert_eq!(
            with_query("http://r/", "/xrpc/x", &[("collection", "a.b.c"), ("cursor", "a b&c")]),
            "http://r/xrpc/x?collection=a.b.c&cursor=a+b%26c"
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        headers.insert(reqwest::header::RETRY_AFTER, later.parse().expect("header"));
        assert!(retry_after(&headers).is_some_and(|d| d > Duration::from_secs(25)));
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().expect("header"));
        assert_eq!(retry_after(&headers), None);
    }
}
