//! Apply: server-side apply of each desired object with one field manager, a write only
//! when the live object differs from what the operator wants, and pruning of objects a
//! turned-off feature no longer wants.
//!
//! Drift is judged against the live object itself, not against a record of what was last
//! applied: a `kubectl edit` of the image, or a deleted Service port, is put back on the
//! next reconcile. A cheap structural check comes first (every field the operator sets has
//! the value it wants); only when it says "different" does the operator ask the API server
//! for a server-side-apply dry run and compare that preview with the live object, because
//! the server normalises some values (quantities, defaults) and only it knows what an apply
//! would change. Nothing changed → no write: an idle Relay costs reads only.

use super::build::coverage::cronjob_name;
use super::build::expose::{ingress_name, load_balancer_service_name};
use super::build::{DesiredObjects, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER};
use super::Context;
use crate::Error;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Debug;

/// The result of applying: the live StatefulSet and what was written.
pub struct Applied {
    pub statefulset: StatefulSet,
    /// The live coverage CronJob (with `spec.coverage`).
    pub cronjob: Option<CronJob>,
    /// `Kind/name` of every object that was created, changed or deleted.
    pub changed: Vec<String>,
}

/// What the apply stage needs to know beyond the desired objects: the names of objects it
/// may have created earlier and that a changed spec may no longer want.
pub struct Owned<'a> {
    pub relay_name: &'a str,
    pub relay_uid: &'a str,
    pub namespace: &'a str,
    /// The generated admin Secret's name.
    pub admin_secret: String,
    /// Whether the cluster serves ServiceMonitors (otherwise there is nothing to prune).
    pub service_monitor_supported: bool,
}

pub async fn apply(desired: DesiredObjects, owned: &Owned<'_>, ctx: &Context) -> Result<Applied, Error> {
    // Destructured without `..`: an owned kind added to `DesiredObjects` does not compile
    // until this stage applies (and, if optional, prunes) it.
    let DesiredObjects {
        admin_secret,
        statefulset,
        public_service,
        internal_service,
        service_monitor,
        coverage_cronjob,
        ingress,
        load_balancer_service,
    } = desired;
    let namespace = owned.namespace;
    let mut changed = Vec::new();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match admin_secret {
        Some(secret) => {
            apply_object(&secrets, secret, "Secret", ctx, &mut changed).await?;
        }
        None => prune(&secrets, &owned.admin_secret, "Secret", owned, ctx, &mut changed).await?,
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    apply_object(&services, public_service, "Service", ctx, &mut changed).await?;
    apply_object(&services, internal_service, "Service", ctx, &mut changed).await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let statefulset = apply_object(&statefulsets, statefulset, "StatefulSet", ctx, &mut changed).await?;
    if owned.service_monitor_supported {
        let resource = super::build::service_monitor::api_resource();
        let monitors: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &resource);
        match service_monitor {
            Some(monitor) => {
                apply_object(&monitors, monitor, "ServiceMonitor", ctx, &mut changed).await?;
            }
            None => prune(&monitors, owned.relay_name, "ServiceMonitor", owned, ctx, &mut changed).await?,
        }
    }
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), namespace);
    let cronjob = match coverage_cronjob {
        Some(cronjob) => Some(apply_object(&cronjobs, cronjob, "CronJob", ctx, &mut changed).await?),
        None => {
            prune(&cronjobs, &cronjob_name(owned.relay_name), "CronJob", owned, ctx, &mut changed).await?;
            None
        }
    };
    // `spec.expose`: at most one of the two exists; switching `via` or removing `expose`
    // prunes the other (only the operator's own, by label and owner).
    let ingresses: Api<Ingress> = Api::namespaced(ctx.client.clone(), namespace);
    match ingress {
        Some(ingress) => {
            apply_object(&ingresses, ingress, "Ingress", ctx, &mut changed).await?;
        }
        None => {
            prune(&ingresses, &ingress_name(owned.relay_name), "Ingress", owned, ctx, &mut changed).await?
        }
    }
    let lb_name = load_balancer_service_name(owned.relay_name);
    match load_balancer_service {
        Some(service) => {
            apply_object(&services, service, "Service", ctx, &mut changed).await?;
        }
        None => prune(&services, &lb_name, "Service", owned, ctx, &mut changed).await?,
    }
    Ok(Applied { statefulset, cronjob, changed })
}

