//! What a network and a mount namespace would do for a process, done by rewriting:
//! wildcard listen addresses become the pod IP, container paths become host paths.

use k8s_openapi::api::core::v1::{Container, VolumeMount};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// The host directory a volume mount stands for (its volume's directory, or a subPath of it).
pub(super) fn host_path(mount: &VolumeMount, volumes: &HashMap<String, PathBuf>) -> Option<PathBuf> {
    let base = volumes.get(&mount.name)?;
    Some(match mount.sub_path.as_deref() {
        Some(sub) if !sub.is_empty() => base.join(sub),
        _ => base.clone(),
    })
}

/// Container mount path → host directory.
pub(super) fn mount_map(container: &Container, volumes: &HashMap<String, PathBuf>) -> Vec<(String, PathBuf)> {
    let mut map: Vec<(String, PathBuf)> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|mount| {
            Some((mount.mount_path.trim_end_matches('/').to_string(), host_path(mount, volumes)?))
        })
        .collect();
    // Longest mount path first, so nested mounts win.
    map.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    map
}

/// What a network and a mount namespace would do for the process: wildcard
/// listen addresses become the pod IP, container paths become host paths.
pub fn rewrite(value: &str, ip: Ipv4Addr, mounts: &[(String, PathBuf)]) -> String {
    let value = value.replace("0.0.0.0:", &format!("{ip}:"));
    for (container_path, host) in mounts {
        if value == *container_path {
            return host.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(&format!("{container_path}/")) {
            return host.join(rest).display().to_string();
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_and_mount_paths_are_rewritten() {
        let ip = Ipv4Addr::new(127, 1, 0, 7);
        let mounts = vec![("/data".to_string(), PathBuf::from("/tmp/vol"))];
        assert_eq!(rewrite("0.0.0.0:2470", ip, &mounts), "127.1.0.7:2470");
        assert_eq!(rewrite("--probe-addr=0.0.0.0:8081", ip, &mounts), "--probe-addr=127.1.0.7:8081");
        assert_eq!(rewrite("/data", ip, &mounts), "/tmp/vol");
        assert_eq!(rewrite("/data/relay.db", ip, &mounts), "/tmp/vol/relay.db");
        assert_eq!(rewrite("/database", ip, &mounts), "/database");
        assert_eq!(rewrite("bsky.network", ip, &mounts), "bsky.network");
    }
}
