//! Pods bound to this node: admitted with a pod IP of their own, their containers
//! started, probed and restarted at each sync, their status reported (only when it
//! changed), and their processes stopped when the pod is deleted.

use super::env::resolve_env;
use super::oci::is_archive;
use super::probes::{probe_all, ProbeState};
use super::processes::{reap, start, stop_all};
use super::services::service_hosts;
use super::AgentConfig;
use anyhow::{anyhow, bail};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::process::Child;
use tracing::{info, warn};

pub(super) struct Agent {
    pub(super) client: Client,
    pub(super) config: AgentConfig,
    pub(super) pods: HashMap<String, PodRuntime>,
    pub(super) next_ip: u16,
}

pub(super) struct PodRuntime {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) ip: Ipv4Addr,
    pub(super) dir: PathBuf,
    pub(super) start_time: String,
    pub(super) containers: Vec<ContainerRuntime>,
    /// Condition type → (status, lastTransitionTime).
    pub(super) conditions: BTreeMap<&'static str, (bool, String)>,
    pub(super) last_reported: Option<Value>,
}

pub(super) struct ContainerRuntime {
    pub(super) spec: Container,
    pub(super) binary: Option<PathBuf>,
    pub(super) child: Option<Child>,
    pub(super) restart_count: i32,
    pub(super) started_at: Option<String>,
    pub(super) waiting: Option<(String, String)>,
    pub(super) last_termination: Option<Value>,
    /// The final state of a container that will not be restarted (restartPolicy Never,
    /// or OnFailure after a success).
    pub(super) terminated: Option<Value>,
    /// `Always`, `OnFailure` or `Never`, from the pod.
    pub(super) restart_policy: String,
    /// The host file standing in for the container's `terminationMessagePath`.
    pub(super) termination_log: PathBuf,
    pub(super) started: bool,
    pub(super) ready: bool,
    pub(super) next_start: Instant,
    pub(super) backoff: Duration,
    pub(super) startup: ProbeState,
    pub(super) liveness: ProbeState,
    pub(super) readiness: ProbeState,
}

impl Agent {
    pub(super) async fn sync(&mut self) -> anyhow::Result<()> {
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

    pub(super) fn admit(&mut self, pod: &Pod) -> anyhow::Result<PodRuntime> {
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
        let restart_policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
        let containers = spec
            .containers
            .iter()
            .map(|container| ContainerRuntime {
                terminated: None,
                restart_policy: restart_policy.clone(),
                termination_log: dir.join(format!("{}.termination-log", container.name)),
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

    pub(super) fn binary_for(&self, image: &str) -> Option<PathBuf> {
        self.config
            .images
            .iter()
            .find(|(prefix, _)| image.starts_with(prefix.as_str()))
            .map(|(_, binary)| binary.clone())
    }

    pub(super) async fn step(&mut self, pod: &Pod, uid: &str) -> anyhow::Result<()> {
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
            if container.child.is_none()
                && container.terminated.is_none()
                && Instant::now() >= container.next_start
            {
                match &mounts {
                    Err(message) => {
                        container.waiting = Some(("CreateContainerConfigError".into(), message.clone()))
                    }
                    Ok(mounts) => {
                        let image = container.binary.as_deref().is_some_and(is_archive);
                        let env =
                            resolve_env(&self.client, pod, &container.spec, ip, mounts, &self.config, image);
                        match env.await {
                            Err(error) => {
                                container.waiting =
                                    Some(("CreateContainerConfigError".into(), error.to_string()));
                                container.next_start = Instant::now() + Duration::from_secs(2);
                            }
                            Ok(env) => {
                                let texts = container.spec.args.iter().flatten().map(String::as_str);
                                let texts = texts.chain(env.iter().map(|(_, v)| v.as_str()));
                                let hosts = service_hosts(&self.client, texts).await;
                                start(container, &env, &hosts, ip, mounts, &dir, pod)?
                            }
                        }
                    }
                }
            }
            probe_all(container, ip).await;
        }
        self.report(uid).await
    }

    pub(super) async fn report(&mut self, uid: &str) -> anyhow::Result<()> {
        let runtime = self.pods.get_mut(uid).ok_or_else(|| anyhow!("no runtime"))?;
        let now = Timestamp::now().to_string();
        let all_ready = runtime.containers.iter().all(|c| c.ready);
        let any_running = runtime.containers.iter().any(|c| c.child.is_some());
        let all_terminated = runtime.containers.iter().all(|c| c.terminated.is_some());
        let all_succeeded = runtime
            .containers
            .iter()
            .all(|c| c.terminated.as_ref().is_some_and(|t| t["terminated"]["exitCode"] == 0));
        let phase = match (all_terminated, all_succeeded, any_running) {
            (true, true, _) => "Succeeded",
            (true, false, _) => "Failed",
            (false, _, true) => "Running",
            _ => "Pending",
        };
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
            "phase": phase,
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

    pub(super) async fn terminate(&mut self, pod: &Pod, uid: &str) {
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

pub(super) fn container_status(container: &ContainerRuntime) -> Value {
    let state = match (&container.child, &container.started_at, &container.waiting) {
        _ if container.terminated.is_some() => container.terminated.clone().unwrap_or_default(),
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
