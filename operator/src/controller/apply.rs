//! Apply: server-side apply of each desired object with one field manager, gated
//! by a hash of the desired object so an unchanged Relay causes no write at all.

use super::build::{DesiredObjects, MANAGER};
use super::Context;
use crate::Error;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// Hash of the object as last applied by this operator.
pub const ANNOTATION_APPLIED_HASH: &str = "atrelay.dev/applied-hash";

/// The result of applying: the live StatefulSet and what was written.
pub struct Applied {
    pub statefulset: StatefulSet,
    /// `Kind/name` of every object that was created or changed.
    pub changed: Vec<String>,
}

pub async fn apply(desired: DesiredObjects, namespace: &str, ctx: &Context) -> Result<Applied, Error> {
    let mut changed = Vec::new();
    if let Some(secret) = desired.admin_secret {
        apply_typed(secret, namespace, ctx, &mut changed).await?;
    }
    apply_typed(desired.public_service, namespace, ctx, &mut changed).await?;
    apply_typed(desired.internal_service, namespace, ctx, &mut changed).await?;
    let statefulset = apply_typed(desired.statefulset, namespace, ctx, &mut changed).await?;
    if let Some(monitor) = desired.service_monitor {
        apply_dynamic(monitor, namespace, ctx, &mut changed).await?;
    }
    Ok(Applied { statefulset, changed })
}

async fn apply_typed<K>(
    mut object: K,
    namespace: &str,
    ctx: &Context,
    changed: &mut Vec<String>,
) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let kind = K::kind(&()).to_string();
    let hash = stamp_hash(&mut object, &kind)?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let name = object.name_any();
    if let Some(live) = api.get_opt(&name).await? {
        if live.annotations().get(ANNOTATION_APPLIED_HASH) == Some(&hash) {
            return Ok(live);
        }
    }
    let params = PatchParams::apply(MANAGER).force();
    let live = api.patch(&name, &params, &Patch::Apply(&object)).await?;
    ctx.metrics.api_writes.with_label_values(&[&kind]).inc();
    changed.push(format!("{kind}/{name}"));
    Ok(live)
}

async fn apply_dynamic(
    mut object: DynamicObject,
    namespace: &str,
    ctx: &Context,
    changed: &mut Vec<String>,
) -> Result<(), Error> {
    let resource = super::build::service_monitor::api_resource();
    let hash = stamp_hash(&mut object, "ServiceMonitor")?;
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &resource);
    let name = object.name_any();
    if let Some(live) = api.get_opt(&name).await? {
        if live.annotations().get(ANNOTATION_APPLIED_HASH) == Some(&hash) {
            return Ok(());
        }
    }
    let params = PatchParams::apply(MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&object)).await?;
    ctx.metrics.api_writes.with_label_values(&["ServiceMonitor"]).inc();
    changed.push(format!("ServiceMonitor/{name}"));
    Ok(())
}

/// Computes the hash of the desired object and records it in an annotation.
fn stamp_hash<K: Resource + Serialize>(object: &mut K, kind: &str) -> Result<String, Error> {
    let bytes = serde_json::to_vec(object).map_err(|e| Error::Serialize(kind.to_string(), e))?;
    let hash = super::build::digest(&bytes);
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ANNOTATION_APPLIED_HASH.into(), hash.clone());
    Ok(hash)
}
