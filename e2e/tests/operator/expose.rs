//! The `spec.expose` step. A Relay of its own (`exposed`, stopped: no relay process is
//! needed to judge the objects) is exposed through an Ingress, then through a LoadBalancer
//! Service, then not at all. There is no ingress controller, cert-manager or external-dns
//! here: the step checks what the API server accepted and stored — all those controllers
//! ever read — and what the operator reports in status.

use super::*;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const EXPOSED: &str = "exposed";
const HOST: &str = "relay.e2e.example";

fn manifest(expose: &str) -> String {
    format!(
        "apiVersion: atrelay.dev/v1alpha1\nkind: Relay\nmetadata:\n  name: {EXPOSED}\n  namespace: {NS}\nspec:\n  \
         image: ghcr.io/atrelay/relay:0.1.0\n  upstream: {{host: \"\"}}\n  monitoring: {{serviceMonitor: false}}\n  \
         operation: {{stopped: true}}\n{expose}"
    )
}

const INGRESS_EXPOSE: &str = "  expose:\n    hostname: relay.e2e.example\n    ingressClassName: nginx\n    \
    tls: {issuerRef: {name: letsencrypt, kind: ClusterIssuer}}\n    externalDNS: {enabled: true, ttl: 300}\n    \
    annotations: {e2e.atrelay.dev/extra: \"yes\"}\n";

async fn exposed_relay(env: &Env) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(env.relays().get(EXPOSED).await?)?)
}

/// The API server refuses a Relay with this `expose` block, with `message` in its answer.
async fn refused(env: &Env, what: &str, expose: &str, message: &str) -> anyhow::Result<()> {
    match env.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest(expose))).await {
        Ok(_) => bail!("{what}: the API server accepted it"),
        Err(error) if error.to_string().contains(message) => Ok(()),
        Err(error) => bail!("{what}: refused, but without {message:?}: {error}"),
    }
}

async fn cel_refusals(env: &Env) -> anyhow::Result<()> {
    refused(
        env,
        "a hostname with a scheme",
        "  expose: {hostname: \"https://relay.e2e.example\", tls: {secretName: t}}\n",
        "expose.hostname must be a lowercase DNS name",
    )
    .await?;
    refused(
        env,
        "two TLS sources",
        "  expose: {hostname: relay.e2e.example, tls: {secretName: t, issuerRef: {name: le}}}\n",
        "expose.tls names exactly one TLS source",
    )
    .await
}

/// What is wrong with the stored Ingress, if anything.
fn ingress_problems(ingress: &Ingress) -> Vec<String> {
    let mut problems = Vec::new();
    let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
    for (key, value) in [
        ("cert-manager.io/cluster-issuer", "letsencrypt"),
        ("external-dns.alpha.kubernetes.io/hostname", HOST),
        ("external-dns.alpha.kubernetes.io/ttl", "300"),
        ("nginx.ingress.kubernetes.io/proxy-read-timeout", "3600"),
        ("nginx.ingress.kubernetes.io/proxy-send-timeout", "3600"),
        ("e2e.atrelay.dev/extra", "yes"),
    ] {
        if annotations.get(key).map(String::as_str) != Some(value) {
            problems.push(format!("annotation {key} is {:?}, not {value:?}", annotations.get(key)));
        }
    }
    let owned = ingress.metadata.owner_references.iter().flatten();
    if !owned.clone().any(|o| o.kind == "Relay" && o.name == EXPOSED && o.controller == Some(true)) {
        problems.push("no controller reference to the Relay".into());
    }
    let spec = ingress.spec.clone().unwrap_or_default();
    if spec.ingress_class_name.as_deref() != Some("nginx") {
        problems.push(format!("ingressClassName {:?}", spec.ingress_class_name));
    }
    let tls = spec.tls.unwrap_or_default();
    if tls.len() != 1
        || tls[0].hosts.as_deref() != Some(&[HOST.to_string()][..])
        || tls[0].secret_name.as_deref() != Some("exposed-tls")
    {
        problems.push(format!("tls {tls:?}"));
    }
    let rules = spec.rules.unwrap_or_default();
    let paths: Vec<(String, String, String, String)> = rules
        .iter()
        .filter(|rule| rule.host.as_deref() == Some(HOST))
        .flat_map(|rule| rule.http.iter().flat_map(|http| http.paths.iter()))
        .map(|path| {
            let service = path.backend.service.clone().unwrap_or_default();
            let port = service.port.and_then(|p| p.name).unwrap_or_default();
            (path.path.clone().unwrap_or_default(), path.path_type.clone(), service.name, port)
        })
        .collect();
    let wanted =
        |path: &str| (path.to_string(), "Prefix".to_string(), EXPOSED.to_string(), "http".to_string());
    if rules.len() != 1 || paths != [wanted("/xrpc/"), wanted("/")] {
        problems.push(format!("rules {rules:?}"));
    }
    problems
}

async fn ingress_stored(env: &Env) -> anyhow::Result<Ingress> {
    let ingresses: Api<Ingress> = Api::namespaced(env.client.clone(), NS);
    eventually("the Ingress stored as the operator builds it", Duration::from_secs(60), || async {
        let Some(ingress) = ingresses.get_opt(EXPOSED).await? else { return Ok(None) };
        let problems = ingress_problems(&ingress);
        if problems.is_empty() {
            Ok(Some(ingress))
        } else {
            Err(anyhow!("{}", problems.join("; ")))
        }
    })
    .await
}

