//! `relay coverage` end to end on loopback: several relays of this project (in process) see
//! different subsets of one simulated PDS fleet, and each mode's figures are checked against
//! what the fleet really holds or emitted; plus the relay's own coverage self-check flipping
//! `/_ready` when its hosts are cut, and back.

mod common;

use common::eventually;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use common::{start_relay, stop_relay, Running};
use futures_util::StreamExt;
use relay::atproto::frame::{self, Event};
use relay::atproto::repo::{sample_post, Write};
use relay::coverage::report::{NsidResult, Report};
use relay::coverage::{CoverageArgs, Format, Progress};
use relay::simulate::upstream::{self, SimUpstream, SyntheticCollection};
use relay::simulate::{SimHost, SimulateConfig, Simulation};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "test-token";

fn sim_config(hosts: usize, accounts: usize, rate: f64) -> SimulateConfig {
    SimulateConfig { rate, seed: 13, ..SimulateConfig::loopback(hosts, accounts) }
}

fn config(dir: &std::path::Path, plc: String) -> relay::config::ServeConfig {
    let mut config = common::relay_config(dir, plc);
    config.admin_tokens = vec![TOKEN.into()];
    config.log_fsync = false;
    config
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-coverage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Asks a relay to crawl exactly these hosts.
async fn register(running: &Running, hosts: &[Arc<SimHost>]) {
    let client = reqwest::Client::new();
    for host in hosts {
        let response = client
            .post(format!("http://{}/admin/pds/requestCrawl", running.internal))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "hostname": format!("http://{}", host.hostname()) }))
            .send()
            .await
            .expect("requestCrawl");
        assert!(response.status().is_success(), "requestCrawl {}: {}", host.hostname(), response.status());
    }
}

async fn wait_connected(running: &Running, hosts: usize) {
    let relay = running.relay.clone();
    eventually("hosts connected", Duration::from_secs(20), || {
        let relay = relay.clone();
        async move {
            let connected = relay.hosts.connected();
            if connected >= hosts {
                Ok(())
            } else {
                Err(format!("{connected} connected"))
            }
        }
    })
    .await;
}

/// Waits until a relay has sequenced at least `events` events.
async fn wait_sequenced(running: &Running, events: u64) {
    let relay = running.relay.clone();
    eventually("events sequenced", Duration::from_secs(60), || {
        let sequenced = relay.metrics.events_out.get();
        async move {
            if sequenced >= events {
                Ok(())
            } else {
                Err(format!("{sequenced} of {events}"))
            }
        }
    })
    .await;
}

/// Runs `relay coverage ARGS...` in process; checks that the JSON form round-trips and that
/// markdown renders, and prints the markdown (and with COVERAGE_PRINT_JSON set, the JSON:
/// the samples in docs/coverage.md come from here).
async fn coverage(args: &[&str]) -> Report {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: CoverageArgs,
    }
    let cli =
        Cli::try_parse_from(std::iter::once("coverage").chain(args.iter().copied())).expect("arguments");
    let report = relay::coverage::run(&cli.args, Progress::quiet()).await.expect("the run completes");
    let json = relay::coverage::render(&report, Format::Json);
    let back: Report = serde_json::from_str(&json).expect("the JSON report parses");
    assert_eq!(back, report, "the JSON report round-trips");
    println!("{}", relay::coverage::render(&report, Format::Markdown));
    if std::env::var_os("COVERAGE_PRINT_JSON").is_some() {
        println!("{json}");
    }
    report
}

/// (did, rev, arrival µs) of every commit a host emits, read from its own firehose.
type Emitted = Arc<Mutex<Vec<(String, String, u64)>>>;

async fn record_emitted(hosts: &[Arc<SimHost>]) -> (Emitted, Vec<tokio::task::JoinHandle<()>>) {
    let emitted: Emitted = Arc::default();
    let mut tasks = Vec::new();
    for host in hosts {
        let url = format!("ws://{}/xrpc/com.atproto.sync.subscribeRepos", host.addr);
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("subscribe to a host");
        let sink = emitted.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Binary(bytes) = message {
                    if let Ok(Event::Commit(commit)) = frame::decode(&bytes) {
                        let now = relay::validate::verdict::now_micros();
                        sink.lock().expect("lock").push((commit.repo, commit.rev, now));
                    }
                }
            }
        }));
    }
    (emitted, tasks)
}

