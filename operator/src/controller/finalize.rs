//! Finalizer support: cleanup of resources outside the cluster before a Relay goes away.
//!
//! Objects inside the cluster need none (owner references garbage-collect them). A Relay
//! that owns something outside, such as a cloud server, gets the finalizer written before
//! that thing is created, and on deletion the cleanup runs until it is done; only then is
//! the finalizer removed. No Relay field needs one yet ([`needs_finalizer`] is false): the
//! first external resource (a Hetzner node per relay) turns it on, and the pipeline already
//! knows how to add, run and remove it.

use super::Context;
use crate::crd::Relay;
use crate::Error;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

/// The finalizer this operator puts on Relays that own external resources.
pub const FINALIZER: &str = "atrelay.dev/cleanup";

/// Whether this Relay owns something outside the cluster that must be cleaned up: a
/// Hetzner server (`spec.node.hetzner`).
pub fn needs_finalizer(relay: &Relay) -> bool {
    relay.spec.node.as_ref().is_some_and(|n| n.hetzner.is_some())
}

/// Adds the finalizer when the Relay needs one and lacks it (before anything external is
/// created, so a crash in between can never leak it).
pub async fn ensure(relay: &Relay, ctx: &Context) -> Result<(), Error> {
    if !needs_finalizer(relay) || has_finalizer(relay) {
        return Ok(());
    }
    let mut finalizers = relay.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    patch_finalizers(relay, finalizers, ctx).await
}

/// A Relay being deleted: clean up what is outside the cluster, then let it go.
pub async fn on_delete(relay: &Relay, ctx: &Context) -> Result<Action, Error> {
    if !has_finalizer(relay) {
        return Ok(Action::await_change());
    }
    let outcome = match cleanup_external(relay, ctx).await {
        Ok(super::node::Cleanup::Pending(wait)) => return Ok(Action::requeue(wait)),
        Ok(super::node::Cleanup::Done) => Ok(()),
        Err(error) => Err(error),
    };
    if !cleanup_done(&outcome) {
        return outcome.map(|()| Action::await_change());
    }
    let remaining: Vec<String> = relay.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    patch_finalizers(relay, remaining, ctx).await?;
    Ok(Action::await_change())
}

fn has_finalizer(relay: &Relay) -> bool {
    relay.finalizers().iter().any(|f| f == FINALIZER)
}

/// Deletes what the Relay owns outside the cluster: its node (`node::cleanup`).
async fn cleanup_external(relay: &Relay, ctx: &Context) -> Result<super::node::Cleanup, Error> {
    super::node::cleanup(relay, ctx).await
}

/// Whether cleanup reached its goal. "Not found" counts as done: the thing is gone, whoever
/// removed it, and waiting for it would hold the Relay forever.
pub fn cleanup_done(outcome: &Result<(), Error>) -> bool {
    match outcome {
        Ok(()) => true,
        Err(Error::Kube(kube::Error::Api(status))) => status.code == 404,
        Err(_) => false,
    }
}

/// Sets the Relay's finalizer list (a merge patch with the resourceVersion, so a concurrent
/// change by someone else fails instead of being overwritten).
async fn patch_finalizers(relay: &Relay, finalizers: Vec<String>, ctx: &Context) -> Result<(), Error> {
    let api: Api<Relay> = Api::namespaced(ctx.client.clone(), &relay.namespace().unwrap_or_default());
    let patch = json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": relay.meta().resource_version }
    });
    api.patch(&relay.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    ctx.metrics.api_writes.with_label_values(&["Relay"]).inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> Result<(), Error> {
        let status = kube::core::Status::failure("test", "reason").with_code(code);
        Err(Error::Kube(kube::Error::Api(Box::new(status))))
    }

    #[test]
    fn not_found_during_cleanup_counts_as_done() {
        assert!(cleanup_done(&Ok(())));
        assert!(cleanup_done(&api_error(404)), "already gone is done");
        assert!(!cleanup_done(&api_error(409)));
        assert!(!cleanup_done(&api_error(500)));
    }
}
