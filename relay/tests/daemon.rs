//! End-to-end: a simulated PDS fleet → the relay daemon (in process, real sockets,
//! SQLite + event log in a temp dir) → firehose consumers over WebSocket.

mod common;

use common::{start_relay, stop_relay};
use futures_util::StreamExt;
use relay::app::Relay;
use relay::atproto::frame::{self, Event};
use relay::config::ServeConfig;
use relay::simulate::{Hostile, SimulateConfig, Simulation};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn config(dir: &std::path::Path, plc: String) -> ServeConfig {
    let mut config = common::relay_config(dir, plc);
    config.admin_tokens = vec!["test-token".into()];
    config
}

async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    let response = client.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response.json().await.unwrap_or_else(|e| panic!("GET {url}: body is not JSON: {e}"))
}

/// Reads frames until `want` sequenced events arrived or the deadline passed.
async fn consume(url: &str, want: usize, deadline: Duration) -> Vec<Event> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("consumer connects");
    let mut events = Vec::new();
    let until = Instant::now() + deadline;
    while events.len() < want && Instant::now() < until {
        let next = tokio::time::timeout(Duration::from_millis(500), socket.next()).await;
        if let Ok(Some(Ok(Message::Binary(bytes)))) = next {
            events.push(frame::decode(&bytes).expect("relay frames decode"));
        }
    }
    events
}

fn sim_config(hosts: usize, accounts: usize, hostile: Vec<Hostile>) -> SimulateConfig {
    SimulateConfig {
        hosts,
        accounts_per_host: accounts,
        rate: 200.0,
        max_commits: 0,
        bind: "127.0.0.1".into(),
        relay_admin_url: None,
        relay_admin_token: None,
        hostile,
        seed: 7,
        backlog_on_connect: false,
        history_events: 0,
        advertise_name: None,
    }
}

