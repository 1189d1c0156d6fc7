//! Machines outside the cluster: a Hetzner Cloud server per Relay (`hetzner`) and the
//! cloud-init user data that joins it to the cluster as a k3s agent (`cloud_init`).
//!
//! These are building blocks with no Kubernetes types in them: the reconcile decides when
//! to call them, they decide how to talk to the provider safely (one rate budget, no
//! duplicate servers, nothing deleted that is not ours).

pub mod cloud_init;
pub mod hetzner;
