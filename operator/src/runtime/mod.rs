//! Runtime status: the operator reads each relay's own state from its internal listener
//! (`GET /_summary`, one request per relay per interval; `GET /metrics` only when a relay
//! too old to serve `/_summary` answers 404) and writes it to `status.runtime`
//! only when a shown value changed, and never more than once per interval per Relay; with
//! it the `CaughtUp` condition (the relay's own "caught up" verdict, [`caught_up`]).
//!
//! This runs beside the reconcile loop, not in it: a reconcile reads and compares every
//! owned object, which is too much to repeat each minute, while sampling needs only the
//! relay pod (its IP and node) and one HTTP request. It uses the controller's own cache of
//! Relays, runs only on the leader, and writes with its own field manager, so the
//! reconcile's status writes and these never remove each other's fields.

pub mod caught_up;
pub mod exposition;
pub mod gate;
pub mod http;
pub mod relay_summary;
pub mod summary;

use crate::controller::Context;
use crate::crd::runtime::RuntimeStatus;
use crate::crd::Relay;
use caught_up::Verdict;
use futures::StreamExt;
use gate::WriteGate;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use summary::Counter;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

/// Field manager of `status.runtime` (the reconcile writes the rest of status as `relay-operator`).
pub const FIELD_MANAGER: &str = "relay-operator-runtime";
/// A relay's `/metrics` is a few tens of KiB; anything far beyond is not read.
const METRICS_LIMIT: u64 = 8 << 20;
/// `/_summary` is well under a KiB (a few more bytes per coverage reference).
const SUMMARY_LIMIT: u64 = 256 << 10;
/// Longest wait for one relay's answer (less when the interval is shorter).
const MAX_TIMEOUT: Duration = Duration::from_secs(10);

/// What is remembered per Relay between samples.
#[derive(Debug, Default, Clone, Copy)]
struct Tracked {
    gate: WriteGate,
    counter: Option<Counter>,
}

/// Samples every Relay in `store` once per `runtime_interval` until dropped (the
/// controller aborts it on shutdown). An interval of zero turns sampling off.
pub async fn run(ctx: Arc<Context>, store: Store<DeserializeGuard<Relay>>) {
    let interval = ctx.config.runtime_interval;
    if interval.is_zero() {
        return;
    }
    info!(?interval, "sampling each relay's runtime state");
    // No `store.wait_until_ready()`: the controller waits on the same store, and that
    // readiness wakes only its last waiter (a oneshot underneath), so a second waiter can
    // hang for good. A first round that finds the cache empty samples nothing, and the
    // next one, an interval later, finds the Relays.
    let mut ticks = tokio::time::interval(interval);
    // A slow round delays the next one instead of bunching requests up.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    loop {
        let tick = ticks.tick().await.into_std();
        let relays: Vec<Relay> =
            store.state().iter().filter_map(|guard| guard.0.as_ref().ok().cloned()).collect();
        debug!(relays = relays.len(), "runtime sampling round");
        let mut previous = std::mem::take(&mut tracked);
        let rounds = relays.into_iter().map(|relay| {
            let state = previous.remove(&key(&relay)).unwrap_or_default();
            let ctx = ctx.clone();
            async move { (key(&relay), sample_one(&relay, state, &ctx, tick).await) }
        });
        // Relays that went away are forgotten: only this round's entries are kept.
        tracked = futures::stream::iter(rounds)
            .buffer_unordered(usize::from(ctx.config.concurrency.max(1)))
            .collect()
            .await;
    }
}

fn key(relay: &Relay) -> String {
    format!("{}/{}", relay.namespace().unwrap_or_default(), relay.name_any())
}

/// One sample of one relay, written if the gate allows.
async fn sample_one(relay: &Relay, mut state: Tracked, ctx: &Context, tick: Instant) -> Tracked {
    let interval = ctx.config.runtime_interval;
    let (mut next, counter, verdict) = observe(relay, ctx, state.counter).await;
    let current = relay.status.as_ref().and_then(|s| s.runtime.as_ref());
    // A rate needs two scrapes: after an operator or relay restart the shown rate stays
    // until there is a new one, rather than blinking empty (and costing a write).
    if counter.is_some() && next.events_per_second.is_none() {
        next.events_per_second = current.and_then(|c| c.events_per_second);
    }
    state.counter = counter;
    let conditions = relay.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = relay.metadata.generation.unwrap_or(0);
    let want = caught_up::desired(&verdict);
    let news = caught_up::changed(conditions, &want, generation) && state.gate.rested(tick, interval);
    if state.gate.allows(current, &next, tick, interval) || news {
        let now = Time(jiff::Timestamp::now());
        next.sampled_at = Some(now.clone());
        let condition = caught_up::condition(conditions, &want, generation, &now);
        match write(relay, &next, &condition, ctx).await {
            Ok(()) => {
                debug!(relay = %key(relay), "runtime status written");
                state.gate.wrote(tick)
            }
            Err(error) => warn!(relay = %key(relay), %error, "could not write the runtime status"),
        }
    }
    state
}

