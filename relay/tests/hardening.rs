//! The relay against a hostile host, a failing directory and misbehaving consumers: each
//! test here is one of the weaknesses found by trying the relay as an attacker would
//! (issue "Relay hardening first"), and fails without its fix.

mod common;

use common::{start_relay, stop_relay, wait_connected, wait_for};
use futures_util::StreamExt;
use relay::app::Relay;
use relay::atproto::frame::{self, Account, Event, IdentityEvent, Info};
use relay::config::ServeConfig;
use relay::simulate::{SimulateConfig, Simulation};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn config(dir: &std::path::Path, plc: String) -> ServeConfig {
    let mut config = common::relay_config(dir, plc);
    config.admin_tokens = vec!["test-token".into()];
    config
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-hardening-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn sim_config(hosts: usize, accounts: usize) -> SimulateConfig {
    SimulateConfig { seed: 11, ..SimulateConfig::loopback(hosts, accounts) }
}

/// A simulated fleet registered with a relay running in this process.
struct Fleet {
    sim: std::sync::Arc<Simulation>,
    running: common::Running,
    relay: std::sync::Arc<Relay>,
    dir: std::path::PathBuf,
    /// Accounts the simulation creates in all (each announces three events).
    accounts: usize,
}

impl Fleet {
    /// Starts `hosts` simulated PDSes with `accounts` each (not created yet) and a relay
    /// (`tweak` adjusts its config) subscribed to all of them.
    async fn start(name: &str, hosts: usize, accounts: usize, tweak: impl FnOnce(&mut ServeConfig)) -> Fleet {
        let dir = temp_dir(name);
        let sim = Simulation::start(sim_config(hosts, accounts)).await.expect("simulator");
        let mut config = config(&dir, sim.plc_url());
        tweak(&mut config);
        let running = start_relay(config).await;
        let relay = running.relay.clone();
        let fleet = Fleet { sim, running, relay, dir, accounts: hosts * accounts };
        fleet.sim.register_with_relay(&fleet.admin(), "test-token").await.expect("crawl");
        wait_connected(&fleet.relay, hosts).await;
        fleet
    }

    fn admin(&self) -> String {
        format!("http://{}", self.running.internal)
    }

    fn firehose(&self) -> String {
        format!("ws://{}/xrpc/com.atproto.sync.subscribeRepos", self.running.public)
    }

    /// Connects a live consumer, creates the accounts and waits for their creation events
    /// (`#identity`, `#account`, `#sync` each).
    async fn consumer_after_account_creation(&self) -> Consumer {
        let consumer = Consumer::connect(&self.firehose()).await;
        self.sim.create_accounts();
        let events = self.accounts * 3;
        wait_for("account creation events", Duration::from_secs(20), || consumer.count() >= events).await;
        consumer
    }

    /// POSTs JSON to an admin route with the test token; the answer must be a success.
    async fn admin_post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.admin()))
            .bearer_auth("test-token")
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert!(response.status().is_success(), "POST {path}: {}", response.status());
        response.json().await.unwrap_or_else(|e| panic!("POST {path}: body is not JSON: {e}"))
    }

    async fn stop(self) {
        stop_relay(self.running).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rejected(relay: &Relay, reason: &str) -> u64 {
    relay.metrics.rejections.with_label_values(&[reason]).get()
}

fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A live consumer that collects every event into a shared list.
struct Consumer {
    events: std::sync::Arc<std::sync::Mutex<Vec<Event>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Consumer {
    async fn connect(url: &str) -> Consumer {
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("consumer connects");
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Binary(bytes) = message {
                    let event = frame::decode(&bytes).expect("relay frames decode");
                    sink.lock().expect("lock").push(event);
                }
            }
        });
        Consumer { events, task }
    }

    fn count(&self) -> usize {
        self.events.lock().expect("lock").len()
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().expect("lock").clone()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `#identity` and `#account` are judged like commits: only the account's own PDS may send
/// them, their DID must be valid and resolve, every string is bounded, and nothing is stored
/// for an event that fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_account_events_need_authority_and_bounded_fields() {
    let fleet = Fleet::start("authority", 2, 2, |_| {}).await;
    let (sim, relay) = (&fleet.sim, fleet.relay.clone());
    let consumer = fleet.consumer_after_account_creation().await;

    let home_did = sim.hosts[0].dids()[0].clone();
    let stranger = "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz".to_string();
    let identity = |did: &str, handle: Option<&str>| {
        Event::Identity(IdentityEvent {
            seq: 0,
            did: did.into(),
            time: timestamp(),
            handle: handle.map(Into::into),
        })
    };
    let account = |did: &str, status: &str| {
        Event::Account(Account {
            seq: 0,
            did: did.into(),
            time: timestamp(),
            active: false,
            status: Some(status.into()),
        })
    };
    // Host 1 speaks for an account of host 0, for a DID that does not resolve, and with a
    // 1 MB "DID"; host 0 sends an oversized status and a malformed handle for its own account.
    sim.hosts[1].emit(identity(&home_did, Some("hijacked.example.com")));
    sim.hosts[1].emit(account(&home_did, "takendown"));
    sim.hosts[1].emit(identity(&stranger, None));
    sim.hosts[1].emit(account(&stranger, "deleted"));
    sim.hosts[1].emit(identity(&format!("did:plc:{}", "a".repeat(1_000_000)), None));
    sim.hosts[0].emit(account(&home_did, &"x".repeat(1_000)));
    sim.hosts[0].emit(identity(&home_did, Some("not a handle!")));
    wait_for("the hostile events to be judged", Duration::from_secs(20), || {
        rejected(&relay, "wrong_host") >= 2
            && rejected(&relay, "no_identity") >= 2
            && rejected(&relay, "bad_did") >= 1
            && rejected(&relay, "bad_field") >= 2
    })
    .await;
    // Then one valid #identity from the account's own host goes through.
    sim.hosts[0].emit(identity(&home_did, Some("user0.host0.test")));
    wait_for("the valid #identity", Duration::from_secs(20), || consumer.count() > 12).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = consumer.events();
    assert_eq!(events.len(), 13, "only the valid #identity was relayed after account creation");
    match &events[12] {
        Event::Identity(relayed) => assert_eq!(relayed.did, home_did),
        other => panic!("expected the valid #identity, got {other:?}"),
    }
    assert!(relay.store.account(&stranger).await.expect("store").is_none(), "no row for a refused DID");
    let home = relay.store.account(&home_did).await.expect("store").expect("home account");
    assert_eq!(home.upstream_status.as_str(), "active", "the foreign #account changed nothing");
    drop(consumer);
    fleet.stop().await;
}

