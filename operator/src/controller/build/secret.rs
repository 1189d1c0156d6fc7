//! The generated admin Secret (only when the user names none).

use super::{admin_secret_name, owned_meta, GENERATED_TOKEN_KEY};
use crate::controller::validate::ValidatedRelay;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use std::collections::BTreeMap;

pub fn admin_secret(relay: &ValidatedRelay, token: &str) -> Secret {
    Secret {
        metadata: owned_meta(relay, admin_secret_name(&relay.name)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(GENERATED_TOKEN_KEY.into(), ByteString(token.as_bytes().to_vec()))])),
        ..Secret::default()
    }
}

/// A new random admin token: 32 bytes from the OS generator, base64url.
pub fn generate_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random generator is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
