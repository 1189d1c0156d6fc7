//! What cluster DNS and a Service proxy would do for a process: a Service's name
//! (`<service>.<namespace>.svc`, optionally `.cluster.local`) in a URL in args or env
//! becomes the IP of a running pod the Service selects. Our Services map each port to the
//! container port of the same number, so the port stays as written. A name with no
//! running pod behind it stays as it is (the process sees an unresolvable name, as it
//! would see a Service without endpoints).

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::{Api, Client};

/// Service host names found after `//` in `texts`, with the pod IP each resolves to now.
pub(super) async fn service_hosts<'a>(
    client: &Client,
    texts: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, String)> {
    let mut hosts: Vec<String> = texts.into_iter().flat_map(host_names).collect();
    hosts.sort();
    hosts.dedup();
    let mut resolved = Vec::new();
    for host in hosts {
        if let Some(ip) = resolve(client, &host).await {
            resolved.push((host, ip));
        }
    }
    // Longest first, so `a.ns.svc.cluster.local` is replaced before `a.ns.svc`.
    resolved.sort_by_key(|(host, _)| std::cmp::Reverse(host.len()));
    resolved
}

/// Replaces each resolved host after `//` with its IP.
pub(super) fn replace_hosts(value: &str, hosts: &[(String, String)]) -> String {
    let mut value = value.to_string();
    for (host, ip) in hosts {
        value = value.replace(&format!("//{host}"), &format!("//{ip}"));
    }
    value
}

/// `name.namespace.svc[.cluster.local]` hosts of the URLs in `text`.
fn host_names(text: &str) -> Vec<String> {
    text.split("//")
        .skip(1)
        .filter_map(|rest| {
            let host: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').collect();
            let trimmed = host.strip_suffix(".cluster.local").unwrap_or(&host);
            let parts: Vec<&str> = trimmed.split('.').collect();
            (parts.len() == 3 && parts[2] == "svc").then_some(host)
        })
        .collect()
}

async fn resolve(client: &Client, host: &str) -> Option<String> {
    let mut parts = host.split('.');
    let (name, namespace) = (parts.next()?, parts.next()?);
    let service = Api::<Service>::namespaced(client.clone(), namespace).get_opt(name).await.ok()??;
    let selector = service.spec?.selector?;
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&labels.join(",")))
        .await
        .ok()?;
    pods.items.into_iter().find_map(|pod| {
        let status = pod.status?;
        (status.phase.as_deref() == Some("Running") && pod.metadata.deletion_timestamp.is_none())
            .then_some(status.pod_ip)
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_hosts_in_urls() {
        let text = "http://relay-b.e2e.svc:2470,ws://relay-c.e2e.svc.cluster.local:2470/x,wss://bsky.network";
        assert_eq!(host_names(text), ["relay-b.e2e.svc", "relay-c.e2e.svc.cluster.local"]);
        assert!(host_names("http://10.0.0.1:80 https://example.com/a.b.svc").is_empty());
        let hosts = vec![
            ("relay-c.e2e.svc.cluster.local".to_string(), "127.9.0.4".to_string()),
            ("relay-b.e2e.svc".to_string(), "127.9.0.3".to_string()),
        ];
        assert_eq!(
            replace_hosts(text, &hosts),
            "http://127.9.0.3:2470,ws://127.9.0.4:2470/x,wss://bsky.network"
        );
    }
}