/// Events for DIDs that do not resolve leave no trace: no account rows, no cache growth
/// beyond the negative answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_dids_create_no_account_state() {
    let fleet = Fleet::start("nostate", 1, 1, |_| {}).await;
    let (sim, relay) = (&fleet.sim, fleet.relay.clone());
    for i in 0..200 {
        let did = format!("did:plc:{:0>24}", format!("ghost{i}"));
        sim.hosts[0].emit(Event::Identity(IdentityEvent { seq: 0, did, time: timestamp(), handle: None }));
    }
    wait_for("200 refusals", Duration::from_secs(30), || rejected(&relay, "no_identity") >= 200).await;
    let rows = relay.store.list_repos("", 1000).await.expect("list");
    assert!(rows.is_empty(), "no account rows for refused events: {rows:?}");
    fleet.stop().await;
}

/// A directory outage during a burst (every host delivering its backlog at once) holds the
/// new accounts' events and retries; not one valid commit is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_outage_under_a_burst_loses_no_valid_commit() {
    let (hosts, accounts, commits) = (10, 5, 200);
    let fleet = Fleet::start("plc-outage", hosts, accounts, |_| {}).await;
    let (sim, relay) = (&fleet.sim, fleet.relay.clone());
    let firehose = fleet.firehose();
    let consumer = Consumer::connect(&firehose).await;
    sim.plc.unavailable_for(Duration::from_secs(3));
    sim.create_accounts();
    let mut rng = fastrand::Rng::with_seed(5);
    for _ in 0..commits {
        sim.step(&mut rng);
    }
    let expected = hosts * accounts * 3 + commits;
    wait_for("every valid event", Duration::from_secs(60), || consumer.count() >= expected).await;
    assert!(sim.plc.refused.load(std::sync::atomic::Ordering::Relaxed) > 0, "the outage happened");
    assert!(relay.metrics.identity_lookup_retries.get() > 0, "lookups were retried");
    assert_eq!(rejected(&relay, "no_identity"), 0, "a transient failure never became a drop");
    let relayed_commits = consumer.events().iter().filter(|e| matches!(e, Event::Commit(_))).count();
    assert_eq!(relayed_commits, commits);
    drop(consumer);
    fleet.stop().await;
}

