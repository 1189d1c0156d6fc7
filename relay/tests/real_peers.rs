//! Conformance with real ATProto peers: the TypeScript reference PDS and PLC
//! (`@atproto/dev-env`) feed the relay, and the reference validating client
//! (`@atproto/sync`'s `Firehose`, which checks every commit's signature and MST
//! proof) reads the relay's firehose. The events the client accepts from the relay
//! must be exactly those it accepts from the PDS itself, with no validation error.
//!
//! Needs the npm packages of `tests/peers/package.json` installed (scripts/test.sh
//! runs `npm ci` into the cache and sets `RELAY_PEERS_NODE_MODULES`). Without them
//! the test is skipped, except under CI where that is an error.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

fn node_modules() -> Option<PathBuf> {
    match std::env::var_os("RELAY_PEERS_NODE_MODULES") {
        Some(dir) => Some(PathBuf::from(dir)),
        None if std::env::var_os("CI").is_some() => panic!("RELAY_PEERS_NODE_MODULES must be set in CI"),
        None => {
            eprintln!("RELAY_PEERS_NODE_MODULES not set: skipping the real-peer conformance test");
            None
        }
    }
}

fn peers_dir() -> PathBuf {
    manifest_dir().join("tests/peers")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn node(script: &str, modules: &Path, scratch: &Path) -> Command {
    let mut command = Command::new("node");
    command
        .arg(peers_dir().join(script))
        .env("NODE_PATH", modules)
        // dev-env keeps its PDS databases under the temp dir.
        .env("TMPDIR", scratch)
        .kill_on_drop(true);
    command
}

struct Network {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    plc: String,
    pds_port: u16,
}

impl Network {
    async fn start(modules: &Path, scratch: &Path) -> Network {
        let (plc_port, pds_port) = (free_port(), free_port());
        let mut child = node("network.cjs", modules, scratch)
            .env("PLC_PORT", plc_port.to_string())
            .env("PDS_PORT", pds_port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs (is Node.js installed?)");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = next_json(&mut lines, Duration::from_secs(90)).await;
        assert_eq!(ready["ready"], true, "network did not start: {ready}");
        let plc = ready["plc"].as_str().expect("plc url").to_string();
        Network { child, stdin, lines, plc, pds_port }
    }

    async fn run_scenario(&mut self) -> Value {
        self.stdin.write_all(b"scenario\n").await.expect("write to network");
        let done = next_json(&mut self.lines, Duration::from_secs(120)).await;
        assert_eq!(done["scenario"], "done", "scenario failed: {done}");
        done
    }

    async fn stop(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

async fn next_json(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    timeout: Duration,
) -> Value {
    let line = tokio::time::timeout(timeout, lines.next_line())
        .await
        .expect("timed out waiting for the network")
        .expect("read from network")
        .expect("network exited");
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON from the network: {line}"))
}

/// Runs the validating client against `service` until it goes idle; returns its
/// accepted events (without seq, which differs between PDS and relay) and summary.
async fn validate(service: &str, plc: &str, modules: &Path, scratch: &Path) -> (Vec<String>, Value) {
    let output = node("validate.cjs", modules, scratch)
        .env("SERVICE", service)
        .env("PLC_URL", plc)
        .env("IDLE_MS", "4000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("validator finished")
        .expect("run");
    let mut events = Vec::new();
    let mut summary = Value::Null;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(mut value) = serde_json::from_str::<Value>(line) else { continue };
        if value.get("summary").is_some() {
            summary = value;
        } else if let Some(error) = value.get("error") {
            panic!("{service}: the reference client rejected an event: {error} ({})", value["cause"]);
        } else if let Some(map) = value.as_object_mut() {
            map.remove("seq");
            events.push(value.to_string());
        }
    }
    assert!(output.status.success(), "{service}: validator exited with {}: {summary}", output.status);
    (events, summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_client_accepts_everything_the_relay_relays_from_a_real_pds() {
    let Some(modules) = node_modules() else { return };
    let scratch = std::env::temp_dir().join(format!("relay-peers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch dir");

    let mut network = Network::start(&modules, &scratch).await;
    let mut config = common::relay_config(&scratch.join("relay"), network.plc.clone());
    config.admin_tokens = vec!["test-token".into()];
    let running = common::start_relay(config).await;

    // The PDS names itself localhost:PORT in DID documents, so that is the host to crawl.
    let pds_host = format!("localhost:{}", network.pds_port);
    let response = reqwest::Client::new()
        .post(format!("http://{}/admin/pds/requestCrawl", running.internal))
        .bearer_auth("test-token")
        .json(&serde_json::json!({ "hostname": format!("http://{pds_host}") }))
        .send()
        .await
        .expect("requestCrawl");
    assert!(response.status().is_success(), "requestCrawl: {}", response.text().await.unwrap_or_default());

    let scenario = network.run_scenario().await;
    let dids = scenario["dids"].as_array().expect("dids").len();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let pds_firehose = format!("ws://{pds_host}");
    let relay_firehose = format!("ws://{}", running.public);
    let (from_pds, pds_summary) = validate(&pds_firehose, &network.plc, &modules, &scratch).await;
    let (from_relay, relay_summary) = validate(&relay_firehose, &network.plc, &modules, &scratch).await;

    eprintln!("PDS:   {pds_summary}\nrelay: {relay_summary}");
    // Frame by frame (the client hides some events, e.g. a new repo's empty first commit).
    let raw_pds_all = raw_events(&pds_firehose).await;
    let raw_pds = without_stale_syncs(&raw_pds_all);
    assert!(
        raw_pds.len() < raw_pds_all.len(),
        "the scenario should include a #sync that repeats the current rev"
    );
    let raw_relay = raw_events(&relay_firehose).await;
    assert_eq!(by_repo(&raw_relay), by_repo(&raw_pds), "the relay's frames differ from the PDS's own");
    assert_eq!(pds_summary["errors"], 0);
    assert_eq!(relay_summary["errors"], 0);
    // Every kind of event the scenario produces reached the client through the relay.
    // (Its #sync events all repeat a rev the relay already relayed, so none is passed on.)
    for kind in ["create", "update", "delete", "identity", "account"] {
        assert!(relay_summary["counts"][kind].as_u64().unwrap_or(0) > 0, "no {kind} event through the relay");
    }
    assert_eq!(dids, 3);
    // The client's view: what it accepts from the relay is what it accepts from the PDS,
    // less the stale #sync events the frame comparison identified.
    let relayed_syncs: Vec<(String, String)> = raw_pds
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["valid"] == "sync")
        .map(|event| (event["did"].to_string(), event["rev"].to_string()))
        .collect();
    let expected: Vec<String> = from_pds
        .iter()
        .filter(|line| {
            let event: Value = serde_json::from_str(line).expect("event JSON");
            event["valid"] != "sync"
                || relayed_syncs.contains(&(event["did"].to_string(), event["rev"].to_string()))
        })
        .cloned()
        .collect();
    assert_eq!(
        by_repo(&from_relay),
        by_repo(&expected),
        "the relay's validated events differ from the PDS's own"
    );

    common::stop_relay(running).await;
    network.stop().await;
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Every frame of a firehose from cursor 0, as JSON lines without `seq`, until it is
/// idle for two seconds.
async fn raw_events(service: &str) -> Vec<String> {
    use futures_util::StreamExt;
    use relay::atproto::frame::{self, Event};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("{service}/xrpc/com.atproto.sync.subscribeRepos?cursor=0");
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.expect("firehose connects");
    let mut events = Vec::new();
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(2), socket.next()).await {
        let Message::Binary(bytes) = message else { continue };
        let line = match frame::decode(&bytes).expect("frames decode") {
            Event::Commit(c) => {
                serde_json::json!({"valid": "commit", "did": c.repo, "rev": c.rev, "ops": c.ops.len()})
            }
            Event::Sync(s) => serde_json::json!({"valid": "sync", "did": s.did, "rev": s.rev}),
            Event::Identity(i) => serde_json::json!({"valid": "identity", "did": i.did}),
            Event::Account(a) => serde_json::json!({"valid": "account", "did": a.did, "active": a.active}),
            other => serde_json::json!({"valid": other.type_name()}),
        };
        events.push(line.to_string());
    }
    events
}

/// Events grouped by repo, in order: a relay keeps each repo's order, not the
/// interleaving between repos (it validates repos in parallel).
fn by_repo(events: &[String]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut repos: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for line in events {
        let event: Value = serde_json::from_str(line).expect("event JSON");
        repos.entry(event["did"].as_str().unwrap_or_default().to_string()).or_default().push(line.clone());
    }
    repos
}

/// The PDS's events as a relay must pass them on: a `#sync` whose rev is not newer
/// than the repo's last relayed rev is ignored (Sync 1.1; the PDS emits one on
/// reactivation, repeating its current commit).
fn without_stale_syncs(events: &[String]) -> Vec<String> {
    let mut last_rev: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut kept = Vec::new();
    for line in events {
        let event: Value = serde_json::from_str(line).expect("event JSON");
        let did = event["did"].as_str().unwrap_or_default().to_string();
        if let Some(rev) = event["rev"].as_str() {
            let stale = last_rev.get(&did).is_some_and(|last| rev <= last.as_str());
            if event["valid"] == "sync" && stale {
                continue;
            }
            if !stale {
                last_rev.insert(did, rev.to_string());
            }
        }
        kept.push(line.clone());
    }
    kept
}

/// The package directory: cargo sets it at run time too, which stays right when a
/// cached test binary was built from another checkout of the same sources.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
