//! The cloud-init user data that turns a fresh Hetzner server into this Relay's k3s
//! agent: a pure function of its inputs, checked against Hetzner's 32 KiB limit.
//!
//! The server's id (for the kubelet's `providerID`, `hcloud://<id>`) does not exist when
//! the user data is written, so the node reads it at boot from Hetzner's metadata
//! service (`/hetzner/v1/metadata/instance-id`), as hetzner-k3s does. The node name is
//! the server name; a label and a `NoSchedule` taint reserve the node for the Relay.
//! The join token is part of the user data, which Hetzner stores: see docs/hetzner.md.

use std::collections::BTreeMap;

/// Hetzner's limit on `user_data` (bytes).
pub const MAX_USER_DATA: usize = 32 * 1024;
/// Where the instance id comes from at boot.
pub const METADATA_INSTANCE_ID: &str = "http://169.254.169.254/hetzner/v1/metadata/instance-id";
/// Where the installer comes from (overridable for mirrors).
pub const K3S_INSTALL_URL: &str = "https://get.k3s.io";

/// Everything the user data depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinInputs {
    /// The server and node name (`naming::server_name`).
    pub node_name: String,
    /// `https://<k3s server>:6443`.
    pub server_url: String,
    /// The k3s join token (prefer a short-lived bootstrap token).
    pub token: String,
    /// `INSTALL_K3S_VERSION`, e.g. `v1.31.4+k3s1`; None installs the stable channel.
    pub k3s_version: Option<String>,
    pub install_url: String,
    /// Node labels (the Relay's reservation label among them).
    pub node_labels: BTreeMap<String, String>,
    /// `key=value:NoSchedule` taints.
    pub taints: Vec<String>,
    /// Add `--kubelet-arg=cloud-provider=external` (when the hcloud CCM runs).
    pub external_cloud_provider: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudInitError {
    /// A value would break out of its quoting or is not what k3s accepts.
    #[error("cloud-init input {field}: {reason}")]
    InvalidInput { field: &'static str, reason: String },
    #[error("user data is {bytes} bytes, over Hetzner's limit of {MAX_USER_DATA}")]
    TooLarge { bytes: usize },
}

/// Renders the `#cloud-config` document. Inputs are checked against strict character
/// sets first, because they end up in a shell script and a YAML file.
pub fn render(inputs: &JoinInputs) -> Result<String, CloudInitError> {
    validate(inputs)?;
    let mut doc = String::new();
    doc.push_str("#cloud-config\n");
    doc.push_str("# Rendered by relay-operator. Joins this server to the cluster as a k3s agent\n");
    doc.push_str(
        "# reserved for one Relay. Hetzner stores this text: the token below should be short-lived.\n",
    );
    doc.push_str(&format!("hostname: {}\n", inputs.node_name));
    doc.push_str("preserve_hostname: false\n");
    doc.push_str("package_update: false\n");
    doc.push_str("write_files:\n");
    push_file(&mut doc, "/etc/rancher/k3s/config.yaml", "0600", &k3s_config(inputs));
    push_file(&mut doc, "/usr/local/sbin/relay-node-join", "0700", &join_script(inputs));
    doc.push_str("runcmd:\n");
    doc.push_str("  - [/usr/local/sbin/relay-node-join]\n");
    if doc.len() > MAX_USER_DATA {
        return Err(CloudInitError::TooLarge { bytes: doc.len() });
    }
    Ok(doc)
}

/// A `write_files` entry with a literal block (the content is indented, never parsed).
fn push_file(doc: &mut String, path: &str, mode: &str, content: &str) {
    doc.push_str(&format!(
        "  - path: {path}\n    owner: root:root\n    permissions: \"{mode}\"\n    content: |\n"
    ));
    for line in content.lines() {
        if line.is_empty() {
            doc.push('\n');
        } else {
            doc.push_str(&format!("      {line}\n"));
        }
    }
}

/// k3s reads its flags from this file; the token stays out of the unit file and `ps`.
fn k3s_config(inputs: &JoinInputs) -> String {
    let mut config = String::new();
    config.push_str(&format!("server: {}\n", quote(&inputs.server_url)));
    config.push_str(&format!("token: {}\n", quote(&inputs.token)));
    config.push_str(&format!("node-name: {}\n", quote(&inputs.node_name)));
    if !inputs.node_labels.is_empty() {
        config.push_str("node-label:\n");
        for (key, value) in &inputs.node_labels {
            config.push_str(&format!("  - {}\n", quote(&format!("{key}={value}"))));
        }
    }
    if !inputs.taints.is_empty() {
        config.push_str("node-taint:\n");
        for taint in &inputs.taints {
            config.push_str(&format!("  - {}\n", quote(taint)));
        }
    }
    if inputs.external_cloud_provider {
        // provider-id is added at boot by the join script (`kubelet-arg+` appends).
        config.push_str("kubelet-arg:\n  - \"cloud-provider=external\"\n");
    }
    config
}

/// The boot script: read the instance id (retrying: the metadata service can lag the
/// first seconds), write the providerID drop-in, install and start the agent.
fn join_script(inputs: &JoinInputs) -> String {
    let version =
        inputs.k3s_version.as_deref().map(|v| format!("INSTALL_K3S_VERSION={v} ")).unwrap_or_default();
    format!(
        r#"#!/bin/sh
# Joins this server to the cluster as the Relay's k3s agent (rendered by relay-operator).
set -eu
id=""
for attempt in $(seq 1 30); do
  id=$(curl -fsS --max-time 5 {metadata} || true)
  case "$id" in
    ''|*[!0-9]*) id=""; sleep 2 ;;
    *) break ;;
  esac
done
if [ -z "$id" ]; then
  echo "relay-node-join: no instance id from the metadata service" >&2
  exit 1
fi
mkdir -p /etc/rancher/k3s/config.yaml.d
printf 'kubelet-arg+:\n  - "provider-id=hcloud://%s"\n' "$id" > /etc/rancher/k3s/config.yaml.d/50-provider-id.yaml
curl -fsSL --retry 5 {install} -o /run/k3s-install.sh
{version}INSTALL_K3S_EXEC=agent sh /run/k3s-install.sh
rm -f /run/k3s-install.sh
"#,
        metadata = METADATA_INSTANCE_ID,
        install = inputs.install_url,
    )
}