/// `#info` floods pass through the host's rate limit and are counted; what is logged of
/// them is rate-limited (and clipped), so a host cannot decide how much the relay logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_floods_are_counted_and_their_logging_is_bounded() {
    let fleet = Fleet::start("info", 1, 1, |_| {}).await;
    let (sim, relay) = (&fleet.sim, fleet.relay.clone());
    let big = "i".repeat(100_000);
    for _ in 0..300 {
        let info = Info { name: "Flood".into(), message: Some(big.clone()) };
        sim.hosts[0].emit_raw(0, frame::encode(&Event::Info(info)).expect("encode"));
    }
    wait_for("300 #info frames", Duration::from_secs(20), || rejected(&relay, "upstream_info") >= 300).await;
    let suppressed = relay.metrics.upstream_log_lines_suppressed.get();
    assert!(suppressed >= 280, "at most a handful of log lines per minute per host, {suppressed} suppressed");
    fleet.stop().await;
}

/// Opens a firehose connection from `source` and completes the upgrade by hand, with a
/// small receive buffer, then never reads again: a consumer whose peer went away.
async fn stuck_consumer(relay: std::net::SocketAddr, source: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.bind(format!("{source}:0").parse().expect("addr")).expect("bind");
    let mut stream = socket.connect(relay).await.expect("connect");
    let request = format!(
        "GET /xrpc/com.atproto.sync.subscribeRepos HTTP/1.1\r\nHost: {relay}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.expect("response");
    assert_eq!(&head[9..12], b"101", "upgrade accepted");
    stream
}

/// Status code and JSON body of an upgrade attempt from `source`.
async fn upgrade_status(relay: std::net::SocketAddr, source: &str) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{source}:0").parse().expect("addr")).expect("bind");
    let stream = socket.connect(relay).await.expect("connect");
    let url = format!("ws://{relay}/xrpc/com.atproto.sync.subscribeRepos");
    match tokio_tungstenite::client_async(url, stream).await {
        Ok(_) => (101, String::new()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body =
                response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().to_string();
            (response.status().as_u16(), body)
        }
        Err(error) => panic!("unexpected upgrade error {error}"),
    }
}

