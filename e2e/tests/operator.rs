//! End-to-end suite of the operator against a real control plane (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler built from upstream
//! sources) with the test node agent running relay and operator pods as local
//! processes. One control plane serves every step; steps run in order and the
//! suite stops at the first failure. A table of step timings is printed.
//!
//! Needs: `cargo build -p relay -p relay-operator` (the binaries the pods run) and
//! the control-plane binaries (`e2e/controlplane/build.sh`, or `KUBEBUILDER_ASSETS`).
//! Set `E2E_KEEP=1` to keep the work directory (logs of every component and pod).

use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Client, ResourceExt};
use relay::simulate::{SimulateConfig, Simulation};
use relay_e2e::controlplane::{build_control_plane, ControlPlane};
use relay_e2e::process::{tail, Managed};
use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "operator/coverage.rs"]
mod coverage;
#[path = "operator/expose.rs"]
mod expose;
#[path = "operator/helm.rs"]
mod helm;
#[path = "operator/hetzner.rs"]
mod hetzner;
#[path = "operator/upgrade.rs"]
mod upgrade;

const NS: &str = "e2e";
const OPERATOR_NS: &str = "relay-operator-system";
const RELAY: &str = "relay";
/// The test node agent's node (its default name).
const NODE: &str = "e2e-node-1";
/// `OPERATOR_RUNTIME_INTERVAL` in the suite (60 s by default): short, so several samples
/// and the write bound fit in a few minutes.
const RUNTIME_INTERVAL: Duration = Duration::from_secs(10);

struct Env {
    repo: PathBuf,
    work: PathBuf,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    client: Client,
    sim: Option<Arc<Simulation>>,
    plane: ControlPlane,
    _agent: Managed,
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let started = Instant::now();
        let mut env = match Env::setup().await {
            Ok(env) => env,
            Err(error) => {
                eprintln!("e2e setup failed: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        println!("control plane and node agent up in {:.1}s", started.elapsed().as_secs_f64());
        let ok = run_steps(&mut env).await;
        if !ok {
            eprintln!("{}", env.plane.logs_tail(30));
            eprintln!("--- test node agent ---\n{}", tail(&env.work.join("node-agent.log"), 60));
            for pod_log in pod_logs(&env.work.join("node/pods")) {
                eprintln!("--- {} ---\n{}", pod_log.display(), tail(&pod_log, 30));
            }
        }
        if std::env::var_os("E2E_KEEP").is_some() || !ok {
            println!("work directory kept: {}", env.work.display());
        } else {
            let work = env.work.clone();
            drop(env);
            let _ = std::fs::remove_dir_all(work);
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

async fn run_steps(env: &mut Env) -> bool {
    let mut results: Vec<(&str, Result<Duration, String>)> = Vec::new();
    // E2E_ONLY=<text>: the install step and the steps whose names contain <text> (for
    // working on one step; a partial run says so and passes if those steps pass).
    let only = std::env::var("E2E_ONLY").ok();
    // Several texts may be given, separated by `|`.
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|text| name.starts_with("install") || text.split('|').any(|t| name.contains(t)))
    };
    macro_rules! step {
        ($name:expr, $body:expr) => {
            if !wanted($name) {
                println!("== {} (skipped: E2E_ONLY)", $name);
            } else if results.iter().all(|(_, r)| r.is_ok()) {
                println!("== {}", $name);
                let started = Instant::now();
                let outcome =
                    $body.await.map(|_| started.elapsed()).map_err(|e: anyhow::Error| format!("{e:#}"));
                if let Err(message) = &outcome {
                    println!("   FAILED: {message}");
                }
                results.push(($name, outcome));
            }
        };
    }
    step!("install the operator with kubectl apply -k config/default", install(env));
    step!("the API server rejects invalid Relays with the CEL messages", invalid_specs_rejected(env));
    step!(
        "examples/minimal.yaml: objects created; Ready (serving) while CaughtUp=False (no upstream)",
        example_not_ready(env)
    );
    step!(
        "a spec change rolls the StatefulSet; kubectl wait --for=condition=Ready succeeds",
        spec_change_ready(env)
    );
    step!("the relay pod serves the simulated network", relay_serves(env));
    step!(
        "status.runtime (hosts, events/s, last seq, node) and CaughtUp=True from the relay",
        runtime_status(env)
    );
    step!(
        "a Postgres Relay: Stalled while its URL Secret is missing, Ready once it exists",
        postgres_relay(env)
    );
    step!("a Relay naming a missing admin Secret is Stalled", missing_admin_secret(env));
    step!("kubectl get relays prints the fleet columns", printer_columns(env));
    step!("a ServiceMonitor is created when the prometheus-operator CRD exists", service_monitor(env));
    step!("an unchanged Relay causes zero writes (re-reconcile and operator restart)", zero_writes(env));
    step!("an idle relay's status is written at most once per runtime interval", runtime_write_bound(env));
    step!("the operator restarted mid-reconcile converges", restart_mid_reconcile(env));
    step!("stopped and reconciliationPaused switches", stop_and_pause(env));
    step!("two operator replicas: exactly one leader", leader_election(env));
    step!("hand edits of owned fields are reverted (StatefulSet image, Service port)", drift_repaired(env));
    step!(
        "objects of a feature turned off are pruned (ServiceMonitor, generated Secret)",
        orphans_pruned(env)
    );
    step!("a malformed Relay object does not stop the others", malformed_relay_skipped(env));
    step!(
        "coverage: three Relays compared by their CronJobs; the lagging one is Degraded",
        coverage::coverage_fleet(env)
    );
    step!(
        "spec.expose: the Ingress as stored, the public URL in status, a LoadBalancer instead, pruned",
        expose::expose(env)
    );
    step!(
        "hetzner: one server per Relay, adopted after an operator crash, its Node joins, the relay runs there",
        hetzner::hetzner_create_adopt_join(env)
    );
    step!(
        "hetzner: steady state costs no calls; 429 storms and 5xx in create and delete converge",
        hetzner::hetzner_steady_state_and_faults(env)
    );
    step!(
        "hetzner: deleting the Relay drains the node, deletes server and Node",
        hetzner::hetzner_delete(env)
    );
    step!(
        "an image upgrade: a firehose consumer reconnects with its cursor, no gap, no duplicate",
        upgrade::upgrade_keeps_consumers_place(env)
    );
    step!(
        "helm install of config/helm/relay-operator: a Relay goes Ready under it; helm uninstall",
        helm::helm_install(env)
    );
    step!("deleting the Relay garbage-collects everything", delete_collects(env));
    step!("the Argo CD health check reads this run's Relays as their names say", argocd_health(env));

    println!("\n{:<80} {:>9}", "step", "result");
    for (name, result) in &results {
        match result {
            Ok(duration) => println!("{name:<80} {:>8.1}s", duration.as_secs_f64()),
            Err(_) => println!("{name:<80} {:>9}", "FAILED"),
        }
    }
    (only.is_some() || results.len() == 27) && results.iter().all(|(_, r)| r.is_ok())
}

impl Env {
    async fn setup() -> anyhow::Result<Env> {
        let repo = manifest_dir().parent().ok_or_else(|| anyhow!("no repo root"))?.to_path_buf();
        let bin_dir = binary_dir()?;
        let relay_bin = bin_dir.join("relay");
        let operator_bin = bin_dir.join("relay-operator");
        for binary in [&relay_bin, &operator_bin] {
            if !binary.is_file() {
                bail!("{} is missing: run `cargo build -p relay -p relay-operator` first", binary.display());
            }
        }
        let relay_image = image_or_binary("E2E_RELAY_IMAGE_ARCHIVE", "relay", &relay_bin)?;
        let operator_image = image_or_binary("E2E_OPERATOR_IMAGE_ARCHIVE", "operator", &operator_bin)?;
        let assets = match std::env::var_os("KUBEBUILDER_ASSETS") {
            Some(dir) => PathBuf::from(dir),
            None => build_control_plane(&repo)?,
        };
        let work = std::env::temp_dir().join(format!("relay-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        let plane = ControlPlane::start(&assets, &work.join("control-plane")).await?;
        let kubectl =
            if assets.join("kubectl").is_file() { assets.join("kubectl") } else { PathBuf::from("kubectl") };
        let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_test-node-agent"));
        agent
            .arg(format!("--kubeconfig={}", plane.kubeconfig.display()))
            .arg(format!("--work-dir={}", work.join("node").display()))
            .arg(format!("--image=ghcr.io/atrelay/relay-operator:={}", operator_image.display()))
            .arg(format!("--image=ghcr.io/atrelay/relay:={}", relay_image.display()))
            // A pod-IP range of its own, so two suites on one machine do not collide.
            .arg(format!("--subnet={}", 2 + std::process::id() % 250))
            .env("RUST_LOG", "info");
        let agent = Managed::spawn("test-node-agent", agent, &work.join("node-agent.log"))?;
        let client = plane.client().await?;
        Ok(Env {
            repo,
            work,
            kubectl,
            kubeconfig: plane.kubeconfig.clone(),
            client,
            sim: None,
            plane,
            _agent: agent,
        })
    }

    /// Runs kubectl; returns stdout, or an error with stderr.
    async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_stdin(args, None).await
    }

    async fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(&self.repo)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl")?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await?;
        }
        let output = child.wait_with_output().await?;
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        if !output.status.success() {
            bail!("kubectl {} failed: {}{}", args.join(" "), String::from_utf8_lossy(&output.stderr), stdout);
        }
        Ok(stdout)
    }

    fn relays(&self) -> Api<DynamicObject> {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("atrelay.dev", "v1alpha1", "Relay"));
        Api::namespaced_with(self.client.clone(), NS, &resource)
    }

    async fn relay(&self) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(self.relays().get(RELAY).await?)?)
    }

    async fn statefulset(&self) -> anyhow::Result<StatefulSet> {
        Ok(Api::<StatefulSet>::namespaced(self.client.clone(), NS).get(RELAY).await?)
    }

    async fn pod(&self, name: &str, namespace: &str) -> anyhow::Result<Option<Pod>> {
        Ok(Api::<Pod>::namespaced(self.client.clone(), namespace).get_opt(name).await?)
    }

    async fn operator_pods(&self) -> anyhow::Result<Vec<Pod>> {
        let pods = Api::<Pod>::namespaced(self.client.clone(), OPERATOR_NS)
            .list(&ListParams::default().labels("app.kubernetes.io/name=relay-operator"))
            .await?;
        Ok(pods.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect())
    }

    /// Metrics of every running operator pod, scraped at its pod IP.
    async fn operator_metrics(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for pod in self.operator_pods().await? {
            let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else { continue };
            let body = reqwest::get(format!("http://{ip}:8081/metrics")).await?.text().await?;
            out.push((pod.name_any(), body));
        }
        Ok(out)
    }

    async fn admin_token(&self) -> anyhow::Result<String> {
        let secret =
            Api::<Secret>::namespaced(self.client.clone(), NS).get(&format!("{RELAY}-admin")).await?;
        let bytes =
            secret.data.and_then(|d| d.get("token").cloned()).ok_or_else(|| anyhow!("no token key"))?;
        Ok(String::from_utf8(bytes.0)?)
    }
}

