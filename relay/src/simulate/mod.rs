//! A PDS fleet simulator: N hosts on loopback, each with accounts holding real signed
//! repos (k256 and p256 keys), emitting valid Sync 1.1 commits with MST proofs at a
//! given rate, plus `#identity`/`#account`/`#sync` events; each host serves
//! `describeServer`, `listRepos`, `getRepoStatus` and `subscribeRepos` (with cursor
//! replay), and a fake PLC directory serves the DID documents. Hostile switches make some
//! hosts misbehave.
//! It is how the relay is tried out and benchmarked on one machine.

pub mod upstream;

use crate::atproto::crypto::{Curve, SigningKey};
use crate::atproto::frame::{self, Account, Event, IdentityEvent};
use crate::atproto::repo::{sample_post, Repo, Write};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// Misbehaviour a simulated host can show (for testing the relay's defences).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hostile {
    /// Commits with a corrupted block (its bytes no longer match its CID).
    CorruptBlock,
    /// Commits for an account hosted elsewhere.
    ForeignDid,
    /// A commit whose rev is older than the previous one.
    RevRollback,
    /// A frame that is not valid CBOR.
    GarbageCbor,
    /// An upstream seq lower than the previous one.
    SeqBackwards,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SimulateConfig {
    /// Number of simulated PDS hosts.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Accounts per host.
    #[arg(long, default_value_t = 5)]
    pub accounts_per_host: usize,
    /// Commits per second across all hosts.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Stop after this many commits (0 = run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub max_commits: u64,
    /// Address to bind hosts and the PLC on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Relay internal URL to requestCrawl each host at (e.g. http://127.0.0.1:2471).
    #[arg(long)]
    pub relay_admin_url: Option<String>,
    /// Admin token for the relay.
    #[arg(long, env = "RELAY_ADMIN_PASSWORD")]
    pub relay_admin_token: Option<String>,
    /// Make the last host misbehave this way (may be given several times).
    #[arg(long, value_enum)]
    pub hostile: Vec<Hostile>,
    /// Seed for keys and choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Send a new subscriber without a cursor the host's whole history (benchmarks use this
    /// to feed the relay pre-generated events as fast as it takes them).
    #[arg(long)]
    pub backlog_on_connect: bool,
    /// Events each host keeps for cursor replay (0 = all; long runs need a bound).
    #[arg(long, default_value_t = 0)]
    pub history_events: usize,
    /// Name hosts go by in DID documents and `requestCrawl` instead of the bind address
    /// (`localhost` for relays that, like indigo's, accept loopback hosts only by that name).
    #[arg(long)]
    pub advertise_name: Option<String>,
}

struct SimAccount {
    repo: Repo,
    handle: String,
    posts: Vec<String>,
    /// `None` when active, else the status (`deactivated`, `takendown`, `deleted`).
    status: Option<String>,
}

/// One simulated PDS.
pub struct SimHost {
    pub addr: SocketAddr,
    /// `name:port` as advertised (see `SimulateConfig::advertise_name`).
    name: String,
    events: Mutex<Vec<(i64, Vec<u8>)>>,
    live: broadcast::Sender<(i64, Vec<u8>)>,
    accounts: Mutex<Vec<SimAccount>>,
    next_seq: Mutex<i64>,
    hostile: Vec<Hostile>,
    backlog_on_connect: bool,
    history_events: usize,
    /// While set and in the future, `listRepos` and `describeRepo` answer 429 with this
    /// `Retry-After` (seconds): a PDS enforcing a rate limit.
    throttle: Mutex<Option<(std::time::Instant, u64)>>,
    /// Requests refused with 429, and `describeRepo`/`listRepos` requests served.
    pub refused: std::sync::atomic::AtomicU64,
    pub served: std::sync::atomic::AtomicU64,
}

