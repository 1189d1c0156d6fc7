//! The Hetzner steps: a Relay with `spec.node.hetzner` against the fake Hetzner API
//! (`relay_e2e::hcloud_fake`, a real HTTP server on loopback) on the real control plane.
//!
//! The operator is pointed at the fake (`OPERATOR_HETZNER_API_URL`); a second test node
//! agent plays the joining k3s agent: it registers the Node named for the server with
//! `spec.providerID: hcloud://<id>` and the Relay's reservation label and taint, and runs
//! the relay pod once the operator pins the StatefulSet to it. The 429 back-off is shortened
//! (5 s doubling to 20 s instead of 1 to 15 minutes) so a storm fits in the suite; every
//! scenario prints its Hetzner request counts from the fake's own counter.

use super::*;
use relay_e2e::hcloud_fake::{FakeHetzner, Fault, TOKEN};
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

const HZ: &str = "hz";
const STORM: &str = "hz-storm";
const BAD_TOKEN: &str = "hz-bad-token";
const UID_LABEL: &str = "atrelay.dev/relay-uid";

/// What the steps share: the fake, the relay's simulated network, the joining node.
struct Hetzner {
    fake: FakeHetzner,
    sim: Arc<Simulation>,
    agent: Mutex<Option<Managed>>,
    unrelated: Vec<i64>,
}

static HETZNER: OnceLock<Hetzner> = OnceLock::new();

fn shared() -> anyhow::Result<&'static Hetzner> {
    HETZNER.get().ok_or_else(|| anyhow!("the first Hetzner step did not run"))
}

fn relay_manifest(name: &str, plc: &str) -> String {
    format!(
        "apiVersion: atrelay.dev/v1alpha1\nkind: Relay\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  \
         image: ghcr.io/atrelay/relay:0.1.0\n  upstream: {{host: \"\", plcDirectory: \"{plc}\"}}\n  \
         tunables: {{allowInsecureHosts: true}}\n  monitoring: {{serviceMonitor: false}}\n  node:\n    hetzner:\n      \
         serverType: cpx41\n      location: fsn1\n      sshKeys: [ops]\n      firewall: {{create: true}}\n      \
         labels: {{team: e2e}}\n      tokenSecretRef: {{name: hcloud, key: token}}\n      join:\n        \
         serverURL: https://127.0.0.1:6443\n        tokenSecretRef: {{name: k3s-join, key: token}}\n"
    )
}

/// Request counts per route since `before`, as one line.
fn calls_since(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> (u64, String) {
    let mut total = 0;
    let mut parts = Vec::new();
    for (route, n) in after {
        let delta = n - before.get(route).copied().unwrap_or(0);
        if delta > 0 {
            total += delta;
            parts.push(format!("{route} {delta}"));
        }
    }
    (total, parts.join(", "))
}

fn report(scenario: &str, before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> u64 {
    let (total, routes) = calls_since(before, after);
    println!("   hetzner calls, {scenario}: {total} ({routes})");
    total
}

/// A Secret with one `token` key (the Hetzner API token, the k3s join token).
async fn create_token_secret(env: &Env, name: &str, token: &str) -> anyhow::Result<()> {
    let literal = format!("--from-literal=token={token}");
    env.kubectl(&["create", "secret", "generic", name, "-n", NS, &literal]).await?;
    Ok(())
}

async fn relay_named(env: &Env, name: &str) -> anyhow::Result<Option<Value>> {
    Ok(env.relays().get_opt(name).await?.map(serde_json::to_value).transpose()?)
}

/// Servers in the fake that carry `uid`'s label.
fn owned(fake: &FakeHetzner, uid: &str) -> Vec<i64> {
    fake.servers()
        .into_iter()
        .filter(|s| s.labels.get(UID_LABEL).map(String::as_str) == Some(uid))
        .map(|s| s.id)
        .collect()
}

/// SIGKILL for the operator's process (found by its pod's name in its environment), so
/// nothing of a graceful shutdown runs: the crash between the create call and the
/// status write.
async fn kill_operator_process(env: &Env) -> anyhow::Result<()> {
    let pods = env.operator_pods().await?;
    let [pod] = pods.as_slice() else { bail!("expected one operator pod, found {}", pods.len()) };
    let needle = format!("POD_NAME={}", pod.name_any());
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let is_operator = std::fs::read_link(entry.path().join("exe"))
            .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "relay-operator"));
        if is_operator && environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()) {
            let pid = entry.file_name().to_string_lossy().to_string();
            std::process::Command::new("kill").args(["-9", &pid]).status()?;
            killed += 1;
        }
    }
    if killed != 1 {
        bail!("expected to kill one operator process, killed {killed}");
    }
    Ok(())
}