/// Consumers are capped per address and in total with a clear refusal, and one that stops
/// reading is released within the write and close deadlines instead of holding its task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_capped_and_stuck_ones_are_released() {
    let dir = temp_dir("consumers");
    let mut config = config(&dir, "http://127.0.0.1:9".into());
    config.max_consumers = 4;
    config.max_consumers_per_ip = 3;
    config.consumer_write_timeout = Duration::from_secs(1);
    config.consumer_close_timeout = Duration::from_secs(1);
    let running = start_relay(config).await;
    let relay = running.relay.clone();
    let open = || relay.fanout.consumers.lock().map(|c| c.len()).unwrap_or(usize::MAX);

    let stuck = stuck_consumer(running.public, "127.0.0.1").await;
    wait_for("the stuck consumer to register", Duration::from_secs(5), || open() == 1).await;
    // Megabytes of events straight into the sequencer: more than any socket buffer holds.
    let blocks = vec![0u8; 1 << 20];
    for i in 0..40 {
        let did = format!("did:plc:{:0>24}", i);
        let event = Event::Sync(frame::Sync {
            seq: 0,
            did: did.clone(),
            blocks: blocks.clone(),
            rev: "3l3qo2vutsw2b".into(),
            time: timestamp(),
        });
        let outgoing = relay::sequence::Outgoing { did, event, in_flight: None, state: None };
        relay.sequencer_input.send(outgoing).await.expect("sequencer");
    }
    wait_for("the stuck consumer to be released", Duration::from_secs(15), || open() == 0).await;
    drop(stuck);

    let (a, b) = ("127.0.0.1", "127.0.0.2");
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(stuck_consumer(running.public, a).await);
    }
    let (status, body) = upgrade_status(running.public, a).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("TooManyConsumers") && body.contains("one address"), "{body}");
    kept.push(stuck_consumer(running.public, b).await);
    let (status, body) = upgrade_status(running.public, b).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("TooManyConsumers") && body.contains("maximum of 4"), "{body}");
    assert_eq!(relay.metrics.consumers_refused.with_label_values(&["per_ip"]).get(), 1);
    assert_eq!(relay.metrics.consumers_refused.with_label_values(&["total"]).get(), 1);
    // Every upgrade has completed (four connections hold places), then one goes away.
    wait_for("four consumers connected", Duration::from_secs(5), || open() == 4).await;
    drop(kept.pop());
    wait_for("a place to free up", Duration::from_secs(5), || relay.fanout.admitted() <= 3).await;
    let _ = upgrade_status(running.public, b).await;
    assert_eq!(relay.metrics.consumers_refused.with_label_values(&["total"]).get(), 1, "admitted again");
    drop(kept);
    stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Error answers the framework writes itself come in the lexicon's `{error, message}` shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_has_the_lexicon_shape() {
    let dir = temp_dir("errors");
    let running = start_relay(config(&dir, "http://127.0.0.1:9".into())).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", running.public);
    let long = "a".repeat(9_000);
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (client.get(format!("{base}/xrpc/com.atproto.sync.listRepos?limit=1&limit=2")), 400),
        (client.post(format!("{base}/xrpc/com.atproto.sync.listRepos")), 405),
        (client.get(format!("{base}/xrpc/com.atproto.sync.subscribeRepos")), 400),
        (client.get(format!("{base}/xrpc/com.atproto.sync.listRepos?cursor={long}")), 414),
        (
            client
                .get(format!("{base}/xrpc/com.atproto.sync.listRepos"))
                .header("x-filler", "b".repeat(20_000)),
            431,
        ),
        (client.get(format!("{base}/xrpc/com.example.nothing")), 404),
    ];
    for (request, want) in cases {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body: serde_json::Value =
            response.json().await.unwrap_or_else(|e| panic!("{want}: not JSON: {e}"));
        assert!(status == want || (want == 400 && status == 426), "got {status}, want {want}: {body}");
        assert!(content_type.starts_with("application/json"), "{want}: {content_type}");
        assert!(body["error"].is_string() && body["message"].is_string(), "{want}: {body}");
    }
    stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The new-hosts-per-day limit refuses before the relay makes any outbound request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_host_limit_is_checked_before_probing() {
    let dir = temp_dir("daily");
    let mut config = config(&dir, "http://127.0.0.1:9".into());
    config.new_hosts_per_day = 0;
    let running = start_relay(config).await;
    // A "PDS" that accepts connections and counts them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(socket);
            });
        }
    });
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("http://{}/xrpc/com.atproto.sync.requestCrawl", running.public))
        .json(&serde_json::json!({ "hostname": format!("http://localhost:{port}") }))
        .send()
        .await
        .expect("requestCrawl");
    assert_eq!(response.status().as_u16(), 429);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"], "RateLimitExceeded");
    assert!(started.elapsed() < Duration::from_secs(5), "answered without waiting on a probe");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "no outbound connection");
    stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// An event over a lexicon limit (here 201 ops) is dropped on its own: the connection stays
/// up and the host's next events come through. Dropping the connection instead would resume
/// before the bad event, and the host would send it again forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_a_field_limit_does_not_stall_its_host() {
    let fleet = Fleet::start("field-limit", 1, 1, |_| {}).await;
    let (sim, relay) = (&fleet.sim, fleet.relay.clone());
    let consumer = fleet.consumer_after_account_creation().await;
    let did = sim.hosts[0].dids()[0].clone();
    let op = frame::RepoOp {
        action: "delete".into(),
        path: "app.bsky.feed.post/3l3qo2vutsw2b".into(),
        cid: None,
        prev: None,
    };
    let oversized = Event::Commit(frame::Commit {
        seq: 0,
        rebase: false,
        too_big: false,
        repo: did.clone(),
        // A well-formed (dag-cbor, sha-256) CID: the frame must be valid apart from its ops.
        commit: cid::Cid::try_from("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm")
            .expect("cid"),
        rev: "3l3qo2vutsw2b".into(),
        since: None,
        blocks: Vec::new(),
        ops: vec![op; 201],
        blobs: Vec::new(),
        prev_data: None,
        time: timestamp(),
    });
    sim.hosts[0].emit(oversized);
    let mut rng = fastrand::Rng::with_seed(1);
    sim.step(&mut rng);
    wait_for("the commit after the oversized event", Duration::from_secs(20), || consumer.count() >= 4).await;
    assert_eq!(rejected(&relay, "oversize"), 1);
    assert!(matches!(consumer.events()[3], Event::Commit(_)));
    drop(consumer);
    fleet.stop().await;
}

