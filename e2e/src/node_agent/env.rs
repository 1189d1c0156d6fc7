//! Container environment: values, Secret and ConfigMap keys, the downward API
//! (fields and resources) resolved as the kubelet would, then rewritten for this node.

use super::rewrite::{mount_map, rewrite};
use super::volumes::{CONTAINER_KUBECONFIG, SERVICE_ACCOUNT_PATH};
use super::AgentConfig;
use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client, ResourceExt};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub(super) async fn resolve_env(
    client: &Client,
    pod: &Pod,
    container: &Container,
    ip: Ipv4Addr,
    volumes: &HashMap<String, PathBuf>,
    config: &AgentConfig,
    image: bool,
) -> anyhow::Result<Vec<(String, String)>> {
    let namespace = pod.namespace().unwrap_or_default();
    // A container of an image archive has its volumes mounted at their paths (`oci`): the
    // paths in its env stay as they are.
    let mounts = if image { Vec::new() } else { mount_map(container, volumes) };
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
    for (container_path, host) in &mount_map(container, volumes) {
        if container_path == SERVICE_ACCOUNT_PATH && host.join("kubeconfig").exists() {
            let kubeconfig = if image {
                format!("{SERVICE_ACCOUNT_PATH}/{CONTAINER_KUBECONFIG}")
            } else {
                host.join("kubeconfig").display().to_string()
            };
            env.push(("KUBECONFIG".into(), kubeconfig));
        }
    }
    Ok(env)
}

pub(super) fn field_value(pod: &Pod, path: &str, ip: Ipv4Addr) -> anyhow::Result<String> {
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

pub(super) fn resource_value(
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

pub(super) fn parse_quantity(text: &str) -> anyhow::Result<f64> {
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
    fn quantities_for_resource_env() {
        assert_eq!(parse_quantity("500m").unwrap(), 0.5);
        assert_eq!(parse_quantity("1Gi").unwrap(), 1073741824.0);
        assert!(parse_quantity("x").is_err());
    }
}
