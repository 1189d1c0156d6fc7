//! The node subsystem: a Hetzner Cloud server per Relay (`spec.node.hetzner`), joined to
//! the cluster as a k3s agent, and the relay scheduled onto its Node once it is Ready.
//!
//! Called from the reconcile between read and build: it finds or creates the server
//! (lookup order and adopt rule in `cloud::hetzner`), follows it through Creating →
//! WaitingForBoot → WaitingForJoin → Ready with a timeout per phase, and tells build where
//! the relay may run. On deletion (`cleanup`) it cordons and drains the Node, deletes the
//! server, waits for the 404, deletes the Node.
//!
//! Hetzner calls are bounded: one operator-wide `RateBudget`, and once the server runs a
//! Relay costs one `GET /servers/{id}` per `OPERATOR_HETZNER_CHECK_INTERVAL` (the Node's
//! state comes from the Kubernetes API). API trouble becomes a condition reason and a
//! requeue, never a failed reconcile: the rest of the Relay is still reconciled.

use super::build::NodePin;
use super::status::node::NodeState;
use super::Context;
use crate::cloud::cloud_init::{self, JoinInputs, K3S_INSTALL_URL};
use crate::cloud::hetzner::lifecycle::{self, find_server, LifecycleError};
use crate::cloud::hetzner::naming::{self, is_owned_by, relay_label_value, server_name, Owner, LABEL_RELAY};
use crate::cloud::hetzner::{
    ActionStatus, BudgetConfig, ClientSettings, CloudError, FirewallProtocol, FirewallRule, FirewallSpec,
    HcloudClient, HetznerApi, PollPolicy, RateBudget, ServerInfo, ServerSpec, ServerStatus,
};
use crate::config::RunConfig;
use crate::crd::node::{HetznerNodeSpec, NodeStatus};
use crate::crd::{Relay, SecretKeyRef};
use crate::Error;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Phases written to `status.node.phase`.
pub const PHASE_CREATING: &str = "Creating";
pub const PHASE_BOOTING: &str = "WaitingForBoot";
pub const PHASE_JOINING: &str = "WaitingForJoin";
pub const PHASE_READY: &str = "Ready";
/// The taint (and node label) key that reserves a node for one Relay.
pub const RESERVATION_KEY: &str = LABEL_RELAY;

/// Operator-wide Hetzner state: the one rate budget, a client per token, and when each
/// Relay's server was last checked (so steady state stays at one call per interval).
pub struct Hetzner {
    budget: Arc<RateBudget>,
    settings: ClientSettings,
    clients: Mutex<HashMap<String, Arc<HcloudClient>>>,
    last_check: Mutex<HashMap<String, Instant>>,
}

impl Hetzner {
    pub fn new(config: &RunConfig) -> Hetzner {
        let budget = BudgetConfig {
            refill_per_second: config.hetzner_refill_per_second,
            burst: config.hetzner_burst,
            backoff_initial: config.hetzner_backoff,
            backoff_max: config.hetzner_backoff_max,
            ..BudgetConfig::default()
        };
        Hetzner {
            budget: Arc::new(RateBudget::new(budget)),
            settings: ClientSettings {
                base_url: config.hetzner_api_url.clone(),
                ..ClientSettings::default()
            },
            clients: Mutex::new(HashMap::new()),
            last_check: Mutex::new(HashMap::new()),
        }
    }

    pub fn budget(&self) -> &Arc<RateBudget> {
        &self.budget
    }