impl SimHost {
    /// Answers `listRepos`/`describeRepo` with 429 + `Retry-After: retry_after` for `duration`.
    pub fn throttle_for(&self, duration: Duration, retry_after: u64) {
        *self.throttle.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now() + duration, retry_after));
    }

    fn throttled(&self) -> Option<u64> {
        let throttle = *self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        match throttle {
            Some((until, retry_after)) if until > std::time::Instant::now() => {
                self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(retry_after)
            }
            _ => {
                self.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            }
        }
    }

    /// The DIDs hosted here, in creation order.
    pub fn dids(&self) -> Vec<String> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|a| a.repo.did.clone()).collect()
    }

    pub fn hostname(&self) -> String {
        self.name.clone()
    }

    /// Sequences a frame on this host and sends it to subscribers.
    pub fn emit(&self, mut event: Event) {
        let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let seq = *next;
        *next += 1;
        event.set_seq(seq);
        let bytes = frame::encode(&event).expect("simulated events encode");
        self.remember(seq, bytes.clone());
        let _ = self.live.send((seq, bytes));
    }

    /// Sends a frame as-is with the given upstream seq (scripted scenarios, hostile hosts).
    pub fn emit_raw(&self, seq: i64, bytes: Vec<u8>) {
        self.remember(seq, bytes.clone());
        let _ = self.live.send((seq, bytes));
    }

    /// Keeps a frame for cursor replay, dropping the oldest beyond `history_events`.
    fn remember(&self, seq: i64, bytes: Vec<u8>) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.push((seq, bytes));
        if self.history_events > 0 && events.len() > self.history_events * 2 {
            let excess = events.len() - self.history_events;
            events.drain(..excess);
        }
    }

    /// Events kept for replay (every event emitted when the history is unbounded).
    pub fn events_emitted(&self) -> usize {
        self.events.lock().map(|e| e.len()).unwrap_or(0)
    }
}

impl SimulateConfig {
    /// A fleet on 127.0.0.1 that nobody drives but the caller (tests and benches): no
    /// registration, no hostile hosts, unbounded history, 200 commits/s when stepped by `run`.
    /// Override fields with struct update syntax.
    pub fn loopback(hosts: usize, accounts_per_host: usize) -> SimulateConfig {
        SimulateConfig {
            hosts,
            accounts_per_host,
            rate: 200.0,
            max_commits: 0,
            bind: "127.0.0.1".into(),
            relay_admin_url: None,
            relay_admin_token: None,
            hostile: Vec::new(),
            seed: 1,
            backlog_on_connect: false,
            history_events: 0,
            advertise_name: None,
        }
    }
}

/// The fake PLC directory: DID → document.
#[derive(Default)]
pub struct SimPlc {
    docs: Mutex<HashMap<String, serde_json::Value>>,
    /// Synthetic DIDs (see [`upstream`]) resolve to this PDS endpoint; ghosts do not resolve.
    synthetic_pds: Mutex<Option<String>>,
    /// While set and in the future, every lookup answers 503: a directory having an outage.
    unavailable_until: Mutex<Option<std::time::Instant>>,
    /// Lookups answered 503 because of `unavailable_for`.
    pub refused: std::sync::atomic::AtomicU64,
}

impl SimPlc {
    /// Makes every synthetic upstream DID resolve to `pds_endpoint`, except ghosts.
    pub fn serve_synthetic(&self, pds_endpoint: &str) {
        *self.synthetic_pds.lock().unwrap_or_else(|p| p.into_inner()) = Some(pds_endpoint.to_string());
    }

    fn synthetic_document(&self, did: &str) -> Option<serde_json::Value> {
        let pds = self.synthetic_pds.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        let index = upstream::synthetic_index(did)?;
        if upstream::is_ghost(index) {
            return None;
        }
        let key = SigningKey::from_seed(Curve::K256, b"synthetic");
        Some(crate::identity::doc::build_document(did, &format!("syn{index}.test"), &key.public_key(), &pds))
    }

