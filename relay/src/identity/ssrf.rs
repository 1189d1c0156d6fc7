//! SSRF guard for outbound requests to hosts named by untrusted input (did:web
//! domains, PDS hostnames). Addresses are checked after DNS resolution, inside the
//! HTTP client's resolver, so a name that resolves to a private address is refused
//! at connect time and DNS rebinding between check and connect is not possible.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    #[error("scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("URL has no host")]
    NoHost,
    #[error("address {0} is private, loopback, link-local or otherwise not public")]
    Forbidden(IpAddr),
    #[error("bad URL: {0}")]
    BadUrl(String),
}

/// What outbound requests may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SsrfPolicy {
    /// Allow 127.0.0.0/8 and ::1 (development and tests on one machine only).
    pub allow_loopback: bool,
}

impl SsrfPolicy {
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), SsrfError> {
        if self.allow_loopback && ip.is_loopback() {
            return Ok(());
        }
        if is_public(ip) {
            Ok(())
        } else {
            Err(SsrfError::Forbidden(ip))
        }
    }

    /// Checks scheme and, for IP-literal hosts, the address. Names are checked at resolve time.
    pub fn check_url(&self, raw: &str) -> Result<url::Url, SsrfError> {
        let url = url::Url::parse(raw).map_err(|e| SsrfError::BadUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SsrfError::Scheme(url.scheme().to_string()));
        }
        match url.host() {
            None => return Err(SsrfError::NoHost),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip))?,
            Some(url::Host::Domain(name)) => {
                if name.eq_ignore_ascii_case("localhost") && !self.allow_loopback {
                    return Err(SsrfError::Forbidden(IpAddr::V4(Ipv4Addr::LOCALHOST)));
                }
            }
        }
        Ok(url)
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
}

/// A DNS resolver for reqwest that drops forbidden addresses.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: SsrfPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                addrs.iter().copied().filter(|addr| policy.check_ip(addr.ip()).is_ok()).collect();
            if allowed.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves only to forbidden addresses").into();
                return Err(err);
            }
            let iter: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(iter)
        })
    }
}

/// An HTTP client whose connections can only reach addresses the policy allows.
pub fn guarded_client(policy: SsrfPolicy, timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("atproto-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("static HTTP client configuration is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        let strict = SsrfPolicy::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "fc00::1",
            "0.0.0.0",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = bad.parse().expect("ip");
            assert!(strict.check_ip(ip).is_err(), "{bad} must be refused");
        }
        for good in ["8.8.8.8", "2606:4700::1111"] {
            assert!(strict.check_ip(good.parse().expect("ip")).is_ok());
        }
        let dev = SsrfPolicy { allow_loopback: true };
        assert!(dev.check_ip("127.0.0.1".parse().expect("ip")).is_ok());
        assert!(dev.check_ip("10.0.0.1".parse().expect("ip")).is_err());
    }

    #[test]
    fn checks_urls() {
        let strict = SsrfPolicy::default();
        assert!(matches!(strict.check_url("ftp://example.com"), Err(SsrfError::Scheme(_))));
        assert!(strict.check_url("http://localhost:2583").is_err());
        assert!(strict.check_url("http://127.0.0.1:2583").is_err());
        assert!(strict.check_url("https://example.com").is_ok());
        assert!(SsrfPolicy { allow_loopback: true }.check_url("http://localhost:2583").is_ok());
    }
}