/// Applies `object` unless the live one already holds everything it says.
async fn apply_object<K>(
    api: &Api<K>,
    object: K,
    kind: &str,
    ctx: &Context,
    changed: &mut Vec<String>,
) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = object.name_any();
    let wanted = to_json(&object, kind)?;
    if let Some(live) = api.get_opt(&name).await? {
        let live_json = to_json(&live, kind)?;
        let difference = first_difference(&live_json, &wanted, String::new())
            .or_else(|| dropped_annotation(&live_json, &wanted));
        let Some(difference) = difference else {
            return Ok(live);
        };
        // The cheap check can be fooled by the server's normalisation: ask it.
        let preview = api.patch(&name, &apply_params().dry_run(), &Patch::Apply(&object)).await?;
        ctx.metrics.api_dry_runs.with_label_values(&[kind]).inc();
        if same_content(&to_json(&preview, kind)?, &live_json) {
            return Ok(live);
        }
        tracing::info!(kind, %name, at = %difference, "live object drifted from the desired one; re-applying");
    }
    let live = api.patch(&name, &apply_params(), &Patch::Apply(&object)).await?;
    ctx.metrics.api_writes.with_label_values(&[kind]).inc();
    changed.push(format!("{kind}/{name}"));
    Ok(live)
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Deletes the object `name` if it exists and is this Relay's (our labels and a controller
/// reference to this Relay's UID): anything else with that name is left alone.
async fn prune<K>(
    api: &Api<K>,
    name: &str,
    kind: &str,
    owned: &Owned<'_>,
    ctx: &Context,
    changed: &mut Vec<String>,
) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Some(live) = api.get_opt(name).await? else { return Ok(()) };
    if !is_ours(&live, owned) {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        // Deleted meanwhile: the goal is reached.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(error) => return Err(error.into()),
    }
    ctx.metrics.api_writes.with_label_values(&[kind]).inc();
    tracing::info!(kind, %name, "pruned an object the Relay no longer wants");
    changed.push(format!("{kind}/{name} (deleted)"));
    Ok(())
}

/// Whether an object was made by this operator for this Relay.
pub fn is_ours<K: Resource>(object: &K, owned: &Owned<'_>) -> bool {
    let labels = object.meta().labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    let controlled = object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == owned.relay_uid);
    label(LABEL_MANAGED_BY) == Some(MANAGER) && label(LABEL_INSTANCE) == Some(owned.relay_name) && controlled
}

fn to_json<K: Serialize>(object: &K, kind: &str) -> Result<Value, Error> {
    serde_json::to_value(object).map_err(|e| Error::Serialize(kind.to_string(), e))
}

/// Whether `live` holds every field of `wanted` with the same value. Objects may have more
/// keys (defaults, other managers' fields); lists must match element by element.
pub fn contains(live: &Value, wanted: &Value) -> bool {
    first_difference(live, wanted, String::new()).is_none()
}

/// The path of the first field of `wanted` that `live` does not hold (for the log line that
/// says what drifted), or `None` when it holds them all.
pub fn first_difference(live: &Value, wanted: &Value, path: String) -> Option<String> {
    match (live, wanted) {
        (_, Value::Null) => None,
        (Value::Object(live), Value::Object(wanted)) => wanted.iter().find_map(|(key, value)| {
            let path = format!("{path}.{key}");
            match live.get(key) {
                Some(found) => first_difference(found, value, path),
                // The API server leaves out empty values of `omitempty` fields ("", 0, false,
                // [], {}): absent is what it stores for them.
                None if is_empty_value(value) => None,
                None => Some(path),
            }
        }),
        (Value::Array(live), Value::Array(wanted)) if live.len() == wanted.len() => {
            match (named(live), named(wanted)) {
                // Lists keyed by name (env, ports, containers, volumes): the server may keep
                // them in another order than the one the operator writes; match by name.
                (Some(live), Some(wanted)) => wanted.iter().find_map(|(name, w)| {
                    let path = format!("{path}[{name}]");
                    match live.iter().find(|(n, _)| n == name) {
                        Some((_, l)) => first_difference(l, w, path),
                        None => Some(path),
                    }
                }),
                _ => live
                    .iter()
                    .zip(wanted)
                    .enumerate()
                    .find_map(|(i, (l, w))| first_difference(l, w, format!("{path}[{i}]"))),
            }
        }
        (live, wanted) if live == wanted => None,
        _ => Some(if path.is_empty() { ".".into() } else { path }),
    }
}

