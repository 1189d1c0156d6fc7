//! `spec.node` and `status.node`: a dedicated machine for the relay. Today one provider,
//! Hetzner Cloud: the operator creates one server per Relay, joins it to the cluster as a
//! k3s agent and schedules the relay onto it (docs/hetzner.md).

use super::SecretKeyRef;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the relay's own node comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.hetzner) == has(oldSelf.hetzner)")
        .message("node.hetzner cannot be added to or removed from an existing Relay (the server holds the relay's data); create a new Relay instead")
)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// A Hetzner Cloud server created for this Relay, joined to the cluster as a k3s agent
    /// and reserved for the relay by a label and a taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hetzner: Option<HetznerNodeSpec>,
}

/// One Hetzner Cloud server per Relay. Its name is `relay-<name>-<8 hex of the UID>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.serverType == oldSelf.serverType")
        .message("node.hetzner.serverType is immutable: the server holds the relay's data and is never replaced silently; create a new Relay to move")
)]
#[x_kube(
    validation = Rule::new("self.location == oldSelf.location")
        .message("node.hetzner.location is immutable: the server holds the relay's data and is never replaced silently; create a new Relay to move")
)]
#[serde(rename_all = "camelCase")]
pub struct HetznerNodeSpec {
    /// Server type, e.g. `cpx41`.
    #[x_kube(validation = Rule::new("size(self) > 0").message("node.hetzner.serverType is required (e.g. cpx41)"))]
    #[schemars(regex(pattern = r"^[a-z0-9-]*$"), length(max = 64))]
    pub server_type: String,
    /// Location, e.g. `fsn1`, `nbg1`, `hel1`, `ash`, `hil`, `sin`.
    #[x_kube(validation = Rule::new("size(self) > 0").message("node.hetzner.location is required (e.g. fsn1)"))]
    #[schemars(regex(pattern = r"^[a-z0-9-]*$"), length(max = 32))]
    pub location: String,
    /// Image name or id (must be one cloud-init runs on).
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 128))]
    pub image: String,
    /// Names of existing SSH keys in the project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 128)))]
    pub ssh_keys: Vec<String>,
    /// A firewall for the server: one the operator creates with the relay's public port, or
    /// an existing one by name. None: no firewall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallChoice>,
    /// An existing private network to attach, by name (in the location's network zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub network: Option<String>,
    /// Extra server labels (`hetzner.cloud/` keys and the operator's own are ignored).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Secret key holding the Hetzner Cloud API token (read and write).
    pub token_secret_ref: SecretKeyRef,
    /// How the server joins the cluster.
    pub join: JoinSpec,
}

fn default_image() -> String {
    "ubuntu-24.04".into()
}

/// Exactly one of `create` and `name`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("(has(self.create) && self.create) != has(self.name)")
        .message("node.hetzner.firewall needs exactly one of create: true or name")
)]
#[serde(rename_all = "camelCase")]
pub struct FirewallChoice {
    /// Create `relay-<name>-<uid>` allowing the relay's public port (TCP), ICMP and SSH.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create: bool,
    /// Use this existing firewall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub name: Option<String>,
}

/// k3s agent join parameters (rendered into the server's cloud-init user data).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinSpec {
    /// The k3s server the agent joins, e.g. `https://k3s.example.net:6443`.
    #[serde(rename = "serverURL")]
    #[schemars(regex(pattern = r"^https://[A-Za-z0-9.:\[\]-]+(/)?$"), length(max = 253))]
    pub server_url: String,
    /// Secret key holding the join token. It is stored in Hetzner's user data: prefer a
    /// short-lived bootstrap token (`k3s token create --ttl 2h`).
    pub token_secret_ref: SecretKeyRef,
    /// `INSTALL_K3S_VERSION`, e.g. `v1.31.4+k3s1`; absent: the stable channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^v[0-9A-Za-z.+-]+$"), length(max = 64))]
    pub k3s_version: Option<String>,
}

/// The relay's own node as the operator last saw it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Hetzner server id (a string: ids outgrow JavaScript's integers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Server and Node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv4: Option<String>,
    /// The server's IPv6 network (the server uses `::1` in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_type: Option<String>,
    /// `Creating`, `WaitingForBoot`, `WaitingForJoin`, `Ready`, `Deleting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When `phase` last changed (the per-phase timeouts count from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<Time>,
    /// The create action being polled, while `Creating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_action_id: Option<String>,
}