    /// The client for a token (a changed token gets a new client, so the 401 latch of
    /// the old one does not hold the new one back).
    fn client(&self, token: &str) -> Result<Arc<HcloudClient>, CloudError> {
        let key = super::build::digest(token.as_bytes());
        let mut clients = lock(&self.clients);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = HcloudClient::new(token, self.budget.clone(), self.settings.clone())
            .map_err(|e| CloudError::Other(e.to_string()))?;
        let client = Arc::new(client);
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn checked_recently(&self, uid: &str, interval: Duration) -> bool {
        lock(&self.last_check).get(uid).is_some_and(|at| at.elapsed() < interval)
    }

    fn mark_checked(&self, uid: &str) {
        lock(&self.last_check).insert(uid.to_string(), Instant::now());
    }

    fn forget(&self, uid: &str) {
        lock(&self.last_check).remove(uid);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one reconcile found, for build (`pin`) and status.
#[derive(Debug, Clone)]
pub struct NodeObserved {
    pub status: NodeStatus,
    pub state: NodeState,
    pub node_name: String,
    /// Whether the relay is scheduled onto the node (joined and Ready, or Ready before).
    pub scheduled: bool,
    pub taint_value: String,
    pub requeue: Duration,
}

impl NodeObserved {
    pub fn pin(&self) -> NodePin<'_> {
        if self.scheduled {
            NodePin::On { node: &self.node_name, taint_key: RESERVATION_KEY, taint_value: &self.taint_value }
        } else {
            NodePin::Waiting
        }
    }
}

fn owner(relay: &Relay) -> Owner {
    Owner {
        namespace: relay.namespace().unwrap_or_default(),
        name: relay.name_any(),
        uid: relay.uid().unwrap_or_default(),
    }
}

fn parse_id(status: &NodeStatus) -> Option<i64> {
    status.server_id.as_deref().and_then(|id| id.parse().ok())
}

/// The Node's state as the Kubernetes API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSeen {
    Missing,
    /// A Node with the name whose providerID names another server: not ours.
    Foreign,
    Joined {
        ready: bool,
    },
}

/// Reads a Node: is it the one for `server_id` (providerID `hcloud://<id>` when set),
/// and is it Ready.
pub fn node_seen(node: Option<&Node>, server_id: Option<i64>) -> NodeSeen {
    let Some(node) = node else { return NodeSeen::Missing };
    let provider = node.spec.as_ref().and_then(|s| s.provider_id.as_deref());
    if let (Some(provider), Some(id)) = (provider, server_id) {
        if provider != format!("hcloud://{id}") {
            return NodeSeen::Foreign;
        }
    }
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    NodeSeen::Joined { ready }
}

/// One reconcile of the Relay's node.
pub async fn reconcile(relay: &Relay, spec: &HetznerNodeSpec, ctx: &Context) -> Result<NodeObserved, Error> {
    let owner = owner(relay);
    let name = server_name(&owner.name, &owner.uid);
    let mut status = relay.status.as_ref().and_then(|s| s.node.clone()).unwrap_or_default();
    status.node_name = Some(name.clone());
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node = nodes.get_opt(&name).await?;
    let config = &ctx.config;
    let previous_phase = status.phase.clone();
    let quiet_phase = matches!(previous_phase.as_deref(), Some(PHASE_JOINING | PHASE_READY));
    let seen = node_seen(node.as_ref(), parse_id(&status));

    // Once the server runs, the Kubernetes API alone says how the Node is doing; the
    // Hetzner API is asked at most once per check interval.
    let state = if quiet_phase
        && parse_id(&status).is_some()
        && ctx.hetzner.checked_recently(&owner.uid, config.hetzner_check_interval)
    {
        joined_state(&mut status, &name, seen, config)
    } else {
        match hetzner_step(relay, spec, &owner, &name, &mut status, seen, ctx).await? {
            Step::State(state) => state,
            Step::Running => joined_state(&mut status, &name, seen, config),
        }
    };
    if status.phase != previous_phase {
        status.phase_since = Some(Time(jiff::Timestamp::now()));
    }
    let scheduled = match state {
        NodeState::Ready { .. } | NodeState::NodeNotReady { .. } => true,
        // API trouble after the node was in service does not take the relay off it.
        _ => status.phase.as_deref() == Some(PHASE_READY) && matches!(seen, NodeSeen::Joined { .. }),
    };
    let requeue = requeue_for(&state, config);
    Ok(NodeObserved {
        status,
        state,
        node_name: name,
        scheduled,
        taint_value: relay_label_value(&owner),
        requeue,
    })
}

enum Step {
    /// The server runs: what matters now is the Node.
    Running,
    State(NodeState),
}

/// The phase after the server runs, from the Node alone.
fn joined_state(status: &mut NodeStatus, name: &str, seen: NodeSeen, config: &RunConfig) -> NodeState {
    let was_ready = status.phase.as_deref() == Some(PHASE_READY);
    match seen {
        NodeSeen::Joined { ready: true } => {
            status.phase = Some(PHASE_READY.into());
            NodeState::Ready { node: name.into() }
        }
        NodeSeen::Joined { ready: false } if was_ready => NodeState::NodeNotReady { node: name.into() },
        NodeSeen::Foreign => NodeState::NotOwned {
            message: format!("Node {name} has a providerID of another server; not scheduling onto it"),
        },
        joined => {
            set_phase(status, PHASE_JOINING);
            NodeState::WaitingForJoin {
                node: name.into(),
                joined: matches!(joined, NodeSeen::Joined { .. }),
                timed_out: phase_expired(status, PHASE_JOINING, config.hetzner_join_timeout),
            }
        }
    }
}

fn set_phase(status: &mut NodeStatus, phase: &str) {
    if status.phase.as_deref() != Some(phase) {
        status.phase = Some(phase.into());
        status.phase_since = Some(Time(jiff::Timestamp::now()));
    }
}

/// Whether `status` has been in `phase` for longer than `timeout`.
pub fn phase_expired(status: &NodeStatus, phase: &str, timeout: Duration) -> bool {
    if status.phase.as_deref() != Some(phase) {
        return false;
    }
    let Some(since) = &status.phase_since else { return false };
    let elapsed = jiff::Timestamp::now().as_second().saturating_sub(since.0.as_second());
    u64::try_from(elapsed).is_ok_and(|s| s > timeout.as_secs())
}

/// When to look again: soon while something moves, minutes after API trouble, the check
/// interval once the node is in service.
fn requeue_for(state: &NodeState, config: &RunConfig) -> Duration {
    match state {
        NodeState::Creating { timed_out: false, .. } | NodeState::WaitingForBoot { timed_out: false, .. } => {
            config.hetzner_poll_interval
        }
        NodeState::WaitingForJoin { timed_out: false, .. } | NodeState::NodeNotReady { .. } => {
            config.hetzner_join_poll
        }
        NodeState::RateLimited { retry_after } => (*retry_after).max(config.hetzner_poll_interval),
        NodeState::Unreachable { .. } => config.hetzner_poll_interval.max(Duration::from_secs(30)),
        NodeState::SecretMissing { .. } => config.missing_secret_poll,
        // A little past the interval, so the wake-up finds the last check old enough
        // (exactly at it, the check would be skipped and the next one come twice as late).
        NodeState::Ready { .. } => config.hetzner_check_interval + Duration::from_secs(5),
        _ => config.hetzner_check_interval,
    }
}

/// The Hetzner side: poll the create action, find the server (status id → label), or
/// create it. API errors become states.
async fn hetzner_step(
    relay: &Relay,
    spec: &HetznerNodeSpec,
    owner: &Owner,
    name: &str,
    status: &mut NodeStatus,
    seen: NodeSeen,
    ctx: &Context,
) -> Result<Step, Error> {
    let token = match secret_value(relay, &spec.token_secret_ref, ctx).await? {
        Some(token) => token,
        None => {
            return Ok(Step::State(secret_missing("node.hetzner.tokenSecretRef", &spec.token_secret_ref)))
        }
    };
    let api = match ctx.hetzner.client(&token) {
        Ok(api) => api,
        Err(error) => return Ok(Step::State(cloud_state(&error))),
    };
    let outcome = server_step(relay, spec, owner, name, status, api.as_ref(), ctx).await;
    update_metrics(ctx);
    match outcome {
        Ok(step) => {
            if matches!(step, Step::Running) {
                ctx.hetzner.mark_checked(&owner.uid);
            }
            Ok(step)
        }
        Err(StepError::Kube(error)) => Err(error),
        Err(StepError::State(state)) => Ok(Step::State(state)),
        Err(StepError::Lifecycle(error)) => {
            warn!(relay = %format!("{}/{}", owner.namespace, owner.name), %error, "Hetzner step failed");
            // A Ready node stays in service through API trouble; its next check retries.
            if status.phase.as_deref() == Some(PHASE_READY)
                && matches!(seen, NodeSeen::Joined { ready: true })
            {
                return Ok(Step::Running);
            }
            Ok(Step::State(lifecycle_state(&error)))
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Kube(#[from] Error),
    /// Something only the user can fix, found before any create call.
    #[error("{0:?}")]
    State(NodeState),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

impl From<CloudError> for StepError {
    fn from(error: CloudError) -> Self {
        StepError::Lifecycle(error.into())
    }
}

#[allow(clippy::too_many_arguments)]
async fn server_step<A: HetznerApi>(
    relay: &Relay,
    spec: &HetznerNodeSpec,
    owner: &Owner,
    name: &str,
    status: &mut NodeStatus,
    api: &A,
    ctx: &Context,
) -> Result<Step, StepError> {
    let config = &ctx.config;
    if let Some(action_id) = status.create_action_id.as_deref().and_then(|id| id.parse::<i64>().ok()) {
        let action = api.get_action(action_id).await?;
        match action.status {
            ActionStatus::Running => {
                return Ok(Step::State(NodeState::Creating {
                    server: name.into(),
                    timed_out: phase_expired(status, PHASE_CREATING, config.hetzner_create_timeout),
                }))
            }
            ActionStatus::Error { code, message } => {
                status.create_action_id = None;
                return Ok(Step::State(NodeState::Failed {
                    reason: "CreateFailed",
                    message: format!("the create action of server {name} failed: {code}: {message}"),
                }));
            }
            ActionStatus::Success => status.create_action_id = None,
        }
    }
    let known = parse_id(status);
    let found = match find_server(api, &owner.uid, known).await {
        // The status names a server that is not ours (restored from a backup of another
        // cluster?): never touched; look by label instead.
        Err(LifecycleError::NotOwned { .. }) => find_server(api, &owner.uid, None).await?,
        other => other?,
    };
    let server = match found {
        Some(server) => {
            if known != Some(server.id) {
                // Found by label: a server created before a crash, or after a status was lost.
                announce(
                    relay,
                    ctx,
                    "ServerAdopted",
                    format!("adopted Hetzner server {} (id {}) by its UID label", server.name, server.id),
                )
                .await;
            }
            server
        }
        None => match create(relay, spec, owner, name, api, ctx).await? {
            Created::New(server, action_id) => {
                record_server(status, &server);
                status.create_action_id = action_id.map(|id| id.to_string());
                set_phase(status, PHASE_CREATING);
                return Ok(Step::State(NodeState::Creating { server: name.into(), timed_out: false }));
            }
            Created::Adopted(server) => server,
        },
    };
    record_server(status, &server);
    if server.status == ServerStatus::Running {
        return Ok(Step::Running);
    }
    set_phase(status, PHASE_BOOTING);
    Ok(Step::State(NodeState::WaitingForBoot {
        server: name.into(),
        server_status: format!("{:?}", server.status).to_lowercase(),
        timed_out: phase_expired(status, PHASE_BOOTING, config.hetzner_boot_timeout),
    }))
}

fn record_server(status: &mut NodeStatus, server: &ServerInfo) {
    status.server_id = Some(server.id.to_string());
    status.public_ipv4 = server.public_ipv4.clone();
    status.public_ipv6 = server.public_ipv6.clone();
    status.location = Some(server.location.clone());
    status.server_type = Some(server.server_type.clone());
}

enum Created {
    New(ServerInfo, Option<i64>),
    Adopted(ServerInfo),
}

/// Creates the server: SSH keys, firewall and network resolved by name first, the join
/// token read and rendered into cloud-init. A `uniqueness_error` means a server with this
/// name exists: adopted only with our UID label.
async fn create<A: HetznerApi>(
    relay: &Relay,
    spec: &HetznerNodeSpec,
    owner: &Owner,
    name: &str,
    api: &A,
    ctx: &Context,
) -> Result<Created, StepError> {
    let join_token = secret_value(relay, &spec.join.token_secret_ref, ctx).await?.ok_or_else(|| {
        missing_secret_error("node.hetzner.join.tokenSecretRef", &spec.join.token_secret_ref)
    })?;
    let user_data = cloud_init::render(&join_inputs(spec, owner, name, join_token)).map_err(|e| {
        StepError::State(NodeState::Failed {
            reason: "InvalidJoinParameters",
            message: format!("cloud-init: {e}"),
        })
    })?;
    let labels = naming::ownership_labels(owner, &spec.labels);
    let ssh_keys = if spec.ssh_keys.is_empty() {
        Vec::new()
    } else {
        let found = api.ssh_keys_by_name(&spec.ssh_keys).await?;
        let missing = crate::cloud::hetzner::missing_names(&spec.ssh_keys, &found);
        if !missing.is_empty() {
            return Err(CloudError::Other(format!("SSH keys not found in the project: {missing:?}")).into());
        }
        found.iter().map(|k| k.id.to_string()).collect()
    };
    let firewall_ids = match &spec.firewall {
        None => Vec::new(),
        Some(choice) => match &choice.name {
            Some(existing) => match api.firewall_by_name(existing).await? {
                Some(firewall) => vec![firewall.id],
                None => return Err(CloudError::Other(format!("firewall {existing:?} not found")).into()),
            },
            None => vec![own_firewall(relay, owner, name, &labels, api).await?],
        },
    };
    let network_id = match &spec.network {
        None => None,
        Some(network) => match api.network_by_name(network).await? {
            Some(found) => Some(found.id),
            None => return Err(CloudError::Other(format!("network {network:?} not found")).into()),
        },
    };
    let server_spec = ServerSpec {
        name: name.into(),
        server_type: spec.server_type.clone(),
        location: spec.location.clone(),
        image: spec.image.clone(),
        labels,
        ssh_keys,
        firewall_ids,
        network_id,
        user_data,
    };
    match api.create_server(&server_spec).await {
        Ok(created) => {
            info!(relay = %format!("{}/{}", owner.namespace, owner.name), server = created.server.id, "created a Hetzner server");
            announce(
                relay,
                ctx,
                "ServerCreated",
                format!("created Hetzner server {name} (id {}) in {}", created.server.id, spec.location),
            )
            .await;
            Ok(Created::New(created.server, Some(created.action.id)))
        }
        Err(CloudError::UniquenessError { .. }) => match api.server_by_name(name).await? {
            Some(server) if is_owned_by(&server, &owner.uid) => {
                announce(relay, ctx, "ServerAdopted", format!("adopted Hetzner server {name} (id {}) after uniqueness_error: it carries this Relay's UID label", server.id)).await;
                Ok(Created::Adopted(server))
            }
            Some(server) => Err(LifecycleError::NameConflict { name: name.into(), id: server.id }.into()),
            None => Err(CloudError::Transient(format!("name {name:?} was taken, then not found")).into()),
        },
        Err(error) => Err(error.into()),
    }
}

/// The firewall the operator owns for this Relay (`firewall.create`): found by name with
/// our UID label, or created.
async fn own_firewall<A: HetznerApi>(
    relay: &Relay,
    owner: &Owner,
    name: &str,
    labels: &BTreeMap<String, String>,
    api: &A,
) -> Result<i64, StepError> {
    if let Some(existing) = api.firewall_by_name(name).await? {
        if existing.labels.get(naming::LABEL_UID) == Some(&naming::label_value(&owner.uid)) {
            return Ok(existing.id);
        }
        return Err(CloudError::Other(format!(
            "a firewall named {name:?} exists without this Relay's UID label"
        ))
        .into());
    }
    let everywhere = vec!["0.0.0.0/0".to_string(), "::/0".to_string()];
    let rule = |protocol, port: Option<String>, description: &str| FirewallRule {
        protocol,
        port,
        source_ips: everywhere.clone(),
        description: description.into(),
    };
    let spec = FirewallSpec {
        name: name.into(),
        labels: labels.clone(),
        rules: vec![
            rule(FirewallProtocol::Tcp, Some(relay.spec.ports.public.to_string()), "relay public port"),
            rule(FirewallProtocol::Tcp, Some("22".into()), "ssh"),
            rule(FirewallProtocol::Icmp, None, "icmp"),
        ],
    };
    Ok(api.create_firewall(&spec).await?.id)
}

fn join_inputs(spec: &HetznerNodeSpec, owner: &Owner, name: &str, token: String) -> JoinInputs {
    let reservation = relay_label_value(owner);
    JoinInputs {
        node_name: name.into(),
        server_url: spec.join.server_url.trim_end_matches('/').into(),
        token,
        k3s_version: spec.join.k3s_version.clone(),
        install_url: K3S_INSTALL_URL.into(),
        node_labels: BTreeMap::from([(RESERVATION_KEY.to_string(), reservation.clone())]),
        taints: vec![format!("{RESERVATION_KEY}={reservation}:NoSchedule")],
        external_cloud_provider: false,
    }
}

/// A key of a Secret in the Relay's namespace; None when the Secret or key is missing.
async fn secret_value(
    relay: &Relay,
    reference: &SecretKeyRef,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &relay.namespace().unwrap_or_default());
    let Some(secret) = secrets.get_opt(&reference.name).await? else { return Ok(None) };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    Ok(value)
}

fn secret_missing(field: &str, reference: &SecretKeyRef) -> NodeState {
    NodeState::SecretMissing {
        message: format!(
            "{field}: Secret {:?} has no key {:?} (or does not exist)",
            reference.name, reference.key
        ),
    }
}

fn missing_secret_error(field: &str, reference: &SecretKeyRef) -> StepError {
    StepError::State(secret_missing(field, reference))
}

/// Copies the budget's counters and the API's health into the operator's metrics.
fn update_metrics(ctx: &Context) {
    let budget = ctx.hetzner.budget();
    let counts = budget.counts();
    let metrics = &ctx.metrics;
    for (op, total) in &counts.calls {
        let counter = metrics.hetzner_requests.with_label_values(&[op.as_str()]);
        counter.inc_by(total.saturating_sub(counter.get()));
    }
    metrics.hetzner_throttled.inc_by(counts.throttled.saturating_sub(metrics.hetzner_throttled.get()));
    metrics
        .hetzner_rate_limited
        .inc_by(counts.rate_limited.saturating_sub(metrics.hetzner_rate_limited.get()));
    metrics.hetzner_api_healthy.set(i64::from(budget.health().is_ok()));
}

/// The condition state for a failed Hetzner step.
pub fn lifecycle_state(error: &LifecycleError) -> NodeState {
    match error {
        LifecycleError::Api(error) => cloud_state(error),
        LifecycleError::NameConflict { .. } | LifecycleError::NotOwned { .. } => {
            NodeState::NotOwned { message: error.to_string() }
        }
        LifecycleError::Ambiguous { .. } => {
            NodeState::Failed { reason: "DuplicateServers", message: error.to_string() }
        }
        LifecycleError::ActionFailed { .. } => {
            NodeState::Failed { reason: "CreateFailed", message: error.to_string() }
        }
        other => NodeState::Failed { reason: "HetznerAPIError", message: other.to_string() },
    }
}

pub fn cloud_state(error: &CloudError) -> NodeState {
    match error {
        CloudError::Unauthorized { .. } => NodeState::TokenRejected { message: error.to_string() },
        CloudError::RateLimited { retry_after } => NodeState::RateLimited { retry_after: *retry_after },
        CloudError::Transient(_) => NodeState::Unreachable { message: error.to_string() },
        CloudError::ResourceUnavailable { .. } => {
            NodeState::ResourceUnavailable { message: error.to_string() }
        }
        other => NodeState::Failed { reason: "HetznerAPIError", message: other.to_string() },
    }
}

async fn announce(relay: &Relay, ctx: &Context, reason: &str, note: String) {
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: "ProvisionNode".into(),
        secondary: None,
    };
    ctx.publish(relay, event).await;
}

/// What deleting the Relay's node still waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    Done,
    /// Not yet (draining, rate limited, API trouble): look again after this long.
    Pending(Duration),
}

/// Deletion: cordon and drain the Node, delete every server carrying the UID label and
/// wait for the 404, delete the Node. Already gone counts as done. Nothing without the
/// UID label is deleted.
pub async fn cleanup(relay: &Relay, ctx: &Context) -> Result<Cleanup, Error> {
    let spec = relay.spec.node.as_ref().and_then(|n| n.hetzner.as_ref());
    let status = relay.status.as_ref().and_then(|s| s.node.clone()).unwrap_or_default();
    let Some(spec) = spec else { return Ok(Cleanup::Done) };
    let owner = owner(relay);
    let name = status.node_name.clone().unwrap_or_else(|| server_name(&owner.name, &owner.uid));
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    if let Some(node) = nodes.get_opt(&name).await? {
        if node_seen(Some(&node), parse_id(&status)) != NodeSeen::Foreign {
            let remaining = cordon_and_drain(&node, ctx).await?;
            if remaining > 0 {
                info!(node = %name, remaining, "draining the relay's node");
                return Ok(Cleanup::Pending(Duration::from_secs(2)));
            }
        }
    }
    let token =
        secret_value(relay, &spec.token_secret_ref, ctx).await?.ok_or_else(|| Error::MissingSecret {
            field: "node.hetzner.tokenSecretRef",
            name: spec.token_secret_ref.name.clone(),
            key: spec.token_secret_ref.key.clone(),
        })?;
    let api = match ctx.hetzner.client(&token) {
        Ok(api) => api,
        Err(error) => return Ok(Cleanup::Pending(retry_delay(&error, &ctx.config))),
    };
    let poll = PollPolicy {
        interval: Duration::from_secs(1),
        max_interval: Duration::from_secs(15),
        max_wait: ctx.config.hetzner_delete_wait,
    };
    let known = parse_id(&status);
    let outcome = match lifecycle::delete_owned_servers(api.as_ref(), &owner.uid, known, poll).await {
        Err(LifecycleError::NotOwned { .. }) => {
            lifecycle::delete_owned_servers(api.as_ref(), &owner.uid, None, poll).await
        }
        other => other,
    };
    update_metrics(ctx);
    match outcome {
        Ok(deleted) => {
            for id in &deleted.ids {
                let event = Event {
                    type_: EventType::Normal,
                    reason: "ServerDeleted".into(),
                    note: Some(format!("deleted Hetzner server {name} (id {id}); the API answers 404")),
                    action: "DeleteNode".into(),
                    secondary: None,
                };
                ctx.publish(relay, event).await;
            }
        }
        Err(error) => {
            warn!(relay = %format!("{}/{}", owner.namespace, owner.name), %error, "deleting the Hetzner server");
            let delay = match &error {
                LifecycleError::Api(cloud) => retry_delay(cloud, &ctx.config),
                _ => ctx.config.hetzner_poll_interval,
            };
            return Ok(Cleanup::Pending(delay));
        }
    }
    if spec.firewall.as_ref().is_some_and(|f| f.create) {
        if let Err(error) = delete_own_firewall(api.as_ref(), &owner, &name).await {
            warn!(relay = %format!("{}/{}", owner.namespace, owner.name), %error, "deleting the Relay's firewall");
            return Ok(Cleanup::Pending(retry_delay(&error, &ctx.config)));
        }
    }
    match nodes.delete(&name, &Default::default()).await {
        Ok(_) => ctx.metrics.api_writes.with_label_values(&["Node"]).inc(),
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => return Err(error.into()),
    }
    ctx.hetzner.forget(&owner.uid);
    Ok(Cleanup::Done)
}

/// The firewall made for `firewall.create` (same name as the server), deleted once its
/// server is gone; only with this Relay's UID label.
async fn delete_own_firewall<A: HetznerApi>(api: &A, owner: &Owner, name: &str) -> Result<(), CloudError> {
    match api.firewall_by_name(name).await? {
        Some(firewall)
            if firewall.labels.get(naming::LABEL_UID) == Some(&naming::label_value(&owner.uid)) =>
        {
            api.delete_firewall(firewall.id).await
        }
        _ => Ok(()),
    }
}

fn retry_delay(error: &CloudError, config: &RunConfig) -> Duration {
    match error {
        CloudError::RateLimited { retry_after } => (*retry_after).max(config.hetzner_poll_interval),
        CloudError::Unauthorized { .. } => config.hetzner_check_interval,
        _ => config.hetzner_poll_interval,
    }
}

/// Marks the Node unschedulable and evicts its pods (DaemonSet pods stay, as with
/// `kubectl drain`). Returns how many pods are still on it.
async fn cordon_and_drain(node: &Node, ctx: &Context) -> Result<usize, Error> {
    let name = node.name_any();
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    if !node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
        let patch = serde_json::json!({"spec": {"unschedulable": true}});
        nodes.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        ctx.metrics.api_writes.with_label_values(&["Node"]).inc();
    }
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let on_node = pods.list(&ListParams::default().fields(&format!("spec.nodeName={name}"))).await?;
    let mut remaining = 0;
    for pod in on_node {
        let daemon = pod.owner_references().iter().any(|o| o.kind == "DaemonSet");
        if daemon {
            continue;
        }
        remaining += 1;
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let namespaced: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        match namespaced.evict(&pod.name_any(), &EvictParams::default()).await {
            Ok(_) => ctx.metrics.api_writes.with_label_values(&["Eviction"]).inc(),
            Err(kube::Error::Api(status)) if status.code == 404 => remaining -= 1,
            // 429: a PodDisruptionBudget says not now; the next pass tries again.
            Err(kube::Error::Api(status)) if status.code == 429 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(provider: Option<&str>, ready: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "relay-eu-6f1c2a9e"},
            "spec": {"providerID": provider},
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        }))
        .expect("a Node")
    }

    #[test]
    fn a_node_is_ours_by_provider_id_and_ready_by_its_condition() {
        assert_eq!(node_seen(None, Some(7)), NodeSeen::Missing);
        assert_eq!(
            node_seen(Some(&node(Some("hcloud://7"), "True")), Some(7)),
            NodeSeen::Joined { ready: true }
        );
        assert_eq!(
            node_seen(Some(&node(Some("hcloud://7"), "False")), Some(7)),
            NodeSeen::Joined { ready: false }
        );
        assert_eq!(node_seen(Some(&node(Some("hcloud://8"), "True")), Some(7)), NodeSeen::Foreign);
        // No providerID yet (the kubelet sets it as it registers): the name decides.
        assert_eq!(node_seen(Some(&node(None, "True")), Some(7)), NodeSeen::Joined { ready: true });
    }

    #[test]
    fn phases_time_out_only_in_their_own_phase() {
        let long_ago = Time(jiff::Timestamp::from_second(1_000).expect("valid"));
        let status = NodeStatus {
            phase: Some(PHASE_JOINING.into()),
            phase_since: Some(long_ago),
            ..NodeStatus::default()
        };
        assert!(phase_expired(&status, PHASE_JOINING, Duration::from_secs(900)));
        assert!(!phase_expired(&status, PHASE_BOOTING, Duration::from_secs(900)));
        let fresh = NodeStatus { phase_since: Some(Time(jiff::Timestamp::now())), ..status };
        assert!(!phase_expired(&fresh, PHASE_JOINING, Duration::from_secs(900)));
    }

    #[test]
    fn errors_map_to_reasons_without_retry_storms() {
        use super::super::status::node::node_provisioned;
        let unauthorized = CloudError::Unauthorized { code: "unauthorized".into(), message: "bad".into() };
        assert_eq!(node_provisioned(&cloud_state(&unauthorized)).reason, "HetznerTokenRejected");
        let limited = CloudError::RateLimited { retry_after: Duration::from_secs(120) };
        assert_eq!(node_provisioned(&cloud_state(&limited)).reason, "HetznerAPIRateLimited");
        let conflict = LifecycleError::NameConflict { name: "relay-eu-x".into(), id: 4 };
        assert_eq!(node_provisioned(&lifecycle_state(&conflict)).reason, "ServerNotOwned");
    }
}