    /// Answers every lookup with 503 for `duration` (tests of transient directory failures).
    pub fn unavailable_for(&self, duration: Duration) {
        *self.unavailable_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now() + duration);
    }

    fn unavailable(&self) -> bool {
        let until = *self.unavailable_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|until| until > std::time::Instant::now())
    }

    /// Serves `doc` for `did` (scripted scenarios bring their own identities).
    pub fn set_document(&self, did: &str, doc: serde_json::Value) {
        self.docs.lock().unwrap_or_else(|p| p.into_inner()).insert(did.to_string(), doc);
    }
}

/// A running simulation.
pub struct Simulation {
    pub hosts: Vec<Arc<SimHost>>,
    pub plc: Arc<SimPlc>,
    pub plc_addr: SocketAddr,
    pub commits: std::sync::atomic::AtomicU64,
    config: SimulateConfig,
    /// Share of new accounts (in percent) that sign with P-256 instead of secp256k1; half by
    /// default, so both curves are exercised. The network's PDSes sign with secp256k1, so the
    /// throughput benchmark also measures a k256-only fleet.
    p256_percent: std::sync::atomic::AtomicU8,
}

fn now_micros() -> u64 {
    crate::validate::verdict::now_micros()
}

fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn did_for(seed: u64, host: usize, account: usize) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{seed}/{host}/{account}").as_bytes());
    let mut id = String::from("did:plc:");
    for byte in &digest[..15] {
        id.push(b"abcdefghijklmnopqrstuvwxyz234567"[(*byte & 31) as usize] as char);
    }
    id.truncate(8 + 24);
    id
}