/// A fake relay that replays a recorded stream in a loop, much faster than it happened.
async fn replaying_relay(frames: Vec<Vec<u8>>) -> SocketAddr {
    use axum::routing::get;
    let frames = Arc::new(frames);
    let app = axum::Router::new().route(
        "/xrpc/com.atproto.sync.subscribeRepos",
        get(move |upgrade: WebSocketUpgrade| {
            let frames = frames.clone();
            async move { upgrade.on_upgrade(move |socket| replay(socket, frames)) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn replay(mut socket: WebSocket, frames: Arc<Vec<Vec<u8>>>) {
    /// 4 frames every 2 ms: about 2,000 frames a second, fifty times the fleet's rate.
    const FRAMES_PER_TICK: usize = 4;
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    let mut next = frames.iter().cycle();
    loop {
        ticker.tick().await;
        for frame in next.by_ref().take(FRAMES_PER_TICK) {
            if socket.send(WsMessage::Binary(frame.clone().into())).await.is_err() {
                return;
            }
        }
    }
}

/// Frames from a relay's firehose for `duration`.
async fn record_firehose(running: &Running, duration: Duration) -> Vec<Vec<u8>> {
    let url = format!("ws://{}/xrpc/com.atproto.sync.subscribeRepos", running.public);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("subscribe");
    let mut frames = Vec::new();
    let until = tokio::time::Instant::now() + duration;
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, socket.next()).await {
        if let Message::Binary(bytes) = message {
            frames.push(bytes.to_vec());
        }
    }
    frames
}

/// Relays A, B and C see all ten, eight and five of ten hosts; R replays a recording of A.
/// Each real relay's coverage must be within ±2 % of the share of the emitted commits (as
/// read from the hosts themselves over the report's window) that came from its hosts, and R
/// must be flagged and left out of the union.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firehose_mode_measures_each_relays_share_and_flags_a_replaying_relay() {
    let (hosts, accounts) = (10, 2);
    let sim = Simulation::start(sim_config(hosts, accounts, 40.0)).await.expect("simulation");
    let subsets = [10, 8, 5];
    let mut relays = Vec::new();
    for (i, seen) in subsets.iter().enumerate() {
        let running = start_relay(config(&tempdir(&format!("firehose-{i}")), sim.plc_url())).await;
        register(&running, &sim.hosts[..*seen]).await;
        wait_connected(&running, *seen).await;
        relays.push(running);
    }
    let (emitted, listeners) = record_emitted(&sim.hosts).await;
    sim.create_accounts();
    for (running, seen) in relays.iter().zip(subsets) {
        wait_sequenced(running, (seen * accounts * 3) as u64).await;
    }
    let generator = tokio::spawn(sim.clone().run());
    let recording = record_firehose(&relays[0], Duration::from_secs(2)).await;
    assert!(recording.len() > 20, "recorded {} frames", recording.len());
    let replayer = replaying_relay(recording).await;

    let urls: Vec<String> = relays.iter().map(|r| format!("ws://{}", r.public)).collect();
    let replayer_url = format!("ws://{replayer}");
    let report = coverage(&[
        "--format",
        "json",
        "firehose",
        "--relay",
        &urls[0],
        "--relay",
        &urls[1],
        "--relay",
        &urls[2],
        "--relay",
        &replayer_url,
        "--warmup",
        "2s",
        "--window",
        "8s",
        "--grace",
        "2s",
    ])
    .await;
    generator.abort();
    listeners.iter().for_each(|l| l.abort());

    let firehose = report.firehose.as_ref().expect("a firehose report");
    let (start, end) = (firehose.window_start_unix_micros, firehose.window_end_unix_micros);
    let host_of: HashMap<String, usize> =
        sim.hosts.iter().enumerate().flat_map(|(i, h)| h.dids().into_iter().map(move |d| (d, i))).collect();
    let in_window: Vec<(String, String, u64)> = emitted
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, _, at)| (start..end).contains(at))
        .cloned()
        .collect();
    assert!(in_window.len() > 200, "{} commits emitted in the window", in_window.len());
    let union = firehose.union_commits as f64;
    assert!(
        (union / in_window.len() as f64 - 1.0).abs() <= 0.02,
        "union {union} vs {} commits emitted in the window",
        in_window.len()
    );
    for (row, seen) in firehose.relays.iter().zip(subsets) {
        let mine = in_window.iter().filter(|(did, _, _)| host_of[did] < seen).count();
        let truth = mine as f64 / in_window.len() as f64;
        let measured = row.coverage.expect("a coverage figure");
        assert!((measured - truth).abs() <= 0.02, "{}: coverage {measured:.4}, truly {truth:.4}", row.relay);
        assert_eq!(row.status, "ok");
        assert!(!row.replaying, "{} flagged: {:?}", row.relay, row.flags);
        assert_eq!(
            row.unique_dids,
            (seen * accounts) as u64,
            "{}: every account of its hosts posted",
            row.relay
        );
        assert_eq!(row.events.get("#commit").copied(), Some(row.unique_commits));
    }
    let replaying = &firehose.relays[3];
    assert!(replaying.replaying, "the replaying relay is flagged: {replaying:?}");
    assert!(replaying.flags.iter().any(|f| f.contains("median")), "{:?}", replaying.flags);
    assert!(replaying.seq_regressions > 0);
    assert_eq!(report.reference, urls[0]);
    for running in relays {
        stop_relay(running).await;
    }
}

fn create(path: &str) -> Write {
    Write::Create { path: path.to_string(), record: sample_post(path, "2026-11-26T00:00:00.000Z") }
}

/// Every DID a relay lists for a collection.
async fn listed(running: &Running, collection: &str) -> Vec<String> {
    let url = format!(
        "http://{}/xrpc/com.atproto.sync.listReposByCollection?collection={collection}&limit=1000",
        running.public
    );
    let page: serde_json::Value = reqwest::get(url).await.expect("GET").json().await.expect("JSON");
    page["repos"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["did"].as_str())
        .map(String::from)
        .collect()
}

/// A proxy in front of a relay that answers every `every`-th request with 429 +
/// `Retry-After: 1`, and serves an NSID list at `/nsids.txt`.
async fn throttling_proxy(target: SocketAddr, every: u64, nsids: String) -> (SocketAddr, Arc<AtomicU64>) {
    use axum::extract::{OriginalUri, State};
    use axum::response::IntoResponse;
    use axum::routing::get;
    struct Proxy {
        target: SocketAddr,
        every: u64,
        seen: AtomicU64,
        refused: Arc<AtomicU64>,
        client: reqwest::Client,
    }
    async fn forward(
        State(proxy): State<Arc<Proxy>>,
        OriginalUri(uri): OriginalUri,
    ) -> axum::response::Response {
        let n = proxy.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n % proxy.every == 0 {
            proxy.refused.fetch_add(1, Ordering::SeqCst);
            let headers = [(axum::http::header::RETRY_AFTER, "1")];
            return (axum::http::StatusCode::TOO_MANY_REQUESTS, headers, "{\"error\":\"RateLimitExceeded\"}")
                .into_response();
        }
        let response =
            proxy.client.get(format!("http://{}{uri}", proxy.target)).send().await.expect("forward");
        let status = axum::http::StatusCode::from_u16(response.status().as_u16()).expect("status");
        (status, response.bytes().await.expect("body")).into_response()
    }
    let refused = Arc::new(AtomicU64::new(0));
    let proxy = Arc::new(Proxy {
        target,
        every,
        seen: AtomicU64::new(0),
        refused: refused.clone(),
        client: reqwest::Client::new(),
    });
    let app = axum::Router::new()
        .route("/nsids.txt", get(move || async move { nsids }))
        .route("/xrpc/{method}", get(forward))
        .with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, refused)
}

