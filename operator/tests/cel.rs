//! The CRD's CEL rules, evaluated locally with kube's CEL support (the same rules
//! the API server runs; the e2e suite checks them there too).

use relay_operator::controller::fixtures::relay_from_yaml;
use relay_operator::crd::Relay;

fn minimal() -> Relay {
    relay_from_yaml(include_str!("fixtures/minimal.yaml"))
}

fn production() -> Relay {
    relay_from_yaml(include_str!("fixtures/production.yaml"))
}

fn errors(result: Result<(), impl std::fmt::Display>) -> String {
    match result {
        Ok(()) => String::new(),
        Err(error) => error.to_string(),
    }
}

#[test]
fn fixtures_pass_every_rule() {
    assert_eq!(errors(minimal().validate_cel()), "");
    assert_eq!(errors(production().validate_cel()), "");
}

#[test]
fn equal_ports_are_rejected() {
    let mut relay = minimal();
    relay.spec.ports.internal = relay.spec.ports.public;
    assert!(errors(relay.validate_cel()).contains("must be different ports"));
}

#[test]
fn memory_limit_below_request_is_rejected() {
    let mut relay = minimal();
    relay.spec.resources.memory.request = Some("2Gi".into());
    relay.spec.resources.memory.limit = Some("1Gi".into());
    assert!(errors(relay.validate_cel()).contains("limit must be greater than or equal to request"));
}

#[test]
fn postgres_needs_a_url_secret() {
    let mut relay = production();
    relay.spec.storage.database.url_secret_ref = None;
    assert!(errors(relay.validate_cel()).contains("urlSecretRef is required"));
}

#[test]
fn storage_class_and_size_are_immutable() {
    let old = production();
    let mut changed_class = old.clone();
    changed_class.spec.storage.storage_class_name = Some("local-path".into());
    assert!(errors(changed_class.validate_cel_update(&old)).contains("storageClassName is immutable"));
    let mut changed_size = old.clone();
    changed_size.spec.storage.size = "300Gi".into();
    assert!(errors(changed_size.validate_cel_update(&old)).contains("storage.size is immutable"));
    let mut changed_image = old.clone();
    changed_image.spec.image = "ghcr.io/atrelay/relay:0.2.0".into();
    assert_eq!(errors(changed_image.validate_cel_update(&old)), "");
}

#[test]
fn backfill_collections_need_a_source() {
    let mut relay = production();
    relay.spec.backfill.source = None;
    let message = errors(relay.validate_cel());
    assert!(message.contains("backfill.collections needs backfill.source"), "{message}");
    assert!(message.contains("backfill.collectionsUrl needs backfill.source"), "{message}");
    relay.spec.backfill.collections.clear();
    relay.spec.backfill.collections_url = None;
    assert_eq!(errors(relay.validate_cel()), "", "a crawl alone needs no source");
}

fn with_coverage() -> Relay {
    relay_from_yaml(include_str!("fixtures/coverage.yaml"))
}

#[test]
fn coverage_rules() {
    assert_eq!(errors(with_coverage().validate_cel()), "");
    let mut inverted = with_coverage();
    if let Some(coverage) = inverted.spec.coverage.as_mut() {
        coverage.critical_below_basis_points = 9500;
    }
    assert!(errors(inverted.validate_cel()).contains("must not be above"));
    let mut empty = with_coverage();
    if let Some(coverage) = empty.spec.coverage.as_mut() {
        coverage.references.clear();
    }
    assert!(errors(empty.validate_cel()).contains("at least one reference"));
    let mut both = with_coverage();
    if let Some(coverage) = both.spec.coverage.as_mut() {
        coverage.references[0].url = Some("wss://bsky.network".into());
    }
    assert!(errors(both.validate_cel()).contains("exactly one of relay and url"));
    let mut itself = with_coverage();
    if let Some(coverage) = itself.spec.coverage.as_mut() {
        coverage.references[0].relay = Some("relay-a".into());
    }
    assert!(errors(itself.validate_cel()).contains("may not name this Relay itself"));
}

#[test]
fn the_fleet_example_is_valid() {
    let text = include_str!("../../examples/fleet.yaml");
    let relays: Vec<Relay> = text.split("\n---\n").map(relay_from_yaml).collect();
    assert_eq!(relays.len(), 3);
    for relay in &relays {
        assert_eq!(errors(relay.validate_cel()), "", "{:?}", relay.metadata.name);
        let validated = relay_operator::controller::validate::validate(relay);
        assert!(validated.is_ok(), "{:?}: {:?}", relay.metadata.name, validated.err());
        assert!(relay.spec.coverage.is_some());
    }
}