impl Simulation {
    /// Starts the PLC and every host (no accounts yet: see `create_accounts`).
    pub async fn start(config: SimulateConfig) -> anyhow::Result<Arc<Simulation>> {
        let plc = Arc::new(SimPlc::default());
        let plc_listener = tokio::net::TcpListener::bind((config.bind.as_str(), 0)).await?;
        let plc_addr = plc_listener.local_addr()?;
        let plc_app = Router::new().route("/{did}", get(plc_doc)).with_state(plc.clone());
        tokio::spawn(async move { axum::serve(plc_listener, plc_app).await });
        let mut hosts = Vec::new();
        for index in 0..config.hosts {
            let listener = tokio::net::TcpListener::bind((config.bind.as_str(), 0)).await?;
            let addr = listener.local_addr()?;
            let hostile = if index + 1 == config.hosts { config.hostile.clone() } else { Vec::new() };
            let (live, _) = broadcast::channel(4096);
            let name = match &config.advertise_name {
                Some(name) => format!("{name}:{}", addr.port()),
                None => addr.to_string(),
            };
            let host = Arc::new(SimHost {
                addr,
                name,
                events: Mutex::new(Vec::new()),
                live,
                accounts: Mutex::new(Vec::new()),
                next_seq: Mutex::new(1),
                hostile,
                backlog_on_connect: config.backlog_on_connect,
                history_events: config.history_events,
                throttle: Mutex::new(None),
                refused: 0.into(),
                served: 0.into(),
            });
            let app = Router::new()
                .route("/xrpc/com.atproto.server.describeServer", get(describe_server))
                .route("/xrpc/com.atproto.sync.subscribeRepos", get(subscribe))
                .route("/xrpc/com.atproto.sync.listRepos", get(list_repos))
                .route("/xrpc/com.atproto.repo.describeRepo", get(describe_repo))
                .route("/xrpc/com.atproto.sync.getLatestCommit", get(get_latest_commit))
                .route("/xrpc/com.atproto.sync.getRepoStatus", get(get_repo_status))
                .route("/xrpc/com.atproto.sync.getBlocks", get(get_blocks))
                .with_state(host.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            hosts.push(host);
        }
        Ok(Arc::new(Simulation { hosts, plc, plc_addr, commits: 0.into(), config, p256_percent: 50.into() }))
    }

    /// Sets the share of accounts created from now on that sign with P-256 (0–100).
    pub fn set_p256_percent(&self, percent: u8) {
        self.p256_percent.store(percent.min(100), std::sync::atomic::Ordering::Relaxed);
    }

    /// Creates the accounts; each announces `#identity`, `#account` and `#sync` on its host.
    pub fn create_accounts(&self) {
        let p256_percent = self.p256_percent.load(std::sync::atomic::Ordering::Relaxed) as usize;
        for (h, host) in self.hosts.iter().enumerate() {
            for a in 0..self.config.accounts_per_host {
                let did = did_for(self.config.seed, h, a);
                // Spread evenly: at 50 % every odd account is P-256 (as it always was).
                let p256 = a * p256_percent / 100 != (a + 1) * p256_percent / 100;
                let curve = if p256 { Curve::P256 } else { Curve::K256 };
                let key = SigningKey::from_seed(curve, did.as_bytes());
                let handle = format!("user{a}.host{h}.test");
                let doc = crate::identity::doc::build_document(
                    &did,
                    &handle,
                    &key.public_key(),
                    &format!("http://{}", host.name),
                );
                self.plc.docs.lock().unwrap_or_else(|p| p.into_inner()).insert(did.clone(), doc);
                let mut repo = Repo::new(&did, key);
                host.emit(Event::Identity(IdentityEvent {
                    seq: 0,
                    did: did.clone(),
                    time: timestamp(),
                    handle: Some(handle.clone()),
                }));
                host.emit(Event::Account(Account {
                    seq: 0,
                    did: did.clone(),
                    time: timestamp(),
                    active: true,
                    status: None,
                }));
                host.emit(Event::Sync(repo.sync_event(0, now_micros())));
                host.accounts.lock().unwrap_or_else(|p| p.into_inner()).push(SimAccount {
                    repo,
                    handle,
                    posts: Vec::new(),
                    status: None,
                });
            }
        }
    }

    /// Applies scripted writes to one account and emits the `#commit` (tests drive exact
    /// create/delete sequences with this).
    pub fn write(&self, host: usize, account: usize, writes: &[Write]) -> anyhow::Result<()> {
        let host = &self.hosts[host];
        let mut accounts = host.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let account = accounts.get_mut(account).ok_or_else(|| anyhow::anyhow!("no such account"))?;
        let commit = account.repo.commit(writes, 0, now_micros())?;
        drop(accounts);
        self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        host.emit(Event::Commit(commit));
        Ok(())
    }

    /// Applies writes to one account without announcing them: a PDS whose `#commit` was
    /// lost, so a relay has to re-sync the account to catch up.
    pub fn write_unannounced(&self, host: usize, account: usize, writes: &[Write]) -> anyhow::Result<()> {
        let mut accounts = self.hosts[host].accounts.lock().unwrap_or_else(|p| p.into_inner());
        let account = accounts.get_mut(account).ok_or_else(|| anyhow::anyhow!("no such account"))?;
        account.repo.commit(writes, 0, now_micros())?;
        Ok(())
    }

    /// Sets an account's status and emits `#account` (`None` = active again).
    pub fn set_status(&self, host: usize, account: usize, status: Option<&str>) -> anyhow::Result<()> {
        let sim_host = &self.hosts[host];
        let mut accounts = sim_host.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = accounts.get_mut(account).ok_or_else(|| anyhow::anyhow!("no such account"))?;
        entry.status = status.map(str::to_string);
        let did = entry.repo.did.clone();
        drop(accounts);
        sim_host.emit(Event::Account(Account {
            seq: 0,
            did,
            time: timestamp(),
            active: status.is_none(),
            status: status.map(str::to_string),
        }));
        Ok(())
    }

    /// The collections an account's repo holds right now.
    pub fn collections_of(&self, host: usize, account: usize) -> Vec<String> {
        let mut accounts = self.hosts[host].accounts.lock().unwrap_or_else(|p| p.into_inner());
        accounts.get_mut(account).and_then(|a| a.repo.collections().ok()).unwrap_or_default()
    }

    pub fn plc_url(&self) -> String {
        format!("http://{}", self.plc_addr)
    }

    /// Makes one commit on a random account of a random host.
    pub fn step(&self, rng: &mut fastrand::Rng) {
        let host = &self.hosts[rng.usize(..self.hosts.len())];
        let mut accounts = host.accounts.lock().unwrap_or_else(|p| p.into_inner());
        if accounts.is_empty() {
            return;
        }
        let index = rng.usize(..accounts.len());
        let account = &mut accounts[index];
        let now = now_micros();
        let write = if !account.posts.is_empty() && rng.u8(..10) < 2 {
            let path = account.posts.swap_remove(rng.usize(..account.posts.len()));
            Write::Delete { path }
        } else {
            let path = format!(
                "app.bsky.feed.post/{}",
                crate::atproto::syntax::tid_from_parts(now, rng.u16(..1024))
            );
            account.posts.push(path.clone());
            Write::Create {
                path,
                record: sample_post(&format!("hello from {}", account.handle), &timestamp()),
            }
        };
        let Ok(mut commit) = account.repo.commit(&[write], 0, now) else {
            return;
        };
        self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hostile = host.hostile.clone();
        drop(accounts);
        if hostile.is_empty() || rng.u8(..4) != 0 {
            host.emit(Event::Commit(commit));
            return;
        }
        match hostile[rng.usize(..hostile.len())] {
            Hostile::CorruptBlock => {
                let middle = commit.blocks.len() / 2;
                commit.blocks[middle] ^= 0x01;
                host.emit(Event::Commit(commit));
            }
            Hostile::ForeignDid => {
                commit.repo = did_for(self.config.seed, 0, 0);
                host.emit(Event::Commit(commit));
            }
            Hostile::RevRollback => {
                commit.rev = crate::atproto::syntax::tid_from_parts(now - 3_600_000_000, 0);
                host.emit(Event::Commit(commit));
            }
            Hostile::GarbageCbor => {
                let seq = *host.next_seq.lock().unwrap_or_else(|p| p.into_inner());
                host.emit_raw(seq, vec![0xa2, 0x61, 0x74, 0xff, 0x00]);
            }
            Hostile::SeqBackwards => {
                let mut bytes_event = Event::Commit(commit);
                bytes_event.set_seq(1);
                if let Ok(bytes) = frame::encode(&bytes_event) {
                    host.emit_raw(1, bytes);
                }
            }
        }
    }

    /// Runs the generator at the configured rate until `max_commits` (or forever).
    pub async fn run(self: Arc<Self>) {
        let mut rng = fastrand::Rng::with_seed(self.config.seed);
        let interval = Duration::from_secs_f64(1.0 / self.config.rate.max(0.001));
        let mut ticker = tokio::time::interval(interval.max(Duration::from_micros(50)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            ticker.tick().await;
            let burst = (self.config.rate * ticker.period().as_secs_f64()).ceil().max(1.0) as usize;
            for _ in 0..burst {
                self.step(&mut rng);
            }
            let done = self.commits.load(std::sync::atomic::Ordering::Relaxed);
            if self.config.max_commits > 0 && done >= self.config.max_commits {
                break;
            }
        }
    }

    /// Asks the relay to crawl every host (admin requestCrawl at `admin_url`).
    pub async fn register_with_relay(&self, admin_url: &str, token: &str) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        for host in &self.hosts {
            let response = client
                .post(format!("{}/admin/pds/requestCrawl", admin_url.trim_end_matches('/')))
                // Basic `admin:<token>`: what indigo's relay takes (ours takes it and Bearer).
                .basic_auth("admin", Some(token))
                .json(&json!({ "hostname": format!("http://{}", host.hostname()) }))
                .send()
                .await?;
            if !response.status().is_success() {
                anyhow::bail!(
                    "requestCrawl for {} failed: {} {}",
                    host.hostname(),
                    response.status(),
                    response.text().await.unwrap_or_default()
                );
            }
        }
        Ok(())
    }
}

async fn plc_doc(State(plc): State<Arc<SimPlc>>, Path(did): Path<String>) -> Response {
    if plc.unavailable() {
        plc.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"message": "directory unavailable"})),
        )
            .into_response();
    }
    let stored = plc.docs.lock().unwrap_or_else(|p| p.into_inner()).get(&did).cloned();
    match stored.or_else(|| plc.synthetic_document(&did)) {
        Some(doc) => Json(doc).into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, Json(json!({"message": "DID not registered"})))
            .into_response(),
    }
}