/// Starts the test node agent that stands in for the server joining as a k3s agent.
fn start_joining_node(env: &Env, node: &str, server_id: i64) -> anyhow::Result<Managed> {
    let bin_dir = binary_dir()?;
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_test-node-agent"));
    agent
        .arg(format!("--kubeconfig={}", env.kubeconfig.display()))
        .arg(format!("--node-name={node}"))
        .arg(format!("--work-dir={}", env.work.join("hetzner-node").display()))
        .arg(format!("--image=ghcr.io/atrelay/relay:={}", bin_dir.join("relay").display()))
        .arg(format!("--subnet={}", 2 + (std::process::id() + 125) % 250))
        .env("TEST_NODE_PROVIDER_ID", format!("hcloud://{server_id}"))
        .env("TEST_NODE_LABELS", format!("atrelay.dev/relay={NS}.{HZ}"))
        .env("TEST_NODE_TAINTS", format!("atrelay.dev/relay={NS}.{HZ}:NoSchedule"))
        .env("RUST_LOG", "info");
    Managed::spawn("hetzner-node-agent", agent, &env.work.join("hetzner-node-agent.log"))
}

/// Step 1: create → the operator killed before its status write → adopted, one server →
/// the Node joins → the relay runs there and is Ready.
pub async fn hetzner_create_adopt_join(env: &mut Env) -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await?;
    fake.add_ssh_key("ops");
    // Similar names, the operator's managed-by and relay labels, but not the UID label:
    // never adopted, never deleted.
    let unrelated = vec![
        fake.add_server(&format!("relay-{HZ}"), &[("atrelay.dev/managed-by", "relay-operator")]),
        fake.add_server(
            &format!("relay-{HZ}-00000000"),
            &[("atrelay.dev/managed-by", "relay-operator"), ("atrelay.dev/relay", &format!("{NS}.{HZ}"))],
        ),
    ];
    let sim =
        Simulation::start(SimulateConfig { rate: 10.0, seed: 15, ..SimulateConfig::loopback(1, 3) }).await?;
    sim.create_accounts();
    tokio::spawn(sim.clone().run());

    // One operator replica (an earlier step runs two): the crash below kills "the" operator.
    env.kubectl(&["scale", "deployment/relay-operator", "-n", OPERATOR_NS, "--replicas=1"]).await?;
    let url = format!("OPERATOR_HETZNER_API_URL={}", fake.base_url());
    env.kubectl(&[
        "set",
        "env",
        "deployment/relay-operator",
        "-n",
        OPERATOR_NS,
        &url,
        "OPERATOR_HETZNER_BACKOFF=5s",
        "OPERATOR_HETZNER_BACKOFF_MAX=20s",
        "OPERATOR_HETZNER_POLL_INTERVAL=2s",
        "OPERATOR_HETZNER_JOIN_POLL=2s",
    ])
    .await?;
    env.kubectl(&["-n", OPERATOR_NS, "rollout", "status", "deployment/relay-operator", "--timeout=180s"])
        .await?;
    eventually("one operator pod", Duration::from_secs(60), || async {
        Ok((env.operator_pods().await?.len() == 1).then_some(()))
    })
    .await?;
    for (secret, value) in [("hcloud", TOKEN), ("k3s-join", "K10-e2e-short-lived-bootstrap-token")] {
        create_token_secret(env, secret, value).await?;
    }

    // The create is carried out, its answer held back 20 s; the operator dies meanwhile.
    fake.inject(Some("POST /servers"), Fault::SlowReply { millis: 20_000 }, 1);
    let start = fake.requests();
    env.kubectl_stdin(&["apply", "-f", "-"], Some(&relay_manifest(HZ, &sim.plc_url()))).await?;
    eventually("the create call to reach the fake", Duration::from_secs(60), || async {
        Ok((fake.servers_created() == 1).then_some(()))
    })
    .await?;
    let before_kill = relay_named(env, HZ).await?.ok_or_else(|| anyhow!("no Relay {HZ}"))?;
    kill_operator_process(env).await?;
    let uid = before_kill["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    if !before_kill["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "atrelay.dev/cleanup"))
    {
        bail!("the finalizer was not written before the create call: {}", before_kill["metadata"]);
    }
    if before_kill["status"]["node"]["serverId"].is_string() {
        bail!("the status already had the server id before the kill; the crash scenario did not happen");
    }
    let created = report("create until the operator was killed", &start, &fake.requests());
    println!("   operator killed with the create answered late; the status had no server id");

    let after_kill = fake.requests();
    let relay = eventually("the server adopted into status.node", Duration::from_secs(120), || async {
        let relay = relay_named(env, HZ).await?.unwrap_or_default();
        Ok(relay["status"]["node"]["serverId"].is_string().then_some(relay))
    })
    .await?;
    let server_id: i64 = relay["status"]["node"]["serverId"].as_str().unwrap_or_default().parse()?;
    let adopted = report("after the restart until adopted", &after_kill, &fake.requests());
    if fake.servers_created() != 1 || owned(&fake, &uid) != vec![server_id] {
        bail!(
            "expected exactly one server for {HZ}, created {}: {:?}",
            fake.servers_created(),
            fake.servers()
        );
    }
    let events = env
        .kubectl(&["get", "events", "-n", NS, "--field-selector", &format!("involvedObject.name={HZ}")])
        .await?;
    if !events.contains("ServerAdopted") {
        bail!("no ServerAdopted Event: {events}");
    }

    // Waiting for the join: no pod anywhere, no pin yet.
    let node_name = relay["status"]["node"]["nodeName"].as_str().unwrap_or_default().to_string();
    eventually("NodeProvisioned=False/WaitingForJoin", Duration::from_secs(90), || async {
        let relay = relay_named(env, HZ).await?.unwrap_or_default();
        Ok(condition_is(&relay, "NodeProvisioned", "False", Some("WaitingForJoin")).then_some(()))
    })
    .await?;
    let sts = Api::<StatefulSet>::namespaced(env.client.clone(), NS).get(HZ).await?;
    let pod_spec = sts.spec.template.spec.clone().unwrap_or_default();
    if sts.spec.replicas != Some(0)
        || pod_spec.node_selector.is_some_and(|s| s.contains_key("kubernetes.io/hostname"))
    {
        bail!("before the join the StatefulSet must wait at 0 replicas, unpinned: {:?}", sts.spec);
    }
    let immutable = patch_relay_named(env, HZ, r#"{"spec":{"node":{"hetzner":{"location":"nbg1"}}}}"#).await;
    match immutable {
        Err(error) if error.to_string().contains("node.hetzner.location is immutable") => {}
        other => bail!("changing the location was not refused by CEL: {other:?}"),
    }

    let joined = fake.requests();
    *shared_agent_slot(&HETZNER_AGENT_PENDING) = Some(start_joining_node(env, &node_name, server_id)?);
    eventually("NodeProvisioned=True", Duration::from_secs(120), || async {
        let relay = relay_named(env, HZ).await?.unwrap_or_default();
        Ok(condition_is(&relay, "NodeProvisioned", "True", Some("NodeReady")).then_some(()))
    })
    .await?;
    let ip = eventually("hz-0 running on the Hetzner node", Duration::from_secs(120), || async {
        let Some(pod) = env.pod(&format!("{HZ}-0"), NS).await? else { return Ok(None) };
        let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str());
        let status = pod.status.unwrap_or_default();
        Ok((on_node && status.phase.as_deref() == Some("Running")).then(|| status.pod_ip.unwrap_or_default()))
    })
    .await?;
    let token = admin_token_of_relay(env, HZ).await?;
    let admin_url = format!("http://{ip}:2471");
    eventually("hz to accept the simulated host", Duration::from_secs(60), || {
        let (sim, admin_url, token) = (sim.clone(), admin_url.clone(), token.clone());
        async move { Ok(sim.register_with_relay(&admin_url, &token).await.ok()) }
    })
    .await?;
    env.kubectl(&["wait", "-n", NS, "--for=condition=Ready", &format!("relay/{HZ}"), "--timeout=120s"])
        .await?;
    let joined_calls = report("from the join to Ready", &joined, &fake.requests());
    let wide = env.kubectl(&["get", "relay", HZ, "-n", NS, "-o", "wide"]).await?;
    let table = kubectl_table(&wide);
    if table_cell(&table, HZ, "SERVER") != Some(node_name.as_str()) {
        bail!("kubectl get -o wide does not show the node {node_name}:\n{wide}");
    }
    let relay = relay_named(env, HZ).await?.unwrap_or_default();
    let node = &relay["status"]["node"];
    if node["location"] != "fsn1"
        || node["serverType"] != "cpx41"
        || !node["publicIpv4"].is_string()
        || node["phase"] != "Ready"
    {
        bail!("status.node is incomplete: {node}");
    }
    println!("   {HZ}: server {server_id}, node {node_name}; calls: create {created}, adopt {adopted}, join {joined_calls}");
    let agent = shared_agent_slot(&HETZNER_AGENT_PENDING).take();
    HETZNER
        .set(Hetzner { fake, sim, agent: Mutex::new(agent), unrelated })
        .map_err(|_| anyhow!("the Hetzner step ran twice"))?;
    Ok(())
}

