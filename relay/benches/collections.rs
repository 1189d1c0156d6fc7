//! The collection directory under load: `cargo bench -p relay --bench collections`.
//!
//! Phase 1, listing: an index of BENCH_PAIRS (DID, collection) pairs (default 10,000,000:
//! four collections of 2.5M/2.5M/2.5M/2M DIDs and a tail of 1,000 small ones) is built in
//! BENCH_INDEX_DIR (default a temp dir; kept and reused when BENCH_KEEP_INDEX=1), then the
//! `relay` binary serves it and BENCH_QUERIES `listReposByCollection?limit=1000` requests
//! (random collection weighted by size, random cursor) are timed over HTTP from this process.
//! Phase 2, import: the relay binary imports BENCH_IMPORT_DIDS (default 2,000,000) DIDs
//! from a simulated upstream; reports DIDs/min fetched and DIDs/min listed, with identity
//! verification off (zlay's mode), then BENCH_VERIFY_DIDS (default 50,000) with it on
//! against the simulated PLC.

use relay::collections::index::{Change, Index, IndexConfig};
use relay::simulate::upstream::{synthetic_did, SimUpstream, SyntheticCollection};
use relay::simulate::{SimulateConfig, Simulation};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

struct RelayProcess {
    child: Child,
    public: u16,
    internal: u16,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_relay(dir: &std::path::Path, plc: &str, env: &[(&str, String)]) -> RelayProcess {
    let (public, internal) = (free_port(), free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay"));
    command
        .args(["serve", "--allow-insecure-hosts", "--upstream", "", "--admin-password", "bench"])
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--bind",
            &format!("127.0.0.1:{public}"),
            "--metrics-listen",
            &format!("127.0.0.1:{internal}"),
        ])
        .args(["--plc-host", plc])
        .env("RELAY_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().expect("relay binary");
    let process = RelayProcess { child, public, internal };
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{internal}/_health")).await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(120), "relay did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process
}

async fn admin_json(relay: &RelayProcess, path: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}{path}", relay.internal))
        .bearer_auth("bench")
        .send()
        .await
        .expect("admin");
    response.json().await.unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Collections of the listing index: (nsid, DIDs).
fn listing_layout(total: u64) -> Vec<(String, u64)> {
    let big = [
        ("app.bsky.feed.post", 25),
        ("app.bsky.feed.like", 25),
        ("app.bsky.graph.follow", 25),
        ("app.bsky.actor.profile", 20),
    ];
    let mut out: Vec<(String, u64)> =
        big.iter().map(|(n, share)| (n.to_string(), total * share / 100)).collect();
    let tail = total * 5 / 100;
    for i in 0..1000u64 {
        out.push((format!("com.example.tail{i:04}.record"), tail / 1000));
    }
    out
}

fn build_index(dir: &std::path::Path, total: u64) -> Duration {
    let marker = dir.join("bench-pairs");
    if std::fs::read_to_string(&marker).ok().and_then(|s| s.trim().parse::<u64>().ok()) == Some(total) {
        println!("reusing the index in {}", dir.display());
        let index = Index::open(&dir.join("collections"), &IndexConfig::default()).expect("index");
        index.compact().expect("compact");
        return Duration::ZERO;
    }
    let _ = std::fs::remove_dir_all(dir);
    let started = Instant::now();
    let collections_dir = dir.join("collections");
    std::fs::create_dir_all(&collections_dir).expect("dir");
    let index = Index::open(&collections_dir, &IndexConfig::default()).expect("index");
    let mut written = 0u64;
    for (nsid, count) in listing_layout(total) {
        // Spread each collection over the DID space like real ones.
        let stride = (total / count.max(1)).max(1);
        let mut batch = Vec::with_capacity(10_000);
        for i in 0..count {
            batch.push(Change::Add { did: synthetic_did(i * stride + (i % 7)), collection: nsid.clone() });
            if batch.len() == 10_000 {
                index.apply(&batch).expect("apply");
                batch.clear();
            }
        }
        index.apply(&batch).expect("apply");
        written += count;
        if written % 1_000_000 < count {
            println!("  loaded {written} pairs ({:.0}s)", started.elapsed().as_secs_f64());
        }
    }
    // Measure a settled index: what a relay serves once the load's compactions are done.
    index.compact().expect("compact");
    drop(index);
    std::fs::write(&marker, total.to_string()).expect("marker");
    started.elapsed()
}

async fn bench_listing() -> Vec<String> {
    let total: u64 = env_num("BENCH_PAIRS", 10_000_000);
    let queries: usize = env_num("BENCH_QUERIES", 20_000);
    let keep = std::env::var("BENCH_KEEP_INDEX").is_ok_and(|v| v == "1");
    let dir = std::env::var("BENCH_INDEX_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("relay-bench-collections-index"));
    println!("building an index of {total} pairs in {}", dir.display());
    let load = build_index(&dir, total);
    let relay = start_relay(&dir, "http://127.0.0.1:9", &[]).await;
    let layout = listing_layout(total);
    let client = reqwest::Client::new();
    let mut rng = fastrand::Rng::with_seed(3);
    let mut latencies = Vec::with_capacity(queries);
    let mut returned = 0usize;
    let weights: u64 = layout.iter().map(|(_, n)| n).sum();
    for q in 0..queries + 500 {
        let mut pick = rng.u64(..weights);
        let (nsid, _) = layout
            .iter()
            .find(|(_, n)| {
                if pick < *n {
                    true
                } else {
                    pick -= n;
                    false
                }
            })
            .expect("pick");
        let cursor = relay::collections::encode_cursor(&synthetic_did(rng.u64(..total)));
        let url = format!(
            "http://127.0.0.1:{}/xrpc/com.atproto.sync.listReposByCollection?collection={nsid}&limit=1000&cursor={cursor}",
            relay.public
        );
        let started = Instant::now();
        let body = client.get(&url).send().await.expect("GET").bytes().await.expect("body");
        let elapsed = started.elapsed();
        if q >= 500 {
            // The first 500 warm the connection pool and caches.
            latencies.push(elapsed);
            returned += body.len();
        }
    }
    latencies.sort();
    drop(relay);
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    vec![
        format!(
            "| index load ({total} pairs) | {:.1} s ({:.0} pairs/s) |",
            load.as_secs_f64(),
            total as f64 / load.as_secs_f64().max(1e-9)
        ),
        format!(
            "| listReposByCollection limit=1000, {queries} queries: p50 | {:.2} ms |",
            percentile(&latencies, 0.50).as_secs_f64() * 1e3
        ),
        format!(
            "| listReposByCollection limit=1000: p99 | {:.2} ms |",
            percentile(&latencies, 0.99).as_secs_f64() * 1e3
        ),
        format!(
            "| listReposByCollection limit=1000: max | {:.2} ms |",
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        ),
        format!("| mean response size | {} KiB |", returned / queries.max(1) / 1024),
    ]
}

async fn run_import(name: &str, total: u64, verify: bool) -> Vec<String> {
    let sim = Simulation::start(SimulateConfig {
        hosts: 1,
        accounts_per_host: 1,
        rate: 1.0,
        max_commits: 0,
        bind: "127.0.0.1".into(),
        relay_admin_url: None,
        relay_admin_token: None,
        hostile: Vec::new(),
        seed: 5,
        backlog_on_connect: false,
        history_events: 0,
        advertise_name: None,
    })
    .await
    .expect("simulation");
    sim.plc.serve_synthetic(&format!("http://{}", sim.hosts[0].hostname()));
    let collections = vec![
        SyntheticCollection { nsid: "app.bsky.feed.post".into(), count: total / 2, stride: 1 },
        SyntheticCollection { nsid: "app.bsky.feed.like".into(), count: total / 4, stride: 2 },
        SyntheticCollection { nsid: "app.bsky.graph.follow".into(), count: total / 4, stride: 3 },
    ];
    let upstream = SimUpstream::start("127.0.0.1", collections.clone(), 0).await.expect("upstream");
    let dir = std::env::temp_dir().join(format!("relay-bench-import-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let env = [
        ("RELAY_BACKFILL_SOURCE", upstream.url()),
        (
            "RELAY_BACKFILL_COLLECTIONS",
            "app.bsky.feed.post,app.bsky.feed.like,app.bsky.graph.follow".to_string(),
        ),
        ("RELAY_BACKFILL_VERIFY_IDENTITY", verify.to_string()),
        ("RELAY_BACKFILL_HOST_REQUESTS_PER_SECOND", "10000".to_string()),
    ];
    let started = Instant::now();
    let relay = start_relay(&dir, &sim.plc_url(), &env).await;
    let register = sim.register_with_relay(&format!("http://127.0.0.1:{}", relay.internal), "bench").await;
    register.expect("register the simulated host");
    let source = upstream.url();
    let want: u64 = collections.iter().map(|c| c.count).sum();
    let ghosts = if verify { want / 10 } else { 0 };
    let (mut fetched_at, mut listed_at) = (None, None);
    while listed_at.is_none() {
        let status = admin_json(&relay, &format!("/admin/backfill-collections?source={source}")).await;
        if fetched_at.is_none() && status["imported"].as_u64() == Some(want) {
            fetched_at = Some(started.elapsed());
        }
        let counts = admin_json(&relay, "/admin/collections").await;
        let listed: u64 =
            counts["collections"].as_array().into_iter().flatten().filter_map(|c| c["dids"].as_u64()).sum();
        // Ghosts (every tenth synthetic DID) never list when identities are verified.
        if fetched_at.is_some() && listed + ghosts >= want.saturating_sub(want / 100) && listed > 0 {
            let settled = admin_json(&relay, "/admin/backfill-collections").await;
            if settled["pendingVerification"].as_u64().unwrap_or(0) == 0 || listed + ghosts >= want {
                listed_at = Some(started.elapsed());
            }
        }
        assert!(started.elapsed() < Duration::from_secs(1800), "import did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
    let fetched = fetched_at.expect("fetched");
    let listed = listed_at.expect("listed");
    let per_minute = |d: Duration| want as f64 * 60.0 / d.as_secs_f64();
    vec![
        format!(
            "| import {want} DIDs ({name}): fetched | {:.1} s, {:.2}M DIDs/min |",
            fetched.as_secs_f64(),
            per_minute(fetched) / 1e6
        ),
        format!(
            "| import {want} DIDs ({name}): listed | {:.1} s, {:.2}M DIDs/min |",
            listed.as_secs_f64(),
            per_minute(listed) / 1e6
        ),
    ]
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / listing: nothing to run
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut rows = vec!["| measure | result |".to_string(), "|---|---|".to_string()];
        let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "listing,import".into());
        if phases.contains("listing") {
            rows.extend(bench_listing().await);
        }
        if phases.contains("import") {
            rows.extend(run_import("unverified", env_num("BENCH_IMPORT_DIDS", 2_000_000), false).await);
            rows.extend(run_import("identity verified", env_num("BENCH_VERIFY_DIDS", 50_000), true).await);
        }
        println!();
        for row in rows {
            println!("{row}");
        }
    });
}