fn result<'a>(report: &'a Report, nsid: &str) -> &'a NsidResult {
    let collections = report.collections.as_ref().expect("a collections report");
    collections.results.iter().find(|r| r.nsid == nsid).unwrap_or_else(|| panic!("no result for {nsid}"))
}

fn counts(result: &NsidResult) -> Vec<Option<u64>> {
    result.counts.iter().map(|c| c.dids).collect()
}

/// Relay A sees four hosts, relay B (behind a proxy answering 429 to every third request)
/// two of them, and the synthetic upstream directory (429 to every fourth request) holds
/// 2,500 DIDs the relays do not: the report must give exact counts, leaders, zero relays and
/// the exact missing DIDs, and count every 429 it honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_mode_reports_exact_counts_and_missing_dids_under_429s() {
    let (hosts, accounts) = (4, 3);
    let sim = Simulation::start(sim_config(hosts, accounts, 1.0)).await.expect("simulation");
    let a = start_relay(config(&tempdir("collections-a"), sim.plc_url())).await;
    let b = start_relay(config(&tempdir("collections-b"), sim.plc_url())).await;
    register(&a, &sim.hosts).await;
    register(&b, &sim.hosts[..2]).await;
    wait_connected(&a, hosts).await;
    wait_connected(&b, 2).await;
    sim.create_accounts();
    for h in 0..hosts {
        for n in 0..accounts {
            sim.write(h, n, &[create(&format!("com.example.a/{h}{n}"))]).expect("write");
        }
    }
    sim.write(0, 0, &[create("com.example.b/1")]).expect("write");
    sim.write(0, 1, &[create("com.example.b/2")]).expect("write");
    sim.write(3, 0, &[create("com.example.c/1")]).expect("write");
    let dids = |range: std::ops::Range<usize>| -> BTreeSet<String> {
        range.flat_map(|h| sim.hosts[h].dids()).collect()
    };
    let (all_a, some_a) = (dids(0..4), dids(0..2));
    eventually("both relays indexed the writes", Duration::from_secs(30), || async {
        let (in_a, in_b) = (listed(&a, "com.example.a").await.len(), listed(&b, "com.example.a").await.len());
        let (c, b_in_a) = (listed(&a, "com.example.c").await.len(), listed(&a, "com.example.b").await.len());
        match (in_a, in_b, c, b_in_a) {
            (12, 6, 1, 2) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let synthetic = SyntheticCollection { nsid: "com.example.syn".into(), count: 2500, stride: 1 };
    let directory = SimUpstream::start("127.0.0.1", vec![synthetic], 4).await.expect("upstream");
    let list = "# lexicons\n- [com.example.a](https://lexicon.example/com.example.a): everyone\n\
                - `com.example.b` two\ncom.example.c\ncom.example.syn\ncom.example.none\n";
    let (proxy, refused) = throttling_proxy(b.public, 3, list.into()).await;

    let (url_a, url_b) = (format!("http://{}", a.public), format!("http://{proxy}"));
    let nsids = format!("http://{proxy}/nsids.txt");
    let upstream_url = directory.url();
    let report = coverage(&[
        "collections",
        "--relay",
        &url_a,
        "--relay",
        &url_b,
        "--relay",
        &upstream_url,
        "--nsids",
        &nsids,
        "--missing-sample",
        "5",
    ])
    .await;
    let collections = report.collections.as_ref().expect("collections");
    assert_eq!(collections.nsids, 5);
    assert_eq!(collections.page_limit, 1000);
    let everyone = result(&report, "com.example.a");
    assert_eq!(counts(everyone), [Some(12), Some(6), Some(0)]);
    assert_eq!(everyone.leader.as_deref(), Some(url_a.as_str()));
    assert_eq!(everyone.zero, std::slice::from_ref(&upstream_url));
    let b_lacks: Vec<String> = all_a.difference(&some_a).cloned().collect();
    let missing: BTreeMap<(&str, &str), (u64, &Vec<String>)> = everyone
        .missing
        .iter()
        .map(|m| ((m.relay.as_str(), m.listed_by.as_str()), (m.count, &m.sample)))
        .collect();
    assert_eq!(missing.len(), 3, "{missing:?}");
    assert_eq!(missing[&(url_b.as_str(), url_a.as_str())], (6, &b_lacks[..5].to_vec()));
    assert_eq!(missing[&(upstream_url.as_str(), url_a.as_str())].0, 12);
    assert_eq!(missing[&(upstream_url.as_str(), url_b.as_str())].0, 6);
    let two = result(&report, "com.example.b");
    assert_eq!(counts(two), [Some(2), Some(2), Some(0)]);
    assert_eq!(two.missing.len(), 2, "only the upstream lacks them");
    let one = result(&report, "com.example.c");
    assert_eq!(counts(one), [Some(1), Some(0), Some(0)]);
    assert_eq!(one.zero, [url_b.clone(), upstream_url.clone()]);
    let syn = result(&report, "com.example.syn");
    assert_eq!(counts(syn), [Some(0), Some(0), Some(2500)]);
    assert_eq!(syn.leader.as_deref(), Some(upstream_url.as_str()));
    let first_synthetic: Vec<String> = (0..5).map(upstream::synthetic_did).collect();
    for lacking in [&url_a, &url_b] {
        let m = syn.missing.iter().find(|m| &m.relay == lacking).expect("relays lack the synthetic DIDs");
        assert_eq!((m.count, &m.sample), (2500, &first_synthetic));
    }
    let none = result(&report, "com.example.none");
    assert_eq!((counts(none), none.leader.clone()), (vec![Some(0); 3], None));
    let summary = &collections.relays;
    assert!(refused.load(Ordering::SeqCst) > 0 && directory.refused.load(Ordering::SeqCst) > 0);
    assert_eq!(summary[1].throttled, refused.load(Ordering::SeqCst), "every 429 of the proxy was seen");
    assert_eq!(summary[2].throttled, directory.refused.load(Ordering::SeqCst));
    assert_eq!((summary[0].nsids_led, summary[2].nsids_led), (3, 1));
    assert_eq!(summary.iter().map(|s| s.nsids_failed).sum::<u64>(), 0);

    // `relays:first`: every NSID relay A's index knows, through its admin route.
    let admin = format!("http://{}", a.internal);
    let report = coverage(&[
        "--format",
        "json",
        "collections",
        "--relay",
        &url_a,
        "--relay",
        &format!("http://{}", b.public),
        "--nsids",
        "relays:first",
        "--admin-url",
        &admin,
        "--admin-token",
        TOKEN,
    ])
    .await;
    let known: BTreeSet<&str> =
        report.collections.as_ref().expect("collections").results.iter().map(|r| r.nsid.as_str()).collect();
    let expected: BTreeSet<&str> = ["com.example.a", "com.example.b", "com.example.c"].into();
    assert!(expected.is_subset(&known), "{known:?}");

    // The binary: exit status 0 and a markdown report on stdout for a completed run.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["coverage", "collections", "--relay", &url_a, "--nsids", "com.example.a"])
        .output()
        .await
        .expect("run the binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.starts_with("# Relay coverage: collections, "), "{stdout}");
    assert!(stdout.contains("| `com.example.a` | **12** |"), "{stdout}");

    // The summary the operator's CronJob hands back: integers per relay, within 4 KiB.
    let summary_path = tempdir("collections-summary").join("summary.json");
    let url_b = format!("http://{}", b.public);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["coverage", "--summary-file"])
        .arg(&summary_path)
        .args(["collections", "--relay", &url_a, "--relay", &url_b, "--nsids", "com.example.a,com.example.b"])
        .output()
        .await
        .expect("run the binary");
    assert!(output.status.success(), "{output:?}");
    let text = std::fs::read_to_string(&summary_path).expect("summary written");
    assert!(text.len() <= relay::coverage::summary::MAX_SUMMARY_BYTES);
    let summary: relay::coverage::summary::Summary = serde_json::from_str(&text).expect("summary JSON");
    assert_eq!((summary.mode.as_str(), summary.error.as_deref()), ("collections", None), "{text}");
    let counts: Vec<(u64, u64, u64)> = summary
        .relays
        .iter()
        .map(|r| {
            (
                r.collections_complete.unwrap_or(9),
                r.collections_behind.unwrap_or(9),
                r.collections_zero.unwrap_or(9),
            )
        })
        .collect();
    assert_eq!(counts.len(), 2, "{text}");
    assert_eq!(counts[0].0 + counts[0].1 + counts[0].2, 2, "each NSID counted once for a: {text}");
    stop_relay(a).await;
    stop_relay(b).await;
}

async fn admin_post(running: &Running, path: &str, body: serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}{path}", running.internal))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("admin request");
    assert!(response.status().is_success(), "{path}: {}", response.status());
}

/// A relay that missed a commit of one account (the PDS applied it without announcing it)
/// is reported behind for exactly that account, and a local takedown as a status mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correctness_mode_finds_a_relay_behind_its_pds() {
    let accounts = 4;
    let sim = Simulation::start(sim_config(1, accounts, 1.0)).await.expect("simulation");
    let running = start_relay(config(&tempdir("correctness"), sim.plc_url())).await;
    register(&running, &sim.hosts).await;
    wait_connected(&running, 1).await;
    sim.create_accounts();
    for n in 0..accounts {
        sim.write(0, n, &[create(&format!("app.bsky.feed.post/3l3qo2vutsw2{n}"))]).expect("write");
    }
    wait_sequenced(&running, (accounts * 4) as u64).await;
    let dids = sim.hosts[0].dids();
    let relay_url = format!("http://{}", running.public);
    let client = reqwest::Client::new();
    eventually("the relay's state is stored", Duration::from_secs(20), || async {
        let url = format!("{relay_url}/xrpc/com.atproto.sync.listRepos");
        let page: serde_json::Value = client.get(&url).send().await.expect("GET").json().await.expect("JSON");
        let with_cid =
            page["repos"].as_array().map_or(0, |r| r.iter().filter(|r| r["head"].is_string()).count());
        if with_cid == accounts {
            Ok(())
        } else {
            Err(format!("{with_cid} repos with a head"))
        }
    })
    .await;
    sim.write_unannounced(0, 0, &[create("app.bsky.feed.post/3l3qo2vutsw3a")]).expect("lost write");

    let plc = sim.plc_url();
    let report = coverage(&[
        "--format",
        "json",
        "correctness",
        "--relay",
        &relay_url,
        "--sample",
        "10",
        "--seed",
        "1",
        "--plc-url",
        &plc,
        "--allow-loopback-pds",
        "--recheck-after",
        "500ms",
    ])
    .await;
    let correctness = report.correctness.as_ref().expect("correctness");
    let row = &correctness.relays[0];
    assert_eq!(
        (row.sampled, row.correct, row.behind, row.wrong, row.unverifiable),
        (accounts as u64, 3, 1, 0, 0),
        "{row:?}"
    );
    assert_eq!(row.behind_share, Some(0.25));
    let behind = &row.details[0];
    assert_eq!((behind.did.as_str(), behind.verdict.as_str()), (dids[0].as_str(), "behind"));
    assert!(behind.relay_rev < behind.pds_rev, "{behind:?}");
    assert!(behind.behind_seconds.is_some_and(|s| s >= 0.0));

    admin_post(&running, "/admin/repo/takeDown", serde_json::json!({ "did": dids[3] })).await;
    let report = coverage(&[
        "correctness",
        "--relay",
        &relay_url,
        "--did",
        &dids[3],
        "--did",
        &dids[1],
        "--plc-url",
        &plc,
        "--allow-loopback-pds",
    ])
    .await;
    let row = &report.correctness.as_ref().expect("correctness").relays[0];
    assert_eq!((row.correct, row.wrong), (1, 1), "{row:?}");
    let wrong = &row.details[0];
    assert_eq!(wrong.did, dids[3]);
    assert_eq!(wrong.reason.as_deref(), Some("status: relay takendown, PDS active"));
    stop_relay(running).await;
}