/// Where cargo put the workspace binaries (target/<profile>), from this test's path.
fn binary_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().ok_or_else(|| anyhow!("test binary has no directory"))?;
    Ok(deps.parent().unwrap_or(deps).to_path_buf())
}

/// What the node agent runs for an image: the OCI archive named by `variable` (the image
/// scripts/test.sh built in this run, so what ships is what is tested), else the host binary,
/// said once so a run of binaries is never mistaken for a run of the images.
fn image_or_binary(variable: &str, what: &str, binary: &Path) -> anyhow::Result<PathBuf> {
    match std::env::var_os(variable).filter(|v| !v.is_empty()) {
        Some(archive) => {
            let archive = PathBuf::from(archive);
            if !archive.is_file() {
                bail!("{variable}={} does not exist (scripts/build-images.sh builds it)", archive.display());
            }
            println!("{what} pods run from the image archive {}", archive.display());
            Ok(archive)
        }
        None => {
            println!("{what} pods run the host binary {} ({variable} is not set)", binary.display());
            Ok(binary.to_path_buf())
        }
    }
}

fn pod_logs(dir: &Path) -> Vec<PathBuf> {
    let mut logs = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(entry.path()).into_iter().flatten().flatten() {
            if file.path().extension().is_some_and(|e| e == "log") {
                logs.push(file.path());
            }
        }
    }
    logs
}

