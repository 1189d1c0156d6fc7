//! The relay StatefulSet: one pod running `relay serve`, a data volume from a claim
//! template, probes on the relay's own health endpoints, a restricted security
//! context.

use super::service::{INTERNAL_PORT_NAME, PUBLIC_PORT_NAME};
use super::{internal_service_name, owned_meta, selector_labels, AdminToken, ANNOTATION_TOKEN_DIGEST};
use crate::controller::validate::ValidatedRelay;
use crate::crd::{BackfillSpec, DatabaseType, QuantityPair, TunablesSpec};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceFieldSelector, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

pub const CONTAINER_NAME: &str = "relay";
pub const DATA_VOLUME: &str = "data";
pub const DATA_MOUNT_PATH: &str = "/data";
/// The relay image's user (distroless `nonroot`).
pub const RUN_AS_USER: i64 = 65532;

pub fn statefulset(
    relay: &ValidatedRelay,
    admin: &AdminToken,
    coverage_references: &[String],
) -> StatefulSet {
    let replicas = if relay.spec.operation.stopped { 0 } else { 1 };
    StatefulSet {
        metadata: owned_meta(relay, relay.name.clone()),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(internal_service_name(&relay.name)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(relay)),
                ..LabelSelector::default()
            },
            // One replica, so ordering buys nothing; and under OrderedReady a pod that is not
            // Ready blocks the rolling update that would fix it (a spec change must always
            // be able to replace a broken relay without manual pod deletion).
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            template: pod_template(relay, admin, coverage_references),
            volume_claim_templates: Some(vec![data_claim(relay)]),
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

/// How long the kubelet waits after SIGTERM before SIGKILL.
const TERMINATION_GRACE_SECONDS: i64 = 30;
/// What the relay's own shutdown bound (`RELAY_SHUTDOWN_TIMEOUT`) leaves of the grace period.
const SHUTDOWN_MARGIN_SECONDS: i64 = 5;

fn pod_template(
    relay: &ValidatedRelay,
    admin: &AdminToken,
    coverage_references: &[String],
) -> PodTemplateSpec {
    let mut labels = selector_labels(relay);
    labels.insert(super::LABEL_COMPONENT.into(), "relay".into());
    let annotations = BTreeMap::from([
        (ANNOTATION_TOKEN_DIGEST.to_string(), admin.digest()),
        ("kubectl.kubernetes.io/default-container".to_string(), CONTAINER_NAME.to_string()),
    ]);
    let placement = &relay.spec.placement;
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container(relay, admin, coverage_references)],
            // The relay never talks to the Kubernetes API.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS_USER),
                run_as_group: Some(RUN_AS_USER),
                fs_group: Some(RUN_AS_USER),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            node_selector: (!placement.node_selector.is_empty()).then(|| placement.node_selector.clone()),
            tolerations: (!placement.tolerations.is_empty()).then(|| placement.tolerations.clone()),
            volumes: Some(vec![Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
    }
}

fn container(relay: &ValidatedRelay, admin: &AdminToken, coverage_references: &[String]) -> Container {
    let ports = &relay.spec.ports;
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(relay.spec.image.clone()),
        image_pull_policy: Some(relay.spec.image_pull_policy.as_str().into()),
        args: Some(vec!["serve".into()]),
        env: Some(env(relay, admin, coverage_references)),
        ports: Some(vec![
            ContainerPort {
                name: Some(PUBLIC_PORT_NAME.into()),
                container_port: ports.public,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(INTERNAL_PORT_NAME.into()),
                container_port: ports.internal,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        resources: Some(resources(relay)),
        // Liveness only asks "is the process up", so a quiet network never kills it.
        // Readiness (the public Service) asks "can it serve": the log is open and the
        // database answers (`/_serving`), true within a second of start, since replays and
        // live reads need no upstream host. Waiting for "caught up" (`/_ready`: hosts
        // connected, events flowing) would keep consumers off a restarted relay while
        // thousands of hosts are dialled; that signal is the Relay's `CaughtUp` condition.
        startup_probe: Some(probe("/_health", 2, 150)),
        liveness_probe: Some(probe("/_health", 10, 6)),
        readiness_probe: Some(probe("/_serving", 2, 3)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: DATA_VOLUME.into(),
                mount_path: DATA_MOUNT_PATH.into(),
                ..VolumeMount::default()
            },
            VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..VolumeMount::default() },
        ]),
        ..Container::default()
    }
}

