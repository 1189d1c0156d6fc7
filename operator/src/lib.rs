//! The Relay operator: a kube-rs controller that runs ATProto relays from `Relay`
//! custom resources.

pub mod cloud;
pub mod config;
pub mod controller;
pub mod crd;
pub mod cron;
pub mod leader;
pub mod metrics;
pub mod reference;
pub mod runtime;
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

/// The stage of the reconcile pipeline an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Read,
    Validate,
    Apply,
    Status,
    Finalize,
}

impl Stage {
    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::Read => "read",
            Stage::Validate => "validate",
            Stage::Apply => "apply",
            Stage::Status => "status",
            Stage::Finalize => "finalize",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed reconcile: what went wrong, and in which stage (metrics and Events say both).
#[derive(Debug, thiserror::Error)]
#[error("{stage} stage: {error}")]
pub struct ReconcileError {
    pub stage: Stage,
    #[source]
    pub error: Error,
}

/// Tags a stage's error with the stage: `read(...).await.at(Stage::Read)?`.
pub trait AtStage<T> {
    fn at(self, stage: Stage) -> Result<T, ReconcileError>;
}

impl<T, E: Into<Error>> AtStage<T> for Result<T, E> {
    fn at(self, stage: Stage) -> Result<T, ReconcileError> {
        self.map_err(|error| ReconcileError { stage, error: error.into() })
    }
}