/// Polls `check` until it returns `Ok(Some(value))`; the last error or `None` is reported on timeout.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition never held");
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last = format!("{error:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn condition<'a>(relay: &'a Value, type_: &str) -> Option<&'a Value> {
    relay["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

fn condition_is(relay: &Value, type_: &str, status: &str, reason: Option<&str>) -> bool {
    condition(relay, type_).is_some_and(|c| c["status"] == status && reason.is_none_or(|r| c["reason"] == r))
}

fn current(relay: &Value) -> bool {
    relay["status"]["observedGeneration"] == relay["metadata"]["generation"]
}

/// API writes of the reconcile: every kind but `RelayRuntime`, the runtime sampler's
/// `status.runtime`, whose own bound `runtime_write_bound` checks.
fn reconcile_writes(body: &str) -> f64 {
    metric_sum(body, "relay_operator_api_writes_total") - metric_sum(body, RUNTIME_WRITES)
}

const RUNTIME_WRITES: &str = "relay_operator_api_writes_total{kind=\"RelayRuntime\"}";

/// Saves a Relay object (without managedFields) for the Argo CD health check's test
/// (e2e/argocd/test.sh reads `<work>/argocd-fixtures`; e2e/argocd/fixtures are copies).
fn save_fixture(env: &Env, name: &str, relay: &Value) -> anyhow::Result<()> {
    let mut relay = relay.clone();
    if let Some(metadata) = relay["metadata"].as_object_mut() {
        metadata.remove("managedFields");
    }
    let dir = env.work.join("argocd-fixtures");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.json")), serde_json::to_string_pretty(&relay)? + "\n")?;
    Ok(())
}

fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------- steps

const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#;

/// config/prometheus also ships PrometheusRules (the relay alerts).
const PROMETHEUS_RULE_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: prometheusrules.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#;

async fn install(env: &mut Env) -> anyhow::Result<()> {
    // The prometheus-operator CRDs first, so the operator's first reconcile sees them.
    for (crd, name) in [
        (SERVICE_MONITOR_CRD, "crd/servicemonitors.monitoring.coreos.com"),
        (PROMETHEUS_RULE_CRD, "crd/prometheusrules.monitoring.coreos.com"),
    ] {
        env.kubectl_stdin(&["apply", "-f", "-"], Some(crd)).await?;
        env.kubectl(&["wait", "--for=condition=Established", name, "--timeout=60s"]).await?;
    }
    env.kubectl(&["apply", "-k", "config/default"]).await?;
    let interval = format!("OPERATOR_RUNTIME_INTERVAL={}s", RUNTIME_INTERVAL.as_secs());
    // The sampler's debug lines land in the kept pod logs.
    let log = "RUST_LOG=info,kube=warn,relay_operator::runtime=debug";
    env.kubectl(&["set", "env", "deployment/relay-operator", "-n", OPERATOR_NS, &interval, log]).await?;
    env.kubectl(&["wait", "--for=condition=Established", "crd/relays.atrelay.dev", "--timeout=60s"]).await?;
    env.kubectl(&["apply", "-k", "config/prometheus"]).await?;
    env.kubectl(&["-n", OPERATOR_NS, "rollout", "status", "deployment/relay-operator", "--timeout=180s"])
        .await?;
    env.kubectl(&["create", "namespace", NS]).await?;
    Ok(())
}

async fn invalid_specs_rejected(env: &mut Env) -> anyhow::Result<()> {
    let cases: [(&str, &str, &str); 6] = [
        ("equal ports", "image: x:1\n  ports: {public: 2470, internal: 2470}", "must be different ports"),
        (
            "memory limit below request",
            "image: x:1\n  resources: {memory: {request: 2Gi, limit: 1Gi}}",
            "limit must be greater than or equal to request",
        ),
        (
            "Postgres without a URL",
            "image: x:1\n  storage: {database: {type: Postgres}}",
            "urlSecretRef is required",
        ),
        (
            "not a quantity",
            "image: x:1\n  resources: {cpu: {request: lots}}",
            "must be a Kubernetes quantity",
        ),
        ("empty image", "image: \"\"", "spec.image"),
        ("bad duration", "image: x:1\n  tunables: {replayWindow: 3 days}", "spec.tunables.replayWindow"),
    ];
    for (what, spec, message) in cases {
        let manifest = format!("apiVersion: atrelay.dev/v1alpha1\nkind: Relay\nmetadata:\n  name: bad\n  namespace: {NS}\nspec:\n  {spec}\n");
        match env.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest)).await {
            Ok(_) => bail!("{what}: the API server accepted an invalid Relay"),
            Err(error) if error.to_string().contains(message) => {}
            Err(error) => bail!("{what}: rejected, but without {message:?}: {error}"),
        }
    }
    let long_name = "r".repeat(53);
    let manifest = format!("apiVersion: atrelay.dev/v1alpha1\nkind: Relay\nmetadata:\n  name: {long_name}\n  namespace: {NS}\nspec:\n  image: x:1\n");
    let error = env
        .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest))
        .await
        .err()
        .ok_or_else(|| anyhow!("53-character name accepted"))?;
    if !error.to_string().contains("at most 52 characters") {
        bail!("long name rejected without the CEL message: {error}");
    }
    Ok(())
}

async fn example_not_ready(env: &mut Env) -> anyhow::Result<()> {
    env.kubectl(&["apply", "-n", NS, "-f", "examples/minimal.yaml"]).await?;
    for (kind, name) in
        [("statefulset", RELAY), ("service", RELAY), ("service", "relay-internal"), ("secret", "relay-admin")]
    {
        eventually(&format!("{kind}/{name}"), Duration::from_secs(30), || async {
            Ok(env.kubectl(&["get", "-n", NS, kind, name]).await.ok().map(|_| ()))
        })
        .await?;
    }
    // Before the pod serves, the Relay is not Ready (Argo CD: Progressing).
    let relay = eventually("Ready=False while the pod starts", Duration::from_secs(30), || async {
        let relay = env.relay().await?;
        Ok((current(&relay) && condition_is(&relay, "Ready", "False", None)).then_some(relay))
    })
    .await?;
    save_fixture(env, "progressing-pods-not-ready", &relay)?;
    eventually("pod relay-0 to run the relay process", Duration::from_secs(60), || async {
        let pod = env.pod("relay-0", NS).await?;
        Ok(pod.filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).map(|_| ()))
    })
    .await?;
    // The example follows bsky.network, which this machine cannot reach. The relay still
    // serves (its log and database are up: replays work), so its pod is Ready and in the
    // public Service; that it has not caught up is the separate CaughtUp condition, from
    // the runtime sampler (one sample per interval).
    let relay = eventually("Ready=True and CaughtUp=False/CatchingUp", Duration::from_secs(60), || async {
        let relay = env.relay().await?;
        let serving = current(&relay) && condition_is(&relay, "Ready", "True", Some("RelayReady"));
        Ok((serving && condition_is(&relay, "CaughtUp", "False", Some("CatchingUp"))).then_some(relay))
    })
    .await?;
    save_fixture(env, "healthy-serving-catching-up", &relay)?;
    for (type_, status) in [("Reconciling", "False"), ("Stalled", "False"), ("WorkloadAvailable", "True")] {
        if !condition_is(&relay, type_, status, None) {
            bail!("expected {type_}={status}: {}", relay["status"]);
        }
    }
    let message = condition(&relay, "CaughtUp").map(|c| c["message"].to_string()).unwrap_or_default();
    if message.len() <= 2 {
        bail!("CaughtUp=False without the relay's reason: {}", relay["status"]);
    }
    if relay["status"]["adminSecretName"] != "relay-admin" {
        bail!("status.adminSecretName: {}", relay["status"]["adminSecretName"]);
    }
    if relay.to_string().contains(&env.admin_token().await?) {
        bail!("the admin token appears in the Relay object");
    }
    Ok(())
}