async fn wait_connected(relay: &Relay, hosts: usize) {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let connected = relay.hosts.connected();
        if connected >= hosts {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("relay did not connect to {hosts} hosts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_a_simulated_fleet_on_sqlite() {
    relays_a_simulated_fleet_with_cursor_replay_and_restart(None, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_a_simulated_fleet_on_postgres() {
    let Some(server) = common::postgres_server() else { return };
    let url = common::fresh_postgres_database(&server).await;
    relays_a_simulated_fleet_with_cursor_replay_and_restart(Some(url), "postgres").await;
}

async fn relays_a_simulated_fleet_with_cursor_replay_and_restart(database_url: Option<String>, name: &str) {
    let dir = std::env::temp_dir().join(format!("relay-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sim = Simulation::start(sim_config(3, 4, vec![])).await.expect("simulator");
    let config_for = |dir: &std::path::Path| {
        let mut config = config(dir, sim.plc_url());
        config.database_url = database_url.clone();
        config
    };
    let running = start_relay(config_for(&dir)).await;
    let admin = format!("http://{}", running.internal);
    sim.register_with_relay(&admin, "test-token").await.expect("requestCrawl");
    wait_connected(&running.relay, 3).await;

    let firehose = format!("ws://{}/xrpc/com.atproto.sync.subscribeRepos", running.public);
    let live = tokio::spawn({
        let url = firehose.clone();
        async move { consume(&url, 12 * 3 + 60, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.create_accounts();
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..60 {
        sim.step(&mut rng);
    }
    let events = live.await.expect("consumer");
    // 12 accounts × (#identity, #account, #sync) + 60 commits, all valid.
    assert_eq!(events.len(), 12 * 3 + 60, "every event relayed");
    let seqs: Vec<i64> = events.iter().filter_map(Event::seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "relay seqs are contiguous and increasing");
    let commits = events.iter().filter(|e| matches!(e, Event::Commit(_))).count();
    assert_eq!(commits, 60);

    // A consumer with cursor 0 gets the whole window; one with a mid cursor gets the rest.
    let all = consume(&format!("{firehose}?cursor=0"), 96, Duration::from_secs(10)).await;
    assert_eq!(all.iter().filter_map(Event::seq).collect::<Vec<_>>(), seqs);
    let middle = seqs[40];
    let rest = consume(&format!("{firehose}?cursor={middle}"), 96, Duration::from_secs(3)).await;
    assert_eq!(rest.first().and_then(Event::seq), Some(middle + 1));
    assert_eq!(rest.len(), seqs.len() - 41);
    // A cursor in the future gets FutureCursor.
    let future = consume(
        &format!("{firehose}?cursor={}", seqs.last().copied().unwrap_or(0) + 100),
        1,
        Duration::from_secs(3),
    )
    .await;
    assert!(matches!(&future[..], [Event::Error(e)] if e.error == "FutureCursor"), "{future:?}");

    // XRPC reflects the relayed state.
    let client = reqwest::Client::new();
    let hosts: serde_json::Value =
        get_json(&client, format!("http://{}/xrpc/com.atproto.sync.listHosts", running.public)).await;
    assert_eq!(hosts["hosts"].as_array().map(Vec::len), Some(3));
    let repos: serde_json::Value =
        get_json(&client, format!("http://{}/xrpc/com.atproto.sync.listRepos", running.public)).await;
    assert_eq!(repos["repos"].as_array().map(Vec::len), Some(12));
    let some_did = repos["repos"][0]["did"].as_str().expect("did").to_string();
    let status: serde_json::Value = get_json(
        &client,
        format!("http://{}/xrpc/com.atproto.sync.getRepoStatus?did={some_did}", running.public),
    )
    .await;
    assert_eq!(status["active"], true);
    let bad = client
        .get(format!("http://{}/xrpc/com.atproto.sync.listRepos?limit=5000", running.public))
        .send()
        .await
        .expect("listRepos");
    assert_eq!(bad.status(), 400);

    // The operator's one request per relay: the state as integers.
    let summary: serde_json::Value = get_json(&client, format!("{admin}/_summary")).await;
    assert_eq!(summary["hosts"]["known"], 3, "{summary}");
    assert_eq!(summary["hosts"]["connected"], 3, "{summary}");
    assert_eq!(summary["hosts"]["byStatus"]["active"], 3, "{summary}");
    assert_eq!(summary["events"]["lastSeq"], running.relay.sequencer.current_head(), "{summary}");
    assert!(summary["events"]["sequencedTotal"].as_u64() >= Some(12), "{summary}");
    assert_eq!(summary["collections"]["enabled"], true, "{summary}");
    assert_eq!(summary["ready"]["ready"], true, "{summary}");

    // Admin takedown: #account emitted, getRepoStatus reports it, events purged from replay.
    let takedown = client
        .post(format!("{admin}/admin/repo/takeDown"))
        .bearer_auth("test-token")
        .json(&serde_json::json!({"did": some_did}))
        .send()
        .await
        .expect("takedown");
    assert!(takedown.status().is_success());
    let status: serde_json::Value = get_json(
        &client,
        format!("http://{}/xrpc/com.atproto.sync.getRepoStatus?did={some_did}", running.public),
    )
    .await;
    assert_eq!(status["active"], false);
    assert_eq!(status["status"], "takendown");
    let replay = consume(&format!("{firehose}?cursor=0"), 200, Duration::from_secs(3)).await;
    let of_did: Vec<&Event> = replay.iter().filter(|e| e.did() == Some(some_did.as_str())).collect();
    assert!(
        matches!(of_did.as_slice(), [Event::Account(a)] if !a.active),
        "only the takedown remains: {of_did:?}"
    );

    // Restart: the log and cursors survive; new events continue the sequence.
    let head_before = running.relay.sequencer.current_head();
    stop_relay(running).await;
    let running = start_relay(config_for(&dir)).await;
    assert_eq!(running.relay.sequencer.current_head(), head_before);
    wait_connected(&running.relay, 3).await;
    let firehose =
        format!("ws://{}/xrpc/com.atproto.sync.subscribeRepos?cursor={head_before}", running.public);
    let after = tokio::spawn(async move { consume(&firehose, 10, Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..30 {
        sim.step(&mut rng);
    }
    let events = after.await.expect("consumer");
    assert!(events.len() >= 10, "events flow after restart");
    assert_eq!(events.first().and_then(Event::seq), Some(head_before as i64 + 1), "no seq reused or skipped");
    stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_host_events_are_dropped() {
    let dir = std::env::temp_dir().join(format!("relay-e2e-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let hostile = vec![Hostile::CorruptBlock, Hostile::ForeignDid, Hostile::RevRollback];
    let sim = Simulation::start(sim_config(2, 3, hostile)).await.expect("simulator");
    let running = start_relay(config(&dir, sim.plc_url())).await;
    sim.register_with_relay(&format!("http://{}", running.internal), "test-token").await.expect("crawl");
    wait_connected(&running.relay, 2).await;
    sim.create_accounts();
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..200 {
        sim.step(&mut rng);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = running.relay.metrics.render();
    let rejected = |reason: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("relay_events_rejected_total") && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(rejected("bad_car") > 0.0, "corrupt blocks are rejected\n{metrics}");
    assert!(rejected("wrong_host") > 0.0, "foreign DIDs are rejected");
    assert!(rejected("rev_not_newer") > 0.0, "rev rollbacks are rejected");
    // Nothing invalid reached the firehose: every relayed commit validates again.
    let replay = consume(
        &format!("ws://{}/xrpc/com.atproto.sync.subscribeRepos?cursor=0", running.public),
        1000,
        Duration::from_secs(3),
    )
    .await;
    assert!(!replay.is_empty());
    for event in &replay {
        if let Event::Commit(commit) = event {
            relay::atproto::car::read(&commit.blocks, 2_000_000).expect("relayed CARs are intact");
        }
    }
    stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_hosts_become_idle_and_come_back() {
    let dir = std::env::temp_dir().join(format!("relay-e2e-idle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sim = Simulation::start(sim_config(1, 2, vec![])).await.expect("simulator");
    let mut relay_config = config(&dir, sim.plc_url());
    relay_config.idle_after = Duration::from_secs(2);
    let running = start_relay(relay_config).await;
    sim.register_with_relay(&format!("http://{}", running.internal), "test-token").await.expect("crawl");
    wait_connected(&running.relay, 1).await;
    let client = reqwest::Client::new();
    let status_url = format!(
        "http://{}/xrpc/com.atproto.sync.getHostStatus?hostname={}",
        running.public,
        sim.hosts[0].hostname()
    );
    let wait_for = |want: &'static str| {
        let (client, url) = (client.clone(), status_url.clone());
        async move {
            let until = Instant::now() + Duration::from_secs(15);
            loop {
                let status = get_json(&client, url.clone()).await;
                if status["status"] == want {
                    return;
                }
                assert!(Instant::now() < until, "host never became {want}: {status}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_for("idle").await;
    sim.create_accounts();
    wait_for("active").await;
    stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_are_forwarded_to_sibling_relays_once() {
    let sim = Simulation::start(sim_config(2, 1, Vec::new())).await.expect("simulation");
    let dir_a = std::env::temp_dir().join(format!("relay-sibling-a-{}", std::process::id()));
    let dir_b = std::env::temp_dir().join(format!("relay-sibling-b-{}", std::process::id()));
    for dir in [&dir_a, &dir_b] {
        let _ = std::fs::remove_dir_all(dir);
    }
    // Each lists the other as its sibling: forwarded requests must not bounce back.
    let free_port =
        || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let (internal_a, internal_b) = (free_port(), free_port());
    let mut config_b = config(&dir_b, sim.plc_url());
    config_b.internal_bind = format!("127.0.0.1:{internal_b}");
    config_b.sibling_relays = vec![format!("http://127.0.0.1:{internal_a}")];
    let b = start_relay(config_b).await;
    let mut config_a = config(&dir_a, sim.plc_url());
    config_a.internal_bind = format!("127.0.0.1:{internal_a}");
    config_a.sibling_relays = vec![format!("http://127.0.0.1:{internal_b}")];
    let a = start_relay(config_a).await;
    let client = reqwest::Client::new();
    let host0 = format!("http://{}", sim.hosts[0].hostname());
    let response = client
        .post(format!("http://{}/admin/pds/requestCrawl", a.internal))
        .bearer_auth("test-token")
        .json(&serde_json::json!({ "hostname": host0 }))
        .send()
        .await
        .expect("requestCrawl");
    assert!(response.status().is_success());
    let hostname = sim.hosts[0].hostname();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let hosts = get_json(&client, format!("http://{}/xrpc/com.atproto.sync.listHosts", b.public)).await;
        if hosts["hosts"].as_array().is_some_and(|h| h.iter().any(|x| x["hostname"] == hostname)) {
            break;
        }
        assert!(Instant::now() < until, "the sibling did not get the host: {hosts}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A ban on A reaches B; a request without the token is refused on A and not forwarded.
    let refused =
        client.post(format!("http://{}/admin/pds/block?host={hostname}", a.internal)).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let banned = client
        .post(format!("http://{}/admin/pds/block?host={hostname}", a.internal))
        .bearer_auth("test-token")
        .send()
        .await
        .unwrap();
    assert!(banned.status().is_success());
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get_json(
            &client,
            format!("http://{}/xrpc/com.atproto.sync.getHostStatus?hostname={hostname}", b.public),
        )
        .await;
        if status["status"] == "banned" {
            break;
        }
        assert!(Instant::now() < until, "the ban did not reach the sibling: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let forwarded = |running: &common::Running| {
        running
            .relay
            .metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("relay_sibling_forwards_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // A counts a forward when the sibling's response arrives, which can be just after B
    // already shows the ban.
    let until = Instant::now() + Duration::from_secs(10);
    while forwarded(&a) < 2.0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(forwarded(&a), 2.0, "A forwarded requestCrawl and block");
    assert_eq!(forwarded(&b), 0.0, "B forwards nothing that came from a relay");
    stop_relay(a).await;
    stop_relay(b).await;
    for dir in [&dir_a, &dir_b] {
        let _ = std::fs::remove_dir_all(dir);
    }
}
