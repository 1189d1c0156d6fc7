//! Status: conditions and observed state computed from what was applied (or why
//! nothing could be), written only when it differs from what is already there.

use super::build::{internal_service_name, MANAGER};
use super::Context;
use crate::crd::conditions::{self as cond, Desired, Status};
use crate::crd::{Endpoints, Relay, RelayStatus};
use crate::Error;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

/// How this reconcile ended, as far as status is concerned.
pub enum Outcome<'a> {
    /// Objects applied (or already up to date); the live StatefulSet.
    Applied(&'a StatefulSet),
    /// `spec.operation.reconciliationPaused`; the StatefulSet as it is, if any.
    Paused(Option<&'a StatefulSet>),
    /// A problem only the user can fix (invalid spec, missing Secret).
    Stalled { reason: &'static str, message: String, statefulset: Option<&'a StatefulSet> },
}

/// State of the relay workload as read from its StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub available: bool,
    pub ready_replicas: i32,
    pub reason: &'static str,
    pub message: String,
}

pub fn workload(statefulset: Option<&StatefulSet>, stopped: bool) -> Workload {
    let Some(statefulset) = statefulset else {
        return Workload {
            available: false,
            ready_replicas: 0,
            reason: "StatefulSetMissing",
            message: "the StatefulSet does not exist yet".into(),
        };
    };
    let status = statefulset.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let wanted = statefulset.spec.replicas.unwrap_or(1);
    let generation = statefulset.metadata.generation.unwrap_or(0);
    let unavailable =
        |reason, message: String| Workload { available: false, ready_replicas: ready, reason, message };
    if stopped {
        return unavailable("Stopped", "the relay is stopped (spec.operation.stopped)".into());
    }
    if status.observed_generation.unwrap_or(0) < generation {
        return unavailable(
            "RolloutPending",
            "the StatefulSet controller has not seen the latest spec yet".into(),
        );
    }
    if status.update_revision.is_some() && status.current_revision != status.update_revision {
        let updated = status.updated_replicas.unwrap_or(0);
        return unavailable(
            "RollingOut",
            format!("rolling out: {updated}/{wanted} pods updated, {ready} ready"),
        );
    }
    if ready < wanted {
        return unavailable("PodsNotReady", format!("{ready}/{wanted} relay pods ready"));
    }
    Workload {
        available: true,
        ready_replicas: ready,
        reason: "StatefulSetReady",
        message: format!("{ready}/{wanted} relay pods ready"),
    }
}

/// The conditions this operator owns, for an outcome.
pub fn desired_conditions(relay: &Relay, outcome: &Outcome) -> (Vec<Desired>, Workload) {
    let stopped = relay.spec.operation.stopped;
    let (statefulset, stall, paused) = match outcome {
        Outcome::Applied(sts) => (Some(*sts), None, false),
        Outcome::Paused(sts) => (*sts, None, true),
        Outcome::Stalled { reason, message, statefulset } => {
            (*statefulset, Some((*reason, message.clone())), false)
        }
    };
    let work = workload(statefulset, stopped);
    let mut conditions = Vec::new();
    let workload_condition = Desired::new(
        cond::WORKLOAD_AVAILABLE,
        Status::from_bool(work.available),
        work.reason,
        work.message.clone(),
    );
    match (&stall, paused) {
        (Some((reason, message)), _) => {
            conditions.push(Desired::new(cond::READY, Status::False, reason, message.clone()));
            conditions.push(Desired::new(
                cond::RECONCILING,
                Status::False,
                reason,
                "waiting for a change to the Relay",
            ));
            conditions.push(Desired::new(cond::STALLED, Status::True, reason, message.clone()));
        }
        (None, true) => {
            conditions.push(Desired::new(
                cond::READY,
                Status::from_bool(work.available),
                if work.available { "RelayReady" } else { work.reason },
                work.message.clone(),
            ));
            conditions.push(Desired::new(
                cond::RECONCILING,
                Status::False,
                "Paused",
                "reconciliation is paused",
            ));
            conditions.push(Desired::new(cond::STALLED, Status::False, "Paused", ""));
        }
        (None, false) => {
            let (ready_reason, ready_message) = if work.available {
                ("RelayReady", format!("relay serving; {}", work.message))
            } else {
                (work.reason, work.message.clone())
            };
            conditions.push(Desired::new(
                cond::READY,
                Status::from_bool(work.available),
                ready_reason,
                ready_message,
            ));
            let converging = !work.available && !stopped;
            conditions.push(Desired::new(
                cond::RECONCILING,
                Status::from_bool(converging),
                if converging { work.reason } else { "ReconcileSucceeded" },
                if converging { work.message.clone() } else { String::new() },
            ));
            conditions.push(Desired::new(cond::STALLED, Status::False, "ReconcileSucceeded", ""));
        }
    }
    conditions.push(workload_condition);
    if paused {
        conditions.push(Desired::new(
            cond::RECONCILIATION_PAUSED,
            Status::True,
            "Paused",
            "spec.operation.reconciliationPaused is true: the operator changes nothing",
        ));
    }
    (conditions, work)
}

/// The full status for an outcome, keeping transition times of unchanged conditions.
pub fn compute(relay: &Relay, outcome: &Outcome, admin_secret: Option<String>, now: &Time) -> RelayStatus {
    let generation = relay.metadata.generation.unwrap_or(0);
    let existing = relay.status.clone().unwrap_or_default();
    let (desired, work) = desired_conditions(relay, outcome);
    let owned: Vec<_> =
        existing.conditions.iter().filter(|c| cond::OWNED.contains(&c.type_.as_str())).cloned().collect();
    RelayStatus {
        observed_generation: Some(generation),
        conditions: cond::merge(&owned, &desired, generation, now),
        ready_replicas: work.ready_replicas,
        endpoints: Some(endpoints(relay)),
        admin_secret_name: admin_secret.or(existing.admin_secret_name),
    }
}

fn endpoints(relay: &Relay) -> Endpoints {
    let name = relay.name_any();
    let namespace = relay.namespace().unwrap_or_default();
    let ports = &relay.spec.ports;
    Endpoints {
        firehose: format!(
            "ws://{name}.{namespace}.svc:{}/xrpc/com.atproto.sync.subscribeRepos",
            ports.public
        ),
        xrpc: format!("http://{name}.{namespace}.svc:{}", ports.public),
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
        "status": status,
    });
    api.patch_status(&relay.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
    ctx.metrics.api_writes.with_label_values(&["RelayStatus"]).inc();
    announce_ready_change(relay, &status, ctx).await;
    Ok(())
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