/// The relay's runtime state now: its pod's node and IP, then one GET of `/_summary`;
/// with the relay's own "caught up" verdict.
async fn observe(
    relay: &Relay,
    ctx: &Context,
    previous: Option<Counter>,
) -> (RuntimeStatus, Option<Counter>, Verdict) {
    let failed = |node: Option<String>, error: String| {
        let verdict = Verdict::Unknown(error.clone());
        (RuntimeStatus { node, error: Some(error), ..RuntimeStatus::default() }, None, verdict)
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &relay.namespace().unwrap_or_default());
    let pod_name = format!("{}-0", relay.name_any());
    let pod = match pods.get_opt(&pod_name).await {
        Ok(Some(pod)) => pod,
        Ok(None) => return failed(None, format!("no relay pod {pod_name} (stopped, or not created yet)")),
        Err(error) => return failed(None, format!("reading pod {pod_name}: {error}")),
    };
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let Some(address) = internal_address(&pod, relay.spec.ports.internal) else {
        return failed(node, format!("pod {pod_name} has no IP yet"));
    };
    let timeout = (ctx.config.runtime_interval / 2).min(MAX_TIMEOUT);
    let sampled = sample(address, timeout, previous).await;
    let result = if sampled.is_ok() { "ok" } else { "failed" };
    ctx.metrics.runtime_scrapes.with_label_values(&[result]).inc();
    match sampled {
        Ok((mut status, counter, verdict)) => {
            status.node = node;
            (status, counter, verdict)
        }
        Err(error) => {
            debug!(relay = %key(relay), %error, "runtime sample failed");
            failed(node, format!("reading the relay's internal listener: {error}"))
        }
    }
}

/// One sample: `GET /_summary`, or, from a relay that answers it with 404 (older than the
/// route), `GET /metrics`. Only the 404 falls back: any other failure is the relay's state.
async fn sample(
    address: SocketAddr,
    timeout: Duration,
    previous: Option<Counter>,
) -> Result<(RuntimeStatus, Option<Counter>, Verdict), String> {
    match http::get(address, "/_summary", timeout, SUMMARY_LIMIT).await {
        Ok(body) => {
            let summary: relay_summary::RelaySummary = serde_json::from_str(&body)
                .map_err(|e| format!("GET /_summary: not the relay's summary: {e}"))?;
            let (status, counter) = relay_summary::summarise(&summary, Instant::now(), previous);
            Ok((status, counter, relay_summary::caught_up(&summary)))
        }
        Err(http::FetchError::Status(404)) => {
            let body = http::get(address, "/metrics", timeout, METRICS_LIMIT)
                .await
                .map_err(|e| format!("GET /metrics: {e}"))?;
            let (status, counter) = summary::summarise(&exposition::parse(&body), Instant::now(), previous);
            let verdict = Verdict::Unknown("the relay is too old to say (no /_summary)".into());
            Ok((status, counter, verdict))
        }
        Err(error) => Err(format!("GET /_summary: {error}")),
    }
}

/// The pod IP and the relay's internal port (the Service would add a DNS lookup and
/// nothing else; the pod is read anyway for its node).
fn internal_address(pod: &Pod, port: i32) -> Option<SocketAddr> {
    let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

/// Applies `status.runtime` and the `CaughtUp` condition; both are in every write, since
/// server-side apply would remove a field this manager owned and left out.
async fn write(
    relay: &Relay,
    runtime: &RuntimeStatus,
    caught_up: &Condition,
    ctx: &Context,
) -> Result<(), kube::Error> {
    let api: Api<Relay> = Api::namespaced(ctx.client.clone(), &relay.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": Relay::api_version(&()),
        "kind": Relay::kind(&()),
        "status": {"runtime": runtime, "conditions": [caught_up]},
    });
    api.patch_status(&relay.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await?;
    ctx.metrics.api_writes.with_label_values(&["RelayRuntime"]).inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;

    #[test]
    fn the_internal_address_is_the_pod_ip() {
        let pod = |ip: Option<&str>| Pod {
            status: Some(PodStatus { pod_ip: ip.map(String::from), ..PodStatus::default() }),
            ..Pod::default()
        };
        let cases: [(Option<&str>, i32, Option<&str>); 4] = [
            (Some("10.1.2.3"), 2471, Some("10.1.2.3:2471")),
            (Some("fd00::5"), 2471, Some("[fd00::5]:2471")),
            (None, 2471, None),
            (Some("10.1.2.3"), 70000, None),
        ];
        for (ip, port, expected) in cases {
            let address = internal_address(&pod(ip), port).map(|a| a.to_string());
            assert_eq!(address.as_deref(), expected, "{ip:?}:{port}");
        }
    }
}
