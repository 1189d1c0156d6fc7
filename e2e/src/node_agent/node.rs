//! The Node object: registration with its labels, capacity and conditions, and the
//! heartbeat (node Lease and Ready condition) the node lifecycle controller watches.
//!
//! A node standing in for a joining cloud server (the Hetzner e2e step) registers as a k3s
//! agent would, from its environment: `TEST_NODE_PROVIDER_ID` (`hcloud://<id>`, the
//! kubelet's `--provider-id`), `TEST_NODE_LABELS` (`k=v,k=v`, `--node-label`) and
//! `TEST_NODE_TAINTS` (`k=v:Effect,...`, `--node-taint`).

use super::AgentConfig;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use std::time::Duration;
use tracing::warn;

pub(super) async fn register_node(client: &Client, config: &AgentConfig) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = &config.node_name;
    let mut labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": std::env::consts::ARCH,
        "node.kubernetes.io/instance-type": "e2e-loopback",
    });
    for (key, value) in pairs(&std::env::var("TEST_NODE_LABELS").unwrap_or_default()) {
        labels[key] = Value::String(value);
    }
    let mut spec = json!({});
    if let Ok(provider) = std::env::var("TEST_NODE_PROVIDER_ID") {
        spec["providerID"] = Value::String(provider);
    }
    let taints = taints(&std::env::var("TEST_NODE_TAINTS").unwrap_or_default())?;
    if !taints.is_empty() {
        spec["taints"] = Value::Array(taints);
    }
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(error.into()),
    }
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(node_status(config))).await?;
    Ok(())
}

/// `k=v,k=v` → pairs (empty items skipped).
fn pairs(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|item| item.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `k=v:Effect,...` → Node taints.
fn taints(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (pair, effect) =
            item.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("taint {item:?} is not key=value:Effect"))?;
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        out.push(json!({"key": key, "value": value, "effect": effect}));
    }
    Ok(out)
}

pub(super) fn node_status(config: &AgentConfig) -> Value {
    let now = Timestamp::now().to_string();
    let resources =
        json!({"cpu": config.cpu, "memory": config.memory, "pods": "110", "ephemeral-storage": "100Gi"});
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("Ready", "True", "KubeletReady", "test node agent is running"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", ""),
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": config.node_name}],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "kubeProxyVersion": "",
            "osImage": "relay-e2e test node agent", "containerRuntimeVersion": "process://local",
            "kubeletVersion": "v1.37.2-e2e", "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
        },
    }})
}

/// Renews the node Lease every 10 s (what the node lifecycle controller watches)
/// and refreshes the Ready condition's heartbeat every 40 s.
pub(super) async fn heartbeat(client: Client, config: AgentConfig) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client.clone());
    let mut ticks = 0u64;
    loop {
        // MicroTime: exactly six fractional digits.
        let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": config.node_name},
            "spec": {"holderIdentity": config.node_name, "leaseDurationSeconds": 40, "renewTime": now},
        });
        let params = PatchParams::apply("test-node-agent").force();
        if let Err(error) = leases.patch(&config.node_name, &params, &Patch::Apply(&lease)).await {
            warn!(%error, "node lease renewal failed");
        }
        if ticks.is_multiple_of(4) {
            if let Err(error) = nodes
                .patch_status(&config.node_name, &PatchParams::default(), &Patch::Merge(node_status(&config)))
                .await
            {
                warn!(%error, "node status heartbeat failed");
            }
        }
        ticks += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
