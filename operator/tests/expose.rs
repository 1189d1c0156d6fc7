//! `spec.expose`: the built Ingress / LoadBalancer Service against golden fixtures
//! (`tests/fixtures/expose-<name>.yaml` must build exactly `expose-<name>.expected.yaml`;
//! after an intended change run `UPDATE_FIXTURES=1 cargo test -p relay-operator --test expose`
//! and review the diff), the CRD's CEL rules for `expose`, and the public URLs in status.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use relay_operator::controller::build::expose::{self, INGRESS_PATHS};
use relay_operator::controller::build::{self, AdminToken, BuildInputs};
use relay_operator::controller::fixtures::relay_from_yaml;
use relay_operator::controller::status::{self, Outcome};
use relay_operator::controller::validate::validate;
use relay_operator::crd::expose::{ExposeTls, ExposeVia, IssuerKind, IssuerRef};
use relay_operator::crd::Relay;

fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Relay {
    let path = manifest_dir().join("tests/fixtures").join(format!("{name}.yaml"));
    relay_from_yaml(&std::fs::read_to_string(path).expect("fixture"))
}

fn inputs() -> BuildInputs {
    BuildInputs {
        admin: AdminToken::Generated { token: "fixture-token-not-secret".into() },
        service_monitor_supported: false,
        service_monitor_wanted: true,
        coverage_references: Vec::new(),
    }
}

fn built(relay: &Relay) -> build::DesiredObjects {
    build::build(&validate(relay).expect("fixture is valid"), &inputs())
}

/// The expose objects of a fixture as YAML documents.
fn render(relay: &Relay) -> String {
    let objects = built(relay);
    let mut docs = Vec::new();
    if let Some(ingress) = &objects.ingress {
        docs.push(serde_saphyr::to_string(ingress).expect("yaml"));
    }
    if let Some(service) = &objects.load_balancer_service {
        docs.push(serde_saphyr::to_string(service).expect("yaml"));
    }
    docs.iter().map(|doc| format!("---\n{doc}")).collect()
}

fn check(name: &str) {
    let rendered = render(&fixture(name));
    assert!(!rendered.is_empty(), "{name} builds no expose object");
    let expected_path = manifest_dir().join("tests/fixtures").join(format!("{name}.expected.yaml"));
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&expected_path, &rendered).expect("write expected fixture");
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).expect("expected fixture exists");
    assert_eq!(rendered, expected, "expose output for {name} differs from {}", expected_path.display());
}

#[test]
fn an_ingress_with_a_cert_manager_issuer_builds_the_expected_object() {
    check("expose-ingress");
}

#[test]
fn an_ingress_with_an_existing_secret_builds_the_expected_object() {
    check("expose-secret");
}

#[test]
fn a_load_balancer_builds_the_expected_service() {
    check("expose-loadbalancer");
}

fn annotation<'a>(
    annotations: &'a Option<std::collections::BTreeMap<String, String>>,
    key: &str,
) -> Option<&'a str> {
    annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

#[test]
fn the_ingress_routes_xrpc_and_root_to_the_public_port_only() {
    for name in ["expose-ingress", "expose-secret"] {
        let relay = fixture(name);
        let objects = built(&relay);
        let ingress = objects.ingress.expect("an Ingress");
        let spec = ingress.spec.expect("spec");
        let rules = spec.rules.expect("rules");
        assert_eq!(rules.len(), 1);
        let expose = relay.spec.expose.as_ref().expect("expose");
        assert_eq!(rules[0].host.as_deref(), Some(expose.hostname.as_str()));
        let paths = &rules[0].http.as_ref().expect("http").paths;
        let found: Vec<&str> = paths.iter().filter_map(|p| p.path.as_deref()).collect();
        assert_eq!(found, INGRESS_PATHS);
        // Every path goes to the public Service's public port (by the name that Service
        // gives it), never to the internal Service or the admin port.
        let public_port = objects.public_service.spec.as_ref().and_then(|s| s.ports.clone()).expect("ports");
        for path in paths {
            let backend = path.backend.service.as_ref().expect("a Service backend");
            assert_eq!(backend.name, objects.public_service.metadata.name.clone().expect("name"));
            let port = backend.port.as_ref().expect("port");
            assert_eq!(port.name, public_port[0].name, "{name}");
            assert_eq!(path.path_type, "Prefix");
        }
        assert!(objects.load_balancer_service.is_none(), "{name}: an Ingress and no LoadBalancer");
        assert_eq!(annotation(&ingress.metadata.annotations, expose::NGINX_READ_TIMEOUT), Some("3600"));
        assert_eq!(annotation(&ingress.metadata.annotations, expose::NGINX_SEND_TIMEOUT), Some("3600"));
        let owner = ingress.metadata.owner_references.clone().unwrap_or_default();
        assert!(owner.iter().any(|o| o.kind == "Relay" && o.controller == Some(true)), "{name}: owned");
    }
}