/// The joining node's agent between its start and the end of the first step (so a
/// failure in between still stops it when the suite ends).
static HETZNER_AGENT_PENDING: Mutex<Option<Managed>> = Mutex::new(None);

fn shared_agent_slot(
    slot: &'static Mutex<Option<Managed>>,
) -> std::sync::MutexGuard<'static, Option<Managed>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn admin_token_of_relay(env: &Env, name: &str) -> anyhow::Result<String> {
    let secret = Api::<Secret>::namespaced(env.client.clone(), NS).get(&format!("{name}-admin")).await?;
    let bytes = secret.data.and_then(|d| d.get("token").cloned()).ok_or_else(|| anyhow!("no token"))?;
    Ok(String::from_utf8(bytes.0)?)
}

/// Step 2: steady state (no Hetzner call per reconcile; one after an operator restart),
/// then a second Relay created and deleted through 429 storms and 5xx.
pub async fn hetzner_steady_state_and_faults(env: &mut Env) -> anyhow::Result<()> {
    let hz = shared()?;
    let fake = &hz.fake;

    // Steady state: reconciles forced by annotation changes cost no Hetzner call.
    let window = Duration::from_secs(90);
    let before = fake.requests();
    let started = Instant::now();
    let mut nudges = 0;
    while started.elapsed() < window {
        env.kubectl(&[
            "annotate",
            "relay",
            HZ,
            "-n",
            NS,
            "--overwrite",
            &format!("e2e.atrelay.dev/nudge={nudges}"),
        ])
        .await?;
        nudges += 1;
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    let steady = report(
        &format!("steady state, {}s, {nudges} forced reconciles", window.as_secs()),
        &before,
        &fake.requests(),
    );
    if steady > 0 {
        bail!(
            "a Ready node cost {steady} Hetzner calls in {}s (the check interval is 10 minutes)",
            window.as_secs()
        );
    }
    // An operator restart forgets when it last checked: one GET /servers/{id}, no more.
    let before = fake.requests();
    restart_operator(env).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    env.kubectl(&["-n", OPERATOR_NS, "rollout", "status", "deployment/relay-operator", "--timeout=180s"])
        .await?;
    eventually("the restarted operator's check", Duration::from_secs(90), || async {
        Ok((fake.requests().get("GET /servers/{id}") > before.get("GET /servers/{id}")).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let restart = report("operator restart, then 30 s", &before, &fake.requests());
    if restart != 1 {
        bail!("an operator restart should cost exactly one Hetzner call per Relay, it cost {restart}");
    }
    println!(
        "   steady state: 0 calls in {}s despite {nudges} reconciles, 1 after a restart; by construction at most 1 per Relay per OPERATOR_HETZNER_CHECK_INTERVAL (10 min)",
        window.as_secs()
    );

    // A refused token: one request, a condition that says so, no retry storm.
    let before = fake.requests();
    create_token_secret(env, "hcloud-wrong", "not-the-token").await?;
    let manifest =
        relay_manifest(BAD_TOKEN, &hz.sim.plc_url()).replace("name: hcloud,", "name: hcloud-wrong,");
    env.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest)).await?;
    eventually("NodeProvisioned=False/HetznerTokenRejected", Duration::from_secs(60), || async {
        let relay = relay_named(env, BAD_TOKEN).await?.unwrap_or_default();
        Ok(condition_is(&relay, "NodeProvisioned", "False", Some("HetznerTokenRejected")).then_some(()))
    })
    .await?;
    for nudge in 0..3 {
        env.kubectl(&[
            "annotate",
            "relay",
            BAD_TOKEN,
            "-n",
            NS,
            "--overwrite",
            &format!("e2e.atrelay.dev/nudge={nudge}"),
        ])
        .await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let refused = report("a refused token, then 30 s and 3 forced reconciles", &before, &fake.requests());
    if refused != 1 {
        bail!("a refused token should cost one request, not {refused}");
    }
    // Fixed token, then deleted: nothing was created, nothing to delete.
    env.kubectl(&["delete", "secret", "hcloud-wrong", "-n", NS]).await?;
    create_token_secret(env, "hcloud-wrong", TOKEN).await?;
    env.kubectl(&["delete", "relay", BAD_TOKEN, "-n", NS, "--wait=false"]).await?;
    eventually("the refused-token Relay gone", Duration::from_secs(120), || async {
        Ok(relay_named(env, BAD_TOKEN).await?.is_none().then_some(()))
    })
    .await?;

    // Create through a 429 storm and 5xx answers.
    let before = fake.requests();
    let created_before = fake.servers_created();
    fake.inject(None, Fault::RateLimited, 3);
    fake.inject(Some("POST /servers"), Fault::ServerError, 2);
    env.kubectl_stdin(&["apply", "-f", "-"], Some(&relay_manifest(STORM, &hz.sim.plc_url()))).await?;
    let storm = eventually("hz-storm waiting for its node", Duration::from_secs(240), || async {
        let relay = relay_named(env, STORM).await?.unwrap_or_default();
        Ok(condition_is(&relay, "NodeProvisioned", "False", Some("WaitingForJoin")).then_some(relay))
    })
    .await?;
    let uid = storm["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    let create_calls = report("create through 3 × 429 and 2 × 503", &before, &fake.requests());
    if fake.servers_created() != created_before + 1 || owned(fake, &uid).len() != 1 {
        bail!(
            "duplicates: {} servers created for {STORM}, {} carry its UID",
            fake.servers_created() - created_before,
            owned(fake, &uid).len()
        );
    }

    // Delete through 429s and 5xx.
    let before = fake.requests();
    fake.inject(Some("DELETE /servers/{id}"), Fault::RateLimited, 2);
    fake.inject(Some("DELETE /servers/{id}"), Fault::ServerError, 2);
    fake.inject(Some("GET /servers/{id}"), Fault::ServerError, 2);
    env.kubectl(&["delete", "relay", STORM, "-n", NS, "--wait=false"]).await?;
    eventually("hz-storm gone (finalizer removed)", Duration::from_secs(240), || async {
        Ok(relay_named(env, STORM).await?.is_none().then_some(()))
    })
    .await?;
    let delete_calls = report("delete through 2 × 429 and 4 × 503", &before, &fake.requests());
    if !owned(fake, &uid).is_empty() || fake.firewalls().iter().any(|f| f.2.get(UID_LABEL) == Some(&uid)) {
        bail!("{STORM}'s server or firewall leaked: {:?} {:?}", fake.servers(), fake.firewalls());
    }
    println!("   {STORM}: create {create_calls} calls, delete {delete_calls} calls; 0 duplicates, 0 leaked");
    Ok(())
}

/// Step 3: deleting the Relay drains its node, deletes the server (until 404), deletes the
/// Node, removes the finalizer; the unrelated servers are still there.
pub async fn hetzner_delete(env: &mut Env) -> anyhow::Result<()> {
    let hz = shared()?;
    let fake = &hz.fake;
    let relay = relay_named(env, HZ).await?.ok_or_else(|| anyhow!("no Relay {HZ}"))?;
    let uid = relay["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    let node_name = relay["status"]["node"]["nodeName"].as_str().unwrap_or_default().to_string();
    let pod_uid = env.pod(&format!("{HZ}-0"), NS).await?.and_then(|p| p.uid());
    let before = fake.requests();
    env.kubectl(&["delete", "relay", HZ, "-n", NS, "--wait=false"]).await?;
    eventually("the Relay gone", Duration::from_secs(180), || async {
        Ok(relay_named(env, HZ).await?.is_none().then_some(()))
    })
    .await?;
    let calls = report("delete", &before, &fake.requests());
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    if nodes.get_opt(&node_name).await?.is_some() {
        bail!("Node {node_name} still exists after the Relay is gone");
    }
    if !owned(fake, &uid).is_empty() {
        bail!("the server leaked: {:?}", fake.servers());
    }
    let old_pod_running = env.pod(&format!("{HZ}-0"), NS).await?.is_some_and(|p| p.uid() == pod_uid);
    if old_pod_running {
        bail!("the relay pod on the deleted node is still there");
    }
    let firewalls: Vec<_> =
        fake.firewalls().into_iter().filter(|f| f.2.get(UID_LABEL) == Some(&uid)).collect();
    if !firewalls.is_empty() {
        bail!("the Relay's firewall leaked: {firewalls:?}");
    }
    let left: Vec<i64> = fake.servers().iter().map(|s| s.id).collect();
    if left != hz.unrelated {
        bail!("the unrelated servers {:?} must stay untouched, the fake has {left:?}", hz.unrelated);
    }
    println!(
        "   {HZ} deleted in {calls} calls; servers created in all: {}, left: the {} unrelated ones; total Hetzner requests of the steps: {}",
        fake.servers_created(),
        left.len(),
        fake.total_requests()
    );
    if let Some(mut agent) = hz.agent.lock().unwrap_or_else(|p| p.into_inner()).take() {
        agent.stop(Duration::from_secs(5));
    }
    Ok(())
}
