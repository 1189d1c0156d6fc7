//! The client's error type and the classification of every failure the `hcloud` crate
//! can return. The class decides what the caller does: retry soon (Transient), wait
//! minutes (RateLimited), wait for the user (Unauthorized), or look the server up by
//! name (UniquenessError).

use std::time::Duration;

/// One failed call, classified. `code` and `message` are Hetzner's error envelope
/// when the response had one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// 401/403 (`unauthorized`, `forbidden`, `token_readonly`): the token is wrong or
    /// lacks write access. Never retried: only a new token helps.
    #[error("Hetzner API refused the token ({code}): {message}")]
    Unauthorized { code: String, message: String },
    /// 429 `rate_limit_exceeded`, or the client-side budget is spent; retry after
    /// `retry_after` at the earliest.
    #[error("Hetzner API rate limit: retry in {}s", retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    /// `uniqueness_error`: a server (or firewall) with this name already exists.
    #[error("Hetzner API: name already in use: {message}")]
    UniquenessError { message: String },
    /// `resource_unavailable` / `placement_error`: no capacity for this type here now.
    #[error("Hetzner API: resource unavailable ({code}): {message}")]
    ResourceUnavailable { code: String, message: String },
    /// 5xx, `locked`, `conflict`, connection reset, timeout: worth a retry.
    #[error("Hetzner API transient failure: {0}")]
    Transient(String),
    /// 404 `not_found`.
    #[error("Hetzner API: not found: {0}")]
    NotFound(String),
    /// Anything else (`invalid_input`, a body the crate could not decode, ...).
    #[error("Hetzner API error: {0}")]
    Other(String),
}

impl CloudError {
    /// A short stable label for metrics and condition reasons.
    pub fn class(&self) -> &'static str {
        match self {
            CloudError::Unauthorized { .. } => "Unauthorized",
            CloudError::RateLimited { .. } => "RateLimited",
            CloudError::UniquenessError { .. } => "UniquenessError",
            CloudError::ResourceUnavailable { .. } => "ResourceUnavailable",
            CloudError::Transient(_) => "Transient",
            CloudError::NotFound(_) => "NotFound",
            CloudError::Other(_) => "Other",
        }
    }

    /// Whether an idempotent call (GET, DELETE) may be repeated at once.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CloudError::Transient(_))
    }
}

/// Classifies an error response. The error code wins over the status, as in hcloud-go:
/// Hetzner documents codes, not statuses.
pub fn classify_response(
    status: u16,
    code: Option<&str>,
    message: &str,
    rate_backoff: Duration,
) -> CloudError {
    let message = message.to_string();
    if let Some(code) = code {
        if let Some(error) = classify_code(code, &message, rate_backoff) {
            return error;
        }
    }
    let code = code.unwrap_or("").to_string();
    match status {
        401 | 403 => CloudError::Unauthorized { code, message },
        429 => CloudError::RateLimited { retry_after: rate_backoff },
        404 => CloudError::NotFound(message),
        409 if code == "uniqueness_error" => CloudError::UniquenessError { message },
        500..=599 => CloudError::Transient(format!("HTTP {status} {code}: {message}")),
        _ => CloudError::Other(format!("HTTP {status} {code}: {message}")),
    }
}

fn classify_code(code: &str, message: &str, rate_backoff: Duration) -> Option<CloudError> {
    let message = message.to_string();
    Some(match code {
        "unauthorized" | "forbidden" | "token_readonly" => {
            CloudError::Unauthorized { code: code.into(), message }
        }
        // `limit_reached` is the legacy spelling (hcloud-go's error.go).
        "rate_limit_exceeded" | "limit_reached" => CloudError::RateLimited { retry_after: rate_backoff },
        "uniqueness_error" => CloudError::UniquenessError { message },
        "resource_unavailable" | "placement_error" => {
            CloudError::ResourceUnavailable { code: code.into(), message }
        }
        "not_found" => CloudError::NotFound(message),
        "server_error" | "service_error" | "unavailable" | "timeout" | "maintenance" | "bad_gateway"
        | "locked" | "conflict" | "resource_locked" | "robot_unavailable" => {
            CloudError::Transient(format!("{code}: {message}"))
        }
        _ => return None,
    })
}

