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
//! - containers with no local binary are reported `Waiting` (`ImageNotRunnable`),
//!   never as running;
//! - a deleted pod's processes get SIGTERM, then SIGKILL after the grace period,
//!   and the pod is removed (what the kubelet does).

use anyhow::{anyhow, bail, Context};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node, PersistentVolume, PersistentVolumeClaim, Pod, Probe, Secret,
};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tracing::{info, warn};

/// Settings of one agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub work_dir: PathBuf,
    /// Image reference prefixes and the local binaries that run them.
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
    register_node(&client, &config).await?;
    info!(node = %config.node_name, "node registered");
    tokio::spawn(heartbeat(client.clone(), config.clone()));
    tokio::spawn(provision_volumes(client.clone(), config.clone()));
    let mut agent = Agent { client, config, pods: HashMap::new(), next_ip: 2 };
    loop {
        if let Err(error) = agent.sync().await {
            warn!(%error, "pod sync failed");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------- node

async fn register_node(client: &Client, config: &AgentConfig) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = &config.node_name;
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": std::env::consts::ARCH,
            "node.kubernetes.io/instance-type": "e2e-loopback",
        }},
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(error.into()),
    }
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(node_status(config))).await?;
    Ok(())
}

fn node_status(config: &AgentConfig) -> Value {
    let now = Timestamp::now().to_string();
    let resources =
        json!({"cpu": config.cpu, "memory": config.memory, "pods": "110", "ephemeral-storage": "100Gi"});
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("Ready", "True", "KubeletReady", "test node agent is running"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", ""),
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": config.node_name}],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "kubeProxyVersion": "",
            "osImage": "relay-e2e test node agent", "containerRuntimeVersion": "process://local",
            "kubeletVersion": "v1.37.2-e2e", "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
        },
    }})
}

/// Renews the node Lease every 10 s (what the node lifecycle controller watches)
/// and refreshes the Ready condition's heartbeat every 40 s.
async fn heartbeat(client: Client, config: AgentConfig) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client.clone());
    let mut ticks = 0u64;
    loop {
        // MicroTime: exactly six fractional digits.
        let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": config.node_name},
            "spec": {"holderIdentity": config.node_name, "leaseDurationSeconds": 40, "renewTime": now},
        });
        let params = PatchParams::apply("test-node-agent").force();
        if let Err(error) = leases.patch(&config.node_name, &params, &Patch::Apply(&lease)).await {
            warn!(%error, "node lease renewal failed");
        }
        if ticks.is_multiple_of(4) {
            if let Err(error) = nodes
                .patch_status(&config.node_name, &PatchParams::default(), &Patch::Merge(node_status(&config)))
                .await
            {
                warn!(%error, "node status heartbeat failed");
            }
        }
        ticks += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

// ---------------------------------------------------------------- volumes

/// Binds every pending claim to a new host-directory PersistentVolume, like a
/// local-path provisioner would.
async fn provision_volumes(client: Client, config: AgentConfig) {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    loop {
        match claims.list(&ListParams::default()).await {
            Ok(list) => {
                for claim in list {
                    if let Err(error) = provision(&volumes, &claim, &config).await {
                        warn!(claim = %claim.name_any(), %error, "provisioning failed");
                    }
                }
            }
            Err(error) => warn!(%error, "listing claims failed"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn provision(
    volumes: &Api<PersistentVolume>,
    claim: &PersistentVolumeClaim,
    config: &AgentConfig,
) -> anyhow::Result<()> {
    let pending = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
    let spec = claim.spec.clone().unwrap_or_default();
    if !pending || spec.volume_name.is_some() {
        return Ok(());
    }
    let uid = claim.uid().ok_or_else(|| anyhow!("claim without uid"))?;
    let name = format!("pvc-{uid}");
    let path = config.work_dir.join("volumes").join(&name);
    std::fs::create_dir_all(&path)?;
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    let volume: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"e2e.atrelay.dev/provisioned-by": config.node_name}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": spec.storage_class_name.clone().unwrap_or_default(),
            "hostPath": {"path": path, "type": "DirectoryOrCreate"},
            "claimRef": {"namespace": claim.namespace(), "name": claim.name_any(), "uid": uid},
        },
    }))?;
    match volumes.create(&PostParams::default(), &volume).await {
        Ok(_) => info!(claim = %claim.name_any(), volume = %name, "provisioned"),
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(error.into()),
    }
    Ok(())
}