#[test]
fn tls_follows_the_issuer_or_the_secret() {
    let mut relay = fixture("expose-ingress");
    let ingress = built(&relay).ingress.expect("an Ingress");
    let tls = ingress.spec.and_then(|s| s.tls).expect("tls");
    assert_eq!(tls[0].secret_name.as_deref(), Some("relay-eu-tls"));
    assert_eq!(tls[0].hosts.as_deref(), Some(&["relay.example.com".to_string()][..]));
    assert_eq!(
        annotation(&ingress.metadata.annotations, expose::CERT_MANAGER_CLUSTER_ISSUER),
        Some("letsencrypt")
    );
    assert_eq!(annotation(&ingress.metadata.annotations, expose::CERT_MANAGER_ISSUER), None);

    let spec = relay.spec.expose.as_mut().expect("expose");
    spec.tls = Some(ExposeTls {
        issuer_ref: Some(IssuerRef { name: "staging".into(), kind: IssuerKind::Issuer }),
        secret_name: None,
    });
    let ingress = built(&relay).ingress.expect("an Ingress");
    assert_eq!(annotation(&ingress.metadata.annotations, expose::CERT_MANAGER_ISSUER), Some("staging"));
    assert_eq!(annotation(&ingress.metadata.annotations, expose::CERT_MANAGER_CLUSTER_ISSUER), None);

    let ingress = built(&fixture("expose-secret")).ingress.expect("an Ingress");
    let tls = ingress.spec.and_then(|s| s.tls).expect("tls");
    assert_eq!(tls[0].secret_name.as_deref(), Some("relay-example-org-tls"));
    let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
    assert!(!annotations.keys().any(|k| k.starts_with("cert-manager.io/")), "no issuer with a Secret");
    assert!(!annotations.keys().any(|k| k.starts_with("external-dns.")), "external-dns is off");
}

#[test]
fn user_annotations_win_over_the_operators() {
    let mut relay = fixture("expose-ingress");
    let spec = relay.spec.expose.as_mut().expect("expose");
    spec.annotations.insert(expose::NGINX_READ_TIMEOUT.into(), "86400".into());
    let ingress = built(&relay).ingress.expect("an Ingress");
    assert_eq!(annotation(&ingress.metadata.annotations, expose::NGINX_READ_TIMEOUT), Some("86400"));
}

#[test]
fn via_load_balancer_builds_a_service_and_no_ingress() {
    let relay = fixture("expose-loadbalancer");
    let objects = built(&relay);
    assert!(objects.ingress.is_none());
    let service = objects.load_balancer_service.expect("a LoadBalancer Service");
    assert_eq!(service.metadata.name.as_deref(), Some("relay-lb-public"));
    let spec = service.spec.expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.selector, objects.public_service.spec.as_ref().and_then(|s| s.selector.clone()));
    let ports = spec.ports.expect("ports");
    assert_eq!((ports.len(), ports[0].port), (1, 443));
    let annotations = &service.metadata.annotations;
    assert_eq!(annotation(annotations, expose::EXTERNAL_DNS_HOSTNAME), Some("relay.example.net"));
    assert_eq!(annotation(annotations, expose::EXTERNAL_DNS_TTL), Some("60"));
    assert_eq!(annotation(annotations, expose::EXTERNAL_DNS_TARGET), Some("lb.example.net"));
    // The ClusterIP Service stays as it is: in-cluster consumers keep their URL.
    let public = objects.public_service.spec.expect("spec");
    assert_eq!(public.type_.as_deref(), Some("ClusterIP"));
}

#[test]
fn without_expose_nothing_is_built() {
    let mut relay = fixture("expose-ingress");
    relay.spec.expose = None;
    let objects = built(&relay);
    assert!(objects.ingress.is_none() && objects.load_balancer_service.is_none());
}

fn endpoints_of(relay: &Relay) -> relay_operator::crd::Endpoints {
    let statefulset = StatefulSet::default();
    let now = Time(jiff::Timestamp::UNIX_EPOCH);
    let status = status::compute(relay, &Outcome::Applied(&statefulset), None, None, &now);
    status.endpoints.expect("endpoints")
}

