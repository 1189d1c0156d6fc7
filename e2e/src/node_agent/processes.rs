//! Container processes: started with the pod's rewritten args and env (a host binary, or
//! an image archive's entrypoint through `oci`), reaped and restarted with backoff when
//! they exit, killed, and stopped with SIGTERM then SIGKILL.

use super::oci;
use super::pods::{ContainerRuntime, PodRuntime};
use super::probes::ProbeState;
use super::rewrite::{mount_map, rewrite};
use super::services::replace_hosts;
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

/// The kubelet keeps at most this much of a termination message.
const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// Notices an exited process: under its pod's restart policy it either stays terminated
/// (with its termination message) or is restarted with backoff.
pub(super) fn reap(container: &mut ContainerRuntime) {
    let Some(child) = container.child.as_mut() else { return };
    let Ok(Some(status)) = child.try_wait() else { return };
    let code = status.code().unwrap_or(137);
    warn!(container = %container.spec.name, code, "container exited");
    let mut terminated = json!({
        "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
        "startedAt": container.started_at, "finishedAt": Timestamp::now().to_string(),
    });
    if let Some(message) = termination_message(&container.termination_log) {
        terminated["message"] = json!(message);
    }
    container.child = None;
    container.started = false;
    container.ready = false;
    let restart = match container.restart_policy.as_str() {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    };
    if !restart {
        container.terminated = Some(json!({"terminated": terminated}));
        container.waiting = None;
        return;
    }
    container.last_termination = Some(json!({"terminated": terminated}));
    container.restart_count += 1;
    container.waiting = Some(("CrashLoopBackOff".into(), format!("exited with code {code}; restarting")));
    container.next_start = Instant::now() + container.backoff;
    container.backoff = (container.backoff * 2).min(Duration::from_secs(10));
}

/// The file's content, cut at the kubelet's limit (on a character boundary); none when
/// the process wrote nothing.
fn termination_message(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(TERMINATION_MESSAGE_LIMIT)]).to_string();
    let text = text.trim_end_matches('\u{FFFD}').to_string();
    (!text.is_empty()).then_some(text)
}

pub(super) fn start(
    container: &mut ContainerRuntime,
    env: &[(String, String)],
    hosts: &[(String, String)],
    ip: Ipv4Addr,
    mounts: &HashMap<String, PathBuf>,
    dir: &Path,
    pod: &Pod,
) -> anyhow::Result<()> {
    let binary = container.binary.clone().ok_or_else(|| anyhow!("no binary"))?;
    // An image archive runs in a mount namespace of its own: its volumes are mounted at
    // their paths, so only listen addresses and Service names are rewritten.
    let image = oci::is_archive(&binary);
    let mut mount_map = mount_map(&container.spec, mounts);
    // The termination message file: a real file the process can write, as the kubelet's
    // bind mount would be; empty at each start.
    let message_path =
        container.spec.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
    std::fs::write(&container.termination_log, b"")?;
    mount_map.insert(0, (message_path, container.termination_log.clone()));
    let args: Vec<String> = container
        .spec
        .args
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|arg| replace_hosts(&rewrite(arg, ip, if image { &[] } else { &mount_map }), hosts))
        .collect();
    // Env values were rewritten for mounts already (`resolve_env`); rewriting them again
    // would map a host path under `/tmp` through a `/tmp` mount. Only the termination
    // message path and Service names are left to do.
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| {
            let v =
                if *v == mount_map[0].0 && !image { mount_map[0].1.display().to_string() } else { v.clone() };
            (k.clone(), replace_hosts(&v, hosts))
        })
        .collect();
    let log = dir.join(format!("{}.log", container.spec.name));
    let out = std::fs::File::options().create(true).append(true).open(&log)?;
    let path = std::env::var("PATH").unwrap_or_default();
    let mut command = if image {
        // oci.py hands the entrypoint only the image's env and `--env`; PATH is its own.
        let mut command = image_command(container, &binary, &env, &args, mounts, pod, dir)?;
        command.env_clear().env("PATH", path);
        command
    } else {
        let mut command = Command::new(&binary);
        command
            .args(&args)
            .env_clear()
            .env("PATH", path)
            .envs(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        command
    };
    command
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

/// The `oci.py run` command of a container of an image archive, its volumes (and
/// termination message file) given to the user it runs as.
fn image_command(
    container: &ContainerRuntime,
    archive: &Path,
    env: &[(String, String)],
    args: &[String],
    mounts: &HashMap<String, PathBuf>,
    pod: &Pod,
    pod_dir: &Path,
) -> anyhow::Result<Command> {
    // Pod directories are `<work dir>/pods/<uid>` (`Agent::admit`); images are unpacked once
    // per node under the work directory.
    let work_dir =
        pod_dir.ancestors().nth(2).ok_or_else(|| anyhow!("pod directory without a work directory"))?;
    let image_dir = oci::unpacked(work_dir, archive)?;
    let user = oci::process_user(pod, &container.spec, &image_dir)?;
    let group = oci::fs_group(pod).unwrap_or(user.1);
    for (_, host) in mount_map(&container.spec, mounts) {
        oci::give_to(&host, user.0, group)?;
    }
    oci::give_to(&container.termination_log, user.0, group)?;
    let message_path =
        container.spec.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
    let binds = oci::binds(&container.spec, mounts, (&message_path, &container.termination_log));
    Ok(oci::command(&image_dir, user, &binds, env, args))
}

pub(super) async fn kill(container: &mut ContainerRuntime, why: &str) {
    warn!(container = %container.spec.name, why, "killing container");
    if let Some(child) = container.child.as_mut() {
        let _ = child.kill().await;
    }
    reap(container);
}

/// SIGTERM, then SIGKILL after the grace period, as the kubelet does. How each process
/// ended is written to `<pod dir>/<container>.exit` (exit code or signal, seconds after
/// SIGTERM), so tests can check that a SIGTERM ends the relay cleanly, not by SIGKILL.
pub(super) async fn stop_all(runtime: &mut PodRuntime, grace: Duration) {
    for container in &mut runtime.containers {
        let Some(child) = container.child.as_mut() else { continue };
        let signalled = Instant::now();
        if let Some(pid) = child.id() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                let _ = child.kill().await;
                child.wait().await.ok()
            }
        };
        let ended = json!({
            "code": status.and_then(|s| s.code()),
            "signal": status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
            "secondsAfterSigterm": signalled.elapsed().as_secs_f64(),
        });
        let path = runtime.dir.join(format!("{}.exit", container.spec.name));
        if let Err(error) = std::fs::write(&path, ended.to_string()) {
            warn!(%error, path = %path.display(), "could not record how the container ended");
        }
        info!(container = %container.spec.name, %ended, "container stopped");
        container.child = None;
    }
}
