//! Seeding the host list from an upstream relay's `listHosts` (zlay's RELAY_UPSTREAM),
//! once at start and then every `--rediscovery-interval`.

use super::{crawl, HostRegistry};
use crate::storage::HostStatus;
use std::sync::Arc;
use std::time::Duration;

/// Hosts from the upstream's list probed at once (each probe may wait out its timeout).
const BOOTSTRAP_PROBE_CONCURRENCY: usize = 16;

/// Bootstraps from the configured upstream, then again every rediscovery interval (once
/// when that is zero). Returns at once when no upstream is configured.
pub async fn discover(registry: Arc<HostRegistry>) {
    while !registry.config.upstream.is_empty() {
        bootstrap_from_upstream(&registry).await;
        if registry.config.rediscovery_interval.is_zero() {
            break;
        }
        tokio::time::sleep(registry.config.rediscovery_interval).await;
    }
}

/// Reads every page of the upstream's `listHosts` and adds the hosts it names.
pub async fn bootstrap_from_upstream(registry: &Arc<HostRegistry>) {
    let upstream = &registry.config.upstream;
    let base = if upstream.starts_with("http") { upstream.clone() } else { format!("https://{upstream}") };
    let client = crate::identity::ssrf::guarded_client(
        crate::identity::ssrf::SsrfPolicy { allow_loopback: registry.config.allow_insecure_hosts },
        Duration::from_secs(30),
    );
    let mut cursor: Option<String> = None;
    let mut added = 0usize;
    loop {
        let mut url = format!("{}/xrpc/com.atproto.sync.listHosts?limit=1000", base.trim_end_matches('/'));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => match response.json().await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "bootstrap: bad listHosts page");
                    break;
                }
            },
            Ok(response) => {
                tracing::warn!(status = %response.status(), "bootstrap: listHosts failed");
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "bootstrap: listHosts failed");
                break;
            }
        };
        let candidates: Vec<crawl::NormalizedHost> = page["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|host| listed_as_live(host["status"].as_str()))
            .filter_map(|host| host["hostname"].as_str())
            .filter_map(|name| crawl::normalize_hostname(name, registry.config.allow_insecure_hosts).ok())
            .collect();
        added += add_bootstrap_hosts(registry, candidates).await;
        cursor = page["cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    tracing::info!(added, upstream = %base, "bootstrap from upstream listHosts done");
    registry.refresh_host_metrics().await;
}

/// Whether the upstream lists a host as one worth subscribing to (no status means active).
fn listed_as_live(status: Option<&str>) -> bool {
    matches!(
        status.map(HostStatus::parse),
        None | Some(Some(HostStatus::Active)) | Some(Some(HostStatus::Idle))
    )
}

/// Stores and subscribes hosts named by the upstream relay. A host the relay does not know
/// yet is probed first like a crawled one (`describeServer` through the SSRF guard, relays
/// refused): the upstream's list is input from another party, not a trusted one.
async fn add_bootstrap_hosts(registry: &Arc<HostRegistry>, candidates: Vec<crawl::NormalizedHost>) -> usize {
    use futures_util::StreamExt;
    let bans = registry.store.domain_bans().await.unwrap_or_default();
    let insecure_ok = registry.config.allow_insecure_hosts;
    let timeout = registry.config.crawl_probe_timeout;
    let probed: Vec<Option<crawl::NormalizedHost>> = futures_util::stream::iter(candidates)
        .filter(|host| std::future::ready(!crawl::is_banned(&host.hostname, &bans)))
        .map(|host| async move {
            if let Ok(Some(_)) = registry.store.host_by_name(&host.hostname).await {
                return Some(host);
            }
            match crawl::probe(&host, insecure_ok, timeout).await {
                Ok(()) => Some(host),
                Err(error) => {
                    tracing::info!(host = %host.hostname, %error, "bootstrap: host refused");
                    None
                }
            }
        })
        .buffer_unordered(BOOTSTRAP_PROBE_CONCURRENCY)
        .collect()
        .await;
    let mut added = 0;
    for host in probed.into_iter().flatten() {
        if let Ok(stored) = registry.store_host(&host).await {
            if stored.status != HostStatus::Banned {
                registry.subscribe(stored);
                added += 1;
                tokio::time::sleep(registry.config.connect_stagger).await;
            }
        }
    }
    added
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_active_and_idle_hosts_are_taken_from_the_upstream() {
        for (status, taken) in [
            (None, true),
            (Some("active"), true),
            (Some("idle"), true),
            (Some("offline"), false),
            (Some("banned"), false),
            (Some("throttled"), false),
            (Some("unheard-of"), false),
        ] {
            assert_eq!(super::listed_as_live(status), taken, "{status:?}");
        }
    }
}