async fn spec_change_ready(env: &mut Env) -> anyhow::Result<()> {
    let sim =
        Simulation::start(SimulateConfig { rate: 20.0, seed: 7, ..SimulateConfig::loopback(2, 5) }).await?;
    sim.create_accounts();
    tokio::spawn(sim.clone().run());
    env.sim = Some(sim.clone());

    let before = env.statefulset().await?;
    let revision_before = before.status.as_ref().and_then(|s| s.update_revision.clone());
    let pod_before =
        env.pod("relay-0", NS).await?.and_then(|p| p.uid()).ok_or_else(|| anyhow!("no relay-0"))?;
    let patch = serde_json::json!({"spec": {
        "upstream": {"host": "", "plcDirectory": sim.plc_url()},
        "tunables": {"allowInsecureHosts": true},
    }});
    patch_relay(env, patch.to_string()).await?;

    let ip = eventually("a new relay-0 pod running", Duration::from_secs(90), || async {
        let Some(pod) = env.pod("relay-0", NS).await? else { return Ok(None) };
        let status = pod.status.clone().unwrap_or_default();
        let fresh = pod.uid().as_deref() != Some(pod_before.as_str());
        Ok((fresh && status.phase.as_deref() == Some("Running")).then(|| status.pod_ip.unwrap_or_default()))
    })
    .await?;
    let after = env.statefulset().await?;
    if after.status.as_ref().and_then(|s| s.update_revision.clone()) == revision_before {
        bail!("the StatefulSet revision did not change");
    }
    let token = env.admin_token().await?;
    let admin_url = format!("http://{ip}:2471");
    eventually("the relay to accept the simulated hosts", Duration::from_secs(60), || {
        let sim = sim.clone();
        let admin_url = admin_url.clone();
        let token = token.clone();
        async move { Ok(sim.register_with_relay(&admin_url, &token).await.ok()) }
    })
    .await?;
    env.kubectl(&["wait", "-n", NS, "--for=condition=Ready", &format!("relay/{RELAY}"), "--timeout=120s"])
        .await?;
    let relay = env.relay().await?;
    if !current(&relay)
        || !condition_is(&relay, "Reconciling", "False", None)
        || relay["status"]["readyReplicas"] != 1
    {
        bail!("Ready, but the rest of the status disagrees: {}", relay["status"]);
    }
    Ok(())
}

async fn relay_serves(env: &mut Env) -> anyhow::Result<()> {
    let ip = env
        .pod("relay-0", NS)
        .await?
        .and_then(|p| p.status.and_then(|s| s.pod_ip))
        .ok_or_else(|| anyhow!("relay-0 has no IP"))?;
    eventually("listRepos to list the simulated accounts", Duration::from_secs(60), || {
        let ip = ip.clone();
        async move {
            let body: Value =
                reqwest::get(format!("http://{ip}:2470/xrpc/com.atproto.sync.listRepos?limit=100"))
                    .await?
                    .json()
                    .await?;
            let repos = body["repos"].as_array().map(|r| r.len()).unwrap_or(0);
            Ok((repos >= 10).then_some(()))
        }
    })
    .await?;
    let hosts: Value =
        reqwest::get(format!("http://{ip}:2470/xrpc/com.atproto.sync.listHosts")).await?.json().await?;
    let listed = hosts["hosts"].as_array().map(|h| h.len()).unwrap_or(0);
    if listed != 2 {
        bail!("listHosts shows {listed} hosts, expected the 2 simulated ones: {hosts}");
    }
    Ok(())
}

/// Whether `status.runtime` shows the simulated network as the relay sees it.
fn runtime_filled(runtime: &Value) -> bool {
    runtime["hosts"] == "2/2"
        && runtime["hostsConnected"] == 2
        && runtime["hostsKnown"] == 2
        && runtime["lastSeq"].as_i64().is_some_and(|seq| seq > 0)
        // A rate needs two samples, one interval apart.
        && runtime["eventsPerSecond"].as_i64().is_some_and(|rate| rate > 0)
        && runtime["node"] == NODE
        && runtime["collections"].is_string()
        && runtime["sampledAt"].is_string()
        && runtime.get("error").is_none()
}

async fn runtime_status(env: &mut Env) -> anyhow::Result<()> {
    let what = "status.runtime filled from the relay's /metrics";
    let relay = eventually(what, Duration::from_secs(90), || async {
        let relay = env.relay().await?;
        let runtime = &relay["status"]["runtime"];
        // Connected to the simulated hosts with events flowing, the relay says it caught up.
        if runtime_filled(runtime) && condition_is(&relay, "CaughtUp", "True", Some("CaughtUp")) {
            Ok(Some(relay))
        } else {
            Err(anyhow!("status.runtime is {runtime}, CaughtUp is {:?}", condition(&relay, "CaughtUp")))
        }
    })
    .await?;
    save_fixture(env, "healthy-ready", &relay)?;
    Ok(())
}

async fn missing_admin_secret(env: &mut Env) -> anyhow::Result<()> {
    let manifest = format!(
        "apiVersion: atrelay.dev/v1alpha1\nkind: Relay\nmetadata:\n  name: stalled\n  namespace: {NS}\nspec:\n  \
         image: ghcr.io/atrelay/relay:0.1.0\n  admin: {{tokenSecretRef: {{name: no-such-secret, key: token}}}}\n"
    );
    env.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest)).await?;
    let relays = env.relays();
    let stalled = eventually("Stalled=True/SecretNotFound", Duration::from_secs(30), || async {
        let relay = serde_json::to_value(relays.get("stalled").await?)?;
        Ok((current(&relay) && condition_is(&relay, "Stalled", "True", Some("SecretNotFound")))
            .then_some(relay))
    })
    .await?;
    save_fixture(env, "degraded-secret-not-found", &stalled)?;
    env.kubectl(&["delete", "relay", "stalled", "-n", NS, "--wait=true", "--timeout=60s"]).await?;
    Ok(())
}

/// The PostgreSQL server scripts/test.sh starts; required under CI.
fn postgres_server() -> anyhow::Result<Option<String>> {
    match std::env::var("RELAY_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Ok(Some(url)),
        _ if std::env::var_os("CI").is_some() => bail!("RELAY_TEST_POSTGRES_URL must be set in CI"),
        _ => Ok(None),
    }
}

