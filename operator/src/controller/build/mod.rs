//! Build: pure functions from a validated Relay (plus what the read stage found) to
//! the Kubernetes objects the operator owns. No client here: every builder is
//! tested against YAML fixtures.

pub mod coverage;
pub mod expose;
pub mod secret;
pub mod service;
pub mod service_monitor;
pub mod statefulset;

use super::validate::ValidatedRelay;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use std::collections::BTreeMap;

pub const MANAGER: &str = "relay-operator";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Digest of the admin token on the pod template, so a rotated token rolls the pod.
pub const ANNOTATION_TOKEN_DIGEST: &str = "atrelay.dev/admin-token-digest";
/// Key of the token in a generated admin Secret.
pub const GENERATED_TOKEN_KEY: &str = "token";

/// Where the relay's admin token comes from, as found by the read stage.
#[derive(Clone, PartialEq, Eq)]
pub enum AdminToken {
    /// The operator's own Secret `<name>-admin`; `token` is reused once generated.
    Generated { token: String },
    /// A user Secret named in `spec.admin.tokenSecretRef`.
    User { name: String, key: String, digest: String },
}

impl std::fmt::Debug for AdminToken {
    // Never print the token, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminToken::Generated { .. } => f.write_str("AdminToken::Generated"),
            AdminToken::User { name, key, .. } => write!(f, "AdminToken::User({name}/{key})"),
        }
    }
}

impl AdminToken {
    pub fn secret_name(&self, relay: &ValidatedRelay) -> String {
        match self {
            AdminToken::Generated { .. } => admin_secret_name(&relay.name),
            AdminToken::User { name, .. } => name.clone(),
        }
    }

    pub fn secret_key(&self) -> String {
        match self {
            AdminToken::Generated { .. } => GENERATED_TOKEN_KEY.into(),
            AdminToken::User { key, .. } => key.clone(),
        }
    }

    pub fn digest(&self) -> String {
        match self {
            AdminToken::Generated { token } => digest(token.as_bytes()),
            AdminToken::User { digest, .. } => digest.clone(),
        }
    }
}

/// What the build stage needs beyond the spec.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildInputs {
    pub admin: AdminToken,
    /// Whether the cluster serves `monitoring.coreos.com/v1` ServiceMonitors.
    pub service_monitor_supported: bool,
    /// Whether the Relay wants one (`spec.monitoring.serviceMonitor`).
    pub service_monitor_wanted: bool,
    /// `spec.coverage.references` as URLs: Relays by name resolved to their Service URLs.
    pub coverage_references: Vec<String>,
}

/// Everything the operator wants to exist for one Relay.
#[derive(Clone, Debug)]
pub struct DesiredObjects {
    pub admin_secret: Option<Secret>,
    pub statefulset: StatefulSet,
    pub public_service: Service,
    pub internal_service: Service,
    pub service_monitor: Option<DynamicObject>,
    /// The coverage CronJob, only with `spec.coverage`.
    pub coverage_cronjob: Option<CronJob>,
    /// `spec.expose` via an Ingress.
    pub ingress: Option<Ingress>,
    /// `spec.expose` via a LoadBalancer Service `<name>-public`.
    pub load_balancer_service: Option<Service>,
}

pub fn build(relay: &ValidatedRelay, inputs: &BuildInputs) -> DesiredObjects {
    DesiredObjects {
        admin_secret: match &inputs.admin {
            AdminToken::Generated { token } => Some(secret::admin_secret(relay, token)),
            AdminToken::User { .. } => None,
        },
        statefulset: statefulset::statefulset(relay, &inputs.admin, &inputs.coverage_references),
        public_service: service::public_service(relay),
        internal_service: service::internal_service(relay),
        service_monitor: (inputs.service_monitor_supported && inputs.service_monitor_wanted)
            .then(|| service_monitor::service_monitor(relay)),
        coverage_cronjob: coverage::cronjob(relay, &inputs.admin, &inputs.coverage_references),
        ingress: expose::ingress(relay),
        load_balancer_service: expose::load_balancer_service(relay),
    }
}

pub fn admin_secret_name(relay_name: &str) -> String {
    format!("{relay_name}-admin")
}

pub fn internal_service_name(relay_name: &str) -> String {
    format!("{relay_name}-internal")
}

/// Labels that select the relay's pods.
pub fn selector_labels(relay: &ValidatedRelay) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_NAME.into(), "relay".into()), (LABEL_INSTANCE.into(), relay.name.clone())])
}

/// Labels on every object the operator owns.
pub fn common_labels(relay: &ValidatedRelay) -> BTreeMap<String, String> {
    let mut labels = selector_labels(relay);
    labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    labels.insert(LABEL_COMPONENT.into(), "relay".into());
    labels
}

/// Metadata of an owned object: name, namespace, labels, controller owner reference.
pub fn owned_meta(relay: &ValidatedRelay, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(relay.namespace.clone()),
        labels: Some(common_labels(relay)),
        owner_references: Some(vec![relay.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// Short hex SHA-256 digest, for annotations.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(bytes);
    hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Where the relay pod may run when the Relay has its own node (`spec.node`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePin<'a> {
    /// No own node: the spec's placement alone.
    Anywhere,
    /// The own node has not joined (or is not Ready) yet: no pod, so neither the pod nor
    /// its volume lands on another node.
    Waiting,
    /// On the own node: selected by hostname, its reservation taint tolerated.
    On { node: &'a str, taint_key: &'a str, taint_value: &'a str },
}

/// Applies a `NodePin` to the built StatefulSet (the node subsystem decides it).
pub fn pin_to_node(statefulset: &mut StatefulSet, pin: NodePin) {
    let spec = &mut statefulset.spec;
    match pin {
        NodePin::Anywhere => {}
        NodePin::Waiting => spec.replicas = Some(0),
        NodePin::On { node, taint_key, taint_value } => {
            let Some(pod) = spec.template.spec.as_mut() else { return };
            pod.node_selector
                .get_or_insert_with(BTreeMap::new)
                .insert("kubernetes.io/hostname".into(), node.to_string());
            pod.tolerations.get_or_insert_with(Vec::new).push(k8s_openapi::api::core::v1::Toleration {
                key: Some(taint_key.into()),
                operator: Some("Equal".into()),
                value: Some(taint_value.into()),
                effect: Some("NoSchedule".into()),
                toleration_seconds: None,
            });
        }
    }
}
