//! The narrow interface the operator needs from Hetzner Cloud, in the operator's own
//! types: servers, actions, firewalls, SSH keys, networks. The `hcloud` implementation is
//! in `client.rs`; the lifecycle rules (`lifecycle.rs`) are written against this trait so
//! they can be tested against any implementation.

use std::collections::BTreeMap;
use std::future::Future;

use super::error::CloudError;

/// What to create. `labels` must already carry the ownership labels (`naming.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerSpec {
    pub name: String,
    pub server_type: String,
    pub location: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// SSH key names or ids, as Hetzner accepts both.
    pub ssh_keys: Vec<String>,
    pub firewall_ids: Vec<i64>,
    pub network_id: Option<i64>,
    pub user_data: String,
}

/// A server's lifecycle state as the API reports it. `Other` keeps a value this code
/// does not know (the crate itself would refuse it, see docs/hetzner.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStatus {
    Initializing,
    Starting,
    Running,
    Stopping,
    Off,
    Deleting,
    Migrating,
    Rebuilding,
    Unknown,
}

/// A server as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub id: i64,
    pub name: String,
    pub status: ServerStatus,
    pub labels: BTreeMap<String, String>,
    pub public_ipv4: Option<String>,
    /// The /64 network Hetzner assigns (the server uses `::1` in it by default).
    pub public_ipv6: Option<String>,
    pub private_ips: Vec<String>,
    pub location: String,
    pub server_type: String,
}

/// An asynchronous task in the API (create, delete, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionInfo {
    pub id: i64,
    pub command: String,
    pub status: ActionStatus,
    pub progress: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionStatus {
    Running,
    Success,
    Error { code: String, message: String },
}

/// `create_server`'s answer: the server (usually `initializing`) and the actions to poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedServer {
    pub server: ServerInfo,
    pub action: ActionInfo,
    pub next_actions: Vec<ActionInfo>,
}

/// One inbound rule of a firewall the operator creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallRule {
    pub protocol: FirewallProtocol,
    /// A port or a range (`"30000-32767"`); None for ICMP.
    pub port: Option<String>,
    pub source_ips: Vec<String>,
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewallProtocol {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FirewallSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub rules: Vec<FirewallRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey {
    pub id: i64,
    pub name: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub id: i64,
    pub name: String,
    pub ip_range: String,
}

/// The calls the operator makes. Every method costs at least one request from the
/// shared budget; list calls cost one per page.
pub trait HetznerApi: Send + Sync {
    /// `POST /servers`. Never retried by the client: after a timeout the caller goes
    /// back through the lookup order instead (`lifecycle::ensure_server`).
    fn create_server(
        &self,
        spec: &ServerSpec,
    ) -> impl Future<Output = Result<CreatedServer, CloudError>> + Send;
    /// `GET /servers/{id}`; a 404 is `Ok(None)`.
    fn get_server(&self, id: i64) -> impl Future<Output = Result<Option<ServerInfo>, CloudError>> + Send;
    /// `GET /servers?label_selector=`, every page.
    fn list_servers(
        &self,
        label_selector: &str,
    ) -> impl Future<Output = Result<Vec<ServerInfo>, CloudError>> + Send;
    /// `GET /servers?name=` (names are unique per project).
    fn server_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ServerInfo>, CloudError>> + Send;
    /// `DELETE /servers/{id}`: the delete action, when the API returns one.
    fn delete_server(&self, id: i64) -> impl Future<Output = Result<Option<ActionInfo>, CloudError>> + Send;
    /// `GET /actions/{id}`.
    fn get_action(&self, id: i64) -> impl Future<Output = Result<ActionInfo, CloudError>> + Send;
    /// `POST /firewalls`.
    fn create_firewall(
        &self,
        spec: &FirewallSpec,
    ) -> impl Future<Output = Result<Firewall, CloudError>> + Send;
    /// `DELETE /firewalls/{id}`; a 404 is `Ok(())` (already gone). The caller checks
    /// ownership first: this deletes whatever id it is given.
    fn delete_firewall(&self, id: i64) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// `GET /firewalls?name=`.
    fn firewall_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Firewall>, CloudError>> + Send;
    /// `GET /ssh_keys` (every page), filtered to `names`; names not found are missing
    /// from the answer (see `missing_names`).
    fn ssh_keys_by_name(
        &self,
        names: &[String],
    ) -> impl Future<Output = Result<Vec<SshKey>, CloudError>> + Send;
    /// `GET /networks?name=`.
    fn network_by_name(&self, name: &str)
        -> impl Future<Output = Result<Option<Network>, CloudError>> + Send;
}

/// The names in `wanted` that `found` lacks (an SSH key the user named but that does not
/// exist is a spec error, reported by name).
pub fn missing_names(wanted: &[String], found: &[SshKey]) -> Vec<String> {
    wanted.iter().filter(|name| !found.iter().any(|key| &key.name == *name)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ssh_keys_are_named() {
        let found = vec![SshKey { id: 1, name: "ops".into(), fingerprint: "aa".into() }];
        assert_eq!(missing_names(&["ops".into(), "laptop".into()], &found), vec!["laptop".to_string()]);
    }
}