/// Classifies a failure of the `hcloud` crate: transport errors are transient, a body
/// that does not decode is `Other` (it means the API, or the fake, changed shape).
pub fn classify<T>(error: hcloud::apis::Error<T>, rate_backoff: Duration) -> CloudError {
    match error {
        hcloud::apis::Error::Reqwest(e) => CloudError::Transient(transport_message(&e)),
        hcloud::apis::Error::Io(e) => CloudError::Transient(format!("I/O: {e}")),
        hcloud::apis::Error::Serde(e) => CloudError::Other(format!("response did not decode: {e}")),
        hcloud::apis::Error::ResponseError(content) => {
            let (code, message) = error_envelope(&content.content);
            classify_response(content.status.as_u16(), code.as_deref(), &message, rate_backoff)
        }
    }
}

fn transport_message(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "transport"
    };
    format!("{kind}: {error}")
}

/// Reads `{"error":{"code","message"}}` from a body; a non-JSON body (an HTML 502 from a
/// proxy) keeps its first 200 bytes as the message.
fn error_envelope(body: &str) -> (Option<String>, String) {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let code = error.and_then(|e| e.get("code")).and_then(|c| c.as_str()).map(str::to_string);
    let message = match error.and_then(|e| e.get("message")).and_then(|m| m.as_str()) {
        Some(message) => message.to_string(),
        None => body.chars().take(200).collect(),
    };
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Duration = Duration::from_secs(60);

    #[test]
    fn codes_win_over_statuses() {
        assert!(matches!(
            classify_response(409, Some("uniqueness_error"), "server name is already used", BACKOFF),
            CloudError::UniquenessError { .. }
        ));
        assert!(matches!(
            classify_response(412, Some("resource_unavailable"), "no capacity", BACKOFF),
            CloudError::ResourceUnavailable { .. }
        ));
        assert!(matches!(
            classify_response(423, Some("locked"), "locked", BACKOFF),
            CloudError::Transient(_)
        ));
        assert!(matches!(
            classify_response(403, Some("token_readonly"), "ro", BACKOFF),
            CloudError::Unauthorized { .. }
        ));
    }

    #[test]
    fn statuses_classify_when_there_is_no_code() {
        assert!(matches!(classify_response(401, None, "", BACKOFF), CloudError::Unauthorized { .. }));
        assert_eq!(
            classify_response(429, None, "", BACKOFF),
            CloudError::RateLimited { retry_after: BACKOFF }
        );
        assert!(matches!(classify_response(502, None, "<html>", BACKOFF), CloudError::Transient(_)));
        assert!(matches!(classify_response(404, None, "", BACKOFF), CloudError::NotFound(_)));
        assert!(matches!(
            classify_response(400, Some("invalid_input"), "bad", BACKOFF),
            CloudError::Other(_)
        ));
    }

    #[test]
    fn envelope_is_read_and_html_is_kept_short() {
        let (code, message) = error_envelope(r#"{"error":{"code":"not_found","message":"gone"}}"#);
        assert_eq!((code.as_deref(), message.as_str()), (Some("not_found"), "gone"));
        let (code, message) = error_envelope(&"<html>".repeat(100));
        assert_eq!(code, None);
        assert_eq!(message.len(), 200);
    }

    #[test]
    fn only_transient_errors_are_retried_at_once() {
        assert!(CloudError::Transient("x".into()).is_retryable());
        assert!(!CloudError::Unauthorized { code: String::new(), message: String::new() }.is_retryable());
        assert!(!CloudError::RateLimited { retry_after: BACKOFF }.is_retryable());
    }
}
