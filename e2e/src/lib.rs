//! End-to-end test infrastructure: a Kubernetes control plane built from upstream
//! sources and started on loopback (`controlplane`), and a node agent that stands
//! in for the kubelet (`node_agent`).

pub mod controlplane;
pub mod hcloud_fake;
pub mod node_agent;
pub mod process;
