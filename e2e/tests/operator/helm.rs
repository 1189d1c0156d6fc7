//! The Helm step: `helm install` of config/helm/relay-operator into the real control plane,
//! a Relay going Ready under the operator it installed, then `helm uninstall`.
//!
//! The chart's operator runs in a namespace of its own (`relay-helm`) and watches only
//! `helm-relays` (`watchNamespace`). The suite's operator watches every namespace, so it
//! would reconcile that Relay too; it is scaled to zero for the step and back afterwards,
//! which also proves the Relay went Ready under the chart's operator alone. The CRD and the
//! aggregated `relay-editor`/`relay-viewer` roles already exist (installed by kustomize at
//! the start of the suite, owned by it), so the chart is told not to install them; every
//! other object (namespace-scoped and its own ClusterRole, named after the release) is the
//! chart's. The operator pod runs through the node agent like any other: from the operator
//! image archive when `E2E_OPERATOR_IMAGE_ARCHIVE` is set, else the binary.
//!
//! `helm` is the cached build of scripts/lib/helm.sh (the one `scripts/check-helm.sh`
//! uses), built here when missing; when it cannot be built the step fails under CI and is
//! skipped with a loud message elsewhere.

use super::*;

const RELEASE: &str = "relay-helm";
const RELEASE_NS: &str = "relay-helm";
const WATCHED_NS: &str = "helm-relays";
const HELM_RELAY: &str = "via-helm";

/// The cached helm binary, built by scripts/lib/helm.sh when missing (minutes, once).
async fn helm_binary(env: &Env) -> anyhow::Result<Option<PathBuf>> {
    let output = tokio::process::Command::new(env.repo.join("scripts/lib/helm.sh"))
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("running scripts/lib/helm.sh")?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if output.status.success() && path.is_file() {
        return Ok(Some(path));
    }
    if std::env::var_os("CI").is_some() {
        bail!("scripts/lib/helm.sh could not build helm, which CI requires");
    }
    println!(
        "   !!! SKIPPED: helm could not be built (scripts/lib/helm.sh needs Go); the chart was NOT installed"
    );
    Ok(None)
}

async fn helm(env: &Env, helm: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(helm)
        .args(args)
        .env("KUBECONFIG", &env.kubeconfig)
        .current_dir(&env.repo)
        .output()
        .await
        .context("running helm")?;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        bail!("helm {} failed: {}{stdout}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(stdout)
}

/// Scales the suite's operator and waits until it has that many ready pods (zero: none left).
async fn scale_suite_operator(env: &Env, replicas: u32) -> anyhow::Result<()> {
    let count = format!("--replicas={replicas}");
    env.kubectl(&["scale", "deployment/relay-operator", "-n", OPERATOR_NS, &count]).await?;
    if replicas > 0 {
        env.kubectl(&["-n", OPERATOR_NS, "rollout", "status", "deployment/relay-operator", "--timeout=120s"])
            .await?;
        return Ok(());
    }
    eventually("the suite's operator pods to be gone", Duration::from_secs(60), || async {
        Ok(env.operator_pods().await?.is_empty().then_some(()))
    })
    .await
}

pub(super) async fn helm_install(env: &mut Env) -> anyhow::Result<()> {
    let Some(helm_bin) = helm_binary(env).await? else { return Ok(()) };
    let plc = env.sim.as_ref().map(|sim| sim.plc_url()).ok_or_else(|| anyhow!("no simulated network"))?;
    scale_suite_operator(env, 0).await?;
    // The chart grants the operator its rights in the watched namespace, which must exist.
    env.kubectl(&["create", "namespace", WATCHED_NS]).await?;
    let watch = format!("watchNamespace={WATCHED_NS}");
    let log = "logLevel=info\\,kube=warn";
    helm(
        env,
        &helm_bin,
        &[
            "install",
            RELEASE,
            "config/helm/relay-operator",
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
            "--set",
            "crds.install=false",
            "--set",
            "rbac.aggregatedRoles=false",
            "--set",
            &watch,
            "--set",
            log,
            "--wait",
            "--timeout",
            "180s",
        ],
    )
    .await?;
    let listed = helm(env, &helm_bin, &["list", "--namespace", RELEASE_NS, "--output", "json"]).await?;
    let releases: Value = serde_json::from_str(&listed)?;
    if !releases
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["name"] == RELEASE && r["status"] == "deployed"))
    {
        bail!("helm list does not show {RELEASE} deployed: {listed}");
    }
    let deployment = env.kubectl(&["get", "deployment", "-n", RELEASE_NS, "-o", "json"]).await?;
    if !deployment.contains(&format!("\"value\": \"{WATCHED_NS}\"")) {
        bail!("the chart's operator Deployment does not set WATCH_NAMESPACE={WATCHED_NS}");
    }

    let manifest = format!(
        "apiVersion: atrelay.dev/v1alpha1\nkind: Relay\nmetadata:\n  name: {HELM_RELAY}\n  namespace: {WATCHED_NS}\nspec:\n  \
         image: ghcr.io/atrelay/relay:0.1.0\n  upstream: {{host: \"\", plcDirectory: \"{plc}\"}}\n  \
         tunables: {{allowInsecureHosts: true}}\n  monitoring: {{serviceMonitor: false}}\n"
    );
    env.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest)).await?;
    let relay = format!("relay/{HELM_RELAY}");
    env.kubectl(&["wait", "-n", WATCHED_NS, "--for=condition=Ready", &relay, "--timeout=120s"]).await?;
    // Ready was written by the chart's operator: the suite's is at zero replicas.
    let status =
        env.kubectl(&["get", "-n", WATCHED_NS, &relay, "-o", "json", "--show-managed-fields"]).await?;
    let status: Value = serde_json::from_str(&status)?;
    let managers: Vec<&str> = status["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["subresource"] == "status")
        .filter_map(|f| f["manager"].as_str())
        .collect();
    if !managers.contains(&"relay-operator") {
        bail!("no status written by the relay operator: {managers:?}");
    }
    println!("   {RELEASE} installed in {RELEASE_NS}; Relay {WATCHED_NS}/{HELM_RELAY} Ready under it");

    env.kubectl(&["delete", "-n", WATCHED_NS, &relay, "--wait=true", "--timeout=60s"]).await?;
    helm(env, &helm_bin, &["uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait", "--timeout", "120s"])
        .await?;
    let left =
        env.kubectl(&["get", "deployment,serviceaccount,role", "-n", RELEASE_NS, "-o", "name"]).await?;
    let left: Vec<&str> = left.lines().filter(|l| !l.ends_with("/default")).collect();
    if !left.is_empty() {
        bail!("helm uninstall left {left:?} in {RELEASE_NS}");
    }
    env.kubectl(&["delete", "namespace", WATCHED_NS, "--wait=false"]).await?;
    scale_suite_operator(env, 1).await
}