async fn postgres_relay(env: &mut Env) -> anyhow::Result<()> {
    use sqlx::Connection;
    let Some(server) = postgres_server()? else {
        println!("   skipped: RELAY_TEST_POSTGRES_URL is not set");
        return Ok(());
    };
    let database = format!("relay_e2e_{}", std::process::id());
    let mut admin =
        sqlx::PgConnection::connect(&server).await.context("connecting to the test PostgreSQL")?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database}")).execute(&mut admin).await?;
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&mut admin).await?;
    let url = format!("{}/{database}", server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base));
    let sim = env.sim.clone().ok_or_else(|| anyhow!("the simulated network is not running"))?;

    let manifest = format!(
        "apiVersion: atrelay.dev/v1alpha1\nkind: Relay\nmetadata:\n  name: pg\n  namespace: {NS}\nspec:\n  \
         image: ghcr.io/atrelay/relay:0.1.0\n  upstream: {{host: \"\", plcDirectory: \"{}\"}}\n  \
         tunables: {{allowInsecureHosts: true}}\n  \
         storage: {{database: {{type: Postgres, urlSecretRef: {{name: pg-url, key: url}}}}}}\n",
        sim.plc_url()
    );
    env.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest)).await?;
    let pg = || async {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("atrelay.dev", "v1alpha1", "Relay"));
        let relays: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), NS, &resource);
        anyhow::Ok(serde_json::to_value(relays.get("pg").await?)?)
    };
    let stalled = eventually("Stalled=True/SecretNotFound", Duration::from_secs(30), || async {
        let relay = pg().await?;
        Ok(condition_is(&relay, "Stalled", "True", Some("SecretNotFound")).then_some(relay))
    })
    .await?;
    let message = condition(&stalled, "Stalled").map(|c| c["message"].to_string()).unwrap_or_default();
    if !message.contains("pg-url") || !condition_is(&stalled, "Ready", "False", Some("SecretNotFound")) {
        bail!("the stalled status does not name the missing Secret: {}", stalled["status"]);
    }
    if env.kubectl(&["get", "-n", NS, "statefulset", "pg", "--ignore-not-found", "-o", "name"]).await?.trim()
        != ""
    {
        bail!("a StatefulSet was created although its database Secret is missing");
    }

    // The operator polls for the Secret (it does not watch Secrets).
    env.kubectl(&["create", "secret", "generic", "pg-url", "-n", NS, &format!("--from-literal=url={url}")])
        .await?;
    let ip = eventually("pod pg-0 running", Duration::from_secs(90), || async {
        let pod = env.pod("pg-0", NS).await?;
        let status = pod.and_then(|p| p.status).unwrap_or_default();
        Ok((status.phase.as_deref() == Some("Running")).then(|| status.pod_ip.unwrap_or_default()))
    })
    .await?;
    let token = {
        let secret = Api::<Secret>::namespaced(env.client.clone(), NS).get("pg-admin").await?;
        let bytes = secret.data.and_then(|d| d.get("token").cloned()).ok_or_else(|| anyhow!("no token"))?;
        String::from_utf8(bytes.0)?
    };
    let admin_url = format!("http://{ip}:2471");
    eventually("the Postgres relay to accept the simulated hosts", Duration::from_secs(60), || {
        let (sim, admin_url, token) = (sim.clone(), admin_url.clone(), token.clone());
        async move { Ok(sim.register_with_relay(&admin_url, &token).await.ok()) }
    })
    .await?;
    env.kubectl(&["wait", "-n", NS, "--for=condition=Ready", "relay/pg", "--timeout=120s"]).await?;

    // The relay really keeps its state in that database.
    let mut relay_db = sqlx::PgConnection::connect(&url).await?;
    let hosts: i64 = sqlx::query_scalar("SELECT count(*) FROM hosts").fetch_one(&mut relay_db).await?;
    if hosts < 2 {
        bail!("the relay's Postgres database has {hosts} hosts, expected the 2 simulated ones");
    }
    drop(relay_db);
    env.kubectl(&["delete", "relay", "pg", "-n", NS, "--wait=true", "--timeout=60s"]).await?;
    Ok(())
}

/// A `kubectl get` table: its column names and, per row, the cell under each name. Cells
/// are cut at their header's offset (kubectl pads columns with at least three spaces and
/// prints an absent value as nothing), so an empty cell stays in its column.
fn kubectl_table(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let header = text.lines().next().unwrap_or_default();
    let mut starts = Vec::new();
    let mut previous = ' ';
    let mut gap = 2;
    for (offset, c) in header.char_indices() {
        if c != ' ' && (offset == 0 || (previous == ' ' && gap >= 2)) {
            starts.push(offset);
        }
        gap = if c == ' ' { gap + 1 } else { 0 };
        previous = c;
    }
    let cell = |line: &str, index: usize| {
        let end = starts.get(index + 1).copied().unwrap_or(line.len()).min(line.len());
        line.get(starts[index].min(end)..end).unwrap_or_default().trim().to_string()
    };
    let names = (0..starts.len()).map(|i| cell(header, i)).collect();
    let rows = text.lines().skip(1).map(|line| (0..starts.len()).map(|i| cell(line, i)).collect()).collect();
    (names, rows)
}

/// The cell of `column` in the row of `name`.
fn table_cell<'a>(table: &'a (Vec<String>, Vec<Vec<String>>), name: &str, column: &str) -> Option<&'a str> {
    let index = table.0.iter().position(|c| c == column)?;
    table.1.iter().find(|row| row.first().map(String::as_str) == Some(name))?.get(index).map(String::as_str)
}

async fn printer_columns(env: &mut Env) -> anyhow::Result<()> {
    let text = env.kubectl(&["get", "relays", "-n", NS]).await?;
    let table = kubectl_table(&text);
    if table.0 != ["NAME", "READY", "HOSTS", "EVENTS/S", "COVERAGE", "COMPARED", "COLLECTIONS", "AGE"] {
        bail!("kubectl get relays header: {:?}", table.0);
    }
    let cell = |column| table_cell(&table, RELAY, column);
    let number = |value: Option<&str>| value.is_some_and(|v| v.parse::<u64>().is_ok());
    // No coverage self-check is configured, so that cell is empty; the collection count may
    // still be 0 (the relay refreshes it every 30 s).
    if cell("READY") != Some("True")
        || cell("HOSTS") != Some("2/2")
        || !number(cell("EVENTS/S"))
        || cell("COVERAGE") != Some("")
        || !(number(cell("COLLECTIONS")) || cell("COLLECTIONS") == Some("20+"))
    {
        bail!("kubectl get relays row of {RELAY}: {:?}\n{text}", table.1);
    }
    let wide_text = env.kubectl(&["get", "rly", "-n", NS, "-o", "wide"]).await?;
    let wide = kubectl_table(&wide_text);
    for column in ["NODE", "IMAGE", "FIREHOSE URL"] {
        if !wide.0.iter().any(|c| c == column) {
            bail!("-o wide lacks {column}: {wide_text}");
        }
    }
    let firehose = "ws://relay.e2e.svc:2470/xrpc/com.atproto.sync.subscribeRepos";
    if table_cell(&wide, RELAY, "NODE") != Some(NODE)
        || table_cell(&wide, RELAY, "FIREHOSE URL") != Some(firehose)
    {
        bail!("-o wide lacks the node {NODE} or the firehose endpoint: {wide_text}");
    }
    let category = env.kubectl(&["get", "atproto", "-n", NS]).await?;
    if !category.contains(RELAY) {
        bail!("kubectl get atproto (category) does not list the relay: {category}");
    }
    Ok(())
}

