//! indigo's seven relay scenarios (tests/vectors/indigo, MIT/Apache-2.0) replayed through
//! the real daemon: a scripted PDS sends each scenario's frames over a WebSocket, the
//! relay (in process, real sockets and storage) validates and re-sequences them, and a
//! consumer checks that exactly the frames marked to pass come out, in order, unchanged
//! apart from `seq` (and `time`, which relays may rewrite).

mod common;

use futures_util::StreamExt;
use relay::atproto::crypto::PublicKey;
use relay::atproto::frame::{self, Event};
use relay::config::ServeConfig;
use relay::simulate::{SimulateConfig, Simulation};
use relay::validate::scenario::{self, Scenario};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn scenario_file(name: &str) -> Scenario {
    let path = manifest_dir().join(format!("tests/vectors/indigo/cmd/relay/testing/testdata/{name}.json"));
    Scenario::parse(&std::fs::read(path).expect("scenario file")).expect("scenario parses")
}

fn without_seq_and_time(mut event: Event) -> Event {
    event.set_seq(0);
    match &mut event {
        Event::Commit(c) => c.time.clear(),
        Event::Sync(s) => s.time.clear(),
        Event::Identity(i) => i.time.clear(),
        Event::Account(a) => a.time.clear(),
        _ => {}
    }
    event
}

async fn run(name: &str) {
    let scenario = scenario_file(name);
    let sim = Simulation::start(SimulateConfig {
        hosts: 1,
        accounts_per_host: 0,
        rate: 1.0,
        max_commits: 0,
        bind: "127.0.0.1".into(),
        relay_admin_url: None,
        relay_admin_token: None,
        hostile: vec![],
        seed: 1,
        backlog_on_connect: false,
        history_events: 0,
        advertise_name: None,
    })
    .await
    .expect("simulator");
    let host = sim.hosts[0].clone();
    // The scenario's accounts, re-homed on the scripted host so host authority holds.
    for account in &scenario.accounts {
        let id = &account.identity;
        let key = id.keys["atproto"]["publicKeyMultibase"].as_str().expect("key");
        let key = PublicKey::from_multikey(key).expect("multikey");
        let handle = id.handle.clone().unwrap_or_else(|| "handle.invalid".into());
        let doc = relay::identity::doc::build_document(
            &id.did,
            &handle,
            &key,
            &format!("http://{}", host.hostname()),
        );
        sim.plc.set_document(&id.did, doc);
    }
    let dir = std::env::temp_dir().join(format!("relay-scenario-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config: ServeConfig = common::relay_config(&dir, sim.plc_url());
    config.admin_tokens = vec!["t".into()];
    // Lenient scenarios make the scripted host lenient (RELAY_LENIENT_HOSTS); the rest of
    // the relay stays strict.
    if scenario.lenient {
        config.lenient_hosts = vec![host.hostname()];
    }
    let running = common::start_relay(config).await;
    let (relay, public_addr, internal_addr) = (running.relay.clone(), running.public, running.internal);
    sim.register_with_relay(&format!("http://{internal_addr}"), "t").await.expect("crawl");
    let until = Instant::now() + Duration::from_secs(10);
    while relay.hosts.connected() < 1 {
        assert!(Instant::now() < until, "relay connects to the scripted host");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut expected = Vec::new();
    for message in &scenario.messages {
        let event = scenario::decode_message(message).expect("scenario frames decode");
        let seq = event.seq().expect("scenario events carry a seq");
        host.emit_raw(seq, frame::encode(&event).expect("encode"));
        if message.drop == Some(false) {
            expected.push(without_seq_and_time(event));
        }
    }
    // Read the relay's output until it is quiet.
    let url = format!("ws://{public_addr}/xrpc/com.atproto.sync.subscribeRepos?cursor=0");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("consumer");
    let mut output = Vec::new();
    let quiet_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < quiet_until && output.len() < expected.len() + 1 {
        match tokio::time::timeout(Duration::from_millis(1500), socket.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => {
                output.push(frame::decode(&bytes).expect("relay frames decode"))
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    let output: Vec<Event> = output.into_iter().map(without_seq_and_time).collect();
    assert_eq!(
        output.len(),
        expected.len(),
        "{name}: relayed {} events, expected {}",
        output.len(),
        expected.len()
    );
    for (index, (got, want)) in output.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "{name}: event {index} differs");
    }
    common::stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_lifecycle() {
    run("account_lifecycle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation() {
    run("deactivation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy() {
    run("legacy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_lifecycle() {
    run("post_lifecycle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_lifecycle_legacy() {
    run("post_lifecycle_legacy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_ordering() {
    run("rev_ordering").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_ordering() {
    run("seq_ordering").await;
}

/// The package directory: cargo sets it at run time too, which stays right when a
/// cached test binary was built from another checkout of the same sources.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