// ---------------------------------------------------------------- pods

struct Agent {
    client: Client,
    config: AgentConfig,
    pods: HashMap<String, PodRuntime>,
    next_ip: u16,
}

struct PodRuntime {
    name: String,
    namespace: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    start_time: String,
    containers: Vec<ContainerRuntime>,
    /// Condition type → (status, lastTransitionTime).
    conditions: BTreeMap<&'static str, (bool, String)>,
    last_reported: Option<Value>,
}

struct ContainerRuntime {
    spec: Container,
    binary: Option<PathBuf>,
    child: Option<Child>,
    restart_count: i32,
    started_at: Option<String>,
    waiting: Option<(String, String)>,
    last_termination: Option<Value>,
    started: bool,
    ready: bool,
    next_start: Instant,
    backoff: Duration,
    startup: ProbeState,
    liveness: ProbeState,
    readiness: ProbeState,
}

#[derive(Default)]
struct ProbeState {
    next_at: Option<Instant>,
    failures: i32,
    successes: i32,
}

impl Agent {
    async fn sync(&mut self) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.config.node_name));
        let list = pods.list(&params).await?;
        let mut seen = Vec::new();
        for pod in list {
            let Some(uid) = pod.uid() else { continue };
            seen.push(uid.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&pod, &uid).await;
                continue;
            }
            if !self.pods.contains_key(&uid) {
                let runtime = self.admit(&pod)?;
                self.pods.insert(uid.clone(), runtime);
            }
            if let Err(error) = self.step(&pod, &uid).await {
                warn!(pod = %pod.name_any(), %error, "pod step failed");
            }
        }
        // Pods removed behind our back (force deletion): stop their processes.
        let gone: Vec<String> = self.pods.keys().filter(|uid| !seen.contains(uid)).cloned().collect();
        for uid in gone {
            if let Some(mut runtime) = self.pods.remove(&uid) {
                stop_all(&mut runtime, Duration::from_secs(5)).await;
            }
        }
        Ok(())
    }

    fn admit(&mut self, pod: &Pod) -> anyhow::Result<PodRuntime> {
        let n = self.next_ip;
        self.next_ip += 1;
        if n > 254 {
            bail!("pod IP range 127.{}.0.0/24 exhausted", self.config.subnet);
        }
        let ip = Ipv4Addr::new(127, self.config.subnet, 0, n as u8);
        let uid = pod.uid().unwrap_or_default();
        let dir = self.config.work_dir.join("pods").join(&uid);
        std::fs::create_dir_all(&dir)?;
        let spec = pod.spec.clone().unwrap_or_default();
        let containers = spec
            .containers
            .iter()
            .map(|container| ContainerRuntime {
                binary: self.binary_for(container.image.as_deref().unwrap_or_default()),
                spec: container.clone(),
                child: None,
                restart_count: 0,
                started_at: None,
                waiting: None,
                last_termination: None,
                started: false,
                ready: false,
                next_start: Instant::now(),
                backoff: Duration::from_secs(1),
                startup: ProbeState::default(),
                liveness: ProbeState::default(),
                readiness: ProbeState::default(),
            })
            .collect();
        info!(pod = %pod.name_any(), %ip, "admitted");
        Ok(PodRuntime {
            name: pod.name_any(),
            namespace: pod.namespace().unwrap_or_default(),
            ip,
            dir,
            start_time: Timestamp::now().to_string(),
            containers,
            conditions: BTreeMap::new(),
            last_reported: None,
        })
    }

    fn binary_for(&self, image: &str) -> Option<PathBuf> {
        self.config
            .images
            .iter()
            .find(|(prefix, _)| image.starts_with(prefix.as_str()))
            .map(|(_, binary)| binary.clone())
    }

    async fn step(&mut self, pod: &Pod, uid: &str) -> anyhow::Result<()> {
        let mounts = match self.prepare_volumes(pod, uid).await {
            Ok(mounts) => Ok(mounts),
            Err(error) => Err(error.to_string()),
        };
        let runtime = self.pods.get_mut(uid).ok_or_else(|| anyhow!("no runtime"))?;
        for index in 0..runtime.containers.len() {
            let ip = runtime.ip;
            let dir = runtime.dir.clone();
            let container = &mut runtime.containers[index];
            reap(container);
            if container.binary.is_none() {
                let image = container.spec.image.clone().unwrap_or_default();
                container.waiting = Some((
                    "ImageNotRunnable".into(),
                    format!("the test node has no local binary for image {image:?}"),
                ));
                continue;
            }
            if container.child.is_none() && Instant::now() >= container.next_start {
                match &mounts {
                    Err(message) => {
                        container.waiting = Some(("CreateContainerConfigError".into(), message.clone()))
                    }
                    Ok(mounts) => {
                        match resolve_env(&self.client, pod, &container.spec, ip, mounts, &self.config).await
                        {
                            Err(error) => {
                                container.waiting =
                                    Some(("CreateContainerConfigError".into(), error.to_string()));
                                container.next_start = Instant::now() + Duration::from_secs(2);
                            }
                            Ok(env) => start(container, &env, ip, mounts, &dir, pod)?,
                        }
                    }
                }
            }
            probe_all(container, ip).await;
        }
        self.report(uid).await
    }

    /// Host paths for every volume of the pod, by volume name.
    async fn prepare_volumes(&self, pod: &Pod, uid: &str) -> anyhow::Result<HashMap<String, PathBuf>> {
        let namespace = pod.namespace().unwrap_or_default();
        let dir = self.config.work_dir.join("pods").join(uid).join("volumes");
        let mut paths = HashMap::new();
        for volume in pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default() {
            let path = dir.join(&volume.name);
            if let Some(claim) = &volume.persistent_volume_claim {
                paths.insert(volume.name.clone(), self.claim_path(&namespace, &claim.claim_name).await?);
                continue;
            }
            std::fs::create_dir_all(&path)?;
            if volume.empty_dir.is_some() {
            } else if let Some(projected) = &volume.projected {
                let wants_token =
                    projected.sources.iter().flatten().any(|s| s.service_account_token.is_some());
                if wants_token && !path.join("kubeconfig").exists() {
                    self.write_service_account_files(pod, &path).await?;
                }
            } else if let Some(source) = &volume.secret {
                let name = source.secret_name.clone().unwrap_or_default();
                let secret = Api::<Secret>::namespaced(self.client.clone(), &namespace).get(&name).await?;
                for (key, value) in secret.data.unwrap_or_default() {
                    std::fs::write(path.join(key), value.0)?;
                }
            } else if let Some(source) = &volume.config_map {
                let map =
                    Api::<ConfigMap>::namespaced(self.client.clone(), &namespace).get(&source.name).await?;
                for (key, value) in map.data.unwrap_or_default() {
                    std::fs::write(path.join(key), value)?;
                }
            } else {
                bail!("volume {:?}: this volume type is not supported by the test node", volume.name);
            }
            paths.insert(volume.name.clone(), path);
        }
        Ok(paths)
    }

    async fn claim_path(&self, namespace: &str, claim_name: &str) -> anyhow::Result<PathBuf> {
        let claim =
            Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), namespace).get(claim_name).await?;
        let volume_name = claim
            .spec
            .and_then(|s| s.volume_name)
            .ok_or_else(|| anyhow!("claim {claim_name} is not bound yet"))?;
        let volume = Api::<PersistentVolume>::all(self.client.clone()).get(&volume_name).await?;
        let path = volume
            .spec
            .and_then(|s| s.host_path)
            .map(|h| PathBuf::from(h.path))
            .ok_or_else(|| anyhow!("volume {volume_name} is not a host path"))?;
        std::fs::create_dir_all(&path)?;
        Ok(path)
    }

    /// A bound service-account token (TokenRequest API) and a kubeconfig using it.
    async fn write_service_account_files(&self, pod: &Pod, path: &Path) -> anyhow::Result<()> {
        let namespace = pod.namespace().unwrap_or_default();
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), &namespace);
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400, "boundObjectRef": {
                "apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid(),
            }},
        });
        let response: Value = accounts
            .create_subresource("token", &account, &PostParams::default(), &request)
            .await
            .context("TokenRequest")?;
        let token =
            response["status"]["token"].as_str().ok_or_else(|| anyhow!("TokenRequest returned no token"))?;
        std::fs::write(path.join("token"), token)?;
        std::fs::write(path.join("namespace"), &namespace)?;
        std::fs::copy(&self.config.ca_file, path.join("ca.crt"))?;
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "in-cluster", "cluster": {
                "server": self.config.api_server,
                "certificate-authority": path.join("ca.crt"),
            }}],
            "users": [{"name": "service-account", "user": {"tokenFile": path.join("token")}}],
            "contexts": [{"name": "in-cluster", "context": {
                "cluster": "in-cluster", "user": "service-account", "namespace": namespace,
            }}],
            "current-context": "in-cluster",
        });
        std::fs::write(path.join("kubeconfig"), serde_json::to_vec_pretty(&kubeconfig)?)?;
        Ok(())
    }

    async fn report(&mut self, uid: &str) -> anyhow::Result<()> {
        let runtime = self.pods.get_mut(uid).ok_or_else(|| anyhow!("no runtime"))?;
        let now = Timestamp::now().to_string();
        let all_ready = runtime.containers.iter().all(|c| c.ready);
        let any_running = runtime.containers.iter().any(|c| c.child.is_some());
        let mut set = |type_: &'static str, status: bool| {
            let entry = runtime.conditions.entry(type_).or_insert((status, now.clone()));
            if entry.0 != status {
                *entry = (status, now.clone());
            }
        };
        set("PodReadyToStartContainers", true);
        set("Initialized", true);
        set("ContainersReady", all_ready);
        set("Ready", all_ready);
        set("PodScheduled", true);
        let conditions: Vec<Value> = runtime
            .conditions
            .iter()
            .map(|(type_, (status, time))| {
                json!({"type": type_, "status": if *status { "True" } else { "False" }, "lastTransitionTime": time})
            })
            .collect();
        let statuses: Vec<Value> = runtime.containers.iter().map(container_status).collect();
        let ip = runtime.ip.to_string();
        let status = json!({"status": {
            "phase": if any_running { "Running" } else { "Pending" },
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": runtime.start_time,
            "conditions": conditions,
            "containerStatuses": statuses,
        }});
        if runtime.last_reported.as_ref() == Some(&status) {
            return Ok(());
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &runtime.namespace);
        pods.patch_status(&runtime.name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        runtime.last_reported = Some(status);
        Ok(())
    }

    async fn terminate(&mut self, pod: &Pod, uid: &str) {
        let grace =
            pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).clamp(0, 60);
        if let Some(mut runtime) = self.pods.remove(uid) {
            stop_all(&mut runtime, Duration::from_secs(grace as u64)).await;
            info!(pod = %runtime.name, "stopped");
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
            ..DeleteParams::default()
        };
        if let Err(error) = pods.delete(&pod.name_any(), &params).await {
            if !matches!(&error, kube::Error::Api(status) if status.code == 404 || status.code == 409) {
                warn!(pod = %pod.name_any(), %error, "final pod deletion failed");
            }
        }
    }
}

