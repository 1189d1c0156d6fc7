//! Pure rules that keep servers unique and owned: the deterministic server name, the
//! ownership labels, the adopt rule and the lookup order.
//!
//! Hetzner has no idempotency key; the server name (unique per project) is one, and the
//! Relay's UID in a label is the proof of ownership. A server without our UID label is
//! never adopted and never deleted, whatever its name.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::api::ServerInfo;

/// The label holding the owning Relay's `metadata.uid`: the ownership proof.
pub const LABEL_UID: &str = "atrelay.dev/relay-uid";
/// `<namespace>.<name>` of the Relay (hashed when longer than a label value may be).
pub const LABEL_RELAY: &str = "atrelay.dev/relay";
/// Marks everything this operator created.
pub const LABEL_MANAGED_BY: &str = "atrelay.dev/managed-by";
pub const MANAGED_BY: &str = "relay-operator";
/// Hetzner reserves this label prefix.
pub const RESERVED_PREFIX: &str = "hetzner.cloud/";

const MAX_NAME: usize = 63;
const PREFIX: &str = "relay-";
const UID_CHARS: usize = 8;

/// The Relay a server belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The server (and node) name: `relay-<name>-<first 8 hex of the UID>`, at most 63
/// characters, one DNS label (dots become dashes), stable for the life of the Relay and
/// different for a re-created Relay of the same name (new UID).
pub fn server_name(relay_name: &str, uid: &str) -> String {
    let uid_part: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(UID_CHARS)
        .collect::<String>()
        .to_ascii_lowercase();
    let budget = MAX_NAME - PREFIX.len() - 1 - uid_part.len();
    let base = hostname_part(relay_name, budget);
    if base.is_empty() {
        format!("{PREFIX}{uid_part}")
    } else {
        format!("{PREFIX}{base}-{uid_part}")
    }
}

/// Lowercase letters, digits and single dashes, at most `max` characters, no dash at
/// either end.
fn hostname_part(name: &str, max: usize) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    out.truncate(max);
    out.trim_end_matches('-').to_string()
}

/// Whether `name` is a valid Hetzner server name / RFC 1123 hostname label.
pub fn is_valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A label value (≤ 63, alphanumeric at both ends, `-_.` inside); a longer one keeps
/// its first 54 characters and a hash of the whole, so it stays unique and stable.
pub fn label_value(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .collect();
    let value = if cleaned.len() <= MAX_NAME {
        cleaned
    } else {
        let digest = Sha256::digest(raw.as_bytes());
        let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        format!("{}-{hash}", &cleaned[..54])
    };
    value.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The labels every server (and firewall) we create carries. User labels come first so
/// ours win on a clash; reserved `hetzner.cloud/` keys are dropped.
pub fn ownership_labels(owner: &Owner, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = extra
        .iter()
        .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_UID.into(), label_value(&owner.uid));
    labels.insert(LABEL_RELAY.into(), relay_label_value(owner));
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels
}

/// `<namespace>.<name>` as a label value: also the node label and taint value.
pub fn relay_label_value(owner: &Owner) -> String {
    label_value(&format!("{}.{}", owner.namespace, owner.name))
}

/// The selector that finds this Relay's servers: by UID only.
pub fn owner_selector(uid: &str) -> String {
    format!("{LABEL_UID}={}", label_value(uid))
}

/// The adopt rule: a server is ours only if it carries this Relay's UID label. Nothing
/// else (name, managed-by, relay name) is proof: a same-named Relay re-created, another
/// cluster or a human may own a server with a similar name.
pub fn is_owned_by(server: &ServerInfo, uid: &str) -> bool {
    server.labels.get(LABEL_UID).is_some_and(|v| *v == label_value(uid))
}

/// The order in which a Relay's server is looked for, before and after a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupStep {
    /// `status.serverId` → `GET /servers/{id}` (and the UID label is checked).
    StatusId,
    /// `GET /servers?label_selector=<uid label>`.
    LabelSelector,
    /// Only after `create_server` failed with `uniqueness_error`: `GET /servers?name=`,
    /// adopted only if it carries our UID label.
    ByNameAfterUniquenessError,
}

/// The lookup order, for code and docs alike.
pub const LOOKUP_ORDER: [LookupStep; 3] =
    [LookupStep::StatusId, LookupStep::LabelSelector, LookupStep::ByNameAfterUniquenessError];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::hetzner::api::ServerStatus;

    const UID: &str = "6f1c2a9e-0b7d-4e55-9a33-1234567890ab";

    fn server(labels: &[(&str, &str)]) -> ServerInfo {
        ServerInfo {
            id: 1,
            name: server_name("eu", UID),
            status: ServerStatus::Running,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            public_ipv4: None,
            public_ipv6: None,
            private_ips: vec![],
            location: "fsn1".into(),
            server_type: "cpx41".into(),
        }
    }

    #[test]
    fn server_names_are_stable_short_hostnames_that_change_with_the_uid() {
        assert_eq!(server_name("eu", UID), "relay-eu-6f1c2a9e");
        assert_eq!(server_name("eu", UID), server_name("eu", UID));
        assert_ne!(server_name("eu", UID), server_name("eu", "0000aaaa-0000"));
        assert_eq!(server_name("relay.eu.Main", UID), "relay-relay-eu-main-6f1c2a9e");
        let long = "a".repeat(253);
        let name = server_name(&long, UID);
        assert_eq!(name.len(), 63);
        assert!(is_valid_server_name(&name), "{name}");
        // Truncation never leaves a dash before the UID part doubled or at an end.
        let name = server_name(&format!("{}-b", "a".repeat(47)), UID);
        assert!(is_valid_server_name(&name) && !name.contains("--"), "{name}");
        assert_eq!(server_name("...", UID), "relay-6f1c2a9e");
    }

    #[test]
    fn labels_carry_the_uid_and_drop_reserved_keys() {
        let owner = Owner { namespace: "relays".into(), name: "eu".into(), uid: UID.into() };
        let extra: BTreeMap<String, String> = [
            ("team".to_string(), "infra".to_string()),
            ("hetzner.cloud/x".to_string(), "y".to_string()),
            (LABEL_UID.to_string(), "forged".to_string()),
        ]
        .into();
        let labels = ownership_labels(&owner, &extra);
        assert_eq!(labels[LABEL_UID], UID);
        assert_eq!(labels[LABEL_RELAY], "relays.eu");
        assert_eq!(labels["team"], "infra");
        assert!(!labels.contains_key("hetzner.cloud/x"));
        assert_eq!(owner_selector(UID), format!("atrelay.dev/relay-uid={UID}"));
    }

    #[test]
    fn long_label_values_are_hashed_to_63_characters() {
        let value = label_value(&"n".repeat(200));
        assert_eq!(value.len(), 63);
        assert_ne!(value, label_value(&format!("{}m", "n".repeat(199))));
    }

    #[test]
    fn only_the_uid_label_makes_a_server_ours() {
        assert!(is_owned_by(&server(&[(LABEL_UID, UID)]), UID));
        assert!(!is_owned_by(&server(&[(LABEL_UID, "another-uid")]), UID));
        // Same name, managed-by and relay labels, but no UID label: not ours.
        assert!(!is_owned_by(&server(&[(LABEL_MANAGED_BY, MANAGED_BY), (LABEL_RELAY, "relays.eu")]), UID));
    }

    #[test]
    fn the_lookup_order_is_id_then_labels_then_name() {
        assert_eq!(
            LOOKUP_ORDER,
            [LookupStep::StatusId, LookupStep::LabelSelector, LookupStep::ByNameAfterUniquenessError]
        );
    }
}
