//! `HetznerApi` over the `hcloud` crate: a base URL (the real API or the e2e fake), an
//! explicit request timeout (the crate's default client has none), the shared rate
//! budget before every request, error classification, short retries of idempotent calls
//! on transient failures, and a latch that stops calling after the token is refused.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hcloud::apis::configuration::Configuration;
use hcloud::apis::{actions_api, firewalls_api, networks_api, servers_api, ssh_keys_api};
use hcloud::models;

use super::api::*;
use super::budget::{Op, RateBudget};
use super::error::{classify, CloudError};

/// The Cloud API's base URL, as the crate names it.
pub const HETZNER_CLOUD_API: &str = "https://api.hetzner.cloud/v1";

/// Connection settings; the defaults suit the real API.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Where requests go: `HETZNER_CLOUD_API`, or `http://127.0.0.1:<port>/v1` in tests.
    pub base_url: String,
    /// Whole-request timeout (connect, send, read the body).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra attempts for idempotent calls (GET, DELETE) after a transient failure.
    pub max_retries: u32,
    /// The first retry's delay; doubled per attempt.
    pub retry_delay: Duration,
    /// After a 401/403, calls fail locally for this long instead of repeating a request
    /// that cannot succeed (a new token means a new client).
    pub unauthorized_hold: Duration,
    /// `per_page` for list calls (Hetzner's maximum is 50).
    pub page_size: i64,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            base_url: HETZNER_CLOUD_API.into(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_retries: 2,
            retry_delay: Duration::from_millis(500),
            unauthorized_hold: Duration::from_secs(10 * 60),
            page_size: 50,
        }
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The `hcloud`-backed client. Cheap to clone the `Arc` budget into many of these (one
/// per API token); the budget is what is shared.
pub struct HcloudClient {
    config: Configuration,
    budget: Arc<RateBudget>,
    settings: ClientSettings,
    refused_until: Mutex<Option<(Instant, CloudError)>>,
}

impl std::fmt::Debug for HcloudClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("HcloudClient").field("base_url", &self.settings.base_url).finish_non_exhaustive()
    }
}

impl HcloudClient {
    pub fn new(
        token: &str,
        budget: Arc<RateBudget>,
        settings: ClientSettings,
    ) -> Result<Self, ClientBuildError> {
        let mut config = Configuration::new();
        config.bearer_access_token = Some(token.to_string());
        config.user_agent = Some(concat!("relay-operator/", env!("CARGO_PKG_VERSION")).into());
        config
            .base_path_mapping
            .insert(HETZNER_CLOUD_API.into(), settings.base_url.trim_end_matches('/').into());
        config.client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .build()?;
        Ok(HcloudClient { config, budget, settings, refused_until: Mutex::new(None) })
    }

    pub fn budget(&self) -> &Arc<RateBudget> {
        &self.budget
    }

    /// One logical call: budget, request, classification, health, retries.
    async fn call<T, E, F, Fut>(&self, op: Op, idempotent: bool, request: F) -> Result<T, CloudError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, hcloud::apis::Error<E>>>,
    {
        self.check_refused()?;
        let mut attempt = 0;
        loop {
            self.budget.acquire(op).await?;
            let result = request().await.map_err(|e| classify(e, Duration::ZERO));
            let result = self.observe(result);
            match result {
                Err(error) if idempotent && error.is_retryable() && attempt < self.settings.max_retries => {
                    attempt += 1;
                    tracing::debug!(op = op.as_str(), attempt, %error, "retrying a transient Hetzner failure");
                    tokio::time::sleep(self.settings.retry_delay * 2u32.pow(attempt - 1)).await;
                }
                other => return other,
            }
        }
    }

    /// Feeds an outcome to the budget: a 429 starts the pause (and its length becomes
    /// the error's `retry_after`), a refused token latches.
    fn observe<T>(&self, result: Result<T, CloudError>) -> Result<T, CloudError> {
        let result = match result {
            Err(CloudError::RateLimited { .. }) => {
                Err(CloudError::RateLimited { retry_after: self.budget.on_rate_limited(Instant::now()) })
            }
            other => other,
        };
        if let Err(error @ CloudError::Unauthorized { .. }) = &result {
            let until = Instant::now() + self.settings.unauthorized_hold;
            *self.refused_lock() = Some((until, error.clone()));
        }
        self.budget.record(&result);
        result
    }

