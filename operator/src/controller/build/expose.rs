//! `spec.expose`: the objects that give the relay a public name. Either an Ingress that
//! routes the firehose and XRPC (never the admin port) to the public Service, with TLS and
//! WebSocket-friendly timeouts, or a Service of type LoadBalancer `<name>-public`. Both
//! carry the external-dns annotations when asked, so DNS follows the object.

use super::service::PUBLIC_PORT_NAME;
use super::{owned_meta, selector_labels};
use crate::controller::validate::ValidatedRelay;
use crate::crd::expose::{ExposeSpec, ExposeTls, ExposeVia, IssuerKind};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

pub const EXTERNAL_DNS_HOSTNAME: &str = "external-dns.alpha.kubernetes.io/hostname";
pub const EXTERNAL_DNS_TTL: &str = "external-dns.alpha.kubernetes.io/ttl";
pub const EXTERNAL_DNS_TARGET: &str = "external-dns.alpha.kubernetes.io/target";
pub const CERT_MANAGER_ISSUER: &str = "cert-manager.io/issuer";
pub const CERT_MANAGER_CLUSTER_ISSUER: &str = "cert-manager.io/cluster-issuer";
pub const NGINX_READ_TIMEOUT: &str = "nginx.ingress.kubernetes.io/proxy-read-timeout";
pub const NGINX_SEND_TIMEOUT: &str = "nginx.ingress.kubernetes.io/proxy-send-timeout";
/// Seconds ingress-nginx keeps a quiet WebSocket open (its default, 60, drops a firehose
/// consumer whenever the network is calm for a minute).
pub const WEBSOCKET_TIMEOUT_SECONDS: &str = "3600";
/// Port of the LoadBalancer Service: the public URL has no port, so it is HTTPS's.
pub const LOAD_BALANCER_PORT: i32 = 443;
pub const LOAD_BALANCER_PORT_NAME: &str = "https";
/// Paths routed to the relay: XRPC (the firehose is `/xrpc/com.atproto.sync.subscribeRepos`)
/// first, then the rest of the public listener (its landing page and `/_health`).
pub const INGRESS_PATHS: [&str; 2] = ["/xrpc/", "/"];

/// Name of the Ingress (the Relay's own name, like its public Service).
pub fn ingress_name(relay_name: &str) -> String {
    relay_name.to_string()
}

/// Name of the LoadBalancer Service (`via: LoadBalancer`).
pub fn load_balancer_service_name(relay_name: &str) -> String {
    format!("{relay_name}-public")
}

/// Name of the Secret cert-manager issues the certificate into (with `tls.issuerRef`).
pub fn issued_secret_name(relay_name: &str) -> String {
    format!("{relay_name}-tls")
}

/// The Ingress, only with `spec.expose` and `via: Ingress`.
pub fn ingress(relay: &ValidatedRelay) -> Option<Ingress> {
    let expose = relay.spec.expose.as_ref().filter(|e| e.via == ExposeVia::Ingress)?;
    let mut metadata = owned_meta(relay, ingress_name(&relay.name));
    metadata.annotations = Some(ingress_annotations(expose));
    let tls = expose.tls.as_ref().map(|tls| IngressTLS {
        hosts: Some(vec![expose.hostname.clone()]),
        secret_name: Some(tls_secret_name(&relay.name, tls)),
    });
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: expose.ingress_class_name.clone(),
            tls: tls.map(|tls| vec![tls]),
            rules: Some(vec![IngressRule {
                host: Some(expose.hostname.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: INGRESS_PATHS.iter().map(|path| public_path(&relay.name, path)).collect(),
                }),
            }]),
            ..IngressSpec::default()
        }),
        status: None,
    })
}

/// The LoadBalancer Service, only with `spec.expose` and `via: LoadBalancer`. A Service of
/// its own (not the public ClusterIP one turned into a LoadBalancer): in-cluster consumers
/// keep `<name>:<ports.public>`, and switching back prunes one object instead of undoing
/// type-dependent fields of a shared one.
pub fn load_balancer_service(relay: &ValidatedRelay) -> Option<Service> {
    let expose = relay.spec.expose.as_ref().filter(|e| e.via == ExposeVia::LoadBalancer)?;
    let mut metadata = owned_meta(relay, load_balancer_service_name(&relay.name));
    let annotations = with_user_annotations(external_dns_annotations(expose), expose);
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    Some(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            selector: Some(selector_labels(relay)),
            ports: Some(vec![ServicePort {
                name: Some(LOAD_BALANCER_PORT_NAME.into()),
                port: LOAD_BALANCER_PORT,
                target_port: Some(IntOrString::String(PUBLIC_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The public URLs when exposed: (firehose, XRPC base).
pub fn public_urls(expose: &ExposeSpec) -> (String, String) {
    let host = &expose.hostname;
    (format!("wss://{host}/xrpc/com.atproto.sync.subscribeRepos"), format!("https://{host}"))
}

fn public_path(relay_name: &str, path: &str) -> HTTPIngressPath {
    HTTPIngressPath {
        path: Some(path.into()),
        path_type: "Prefix".into(),
        backend: IngressBackend {
            service: Some(IngressServiceBackend {
                name: relay_name.to_string(),
                port: Some(ServiceBackendPort { name: Some(PUBLIC_PORT_NAME.into()), number: None }),
            }),
            resource: None,
        },
    }
}

fn tls_secret_name(relay_name: &str, tls: &ExposeTls) -> String {
    match &tls.secret_name {
        Some(name) => name.clone(),
        None => issued_secret_name(relay_name),
    }
}

fn ingress_annotations(expose: &ExposeSpec) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([
        (NGINX_READ_TIMEOUT.to_string(), WEBSOCKET_TIMEOUT_SECONDS.to_string()),
        (NGINX_SEND_TIMEOUT.to_string(), WEBSOCKET_TIMEOUT_SECONDS.to_string()),
    ]);
    if let Some(issuer) = expose.tls.as_ref().and_then(|tls| tls.issuer_ref.as_ref()) {
        let key = match issuer.kind {
            IssuerKind::Issuer => CERT_MANAGER_ISSUER,
            IssuerKind::ClusterIssuer => CERT_MANAGER_CLUSTER_ISSUER,
        };
        annotations.insert(key.into(), issuer.name.clone());
    }
    annotations.extend(external_dns_annotations(expose));
    with_user_annotations(annotations, expose)
}

fn external_dns_annotations(expose: &ExposeSpec) -> BTreeMap<String, String> {
    let dns = &expose.external_dns;
    if !dns.enabled {
        return BTreeMap::new();
    }
    let mut annotations = BTreeMap::from([(EXTERNAL_DNS_HOSTNAME.to_string(), expose.hostname.clone())]);
    if let Some(ttl) = dns.ttl {
        annotations.insert(EXTERNAL_DNS_TTL.into(), ttl.to_string());
    }
    if let Some(target) = &dns.target {
        annotations.insert(EXTERNAL_DNS_TARGET.into(), target.clone());
    }
    annotations
}

/// The user's `expose.annotations` on top: theirs win (a Traefik user may not want the
/// nginx timeouts' values, a cloud load balancer needs its own keys).
fn with_user_annotations(
    mut annotations: BTreeMap<String, String>,
    expose: &ExposeSpec,
) -> BTreeMap<String, String> {
    annotations.extend(expose.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    annotations
}
