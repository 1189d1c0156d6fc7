//! A Kubernetes control plane on loopback: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, started from a
//! `KUBEBUILDER_ASSETS`-style directory (built by `e2e/controlplane/build.sh`,
//! or from `setup-envtest`). TLS and service-account keys are generated per run.

use crate::process::{free_port, tail, Managed};
use anyhow::{bail, Context};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Token of the `admin` user (group `system:masters`) in the static token file.
const ADMIN_TOKEN: &str = "e2e-admin-token";

/// Builds the control-plane binaries from their Go modules (`e2e/controlplane/build.sh`,
/// cached after the first time; its progress goes to stderr) and returns the directory it
/// prints, for when `KUBEBUILDER_ASSETS` is not set.
pub fn build_control_plane(repo: &Path) -> anyhow::Result<PathBuf> {
    let output = Command::new(repo.join("e2e/controlplane/build.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running e2e/controlplane/build.sh")?;
    if !output.status.success() {
        bail!("e2e/controlplane/build.sh failed");
    }
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

pub struct ControlPlane {
    pub dir: PathBuf,
    pub assets: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    pub ca_file: PathBuf,
    // Stopped in reverse start order on drop.
    processes: Vec<Managed>,
}

impl ControlPlane {
    /// Starts every component and waits until the API server is ready and the
    /// controller-manager has created the `default` ServiceAccount.
    pub async fn start(assets: &Path, dir: &Path) -> anyhow::Result<ControlPlane> {
        for binary in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
            if !assets.join(binary).is_file() {
                bail!(
                    "{} has no {binary}; run e2e/controlplane/build.sh or set KUBEBUILDER_ASSETS",
                    assets.display()
                );
            }
        }
        std::fs::create_dir_all(dir.join("logs"))?;
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        generate_pki(&pki)?;
        std::fs::write(dir.join("tokens.csv"), format!("{ADMIN_TOKEN},admin,admin,\"system:masters\"\n"))?;

        let mut plane = ControlPlane {
            dir: dir.to_path_buf(),
            assets: assets.to_path_buf(),
            kubeconfig: dir.join("kubeconfig"),
            server: String::new(),
            ca_file: pki.join("ca.crt"),
            processes: Vec::new(),
        };
        let etcd_url = plane.start_etcd().await?;
        plane.start_apiserver(&etcd_url).await?;
        plane.write_kubeconfig()?;
        plane.start_controller_manager()?;
        plane.start_scheduler()?;
        plane.wait_for_default_service_account().await?;
        Ok(plane)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    async fn start_etcd(&mut self) -> anyhow::Result<String> {
        let client = free_port()?;
        let peer = free_port()?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = Command::new(self.assets.join("etcd"));
        command
            .arg(format!("--data-dir={}", self.dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--name=default")
            // Test data only: skip fsync so the suite is not bound by disk latency.
            .arg("--unsafe-no-fsync");
        self.processes.push(Managed::spawn("etcd", command, &self.log("etcd"))?);
        let http = reqwest::Client::new();
        self.wait_until("etcd", Duration::from_secs(30), || {
            let http = http.clone();
            let url = format!("{client_url}/health");
            async move { http.get(url).send().await.map(|r| r.status().is_success()).unwrap_or(false) }
        })
        .await?;
        Ok(client_url)
    }

    async fn start_apiserver(&mut self, etcd_url: &str) -> anyhow::Result<()> {
        let port = free_port()?;
        let pki = self.dir.join("pki");
        let mut command = Command::new(self.assets.join("kube-apiserver"));
        command
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--tls-cert-file={}", pki.join("server.crt").display()))
            .arg(format!("--tls-private-key-file={}", pki.join("server.key").display()))
            .arg(format!("--client-ca-file={}", pki.join("ca.crt").display()))
            .arg(format!("--token-auth-file={}", self.dir.join("tokens.csv").display()))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", pki.join("sa.pub").display()))
            .arg(format!("--service-account-signing-key-file={}", pki.join("sa.key").display()))
            .arg("--authorization-mode=RBAC")
            .arg("--allow-privileged=true")
            // A loopback address cannot back the `kubernetes` Service endpoints (envtest does the same).
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--cert-dir={}", self.dir.join("apiserver-certs").display()));
        self.processes.push(Managed::spawn("kube-apiserver", command, &self.log("kube-apiserver"))?);
        self.server = format!("https://127.0.0.1:{port}");
        let url = format!("{}/readyz", self.server);
        self.wait_for_admin_get("kube-apiserver", url).await
    }

    fn write_kubeconfig(&self) -> anyhow::Result<()> {
        let ca = std::fs::read(&self.ca_file)?;
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {
                "server": self.server,
                "certificate-authority-data": base64(&ca),
            }}],
            "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
            "current-context": "e2e",
        });
        std::fs::write(&self.kubeconfig, serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    /// A controller-manager or scheduler command: the admin kubeconfig for everything,
    /// one instance (no leader election), its own serving port and certificates.
    fn component(&self, name: &str) -> anyhow::Result<Command> {
        let kubeconfig = self.kubeconfig.display().to_string();
        let mut command = Command::new(self.assets.join(name));
        command
            .arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()?))
            .arg(format!("--cert-dir={}", self.dir.join(format!("{name}-certs")).display()));
        Ok(command)
    }

    fn start_controller_manager(&mut self) -> anyhow::Result<()> {
        let pki = self.dir.join("pki");
        let mut command = self.component("kube-controller-manager")?;
        command
            .arg(format!("--service-account-private-key-file={}", pki.join("sa.key").display()))
            .arg(format!("--root-ca-file={}", pki.join("ca.crt").display()))
            .arg("--use-service-account-credentials=false");
        self.processes.push(Managed::spawn(
            "kube-controller-manager",
            command,
            &self.log("kube-controller-manager"),
        )?);
        Ok(())
    }

    fn start_scheduler(&mut self) -> anyhow::Result<()> {
        let command = self.component("kube-scheduler")?;
        self.processes.push(Managed::spawn("kube-scheduler", command, &self.log("kube-scheduler"))?);
        Ok(())
    }

    async fn wait_for_default_service_account(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/api/v1/namespaces/default/serviceaccounts/default", self.server);
        self.wait_for_admin_get("kube-controller-manager (default ServiceAccount)", url).await
    }

    /// Waits (90 s at most) until a GET of `url` as the admin user succeeds.
    async fn wait_for_admin_get(&mut self, what: &str, url: String) -> anyhow::Result<()> {
        let http = self.http_client()?;
        self.wait_until(what, Duration::from_secs(90), || {
            let request = http.get(url.clone()).bearer_auth(ADMIN_TOKEN);
            async move { request.send().await.map(|r| r.status().is_success()).unwrap_or(false) }
        })
        .await
    }

    /// An HTTP client that trusts this control plane's CA.
    pub fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca_file)?)?;
        Ok(reqwest::Client::builder().add_root_certificate(ca).timeout(Duration::from_secs(5)).build()?)
    }

    /// Polls `check` until it passes; on timeout, fails with the tail of every log.
    async fn wait_until<F, Fut>(&mut self, what: &str, timeout: Duration, check: F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check().await {
                return Ok(());
            }
            let exited =
                self.processes.iter_mut().find_map(|p| p.exited().map(|status| (p.name.clone(), status)));
            if let Some((name, status)) = exited {
                bail!("{name} exited ({status}) while waiting for {what}:\n{}", self.logs_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("{what} not ready after {timeout:?}:\n{}", self.logs_tail(40))
    }

    /// The last lines of every component's log.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for process in &self.processes {
            out.push_str(&format!("--- {} ---\n{}\n", process.name, tail(&self.log(&process.name), lines)));
        }
        out
    }

    /// A kube client for the admin user.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        while let Some(mut process) = self.processes.pop() {
            process.stop(Duration::from_secs(10));
        }
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).context("reading the kubeconfig")?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .context("loading the kubeconfig")?;
    Ok(kube::Client::try_from(config)?)
}

fn generate_pki(dir: &Path) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let output =
            Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
        if !output.status.success() {
            bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n\
         basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "7",
        "-subj",
        "/CN=relay-e2e-ca",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=kube-apiserver",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "7",
        "-extfile",
        "server.ext",
    ])?;
    run(&["genrsa", "-out", "sa.key", "2048"])?;
    run(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
