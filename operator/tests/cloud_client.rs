//! The Hetzner client and the lifecycle rules against the fake Hetzner API
//! (relay_e2e::hcloud_fake): create, find, adopt after a crash, no duplicates, 429
//! storms, 401 without retries, transient failures, deletion that waits until the server
//! is gone, and servers that are not ours left alone. Each scenario prints its API call
//! counts (`cargo test -p relay-operator --test cloud_client -- --nocapture`); the figures
//! are in docs/hetzner.md.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay_e2e::hcloud_fake::{Behaviour, FakeHetzner, Fault, TOKEN};
use relay_operator::cloud::hetzner::lifecycle::{self, PollPolicy};
use relay_operator::cloud::hetzner::naming::{self, Owner, LABEL_UID};
use relay_operator::cloud::hetzner::*;

const UID: &str = "6f1c2a9e-0b7d-4e55-9a33-1234567890ab";

fn owner() -> Owner {
    Owner { namespace: "relays".into(), name: "eu".into(), uid: UID.into() }
}

fn spec() -> ServerSpec {
    ServerSpec {
        name: naming::server_name("eu", UID),
        server_type: "cpx41".into(),
        location: "fsn1".into(),
        image: "ubuntu-24.04".into(),
        labels: naming::ownership_labels(&owner(), &BTreeMap::new()),
        ssh_keys: vec!["ops".into()],
        firewall_ids: vec![],
        network_id: None,
        user_data: "#cloud-config\n".into(),
    }
}

fn poll() -> PollPolicy {
    PollPolicy {
        interval: Duration::from_millis(20),
        max_interval: Duration::from_millis(100),
        max_wait: Duration::from_secs(3),
    }
}

fn budget() -> Arc<RateBudget> {
    Arc::new(RateBudget::new(BudgetConfig {
        // Minutes in production; fractions of a second here so the storm test is quick.
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_millis(800),
        max_wait: Duration::from_secs(1),
        ..BudgetConfig::default()
    }))
}

fn client(fake: &FakeHetzner, token: &str) -> HcloudClient {
    let settings = ClientSettings {
        base_url: fake.base_url(),
        timeout: Duration::from_secs(5),
        retry_delay: Duration::from_millis(20),
        ..ClientSettings::default()
    };
    HcloudClient::new(token, budget(), settings).expect("client builds")
}

async fn start() -> FakeHetzner {
    FakeHetzner::start().await.expect("fake starts")
}

fn report(scenario: &str, client: &HcloudClient, fake: &FakeHetzner) {
    eprintln!("CALLS {scenario}: client {} | fake requests {:?}", client.budget().counts(), fake.requests());
}

#[tokio::test]
async fn create_wait_then_steady_state_costs_one_call() {
    let fake = start().await;
    let api = client(&fake, TOKEN);
    let ensured = lifecycle::ensure_server(&api, UID, None, &spec()).await.expect("created");
    assert_eq!(ensured.origin, Origin::Created);
    assert!(naming::is_owned_by(&ensured.server, UID));
    let action = ensured.action.expect("create action");
    lifecycle::wait_for_action(&api, action.id, poll()).await.expect("action succeeds");
    let server = lifecycle::wait_until_running(&api, ensured.server.id, poll()).await.expect("running");
    assert!(server.public_ipv4.is_some() && server.public_ipv6.is_some());
    report("create+wait", &api, &fake);

    // Steady state: the status id is known, one GET per check.
    let before = api.budget().counts();
    let again = lifecycle::ensure_server(&api, UID, Some(server.id), &spec()).await.expect("found");
    assert_eq!(again.origin, Origin::Found);
    let steady = api.budget().counts().since(&before);
    assert_eq!((steady.total(), steady.of(Op::GetServer)), (1, 1), "{steady}");
    eprintln!("CALLS steady state (status id known): {steady}");
    assert_eq!(fake.servers_created(), 1);
}

#[tokio::test]
async fn after_a_crash_before_the_status_write_the_server_is_found_not_duplicated() {
    let fake = start().await;
    let api = client(&fake, TOKEN);
    // The first run created the server and crashed before writing status.serverId.
    api.create_server(&spec()).await.expect("first create");
    let before = api.budget().counts();
    let ensured = lifecycle::ensure_server(&api, UID, None, &spec()).await.expect("found by label");
    assert_eq!(ensured.origin, Origin::Found);
    assert_eq!(fake.servers_created(), 1);
    eprintln!("CALLS crash then label lookup: {}", api.budget().counts().since(&before));
}

