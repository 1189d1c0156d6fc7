//! The `Relay` custom resource: what a user writes (`spec`) and what the operator
//! reports back (`status`). Schema defaults and CEL rules live here so the API
//! server rejects a bad spec before the operator ever sees it.

pub mod conditions;
pub mod coverage;
pub mod expose;
pub mod node;
pub mod runtime;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// API group owned by this project.
pub const GROUP: &str = "atrelay.dev";

/// An ATProto relay: one StatefulSet running `relay serve`, its Services and its
/// admin Secret.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "atrelay.dev",
    version = "v1alpha1",
    kind = "Relay",
    namespaced,
    status = "RelayStatus",
    doc = "An ATProto relay run by the relay operator: a StatefulSet running `relay serve`, its Services and admin Secret.",
    validation = Rule::new("size(self.metadata.name) <= 52").message("a Relay name may have at most 52 characters"),
    validation = Rule::new("!has(self.spec.coverage) || self.spec.coverage.references.all(r, !has(r.relay) || r.relay != self.metadata.name)").message("coverage.references may not name this Relay itself"),
    validation = Rule::new("!has(self.spec.node) || !has(self.spec.node.hetzner) || size(self.metadata.name) <= 48").message("with spec.node.hetzner a Relay name may have at most 48 characters (the server name relay-<name>-<8 hex of the UID> must fit in 63)"),
    shortname = "rly",
    category = "atproto",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Hosts", type_ = "string", json_path = ".status.runtime.hosts"),
    printcolumn(name = "Events/s", type_ = "integer", json_path = ".status.runtime.eventsPerSecond"),
    printcolumn(name = "Coverage", type_ = "string", json_path = ".status.runtime.coverage"),
    printcolumn(name = "Compared", type_ = "string", json_path = ".status.coverage.bestReference"),
    printcolumn(name = "Collections", type_ = "string", json_path = ".status.runtime.collections"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.runtime.node", priority = "1"),
    printcolumn(name = "Server", type_ = "string", json_path = ".status.node.nodeName", priority = "1"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image", priority = "1"),
    printcolumn(name = "Firehose URL", type_ = "string", json_path = ".status.endpoints.firehose", priority = "1"),
    cel
)]
#[x_kube(
    validation = Rule::new("self.ports.public != self.ports.internal")
        .message("ports.public and ports.internal must be different ports")
)]
#[x_kube(
    validation = Rule::new("has(self.node) == has(oldSelf.node)")
        .message("spec.node cannot be added to or removed from an existing Relay (its server holds the relay's data); create a new Relay instead")
)]
#[serde(rename_all = "camelCase")]
pub struct RelaySpec {
    /// Container image of the relay (`relay serve` is run in it). Pin a tag or digest.
    #[schemars(length(min = 1))]
    pub image: String,

    /// Image pull policy of the relay container.
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: PullPolicy,

    /// Where the relay finds its hosts and identities.
    #[serde(default)]
    pub upstream: UpstreamSpec,

    /// CPU and memory requests and limits of the relay container.
    #[serde(default)]
    pub resources: ResourcesSpec,

    /// Listening ports.
    #[serde(default)]
    pub ports: PortsSpec,

    /// Persistent volume and database.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Admin API credentials.
    #[serde(default)]
    pub admin: AdminSpec,

    /// Relay settings passed to `relay serve` (each maps to one of its environment variables).
    #[serde(default)]
    pub tunables: TunablesSpec,

    /// Collection directory backfill (`listReposByCollection`): what to import and crawl.
    #[serde(default)]
    pub backfill: BackfillSpec,

    /// Where the relay pod may run.
    #[serde(default)]
    pub placement: PlacementSpec,

    /// Monitoring objects the operator creates for the relay.
    #[serde(default)]
    pub monitoring: MonitoringSpec,

    /// Operational switches.
    #[serde(default)]
    pub operation: OperationSpec,

    /// Scheduled comparisons with other relays (a CronJob running `relay coverage`), and
    /// the relay's own coverage self-check against the same references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<coverage::CoverageSpec>,

    /// A dedicated machine for the relay (today: a Hetzner Cloud server per Relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<node::NodeSpec>,

    /// A public endpoint under the relay's own DNS name: an Ingress (or a LoadBalancer
    /// Service) with TLS and external-dns annotations (docs/expose.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<expose::ExposeSpec>,
}

fn default_pull_policy() -> PullPolicy {
    PullPolicy::IfNotPresent
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamSpec {
    /// Bootstrap relay whose `listHosts` seeds the host list (e.g. `bsky.network`).
    /// Empty: no bootstrap; hosts arrive by `requestCrawl` or the admin API.
    #[serde(default = "default_upstream_host")]
    #[schemars(regex(
        pattern = r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(:[0-9]{1,5})?$|^$"
    ))]
    pub host: String,

    /// PLC directory used to resolve `did:plc` identities.
    #[serde(default = "default_plc_directory")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub plc_directory: String,
}