fn container_status(container: &ContainerRuntime) -> Value {
    let state = match (&container.child, &container.started_at, &container.waiting) {
        (Some(_), Some(started_at), _) => json!({"running": {"startedAt": started_at}}),
        (_, _, Some((reason, message))) => json!({"waiting": {"reason": reason, "message": message}}),
        _ => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    let pid = container.child.as_ref().and_then(|c| c.id());
    json!({
        "name": container.spec.name,
        "image": container.spec.image.clone().unwrap_or_default(),
        "imageID": container.binary.as_ref().map(|b| format!("file://{}", b.display())).unwrap_or_default(),
        "containerID": pid.map(|p| format!("process://{p}")),
        "ready": container.ready,
        "started": container.started,
        "restartCount": container.restart_count,
        "state": state,
        "lastState": container.last_termination.clone().unwrap_or_else(|| json!({})),
    })
}

/// Notices an exited process and schedules its restart with backoff.
fn reap(container: &mut ContainerRuntime) {
    let Some(child) = container.child.as_mut() else { return };
    let Ok(Some(status)) = child.try_wait() else { return };
    let code = status.code().unwrap_or(137);
    warn!(container = %container.spec.name, code, "container exited");
    container.last_termination = Some(json!({"terminated": {
        "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
        "startedAt": container.started_at, "finishedAt": Timestamp::now().to_string(),
    }}));
    container.child = None;
    container.started = false;
    container.ready = false;
    container.restart_count += 1;
    container.waiting = Some(("CrashLoopBackOff".into(), format!("exited with code {code}; restarting")));
    container.next_start = Instant::now() + container.backoff;
    container.backoff = (container.backoff * 2).min(Duration::from_secs(10));
}

fn start(
    container: &mut ContainerRuntime,
    env: &[(String, String)],
    ip: Ipv4Addr,
    mounts: &HashMap<String, PathBuf>,
    dir: &Path,
    pod: &Pod,
) -> anyhow::Result<()> {
    let binary = container.binary.clone().ok_or_else(|| anyhow!("no binary"))?;
    let mount_map = mount_map(&container.spec, mounts);
    let args: Vec<String> = container
        .spec
        .args
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|arg| rewrite(arg, ip, &mount_map))
        .collect();
    let log = dir.join(format!("{}.log", container.spec.name));
    let out = std::fs::File::options().create(true).append(true).open(&log)?;
    let mut command = Command::new(&binary);
    command
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.clone(), v.clone())))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    // SAFETY: prctl only affects the child; if the agent dies, so do its containers.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
    info!(pod = %pod.name_any(), container = %container.spec.name, pid = ?child.id(), %ip, "container started");
    container.child = Some(child);
    container.started_at = Some(Timestamp::now().to_string());
    container.waiting = None;
    let now = Instant::now();
    let delay = |probe: &Option<Probe>| {
        now + Duration::from_secs(
            probe.as_ref().and_then(|p| p.initial_delay_seconds).unwrap_or(0).max(0) as u64
        )
    };
    container.startup =
        ProbeState { next_at: Some(delay(&container.spec.startup_probe)), ..ProbeState::default() };
    container.liveness =
        ProbeState { next_at: Some(delay(&container.spec.liveness_probe)), ..ProbeState::default() };
    container.readiness =
        ProbeState { next_at: Some(delay(&container.spec.readiness_probe)), ..ProbeState::default() };
    container.started = container.spec.startup_probe.is_none();
    Ok(())
}

