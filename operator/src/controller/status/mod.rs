//! Status: conditions and observed state computed from what was applied (or why
//! nothing could be), written only when it differs from what is already there. The
//! conditions come from per-subsystem builders in [`conditions`]; the workload state they
//! read from [`workload`].

pub mod conditions;
pub mod coverage;
pub mod node;
pub mod workload;

use super::build::{internal_service_name, MANAGER};
use super::Context;
use crate::crd::conditions::{self as cond, Desired};
use crate::crd::{Endpoints, Relay, RelayStatus};
use crate::Error;
use conditions::{CoverageCheck, Observed, Stall};
use coverage::CoverageObserved;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
pub use workload::{workload, Workload};

/// How this reconcile ended, as far as status is concerned.
pub enum Outcome<'a> {
    /// Objects applied (or already up to date); the live StatefulSet.
    Applied(&'a StatefulSet),
    /// `spec.operation.reconciliationPaused`; the StatefulSet as it is, if any.
    Paused(Option<&'a StatefulSet>),
    /// A problem only the user can fix (invalid spec, missing Secret).
    Stalled { reason: &'static str, message: String, statefulset: Option<&'a StatefulSet> },
}

/// The conditions this operator owns, for an outcome, and the workload they were read from.
pub fn desired_conditions(
    relay: &Relay,
    outcome: &Outcome,
    coverage: Option<&CoverageObserved>,
) -> (Vec<Desired>, Workload) {
    let (statefulset, stall, paused) = match outcome {
        Outcome::Applied(sts) => (Some(*sts), None, false),
        Outcome::Paused(sts) => (*sts, None, true),
        Outcome::Stalled { reason, message, statefulset } => {
            (*statefulset, Some(Stall { reason, message: message.as_str() }), false)
        }
    };
    let stopped = relay.spec.operation.stopped;
    let work = workload(statefulset, stopped);
    let check = relay.spec.coverage.as_ref().zip(coverage).map(|(spec, found)| CoverageCheck {
        degraded_below: spec.degraded_below_basis_points,
        critical_below: spec.critical_below_basis_points,
        best: found.status.best_reference_basis_points,
        ran: found.status.last_run_time.is_some(),
        run_error: found.run_error.as_deref(),
        overdue: found.overdue.as_deref(),
    });
    let observed = Observed { workload: &work, stopped, paused, stall, coverage: check };
    (conditions::assemble(&observed), work)
}

/// The full status for an outcome, keeping transition times of unchanged conditions.
/// `coverage` is what this reconcile found about the coverage runs; none when it did not
/// look (paused, stalled), and then the shown coverage and `CoverageOK` stay as they were.
pub fn compute(
    relay: &Relay,
    outcome: &Outcome,
    admin_secret: Option<String>,
    coverage: Option<&CoverageObserved>,
    now: &Time,
) -> RelayStatus {
    let generation = relay.metadata.generation.unwrap_or(0);
    let existing = relay.status.clone().unwrap_or_default();
    let (desired, work) = desired_conditions(relay, outcome, coverage);
    let owned: Vec<_> =
        existing.conditions.iter().filter(|c| cond::OWNED.contains(&c.type_.as_str())).cloned().collect();
    let mut conditions = cond::merge(&owned, &desired, generation, now);
    let wanted = relay.spec.coverage.is_some();
    if wanted && coverage.is_none() {
        conditions.extend(cond::find(&owned, cond::COVERAGE_OK).cloned());
    }
    // `NodeProvisioned` and `status.node` belong to the node subsystem (`node::apply`);
    // carried unchanged here so a paused or stalled reconcile keeps them.
    conditions.extend(cond::find(&owned, cond::NODE_PROVISIONED).cloned());
    let coverage_status = match coverage {
        Some(found) if wanted => Some(found.status.clone()),
        None if wanted => existing.coverage.clone(),
        _ => None,
    };
    RelayStatus {
        observed_generation: Some(generation),
        conditions,
        coverage: coverage_status,
        ready_replicas: work.ready_replicas,
        endpoints: Some(endpoints(relay)),
        admin_secret_name: admin_secret.or(existing.admin_secret_name),
        // Written by the runtime sampler under its own field manager; carried here only
        // so the comparison below sees no difference.
        runtime: existing.runtime,
        node: existing.node,
    }
}

fn endpoints(relay: &Relay) -> Endpoints {
    let name = relay.name_any();
    let namespace = relay.namespace().unwrap_or_default();
    let ports = &relay.spec.ports;
    // Exposed: the URLs consumers outside the cluster use (`spec.expose.hostname`, TLS at
    // the Ingress or load balancer). The admin URL stays internal either way.
    let (firehose, xrpc) = match &relay.spec.expose {
        Some(expose) => super::build::expose::public_urls(expose),
        None => (
            format!("ws://{name}.{namespace}.svc:{}/xrpc/com.atproto.sync.subscribeRepos", ports.public),
            format!("http://{name}.{namespace}.svc:{}", ports.public),
        ),
    };
    Endpoints {
        firehose,
        xrpc,
        internal: format!("http://{}.{namespace}.svc:{}", internal_service_name(&name), ports.internal),
    }
}

/// The existing status with conditions of other writers removed, for comparison.
fn owned_view(status: Option<&RelayStatus>) -> RelayStatus {
    let mut view = status.cloned().unwrap_or_default();
    view.conditions.retain(|c| cond::OWNED.contains(&c.type_.as_str()));
    view
}

/// Writes the status if it changed, and publishes an Event when Ready flips.
pub async fn write(relay: &Relay, status: RelayStatus, ctx: &Context) -> Result<(), Error> {
    if owned_view(relay.status.as_ref()) == status {
        return Ok(());
    }
    let api: Api<Relay> = Api::namespaced(ctx.client.clone(), &relay.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": Relay::api_version(&()),
        "kind": Relay::kind(&()),
        // Without `runtime`: this field manager never owns it, so applying cannot remove it.
        "status": RelayStatus { runtime: None, ..status.clone() },
    });
    api.patch_status(&relay.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
    ctx.metrics.api_writes.with_label_values(&["RelayStatus"]).inc();
    announce_ready_change(relay, &status, ctx).await;
    announce_coverage_change(relay, &status, ctx).await;
    Ok(())
}

/// An Event when `CoverageOK` changes status or reason: Normal on recovery, Warning when
/// coverage turns bad or runs stop or fail. The first-run wait (Unknown) is not news.
async fn announce_coverage_change(relay: &Relay, status: &RelayStatus, ctx: &Context) {
    let before = relay
        .status
        .as_ref()
        .and_then(|s| cond::find(&s.conditions, cond::COVERAGE_OK))
        .map(|c| (c.status.clone(), c.reason.clone()));
    let Some(now) = cond::find(&status.conditions, cond::COVERAGE_OK) else { return };
    if before.as_ref() == Some(&(now.status.clone(), now.reason.clone())) || now.status == "Unknown" {
        return;
    }
    let (type_, reason) = match now.reason.as_str() {
        "CoverageOK" => (EventType::Normal, "CoverageOK".to_string()),
        other => (EventType::Warning, format!("Coverage{other}")),
    };
    let event = Event {
        type_,
        reason,
        note: Some(truncate(&now.message, 1000)),
        action: "CompareCoverage".into(),
        secondary: None,
    };
    ctx.publish(relay, event).await;
}

async fn announce_ready_change(relay: &Relay, status: &RelayStatus, ctx: &Context) {
    let before =
        relay.status.as_ref().and_then(|s| cond::find(&s.conditions, cond::READY)).map(|c| c.status.clone());
    let Some(now) = cond::find(&status.conditions, cond::READY) else { return };
    if before.as_deref() == Some(now.status.as_str()) {
        return;
    }
    let (type_, reason) = match (now.status.as_str(), now.reason.as_str()) {
        ("True", _) => (EventType::Normal, "RelayReady"),
        (_, "InvalidSpec" | "SecretNotFound") => (EventType::Warning, "RelayStalled"),
        _ => (EventType::Normal, "RelayNotReady"),
    };
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(&now.message, 1000)),
        action: "UpdateStatus".into(),
        secondary: None,
    };
    ctx.publish(relay, event).await;
}

pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::relay_from_yaml;

    fn relay(operation: &str) -> Relay {
        relay_from_yaml(&format!(
            "apiVersion: atrelay.dev/v1alpha1\nkind: Relay\nmetadata: {{name: r}}\nspec:\n  image: x:1\n  operation: {operation}\n"
        ))
    }

    fn summary(conditions: &[Desired]) -> Vec<(&str, &str, &str)> {
        conditions.iter().map(|c| (c.type_, c.status.as_str(), c.reason)).collect()
    }

    #[test]
    fn outcomes_map_onto_the_builders() {
        let stalled = Outcome::Stalled { reason: "InvalidSpec", message: "bad".into(), statefulset: None };
        let (conditions, work) = desired_conditions(&relay("{}"), &stalled, None);
        assert_eq!(work.reason, "StatefulSetMissing");
        assert_eq!(
            summary(&conditions),
            [
                ("Ready", "False", "InvalidSpec"),
                ("Reconciling", "False", "InvalidSpec"),
                ("Stalled", "True", "InvalidSpec"),
                ("WorkloadAvailable", "False", "StatefulSetMissing"),
            ]
        );
        let (conditions, _) = desired_conditions(&relay("{stopped: true}"), &Outcome::Paused(None), None);
        assert_eq!(
            summary(&conditions),
            [
                ("Ready", "False", "StatefulSetMissing"),
                ("Reconciling", "False", "Paused"),
                ("Stalled", "False", "Paused"),
                ("WorkloadAvailable", "False", "StatefulSetMissing"),
                ("ReconciliationPaused", "True", "Paused"),
            ]
        );
    }
}