/// The admin re-sync: a commit the relay never saw (its PDS lost the event) reaches
/// consumers as a `#sync` fetched from the PDS; the account's chain continues from it, and a
/// second re-sync of a current account changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_resync_catches_up_an_account_whose_commit_was_lost() {
    use relay::atproto::repo::{sample_post, Write};
    let fleet = Fleet::start("resync", 1, 1, |_| {}).await;
    let (sim, relay) = (&fleet.sim, fleet.relay.clone());
    let consumer = fleet.consumer_after_account_creation().await;
    let did = sim.hosts[0].dids()[0].clone();
    let write = Write::Create {
        path: "app.bsky.feed.post/3l3qo2vutsw2b".into(),
        record: sample_post("lost", &timestamp()),
    };
    sim.write_unannounced(0, 0, &[write]).expect("write");

    let resync =
        |dids: Vec<String>| fleet.admin_post("/admin/repo/resync", serde_json::json!({ "dids": dids }));
    let answer = resync(vec![did.clone()]).await;
    assert_eq!(answer["results"][0]["result"], "queued", "{answer}");
    let rev = answer["results"][0]["rev"].as_str().expect("rev").to_string();
    wait_for("the #sync", Duration::from_secs(20), || consumer.count() >= 4).await;
    match &consumer.events()[3] {
        Event::Sync(sync) => assert_eq!((sync.did.as_str(), sync.rev.as_str()), (did.as_str(), rev.as_str())),
        other => panic!("expected a #sync, got {other:?}"),
    }
    // The account's next commit follows on from the re-synced state: no chain break.
    let mut rng = fastrand::Rng::with_seed(2);
    sim.step(&mut rng);
    wait_for("the next commit", Duration::from_secs(20), || consumer.count() >= 5).await;
    assert_eq!(relay.metrics.chain_breaks.get(), 0);
    // Already current: queued, judged, and dropped as not newer.
    let before = rejected(&relay, "rev_not_newer");
    let answer = resync(vec![did.clone(), "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz".into()]).await;
    assert_eq!(answer["results"][0]["result"], "queued");
    assert_eq!(answer["results"][1]["result"], "failed", "{answer}");
    wait_for("the stale #sync to be dropped", Duration::from_secs(20), || {
        rejected(&relay, "rev_not_newer") > before
    })
    .await;
    assert_eq!(consumer.count(), 5);
    drop(consumer);
    fleet.stop().await;
}

/// A host whose events make the relay look up many identities is slowed to its budget:
/// the lookups it causes wait for tokens instead of reaching the directory at its pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_lookups_a_host_causes_are_budgeted() {
    let fleet = Fleet::start("lookup-budget", 1, 1, |config| {
        config.host_identity_lookups_per_second = 5.0;
    })
    .await;
    let (sim, relay) = (&fleet.sim, fleet.relay.clone());
    for i in 0..20 {
        let did = format!("did:plc:{:0>24}", format!("budget{i}"));
        sim.hosts[0].emit(Event::Identity(IdentityEvent { seq: 0, did, time: timestamp(), handle: None }));
    }
    let started = Instant::now();
    wait_for("20 refusals", Duration::from_secs(30), || rejected(&relay, "no_identity") >= 20).await;
    // A burst of 5, then 5 per second: the last of 20 lookups comes after about 3 seconds.
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(
        relay.metrics.host_identity_throttled.get() >= 14,
        "{}",
        relay.metrics.host_identity_throttled.get()
    );
    fleet.stop().await;
}

/// An admin cursor reset restarts the host's subscription from the given seq: what the host
/// still holds after it is replayed (a #sync the relay has is refused as not newer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_cursor_reset_replays_from_the_given_seq() {
    let fleet = Fleet::start("reset-cursor", 1, 1, |_| {}).await;
    let (sim, relay) = (&fleet.sim, fleet.relay.clone());
    let consumer = fleet.consumer_after_account_creation().await;
    let before = rejected(&relay, "rev_not_newer");
    fleet
        .admin_post(
            "/admin/pds/resetCursor",
            serde_json::json!({ "host": sim.hosts[0].hostname(), "cursor": 1 }),
        )
        .await;
    // Upstream seqs 2 (#account) and 3 (#sync) come again: the #account is relayed again, the
    // #sync is refused as not newer.
    wait_for("the replayed #sync to be refused", Duration::from_secs(20), || {
        rejected(&relay, "rev_not_newer") > before
    })
    .await;
    wait_for("the replayed #account", Duration::from_secs(20), || consumer.count() >= 4).await;
    assert!(matches!(consumer.events()[3], Event::Account(_)));
    drop(consumer);
    fleet.stop().await;
}