/// Hides servers from the first label listing: the race where a create lands after the
/// lookup (another worker, or an API that lists a new server late).
struct MissFirstList<'a> {
    inner: &'a HcloudClient,
    missed: AtomicBool,
}

impl HetznerApi for MissFirstList<'_> {
    async fn create_server(&self, spec: &ServerSpec) -> Result<CreatedServer, CloudError> {
        self.inner.create_server(spec).await
    }
    async fn get_server(&self, id: i64) -> Result<Option<ServerInfo>, CloudError> {
        self.inner.get_server(id).await
    }
    async fn list_servers(&self, selector: &str) -> Result<Vec<ServerInfo>, CloudError> {
        let listed = self.inner.list_servers(selector).await?;
        Ok(if self.missed.swap(true, Ordering::SeqCst) { listed } else { Vec::new() })
    }
    async fn server_by_name(&self, name: &str) -> Result<Option<ServerInfo>, CloudError> {
        self.inner.server_by_name(name).await
    }
    async fn delete_server(&self, id: i64) -> Result<Option<ActionInfo>, CloudError> {
        self.inner.delete_server(id).await
    }
    async fn get_action(&self, id: i64) -> Result<ActionInfo, CloudError> {
        self.inner.get_action(id).await
    }
    async fn create_firewall(&self, spec: &FirewallSpec) -> Result<Firewall, CloudError> {
        self.inner.create_firewall(spec).await
    }
    async fn firewall_by_name(&self, name: &str) -> Result<Option<Firewall>, CloudError> {
        self.inner.firewall_by_name(name).await
    }
    async fn delete_firewall(&self, id: i64) -> Result<(), CloudError> {
        self.inner.delete_firewall(id).await
    }
    async fn ssh_keys_by_name(&self, names: &[String]) -> Result<Vec<SshKey>, CloudError> {
        self.inner.ssh_keys_by_name(names).await
    }
    async fn network_by_name(&self, name: &str) -> Result<Option<Network>, CloudError> {
        self.inner.network_by_name(name).await
    }
}

#[tokio::test]
async fn a_second_create_meets_uniqueness_error_and_adopts_our_server_by_name() {
    let fake = start().await;
    let inner = client(&fake, TOKEN);
    inner.create_server(&spec()).await.expect("first create");
    let api = MissFirstList { inner: &inner, missed: AtomicBool::new(false) };
    let before = inner.budget().counts();
    let ensured = lifecycle::ensure_server(&api, UID, None, &spec()).await.expect("adopted");
    assert_eq!(ensured.origin, Origin::Adopted);
    assert_eq!(fake.servers().len(), 1, "no duplicate");
    assert_eq!(fake.requests().get("POST /servers"), Some(&2), "the second create was refused by the API");
    eprintln!("CALLS create twice -> uniqueness_error -> adopt: {}", inner.budget().counts().since(&before));
}

#[tokio::test]
async fn a_same_named_server_without_our_uid_is_a_conflict_and_is_never_touched() {
    let fake = start().await;
    let api = client(&fake, TOKEN);
    let name = naming::server_name("eu", UID);
    let theirs = fake
        .add_server(&name, &[(naming::LABEL_MANAGED_BY, naming::MANAGED_BY), (LABEL_UID, "someone-else")]);
    let similar = fake.add_server(&format!("{name}-old"), &[]);
    let error = lifecycle::ensure_server(&api, UID, None, &spec()).await.expect_err("conflict");
    assert!(matches!(error, LifecycleError::NameConflict { id, .. } if id == theirs), "{error}");
    // A status id that points at someone else's server is refused too.
    let error = lifecycle::ensure_server(&api, UID, Some(similar), &spec()).await.expect_err("not ours");
    assert!(matches!(error, LifecycleError::NotOwned { .. }), "{error}");
    // Deleting finds nothing of ours and deletes nothing.
    let deleted = lifecycle::delete_owned_servers(&api, UID, None, poll()).await.expect("nothing to delete");
    assert!(deleted.ids.is_empty());
    assert!(lifecycle::delete_owned_servers(&api, UID, Some(theirs), poll()).await.is_err());
    let left: Vec<i64> = fake.servers().iter().map(|s| s.id).collect();
    assert_eq!(left, vec![theirs, similar]);
    assert_eq!(fake.requests().get("DELETE /servers/{id}"), None);
    report("name conflict, unrelated servers", &api, &fake);
}