/// Runs whichever probes are due and applies their verdicts.
async fn probe_all(container: &mut ContainerRuntime, ip: Ipv4Addr) {
    if container.child.is_none() {
        return;
    }
    let spec = container.spec.clone();
    if !container.started {
        if let Some(probe) = &spec.startup_probe {
            match run_probe(probe, &spec, ip, &mut container.startup).await {
                Some(true) => container.started = true,
                Some(false) if container.startup.failures >= probe.failure_threshold.unwrap_or(3) => {
                    kill(container, "startup probe failed").await;
                }
                _ => {}
            }
        }
        return;
    }
    if let Some(probe) = &spec.liveness_probe {
        if run_probe(probe, &spec, ip, &mut container.liveness).await == Some(false)
            && container.liveness.failures >= probe.failure_threshold.unwrap_or(3)
        {
            kill(container, "liveness probe failed").await;
            return;
        }
    }
    match &spec.readiness_probe {
        None => container.ready = true,
        Some(probe) => match run_probe(probe, &spec, ip, &mut container.readiness).await {
            Some(true) if container.readiness.successes >= probe.success_threshold.unwrap_or(1) => {
                container.ready = true
            }
            Some(false) if container.readiness.failures >= probe.failure_threshold.unwrap_or(3) => {
                container.ready = false
            }
            _ => {}
        },
    }
}

