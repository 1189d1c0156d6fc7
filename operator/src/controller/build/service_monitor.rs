//! A prometheus-operator ServiceMonitor for the internal Service, built only when
//! the cluster has the `monitoring.coreos.com/v1` API.

use super::{owned_meta, selector_labels};
use crate::controller::build::service::{INTERNAL_PORT_NAME, LABEL_SERVICE_ROLE};
use crate::controller::validate::ValidatedRelay;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

pub fn service_monitor(relay: &ValidatedRelay) -> DynamicObject {
    let mut object = DynamicObject::new(&relay.name, &api_resource()).within(&relay.namespace);
    object.metadata = owned_meta(relay, relay.name.clone());
    let mut match_labels = selector_labels(relay);
    match_labels.insert(LABEL_SERVICE_ROLE.into(), "internal".into());
    object.data = json!({
        "spec": {
            "selector": { "matchLabels": match_labels },
            "endpoints": [{ "port": INTERNAL_PORT_NAME, "path": "/metrics", "interval": "30s" }],
        }
    });
    object
}