/// An annotation this operator applied earlier that `wanted` no longer has (a removed
/// `expose.annotations` entry, external-dns turned off), as a path for the log line. The
/// containment check above cannot see a removal; the operator's own entry in the live
/// object's `managedFields` can, and an apply without the key removes it.
pub fn dropped_annotation(live: &Value, wanted: &Value) -> Option<String> {
    let wanted_keys = wanted.pointer("/metadata/annotations").and_then(Value::as_object);
    live.pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .filter(|entry| entry["manager"] == MANAGER && entry["operation"] == "Apply")
        .filter_map(|entry| entry.pointer("/fieldsV1/f:metadata/f:annotations").and_then(Value::as_object))
        .flat_map(|fields| fields.keys())
        .filter_map(|key| key.strip_prefix("f:"))
        .find(|key| !wanted_keys.is_some_and(|wanted| wanted.contains_key(*key)))
        .map(|key| format!(".metadata.annotations.{key} (no longer wanted)"))
}

fn is_empty_value(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(text) => text.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
    }
}

/// A list whose elements all carry a distinct `name`, as (name, element) pairs.
fn named(list: &[Value]) -> Option<Vec<(&str, &Value)>> {
    let pairs: Vec<(&str, &Value)> = list
        .iter()
        .map(|item| item.get("name").and_then(Value::as_str).map(|n| (n, item)))
        .collect::<Option<_>>()?;
    let mut names: Vec<&str> = pairs.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    (names.len() == pairs.len()).then_some(pairs)
}

/// Equal apart from bookkeeping the server changes on every write, and apart from status
/// (an apply never changes it, but it moves on its own between the read and the dry run).
pub fn same_content(a: &Value, b: &Value) -> bool {
    strip_bookkeeping(a.clone()) == strip_bookkeeping(b.clone())
}