async fn service_monitor(env: &mut Env) -> anyhow::Result<()> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    );
    let monitors: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), NS, &resource);
    let monitor = monitors.get(RELAY).await.context("ServiceMonitor relay")?;
    let labels = &monitor.data["spec"]["selector"]["matchLabels"];
    if labels["atrelay.dev/service"] != "internal"
        || monitor.data["spec"]["endpoints"][0]["port"] != "internal"
    {
        bail!("unexpected ServiceMonitor spec: {}", monitor.data);
    }
    let internal = Api::<Service>::namespaced(env.client.clone(), NS).get("relay-internal").await?;
    if internal.labels().get("atrelay.dev/service").map(String::as_str) != Some("internal") {
        bail!("the internal Service lacks the label the ServiceMonitor selects");
    }
    Ok(())
}

/// resourceVersions of everything the operator owns for the relay, plus its status.
async fn owned_versions(env: &Env) -> anyhow::Result<Vec<(String, String)>> {
    let mut versions = vec![
        ("statefulset".to_string(), env.statefulset().await?.resource_version().unwrap_or_default()),
        (
            "secret".to_string(),
            Api::<Secret>::namespaced(env.client.clone(), NS)
                .get("relay-admin")
                .await?
                .resource_version()
                .unwrap_or_default(),
        ),
    ];
    for name in [RELAY, "relay-internal"] {
        let service = Api::<Service>::namespaced(env.client.clone(), NS).get(name).await?;
        versions.push((format!("service/{name}"), service.resource_version().unwrap_or_default()));
    }
    let mut status = env.relay().await?["status"].clone();
    // status.runtime follows the relay's traffic; its writes are bounded, not zero.
    if let Some(fields) = status.as_object_mut() {
        fields.remove("runtime");
    }
    versions.push(("relay status".into(), status.to_string()));
    Ok(versions)
}

