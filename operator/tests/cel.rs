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
