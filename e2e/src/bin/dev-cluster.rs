//! `dev-cluster`: the operator's try-it-locally command (run through `scripts/dev-cluster.sh`).
//! Starts the real control plane of the e2e suite on loopback, the test node agent (pods run
//! as local processes), installs the CRD and the operator with `kubectl apply -k
//! config/default`, starts a simulated PDS fleet and PLC (`relay simulate`), writes a Relay
//! manifest that points at them, prints a KUBECONFIG and the next commands, and keeps
//! everything running until Ctrl-C.

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use relay_e2e::controlplane::{build_control_plane, ControlPlane};
use relay_e2e::process::Managed;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "A local Kubernetes control plane with the relay operator and a simulated PDS fleet")]
struct Args {
    /// Where the cluster's state, pod volumes and logs go (emptied first).
    #[arg(long, default_value = "/tmp/relay-dev-cluster")]
    work_dir: PathBuf,
    /// The control plane binaries (KUBEBUILDER_ASSETS layout); built by
    /// e2e/controlplane/build.sh when not given.
    #[arg(long, env = "KUBEBUILDER_ASSETS")]
    assets: Option<PathBuf>,
    /// Simulated PDS hosts.
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// Commits per second across the simulated hosts.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
}

/// The Relay the printed commands create (its pod serves the firehose at its pod IP).
const RELAY_NAME: &str = "dev";
const NAMESPACE: &str = "default";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let repo = repo_root()?;
    let bin_dir =
        std::env::current_exe()?.parent().map(Path::to_path_buf).ok_or_else(|| anyhow!("no bin dir"))?;
    let (relay_bin, operator_bin, agent_bin) =
        (bin_dir.join("relay"), bin_dir.join("relay-operator"), bin_dir.join("test-node-agent"));
    for binary in [&relay_bin, &operator_bin, &agent_bin] {
        if !binary.is_file() {
            bail!("{} is missing: run scripts/dev-cluster.sh (it builds them)", binary.display());
        }
    }
    let assets = match args.assets.clone() {
        Some(assets) => assets,
        None => {
            progress("building the control plane from its Go modules (cached after the first time)");
            build_control_plane(&repo)?
        }
    };
    let _ = std::fs::remove_dir_all(&args.work_dir);
    std::fs::create_dir_all(&args.work_dir)?;
    let work = args.work_dir.canonicalize()?;

    progress("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler");
    let plane = ControlPlane::start(&assets, &work.join("control-plane")).await?;
    let kubectl =
        if assets.join("kubectl").is_file() { assets.join("kubectl") } else { PathBuf::from("kubectl") };
    let kubeconfig = plane.kubeconfig.clone();

    progress("starting the test node agent (pods run as local processes on 127.x addresses)");
    let mut agent = Command::new(&agent_bin);
    agent
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--work-dir={}", work.join("node").display()))
        .arg(format!("--image=ghcr.io/atrelay/relay-operator:={}", operator_bin.display()))
        .arg(format!("--image=ghcr.io/atrelay/relay:={}", relay_bin.display()))
        .arg("--subnet=200")
        .env("RUST_LOG", "info");
    let agent = Managed::spawn("test-node-agent", agent, &work.join("node-agent.log"))?;

    progress("installing the CRD and the operator (kubectl apply -k config/default)");
    let run = |args: &[&str]| run_kubectl(&kubectl, &kubeconfig, &repo, args);
    run(&["apply", "-k", "config/default"])?;
    run(&["wait", "--for=condition=Established", "crd/relays.atrelay.dev", "--timeout=60s"])?;
    run(&[
        "-n",
        "relay-operator-system",
        "rollout",
        "status",
        "deployment/relay-operator",
        "--timeout=180s",
    ])?;

    progress("starting a simulated PDS fleet and PLC directory (relay simulate)");
    let (sim, plc, hosts) = start_simulation(&relay_bin, &work, &args)?;
    let manifest = work.join("dev-relay.yaml");
    std::fs::write(&manifest, relay_manifest(&plc))?;
    print_next_steps(&kubeconfig, &kubectl, &manifest, &relay_bin, &hosts);

    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    // The node agent first, while the API server is still up: it stops the pods it runs.
    progress("stopping the node agent and its pods, the simulated fleet, the control plane");
    drop(agent);
    drop(sim);
    drop(plane);
    Ok(())
}