async fn kill(container: &mut ContainerRuntime, why: &str) {
    warn!(container = %container.spec.name, why, "killing container");
    if let Some(child) = container.child.as_mut() {
        let _ = child.kill().await;
    }
    reap(container);
}

/// Runs a probe if it is due: `Some(passed)`, or `None` when not due.
async fn run_probe(
    probe: &Probe,
    container: &Container,
    ip: Ipv4Addr,
    state: &mut ProbeState,
) -> Option<bool> {
    let now = Instant::now();
    if state.next_at.is_some_and(|at| now < at) {
        return None;
    }
    state.next_at = Some(now + Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64));
    let passed = match &probe.http_get {
        Some(action) => {
            let port = match &action.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port) => Some(*port),
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .map(|p| p.container_port),
            };
            match port {
                None => false,
                Some(port) => {
                    let path = action.path.clone().unwrap_or_else(|| "/".into());
                    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
                    let url = format!("http://{ip}:{port}{path}");
                    match reqwest::Client::new().get(url).timeout(timeout).send().await {
                        Ok(response) => response.status().is_success() || response.status().is_redirection(),
                        Err(_) => false,
                    }
                }
            }
        }
        // Only HTTP probes are implemented; anything else is reported as failing, never faked.
        None => false,
    };
    if passed {
        state.successes += 1;
        state.failures = 0;
    } else {
        state.failures += 1;
        state.successes = 0;
    }
    Some(passed)
}