async fn describe_server(State(host): State<Arc<SimHost>>) -> Response {
    Json(json!({ "did": format!("did:web:{}", host.addr.ip()), "availableUserDomains": [".test"] }))
        .into_response()
}

fn too_many_requests(retry_after: u64) -> Response {
    let headers = [(axum::http::header::RETRY_AFTER, retry_after.to_string())];
    let body = Json(json!({ "error": "RateLimitExceeded", "message": "Rate Limit Exceeded" }));
    (axum::http::StatusCode::TOO_MANY_REQUESTS, headers, body).into_response()
}

#[derive(serde::Deserialize)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list_repos(State(host): State<Arc<SimHost>>, Query(query): Query<PageQuery>) -> Response {
    if let Some(retry_after) = host.throttled() {
        return too_many_requests(retry_after);
    }
    let accounts = host.accounts.lock().unwrap_or_else(|p| p.into_inner());
    let mut repos: Vec<_> = accounts
        .iter()
        .filter(|a| query.cursor.as_deref().is_none_or(|c| a.repo.did.as_str() > c))
        .map(|a| {
            let mut repo = json!({
                "did": a.repo.did, "head": a.repo.data.to_string(), "rev": a.repo.rev, "active": a.status.is_none()
            });
            if let Some(status) = &a.status {
                repo["status"] = json!(status);
            }
            repo
        })
        .collect();
    repos.sort_by(|a, b| a["did"].as_str().cmp(&b["did"].as_str()));
    let limit = query.limit.unwrap_or(500).clamp(1, 1000);
    let more = repos.len() > limit;
    repos.truncate(limit);
    let mut body = json!({ "repos": repos });
    if more {
        body["cursor"] = repos.last().map(|r| r["did"].clone()).unwrap_or_default();
    }
    Json(body).into_response()
}

