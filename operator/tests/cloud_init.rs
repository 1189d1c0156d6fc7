//! The cloud-init renderer against golden fixtures: each case must render exactly
//! `tests/fixtures/cloud-init/<name>.yaml`. Run with `UPDATE_FIXTURES=1` to rewrite them
//! after an intended change; e2e/hcloud/check-cloud-init.sh validates the fixtures with
//! Debian's `cloud-init schema`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use relay_operator::cloud::cloud_init::{self, JoinInputs, MAX_USER_DATA};
use relay_operator::cloud::hetzner::naming::{self, Owner, LABEL_RELAY};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cloud-init")
}

fn relay_inputs(owner: &Owner) -> JoinInputs {
    let reservation = naming::relay_label_value(owner);
    JoinInputs {
        node_name: naming::server_name(&owner.name, &owner.uid),
        server_url: "https://k3s.example.net:6443".into(),
        token: "K10fixture0token0not0secret::server:0123456789abcdef".into(),
        k3s_version: Some("v1.31.4+k3s1".into()),
        install_url: cloud_init::K3S_INSTALL_URL.into(),
        node_labels: BTreeMap::from([(LABEL_RELAY.to_string(), reservation.clone())]),
        taints: vec![format!("{LABEL_RELAY}={reservation}:NoSchedule")],
        external_cloud_provider: false,
    }
}

fn check(name: &str, inputs: &JoinInputs) {
    let rendered = cloud_init::render(inputs).expect("renders");
    assert!(rendered.len() <= MAX_USER_DATA);
    let path = fixture_dir().join(format!("{name}.yaml"));
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::create_dir_all(fixture_dir()).expect("fixture dir");
        std::fs::write(&path, &rendered).expect("write fixture");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(rendered, expected, "cloud-init for {name} differs from {}", path.display());
}

#[test]
fn a_relay_node_renders_the_expected_user_data() {
    let owner = Owner {
        namespace: "relays".into(),
        name: "eu".into(),
        uid: "6f1c2a9e-0b7d-4e55-9a33-1234567890ab".into(),
    };
    check("relay", &relay_inputs(&owner));
}

#[test]
fn a_node_with_the_hcloud_ccm_and_the_stable_channel_renders_the_expected_user_data() {
    let owner = Owner {
        namespace: "production-relays".into(),
        name: "relay.us-east.example".into(),
        uid: "0a1b2c3d-0000-4000-8000-000000000001".into(),
    };
    let inputs = JoinInputs { k3s_version: None, external_cloud_provider: true, ..relay_inputs(&owner) };
    check("relay-ccm", &inputs);
}

#[test]
fn the_fixtures_say_what_the_node_needs() {
    let text = std::fs::read_to_string(fixture_dir().join("relay.yaml")).expect("fixture");
    for needle in [
        "#cloud-config",
        "hostname: relay-eu-6f1c2a9e",
        "http://169.254.169.254/hetzner/v1/metadata/instance-id",
        "provider-id=hcloud://%s",
        "\"atrelay.dev/relay=relays.eu:NoSchedule\"",
        "permissions: \"0600\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?}");
    }
}