impl Default for UpstreamSpec {
    fn default() -> Self {
        UpstreamSpec { host: default_upstream_host(), plc_directory: default_plc_directory() }
    }
}

fn default_upstream_host() -> String {
    "bsky.network".into()
}

fn default_plc_directory() -> String {
    "https://plc.directory".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// Memory, as Kubernetes quantities (e.g. `512Mi`, `2Gi`).
    #[serde(default = "default_memory")]
    pub memory: QuantityPair,
    /// CPU, as Kubernetes quantities (e.g. `500m`, `2`).
    #[serde(default = "default_cpu")]
    pub cpu: QuantityPair,
}

fn default_memory() -> QuantityPair {
    QuantityPair { request: Some("512Mi".into()), limit: Some("1Gi".into()) }
}

fn default_cpu() -> QuantityPair {
    QuantityPair { request: Some("500m".into()), limit: None }
}

/// A request and an optional limit. The limit may not be below the request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.request) || !has(self.limit) || quantity(self.limit).compareTo(quantity(self.request)) >= 0")
        .message("limit must be greater than or equal to request")
)]
#[serde(rename_all = "camelCase")]
pub struct QuantityPair {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(self)").message("request must be a Kubernetes quantity such as 512Mi or 500m"))]
    #[schemars(length(max = 64))]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(self)").message("limit must be a Kubernetes quantity such as 1Gi or 2"))]
    #[schemars(length(max = 64))]
    pub limit: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortsSpec {
    /// Public port: firehose (`subscribeRepos`) and XRPC.
    #[serde(default = "default_public_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub public: i32,
    /// Internal port: admin API, `/metrics`, `/_health`, `/_ready`.
    #[serde(default = "default_internal_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub internal: i32,
}

impl Default for PortsSpec {
    fn default() -> Self {
        PortsSpec { public: default_public_port(), internal: default_internal_port() }
    }
}

fn default_public_port() -> i32 {
    2470
}

fn default_internal_port() -> i32 {
    2471
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.size == oldSelf.size")
        .message("storage.size is immutable (a StatefulSet's volume claim cannot change; resize the PVC itself)")
)]
#[x_kube(
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)")
        .message("storage.storageClassName is immutable")
)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of the data volume (event log, and SQLite when the database is embedded).
    #[serde(default = "default_storage_size")]
    #[x_kube(validation = Rule::new("isQuantity(self)").message("storage.size must be a Kubernetes quantity such as 20Gi"))]
    #[schemars(length(max = 64))]
    pub size: String,

    /// Storage class of the data volume; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,

    /// Where the relay keeps hosts, accounts and cursors.
    #[serde(default)]
    pub database: DatabaseSpec,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            database: DatabaseSpec::default(),
        }
    }
}

fn default_storage_size() -> String {
    "20Gi".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.type == 'Postgres' ? has(self.urlSecretRef) : !has(self.urlSecretRef)")
        .message("database.urlSecretRef is required when database.type is Postgres, and not allowed otherwise")
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// `Embedded` (SQLite on the data volume) or `Postgres`.
    #[serde(rename = "type", default = "default_database_type")]
    pub kind: DatabaseType,
    /// Secret key holding the `postgres://` URL (for `Postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
}

impl Default for DatabaseSpec {
    fn default() -> Self {
        DatabaseSpec { kind: DatabaseType::Embedded, url_secret_ref: None }
    }
}

