//! Test helpers: Relays from YAML fixtures, with the identity the API server would add.

use crate::crd::Relay;

pub fn relay_from_yaml(yaml: &str) -> Relay {
    let mut relay: Relay = serde_saphyr::from_str(yaml).expect("fixture parses as a Relay");
    relay.metadata.namespace.get_or_insert_with(|| "relays".into());
    relay.metadata.uid.get_or_insert_with(|| "0b6f3a8e-5f43-4d0e-9c39-5a7f1d2e3c4b".into());
    relay.metadata.generation.get_or_insert(1);
    relay
}