fn probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(INTERNAL_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn env(relay: &ValidatedRelay, admin: &AdminToken, coverage_references: &[String]) -> Vec<EnvVar> {
    let spec = &relay.spec;
    let mut vars = vec![
        value("RELAY_DATA_DIR", DATA_MOUNT_PATH),
        value("RELAY_API_BIND", &format!("0.0.0.0:{}", spec.ports.public)),
        value("RELAY_METRICS_LISTEN", &format!("0.0.0.0:{}", spec.ports.internal)),
        value("RELAY_UPSTREAM", &spec.upstream.host),
        value("RELAY_PLC_HOST", &spec.upstream.plc_directory),
        // The relay's ordered shutdown must end before the kubelet's SIGKILL, or a log write
        // could be cut off: bound it by the grace period less a margin.
        value("RELAY_SHUTDOWN_TIMEOUT", &format!("{}s", TERMINATION_GRACE_SECONDS - SHUTDOWN_MARGIN_SECONDS)),
        secret("RELAY_ADMIN_PASSWORD", admin.secret_name(relay), admin.secret_key()),
    ];
    if spec.storage.database.kind == DatabaseType::Postgres {
        if let Some(reference) = &spec.storage.database.url_secret_ref {
            vars.push(secret("DATABASE_URL", reference.name.clone(), reference.key.clone()));
        }
    }
    vars.extend(tunable_env(&spec.tunables));
    vars.extend(backfill_env(&spec.backfill));
    // The relay's own self-check measures against the same references as the CronJob, so
    // `/_summary` and `relay_coverage_ratio` show coverage between the scheduled runs.
    if !coverage_references.is_empty() {
        vars.push(value("RELAY_COVERAGE_REFERENCES", &coverage_references.join(",")));
    }
    // Size the async runtime to the CPU limit (rounded up), not the node's core count.
    vars.push(EnvVar {
        name: "TOKIO_WORKER_THREADS".into(),
        value_from: Some(EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some(CONTAINER_NAME.into()),
                resource: "limits.cpu".into(),
                divisor: Some(Quantity("1".into())),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    });
    // Return freed memory to the OS promptly so RSS tracks use under a memory limit.
    vars.push(value("MIMALLOC_PURGE_DELAY", "0"));
    vars
}

fn backfill_env(backfill: &BackfillSpec) -> Vec<EnvVar> {
    let mut vars = Vec::new();
    let mut push = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            vars.push(value(name, &v));
        }
    };
    push("RELAY_BACKFILL_SOURCE", backfill.source.clone().filter(|s| !s.is_empty()));
    push(
        "RELAY_BACKFILL_COLLECTIONS",
        (!backfill.collections.is_empty()).then(|| backfill.collections.join(",")),
    );
    push("RELAY_BACKFILL_COLLECTIONS_URL", backfill.collections_url.clone());
    push("RELAY_BACKFILL_CRAWL", backfill.crawl.then(|| "true".into()));
    push("RELAY_BACKFILL_VERIFY_IDENTITY", backfill.verify_identity.map(|on| on.to_string()));
    push("RELAY_BACKFILL_HOST_REQUESTS_PER_SECOND", backfill.host_requests_per_second.map(|n| n.to_string()));
    vars
}

fn tunable_env(tunables: &TunablesSpec) -> Vec<EnvVar> {
    let mut vars = Vec::new();
    let mut push = |name: &str, setting: Option<String>| {
        if let Some(setting) = setting {
            vars.push(value(name, &setting));
        }
    };
    push("RELAY_REPLAY_WINDOW", tunables.replay_window.clone());
    push("RELAY_DEFAULT_ACCOUNT_LIMIT", tunables.default_account_limit.map(|n| n.to_string()));
    push("RELAY_TRUSTED_ACCOUNT_LIMIT", tunables.trusted_account_limit.map(|n| n.to_string()));
    push("RELAY_NEW_HOSTS_PER_DAY_LIMIT", tunables.new_hosts_per_day_limit.map(|n| n.to_string()));
    push(
        "RELAY_TRUSTED_DOMAINS",
        (!tunables.trusted_domains.is_empty()).then(|| tunables.trusted_domains.join(",")),
    );
    push("RELAY_HOST_EVENTS_PER_SECOND", tunables.host_events_per_second.map(|n| n.to_string()));
    push(
        "RELAY_LENIENT_SYNC_VALIDATION",
        tunables.lenient_sync_validation.filter(|on| *on).map(|_| "true".into()),
    );
    push("RELAY_ALLOW_INSECURE_HOSTS", tunables.allow_insecure_hosts.filter(|on| *on).map(|_| "true".into()));
    push("RELAY_READY_MAX_SILENCE", tunables.ready_max_silence.clone());
    push("RELAY_LOG_LEVEL", tunables.log_level.clone());
    vars
}

fn resources(relay: &ValidatedRelay) -> ResourceRequirements {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    let mut add = |resource: &str, pair: &QuantityPair| {
        if let Some(request) = &pair.request {
            requests.insert(resource.to_string(), Quantity(request.clone()));
        }
        if let Some(limit) = &pair.limit {
            limits.insert(resource.to_string(), Quantity(limit.clone()));
        }
    };
    add("cpu", &relay.spec.resources.cpu);
    add("memory", &relay.spec.resources.memory);
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    }
}

fn data_claim(relay: &ValidatedRelay) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(selector_labels(relay)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: relay.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity(relay.spec.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

fn secret(name: &str, secret_name: String, key: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret_name, key, optional: Some(false) }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}
