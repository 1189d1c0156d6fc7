//! `spec.node.hetzner`: the example is valid, the CEL rules refuse what would replace or
//! orphan a server, and build pins the relay to its node only when told to.

use relay_operator::controller::build::{self, AdminToken, BuildInputs, NodePin};
use relay_operator::controller::fixtures::relay_from_yaml;
use relay_operator::controller::validate::validate;
use relay_operator::crd::Relay;

fn example() -> Relay {
    relay_from_yaml(include_str!("../../examples/hetzner.yaml"))
}

fn errors(result: Result<(), impl std::fmt::Display>) -> String {
    match result {
        Ok(()) => String::new(),
        Err(error) => error.to_string(),
    }
}

#[test]
fn the_hetzner_example_is_valid() {
    let relay = example();
    assert_eq!(errors(relay.validate_cel()), "");
    assert!(validate(&relay).is_ok());
    let hetzner = relay.spec.node.as_ref().and_then(|n| n.hetzner.as_ref()).expect("spec.node.hetzner");
    assert_eq!((hetzner.server_type.as_str(), hetzner.location.as_str()), ("cpx41", "fsn1"));
    assert_eq!(hetzner.join.server_url, "https://k3s.example.net:6443");
}

#[test]
fn server_type_and_location_are_immutable() {
    let old = example();
    let mut moved = old.clone();
    if let Some(h) = moved.spec.node.as_mut().and_then(|n| n.hetzner.as_mut()) {
        h.location = "hel1".into();
    }
    assert!(errors(moved.validate_cel_update(&old)).contains("node.hetzner.location is immutable"));
    let mut resized = old.clone();
    if let Some(h) = resized.spec.node.as_mut().and_then(|n| n.hetzner.as_mut()) {
        h.server_type = "cpx51".into();
    }
    assert!(errors(resized.validate_cel_update(&old)).contains("node.hetzner.serverType is immutable"));
    let mut removed = old.clone();
    if let Some(node) = removed.spec.node.as_mut() {
        node.hetzner = None;
    }
    assert!(errors(removed.validate_cel_update(&old)).contains("cannot be added to or removed"));
    let mut no_node = old.clone();
    no_node.spec.node = None;
    assert!(errors(no_node.validate_cel_update(&old)).contains("spec.node cannot be added to or removed"));
    let mut labelled = old.clone();
    if let Some(h) = labelled.spec.node.as_mut().and_then(|n| n.hetzner.as_mut()) {
        h.labels.insert("cost-center".into(), "42".into());
    }
    assert_eq!(errors(labelled.validate_cel_update(&old)), "", "other fields may change");
}

#[test]
fn required_fields_and_name_length() {
    let mut empty = example();
    if let Some(h) = empty.spec.node.as_mut().and_then(|n| n.hetzner.as_mut()) {
        h.location.clear();
        h.server_type.clear();
    }
    let message = errors(empty.validate_cel());
    assert!(message.contains("node.hetzner.location is required"), "{message}");
    assert!(message.contains("node.hetzner.serverType is required"), "{message}");
    let mut long = example();
    long.metadata.name = Some("r".repeat(49));
    assert!(errors(long.validate_cel()).contains("at most 48 characters"));
    let mut both = example();
    if let Some(f) =
        both.spec.node.as_mut().and_then(|n| n.hetzner.as_mut()).and_then(|h| h.firewall.as_mut())
    {
        f.name = Some("existing".into());
    }
    assert!(errors(both.validate_cel()).contains("exactly one of create: true or name"));
}

#[test]
fn the_statefulset_waits_then_is_pinned_to_the_node() {
    let relay = example();
    let validated = validate(&relay).expect("valid");
    let inputs = BuildInputs {
        admin: AdminToken::Generated { token: "fixture-token-not-secret".into() },
        service_monitor_supported: false,
        service_monitor_wanted: false,
        coverage_references: Vec::new(),
    };
    let built = build::build(&validated, &inputs);
    let mut waiting = built.statefulset.clone();
    build::pin_to_node(&mut waiting, NodePin::Waiting);
    assert_eq!(waiting.spec.replicas, Some(0));
    assert!(waiting.spec.template.spec.as_ref().and_then(|p| p.node_selector.as_ref()).is_none());

    let mut pinned = built.statefulset.clone();
    let pin = NodePin::On {
        node: "relay-relay-eu-0b6f3a8e",
        taint_key: "atrelay.dev/relay",
        taint_value: "relays.relay-eu",
    };
    build::pin_to_node(&mut pinned, pin);
    let pod = pinned.spec.template.spec.clone().expect("pod spec");
    assert_eq!(pinned.spec.replicas, Some(1));
    assert_eq!(
        pod.node_selector.and_then(|s| s.get("kubernetes.io/hostname").cloned()).as_deref(),
        Some("relay-relay-eu-0b6f3a8e")
    );
    let toleration = pod.tolerations.unwrap_or_default().pop().expect("a toleration");
    assert_eq!(toleration.key.as_deref(), Some("atrelay.dev/relay"));
    assert_eq!(toleration.value.as_deref(), Some("relays.relay-eu"));
    assert_eq!(toleration.effect.as_deref(), Some("NoSchedule"));

    let mut anywhere = built.statefulset.clone();
    build::pin_to_node(&mut anywhere, NodePin::Anywhere);
    assert_eq!(anywhere, built.statefulset);
}
