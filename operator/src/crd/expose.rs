//! `spec.expose`: a public endpoint for the relay under its own DNS name — an Ingress (TLS
//! from cert-manager or an existing Secret) or a LoadBalancer Service, with external-dns
//! annotations so DNS follows the object instead of being set by hand. The CEL rules sit
//! on these types (not on the whole Relay), so a message names the `expose` field it is about.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A lowercase DNS name of at least two labels, no scheme, port, path or wildcard (RE2 and
/// Rust's regex agree on it; CEL `matches` runs it on the API server).
pub const HOSTNAME_PATTERN: &str =
    r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// The relay's public endpoint: its firehose and XRPC under `hostname`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.via != 'Ingress' || has(self.tls)")
        .message("expose.tls is required with an Ingress: set tls.issuerRef (cert-manager) or tls.secretName (an existing Secret)")
)]
#[x_kube(
    validation = Rule::new("self.via != 'LoadBalancer' || (!has(self.tls) && !has(self.ingressClassName))")
        .message("expose.tls and expose.ingressClassName apply to an Ingress; with via: LoadBalancer the load balancer terminates TLS (set its provider's annotations in expose.annotations)")
)]
#[serde(rename_all = "camelCase")]
pub struct ExposeSpec {
    /// Public DNS name of the relay, e.g. `relay.example.com`. The firehose becomes
    /// `wss://<hostname>/xrpc/com.atproto.sync.subscribeRepos`.
    #[x_kube(
        validation = Rule::new(r"self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')")
            .message("expose.hostname must be a lowercase DNS name such as relay.example.com (no scheme, port, path or wildcard)")
    )]
    #[schemars(length(min = 1, max = 253))]
    pub hostname: String,

    /// `Ingress` (the default: an Ingress for the public Service) or `LoadBalancer` (a
    /// Service `<name>-public` of type LoadBalancer on port 443).
    #[serde(default)]
    pub via: ExposeVia,

    /// Ingress class (`spec.ingressClassName`); the cluster's default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub ingress_class_name: Option<String>,

    /// TLS of the Ingress: a cert-manager issuer, or a Secret that already holds the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExposeTls>,

    /// external-dns annotations on the Ingress (or the LoadBalancer Service).
    #[serde(default, rename = "externalDNS")]
    pub external_dns: ExternalDnsSpec,

    /// Extra annotations on the Ingress (or the LoadBalancer Service), e.g. for another ingress
    /// controller or a cloud load balancer. They win over the operator's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What carries the public endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ExposeVia {
    #[default]
    Ingress,
    LoadBalancer,
}

/// Where the Ingress's certificate comes from: exactly one of `issuerRef` and `secretName`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.issuerRef) != has(self.secretName)")
        .message("expose.tls names exactly one TLS source: issuerRef (cert-manager) or secretName (an existing Secret)")
)]
#[serde(rename_all = "camelCase")]
pub struct ExposeTls {
    /// A cert-manager issuer: cert-manager's ingress-shim issues the certificate into the
    /// Secret `<name>-tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// A Secret of type `kubernetes.io/tls` in the Relay's namespace, managed by you.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"), length(min = 1, max = 253))]
    pub secret_name: Option<String>,
}

/// A cert-manager `Issuer` (in the Relay's namespace) or `ClusterIssuer`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default)]
    pub kind: IssuerKind,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum IssuerKind {
    #[default]
    Issuer,
    ClusterIssuer,
}

/// external-dns: `external-dns.alpha.kubernetes.io/hostname` (and `ttl`, `target`) on the
/// object, so external-dns keeps the record pointing at it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.enabled || (!has(self.ttl) && !has(self.target))")
        .message("expose.externalDNS.ttl and expose.externalDNS.target need externalDNS.enabled: true")
)]
#[serde(rename_all = "camelCase")]
pub struct ExternalDnsSpec {
    /// Add the external-dns annotations.
    #[serde(default)]
    pub enabled: bool,
    /// Record TTL in seconds (`external-dns.alpha.kubernetes.io/ttl`); external-dns's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub ttl: Option<i64>,
    /// Record target instead of the object's load balancer address
    /// (`external-dns.alpha.kubernetes.io/target`), e.g. a CNAME or an IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub target: Option<String>,
}
