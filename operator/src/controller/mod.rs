//! The Relay controller. Each reconcile is a pipeline:
//! read → validate → build (pure) → apply (server-side apply, drift repaired, orphans
//! pruned) → status. Each stage's errors carry the stage, so metrics and Events say where
//! a reconcile failed.

pub mod apply;
pub mod build;
pub mod finalize;
/// Helpers for tests and fixtures (Relays from YAML).
pub mod fixtures;
pub mod node;
pub mod read;
pub mod status;
pub mod validate;

use crate::config::RunConfig;
use crate::crd::Relay;
use crate::metrics::Metrics;
use crate::{AtStage, Error, ReconcileError, Stage};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub config: RunConfig,
    /// The Hetzner rate budget and clients, shared by every Relay (`node.rs`).
    pub hetzner: node::Hetzner,
    service_monitor_cache: Mutex<Option<(Instant, bool)>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, config: RunConfig) -> Self {
        let reporter = Reporter { controller: build::MANAGER.into(), instance: config.pod_name.clone() };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            hetzner: node::Hetzner::new(&config),
            client,
            metrics,
            config,
            service_monitor_cache: Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the cluster serves ServiceMonitors (prometheus-operator), cached briefly
    /// so a CRD installed later is picked up without asking on every reconcile.
    pub async fn service_monitor_supported(&self) -> bool {
        if let Some((at, supported)) = *lock(&self.service_monitor_cache) {
            if at.elapsed() < self.config.discovery_ttl {
                return supported;
            }
        }
        let supported = match self.client.list_api_group_resources("monitoring.coreos.com/v1").await {
            Ok(list) => list.resources.iter().any(|r| r.name == "servicemonitors"),
            Err(_) => false,
        };
        *lock(&self.service_monitor_cache) = Some((Instant::now(), supported));
        supported
    }

    /// Publishes an Event about a Relay; failures are logged, never fatal.
    pub async fn publish(&self, relay: &Relay, event: Event) {
        let reference = relay.object_ref(&());
        match self.recorder.publish(&event, &reference).await {
            Ok(()) => self.metrics.api_writes.with_label_values(&["Event"]).inc(),
            Err(error) => warn!(relay = %relay.name_any(), %error, "could not publish an event"),
        }
    }

    fn record_failure(&self, key: &str) -> u32 {
        let mut failures = lock(&self.failures);
        let count = failures.entry(key.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    fn failures_of(&self, key: &str) -> u32 {
        lock(&self.failures).get(key).copied().unwrap_or(0)
    }

    fn clear_failures(&self, key: &str) {
        lock(&self.failures).remove(key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn key(relay: &Relay) -> String {
    format!("{}/{}", relay.namespace().unwrap_or_default(), relay.name_any())
}

/// One reconcile of one Relay. An object that does not read as a Relay (a malformed
/// object stored before the CRD's validation, or by a newer schema) is reported and
/// skipped: it must not stop the watch for the others.
pub async fn reconcile(
    guard: Arc<DeserializeGuard<Relay>>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let relay = match &guard.0 {
        Ok(relay) => relay,
        Err(invalid) => {
            ctx.metrics.invalid_objects.inc();
            let name = invalid.metadata.name.clone().unwrap_or_default();
            let namespace = invalid.metadata.namespace.clone().unwrap_or_default();
            warn!(relay = %format!("{namespace}/{name}"), error = %invalid.error, "skipping an object that is not a valid Relay");
            return Ok(Action::await_change());
        }
    };
    let started = Instant::now();
    let result = reconcile_inner(relay, &ctx).await;
    let (label, stage) = match &result {
        Ok(_) => ("success", ""),
        Err(failed) => (failed.error.reason(), failed.stage.as_str()),
    };
    ctx.metrics.reconciles.with_label_values(&[label, stage]).inc();
    ctx.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => ctx.clear_failures(&key(relay)),
        // One Warning Event at the start of a streak of failures, naming the stage (the
        // backoff retries that follow stay quiet: no Event storm).
        Err(failed) if !failed.error.needs_user() && ctx.failures_of(&key(relay)) == 0 => {
            let event = Event {
                type_: EventType::Warning,
                reason: "ReconcileFailed".into(),
                note: Some(status::truncate(&failed.to_string(), 1000)),
                action: format!("Reconcile{}", capitalized(failed.stage.as_str())),
                secondary: None,
            };
            ctx.publish(relay, event).await;
        }
        Err(_) => {}
    }
    result
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

async fn reconcile_inner(relay: &Relay, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = relay.name_any();
    let namespace = relay.namespace().unwrap_or_default();
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);

    if relay.meta().deletion_timestamp.is_some() {
        return finalize::on_delete(relay, ctx).await.at(Stage::Finalize);
    }
    finalize::ensure(relay, ctx).await.at(Stage::Finalize)?;

    if relay.spec.operation.reconciliation_paused {
        let live = statefulsets.get_opt(&name).await.at(Stage::Read)?;
        let status = status::compute(relay, &status::Outcome::Paused(live.as_ref()), None, None, &now());
        status::write(relay, status, ctx).await.at(Stage::Status)?;
        return Ok(Action::await_change());
    }

    let validated = match validate::validate(relay) {
        Ok(validated) => validated,
        Err(invalid) => {
            let live = statefulsets.get_opt(&name).await.at(Stage::Read)?;
            stall(relay, ctx, "InvalidSpec", invalid.to_string(), live.as_ref()).await.at(Stage::Status)?;
            return Err(Error::InvalidSpec(invalid)).at(Stage::Validate);
        }
    };

    let observed = match read::read(relay, &namespace, &name, ctx).await {
        Ok(observed) => observed,
        Err(error @ Error::MissingSecret { .. }) => {
            let live = statefulsets.get_opt(&name).await.at(Stage::Read)?;
            stall(relay, ctx, error.reason(), error.to_string(), live.as_ref()).await.at(Stage::Status)?;
            return Err(error).at(Stage::Read);
        }
        Err(error) => return Err(error).at(Stage::Read),
    };

    let inputs = build::BuildInputs {
        admin: observed.admin.clone(),
        service_monitor_supported: observed.service_monitor_supported,
        service_monitor_wanted: relay.spec.monitoring.service_monitor,
        coverage_references: observed.coverage_references.clone(),
    };
    let admin_secret = observed.admin.secret_name(&validated);
    // The Relay's own node (spec.node): found or created, and where the relay may run.
    let node = match relay.spec.node.as_ref().and_then(|n| n.hetzner.as_ref()) {
        Some(spec) => Some(node::reconcile(relay, spec, ctx).await.at(Stage::Read)?),
        None => None,
    };
    let mut desired = build::build(&validated, &inputs);
    if let Some(node) = &node {
        build::pin_to_node(&mut desired.statefulset, node.pin());
    }
    let uid = relay.uid().unwrap_or_default();
    let owned = apply::Owned {
        relay_name: &name,
        relay_uid: &uid,
        namespace: &namespace,
        admin_secret: build::admin_secret_name(&name),
        service_monitor_supported: observed.service_monitor_supported,
    };
    let applied = apply::apply(desired, &owned, ctx).await.at(Stage::Apply)?;
    if !applied.changed.is_empty() {
        info!(relay = %key(relay), changed = ?applied.changed, "applied");
        let event = Event {
            type_: EventType::Normal,
            reason: "Applied".into(),
            note: Some(status::truncate(&format!("configured {}", applied.changed.join(", ")), 1000)),
            action: "Apply".into(),
            secondary: None,
        };
        ctx.publish(relay, event).await;
    }
    let coverage =
        observe_coverage(relay, &validated, &observed.coverage_references, applied.cronjob.as_ref(), ctx)
            .await
            .at(Stage::Read)?;
    let outcome = status::Outcome::Applied(&applied.statefulset);
    let mut status = status::compute(relay, &outcome, Some(admin_secret), coverage.as_ref(), &now());
    if let Some(node) = &node {
        let stored = relay.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        let generation = relay.metadata.generation.unwrap_or(0);
        status::node::apply(
            &mut status,
            stored,
            node.status.clone(),
            &node.state,
            node.scheduled,
            generation,
            &now(),
        );
    }
    status::write(relay, status, ctx).await.at(Stage::Status)?;
    let requeue = requeue_after(ctx.config.resync_interval, coverage.as_ref());
    Ok(Action::requeue(node.map_or(requeue, |n| n.requeue.min(requeue))))
}

/// The coverage runs' results, read after apply (the CronJob's live state is known then).
async fn observe_coverage(
    relay: &Relay,
    validated: &validate::ValidatedRelay,
    references: &[String],
    cronjob: Option<&CronJob>,
    ctx: &Context,
) -> Result<Option<status::coverage::CoverageObserved>, crate::Error> {
    let Some(spec) = &relay.spec.coverage else { return Ok(None) };
    let run = read::coverage_run(&validated.namespace, &validated.name, ctx).await?;
    let own_url = build::coverage::own_url(validated);
    let inputs = status::coverage::CoverageInputs {
        spec,
        own_url: &own_url,
        references,
        cronjob_created: cronjob.and_then(|c| c.metadata.creation_timestamp.as_ref()).map(|t| t.0),
        last_schedule: cronjob
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.last_schedule_time.as_ref())
            .map(|t| t.0),
        run: run.as_ref(),
        existing: relay.status.as_ref().and_then(|s| s.coverage.as_ref()),
        now: jiff::Timestamp::now(),
    };
    Ok(Some(status::coverage::observe(&inputs)))
}

/// The resync interval, or sooner when a coverage run becomes overdue before it (Job
/// events wake the reconcile for everything else).
fn requeue_after(resync: Duration, coverage: Option<&status::coverage::CoverageObserved>) -> Duration {
    let until_overdue = coverage.and_then(|c| c.recheck_at).and_then(|at| {
        let seconds = at.as_second().saturating_sub(jiff::Timestamp::now().as_second()).max(1) + 1;
        u64::try_from(seconds).ok().map(Duration::from_secs)
    });
    until_overdue.map_or(resync, |d| d.min(resync))
}

async fn stall(
    relay: &Relay,
    ctx: &Context,
    reason: &'static str,
    message: String,
    statefulset: Option<&StatefulSet>,
) -> Result<(), Error> {
    warn!(relay = %key(relay), reason, %message, "relay stalled");
    let outcome = status::Outcome::Stalled { reason, message, statefulset };
    let status = status::compute(relay, &outcome, None, None, &now());
    status::write(relay, status, ctx).await
}

/// After a failed reconcile: wait for the user on spec errors, poll for a missing
/// Secret (Secrets are not watched), back off exponentially on everything else.
pub fn error_policy(
    guard: Arc<DeserializeGuard<Relay>>,
    failed: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let Ok(relay) = &guard.0 else { return Action::await_change() };
    match &failed.error {
        Error::InvalidSpec(_) => Action::await_change(),
        Error::MissingSecret { .. } => Action::requeue(ctx.config.missing_secret_poll),
        _ => {
            let failures = ctx.record_failure(&key(relay));
            let delay = backoff(failures, ctx.config.max_backoff);
            warn!(relay = %key(relay), error = %failed, failures, retry_in = ?delay, "reconcile failed");
            Action::requeue(delay)
        }
    }
}

/// 1 s, 2 s, 4 s ... capped, with ±20 % jitter so many Relays do not retry in step.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(16));
    let capped = base.min(cap);
    let jitter = 0.8 + fastrand::f64() * 0.4;
    capped.mul_f64(jitter)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let relays: Api<DeserializeGuard<Relay>> = match &ctx.config.watch_namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    if let Err(error) = relays.list(&kube::api::ListParams::default().limit(1)).await {
        anyhow::bail!("cannot list Relays ({error}); is the CRD installed? (kubectl apply -f crds/)");
    }
    let owned = watcher::Config::default().labels(&format!("{}={}", build::LABEL_MANAGED_BY, build::MANAGER));
    let statefulsets: Api<StatefulSet> = scoped(&client, &ctx.config.watch_namespace);
    let services: Api<Service> = scoped(&client, &ctx.config.watch_namespace);
    let cronjobs: Api<CronJob> = scoped(&client, &ctx.config.watch_namespace);
    // `spec.expose`: a hand-edited or deleted Ingress is put back at once.
    let ingresses: Api<Ingress> = scoped(&client, &ctx.config.watch_namespace);
    let jobs: Api<Job> = scoped(&client, &ctx.config.watch_namespace);
    let controller = Controller::new(relays, watcher::Config::default().any_semantic());
    // The runtime sampler reads the controller's cache of Relays, and lives as long as it.
    let sampler = tokio::spawn(crate::runtime::run(ctx.clone(), controller.store()));
    controller
        .owns(statefulsets, owned.clone())
        .owns(services, owned.clone())
        .owns(cronjobs, owned.clone())
        .owns(ingresses, owned.clone())
        // Coverage Jobs belong to the CronJob, not the Relay: map them by their instance
        // label, so a finished run updates status at once.
        .watches(jobs, owned, |job| {
            let labels = job.metadata.labels.as_ref()?;
            let relay = labels.get(build::LABEL_INSTANCE)?;
            (labels.get(build::LABEL_NAME).map(String::as_str) == Some(build::coverage::COVERAGE_APP))
                .then(|| ObjectRef::new(relay).within(&job.namespace().unwrap_or_default()))
        })
        .with_config(ControllerConfig::default().concurrency(ctx.config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile ended with an error");
            }
        })
        .await;
    sampler.abort();
    Ok(())
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(300);
        assert!(backoff(1, cap) <= Duration::from_millis(1200));
        assert!(backoff(4, cap) >= Duration::from_millis(6400));
        assert!(backoff(40, cap) <= Duration::from_secs(360));
        assert!(backoff(40, cap) >= Duration::from_secs(240));
    }
}