async fn stop_all(runtime: &mut PodRuntime, grace: Duration) {
    for container in &mut runtime.containers {
        let Some(child) = container.child.as_mut() else { continue };
        if let Some(pid) = child.id() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
        container.child = None;
    }
}

/// Container mount path → host directory.
fn mount_map(container: &Container, volumes: &HashMap<String, PathBuf>) -> Vec<(String, PathBuf)> {
    let mut map: Vec<(String, PathBuf)> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|mount| {
            let base = volumes.get(&mount.name)?;
            let host = match mount.sub_path.as_deref() {
                Some(sub) if !sub.is_empty() => base.join(sub),
                _ => base.clone(),
            };
            Some((mount.mount_path.trim_end_matches('/').to_string(), host))
        })
        .collect();
    // Longest mount path first, so nested mounts win.
    map.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    map
}

/// What a network and a mount namespace would do for the process: wildcard
/// listen addresses become the pod IP, container paths become host paths.
pub fn rewrite(value: &str, ip: Ipv4Addr, mounts: &[(String, PathBuf)]) -> String {
    let value = value.replace("0.0.0.0:", &format!("{ip}:"));
    for (container_path, host) in mounts {
        if value == *container_path {
            return host.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(&format!("{container_path}/")) {
            return host.join(rest).display().to_string();
        }
    }
    value
}

async fn resolve_env(
    client: &Client,
    pod: &Pod,
    container: &Container,
    ip: Ipv4Addr,
    volumes: &HashMap<String, PathBuf>,
    config: &AgentConfig,
) -> anyhow::Result<Vec<(String, String)>> {
    let namespace = pod.namespace().unwrap_or_default();
    let mounts = mount_map(container, volumes);
    let mut env = Vec::new();
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        bail!("envFrom is not supported by the test node");
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, None) => String::new(),
            (None, Some(source)) => {
                if let Some(selector) = &source.secret_key_ref {
                    let secret =
                        Api::<Secret>::namespaced(client.clone(), &namespace).get_opt(&selector.name).await?;
                    let bytes = secret.and_then(|s| s.data).and_then(|d| d.get(&selector.key).cloned());
                    match bytes {
                        Some(bytes) => String::from_utf8(bytes.0).context("secret value is not UTF-8")?,
                        None if selector.optional == Some(true) => continue,
                        None => {
                            bail!("secret {}/{} key {} not found", namespace, selector.name, selector.key)
                        }
                    }
                } else if let Some(selector) = &source.config_map_key_ref {
                    let map = Api::<ConfigMap>::namespaced(client.clone(), &namespace)
                        .get_opt(&selector.name)
                        .await?;
                    match map.and_then(|m| m.data).and_then(|d| d.get(&selector.key).cloned()) {
                        Some(value) => value,
                        None if selector.optional == Some(true) => continue,
                        None => {
                            bail!("configmap {}/{} key {} not found", namespace, selector.name, selector.key)
                        }
                    }
                } else if let Some(field) = &source.field_ref {
                    field_value(pod, &field.field_path, ip)?
                } else if let Some(resource) = &source.resource_field_ref {
                    resource_value(
                        container,
                        &resource.resource,
                        resource.divisor.as_ref().map(|d| d.0.as_str()),
                        config,
                    )?
                } else {
                    bail!("env {}: unsupported valueFrom", var.name);
                }
            }
        };
        env.push((var.name.clone(), rewrite(&value, ip, &mounts)));
    }
    for (container_path, host) in &mounts {
        if container_path == "/var/run/secrets/kubernetes.io/serviceaccount"
            && host.join("kubeconfig").exists()
        {
            env.push(("KUBECONFIG".into(), host.join("kubeconfig").display().to_string()));
        }
    }
    Ok(env)
}

