//! `test-node-agent`: a kubelet stand-in for e2e tests (see `relay_e2e::node_agent`).

use clap::Parser;
use relay_e2e::node_agent::{self, AgentConfig};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Registers a Node and runs its pods as local processes on loopback addresses")]
struct Args {
    /// kubeconfig of a user allowed to manage nodes, pods, volumes and tokens.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    #[arg(long, default_value = "e2e-node-1")]
    node_name: String,
    /// Directory for pod volumes, logs and service-account files.
    #[arg(long)]
    work_dir: PathBuf,
    /// IMAGE_PREFIX=BINARY: pods whose image starts with the prefix run the binary.
    #[arg(long = "image", value_parser = parse_image)]
    images: Vec<(String, PathBuf)>,
    /// Pod IPs are 127.SUBNET.0.N.
    #[arg(long, default_value_t = 1)]
    subnet: u8,
    #[arg(long, default_value = "8")]
    cpu: String,
    #[arg(long, default_value = "32Gi")]
    memory: String,
}

fn parse_image(text: &str) -> Result<(String, PathBuf), String> {
    let (prefix, binary) = text.split_once('=').ok_or("expected IMAGE_PREFIX=BINARY")?;
    Ok((prefix.to_string(), PathBuf::from(binary)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)?;
    let cluster = kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| anyhow::anyhow!("kubeconfig has no cluster"))?;
    let api_server = cluster.server.clone().unwrap_or_default();
    std::fs::create_dir_all(&args.work_dir)?;
    let ca_file = args.work_dir.join("cluster-ca.crt");
    match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
        (Some(data), _) => {
            use base64::Engine;
            std::fs::write(&ca_file, base64::engine::general_purpose::STANDARD.decode(data.trim())?)?;
        }
        (None, Some(path)) => {
            std::fs::copy(path, &ca_file)?;
        }
        (None, None) => anyhow::bail!("kubeconfig cluster has no CA"),
    }
    let client = relay_e2e::controlplane::client_from_kubeconfig(&args.kubeconfig).await?;
    let config = AgentConfig {
        node_name: args.node_name,
        work_dir: args.work_dir,
        images: args.images,
        api_server,
        ca_file,
        subnet: args.subnet,
        cpu: args.cpu,
        memory: args.memory,
    };
    node_agent::run(client, config).await
}
