//! Startup, liveness and readiness probes (HTTP only; anything else fails, never
//! faked) and what their verdicts do to a container.

use super::pods::ContainerRuntime;
use super::processes::kill;
use k8s_openapi::api::core::v1::{Container, Probe};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

#[derive(Default)]
pub(super) struct ProbeState {
    pub(super) next_at: Option<Instant>,
    pub(super) failures: i32,
    pub(super) successes: i32,
}

/// Runs whichever probes are due and applies their verdicts.
pub(super) async fn probe_all(container: &mut ContainerRuntime, ip: Ipv4Addr) {
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

/// Runs a probe if it is due: `Some(passed)`, or `None` when not due.
pub(super) async fn run_probe(
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