/// A double-quoted YAML scalar (JSON strings are valid YAML).
fn quote(value: &str) -> String {
    serde_json::Value::String(value.to_string()).to_string()
}

fn validate(inputs: &JoinInputs) -> Result<(), CloudInitError> {
    check("node_name", &inputs.node_name, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')?;
    check_url("server_url", &inputs.server_url)?;
    check_url("install_url", &inputs.install_url)?;
    // k3s tokens: `K10<hex>::server:<secret>`, or bootstrap tokens `abcdef.0123456789abcdef`.
    check("token", &inputs.token, |c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-'))?;
    if let Some(version) = &inputs.k3s_version {
        check("k3s_version", version, |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'))?;
    }
    for (key, value) in &inputs.node_labels {
        check("node_labels", key, label_char_or_slash)?;
        check_allow_empty("node_labels", value, label_char)?;
    }
    for taint in &inputs.taints {
        check("taints", taint, |c| label_char_or_slash(c) || matches!(c, '=' | ':'))?;
    }
    Ok(())
}

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn label_char_or_slash(c: char) -> bool {
    label_char(c) || c == '/'
}

fn check(field: &'static str, value: &str, allowed: impl Fn(char) -> bool) -> Result<(), CloudInitError> {
    if value.is_empty() {
        return Err(CloudInitError::InvalidInput { field, reason: "is empty".into() });
    }
    check_allow_empty(field, value, allowed)
}

fn check_allow_empty(
    field: &'static str,
    value: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), CloudInitError> {
    match value.chars().find(|c| !allowed(*c)) {
        Some(c) => {
            Err(CloudInitError::InvalidInput { field, reason: format!("character {c:?} is not allowed") })
        }
        None => Ok(()),
    }
}

fn check_url(field: &'static str, value: &str) -> Result<(), CloudInitError> {
    if !value.starts_with("https://") {
        return Err(CloudInitError::InvalidInput { field, reason: "must start with https://".into() });
    }
    check(field, value, |c| {
        c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.' | '-' | '_' | '[' | ']' | '%')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> JoinInputs {
        JoinInputs {
            node_name: "relay-eu-6f1c2a9e".into(),
            server_url: "https://k3s.example.net:6443".into(),
            token: "K10abc::server:def".into(),
            k3s_version: Some("v1.31.4+k3s1".into()),
            install_url: K3S_INSTALL_URL.into(),
            node_labels: [("atrelay.dev/relay".to_string(), "relays.eu".to_string())].into(),
            taints: vec!["atrelay.dev/relay=relays.eu:NoSchedule".into()],
            external_cloud_provider: false,
        }
    }

    #[test]
    fn renders_a_cloud_config_with_the_provider_id_from_the_metadata_service() {
        let doc = render(&inputs()).expect("renders");
        assert!(doc.starts_with("#cloud-config\n"));
        assert!(doc.contains(METADATA_INSTANCE_ID));
        assert!(doc.contains("provider-id=hcloud://%s"));
        assert!(doc.contains("- \"atrelay.dev/relay=relays.eu:NoSchedule\""));
        assert!(doc.contains("INSTALL_K3S_VERSION=v1.31.4+k3s1 INSTALL_K3S_EXEC=agent"));
    }

    #[test]
    fn shell_and_yaml_metacharacters_are_refused() {
        for token in ["a'b", "a b", "$(reboot)", "a\nb", ""] {
            let err = render(&JoinInputs { token: token.into(), ..inputs() }).expect_err(token);
            assert!(matches!(err, CloudInitError::InvalidInput { field: "token", .. }), "{token}: {err}");
        }
        assert!(render(&JoinInputs { server_url: "http://plain:6443".into(), ..inputs() }).is_err());
        assert!(render(&JoinInputs { k3s_version: Some("v1;rm".into()), ..inputs() }).is_err());
    }

    #[test]
    fn user_data_over_32_kib_is_refused() {
        let labels = (0..2000).map(|i| (format!("example.com/label-{i}"), "x".repeat(10))).collect();
        let err = render(&JoinInputs { node_labels: labels, ..inputs() }).expect_err("too large");
        assert!(matches!(err, CloudInitError::TooLarge { bytes } if bytes > MAX_USER_DATA));
    }
}
