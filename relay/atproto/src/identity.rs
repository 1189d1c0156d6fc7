//! DID documents: pulling out what a relay needs (signing key, PDS endpoint, handle).

use crate::crypto::{KeyError, PublicKey};
use crate::syntax;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("DID document is not valid JSON: {0}")]
    Json(String),
    #[error("DID document id {found:?} does not match the DID {expected:?}")]
    IdMismatch { expected: String, found: String },
    #[error("the #atproto key is unusable: {0}")]
    BadKey(KeyError),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    id: String,
    #[serde(default)]
    also_known_as: Vec<String>,
    #[serde(default)]
    verification_method: Vec<RawVerificationMethod>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawVerificationMethod {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    controller: Option<String>,
    #[serde(default)]
    public_key_multibase: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawService {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    service_endpoint: serde_json::Value,
}

/// What a relay knows about an account's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub did: String,
    /// The first `at://` handle claimed by the document (not verified bidirectionally).
    pub handle: Option<String>,
    /// The `#atproto` signing key; `None` means the account cannot publish commits.
    pub signing_key: Option<PublicKey>,
    /// The `#atproto_pds` endpoint, scheme + host (+ port).
    pub pds_endpoint: Option<String>,
    /// `pds_endpoint`'s host, worked out once: every event's host check compares against it,
    /// and parsing the URL per event was measurable at saturation.
    pds_host: Option<String>,
}

impl Identity {
    pub fn new(
        did: String,
        handle: Option<String>,
        signing_key: Option<PublicKey>,
        pds_endpoint: Option<String>,
    ) -> Identity {
        let pds_host = pds_endpoint.as_deref().and_then(host_of_endpoint);
        Identity { did, handle, signing_key, pds_endpoint, pds_host }
    }

    /// The PDS hostname (with port when not default), as relays name hosts.
    pub fn pds_host(&self) -> Option<&str> {
        self.pds_host.as_deref()
    }
}

fn host_of_endpoint(endpoint: &str) -> Option<String> {
    let url = url::Url::parse(endpoint).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

fn matches_fragment(id: &str, did: &str, fragment: &str) -> bool {
    id == fragment || id.strip_prefix(did).is_some_and(|rest| rest == fragment)
}

/// Parses a DID document for `did`, taking the first `#atproto` key and first `#atproto_pds` service.
pub fn parse_document(did: &str, json: &[u8]) -> Result<Identity, DocError> {
    let raw: RawDocument = serde_json::from_slice(json).map_err(|e| DocError::Json(e.to_string()))?;
    if raw.id != did {
        return Err(DocError::IdMismatch { expected: did.to_string(), found: raw.id });
    }
    let handle = raw
        .also_known_as
        .iter()
        .filter_map(|aka| aka.strip_prefix("at://"))
        .find(|h| syntax::validate_handle(h).is_ok())
        .map(|h| h.to_ascii_lowercase());
    let signing_key =
        match raw.verification_method.iter().find(|vm| matches_fragment(&vm.id, did, "#atproto")) {
            Some(vm) => Some(key_from_method(did, vm)?),
            None => None,
        };
    let pds_endpoint = raw
        .service
        .iter()
        .find(|s| matches_fragment(&s.id, did, "#atproto_pds") && s.kind == "AtprotoPersonalDataServer")
        .and_then(|s| s.service_endpoint.as_str())
        .and_then(normalise_endpoint);
    Ok(Identity::new(did.to_string(), handle, signing_key, pds_endpoint))
}

fn key_from_method(did: &str, vm: &RawVerificationMethod) -> Result<PublicKey, DocError> {
    if vm.controller.as_deref().is_some_and(|c| c != did) {
        return Err(DocError::BadKey(KeyError::UnsupportedType));
    }
    let multibase = vm.public_key_multibase.as_deref().ok_or(DocError::BadKey(KeyError::NotBase58btc))?;
    let key = match vm.kind.as_str() {
        "Multikey" => PublicKey::from_multikey(multibase),
        legacy => PublicKey::from_legacy(legacy, multibase),
    };
    key.map_err(DocError::BadKey)
}

/// A PDS endpoint must be an http(s) URL of scheme, host and optional port only.
fn normalise_endpoint(endpoint: &str) -> Option<String> {
    let url = url::Url::parse(endpoint).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    if !(url.path() == "/" || url.path().is_empty()) || url.query().is_some() || url.fragment().is_some() {
        return None;
    }
    let mut out = format!("{}://{}", url.scheme(), url.host_str()?);
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    Some(out)
}

/// Builds a minimal valid DID document (the simulator's PLC and tests serve these).
pub fn build_document(did: &str, handle: &str, key: &PublicKey, pds_endpoint: &str) -> serde_json::Value {
    serde_json::json!({
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "alsoKnownAs": [format!("at://{handle}")],
        "verificationMethod": [{
            "id": format!("{did}#atproto"),
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": key.to_multikey(),
        }],
        "service": [{
            "id": "#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": pds_endpoint,
        }],
    })
}