    fn check_refused(&self) -> Result<(), CloudError> {
        let mut refused = self.refused_lock();
        match &*refused {
            Some((until, error)) if Instant::now() < *until => Err(error.clone()),
            Some(_) => {
                *refused = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn refused_lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, CloudError)>> {
        // The guarded value is replaced whole; a poisoned lock holds a valid value.
        self.refused_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn list_servers_where(
        &self,
        name: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Vec<ServerInfo>, CloudError> {
        let mut servers = Vec::new();
        let mut page = Some(1);
        while let Some(current) = page {
            let params = servers_api::ListServersParams {
                name: name.map(str::to_string),
                label_selector: selector.map(str::to_string),
                page: Some(current),
                per_page: Some(self.settings.page_size),
                ..Default::default()
            };
            let response = self
                .call(Op::ListServers, true, || servers_api::list_servers(&self.config, params.clone()))
                .await?;
            servers.extend(response.servers.into_iter().map(server_info));
            page = next_page(&response.meta, current);
        }
        Ok(servers)
    }
}

/// The next page to ask for, guarding against an API that repeats a page number.
fn next_page(meta: &models::Meta, current: i64) -> Option<i64> {
    meta.pagination.next_page.filter(|next| *next > current)
}

impl HetznerApi for HcloudClient {
    async fn create_server(&self, spec: &ServerSpec) -> Result<CreatedServer, CloudError> {
        let params = servers_api::CreateServerParams { create_server_request: create_request(spec) };
        // Not idempotent: a POST that timed out may have created the server.
        let response = self
            .call(Op::CreateServer, false, || servers_api::create_server(&self.config, params.clone()))
            .await?;
        Ok(CreatedServer {
            server: server_info(*response.server),
            action: action_info(*response.action),
            next_actions: response.next_actions.into_iter().map(action_info).collect(),
        })
    }

    async fn get_server(&self, id: i64) -> Result<Option<ServerInfo>, CloudError> {
        let params = servers_api::GetServerParams { id };
        match self.call(Op::GetServer, true, || servers_api::get_server(&self.config, params.clone())).await {
            Ok(response) => Ok(response.server.map(|s| server_info(*s))),
            Err(CloudError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn list_servers(&self, label_selector: &str) -> Result<Vec<ServerInfo>, CloudError> {
        self.list_servers_where(None, Some(label_selector)).await
    }

    async fn server_by_name(&self, name: &str) -> Result<Option<ServerInfo>, CloudError> {
        let servers = self.list_servers_where(Some(name), None).await?;
        Ok(servers.into_iter().find(|s| s.name == name))
    }

    async fn delete_server(&self, id: i64) -> Result<Option<ActionInfo>, CloudError> {
        let params = servers_api::DeleteServerParams { id };
        // Deleting twice is harmless (the second is a 404), so transient failures retry.
        let response = self
            .call(Op::DeleteServer, true, || servers_api::delete_server(&self.config, params.clone()))
            .await?;
        Ok(response.action.map(|a| action_info(*a)))
    }

    async fn get_action(&self, id: i64) -> Result<ActionInfo, CloudError> {
        let params = actions_api::GetActionParams { id };
        let response =
            self.call(Op::GetAction, true, || actions_api::get_action(&self.config, params.clone())).await?;
        Ok(action_info(*response.action))
    }

    async fn create_firewall(&self, spec: &FirewallSpec) -> Result<Firewall, CloudError> {
        let params = firewalls_api::CreateFirewallParams { create_firewall_request: firewall_request(spec) };
        let response = self
            .call(Op::CreateFirewall, false, || firewalls_api::create_firewall(&self.config, params.clone()))
            .await?;
        let firewall = response
            .firewall
            .ok_or_else(|| CloudError::Other("create_firewall returned no firewall".into()))?;
        Ok(firewall_info(*firewall))
    }

    async fn delete_firewall(&self, id: i64) -> Result<(), CloudError> {
        let params = firewalls_api::DeleteFirewallParams { id };
        // Deleting twice is harmless (the second is a 404), so transient failures retry.
        match self
            .call(Op::DeleteFirewall, true, || firewalls_api::delete_firewall(&self.config, params.clone()))
            .await
        {
            Ok(()) | Err(CloudError::NotFound(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn firewall_by_name(&self, name: &str) -> Result<Option<Firewall>, CloudError> {
        let params = firewalls_api::ListFirewallsParams { name: Some(name.into()), ..Default::default() };
        let response = self
            .call(Op::ListFirewalls, true, || firewalls_api::list_firewalls(&self.config, params.clone()))
            .await?;
        Ok(response.firewalls.into_iter().map(firewall_info).find(|f| f.name == name))
    }

    async fn ssh_keys_by_name(&self, names: &[String]) -> Result<Vec<SshKey>, CloudError> {
        // One listing (usually one page) is cheaper than a call per name.
        let mut keys = Vec::new();
        let mut page = Some(1);
        while let Some(current) = page {
            let params = ssh_keys_api::ListSshKeysParams {
                page: Some(current),
                per_page: Some(self.settings.page_size),
                ..Default::default()
            };
            let response = self
                .call(Op::ListSshKeys, true, || ssh_keys_api::list_ssh_keys(&self.config, params.clone()))
                .await?;
            keys.extend(response.ssh_keys.into_iter().filter(|k| names.contains(&k.name)).map(|k| SshKey {
                id: k.id,
                name: k.name,
                fingerprint: k.fingerprint,
            }));
            page = next_page(&response.meta, current);
        }
        Ok(keys)
    }

    async fn network_by_name(&self, name: &str) -> Result<Option<Network>, CloudError> {
        let params = networks_api::ListNetworksParams { name: Some(name.into()), ..Default::default() };
        let response = self
            .call(Op::ListNetworks, true, || networks_api::list_networks(&self.config, params.clone()))
            .await?;
        Ok(response.networks.into_iter().find(|n| n.name == name).map(|n| Network {
            id: n.id,
            name: n.name,
            ip_range: n.ip_range,
        }))
    }
}

fn to_hash_map(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn create_request(spec: &ServerSpec) -> models::CreateServerRequest {
    models::CreateServerRequest {
        automount: None,
        firewalls: (!spec.firewall_ids.is_empty()).then(|| {
            spec.firewall_ids.iter().map(|&id| models::CreateServerRequestFirewalls::new(id)).collect()
        }),
        image: spec.image.clone(),
        labels: Some(to_hash_map(&spec.labels)),
        location: Some(spec.location.clone()),
        name: spec.name.clone(),
        networks: spec.network_id.map(|id| vec![id]),
        placement_group: None,
        public_net: None,
        server_type: spec.server_type.clone(),
        ssh_keys: (!spec.ssh_keys.is_empty()).then(|| spec.ssh_keys.clone()),
        start_after_create: Some(true),
        user_data: (!spec.user_data.is_empty()).then(|| spec.user_data.clone()),
        volumes: None,
    }
}

fn firewall_request(spec: &FirewallSpec) -> models::CreateFirewallRequest {
    let rules = spec
        .rules
        .iter()
        .map(|rule| models::Rule {
            description: Some(Some(rule.description.clone())),
            destination_ips: None,
            direction: models::rule::Direction::In,
            port: rule.port.clone().map(Some),
            protocol: match rule.protocol {
                FirewallProtocol::Tcp => models::rule::Protocol::Tcp,
                FirewallProtocol::Udp => models::rule::Protocol::Udp,
                FirewallProtocol::Icmp => models::rule::Protocol::Icmp,
            },
            source_ips: Some(rule.source_ips.clone()),
        })
        .collect();
    models::CreateFirewallRequest {
        apply_to: None,
        labels: Some(to_hash_map(&spec.labels)),
        name: spec.name.clone(),
        rules: Some(rules),
    }
}

fn server_info(server: models::Server) -> ServerInfo {
    use models::server::Status as S;
    let status = match server.status {
        S::Initializing => ServerStatus::Initializing,
        S::Starting => ServerStatus::Starting,
        S::Running => ServerStatus::Running,
        S::Stopping => ServerStatus::Stopping,
        S::Off => ServerStatus::Off,
        S::Deleting => ServerStatus::Deleting,
        S::Migrating => ServerStatus::Migrating,
        S::Rebuilding => ServerStatus::Rebuilding,
        S::Unknown => ServerStatus::Unknown,
    };
    ServerInfo {
        id: server.id,
        name: server.name,
        status,
        labels: server.labels.into_iter().collect(),
        public_ipv4: server.public_net.ipv4.map(|ip| ip.ip),
        public_ipv6: server.public_net.ipv6.map(|ip| ip.ip),
        private_ips: server.private_net.into_iter().filter_map(|net| net.ip).collect(),
        location: server.location.name,
        server_type: server.server_type.name,
    }
}

fn action_info(action: models::Action) -> ActionInfo {
    use models::action::Status as S;
    let status = match action.status {
        S::Running => ActionStatus::Running,
        S::Success => ActionStatus::Success,
        S::Error => {
            let (code, message) = action.error.map(|e| (e.code, e.message)).unwrap_or_default();
            ActionStatus::Error { code, message }
        }
    };
    ActionInfo { id: action.id, command: action.command, status, progress: action.progress }
}

fn firewall_info(firewall: models::Firewall) -> Firewall {
    Firewall {
        id: firewall.id,
        name: firewall.name,
        labels: firewall.labels.unwrap_or_default().into_iter().collect(),
    }
}
