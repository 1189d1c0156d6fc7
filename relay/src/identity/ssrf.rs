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
    #[error("resolving {0}: {1}")]
    Resolve(String, String),
    #[error("{0} resolves only to addresses that are not public")]
    NoAllowedAddress(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
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
    let s = ip.segments();
    let embedded = |high: u16, low: u16| Ipv4Addr::from(((high as u32) << 16) | low as u32);
    // Prefixes that carry an IPv4 address inside: the embedded address decides, so an
    // attacker cannot reach 10.0.0.1 through a translator or tunnel that unwraps it.
    if s[0..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7])); // NAT64 well-known prefix 64:ff9b::/96
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2])); // 6to4 2002::/16
    }
    if s[0..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return is_public_v4(embedded(s[6], s[7])); // deprecated IPv4-compatible ::a.b.c.d
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link local
        || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated)
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 64:ff9b:1::/48
        || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32: the client address is obfuscated
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010) // ORCHID 2001:10::/28
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0020) // ORCHIDv2 2001:20::/28
        || s[0..4] == [0x100, 0, 0, 0] // discard-only 100::/64
        || s[0] == 0x2001 && s[1] == 0x0db8) // documentation
}

/// Resolves `host`, keeps the addresses the policy allows and connects to the first that
/// answers. For protocols the HTTP client's guarded resolver does not cover (the upstream
/// WebSocket): the checked address is the one connected to, so DNS cannot change the
/// answer between the check and the connection.
pub async fn connect_guarded(
    policy: SsrfPolicy,
    host: &str,
    port: u16,
    timeout: std::time::Duration,
) -> Result<tokio::net::TcpStream, SsrfError> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let candidates: Vec<SocketAddr> = match name.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(timeout, tokio::net::lookup_host((name, port)))
            .await
            .map_err(|_| SsrfError::Resolve(name.to_string(), "timed out".into()))?
            .map_err(|e| SsrfError::Resolve(name.to_string(), e.to_string()))?
            .collect(),
    };
    let allowed: Vec<SocketAddr> =
        candidates.into_iter().filter(|addr| policy.check_ip(addr.ip()).is_ok()).collect();
    if allowed.is_empty() {
        return Err(SsrfError::NoAllowedAddress(name.to_string()));
    }
    let mut last_error = String::new();
    for addr in allowed {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(error)) => last_error = error.to_string(),
            Err(_) => last_error = "timed out".into(),
        }
    }
    Err(SsrfError::Connect(name.to_string(), last_error))
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
    fn ipv6_ranges_that_wrap_ipv4_are_judged_by_the_wrapped_address() {
        let strict = SsrfPolicy::default();
        for bad in [
            "64:ff9b::a00:1",      // NAT64 of 10.0.0.1
            "64:ff9b::7f00:1",     // NAT64 of 127.0.0.1
            "64:ff9b:1::8.8.8.8",  // local-use NAT64
            "2002:a00:1::1",       // 6to4 of 10.0.0.1
            "2002:c0a8:101::1",    // 6to4 of 192.168.1.1
            "2001:0:4136:e378::1", // Teredo
            "::a00:1",             // IPv4-compatible 10.0.0.1
            "2001:10::1",          // ORCHID
            "2001:20::1",          // ORCHIDv2
            "100::1",              // discard-only
            "fec0::1",             // site local
            "2001:db8::1",         // documentation
        ] {
            let ip: IpAddr = bad.parse().expect("ip");
            assert!(strict.check_ip(ip).is_err(), "{bad} must be refused");
        }
        for good in ["64:ff9b::808:808", "2002:808:808::1", "2a01:4f8::1"] {
            assert!(strict.check_ip(good.parse().expect("ip")).is_ok(), "{good} is public");
        }
    }

    #[test]
    fn ip_literal_urls_are_checked() {
        let strict = SsrfPolicy::default();
        assert!(strict.check_url("http://[::1]:80/").is_err());
        assert!(strict.check_url("http://[64:ff9b::a00:1]/").is_err());
        assert!(strict.check_url("http://10.0.0.1/").is_err());
        assert!(strict.check_url("https://[2a01:4f8::1]/").is_ok());
    }

    #[tokio::test]
    async fn guarded_connect_refuses_loopback_unless_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let timeout = std::time::Duration::from_secs(5);
        let strict = connect_guarded(SsrfPolicy::default(), "localhost", port, timeout).await;
        assert!(matches!(strict, Err(SsrfError::NoAllowedAddress(_))), "{strict:?}");
        let literal = connect_guarded(SsrfPolicy::default(), "127.0.0.1", port, timeout).await;
        assert!(matches!(literal, Err(SsrfError::NoAllowedAddress(_))), "{literal:?}");
        let dev = SsrfPolicy { allow_loopback: true };
        assert!(connect_guarded(dev, "localhost", port, timeout).await.is_ok());
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
