//! Volumes: host-directory PersistentVolumes for pending claims (a local-path
//! provisioner), and each pod volume as a host directory (claims, emptyDir, Secrets,
//! ConfigMaps, projected service-account tokens with a kubeconfig using them).

use super::pods::Agent;
use super::AgentConfig;
use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{info, warn};

/// Where a pod's service-account token volume is mounted.
pub(super) const SERVICE_ACCOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The kubeconfig of the token volume for a container of an image archive, which sees the
/// volume at [`SERVICE_ACCOUNT_PATH`] (the `kubeconfig` beside it names host paths).
pub(super) const CONTAINER_KUBECONFIG: &str = "kubeconfig.container";

/// Binds every pending claim to a new host-directory PersistentVolume, like a
/// local-path provisioner would.
pub(super) async fn provision_volumes(client: Client, config: AgentConfig) {
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

pub(super) async fn provision(
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

impl Agent {
    /// Host paths for every volume of the pod, by volume name.
    pub(super) async fn prepare_volumes(
        &self,
        pod: &Pod,
        uid: &str,
    ) -> anyhow::Result<HashMap<String, PathBuf>> {
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

    pub(super) async fn claim_path(&self, namespace: &str, claim_name: &str) -> anyhow::Result<PathBuf> {
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
    pub(super) async fn write_service_account_files(&self, pod: &Pod, path: &Path) -> anyhow::Result<()> {
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
        let mut inside = kubeconfig;
        inside["clusters"][0]["cluster"]["certificate-authority"] =
            json!(format!("{SERVICE_ACCOUNT_PATH}/ca.crt"));
        inside["users"][0]["user"]["tokenFile"] = json!(format!("{SERVICE_ACCOUNT_PATH}/token"));
        std::fs::write(path.join(CONTAINER_KUBECONFIG), serde_json::to_vec_pretty(&inside)?)?;
        Ok(())
    }
}
