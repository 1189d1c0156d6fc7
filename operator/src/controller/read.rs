//! Read: everything reconcile needs from the cluster besides the Relay itself,
//! gathered up front so later stages are pure or write-only.

use super::build::coverage::{job_selector, service_url};
use super::build::{admin_secret_name, digest, secret::generate_token, AdminToken, GENERATED_TOKEN_KEY};
use super::status::coverage::{newest_finished, run_of, Run};
use super::Context;
use crate::crd::Relay;
use crate::Error;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::Api;

/// What the read stage found.
pub struct Observed {
    pub admin: AdminToken,
    pub statefulset: Option<StatefulSet>,
    pub service_monitor_supported: bool,
    /// `spec.coverage.references` as URLs (empty without coverage).
    pub coverage_references: Vec<String>,
}

pub async fn read(relay: &Relay, namespace: &str, name: &str, ctx: &Context) -> Result<Observed, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let admin = admin_token(relay, name, &secrets).await?;
    if let Some(reference) = &relay.spec.storage.database.url_secret_ref {
        require_secret_key(&secrets, &reference.name, &reference.key, "storage.database.urlSecretRef")
            .await?;
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let statefulset = statefulsets.get_opt(name).await?;
    let service_monitor_supported = ctx.service_monitor_supported().await;
    let coverage_references = coverage_references(relay, namespace, ctx).await?;
    Ok(Observed { admin, statefulset, service_monitor_supported, coverage_references })
}

/// The references as URLs. A Relay named as a reference is reached through its public
/// Service; a name with no Relay (yet) gets the default port, and the comparison reports
/// it unreachable rather than the whole Relay stalling over another one.
async fn coverage_references(relay: &Relay, namespace: &str, ctx: &Context) -> Result<Vec<String>, Error> {
    let Some(coverage) = &relay.spec.coverage else { return Ok(Vec::new()) };
    let relays: Api<Relay> = Api::namespaced(ctx.client.clone(), namespace);
    let mut urls = Vec::new();
    for reference in &coverage.references {
        match (&reference.relay, &reference.url) {
            (Some(name), _) => {
                let port = relays.get_opt(name).await?.map(|r| r.spec.ports.public);
                urls.push(service_url(
                    name,
                    namespace,
                    port.unwrap_or(crate::crd::PortsSpec::default().public),
                ));
            }
            (None, Some(url)) => urls.push(url.clone()),
            (None, None) => {}
        }
    }
    Ok(urls)
}

/// The newest finished coverage run of a Relay, read from its Jobs and that Job's pod
/// (termination messages); none before the first run finishes.
pub async fn coverage_run(namespace: &str, name: &str, ctx: &Context) -> Result<Option<Run>, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = jobs.list(&ListParams::default().labels(&job_selector(name))).await?.items;
    let Some((job, finished)) = newest_finished(&listed) else { return Ok(None) };
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("batch.kubernetes.io/job-name={job_name}");
    let pods = pods.list(&ListParams::default().labels(&selector)).await?.items;
    Ok(Some(run_of(job, finished, &pods)))
}

async fn admin_token(relay: &Relay, name: &str, secrets: &Api<Secret>) -> Result<AdminToken, Error> {
    if let Some(reference) = &relay.spec.admin.token_secret_ref {
        let token =
            require_secret_key(secrets, &reference.name, &reference.key, "admin.tokenSecretRef").await?;
        return Ok(AdminToken::User {
            name: reference.name.clone(),
            key: reference.key.clone(),
            digest: digest(&token),
        });
    }
    // Reuse the generated token once it exists: regenerating would roll the pod.
    let existing = secrets.get_opt(&admin_secret_name(name)).await?;
    let token = existing
        .as_ref()
        .and_then(|secret| secret.data.as_ref())
        .and_then(|data| data.get(GENERATED_TOKEN_KEY))
        .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
        .filter(|token| !token.is_empty())
        .unwrap_or_else(generate_token);
    Ok(AdminToken::Generated { token })
}

async fn require_secret_key(
    secrets: &Api<Secret>,
    name: &str,
    key: &str,
    field: &'static str,
) -> Result<Vec<u8>, Error> {
    let secret = secrets.get_opt(name).await?;
    let missing = || Error::MissingSecret { field, name: name.to_string(), key: key.to_string() };
    let secret = secret.ok_or_else(missing)?;
    if let Some(bytes) = secret.data.as_ref().and_then(|data| data.get(key)) {
        return Ok(bytes.0.clone());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|s| s.as_bytes().to_vec())
        .ok_or_else(missing)
}