async fn firehose_shown(env: &Env, url: &str) -> anyhow::Result<()> {
    eventually(&format!("status.endpoints.firehose {url}"), Duration::from_secs(60), || async {
        let relay = exposed_relay(env).await?;
        Ok((relay["status"]["endpoints"]["firehose"] == url && current(&relay)).then_some(()))
    })
    .await
}

/// A re-reconcile of the exposed, unchanged Relay writes nothing (no Ingress re-apply).
async fn idle_exposed_relay_writes_nothing(env: &Env, ingress: &Ingress) -> anyhow::Result<()> {
    settled(env).await?;
    idle_reconcile_writes_nothing(env, EXPOSED, "1", "of the exposed Relay").await?;
    let live = Api::<Ingress>::namespaced(env.client.clone(), NS).get(EXPOSED).await?;
    if live.metadata.resource_version != ingress.metadata.resource_version {
        bail!("the Ingress changed on an idle re-reconcile");
    }
    Ok(())
}

/// A hand edit is put back (the Ingress is watched), and an annotation dropped from
/// `expose.annotations` leaves the Ingress.
async fn ingress_drift_and_removed_annotation(env: &Env) -> anyhow::Result<()> {
    let ingresses: Api<Ingress> = Api::namespaced(env.client.clone(), NS);
    let edit = r#"[{"op":"replace","path":"/spec/rules/0/host","value":"hand.e2e.example"}]"#;
    env.kubectl(&["patch", "ingress", EXPOSED, "-n", NS, "--type=json", "-p", edit]).await?;
    ingress_stored(env).await?;
    patch_relay_named(env, EXPOSED, r#"{"spec":{"expose":{"annotations":null}}}"#).await?;
    eventually("e2e.atrelay.dev/extra removed from the Ingress", Duration::from_secs(60), || async {
        let ingress = ingresses.get(EXPOSED).await?;
        let annotations = ingress.metadata.annotations.unwrap_or_default();
        Ok((!annotations.contains_key("e2e.atrelay.dev/extra")
            && annotations.contains_key("external-dns.alpha.kubernetes.io/hostname"))
        .then_some(()))
    })
    .await
}

async fn gone(env: &Env, kind: &str, name: &str) -> anyhow::Result<()> {
    eventually(&format!("{kind}/{name} pruned"), Duration::from_secs(60), || async {
        let found = env.kubectl(&["get", "-n", NS, kind, name, "--ignore-not-found", "-o", "name"]).await?;
        Ok(found.trim().is_empty().then_some(()))
    })
    .await
}

/// `via: LoadBalancer`: the Ingress goes, a LoadBalancer Service with the external-dns
/// annotations comes.
async fn switched_to_load_balancer(env: &Env) -> anyhow::Result<()> {
    let patch = r#"{"spec":{"expose":{"via":"LoadBalancer","tls":null,"ingressClassName":null,"annotations":{"load-balancer.hetzner.cloud/location":"fsn1"}}}}"#;
    patch_relay_named(env, EXPOSED, patch).await?;
    gone(env, "ingress", EXPOSED).await?;
    let services: Api<Service> = Api::namespaced(env.client.clone(), NS);
    eventually("the LoadBalancer Service exposed-public", Duration::from_secs(60), || async {
        let Some(service) = services.get_opt("exposed-public").await? else { return Ok(None) };
        let annotations = service.metadata.annotations.clone().unwrap_or_default();
        let spec = service.spec.clone().unwrap_or_default();
        let port = spec.ports.iter().flatten().next().map(|p| (p.port, p.target_port.clone()));
        let right = spec.type_.as_deref() == Some("LoadBalancer")
            && port == Some((443, Some(IntOrString::String("http".into()))))
            && annotations.get("external-dns.alpha.kubernetes.io/hostname").map(String::as_str) == Some(HOST)
            && annotations.get("load-balancer.hetzner.cloud/location").map(String::as_str) == Some("fsn1");
        if right {
            Ok(Some(()))
        } else {
            Err(anyhow!("not yet as built: {service:?}"))
        }
    })
    .await?;
    firehose_shown(env, &format!("wss://{HOST}/xrpc/com.atproto.sync.subscribeRepos")).await
}

pub(super) async fn expose(env: &mut Env) -> anyhow::Result<()> {
    let env: &Env = env;
    let outcome = async {
        cel_refusals(env).await?;
        env.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest(INGRESS_EXPOSE))).await?;
        let ingress = ingress_stored(env).await?;
        firehose_shown(env, &format!("wss://{HOST}/xrpc/com.atproto.sync.subscribeRepos")).await?;
        let relay = exposed_relay(env).await?;
        if relay["status"]["endpoints"]["xrpc"] != format!("https://{HOST}")
            || relay["status"]["endpoints"]["internal"] != format!("http://{EXPOSED}-internal.{NS}.svc:2471")
        {
            bail!("status.endpoints: {}", relay["status"]["endpoints"]);
        }
        idle_exposed_relay_writes_nothing(env, &ingress).await?;
        ingress_drift_and_removed_annotation(env).await?;
        switched_to_load_balancer(env).await?;
        patch_relay_named(env, EXPOSED, r#"{"spec":{"expose":null}}"#).await?;
        gone(env, "service", "exposed-public").await?;
        firehose_shown(env, &format!("ws://{EXPOSED}.{NS}.svc:2470/xrpc/com.atproto.sync.subscribeRepos"))
            .await
    }
    .await;
    // The Relay goes whatever happened, so later steps see only their own.
    env.kubectl(&[
        "delete",
        "relay",
        EXPOSED,
        "-n",
        NS,
        "--ignore-not-found",
        "--wait=true",
        "--timeout=90s",
    ])
    .await?;
    outcome
}
