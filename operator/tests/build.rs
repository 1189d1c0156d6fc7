//! The build stage against YAML fixtures: each `tests/fixtures/<name>.yaml` Relay
//! must build exactly the objects in `<name>.expected.yaml`. Run with
//! `UPDATE_FIXTURES=1` to rewrite the expected files after an intended change.

use relay_operator::controller::build::{self, AdminToken, BuildInputs};
use relay_operator::controller::fixtures::relay_from_yaml;
use relay_operator::controller::validate::validate;

fn render(name: &str, inputs: &BuildInputs) -> String {
    let dir = manifest_dir().join("tests/fixtures");
    let relay = relay_from_yaml(&std::fs::read_to_string(dir.join(format!("{name}.yaml"))).expect("fixture"));
    let validated = validate(&relay).expect("fixture is valid");
    let objects = build::build(&validated, inputs);
    let mut docs = Vec::new();
    if let Some(secret) = &objects.admin_secret {
        docs.push(serde_saphyr::to_string(secret).expect("yaml"));
    }
    docs.push(serde_saphyr::to_string(&objects.public_service).expect("yaml"));
    docs.push(serde_saphyr::to_string(&objects.internal_service).expect("yaml"));
    docs.push(serde_saphyr::to_string(&objects.statefulset).expect("yaml"));
    if let Some(monitor) = &objects.service_monitor {
        docs.push(serde_saphyr::to_string(monitor).expect("yaml"));
    }
    if let Some(cronjob) = &objects.coverage_cronjob {
        docs.push(serde_saphyr::to_string(cronjob).expect("yaml"));
    }
    docs.iter().map(|doc| format!("---\n{doc}")).collect()
}

fn check(name: &str, inputs: BuildInputs) {
    let rendered = render(name, &inputs);
    let expected_path = manifest_dir().join("tests/fixtures").join(format!("{name}.expected.yaml"));
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&expected_path, &rendered).expect("write expected fixture");
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).expect("expected fixture exists");
    assert_eq!(rendered, expected, "build output for {name} differs from {}", expected_path.display());
}

#[test]
fn minimal_relay_builds_the_expected_objects() {
    check(
        "minimal",
        BuildInputs {
            admin: AdminToken::Generated { token: "fixture-token-not-secret".into() },
            service_monitor_supported: false,
            service_monitor_wanted: true,
            coverage_references: Vec::new(),
        },
    );
}

#[test]
fn production_relay_builds_the_expected_objects() {
    check(
        "production",
        BuildInputs {
            admin: AdminToken::User {
                name: "relay-eu-admin-token".into(),
                key: "token".into(),
                digest: "0123456789abcdef0123456789abcdef".into(),
            },
            service_monitor_supported: true,
            service_monitor_wanted: true,
            coverage_references: Vec::new(),
        },
    );
}

#[test]
fn a_relay_with_coverage_builds_its_cronjob() {
    check(
        "coverage",
        BuildInputs {
            admin: AdminToken::Generated { token: "fixture-token-not-secret".into() },
            service_monitor_supported: false,
            service_monitor_wanted: true,
            // As the read stage resolves `relay: relay-b` and the URL reference.
            coverage_references: vec!["http://relay-b.relays.svc:2470".into(), "wss://bsky.network".into()],
        },
    );
}

#[test]
fn without_coverage_there_is_no_cronjob_and_no_self_check() {
    let dir = manifest_dir().join("tests/fixtures");
    let mut relay = relay_from_yaml(&std::fs::read_to_string(dir.join("coverage.yaml")).expect("fixture"));
    relay.spec.coverage = None;
    let inputs = BuildInputs {
        admin: AdminToken::Generated { token: "t".into() },
        service_monitor_supported: false,
        service_monitor_wanted: true,
        coverage_references: Vec::new(),
    };
    let built = build::build(&validate(&relay).expect("valid"), &inputs);
    assert!(built.coverage_cronjob.is_none());
    let env =
        built.statefulset.spec.template.spec.and_then(|s| s.containers[0].env.clone()).unwrap_or_default();
    assert!(!env.iter().any(|v| v.name == "RELAY_COVERAGE_REFERENCES"));
}

#[test]
fn stopping_scales_to_zero_and_keeps_everything_else() {
    let dir = manifest_dir().join("tests/fixtures");
    let mut relay = relay_from_yaml(&std::fs::read_to_string(dir.join("minimal.yaml")).expect("fixture"));
    let inputs = BuildInputs {
        admin: AdminToken::Generated { token: "t".into() },
        service_monitor_supported: false,
        service_monitor_wanted: true,
        coverage_references: Vec::new(),
    };
    let running = build::build(&validate(&relay).expect("valid"), &inputs);
    relay.spec.operation.stopped = true;
    let stopped = build::build(&validate(&relay).expect("valid"), &inputs);
    assert_eq!(running.statefulset.spec.replicas, Some(1));
    assert_eq!(stopped.statefulset.spec.replicas, Some(0));
    assert_eq!(running.statefulset.spec.template, stopped.statefulset.spec.template);
    assert_eq!(running.public_service, stopped.public_service);
}

#[test]
fn a_new_admin_token_changes_the_pod_template() {
    let dir = manifest_dir().join("tests/fixtures");
    let relay = relay_from_yaml(&std::fs::read_to_string(dir.join("minimal.yaml")).expect("fixture"));
    let validated = validate(&relay).expect("valid");
    let build_with = |token: &str| {
        let inputs = BuildInputs {
            admin: AdminToken::Generated { token: token.into() },
            service_monitor_supported: false,
            service_monitor_wanted: true,
            coverage_references: Vec::new(),
        };
        build::build(&validated, &inputs).statefulset.spec.template
    };
    assert_ne!(build_with("one"), build_with("two"));
    assert_eq!(build_with("one"), build_with("one"));
}

#[test]
fn the_token_never_appears_in_debug_output() {
    let token = AdminToken::Generated { token: "very-secret-token".into() };
    assert!(!format!("{token:?}").contains("very-secret"));
}

/// The package directory: cargo sets it at run time too, which stays right when a
/// cached test binary was built from another checkout of the same sources.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