#[derive(serde::Deserialize)]
struct RepoQuery {
    repo: String,
}

#[derive(serde::Deserialize)]
struct DidQuery {
    did: String,
    #[serde(default)]
    cids: Option<String>,
}

fn repo_not_found() -> Response {
    let body = Json(json!({ "error": "RepoNotFound", "message": "Could not find repo" }));
    (axum::http::StatusCode::BAD_REQUEST, body).into_response()
}

/// `getLatestCommit`: the CID and rev of the account's newest signed commit.
async fn get_latest_commit(State(host): State<Arc<SimHost>>, Query(query): Query<DidQuery>) -> Response {
    let accounts = host.accounts.lock().unwrap_or_else(|p| p.into_inner());
    match accounts
        .iter()
        .find(|a| a.repo.did == query.did)
        .and_then(|a| a.repo.head.clone().zip(a.repo.rev.clone()))
    {
        Some(((cid, _), rev)) => Json(json!({ "cid": cid.to_string(), "rev": rev })).into_response(),
        None => repo_not_found(),
    }
}

/// `getRepoStatus`: `{did, active, status?, rev?}` as a PDS answers it.
async fn get_repo_status(State(host): State<Arc<SimHost>>, Query(query): Query<DidQuery>) -> Response {
    let accounts = host.accounts.lock().unwrap_or_else(|p| p.into_inner());
    let Some(account) = accounts.iter().find(|a| a.repo.did == query.did) else {
        return repo_not_found();
    };
    let mut body = json!({ "did": account.repo.did, "active": account.status.is_none() });
    match &account.status {
        Some(status) => body["status"] = json!(status),
        None => body["rev"] = json!(account.repo.rev),
    }
    Json(body).into_response()
}