fn field_value(pod: &Pod, path: &str, ip: Ipv4Addr) -> anyhow::Result<String> {
    let spec = pod.spec.clone().unwrap_or_default();
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.podIP" => ip.to_string(),
        "status.hostIP" => "127.0.0.1".into(),
        other => bail!("fieldRef {other} is not supported by the test node"),
    })
}

fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    config: &AgentConfig,
) -> anyhow::Result<String> {
    let (kind, name) = resource.split_once('.').ok_or_else(|| anyhow!("bad resource {resource}"))?;
    let resources = container.resources.clone().unwrap_or_default();
    let map = if kind == "limits" { resources.limits } else { resources.requests };
    let node_default = if name == "cpu" { config.cpu.clone() } else { config.memory.clone() };
    let quantity = map.and_then(|m| m.get(name).map(|q| q.0.clone())).unwrap_or(node_default);
    let value = parse_quantity(&quantity)?;
    let divisor = parse_quantity(divisor.unwrap_or("1"))?;
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

fn parse_quantity(text: &str) -> anyhow::Result<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: f64 = number.parse().with_context(|| format!("quantity {text:?}"))?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        other => bail!("quantity suffix {other:?}"),
    };
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_and_mount_paths_are_rewritten() {
        let ip = Ipv4Addr::new(127, 1, 0, 7);
        let mounts = vec![("/data".to_string(), PathBuf::from("/tmp/vol"))];
        assert_eq!(rewrite("0.0.0.0:2470", ip, &mounts), "127.1.0.7:2470");
        assert_eq!(rewrite("--probe-addr=0.0.0.0:8081", ip, &mounts), "--probe-addr=127.1.0.7:8081");
        assert_eq!(rewrite("/data", ip, &mounts), "/tmp/vol");
        assert_eq!(rewrite("/data/relay.db", ip, &mounts), "/tmp/vol/relay.db");
        assert_eq!(rewrite("/database", ip, &mounts), "/database");
        assert_eq!(rewrite("bsky.network", ip, &mounts), "bsky.network");
    }

    #[test]
    fn quantities_for_resource_env() {
        assert_eq!(parse_quantity("500m").unwrap(), 0.5);
        assert_eq!(parse_quantity("1Gi").unwrap(), 1073741824.0);
        assert!(parse_quantity("x").is_err());
    }
}