async fn readiness(running: &Running) -> (u16, String) {
    let response = reqwest::get(format!("http://{}/_ready", running.internal)).await.expect("GET /_ready");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

fn metric(running: &Running, line_start: &str) -> Option<f64> {
    let text = running.relay.metrics.render();
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Where a busy relay's `/metrics` (with a coverage sample, events and the collection index)
/// is saved for `scripts/check-monitoring.sh`, which checks that every metric the dashboards
/// and alerts name exists (scripts/test.sh runs it after the tests).
const MONITORING_METRICS_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/relay-metrics.prom");

async fn save_metrics_for_the_monitoring_check(running: &Running) {
    let text = reqwest::get(format!("http://{}/metrics", running.internal))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(text.contains("relay_coverage_ratio{"), "a coverage sample is in /metrics");
    std::fs::write(MONITORING_METRICS_FILE, text).expect("saving /metrics");
}

/// A relay checking itself against a reference that sees all ten hosts: ready while it sees
/// them too, not ready (with the reason) two samples after half its hosts are cut, ready
/// again once they are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_check_flips_readiness_when_hosts_are_cut_and_back() {
    let hosts = 10;
    let sim = Simulation::start(sim_config(hosts, 2, 40.0)).await.expect("simulation");
    let reference = start_relay(config(&tempdir("selfcheck-reference"), sim.plc_url())).await;
    register(&reference, &sim.hosts).await;
    let mut checked_config = config(&tempdir("selfcheck"), sim.plc_url());
    let reference_url = format!("http://{}", reference.public);
    checked_config.coverage_references = vec![reference_url.clone()];
    checked_config.coverage_window = Duration::from_secs(2);
    checked_config.coverage_interval = Duration::from_millis(500);
    checked_config.coverage_grace = Duration::from_millis(500);
    let checked = start_relay(checked_config).await;
    register(&checked, &sim.hosts).await;
    wait_connected(&reference, hosts).await;
    wait_connected(&checked, hosts).await;
    sim.create_accounts();
    let generator = tokio::spawn(sim.clone().run());
    let ratio_line = format!("relay_coverage_ratio{{reference=\"{reference_url}\"}}");
    let samples_line = |result: &str| {
        format!("relay_coverage_samples_total{{reference=\"{reference_url}\",result=\"{result}\"}}")
    };

    eventually("a good sample and ready", Duration::from_secs(40), || async {
        let ratio = metric(&checked, &ratio_line);
        match (ratio, readiness(&checked).await) {
            (Some(ratio), (200, _)) if ratio > 0.9 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    save_metrics_for_the_monitoring_check(&checked).await;

    let client = reqwest::Client::new();
    let cut: Vec<String> = sim.hosts[..5].iter().map(|h| h.hostname()).collect();
    for host in &cut {
        let url = format!("http://{}/admin/subs/killUpstream?host={host}&block=true", checked.internal);
        let response = client.post(url).bearer_auth(TOKEN).send().await.expect("killUpstream");
        assert!(response.status().is_success(), "killUpstream {host}: {}", response.status());
    }
    let low_before = metric(&checked, &samples_line("low")).unwrap_or(0.0);
    eventually("not ready for low coverage", Duration::from_secs(40), || async {
        match readiness(&checked).await {
            (503, body) if body.contains("coverage") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (_, body) = readiness(&checked).await;
    let reason =
        serde_json::from_str::<serde_json::Value>(&body).expect("JSON")["reason"].as_str().map(String::from);
    let reason = reason.expect("a reason");
    assert!(
        reason.contains(&format!("below threshold 0.70 against {reference_url} for 2 samples")),
        "{reason}"
    );
    let ratio = metric(&checked, &ratio_line).expect("ratio");
    println!("not ready: {body}; {ratio_line} {ratio}");
    assert!((0.3..0.7).contains(&ratio), "half the hosts cut: ratio {ratio}");
    assert!(metric(&checked, &samples_line("low")).unwrap_or(0.0) >= low_before + 2.0);

    for host in &cut {
        admin_post(&checked, &format!("/admin/pds/unblock?host={host}"), serde_json::Value::Null).await;
        admin_post(
            &checked,
            "/admin/pds/requestCrawl",
            serde_json::json!({ "hostname": format!("http://{host}") }),
        )
        .await;
    }
    eventually("ready again", Duration::from_secs(40), || async {
        match (readiness(&checked).await, metric(&checked, &ratio_line)) {
            ((200, _), Some(ratio)) if ratio >= 0.9 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    generator.abort();
    stop_relay(checked).await;
    stop_relay(reference).await;
}

/// A failed run (no relay reachable, bad arguments) exits non-zero; it is not a report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_exits_non_zero() {
    let run = |args: Vec<&'static str>| async move {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("coverage")
            .args(args)
            .output()
            .await
            .expect("run the binary");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned(), output.stdout.len())
    };
    let (code, stderr, stdout) = run(vec![
        "firehose",
        "--relay",
        "ws://127.0.0.1:9",
        "--relay",
        "ws://127.0.0.1:9",
        "--warmup",
        "0s",
        "--window",
        "1s",
        "--grace",
        "0s",
        "--connect-timeout",
        "2s",
    ])
    .await;
    assert_eq!((code, stdout), (Some(2), 0), "{stderr}");
    assert!(stderr.contains("no relay could be reached"), "{stderr}");
    let (code, stderr, _) = run(vec!["firehose", "--relay", "ws://127.0.0.1:9"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("at least 2 relay"), "{stderr}");
    let (code, stderr, _) =
        run(vec!["collections", "--relay", "http://127.0.0.1:9", "--nsids", "/no/such/list"]).await;
    assert_eq!(code, Some(2), "{stderr}");

    // A failed run still leaves a summary saying why (the CronJob's termination message).
    let summary_path = tempdir("failed-summary").join("summary.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["coverage", "--summary-file"])
        .arg(&summary_path)
        .args(["collections", "--relay", "http://127.0.0.1:9", "--nsids", "/no/such/list"])
        .output()
        .await
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(2));
    let summary: relay::coverage::summary::Summary =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).expect("summary written"))
            .expect("JSON");
    assert_eq!(summary.mode, "collections");
    assert!(summary.error.as_deref().is_some_and(|e| e.contains("/no/such/list")), "{summary:?}");
}