#[tokio::test]
async fn a_429_storm_backs_off_and_converges_with_one_server() {
    let fake = start().await;
    let api = client(&fake, TOKEN);
    fake.inject(None, Fault::RateLimited, 3);
    let mut attempts = 0;
    let ensured = loop {
        attempts += 1;
        match lifecycle::ensure_server(&api, UID, None, &spec()).await {
            Ok(ensured) => break ensured,
            Err(LifecycleError::Api(CloudError::RateLimited { retry_after })) => {
                assert_eq!(api.budget().health(), ApiHealth::RateLimited);
                // What a reconcile does: requeue after retry_after.
                tokio::time::sleep(retry_after).await;
            }
            Err(other) => panic!("unexpected: {other}"),
        }
        assert!(attempts < 20, "did not converge");
    };
    assert_eq!(ensured.origin, Origin::Created);
    assert_eq!(fake.servers_created(), 1);
    assert!(api.budget().health().is_ok());
    let counts = api.budget().counts();
    assert_eq!(counts.rate_limited, 3);
    eprintln!("CALLS 429 storm (3 x 429): {attempts} attempts; client {counts}; fake {:?}", fake.requests());
}

#[tokio::test]
async fn a_refused_token_is_reported_once_and_not_retried() {
    let fake = start().await;
    let api = client(&fake, "wrong-token");
    for _ in 0..3 {
        let error = lifecycle::ensure_server(&api, UID, None, &spec()).await.expect_err("unauthorized");
        assert!(matches!(error, LifecycleError::Api(CloudError::Unauthorized { .. })), "{error}");
    }
    assert_eq!(fake.total_requests(), 1, "one request, then the latch answers locally");
    assert_eq!(api.budget().health(), ApiHealth::Unauthorized);
    report("401 x3 attempts", &api, &fake);
}

#[tokio::test]
async fn transient_failures_retry_reads_but_never_a_create() {
    let fake = start().await;
    let api = client(&fake, TOKEN);
    fake.inject(Some("GET /servers"), Fault::ServerError, 1);
    fake.inject(Some("GET /servers"), Fault::ConnectionReset, 1);
    assert!(api.list_servers(&naming::owner_selector(UID)).await.expect("retried").is_empty());
    assert_eq!(fake.requests().get("GET /servers"), Some(&3));

    fake.inject(Some("POST /servers"), Fault::ConnectionReset, 1);
    let error = api.create_server(&spec()).await.expect_err("reset");
    assert!(matches!(error, CloudError::Transient(_)), "{error}");
    assert_eq!(fake.requests().get("POST /servers"), Some(&1), "a POST is not repeated");
    assert_eq!(api.budget().health(), ApiHealth::Unreachable);
    // The next reconcile goes through the lookup order and creates exactly one.
    lifecycle::ensure_server(&api, UID, None, &spec()).await.expect("created");
    assert_eq!(fake.servers().len(), 1);

    fake.inject(Some("POST /servers"), Fault::ResourceUnavailable, 1);
    let other = ServerSpec { name: "relay-other-00000000".into(), ..spec() };
    let error = api.create_server(&other).await.expect_err("no capacity");
    assert!(matches!(error, CloudError::ResourceUnavailable { .. }), "{error}");
    report("5xx + resets + resource_unavailable", &api, &fake);
}

