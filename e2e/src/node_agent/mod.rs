//! A test node agent standing in for the kubelet, so pods on a control plane
//! without kubelets get a truthful status.
//!
//! It registers a Node (and keeps its Lease fresh), provisions host-directory
//! PersistentVolumes for pending claims, and for each pod bound to it:
//! - containers whose image maps to a local binary run as real processes, on a
//!   loopback address of their own (the pod IP, in 127.0.0.0/8); listen addresses
//!   `0.0.0.0:PORT` in args and env become `POD_IP:PORT`, and volume mount paths
//!   in args and env become host directories (there is no mount namespace);
//! - a projected service-account token volume gets a real token from the
//!   TokenRequest API, handed to the process as `KUBECONFIG` (the process cannot
//!   read `/var/run/secrets/...` here);
//! - startup, liveness and readiness HTTP probes run against the process, and
//!   the pod is Ready only while its readiness probe passes; exited or unhealthy
//!   containers restart with backoff (restartPolicy Always);
//! - containers whose image maps to an OCI image archive (`NAME.oci.tar`) run the image's
//!   entrypoint as its config says (user, env, workdir), chrooted into the unpacked image
//!   with a read-only root and the pod's volumes bind-mounted at their paths (`oci`);
//! - containers with no local binary are reported `Waiting` (`ImageNotRunnable`),
//!   never as running;
//! - a deleted pod's processes get SIGTERM, then SIGKILL after the grace period,
//!   and the pod is removed (what the kubelet does).
//!
//! One file per concern: `node` (registration, heartbeat), `volumes`, `pods` (admission,
//! sync, status), `processes`, `probes`, `env` (env and downward-API resolution) and
//! `rewrite` (listen addresses and mount paths), `services` (Service names).

mod env;
mod node;
mod oci;
mod pods;
mod probes;
mod processes;
mod rewrite;
mod services;
mod volumes;

pub use rewrite::rewrite;

use kube::Client;
use pods::Agent;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tracing::{info, warn};

/// Settings of one agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub work_dir: PathBuf,
    /// Image reference prefixes and the local binaries (or OCI image archives,
    /// `*.tar`) that run them.
    pub images: Vec<(String, PathBuf)>,
    /// API server URL and CA, written into kubeconfigs for service-account tokens.
    pub api_server: String,
    pub ca_file: PathBuf,
    /// Pod IPs are `127.<subnet>.<n>`.
    pub subnet: u8,
    pub cpu: String,
    pub memory: String,
}

pub async fn run(client: Client, config: AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.work_dir)?;
    node::register_node(&client, &config).await?;
    info!(node = %config.node_name, "node registered");
    tokio::spawn(node::heartbeat(client.clone(), config.clone()));
    tokio::spawn(volumes::provision_volumes(client.clone(), config.clone()));
    let mut agent = Agent { client, config, pods: HashMap::new(), next_ip: 2 };
    loop {
        if let Err(error) = agent.sync().await {
            warn!(%error, "pod sync failed");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
