//! The two Services: a public one (firehose + XRPC) and a headless internal one
//! (admin API, metrics; also the StatefulSet's governing Service).

use super::{internal_service_name, owned_meta, selector_labels};
use crate::controller::validate::ValidatedRelay;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const PUBLIC_PORT_NAME: &str = "http";
pub const INTERNAL_PORT_NAME: &str = "internal";
/// Tells the internal Service from the public one (the ServiceMonitor selects on it).
pub const LABEL_SERVICE_ROLE: &str = "atrelay.dev/service";

pub fn public_service(relay: &ValidatedRelay) -> Service {
    Service {
        metadata: owned_meta(relay, relay.name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(relay)),
            ports: Some(vec![port(PUBLIC_PORT_NAME, relay.spec.ports.public)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn internal_service(relay: &ValidatedRelay) -> Service {
    let mut metadata = owned_meta(relay, internal_service_name(&relay.name));
    metadata.labels.get_or_insert_with(Default::default).insert(LABEL_SERVICE_ROLE.into(), "internal".into());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            // Headless: stable per-pod DNS for the StatefulSet, and Prometheus scrapes pods directly.
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(relay)),
            ports: Some(vec![port(INTERNAL_PORT_NAME, relay.spec.ports.internal)]),
            // Metrics and admin must be reachable while the relay is still catching up.
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}