fn default_database_type() -> DatabaseType {
    DatabaseType::Embedded
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DatabaseType {
    Embedded,
    Postgres,
}

/// A key in a Secret in the Relay's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminSpec {
    /// Secret key holding the admin bearer token. When absent the operator generates
    /// one in the Secret `<name>-admin` (key `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

/// Relay settings. Absent fields keep the relay's own defaults (docs/relay.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TunablesSpec {
    /// How long events stay replayable with a cursor (`RELAY_REPLAY_WINDOW`, e.g. `72h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)?$"), length(max = 32))]
    pub replay_window: Option<String>,
    /// Accounts allowed per new, untrusted host (`RELAY_DEFAULT_ACCOUNT_LIMIT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub default_account_limit: Option<i64>,
    /// Accounts allowed per trusted host (`RELAY_TRUSTED_ACCOUNT_LIMIT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub trusted_account_limit: Option<i64>,
    /// New hosts accepted per day through `requestCrawl` (`RELAY_NEW_HOSTS_PER_DAY_LIMIT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub new_hosts_per_day_limit: Option<i64>,
    /// Host patterns that get the trusted limits (`RELAY_TRUSTED_DOMAINS`, e.g. `*.host.bsky.network`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_domains: Vec<String>,
    /// Events per second allowed per untrusted host (`RELAY_HOST_EVENTS_PER_SECOND`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub host_events_per_second: Option<i64>,
    /// Accept commits without Sync 1.1 fields (`RELAY_LENIENT_SYNC_VALIDATION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lenient_sync_validation: Option<bool>,
    /// Allow `ws://`/`http://` hosts and private addresses (`RELAY_ALLOW_INSECURE_HOSTS`;
    /// for test and private networks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_insecure_hosts: Option<bool>,
    /// Readiness fails when no event was accepted for this long (`RELAY_READY_MAX_SILENCE`, `0` disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)?$"), length(max = 32))]
    pub ready_max_silence: Option<String>,
    /// Log filter (`RELAY_LOG_LEVEL`, e.g. `info` or `relay=debug`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

/// Backfill of the collection directory (docs/collections.md). The relay indexes the live
/// firehose by itself; backfill fills in what happened before it started. Jobs resume after
/// restarts from progress kept in the relay's database.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.collections) || size(self.collections) == 0 || (has(self.source) && self.source != '')")
        .message("backfill.collections needs backfill.source (the upstream to import from)")
)]
#[x_kube(
    validation = Rule::new("!has(self.collectionsUrl) || (has(self.source) && self.source != '')")
        .message("backfill.collectionsUrl needs backfill.source (the upstream to import from)")
)]
#[serde(rename_all = "camelCase")]
pub struct BackfillSpec {
    /// Upstream whose `listReposByCollection` is imported (`RELAY_BACKFILL_SOURCE`, e.g.
    /// `bsky.network`). Empty: no import at start (the admin API can still start one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(:[0-9]{1,5})?$|^$"
    ))]
    pub source: Option<String>,
    /// Collections (NSIDs) to import from the source (`RELAY_BACKFILL_COLLECTIONS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(
        pattern = r"^[a-zA-Z]([a-zA-Z0-9-]{0,62})?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,62})?)+$"
    )))]
    pub collections: Vec<String>,
    /// URL of a newline-separated NSID list to import, e.g. lexicon garden's `llms.txt`
    /// (`RELAY_BACKFILL_COLLECTIONS_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub collections_url: Option<String>,
    /// Crawl every host's `listRepos` and each repo's `describeRepo` once
    /// (`RELAY_BACKFILL_CRAWL`): finds collections no upstream knows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub crawl: bool,
    /// Check each imported DID's identity before listing it (`RELAY_BACKFILL_VERIFY_IDENTITY`,
    /// relay default true). False trusts the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_identity: Option<bool>,
    /// Requests per second a backfill sends to one host (`RELAY_BACKFILL_HOST_REQUESTS_PER_SECOND`,
    /// relay default 8; 429s and `Retry-After` slow it further).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub host_requests_per_second: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Node labels the relay pod requires.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the relay pod tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a prometheus-operator ServiceMonitor for the relay's metrics when the cluster
    /// serves that kind. Turning it off deletes the one the operator created.
    #[serde(default = "default_true")]
    pub service_monitor: bool,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        MonitoringSpec { service_monitor: true }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationSpec {
    /// Stop reconciling: the operator changes nothing and reports `ReconciliationPaused`.
    #[serde(default)]
    pub reconciliation_paused: bool,
    /// Stop the relay (StatefulSet scaled to 0); the volume and Services stay.
    #[serde(default)]
    pub stopped: bool,
}

/// What the operator observed, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (summary), `Reconciling` and `Stalled` (kstatus), `WorkloadAvailable`,
    /// and `ReconciliationPaused` while paused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions::schema")]
    pub conditions: Vec<Condition>,
    /// Relay pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Addresses of the relay: in-cluster ones, or with `spec.expose` the public firehose
    /// and XRPC URLs under its hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// Name of the Secret holding the admin token (never the token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_secret_name: Option<String>,
    /// What the relay itself reports, read from its internal listener (at most once per
    /// `OPERATOR_RUNTIME_INTERVAL`, written only when a shown value changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<runtime::RuntimeStatus>,
    /// Results of the scheduled coverage comparisons (`spec.coverage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<coverage::CoverageStatus>,
    /// The relay's own node (`spec.node`): server id, addresses, node name, phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<node::NodeStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// `subscribeRepos` WebSocket URL (`wss://<expose.hostname>/...` when exposed).
    pub firehose: String,
    /// Base URL of the `com.atproto.sync.*` XRPC endpoints (`https://<expose.hostname>` when exposed).
    pub xrpc: String,
    /// Base URL of the admin API and metrics (internal Service).
    pub internal: String,
}
