//! Container processes: started with the pod's rewritten args and env, reaped and
//! restarted with backoff when they exit, killed, and stopped with SIGTERM then SIGKILL.

use super::pods::{ContainerRuntime, PodRuntime};
use super::probes::ProbeState;
use super::rewrite::{mount_map, rewrite};
use anyhow::{anyhow, Context};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Probe};
use kube::ResourceExt;
use serde_json::json;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;
use tracing::{info, warn};

/// Notices an exited process and schedules its restart with backoff.
pub(super) fn reap(container: &mut ContainerRuntime) {
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

pub(super) fn start(
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

pub(super) async fn kill(container: &mut ContainerRuntime, why: &str) {
    warn!(container = %container.spec.name, why, "killing container");
    if let Some(child) = container.child.as_mut() {
        let _ = child.kill().await;
    }
    reap(container);
}

pub(super) async fn stop_all(runtime: &mut PodRuntime, grace: Duration) {
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
