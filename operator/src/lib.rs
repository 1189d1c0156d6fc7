//! The Relay operator: a kube-rs controller that runs ATProto relays from `Relay`
//! custom resources.

pub mod config;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod reference;
pub mod web;

/// Errors of one reconcile. `is_spec_error` decides between a backoff retry and
/// waiting for the user (`Stalled=True`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] controller::validate::InvalidSpec),
    #[error("{field}: Secret {name:?} has no key {key:?} (or does not exist)")]
    MissingSecret { field: &'static str, name: String, key: String },
    #[error("serializing {0}: {1}")]
    Serialize(String, serde_json::Error),
}

impl Error {
    /// A short label for metrics and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApiError",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::MissingSecret { .. } => "SecretNotFound",
            Error::Serialize(..) => "SerializationError",
        }
    }

    /// Errors that only a change by the user can fix.
    pub fn needs_user(&self) -> bool {
        matches!(self, Error::InvalidSpec(_) | Error::MissingSecret { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
