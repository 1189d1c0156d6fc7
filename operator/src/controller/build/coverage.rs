//! The coverage CronJob `<relay>-coverage`: on `spec.coverage.schedule`, one pod with three
//! containers running the relay image's `relay coverage` in its three modes at once
//! (firehose, collections, correctness), this relay first and its references after it.
//!
//! Each container writes its summary (`--summary-file`) to its termination message, which
//! the operator reads from the finished pod: the job needs no API permission and no
//! service-account token, and a result cannot be forged by anything but the run itself.

use super::statefulset::RUN_AS_USER;
use super::{
    internal_service_name, owned_meta, AdminToken, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY,
};
use super::{LABEL_NAME, MANAGER};
use crate::controller::validate::ValidatedRelay;
use crate::crd::coverage::CoverageSpec;
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// Where each container writes its summary (the kubelet keeps this file as the
/// container's termination message, at most 4 KiB).
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// Value of `app.kubernetes.io/name` on the coverage Jobs and pods: not `relay`, so the
/// relay's Services never select a coverage pod.
pub const COVERAGE_APP: &str = "relay-coverage";
/// The three modes, one container each, in the order they appear in the pod.
pub const MODES: [&str; 3] = ["firehose", "collections", "correctness"];
/// Time a run may take beyond its firehose window (warm-up, graces, the collection and
/// correctness requests against slow relays) before the Job is stopped.
const RUN_SLACK_SECONDS: i64 = 20 * 60;
/// Finished Jobs kept: the newest is what status shows, a few more help a user debug.
const JOBS_KEPT: i32 = 3;

pub fn cronjob_name(relay_name: &str) -> String {
    format!("{relay_name}-coverage")
}

/// Labels of the coverage Jobs and pods (the read stage lists them with these).
pub fn job_labels(relay: &ValidatedRelay) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.into(), COVERAGE_APP.into()),
        (LABEL_INSTANCE.into(), relay.name.clone()),
        (LABEL_MANAGED_BY.into(), MANAGER.into()),
        (LABEL_COMPONENT.into(), "coverage".into()),
    ])
}

/// `app.kubernetes.io/name=relay-coverage,app.kubernetes.io/instance=<relay>`.
pub fn job_selector(relay_name: &str) -> String {
    format!("{LABEL_NAME}={COVERAGE_APP},{LABEL_INSTANCE}={relay_name}")
}

/// This relay as the comparisons reach it: its public Service (firehose and XRPC).
pub fn own_url(relay: &ValidatedRelay) -> String {
    service_url(&relay.name, &relay.namespace, relay.spec.ports.public)
}

/// In-cluster URL of a Relay's public Service.
pub fn service_url(name: &str, namespace: &str, port: i32) -> String {
    format!("http://{name}.{namespace}.svc:{port}")
}

/// The CronJob, or none without `spec.coverage`. `references` are the resolved reference
/// URLs (Relays by name become their Service URLs in the read stage).
pub fn cronjob(relay: &ValidatedRelay, admin: &AdminToken, references: &[String]) -> Option<CronJob> {
    let coverage = relay.spec.coverage.as_ref()?;
    let labels = job_labels(relay);
    let job = JobSpec {
        // A failed comparison is a result (RunFailed), not something to retry at once.
        backoff_limit: Some(0),
        active_deadline_seconds: Some(window_seconds(&coverage.firehose_window) + RUN_SLACK_SECONDS),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta { labels: Some(labels.clone()), ..ObjectMeta::default() }),
            spec: Some(pod_spec(relay, coverage, admin, references)),
        },
        ..JobSpec::default()
    };
    Some(CronJob {
        metadata: owned_meta(relay, cronjob_name(&relay.name)),
        spec: CronJobSpec {
            schedule: coverage.schedule.clone(),
            // The operator computes the next run in UTC; the CronJob must agree.
            time_zone: Some("Etc/UTC".into()),
            suspend: Some(coverage.suspend),
            // Two comparisons at once would measure each other's load.
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(JOBS_KEPT),
            failed_jobs_history_limit: Some(JOBS_KEPT),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(job),
            },
            ..CronJobSpec::default()
        },
        status: None,
    })
}

