//! The coverage step: a fleet of three Relays in front of one simulated network of five
//! PDS hosts, each Relay comparing itself with the other two. `fleet-c` is told about only
//! four of the five hosts, so it delivers about 80 % of the network's commits: below the
//! degraded line (90 %), above the critical one (70 %).
//!
//! The schedule is `* * * * *` and the suite waits for the CronJob controller's own runs
//! (at most a minute until the first one) instead of creating Jobs from the template: the
//! path under test is the production one (CronJob → Job → pod → termination messages →
//! status), including `lastScheduleTime` for `nextRunTime`; the wait overlaps with the
//! relays' start-up, which has to happen anyway.

use super::*;

const FLEET: [&str; 3] = ["fleet-a", "fleet-b", "fleet-c"];
/// Hosts of the fleet's network; `fleet-c` is told about all but the last.
const FLEET_HOSTS: usize = 5;

fn fleet_manifest(name: &str, plc: &str) -> String {
    let references: Vec<String> =
        FLEET.iter().filter(|other| **other != name).map(|other| format!("{{relay: {other}}}")).collect();
    format!(
        "apiVersion: atrelay.dev/v1alpha1\nkind: Relay\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  \
         image: ghcr.io/atrelay/relay:0.1.0\n  upstream: {{host: \"\", plcDirectory: \"{plc}\"}}\n  \
         tunables: {{allowInsecureHosts: true}}\n  monitoring: {{serviceMonitor: false}}\n  \
         coverage:\n    schedule: \"* * * * *\"\n    firehoseWindow: 10s\n    correctnessSample: 5\n    \
         references: [{}]\n",
        references.join(", ")
    )
}

async fn fleet_relay(env: &Env, name: &str) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(env.relays().get(name).await?)?)
}