#[tokio::test]
async fn delete_waits_for_the_action_and_the_404_and_leaves_other_servers() {
    let fake = start().await;
    let api = client(&fake, TOKEN);
    let unrelated = fake
        .add_server(&format!("{}-x", naming::server_name("eu", UID)), &[(naming::LABEL_RELAY, "relays.eu")]);
    let ensured = lifecycle::ensure_server(&api, UID, None, &spec()).await.expect("created");
    fake.set_behaviour(Behaviour {
        action_duration: Duration::from_millis(300),
        delete_lingers: true,
        ..Behaviour::default()
    });
    fake.inject(Some("DELETE /servers/{id}"), Fault::ServerError, 1);
    let before = api.budget().counts();
    let deleted =
        lifecycle::delete_owned_servers(&api, UID, Some(ensured.server.id), poll()).await.expect("deleted");
    assert_eq!(deleted.ids, vec![ensured.server.id]);
    let left: Vec<i64> = fake.servers().iter().map(|s| s.id).collect();
    assert_eq!(left, vec![unrelated], "ours is gone, the unrelated one stays");
    eprintln!("CALLS delete (300 ms action, one 503): {}", api.budget().counts().since(&before));
    // Deleting again: nothing of ours left, nothing deleted.
    let before = api.budget().counts();
    let again =
        lifecycle::delete_owned_servers(&api, UID, Some(ensured.server.id), poll()).await.expect("gone");
    assert!(again.ids.is_empty());
    eprintln!("CALLS delete when already gone: {}", api.budget().counts().since(&before));
}

#[tokio::test]
async fn slow_failed_and_never_running_servers_end_in_bounded_errors() {
    let fake = start().await;
    let api = client(&fake, TOKEN);
    let short = PollPolicy { max_wait: Duration::from_millis(300), ..poll() };

    fake.set_behaviour(Behaviour { action_duration: Duration::from_secs(60), ..Behaviour::default() });
    let slow = api.create_server(&spec()).await.expect("created");
    let error = lifecycle::wait_for_action(&api, slow.action.id, short).await.expect_err("timeout");
    assert!(matches!(error, LifecycleError::ActionTimeout { .. }), "{error}");

    fake.set_behaviour(Behaviour { fail_create_actions: true, ..Behaviour::default() });
    let failed = api
        .create_server(&ServerSpec { name: "relay-failed-00000000".into(), ..spec() })
        .await
        .expect("created");
    let error = lifecycle::wait_for_action(&api, failed.action.id, short).await.expect_err("failed");
    assert!(
        matches!(&error, LifecycleError::ActionFailed { code, .. } if code == "action_failed"),
        "{error}"
    );

    fake.set_behaviour(Behaviour { never_running: true, ..Behaviour::default() });
    let stuck = api
        .create_server(&ServerSpec { name: "relay-stuck-00000000".into(), ..spec() })
        .await
        .expect("created");
    let error = lifecycle::wait_until_running(&api, stuck.server.id, short).await.expect_err("never running");
    assert!(matches!(error, LifecycleError::NotRunning { status: ServerStatus::Starting, .. }), "{error}");
    report("slow/failed/stuck", &api, &fake);
}

#[tokio::test]
async fn ssh_keys_networks_and_firewalls_are_found_by_name() {
    let fake = start().await;
    let api = client(&fake, TOKEN);
    fake.add_ssh_key("ops");
    fake.add_ssh_key("laptop");
    let network = fake.add_network("relays", "10.0.0.0/16");
    let wanted = vec!["ops".to_string(), "missing".to_string()];
    let keys = api.ssh_keys_by_name(&wanted).await.expect("listed");
    assert_eq!(missing_names(&wanted, &keys), vec!["missing".to_string()]);
    assert_eq!(api.network_by_name("relays").await.expect("listed").map(|n| n.id), Some(network));
    assert_eq!(api.network_by_name("nope").await.expect("listed"), None);

    let firewall = FirewallSpec {
        name: "relay-eu".into(),
        labels: naming::ownership_labels(&owner(), &BTreeMap::new()),
        rules: vec![
            FirewallRule {
                protocol: FirewallProtocol::Tcp,
                port: Some("443".into()),
                source_ips: vec!["0.0.0.0/0".into(), "::/0".into()],
                description: "firehose".into(),
            },
            FirewallRule {
                protocol: FirewallProtocol::Icmp,
                port: None,
                source_ips: vec!["0.0.0.0/0".into()],
                description: "ping".into(),
            },
        ],
    };
    assert_eq!(api.firewall_by_name("relay-eu").await.expect("listed"), None);
    let created = api.create_firewall(&firewall).await.expect("created");
    assert_eq!(created.labels.get(LABEL_UID).map(String::as_str), Some(UID));
    assert_eq!(api.firewall_by_name("relay-eu").await.expect("listed").map(|f| f.id), Some(created.id));
    let again = api.create_firewall(&firewall).await.expect_err("name taken");
    assert!(matches!(again, CloudError::UniquenessError { .. }));
    report("ssh keys, network, firewall", &api, &fake);
}