fn progress(message: &str) {
    eprintln!("==> {message}");
}

fn repo_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).ok_or_else(|| anyhow!("no repository root"))
}

fn run_kubectl(kubectl: &Path, kubeconfig: &Path, repo: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(kubectl)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .current_dir(repo)
        .output()
        .with_context(|| format!("running {}", kubectl.display()))?;
    if !output.status.success() {
        bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// Starts `relay simulate` and reads the PLC and host URLs it prints.
fn start_simulation(
    relay_bin: &Path,
    work: &Path,
    args: &Args,
) -> anyhow::Result<(Managed, String, Vec<String>)> {
    let log = work.join("simulate.log");
    let mut command = Command::new(relay_bin);
    command
        .args(["simulate", "--bind", "127.0.0.1"])
        .arg(format!("--hosts={}", args.hosts))
        .arg(format!("--rate={}", args.rate));
    let sim = Managed::spawn("relay simulate", command, &log)?;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let plc = text.lines().find_map(|l| l.strip_prefix("PLC directory: ")).map(str::to_string);
        let hosts: Vec<String> =
            text.lines().filter_map(|l| l.strip_prefix("PDS host: ")).map(str::to_string).collect();
        if let Some(plc) = plc {
            if hosts.len() == args.hosts {
                return Ok((sim, plc, hosts));
            }
        }
        if Instant::now() > until {
            bail!("relay simulate did not print its URLs within 30 s; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Relay that resolves identities at the simulated PLC and accepts loopback hosts.
fn relay_manifest(plc: &str) -> String {
    format!(
        "apiVersion: atrelay.dev/v1alpha1\nkind: Relay\nmetadata:\n  name: {RELAY_NAME}\n  namespace: {NAMESPACE}\nspec:\n  image: ghcr.io/atrelay/relay:0.1.0\n  upstream:\n    host: \"\"\n    plcDirectory: {plc}\n  tunables:\n    allowInsecureHosts: true\n"
    )
}

fn print_next_steps(kubeconfig: &Path, kubectl: &Path, manifest: &Path, relay_bin: &Path, hosts: &[String]) {
    let crawl: Vec<String> = hosts
        .iter()
        .map(|host| {
            format!(
                "  {} admin --url http://$POD_IP:2471 --token \"$TOKEN\" hosts request-crawl {host}",
                relay_bin.display()
            )
        })
        .collect();
    println!(
        r#"
The cluster is up. In another terminal:

  export KUBECONFIG={kubeconfig}
  alias kubectl={kubectl}
  kubectl apply -f {manifest}          # a Relay wired to the simulated PLC
  kubectl get relays -w                   # Ready once it relays; Ctrl-C to stop watching

Point the relay at the simulated PDS hosts (its admin API listens on the pod IP):

  POD_IP=$(kubectl get pod {RELAY_NAME}-0 -o jsonpath='{{.status.podIP}}')
  TOKEN=$(kubectl get secret {RELAY_NAME}-admin -o jsonpath='{{.data.token}}' | base64 -d)
{crawl}

Read the firehose (any WebSocket client), e.g.:

  {relay} coverage firehose --relay ws://$POD_IP:2470 --relay ws://$POD_IP:2470 --window 10s

Logs are under the work directory (control-plane/, node/, node-agent.log, simulate.log).
Stop everything with Ctrl-C here."#,
        kubeconfig = kubeconfig.display(),
        kubectl = kubectl.display(),
        manifest = manifest.display(),
        relay = relay_bin.display(),
        crawl = crawl.join("\n"),
    );
}