/// Asks a relay to crawl the given hosts (admin requestCrawl), as an operator of a relay
/// that has not heard of every PDS would.
async fn request_crawl(sim: &Simulation, hosts: usize, admin_url: &str, token: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for host in sim.hosts.iter().take(hosts) {
        let response = client
            .post(format!("{admin_url}/admin/pds/requestCrawl"))
            .bearer_auth(token)
            .json(&serde_json::json!({"hostname": format!("http://{}", host.hostname())}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("requestCrawl for {}: {}", host.hostname(), response.status());
        }
    }
    Ok(())
}

async fn admin_token_of(env: &Env, name: &str) -> anyhow::Result<String> {
    let secret = Api::<Secret>::namespaced(env.client.clone(), NS).get(&format!("{name}-admin")).await?;
    let bytes = secret.data.and_then(|d| d.get("token").cloned()).ok_or_else(|| anyhow!("no token"))?;
    Ok(String::from_utf8(bytes.0)?)
}

/// Creates the fleet and tells each relay about its hosts.
async fn start_fleet(env: &Env) -> anyhow::Result<(Arc<Simulation>, tokio::task::JoinHandle<()>)> {
    let sim = Simulation::start(SimulateConfig {
        hosts: FLEET_HOSTS,
        accounts_per_host: 4,
        rate: 30.0,
        max_commits: 0,
        bind: "127.0.0.1".into(),
        relay_admin_url: None,
        relay_admin_token: None,
        hostile: Vec::new(),
        seed: 11,
        backlog_on_connect: false,
        history_events: 0,
        advertise_name: None,
    })
    .await?;
    sim.create_accounts();
    let runner = tokio::spawn(sim.clone().run());
    for name in FLEET {
        env.kubectl_stdin(&["apply", "-f", "-"], Some(&fleet_manifest(name, &sim.plc_url()))).await?;
    }
    for name in FLEET {
        let pod = format!("{name}-0");
        let ip = eventually(&format!("pod {pod} running"), Duration::from_secs(120), || async {
            let status = env.pod(&pod, NS).await?.and_then(|p| p.status).unwrap_or_default();
            Ok((status.phase.as_deref() == Some("Running")).then(|| status.pod_ip.unwrap_or_default()))
        })
        .await?;
        let token = admin_token_of(env, name).await?;
        let hosts = if name == "fleet-c" { FLEET_HOSTS - 1 } else { FLEET_HOSTS };
        let admin_url = format!("http://{ip}:2471");
        eventually(&format!("{name} to accept {hosts} hosts"), Duration::from_secs(60), || {
            let (sim, admin_url, token) = (sim.clone(), admin_url.clone(), token.clone());
            async move { Ok(request_crawl(&sim, hosts, &admin_url, &token).await.ok()) }
        })
        .await?;
    }
    Ok((sim, runner))
}

/// CronJobs made by the operator, owned by their Relays, with the run's shape.
async fn check_cronjobs(env: &Env) -> anyhow::Result<()> {
    use k8s_openapi::api::batch::v1::CronJob;
    let cronjobs: Api<CronJob> = Api::namespaced(env.client.clone(), NS);
    for name in FLEET {
        let cronjob = eventually(&format!("CronJob {name}-coverage"), Duration::from_secs(60), || async {
            Ok(cronjobs.get_opt(&format!("{name}-coverage")).await?)
        })
        .await?;
        let owner = cronjob.metadata.owner_references.clone().unwrap_or_default();
        let spec = &cronjob.spec;
        let pod = spec.job_template.spec.as_ref().and_then(|j| j.template.spec.clone()).unwrap_or_default();
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        if !owner.iter().any(|o| o.kind == "Relay" && o.name == name && o.controller == Some(true))
            || spec.schedule != "* * * * *"
            || spec.concurrency_policy.as_deref() != Some("Forbid")
            || names != ["firehose", "collections", "correctness"]
            || pod.restart_policy.as_deref() != Some("Never")
            || pod.automount_service_account_token != Some(false)
        {
            bail!("CronJob {name}-coverage is not the one the operator should make: {cronjob:?}");
        }
    }
    Ok(())
}

/// Whether a fleet relay's status shows a run with figures and the expected condition.
fn judged(relay: &Value, status: &str, reason: &str) -> bool {
    let coverage = &relay["status"]["coverage"];
    condition_is(relay, "CoverageOK", status, Some(reason))
        && coverage["lastRunTime"].is_string()
        && coverage["nextRunTime"].is_string()
        && coverage["bestReferenceBasisPoints"].is_i64()
        && coverage["own"]["uniqueDids"].is_i64()
        && coverage["own"]["collectionsComplete"].is_i64()
        && coverage["own"]["correctBasisPoints"].is_i64()
        && coverage["references"].as_array().is_some_and(|r| r.len() == 2)
        && coverage["history"].as_array().is_some_and(|h| !h.is_empty())
}

async fn wait_for_verdicts(env: &Env) -> anyhow::Result<()> {
    let started = Instant::now();
    eventually(
        "CoverageOK True for fleet-a and fleet-b, False/Degraded for fleet-c",
        Duration::from_secs(240),
        || async {
            let mut shown = Vec::new();
            let mut all = true;
            for name in FLEET {
                let relay = fleet_relay(env, name).await?;
                let (status, reason) =
                    if name == "fleet-c" { ("False", "Degraded") } else { ("True", "CoverageOK") };
                all &= judged(&relay, status, reason);
                let condition = condition(&relay, "CoverageOK").cloned().unwrap_or_default();
                shown.push(format!(
                    "{name}: {}/{} {} ({})",
                    condition["status"],
                    condition["reason"],
                    condition["message"],
                    relay["status"]["coverage"]["error"]
                ));
            }
            if all {
                Ok(Some(()))
            } else {
                Err(anyhow!("{}", shown.join("; ")))
            }
        },
    )
    .await?;
    println!("   verdicts after {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn check_fleet_view(env: &Env) -> anyhow::Result<()> {
    let text = env.kubectl(&["get", "relays", "-n", NS]).await?;
    let table = kubectl_table(&text);
    for name in FLEET {
        let compared = table_cell(&table, name, "COMPARED").unwrap_or_default();
        if !compared.ends_with('%') || table_cell(&table, name, "READY") != Some("True") {
            bail!("kubectl get relays does not show {name} ready with its coverage:\n{text}");
        }
    }
    println!("{}", text.lines().map(|l| format!("   {l}")).collect::<Vec<_>>().join("\n"));
    Ok(())
}

/// A Warning Event `CoverageDegraded` about fleet-c.
async fn check_event(env: &Env) -> anyhow::Result<()> {
    let events: Value =
        serde_json::from_str(&env.kubectl(&["get", "events.events.k8s.io", "-n", NS, "-o", "json"]).await?)?;
    let found = events["items"].as_array().into_iter().flatten().any(|event| {
        event["reason"] == "CoverageDegraded"
            && event["type"] == "Warning"
            && event["regarding"]["name"] == "fleet-c"
    });
    if !found {
        bail!("no Warning CoverageDegraded Event about fleet-c");
    }
    Ok(())
}

/// Removing `spec.coverage` removes the CronJob, the condition and the figures.
async fn coverage_removed(env: &Env) -> anyhow::Result<()> {
    patch_relay_named(env, "fleet-a", r#"{"spec":{"coverage":null}}"#).await?;
    eventually("the CronJob fleet-a-coverage pruned", Duration::from_secs(60), || async {
        let left = env
            .kubectl(&["get", "cronjob", "fleet-a-coverage", "-n", NS, "--ignore-not-found", "-o", "name"])
            .await?;
        let relay = fleet_relay(env, "fleet-a").await?;
        let clean = left.trim().is_empty()
            && condition(&relay, "CoverageOK").is_none()
            && relay["status"].get("coverage").is_none();
        Ok(clean.then_some(()))
    })
    .await
}

pub(super) async fn coverage_fleet(env: &mut Env) -> anyhow::Result<()> {
    let (sim, runner) = start_fleet(env).await?;
    let outcome = async {
        check_cronjobs(env).await?;
        wait_for_verdicts(env).await?;
        check_fleet_view(env).await?;
        check_event(env).await?;
        coverage_removed(env).await
    }
    .await;
    // The fleet goes whatever happened, so later steps see only their own relay.
    let mut names: Vec<&str> = vec!["delete", "relay", "-n", NS, "--wait=true", "--timeout=90s"];
    names.extend(FLEET);
    env.kubectl(&names).await?;
    runner.abort();
    drop(sim);
    outcome
}