/// `getBlocks`: a CAR of the requested blocks (the simulator serves the head commit block).
async fn get_blocks(State(host): State<Arc<SimHost>>, Query(query): Query<DidQuery>) -> Response {
    let accounts = host.accounts.lock().unwrap_or_else(|p| p.into_inner());
    let Some((cid, bytes)) =
        accounts.iter().find(|a| a.repo.did == query.did).and_then(|a| a.repo.head.clone())
    else {
        return repo_not_found();
    };
    if query.cids.as_deref() != Some(cid.to_string().as_str()) {
        let body = Json(json!({ "error": "BlockNotFound", "message": "only the head commit is served" }));
        return (axum::http::StatusCode::BAD_REQUEST, body).into_response();
    }
    let car = crate::atproto::car::write(&[cid], [(&cid, bytes.as_slice())]);
    ([(axum::http::header::CONTENT_TYPE, "application/vnd.ipld.car")], car).into_response()
}

async fn describe_repo(State(host): State<Arc<SimHost>>, Query(query): Query<RepoQuery>) -> Response {
    if let Some(retry_after) = host.throttled() {
        return too_many_requests(retry_after);
    }
    let mut accounts = host.accounts.lock().unwrap_or_else(|p| p.into_inner());
    let Some(account) = accounts.iter_mut().find(|a| a.repo.did == query.repo) else {
        let body = Json(json!({ "error": "RepoNotFound", "message": "Could not find repo" }));
        return (axum::http::StatusCode::BAD_REQUEST, body).into_response();
    };
    let error = match account.status.as_deref() {
        None => None,
        Some("takendown") => Some("RepoTakendown"),
        Some("deleted") => Some("RepoNotFound"),
        Some(_) => Some("RepoDeactivated"),
    };
    if let Some(error) = error {
        let body = Json(json!({ "error": error, "message": "repo is not active" }));
        return (axum::http::StatusCode::BAD_REQUEST, body).into_response();
    }
    let collections = account.repo.collections().unwrap_or_default();
    Json(json!({
        "handle": account.handle,
        "did": account.repo.did,
        "didDoc": {},
        "collections": collections,
        "handleIsCorrect": true,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct CursorQuery {
    cursor: Option<i64>,
}

async fn subscribe(
    State(host): State<Arc<SimHost>>,
    Query(query): Query<CursorQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade.read_buffer_size(4 * 1024).on_upgrade(move |socket| stream_events(socket, host, query.cursor))
}

async fn stream_events(mut socket: WebSocket, host: Arc<SimHost>, cursor: Option<i64>) {
    let mut live = host.live.subscribe();
    let mut sent = 0i64;
    let cursor = if host.backlog_on_connect { Some(cursor.unwrap_or(0)) } else { cursor };
    if let Some(cursor) = cursor {
        let backlog: Vec<(i64, Vec<u8>)> = host
            .events
            .lock()
            .map(|events| events.iter().filter(|(seq, _)| *seq > cursor).cloned().collect())
            .unwrap_or_default();
        for (seq, bytes) in backlog {
            if socket.send(Message::Binary(bytes.into())).await.is_err() {
                return;
            }
            sent = sent.max(seq);
        }
    }
    loop {
        match live.recv().await {
            Ok((seq, bytes)) => {
                if cursor.is_some() && seq <= sent && seq > 1 {
                    continue;
                }
                if socket.send(Message::Binary(bytes.into())).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