#[test]
fn status_shows_the_public_urls_when_exposed() {
    let mut relay = fixture("expose-ingress");
    let exposed = endpoints_of(&relay);
    assert_eq!(exposed.firehose, "wss://relay.example.com/xrpc/com.atproto.sync.subscribeRepos");
    assert_eq!(exposed.xrpc, "https://relay.example.com");
    assert_eq!(exposed.internal, "http://relay-eu-internal.relays.svc:2471", "admin stays internal");
    relay.spec.expose.as_mut().expect("expose").via = ExposeVia::LoadBalancer;
    relay.spec.expose.as_mut().expect("expose").tls = None;
    assert_eq!(endpoints_of(&relay).firehose, exposed.firehose);
    relay.spec.expose = None;
    assert_eq!(
        endpoints_of(&relay).firehose,
        "ws://relay-eu.relays.svc:2470/xrpc/com.atproto.sync.subscribeRepos"
    );
}

fn cel_errors(relay: &Relay) -> String {
    match relay.validate_cel() {
        Ok(()) => String::new(),
        Err(error) => error.to_string(),
    }
}

#[test]
fn expose_fixtures_pass_every_rule() {
    for name in ["expose-ingress", "expose-secret", "expose-loadbalancer"] {
        assert_eq!(cel_errors(&fixture(name)), "", "{name}");
    }
}

#[test]
fn the_production_example_is_exposed_through_an_ingress() {
    let text = include_str!("../../examples/production.yaml");
    let relay = relay_from_yaml(text);
    assert_eq!(cel_errors(&relay), "");
    let ingress = built(&relay).ingress.expect("examples/production.yaml builds an Ingress");
    let annotations = &ingress.metadata.annotations;
    assert_eq!(annotation(annotations, expose::CERT_MANAGER_CLUSTER_ISSUER), Some("letsencrypt-prod"));
    assert_eq!(annotation(annotations, expose::EXTERNAL_DNS_HOSTNAME), Some("relay-eu.example.com"));
    assert_eq!(
        endpoints_of(&relay).firehose,
        "wss://relay-eu.example.com/xrpc/com.atproto.sync.subscribeRepos"
    );
}

#[test]
fn cel_rejects_bad_hostnames() {
    for bad in [
        "https://relay.example.com",
        "relay.example.com:443",
        "*.example.com",
        "Relay.Example.com",
        "relay",
        "relay.example.com/xrpc",
        "-relay.example.com",
    ] {
        let mut relay = fixture("expose-ingress");
        relay.spec.expose.as_mut().expect("expose").hostname = bad.into();
        let message = cel_errors(&relay);
        assert!(message.contains("expose.hostname must be a lowercase DNS name"), "{bad}: {message}");
    }
    let mut relay = fixture("expose-ingress");
    relay.spec.expose.as_mut().expect("expose").hostname = "a-1.relay.example.co.uk".into();
    assert_eq!(cel_errors(&relay), "");
}

#[test]
fn cel_wants_exactly_one_tls_source() {
    let mut relay = fixture("expose-ingress");
    let expose = relay.spec.expose.as_mut().expect("expose");
    expose.tls.as_mut().expect("tls").secret_name = Some("mine".into());
    assert!(cel_errors(&relay).contains("expose.tls names exactly one TLS source"));
    let expose = relay.spec.expose.as_mut().expect("expose");
    expose.tls = Some(ExposeTls { issuer_ref: None, secret_name: None });
    assert!(cel_errors(&relay).contains("expose.tls names exactly one TLS source"));
    let expose = relay.spec.expose.as_mut().expect("expose");
    expose.tls = None;
    assert!(cel_errors(&relay).contains("expose.tls is required with an Ingress"));
}

#[test]
fn cel_keeps_ingress_fields_off_a_load_balancer() {
    let mut relay = fixture("expose-loadbalancer");
    relay.spec.expose.as_mut().expect("expose").ingress_class_name = Some("nginx".into());
    assert!(cel_errors(&relay).contains("apply to an Ingress"));
    let mut relay = fixture("expose-loadbalancer");
    relay.spec.expose.as_mut().expect("expose").tls =
        Some(ExposeTls { issuer_ref: None, secret_name: Some("x".into()) });
    assert!(cel_errors(&relay).contains("apply to an Ingress"));
}

#[test]
fn cel_wants_external_dns_enabled_for_its_options() {
    let mut relay = fixture("expose-secret");
    relay.spec.expose.as_mut().expect("expose").external_dns.ttl = Some(60);
    assert!(cel_errors(&relay).contains("need externalDNS.enabled: true"));
}
