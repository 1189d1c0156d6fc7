//! Import at network scale, with a crash: the relay binary imports a simulated upstream's
//! `listReposByCollection` (1M DIDs by default, `RELAY_TEST_IMPORT_DIDS` to change), is
//! killed with SIGKILL part-way, restarted, resumes by itself, and ends with exactly the
//! upstream's listings, having fetched no page twice beyond one per collection.
//!
//! Identity verification is off here (`RELAY_BACKFILL_VERIFY_IDENTITY=false`, zlay's
//! behaviour) because a million PLC lookups would only measure the fake PLC; verification
//! and ghost dropping are covered by `collections.rs`.

use relay::simulate::upstream::{SimUpstream, SyntheticCollection};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "import-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Kills the relay when dropped, so a failing assertion leaves no process behind.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_relay(dir: &std::path::Path, source: &str, nsids: &str, public: u16, internal: u16) -> Relay {
    Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["serve", "--allow-insecure-hosts", "--upstream", ""])
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--bind",
            &format!("127.0.0.1:{public}"),
            "--metrics-listen",
            &format!("127.0.0.1:{internal}"),
        ])
        .args(["--admin-password", TOKEN, "--plc-host", "http://127.0.0.1:9"])
        .env("RELAY_BACKFILL_SOURCE", source)
        .env("RELAY_BACKFILL_COLLECTIONS", nsids)
        .env("RELAY_BACKFILL_VERIFY_IDENTITY", "false")
        .env("RELAY_BACKFILL_HOST_REQUESTS_PER_SECOND", "1000")
        .env("RELAY_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Relay)
        .expect("relay binary starts")
}

/// One client for all polling: a new client per poll leaves a connection behind each time.
fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

async fn admin_json(internal: u16, path: &str) -> Option<serde_json::Value> {
    let response =
        client().get(format!("http://127.0.0.1:{internal}{path}")).bearer_auth(TOKEN).send().await.ok()?;
    response.json().await.ok()
}

async fn imported(internal: u16, source: &str) -> (i64, bool) {
    match admin_json(internal, &format!("/admin/backfill-collections?source={source}")).await {
        Some(status) => (
            status["imported"].as_i64().unwrap_or(0),
            status["running"] == false && status["collectionsDone"] == status["collectionsTotal"],
        ),
        None => (0, false),
    }
}

async fn counts(internal: u16) -> std::collections::BTreeMap<String, u64> {
    let body = admin_json(internal, "/admin/collections").await.unwrap_or_default();
    body["collections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["collection"].as_str().unwrap_or("").to_string(), c["dids"].as_u64().unwrap_or(0)))
        .collect()
}

async fn listing(public: u16, collection: &str) -> Vec<String> {
    let client = client();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!(
            "http://127.0.0.1:{public}/xrpc/com.atproto.sync.listReposByCollection?collection={collection}&limit=2000"
        );
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = client.get(&url).send().await.expect("GET").json().await.expect("JSON");
        out.extend(
            page["repos"].as_array().expect("repos").iter().map(|r| r["did"].as_str().unwrap().to_string()),
        );
        match page["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_survives_a_kill_and_repeats_at_most_one_page_per_collection() {
    let total: u64 =
        std::env::var("RELAY_TEST_IMPORT_DIDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let collections = vec![
        SyntheticCollection { nsid: "app.bsky.feed.post".into(), count: total / 2, stride: 1 },
        SyntheticCollection { nsid: "app.bsky.graph.follow".into(), count: total * 3 / 10, stride: 2 },
        SyntheticCollection { nsid: "sh.tangled.repo".into(), count: total / 5, stride: 5 },
    ];
    let nsids = "app.bsky.feed.post,app.bsky.graph.follow,sh.tangled.repo";
    // Some 429s along the way: the import waits them out.
    let upstream = SimUpstream::start("127.0.0.1", collections.clone(), 97).await.expect("upstream");
    let source = upstream.url();
    let dir = std::env::temp_dir().join(format!("relay-import-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (public, internal) = (free_port(), free_port());

    let started = Instant::now();
    eprintln!("upstream {}", upstream.url());
    let child = spawn_relay(&dir, &upstream.url(), nsids, public, internal);
    // Kill it somewhere between a quarter and a half of the import.
    let kill_at = total as i64 * (25 + fastrand::i64(0..25)) / 100;
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let (done, _) = imported(internal, &source).await;
        if done >= kill_at {
            break;
        }
        assert!(Instant::now() < until, "import did not reach {kill_at} DIDs (at {done})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(child); // SIGKILL
    let pages_before = upstream.pages_served();

    let child = spawn_relay(&dir, &upstream.url(), nsids, public, internal);
    let until = Instant::now() + Duration::from_secs(600);
    loop {
        let (done, finished) = imported(internal, &source).await;
        if finished {
            break;
        }
        assert!(Instant::now() < until, "import did not finish after the restart (at {done})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let import_seconds = started.elapsed().as_secs_f64();
    // Imported pairs become listed as the verifier settles them.
    let want: std::collections::BTreeMap<String, u64> =
        collections.iter().map(|c| (c.nsid.clone(), c.count)).collect();
    let until = Instant::now() + Duration::from_secs(600);
    loop {
        let got = counts(internal).await;
        if got == want {
            break;
        }
        assert!(Instant::now() < until, "listed counts {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for collection in &collections {
        let got = listing(public, &collection.nsid).await;
        assert!(got == upstream.dids(&collection.nsid), "{} differs from the upstream", collection.nsid);
    }
    let repeated = upstream.repeated_pages();
    for collection in &collections {
        let extra = repeated.get(&collection.nsid).copied().unwrap_or(0);
        assert!(extra <= 1, "{}: {extra} pages fetched again after the restart", collection.nsid);
    }
    eprintln!(
        "imported {total} DIDs in {import_seconds:.1}s with a kill at {kill_at} ({pages_before} pages before it, {} repeated)",
        repeated.values().sum::<u32>()
    );
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