fn strip_bookkeeping(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.remove("status");
    }
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in ["managedFields", "resourceVersion", "generation"] {
            metadata.remove(key);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn live_objects_with_defaults_contain_what_was_wanted() {
        let wanted = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "relay", "image": "relay:1", "ports": [{"containerPort": 2470}]}
        ]}}}});
        let live = json!({"spec": {"replicas": 1, "revisionHistoryLimit": 10, "template": {"spec": {
            "dnsPolicy": "ClusterFirst",
            "containers": [{"name": "relay", "image": "relay:1", "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 2470, "protocol": "TCP"}]}]
        }}}});
        assert!(contains(&live, &wanted));
    }

    #[test]
    fn named_lists_match_by_name_not_position() {
        let wanted = json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]});
        let reordered = json!({"env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]});
        let changed = json!({"env": [{"name": "B", "value": "3"}, {"name": "A", "value": "1"}]});
        assert!(contains(&reordered, &wanted));
        let empty_value = json!({"env": [{"name": "UPSTREAM", "value": ""}], "readOnly": false});
        assert!(
            contains(&json!({"env": [{"name": "UPSTREAM"}]}), &empty_value),
            "omitempty fields are left out"
        );
        assert_eq!(first_difference(&changed, &wanted, String::new()).as_deref(), Some(".env[B].value"));
    }

    #[test]
    fn hand_edits_of_owned_fields_are_drift() {
        let wanted = json!({"spec": {"ports": [{"name": "firehose", "port": 2470}, {"name": "x", "port": 1}],
            "template": {"image": "relay:1"}}});
        let edited_image = json!({"spec": {"ports": [{"name": "firehose", "port": 2470}, {"name": "x", "port": 1}],
            "template": {"image": "relay:evil"}}});
        let deleted_port = json!({"spec": {"ports": [{"name": "firehose", "port": 2470}],
            "template": {"image": "relay:1"}}});
        let missing_field =
            json!({"spec": {"ports": [{"name": "firehose", "port": 2470}, {"name": "x", "port": 1}]}});
        for live in [&edited_image, &deleted_port, &missing_field] {
            assert!(!contains(live, &wanted), "{live}");
        }
        assert_eq!(
            first_difference(&edited_image, &wanted, String::new()).as_deref(),
            Some(".spec.template.image")
        );
        assert_eq!(first_difference(&deleted_port, &wanted, String::new()).as_deref(), Some(".spec.ports"));
    }

    #[test]
    fn annotations_the_operator_no_longer_wants_are_drift() {
        let live = json!({"metadata": {
            "annotations": {"a": "1", "b": "2", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": [
                {"manager": MANAGER, "operation": "Apply",
                 "fieldsV1": {"f:metadata": {"f:annotations": {"f:a": {}, "f:b": {}}}}},
                {"manager": "kubectl-client-side-apply", "operation": "Update",
                 "fieldsV1": {"f:metadata": {"f:annotations": {"f:kubectl.kubernetes.io/last-applied-configuration": {}}}}}
            ]
        }});
        let both = json!({"metadata": {"annotations": {"a": "1", "b": "2"}}});
        let only_a = json!({"metadata": {"annotations": {"a": "1"}}});
        let none = json!({"metadata": {"name": "r"}});
        assert_eq!(
            dropped_annotation(&live, &both),
            None,
            "another manager's annotation is not ours to drop"
        );
        assert_eq!(
            dropped_annotation(&live, &only_a).as_deref(),
            Some(".metadata.annotations.b (no longer wanted)")
        );
        assert!(dropped_annotation(&live, &none).is_some());
        assert_eq!(dropped_annotation(&json!({"metadata": {}}), &none), None, "nothing applied before");
    }

    #[test]
    fn bookkeeping_does_not_count_as_a_difference() {
        let a = json!({"metadata": {"name": "r", "resourceVersion": "1", "managedFields": [1]}, "spec": {"a": 1}});
        let b = json!({"metadata": {"name": "r", "resourceVersion": "2", "managedFields": [2]}, "spec": {"a": 1}});
        let c = json!({"metadata": {"name": "r", "resourceVersion": "2"}, "spec": {"a": 2}});
        let d = json!({"metadata": {"name": "r"}, "spec": {"a": 1}, "status": {"readyReplicas": 1}});
        assert!(same_content(&a, &b));
        assert!(same_content(&a, &d), "status moves on its own");
        assert!(!same_content(&a, &c));
    }

    #[test]
    fn only_this_relays_objects_are_pruned() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let owned = Owned {
            relay_name: "relay",
            relay_uid: "uid-1",
            namespace: "ns",
            admin_secret: "relay-admin".into(),
            service_monitor_supported: false,
        };
        let secret = |instance: &str, uid: &str| {
            let mut secret = Secret::default();
            secret.metadata.labels = Some(
                [
                    (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
                    (LABEL_INSTANCE.to_string(), instance.to_string()),
                ]
                .into(),
            );
            secret.metadata.owner_references = Some(vec![OwnerReference {
                controller: Some(true),
                uid: uid.into(),
                ..OwnerReference::default()
            }]);
            secret
        };
        assert!(is_ours(&secret("relay", "uid-1"), &owned));
        assert!(!is_ours(&secret("relay", "uid-2"), &owned), "another Relay of the same name (recreated)");
        assert!(!is_ours(&secret("other", "uid-1"), &owned));
        assert!(!is_ours(&Secret::default(), &owned), "a user's Secret with the same name");
    }
}
