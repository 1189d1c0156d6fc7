//! Adding hosts: hostname normalisation and the checks indigo applies to requestCrawl.

use crate::identity::ssrf::SsrfPolicy;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrawlError {
    #[error("invalid hostname: {0}")]
    BadHostname(String),
    #[error("IP addresses are not accepted as hosts")]
    IpLiteral,
    #[error("host is banned")]
    Banned,
    #[error("insecure (http/ws) or loopback hosts are not allowed")]
    Insecure,
    #[error("describeServer failed: {0}")]
    Probe(String),
    #[error("host is a relay (Server header says atproto-relay)")]
    IsRelay,
    #[error("new-hosts-per-day limit reached")]
    DailyLimit,
    #[error("public requestCrawl is disabled")]
    Disabled,
}

/// A host as the relay stores it: lower-case name with an optional port, and whether TLS is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedHost {
    pub hostname: String,
    pub ssl: bool,
}

impl NormalizedHost {
    pub fn http_base(&self) -> String {
        format!("{}://{}", if self.ssl { "https" } else { "http" }, self.hostname)
    }

    pub fn ws_base(&self) -> String {
        format!("{}://{}", if self.ssl { "wss" } else { "ws" }, self.hostname)
    }

    fn is_loopback(&self) -> bool {
        let name = self.hostname.rsplit_once(':').map_or(self.hostname.as_str(), |(h, _)| h);
        name == "localhost" || name.starts_with("127.") || name == "[::1]"
    }
}

/// Normalises user input like `https://PDS.example.com/` or `pds.example.com:443`.
/// `allow_insecure` permits `http://`, `ws://` and loopback names (dev and tests only).
pub fn normalize_hostname(input: &str, allow_insecure: bool) -> Result<NormalizedHost, CrawlError> {
    let trimmed = input.trim().trim_end_matches('/');
    let (ssl, rest) =
        if let Some(rest) = trimmed.strip_prefix("https://").or_else(|| trimmed.strip_prefix("wss://")) {
            (true, rest)
        } else if let Some(rest) = trimmed.strip_prefix("http://").or_else(|| trimmed.strip_prefix("ws://")) {
            (false, rest)
        } else {
            (true, trimmed)
        };
    let rest = rest.to_ascii_lowercase();
    if rest.is_empty() || rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(CrawlError::BadHostname(input.to_string()));
    }
    let (name, port) = match rest.rsplit_once(':') {
        Some((name, port)) => {
            let port: u16 = port.parse().map_err(|_| CrawlError::BadHostname(input.to_string()))?;
            (name.to_string(), Some(port))
        }
        None => (rest.clone(), None),
    };
    if name.parse::<std::net::IpAddr>().is_ok() && !(allow_insecure && name.starts_with("127.")) {
        return Err(CrawlError::IpLiteral);
    }
    if name != "localhost"
        && !name.starts_with("127.")
        && crate::atproto::syntax::validate_handle(&name).is_err()
    {
        return Err(CrawlError::BadHostname(input.to_string()));
    }
    let hostname = match port {
        Some(443) if ssl => name,
        Some(port) => format!("{name}:{port}"),
        None => name,
    };
    let host = NormalizedHost { hostname, ssl };
    if !allow_insecure && (!host.ssl || host.is_loopback()) {
        return Err(CrawlError::Insecure);
    }
    Ok(host)
}

/// Whether `hostname` or any parent domain is in `bans`.
pub fn is_banned(hostname: &str, bans: &[String]) -> bool {
    let name = hostname.split(':').next().unwrap_or(hostname);
    bans.iter().any(|ban| name == ban || name.ends_with(&format!(".{ban}")))
}

/// Checks that the host answers `describeServer` and is not itself a relay.
pub async fn probe(
    host: &NormalizedHost,
    allow_insecure: bool,
    timeout: std::time::Duration,
) -> Result<(), CrawlError> {
    let policy = SsrfPolicy { allow_loopback: allow_insecure };
    let client = crate::identity::ssrf::guarded_client(policy, timeout);
    let url = format!("{}/xrpc/com.atproto.server.describeServer", host.http_base());
    let response = client.get(&url).send().await.map_err(|e| CrawlError::Probe(e.to_string()))?;
    let server = response.headers().get("server").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if server.contains("atproto-relay") {
        return Err(CrawlError::IsRelay);
    }
    if !response.status().is_success() {
        return Err(CrawlError::Probe(format!("HTTP {}", response.status())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_hosts() {
        let host = normalize_hostname("https://PDS.Example.com/", false).expect("valid");
        assert_eq!(host, NormalizedHost { hostname: "pds.example.com".into(), ssl: true });
        assert_eq!(normalize_hostname("pds.example.com:443", false).expect("ok").hostname, "pds.example.com");
        assert_eq!(
            normalize_hostname("pds.example.com:8443", false).expect("ok").hostname,
            "pds.example.com:8443"
        );
        assert_eq!(normalize_hostname("1.2.3.4", false), Err(CrawlError::IpLiteral));
        assert_eq!(normalize_hostname("http://pds.example.com", false), Err(CrawlError::Insecure));
        assert_eq!(normalize_hostname("localhost:2583", false), Err(CrawlError::Insecure));
        let dev = normalize_hostname("http://localhost:2583", true).expect("dev");
        assert_eq!(dev, NormalizedHost { hostname: "localhost:2583".into(), ssl: false });
        assert!(normalize_hostname("pds.example.com/path", false).is_err());
        assert!(normalize_hostname("bad_host.example", false).is_err());
    }

    #[test]
    fn bans_cover_subdomains() {
        let bans = vec!["evil.example".to_string()];
        assert!(is_banned("evil.example", &bans));
        assert!(is_banned("pds.evil.example:443", &bans));
        assert!(!is_banned("notevil.example", &bans));
    }
}