async fn zero_writes(env: &mut Env) -> anyhow::Result<()> {
    let env: &Env = env;
    // 1. A metadata-only change re-triggers a reconcile of an otherwise unchanged Relay.
    let before_metrics = env.operator_metrics().await?;
    let reconciles_before: f64 =
        before_metrics.iter().map(|(_, m)| metric_sum(m, "relay_operator_reconciles_total")).sum();
    let writes_before: f64 = before_metrics.iter().map(|(_, m)| reconcile_writes(m)).sum();
    let versions = owned_versions(env).await?;
    env.kubectl(&["annotate", "relay", RELAY, "-n", NS, "e2e.atrelay.dev/touch=1"]).await?;
    eventually("a reconcile after the annotation", Duration::from_secs(30), || async {
        let now: f64 = env
            .operator_metrics()
            .await?
            .iter()
            .map(|(_, m)| metric_sum(m, "relay_operator_reconciles_total"))
            .sum();
        Ok((now > reconciles_before).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_after: f64 = env.operator_metrics().await?.iter().map(|(_, m)| reconcile_writes(m)).sum();
    if writes_after != writes_before {
        bail!("re-reconcile wrote {} times", writes_after - writes_before);
    }
    if owned_versions(env).await? != versions {
        bail!("owned objects changed on an idle re-reconcile");
    }

    // 2. A fresh operator (cold caches) reconciles everything once and still writes nothing.
    let old = env.operator_pods().await?.into_iter().map(|p| p.name_any()).collect::<Vec<_>>();
    restart_operator(env).await?;
    eventually("a new operator pod that has reconciled the relay", Duration::from_secs(120), || {
        let old = old.clone();
        async move {
            let metrics = env.operator_metrics().await?;
            let fresh: Vec<_> = metrics.iter().filter(|(name, _)| !old.contains(name)).collect();
            Ok(fresh
                .iter()
                .any(|(_, m)| metric_sum(m, "relay_operator_reconciles_total") >= 1.0)
                .then_some(()))
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, metrics) in env.operator_metrics().await? {
        let writes = reconcile_writes(&metrics);
        if !old.contains(&name) && writes != 0.0 {
            bail!("the restarted operator {name} made {writes} writes for an unchanged Relay");
        }
    }
    if owned_versions(env).await? != versions {
        bail!("owned objects changed after an operator restart");
    }
    Ok(())
}

/// A JSON merge patch of the test Relay, as a user would send with kubectl.
async fn patch_relay(env: &Env, patch: impl AsRef<str>) -> anyhow::Result<()> {
    patch_relay_named(env, RELAY, patch.as_ref()).await
}

/// A JSON merge patch of the Relay `name` in the test namespace (an error carries kubectl's
/// message, e.g. a CEL refusal).
async fn patch_relay_named(env: &Env, name: &str, patch: &str) -> anyhow::Result<()> {
    env.kubectl(&["patch", "relay", name, "-n", NS, "--type=merge", "-p", patch]).await.map(|_| ())
}

/// Deletes the operator pods; the Deployment starts fresh ones.
async fn restart_operator(env: &Env) -> anyhow::Result<()> {
    env.kubectl(&[
        "delete",
        "pod",
        "-n",
        OPERATOR_NS,
        "-l",
        "app.kubernetes.io/name=relay-operator",
        "--wait=false",
    ])
    .await
    .map(|_| ())
}

async fn wait_ready_current(env: &Env, what: &str) -> anyhow::Result<Value> {
    eventually(what, Duration::from_secs(180), || async {
        let relay = env.relay().await?;
        Ok((current(&relay) && condition_is(&relay, "Ready", "True", None)).then_some(relay))
    })
    .await
}

fn template_image(statefulset: &StatefulSet) -> String {
    statefulset
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// The documented bound: with the relay's values moving (the simulated network keeps
/// publishing), an otherwise idle Relay costs one status write and one relay request per
/// runtime interval, and the reconcile writes nothing.
async fn runtime_write_bound(env: &mut Env) -> anyhow::Result<()> {
    let env: &Env = env;
    let window = RUNTIME_INTERVAL * 6;
    let seq = |relay: &Value| relay["status"]["runtime"]["lastSeq"].as_i64().unwrap_or(0);
    let seq_before = seq(&env.relay().await?);
    let runtime_before = operator_metric(env, RUNTIME_WRITES).await?;
    let reconcile_before = operator_reconcile_writes(env).await?;
    let scrapes_before = operator_metric(env, "relay_operator_runtime_scrapes_total").await?;
    tokio::time::sleep(window).await;
    let runtime = operator_metric(env, RUNTIME_WRITES).await? - runtime_before;
    let reconcile = operator_reconcile_writes(env).await? - reconcile_before;
    let scrapes = operator_metric(env, "relay_operator_runtime_scrapes_total").await? - scrapes_before;
    let seq_after = seq(&env.relay().await?);
    let bound = (window.as_secs() / RUNTIME_INTERVAL.as_secs() + 1) as f64;
    println!(
        "   {window:?}: {runtime} runtime writes, {reconcile} reconcile writes, {scrapes} relay requests (bound {bound}); lastSeq {seq_before} → {seq_after}"
    );
    if reconcile != 0.0 {
        bail!("the reconcile wrote {reconcile} times for an unchanged Relay");
    }
    if runtime > bound || scrapes > bound {
        bail!("{runtime} runtime writes and {scrapes} relay requests in {window:?}: more than one per {RUNTIME_INTERVAL:?}");
    }
    // The values did move, so the bound was tested, not met by writing nothing.
    if seq_after <= seq_before || runtime < 1.0 {
        bail!(
            "status.runtime did not follow the relay (lastSeq {seq_before} → {seq_after}, {runtime} writes)"
        );
    }
    Ok(())
}

async fn restart_mid_reconcile(env: &mut Env) -> anyhow::Result<()> {
    let patch = r#"{"spec":{"image":"ghcr.io/atrelay/relay:0.1.1"}}"#;
    patch_relay(env, patch).await?;
    restart_operator(env).await?;
    wait_ready_current(env, "Ready=True for the new generation after the operator restart").await?;
    let image = template_image(&env.statefulset().await?);
    if image != "ghcr.io/atrelay/relay:0.1.1" {
        bail!("StatefulSet image is {image}");
    }
    Ok(())
}

async fn stop_and_pause(env: &mut Env) -> anyhow::Result<()> {
    patch_relay(env, r#"{"spec":{"operation":{"stopped":true}}}"#).await?;
    eventually("Ready=False/Stopped and no relay pod", Duration::from_secs(90), || async {
        let relay = env.relay().await?;
        let stopped = current(&relay) && condition_is(&relay, "Ready", "False", Some("Stopped"));
        let pod_gone = env.pod("relay-0", NS).await?.is_none();
        Ok((stopped && pod_gone && env.statefulset().await?.spec.replicas == Some(0)).then_some(relay))
    })
    .await
    .and_then(|relay| save_fixture(env, "suspended-stopped", &relay))?;
    patch_relay(env, r#"{"spec":{"operation":{"stopped":false}}}"#).await?;
    wait_ready_current(env, "Ready=True after un-stopping (hosts resumed from the relay's own store)")
        .await?;

    let pause =
        r#"{"spec":{"operation":{"reconciliationPaused":true},"image":"ghcr.io/atrelay/relay:0.1.2"}}"#;
    patch_relay(env, pause).await?;
    let paused = eventually("ReconciliationPaused=True", Duration::from_secs(30), || async {
        let relay = env.relay().await?;
        Ok((current(&relay) && condition_is(&relay, "ReconciliationPaused", "True", Some("Paused")))
            .then_some(relay))
    })
    .await?;
    save_fixture(env, "suspended-reconciliation-paused", &paused)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    if template_image(&env.statefulset().await?) != "ghcr.io/atrelay/relay:0.1.1" {
        bail!("the StatefulSet changed while reconciliation was paused");
    }
    patch_relay(env, r#"{"spec":{"operation":{"reconciliationPaused":false}}}"#).await?;
    let relay = wait_ready_current(env, "Ready=True after un-pausing").await?;
    if condition(&relay, "ReconciliationPaused").is_some() {
        bail!("ReconciliationPaused is still reported after un-pausing");
    }
    if template_image(&env.statefulset().await?) != "ghcr.io/atrelay/relay:0.1.2" {
        bail!("the change made while paused was not applied after un-pausing");
    }
    Ok(())
}

async fn leader_election(env: &mut Env) -> anyhow::Result<()> {
    env.kubectl(&["scale", "deployment/relay-operator", "-n", OPERATOR_NS, "--replicas=2"]).await?;
    env.kubectl(&["-n", OPERATOR_NS, "rollout", "status", "deployment/relay-operator", "--timeout=120s"])
        .await?;
    let leaders = eventually("two operator replicas, one leader", Duration::from_secs(60), || async {
        let metrics = env.operator_metrics().await?;
        let leaders: Vec<String> = metrics
            .iter()
            .filter(|(_, m)| metric_sum(m, "relay_operator_leader") == 1.0)
            .map(|(n, _)| n.clone())
            .collect();
        Ok((metrics.len() == 2 && leaders.len() == 1).then_some(leaders))
    })
    .await?;
    // The standby takes over when the leader goes away (it releases the Lease on SIGTERM).
    env.kubectl(&["delete", "pod", "-n", OPERATOR_NS, &leaders[0], "--wait=false"]).await?;
    eventually("the standby to become leader", Duration::from_secs(60), || async {
        let metrics = env.operator_metrics().await?;
        Ok(metrics
            .iter()
            .any(|(n, m)| *n != leaders[0] && metric_sum(m, "relay_operator_leader") == 1.0)
            .then_some(()))
    })
    .await?;
    Ok(())
}

/// Waits until the operator has made no API write for 5 s in a row (a rollout it reports on
/// has finished).
async fn settled(env: &Env) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(90);
    let mut last = operator_reconcile_writes(env).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = operator_reconcile_writes(env).await?;
        if now == last {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("the operator kept writing for 90 s ({last} → {now} writes)");
        }
        last = now;
    }
}

/// Reconcile writes (see `reconcile_writes`) over every running operator pod.
async fn operator_reconcile_writes(env: &Env) -> anyhow::Result<f64> {
    Ok(env.operator_metrics().await?.iter().map(|(_, m)| reconcile_writes(m)).sum())
}

/// Total of a metric over every running operator pod.
async fn operator_metric(env: &Env, name: &str) -> anyhow::Result<f64> {
    Ok(env.operator_metrics().await?.iter().map(|(_, m)| metric_sum(m, name)).sum())
}

async fn drift_repaired(env: &mut Env) -> anyhow::Result<()> {
    let env: &Env = env;
    let services = Api::<Service>::namespaced(env.client.clone(), NS);
    let wanted_image = template_image(&env.statefulset().await?);
    let target_port = |service: &Service| {
        service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first())
            .and_then(|p| p.target_port.clone())
    };
    let wanted_target = target_port(&services.get(RELAY).await?);
    let image_edit = r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"ghcr.io/atrelay/relay:hand-edited"}]"#;
    env.kubectl(&["patch", "statefulset", RELAY, "-n", NS, "--type=json", "-p", image_edit]).await?;
    let port_edit = r#"[{"op":"replace","path":"/spec/ports/0/targetPort","value":9999}]"#;
    env.kubectl(&["patch", "service", RELAY, "-n", NS, "--type=json", "-p", port_edit]).await?;
    eventually("the operator to put the image and the port back", Duration::from_secs(60), || async {
        let image = template_image(&env.statefulset().await?);
        let target = target_port(&services.get(RELAY).await?);
        Ok((image == wanted_image && target == wanted_target).then_some(()))
    })
    .await?;
    wait_ready_current(env, "Ready=True after the drift was repaired").await?;
    // The hand edit rolled the StatefulSet and the repair rolled it back: let that rollout
    // settle (its status changes are reported, which are writes), then the Relay is idle.
    settled(env).await?;
    // Repaired, and idle again: a re-reconcile of the unchanged Relay writes nothing.
    idle_reconcile_writes_nothing(env, RELAY, "2", "after the repair").await
}

/// Forces a reconcile of the (settled, unchanged) Relay `name` with an annotation nobody
/// reads, and fails if that reconcile wrote anything to the API server.
async fn idle_reconcile_writes_nothing(env: &Env, name: &str, touch: &str, when: &str) -> anyhow::Result<()> {
    let writes = operator_reconcile_writes(env).await?;
    let reconciles = operator_metric(env, "relay_operator_reconciles_total").await?;
    let annotation = format!("e2e.atrelay.dev/touch={touch}");
    env.kubectl(&["annotate", "relay", name, "-n", NS, "--overwrite", &annotation]).await?;
    eventually("a reconcile after the annotation", Duration::from_secs(30), || async {
        Ok((operator_metric(env, "relay_operator_reconciles_total").await? > reconciles).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = operator_reconcile_writes(env).await?;
    if after != writes {
        bail!("an idle re-reconcile {when} wrote {} times", after - writes);
    }
    Ok(())
}

async fn orphans_pruned(env: &mut Env) -> anyhow::Result<()> {
    let env: &Env = env;
    let exists = |kind: &'static str, name: &'static str| async move {
        let found = env.kubectl(&["get", "-n", NS, kind, name, "--ignore-not-found", "-o", "name"]).await?;
        anyhow::Ok(!found.trim().is_empty())
    };
    patch_relay(env, r#"{"spec":{"monitoring":{"serviceMonitor":false}}}"#).await?;
    eventually("the ServiceMonitor to be pruned", Duration::from_secs(60), || async {
        Ok((!exists("servicemonitor", RELAY).await?).then_some(()))
    })
    .await?;
    patch_relay(env, r#"{"spec":{"monitoring":{"serviceMonitor":true}}}"#).await?;
    eventually("the ServiceMonitor to come back", Duration::from_secs(60), || async {
        Ok(exists("servicemonitor", RELAY).await?.then_some(()))
    })
    .await?;
    // The user brings their own admin token: the generated Secret is no longer wanted.
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "user-admin",
        "-n",
        NS,
        "--from-literal=token=e2e-user-token",
    ])
    .await?;
    patch_relay(env, r#"{"spec":{"admin":{"tokenSecretRef":{"name":"user-admin","key":"token"}}}}"#).await?;
    eventually("the generated admin Secret to be pruned", Duration::from_secs(60), || async {
        Ok((!exists("secret", "relay-admin").await?).then_some(()))
    })
    .await?;
    if !exists("secret", "user-admin").await? {
        bail!("the user's Secret was deleted");
    }
    wait_ready_current(env, "Ready=True with the user's admin token").await?;
    Ok(())
}

async fn malformed_relay_skipped(env: &mut Env) -> anyhow::Result<()> {
    let env: &Env = env;
    // The CRD's schema would refuse a malformed Relay: loosen it for the spec while the bad
    // object is stored (as an older schema or a direct etcd write could leave one behind).
    // Rules on the whole object that read spec fields would no longer compile against a
    // schema-less spec: keep only those that do not.
    let crd: Value =
        serde_json::from_str(&env.kubectl(&["get", "crd", "relays.atrelay.dev", "-o", "json"]).await?)?;
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let rules: Vec<Value> = root["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rule| !rule["rule"].as_str().unwrap_or_default().contains("self.spec"))
        .cloned()
        .collect();
    let loosen = serde_json::json!([
        {"op": "replace", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec",
         "value": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
        {"op": "replace", "path": "/spec/versions/0/schema/openAPIV3Schema/x-kubernetes-validations",
         "value": rules},
    ])
    .to_string();
    env.kubectl(&["patch", "crd", "relays.atrelay.dev", "--type=json", "-p", &loosen]).await?;
    let bad = r#"apiVersion: atrelay.dev/v1alpha1
kind: Relay
metadata:
  name: malformed
  namespace: e2e
spec:
  image: 42
  ports: "not an object"
"#;
    let created = eventually("the malformed Relay to be stored", Duration::from_secs(30), || async {
        Ok(env.kubectl_stdin(&["apply", "-f", "-"], Some(bad)).await.ok().map(|_| ()))
    })
    .await;
    let outcome = async {
        created?;
        eventually("the operator to count the malformed object", Duration::from_secs(60), || async {
            Ok((operator_metric(env, "relay_operator_invalid_objects_total").await? >= 1.0).then_some(()))
        })
        .await?;
        // The valid Relay is still reconciled: a change to it is acted on.
        let reconciles = operator_metric(env, "relay_operator_reconciles_total").await?;
        env.kubectl(&["annotate", "relay", RELAY, "-n", NS, "--overwrite", "e2e.atrelay.dev/touch=3"])
            .await?;
        eventually("a reconcile of the valid Relay", Duration::from_secs(30), || async {
            Ok((operator_metric(env, "relay_operator_reconciles_total").await? > reconciles).then_some(()))
        })
        .await
    }
    .await;
    // Put everything back whatever happened, so the next steps see the real schema.
    env.kubectl(&["delete", "relay", "malformed", "-n", NS, "--ignore-not-found", "--wait=true"]).await?;
    env.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", "crds/relays.atrelay.dev.yaml"])
        .await?;
    outcome
}

async fn delete_collects(env: &mut Env) -> anyhow::Result<()> {
    env.kubectl(&["delete", "relay", RELAY, "-n", NS, "--wait=true", "--timeout=60s"]).await?;
    eventually("owned objects garbage-collected", Duration::from_secs(90), || async {
        let mut left = Vec::new();
        for (kind, name) in [
            ("statefulset", RELAY),
            ("service", RELAY),
            ("service", "relay-internal"),
            ("secret", "relay-admin"),
            ("servicemonitor", RELAY),
            ("pod", "relay-0"),
        ] {
            if env.kubectl(&["get", "-n", NS, kind, name, "--ignore-not-found", "-o", "name"]).await?.trim()
                != ""
            {
                left.push(format!("{kind}/{name}"));
            }
        }
        if left.is_empty() {
            Ok(Some(()))
        } else {
            Err(anyhow!("still present: {}", left.join(", ")))
        }
    })
    .await
}

/// Runs e2e/argocd/test.sh on the Relay objects this run saved, when Lua 5.4 is installed
/// (the script installs it itself when run alone; the suite does not install packages).
async fn argocd_health(env: &mut Env) -> anyhow::Result<()> {
    let lua = std::process::Command::new("lua5.4").arg("-v").output();
    if !lua.is_ok_and(|output| output.status.success()) {
        println!("   skipped: lua5.4 is not installed (e2e/argocd/test.sh installs it)");
        return Ok(());
    }
    let output = tokio::process::Command::new(env.repo.join("e2e/argocd/test.sh"))
        .arg(env.work.join("argocd-fixtures"))
        .output()
        .await
        .context("running e2e/argocd/test.sh")?;
    if !output.status.success() {
        bail!("e2e/argocd/test.sh: {}", String::from_utf8_lossy(&output.stdout));
    }
    Ok(())
}

/// The package directory: cargo sets it at run time too, which stays right when a
/// cached test binary was built from another checkout of the same sources.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