fn pod_spec(
    relay: &ValidatedRelay,
    coverage: &CoverageSpec,
    admin: &AdminToken,
    references: &[String],
) -> PodSpec {
    let relays = relay_args(relay, references);
    PodSpec {
        containers: MODES
            .iter()
            .map(|mode| container(relay, mode, mode_args(relay, coverage, mode, &relays), admin))
            .collect(),
        restart_policy: Some("Never".into()),
        // The comparison talks to relays and PDSes only, never to the Kubernetes API.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(10),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        node_selector: (!relay.spec.placement.node_selector.is_empty())
            .then(|| relay.spec.placement.node_selector.clone()),
        tolerations: (!relay.spec.placement.tolerations.is_empty())
            .then(|| relay.spec.placement.tolerations.clone()),
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    }
}

/// `--relay` for this relay, then for each reference.
fn relay_args(relay: &ValidatedRelay, references: &[String]) -> Vec<String> {
    std::iter::once(own_url(relay))
        .chain(references.iter().cloned())
        .flat_map(|url| ["--relay".to_string(), url])
        .collect()
}

fn mode_args(relay: &ValidatedRelay, coverage: &CoverageSpec, mode: &str, relays: &[String]) -> Vec<String> {
    let mut args: Vec<String> =
        ["coverage", "--summary-file", TERMINATION_LOG, mode].iter().map(|s| s.to_string()).collect();
    args.extend(relays.iter().cloned());
    match mode {
        "firehose" => args.extend(["--window".into(), coverage.firehose_window.clone()]),
        "collections" => {
            args.extend(["--nsids".into(), coverage.nsids.clone()]);
            // `relays:first` asks this relay's admin route; the token comes from the env.
            args.extend([
                "--admin-url".into(),
                service_url(&internal_service_name(&relay.name), &relay.namespace, relay.spec.ports.internal),
            ]);
        }
        _ => {
            args.extend(["--sample".into(), coverage.correctness_sample.to_string()]);
            args.extend(["--plc-url".into(), relay.spec.upstream.plc_directory.clone()]);
            // A test network's PDSes live on private addresses: the same switch as the relay's.
            if relay.spec.tunables.allow_insecure_hosts == Some(true) {
                args.push("--allow-loopback-pds".into());
            }
        }
    }
    args
}

fn container(relay: &ValidatedRelay, mode: &str, args: Vec<String>, admin: &AdminToken) -> Container {
    let env = (mode == "collections").then(|| {
        vec![EnvVar {
            name: "RELAY_COVERAGE_ADMIN_TOKEN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: admin.secret_name(relay),
                    key: admin.secret_key(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]
    });
    // The firehose mode keeps commit hashes of every relay for the window; the others
    // hold a page or a sample at a time.
    let memory_limit = if mode == "firehose" { "512Mi" } else { "256Mi" };
    Container {
        name: mode.into(),
        image: Some(relay.spec.image.clone()),
        image_pull_policy: Some(relay.spec.image_pull_policy.as_str().into()),
        args: Some(args),
        env,
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("File".into()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("50m".into())),
                ("memory".into(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), Quantity(memory_limit.into()))])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

/// Seconds of a `firehoseWindow` (`90s`, `5m`, `1h`); the schema admits nothing else.
pub fn window_seconds(window: &str) -> i64 {
    let split = window.find(|c: char| !c.is_ascii_digit()).unwrap_or(window.len());
    let (number, unit) = window.split_at(split);
    let value: i64 = number.parse().unwrap_or(0);
    let scale = match unit {
        "h" => 3600,
        "m" => 60,
        _ => 1,
    };
    value.saturating_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_lengths() {
        for (window, seconds) in [("90s", 90), ("5m", 300), ("1h", 3600), ("7", 7)] {
            assert_eq!(window_seconds(window), seconds, "{window}");
        }
    }
}
